//! The response body type the gateway sends downstream: either a small body it made itself
//! or the upstream's body, streamed. An enum rather than a boxed trait object, so the common
//! proxied path does not allocate for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::observe::access::{AccessLog, Record};
use crate::observe::metrics::RouteMetrics;
use crate::protect::BodyProgress;
use crate::protect::ConnState;
use crate::upstream::Loan;

/// Error type of [`GwBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    /// The upstream's body, and the pooled connection it came on, to be given back once
    /// the body has been read to the end.
    Upstream(Incoming, Option<Loan>, Stall),
}

/// Cuts off an upstream body that stops arriving: no frame for `limit` is an error. The
/// timer is made on the first wait only and re-armed lazily, so a body that flows costs no
/// timer operations and no clock reads.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    /// When the current wait began (`None` while frames flow, so no clock read per frame).
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body stalled for longer than {0:?}")]
pub struct UpstreamStalled(Duration);

/// A downstream response body.
#[derive(Debug)]
pub struct GwBody {
    kind: Kind,
    done: Option<Done>,
    finish: Option<Finish>,
}

/// The access log, the request's record, and its body's progress (for the bytes received).
pub(crate) type Logged = (Arc<AccessLog>, Box<Record>, Option<Arc<BodyProgress>>);

/// Records the request's total duration when the response body is finished with (written
/// to the end, or abandoned).
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) started: Instant,
    pub(crate) metrics: Arc<RouteMetrics>,
    /// The access log and the request's record, when there is an access log.
    pub(crate) log: Option<Logged>,
    /// The request's span, when it is sampled; ended and exported here.
    pub(crate) span: Option<(Arc<crate::observe::trace::Tracer>, Box<crate::observe::trace::Span>)>,
    pub(crate) bytes_out: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.metrics.duration.observe(took);
        if let Some((log, record, progress)) = &self.log {
            log.log(record, took, progress.as_ref().map_or(0, |p| p.received()), self.bytes_out);
        }
        if let Some((tracer, mut span)) = self.span.take() {
            // From the monotonic clock: a wall-clock step mid-request cannot bend the span.
            span.end_ns = span.start_ns.saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            tracer.finish(*span);
        }
    }
}

/// Marks the response finished on the connection when dropped: made when a request starts,
/// carried by its response body, and dropped when that body is fully written or abandoned
/// (or with the request, if it is cancelled first), so the counters never drift. On HTTP/2
/// it also counts the body's waits for the client ([`ConnState::body_waits`]).
#[derive(Debug)]
pub(crate) struct Done {
    conn: Arc<ConnState>,
    /// The body is counted as waiting for the client.
    waiting: bool,
}

impl Done {
    /// A request started on this connection.
    pub(crate) fn start(conn: &Arc<ConnState>) -> Done {
        conn.request_started();
        Done { conn: conn.clone(), waiting: false }
    }

    /// The body has something to send: on HTTP/2, count it as waiting for the client until
    /// it is polled again.
    fn wait(&mut self) {
        if !self.waiting && self.conn.is_h2() {
            self.waiting = true;
            self.conn.body_waits();
        }
    }

    /// The body was polled: whatever it waited for, the client let it go on.
    fn resume(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.conn.body_resumes();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.resume();
        self.conn.response_finished();
    }
}

impl GwBody {
    /// A complete body.
    pub fn full(b: Bytes) -> Self {
        GwBody { kind: Kind::Full(Some(b)), done: None, finish: None }
    }

    /// The upstream's body, streamed; `loan` returns its connection to the pool at the end;
    /// a pause longer than `stall` between frames aborts it.
    pub fn upstream(b: Incoming, loan: Option<Loan>, stall: Duration) -> Self {
        let stall = Stall { limit: stall, waiting_since: None, timer: None };
        GwBody { kind: Kind::Upstream(b, loan, stall), done: None, finish: None }
    }

    pub(crate) fn track(&mut self, mut done: Done) {
        if !self.is_end_stream() {
            done.wait();
        }
        self.done = Some(done);
    }

    pub(crate) fn on_finish(&mut self, finish: Finish) {
        self.finish = Some(finish);
    }
}

impl GwBody {
    fn poll_inner(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inc, loan, stall) => {
                let r = Pin::new(&mut *inc).poll_frame(cx).map_err(Into::into);
                match &r {
                    Poll::Ready(Some(Ok(_))) => stall.waiting_since = None,
                    Poll::Pending => loop {
                        let deadline = *stall.waiting_since.get_or_insert_with(Instant::now) + stall.limit;
                        let timer = stall.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        if timer.deadline() != deadline {
                            timer.as_mut().reset(deadline);
                        }
                        if timer.as_mut().poll(cx).is_pending() {
                            break;
                        }
                        if Instant::now() >= deadline {
                            tracing::warn!(
                                limit_ms = stall.limit.as_millis() as u64,
                                "Upstream response body stalled; aborting it"
                            );
                            return Poll::Ready(Some(Err(Box::new(UpstreamStalled(stall.limit)))));
                        }
                    },
                    _ => {}
                }
                if (matches!(r, Poll::Ready(None)) || (matches!(r, Poll::Ready(Some(Ok(_)))) && inc.is_end_stream()))
                    && let Some(l) = loan.take()
                {
                    l.give_back();
                }
                r
            }
        }
    }
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = &mut self.done {
            d.resume();
        }
        let r = self.as_mut().poll_inner(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref()
                && let Some(fin) = &mut self.finish
            {
                fin.bytes_out += d.len() as u64;
            }
            // Even the last frame: hyper holds it until the client grants window, and the
            // wait ends when hyper drops the finished body.
            if let Some(d) = &mut self.done {
                d.wait();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Upstream(inc, ..) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inc, ..) => inc.size_hint(),
        }
    }
}
