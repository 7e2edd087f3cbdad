//! Request body limits: a byte cap and a deadline for the whole body (not per read), applied
//! while the body streams to the upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::head::ConnState;

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than `max_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The body did not arrive within `body_timeout`.
    #[error("request body was not received in time")]
    Timeout,
    /// The client's stream failed.
    #[error("reading the request body failed")]
    Client(#[source] hyper::Error),
}

/// Whether (and when) a request body has been read to its end. Shared between the body on
/// its way upstream and the pipeline, which closes an HTTP/1 connection whose request body
/// was not fully read (its remaining bytes must never be taken for a next request), and
/// which starts the upstream's response timeout only once the body is out.
#[derive(Debug)]
pub struct BodyProgress {
    // Locked once when the body ends and once or twice by the pipeline.
    done_at: parking_lot::Mutex<Option<Instant>>,
    deadline: Instant,
    /// The last read of the body found no data from the client yet (as opposed to the body
    /// not being read because the upstream is not taking it).
    waiting_on_client: std::sync::atomic::AtomicBool,
    /// Body bytes received so far.
    received: std::sync::atomic::AtomicU64,
}

impl BodyProgress {
    /// A body that must have arrived by `deadline` (the listener's `body_timeout`).
    pub fn new(deadline: Instant) -> Self {
        BodyProgress {
            done_at: parking_lot::Mutex::new(None),
            deadline,
            waiting_on_client: Default::default(),
            received: Default::default(),
        }
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the body is stuck on the client (true) rather than on the upstream.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the whole body must have arrived.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the body ended, if it has.
    pub fn done_at(&self) -> Option<Instant> {
        *self.done_at.lock()
    }

    fn mark(&self) {
        let mut d = self.done_at.lock();
        if d.is_none() {
            *d = Some(Instant::now());
        }
    }
}

pin_project_lite::pin_project! {
    /// A client body with a size cap and a deadline.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
        limit: u64,
        deadline: Instant,
        // Made on the first wait only: most small bodies arrive without one. Boxed because
        // the pooled client wants an Unpin body.
        timer: Option<Pin<Box<Sleep>>>,
        conn: Option<Arc<ConnState>>,
        progress: Arc<BodyProgress>,
    }
}

impl std::fmt::Debug for LimitedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedBody").field("remaining", &self.remaining).finish()
    }
}

impl LimitedBody {
    /// Cap `inner` at `limit` bytes, to arrive by `deadline`. On a violation the
    /// connection (if HTTP/1) is marked to close with a lingering drain.
    pub(crate) fn new(
        inner: Incoming,
        limit: u64,
        deadline: Instant,
        conn: Option<Arc<ConnState>>,
        progress: Arc<BodyProgress>,
    ) -> Self {
        LimitedBody { inner, remaining: limit, limit, deadline, timer: None, conn, progress }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let fail = |e: BodyError, conn: &Option<Arc<ConnState>>| {
            if let Some(c) = conn {
                c.set_linger();
            }
            Poll::Ready(Some(Err(e)))
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progress.waiting_on_client.store(false, std::sync::atomic::Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        return fail(BodyError::TooLarge { limit: *this.limit }, this.conn);
                    }
                    *this.remaining -= n;
                    this.progress.received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                if this.inner.is_end_stream() {
                    this.progress.mark();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.progress.mark();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.progress.waiting_on_client.store(true, std::sync::atomic::Ordering::Relaxed);
                let deadline = *this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return fail(BodyError::Timeout, this.conn);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
