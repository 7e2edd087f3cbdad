//! The response body type the gateway sends downstream: either a small body it made itself
//! or the upstream's body, streamed. An enum rather than a boxed trait object, so the common
//! proxied path does not allocate for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::protect::ConnState;

/// Error type of [`GwBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// A downstream response body.
#[derive(Debug)]
pub struct GwBody {
    kind: Kind,
    done: Option<Done>,
}

/// Marks the response finished on the connection when the body is dropped (fully written or
/// abandoned), so the HTTP/1 guard knows the next bytes start a new request head.
#[derive(Debug)]
struct Done(Arc<ConnState>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

impl GwBody {
    /// A complete body.
    pub fn full(b: Bytes) -> Self {
        GwBody {
            kind: Kind::Full(Some(b)),
            done: None,
        }
    }

    /// The upstream's body, streamed.
    pub fn upstream(b: Incoming) -> Self {
        GwBody {
            kind: Kind::Upstream(b),
            done: None,
        }
    }

    pub(crate) fn track(&mut self, conn: Arc<ConnState>) {
        self.done = Some(Done(conn));
    }
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Upstream(inc) => Pin::new(inc).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Upstream(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inc) => inc.size_hint(),
        }
    }
}
