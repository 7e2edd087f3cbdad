//! The request body sent upstream: nothing, or the client's body under its limits.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::protect::{BodyError, LimitedBody};

pin_project_lite::pin_project! {
    /// A request body on its way to an upstream.
    #[project = Proj]
    #[derive(Debug)]
    pub enum ProxyBody {
        /// No body.
        Empty,
        /// The client's body, capped and timed.
        Stream { #[pin] body: LimitedBody },
    }
}

impl ProxyBody {
    pub(crate) fn new(b: Option<LimitedBody>) -> Self {
        match b {
            None => ProxyBody::Empty,
            Some(body) => ProxyBody::Stream { body },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            Proj::Empty => Poll::Ready(None),
            Proj::Stream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Stream { body } => body.size_hint(),
        }
    }
}
