//! The request body sent upstream: nothing, the client's body under its limits (kept on the
//! side, up to a bound, when the request may have to be sent again), or a kept body replayed
//! for a retry.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::protect::{BodyError, LimitedBody};

/// A copy of a request body as it streams, kept while it stays within `limit`.
#[derive(Debug)]
pub struct Kept {
    limit: u64,
    // Locked per frame by the one task streaming the body, and once by a retry: never
    // contended, never held across an await.
    state: Mutex<KeptState>,
}

#[derive(Debug, Default)]
struct KeptState {
    chunks: Vec<Bytes>,
    size: u64,
    complete: bool,
    overflow: bool,
}

impl Kept {
    /// Keep up to `limit` bytes.
    pub fn new(limit: u64) -> Arc<Kept> {
        Arc::new(Kept { limit, state: Mutex::new(KeptState::default()) })
    }

    fn record(&self, chunk: &Bytes) {
        let mut s = self.state.lock();
        if s.overflow {
            return;
        }
        s.size += chunk.len() as u64;
        if s.size > self.limit {
            s.overflow = true;
            s.chunks = Vec::new();
        } else {
            s.chunks.push(chunk.clone());
        }
    }

    fn give_up(&self) {
        let mut s = self.state.lock();
        s.overflow = true;
        s.chunks = Vec::new();
    }

    fn finish(&self) {
        self.state.lock().complete = true;
    }

    /// The whole body again, if it was read to its end and kept.
    pub fn replay(&self) -> Option<ProxyBody> {
        let s = self.state.lock();
        (s.complete && !s.overflow).then(|| ProxyBody::Replay { chunks: s.chunks.iter().cloned().collect() })
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way to an upstream.
    #[project = Proj]
    #[derive(Debug)]
    pub enum ProxyBody {
        /// No body.
        Empty,
        /// The client's body, capped and timed; copied into `keep` if set.
        Stream { #[pin] body: LimitedBody, keep: Option<Arc<Kept>> },
        /// A kept body, sent again.
        Replay { chunks: VecDeque<Bytes> },
    }
}

impl ProxyBody {
    pub(crate) fn new(b: Option<LimitedBody>) -> Self {
        match b {
            None => ProxyBody::Empty,
            Some(body) => ProxyBody::Stream { body, keep: None },
        }
    }

    /// Keep a copy of the body as it streams (up to `limit` bytes), for a retry.
    pub(crate) fn keep(&mut self, limit: u64) {
        if let ProxyBody::Stream { keep, body } = self
            && keep.is_none()
            && body.size_hint().lower() <= limit
        {
            *keep = Some(Kept::new(limit));
        }
    }

    /// What can produce this body again for another attempt.
    pub(crate) fn replayer(&self) -> Replayer {
        match self {
            ProxyBody::Empty => Replayer::Empty,
            ProxyBody::Replay { chunks } => Replayer::Chunks(chunks.clone()),
            ProxyBody::Stream { keep: Some(k), .. } => Replayer::Kept(k.clone()),
            ProxyBody::Stream { keep: None, .. } => Replayer::Lost,
        }
    }
}

/// A request body for another attempt, if it can be had.
#[derive(Debug)]
pub(crate) enum Replayer {
    Empty,
    Chunks(VecDeque<Bytes>),
    Kept(Arc<Kept>),
    /// Streamed without a copy.
    Lost,
}

impl Replayer {
    /// The body again: always for an empty or replayed body; for a streamed one only if it
    /// was read to its end and kept whole.
    pub(crate) fn body(&self) -> Option<ProxyBody> {
        match self {
            Replayer::Empty => Some(ProxyBody::Empty),
            Replayer::Chunks(c) => Some(ProxyBody::Replay { chunks: c.clone() }),
            Replayer::Kept(k) => k.replay(),
            Replayer::Lost => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            Proj::Empty => Poll::Ready(None),
            Proj::Stream { mut body, keep } => {
                let r = body.as_mut().poll_frame(cx);
                if let Some(k) = keep {
                    match &r {
                        Poll::Ready(Some(Ok(f))) => {
                            match f.data_ref() {
                                Some(d) => k.record(d),
                                // Trailers are not kept: such a body is not replayed.
                                None => k.give_up(),
                            }
                            // hyper stops polling a body that says it has ended.
                            if body.is_end_stream() {
                                k.finish();
                            }
                        }
                        Poll::Ready(None) => k.finish(),
                        _ => {}
                    }
                }
                r
            }
            Proj::Replay { chunks } => Poll::Ready(chunks.pop_front().map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Stream { body, .. } => body.is_end_stream(),
            ProxyBody::Replay { chunks } => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Stream { body, .. } => body.size_hint(),
            ProxyBody::Replay { chunks } => SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum()),
        }
    }
}
