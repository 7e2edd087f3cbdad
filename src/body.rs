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
use crate::upstream::Loan;

/// Error type of [`GwBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    /// The upstream's body, and the pooled connection it came on, to be given back once
    /// the body has been read to the end.
    Upstream(Incoming, Option<Loan>),
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
        GwBody { kind: Kind::Full(Some(b)), done: None }
    }

    /// The upstream's body, streamed; `loan` returns its connection to the pool at the end.
    pub fn upstream(b: Incoming, loan: Option<Loan>) -> Self {
        GwBody { kind: Kind::Upstream(b, loan), done: None }
    }

    pub(crate) fn track(&mut self, conn: Arc<ConnState>) {
        self.done = Some(Done(conn));
    }
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inc, loan) => {
                let r = Pin::new(&mut *inc).poll_frame(cx).map_err(Into::into);
                if (matches!(r, Poll::Ready(None)) || (matches!(r, Poll::Ready(Some(Ok(_)))) && inc.is_end_stream()))
                    && let Some(l) = loan.take()
                {
                    l.give_back();
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Upstream(inc, _) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inc, _) => inc.size_hint(),
        }
    }
}
