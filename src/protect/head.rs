//! The HTTP/1 connection guard: an I/O wrapper that enforces the head limits before hyper
//! parses anything, and answers violations itself with problem+json.
//!
//! hyper's own answers to an oversized head or a head timeout are bare status lines; ours
//! are problem+json, distinguish 414 from 431, and close with a bounded "lingering close" so
//! the client can read the answer instead of getting a reset.
//!
//! The guard knows where one request ends and the next begins from two counters the request
//! pipeline keeps ([`ConnState`]): requests started and responses finished. While they are
//! equal the connection is between requests, and bytes read belong to a request head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most header lines a request head may have (hyper's own cap is set above this).
pub(crate) const MAX_HEADER_LINES: usize = 100;
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Largest answer of hyper's own that [`GuardedIo`] rewrites as problem+json.
const MAX_OWN_ANSWER: usize = 512;

/// Statuses the guard answers itself, and how many of each this process sent.
const REFUSED_STATUSES: [u16; 5] = [400, 408, 413, 414, 431];
static REFUSED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// (status, count) of the answers the guard made itself, for `/metrics`.
pub(crate) fn refused_counts() -> impl Iterator<Item = (u16, u64)> {
    REFUSED_STATUSES.iter().zip(&REFUSED).map(|(s, n)| (*s, n.load(Ordering::Relaxed)))
}

/// Per-connection counters shared between the guard and the request pipeline.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    started: AtomicU64,
    finished: AtomicU64,
    linger: AtomicBool,
    /// The connection switched protocols (WebSocket): no more requests on it.
    upgraded: AtomicBool,
    /// HTTP/2: requests the client cancelled before their answer in the current window,
    /// and the signal that the connection should close for it.
    cancels: parking_lot::Mutex<CancelWindow>,
    abusive: tokio::sync::Notify,
    /// HTTP/2 only: response bodies that have something to send and wait for the client to
    /// take it (to grant flow-control window), and how many such waits have ended. See
    /// [`ConnState::client_waits`]. (HTTP/1 has the guard's write-stall cut instead.)
    h2: bool,
    awaiting: AtomicU64,
    resumed: AtomicU64,
}

/// Cancellations counted over a window of `CANCEL_WINDOW`.
#[derive(Debug, Default)]
struct CancelWindow {
    /// When the window began (monotonic ns), and how many requests had started by then.
    since_ns: u64,
    started_before: u64,
    count: u64,
}

/// HTTP/2 requests cancelled before their answer that a connection may have in one window
/// before the ratio below is checked.
const CANCEL_FLOOR: u64 = 200;
/// The window cancellations are counted over: a long-lived connection's occasional
/// cancellations (a browser navigating away, a caller's deadline) never add up to abuse.
const CANCEL_WINDOW_NS: u64 = 10_000_000_000;

impl ConnState {
    /// The state of an HTTP/2 connection, whose response bodies count their waits for the
    /// client.
    pub(crate) fn h2() -> ConnState {
        ConnState { h2: true, ..ConnState::default() }
    }
    pub(crate) fn is_h2(&self) -> bool {
        self.h2
    }
    /// A response body has something to send (its head was just answered, or it gave a
    /// frame that hyper holds until the client grants window) and is polled again, or
    /// dropped as finished, only when the client lets it.
    pub(crate) fn body_waits(&self) {
        self.awaiting.fetch_add(1, Ordering::Relaxed);
    }
    /// A wait [`ConnState::body_waits`] counted is over: the body was polled again, or dropped.
    pub(crate) fn body_resumes(&self) {
        self.awaiting.fetch_sub(1, Ordering::Relaxed);
        self.resumed.fetch_add(1, Ordering::Relaxed);
    }
    /// (bodies waiting for the client now, waits ended so far). Two readings a time apart
    /// with bodies waiting at both and the same second figure mean that some body waited
    /// for the client all that time (none of those waiting at the first reading resumed).
    pub(crate) fn client_waits(&self) -> (u64, u64) {
        (self.awaiting.load(Ordering::Relaxed), self.resumed.load(Ordering::Relaxed))
    }
    /// A request head was parsed and handed to the pipeline.
    pub(crate) fn request_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }
    /// A response (head and body) was fully written or abandoned.
    pub(crate) fn response_finished(&self) {
        self.finished.fetch_add(1, Ordering::Release);
    }
    /// The connection is switching protocols after this response: what follows is no
    /// longer HTTP, and the guard lets it pass.
    pub(crate) fn set_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
    /// An HTTP/2 request was cancelled by the client before its answer (the paced form of
    /// rapid reset, CVE-2023-44487, that h2's own limit on not-yet-accepted resets misses:
    /// each stream is accepted, and so sent upstream, before its reset). Once more than
    /// `CANCEL_FLOOR` have been within a window of `CANCEL_WINDOW_NS`, and they are over half
    /// the requests started on the connection in that window, [`ConnState::abusive`] fires.
    pub(crate) fn request_cancelled(&self) {
        let now = crate::clock::mono_ns();
        let started = self.started();
        let abusive = {
            // Cold: taken once per cancelled request, never across an await.
            let mut w = self.cancels.lock();
            if w.count == 0 || now.saturating_sub(w.since_ns) > CANCEL_WINDOW_NS {
                *w = CancelWindow { since_ns: now, started_before: started.saturating_sub(1), count: 0 };
            }
            w.count += 1;
            w.count > CANCEL_FLOOR && w.count * 2 > started.saturating_sub(w.started_before)
        };
        if abusive {
            self.abusive.notify_one();
        }
    }
    /// Resolves when the connection's client cancels too many requests.
    pub(crate) async fn abusive(&self) {
        self.abusive.notified().await;
    }
    /// The connection will close with request bytes possibly unread: drain before closing.
    pub(crate) fn set_linger(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }
    /// (requests started, responses finished).
    pub(crate) fn counters(&self) -> (u64, u64) {
        (self.started.load(Ordering::Relaxed), self.finished.load(Ordering::Acquire))
    }
    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
    fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }
    fn between_requests(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.finished.load(Ordering::Acquire)
    }
}

/// Limits the guard enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: usize,
}

#[derive(Debug, Default)]
struct HeadScan {
    bytes: usize,
    lines: usize,
    line_len: usize,
    first_line_done: bool,
    complete: bool,
}

enum Scan {
    More,
    Complete,
    UriTooLong,
    TooLarge,
}

impl HeadScan {
    fn feed(&mut self, data: &[u8], max: usize) -> Scan {
        // Line by line (memchr finds the line feeds), not byte by byte: this runs on every
        // request head.
        let mut rest = data;
        loop {
            let (seg, newline) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            let crs = seg.iter().filter(|b| **b == b'\r').count();
            self.bytes += seg.len() + usize::from(newline);
            self.line_len += seg.len() - crs;
            if self.bytes > max {
                return if self.first_line_done { Scan::TooLarge } else { Scan::UriTooLong };
            }
            if !newline {
                return Scan::More;
            }
            if self.line_len == 0 && self.first_line_done {
                self.complete = true;
                return Scan::Complete;
            }
            if self.line_len > 0 {
                self.first_line_done = true;
                self.lines += 1;
                if self.lines > MAX_HEADER_LINES + 1 {
                    return Scan::TooLarge;
                }
            }
            self.line_len = 0;
            rest = &rest[seg.len() + 1..];
        }
    }
}

#[derive(Debug)]
enum Mode {
    /// Normal operation.
    Open,
    /// Writing our own answer.
    Reply(Bytes),
    /// Our answer is out: send FIN, then drain.
    Shutdown,
    /// Reading and discarding until EOF, a byte budget or a deadline.
    Linger(usize),
    /// Done: reads give EOF, writes are discarded.
    Closed,
}

pin_project_lite::pin_project! {
    /// See the module docs.
    pub(crate) struct GuardedIo<T> {
        #[pin]
        inner: T,
        prefix: Bytes,
        state: Arc<ConnState>,
        limits: HeadLimits,
        // boxed: hyper wants an Unpin connection; one allocation per connection
        timer: Pin<Box<Sleep>>,
        scan: HeadScan,
        // true while the timer guards the current head
        armed: bool,
        // `finished` when the current head scan began: when it moves on, a message has
        // completed and the next head starts a fresh scan (whether or not we were polled
        // during the message)
        epoch: u64,
        mode: Mode,
        request_id: fn() -> String,
        // hyper holds bytes the socket has not taken yet: our own answer must not jump ahead
        unflushed: bool,
        // when the current run of refused writes began (a client not reading)
        blocked_since: Option<Instant>,
        // made on the first refused write only
        send_timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for GuardedIo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedIo").field("inner", &self.inner).field("mode", &self.mode).finish()
    }
}

impl<T> GuardedIo<T> {
    /// Wrap a fresh connection; `prefix` holds bytes already read from it (protocol sniffing).
    pub(crate) fn new(
        inner: T,
        prefix: Bytes,
        state: Arc<ConnState>,
        limits: HeadLimits,
        accepted: Instant,
        request_id: fn() -> String,
    ) -> Self {
        GuardedIo {
            inner,
            prefix,
            state,
            limits,
            timer: Box::pin(tokio::time::sleep_until(accepted + limits.header_timeout)),
            scan: HeadScan::default(),
            armed: true,
            epoch: 0,
            mode: Mode::Open,
            request_id,
            unflushed: false,
            blocked_since: None,
            send_timer: None,
        }
    }
}

fn problem_bytes(status: u16, title: &str, detail: &str, request_id: &str) -> Bytes {
    let body = crate::error::problem_json(status, title, detail, request_id);
    Bytes::from(format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

impl<T: AsyncRead + AsyncWrite> GuardedIo<T> {
    /// Drive our own answer and the lingering close. Ready when the connection is done.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            match this.mode {
                Mode::Open | Mode::Closed => return Poll::Ready(()),
                Mode::Reply(buf) => {
                    while !buf.is_empty() {
                        match ready!(this.inner.as_mut().poll_write(cx, buf)) {
                            Ok(0) | Err(_) => {
                                *this.mode = Mode::Closed;
                                return Poll::Ready(());
                            }
                            Ok(n) => {
                                let _ = buf.split_to(n);
                            }
                        }
                    }
                    let _ = ready!(this.inner.as_mut().poll_flush(cx));
                    *this.mode = Mode::Shutdown;
                }
                Mode::Shutdown => {
                    let _ = ready!(this.inner.as_mut().poll_shutdown(cx));
                    this.timer.as_mut().reset(Instant::now() + LINGER_FOR);
                    *this.mode = Mode::Linger(LINGER_BYTES);
                }
                Mode::Linger(budget) => {
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match this.inner.as_mut().poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *budget = budget.saturating_sub(rb.filled().len());
                            if *budget == 0 {
                                *this.mode = Mode::Closed;
                            }
                        }
                        Poll::Ready(_) => *this.mode = Mode::Closed,
                        Poll::Pending => {
                            ready!(this.timer.as_mut().poll(cx));
                            *this.mode = Mode::Closed;
                        }
                    }
                }
            }
        }
    }

    /// hyper answers a head it cannot parse (400, 501, 505...) itself, with an empty body.
    /// Such an answer is the only thing written while no request is in flight: replace it
    /// with problem+json. Matched narrowly (its exact shape) so no real response is touched.
    fn intercept(self: Pin<&mut Self>, buf: &[u8]) -> bool {
        // hyper's own answer: bytes of a head arrived and no request was handed to the
        // pipeline since that head began (a real response always follows one).
        if self.scan.bytes == 0
            || self.state.started() != self.epoch
            || buf.len() > MAX_OWN_ANSWER
            || !buf.starts_with(b"HTTP/1.1 ")
        {
            return false;
        }
        let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
        if !text.ends_with("\r\n\r\n")
            || !text.contains("\r\ncontent-length: 0\r\n")
            || !text.contains("\r\nconnection: close\r\n")
        {
            return false;
        }
        let Some(status) = text.get(9..12).and_then(|s| s.parse::<u16>().ok()).filter(|s| (400..600).contains(s))
        else {
            return false;
        };
        let line = String::from_utf8_lossy(buf.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
        let title: String =
            line.get(13..).unwrap_or("").chars().filter(|c| c.is_ascii_alphanumeric() || *c == ' ').collect();
        let title = if title.is_empty() { "Bad Request".to_string() } else { title };
        self.reply(status, &title, "the request is malformed and cannot be processed");
        true
    }

    fn reply(self: Pin<&mut Self>, status: u16, title: &str, detail: &str) {
        let this = self.project();
        let id = (this.request_id)();
        tracing::debug!(status, request_id = %id, "Refused request head");
        if let Some(i) = REFUSED_STATUSES.iter().position(|s| *s == status) {
            REFUSED[i].fetch_add(1, Ordering::Relaxed);
        }
        if *this.unflushed {
            // Part of an earlier response is still in hyper's buffer: writing ours now would
            // splice it into that one. Close instead (rare: pipelining under backpressure).
            *this.mode = Mode::Shutdown;
            return;
        }
        *this.mode = Mode::Reply(problem_bytes(status, title, detail.replace(['\r', '\n'], " ").as_str(), &id));
    }

    /// After a write, track whether hyper still holds bytes, and whether a client that
    /// stopped reading has exceeded `idle_timeout`.
    fn after_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        match r {
            Poll::Ready(Ok(n)) => {
                *this.unflushed = n < len;
                *this.blocked_since = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                *this.unflushed = true;
                let since = *this.blocked_since.get_or_insert_with(Instant::now);
                let deadline = since + this.limits.idle_timeout;
                let timer = this.send_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    tracing::debug!("Client stopped reading the response; closing");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for GuardedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !matches!(self.mode, Mode::Open) {
                ready!(self.as_mut().poll_close(cx));
                return Poll::Ready(Ok(()));
            }
            let this = self.as_mut().project();
            // In a message, or closing after this one (what is left is the unread part of a
            // request body, never a next head): bytes pass untouched.
            if !this.state.between_requests()
                || this.state.linger.load(Ordering::Relaxed)
                || this.state.upgraded.load(Ordering::Acquire)
            {
                return read_through(this.inner, this.prefix, cx, buf);
            }
            let finished = this.state.finished();
            if finished != *this.epoch {
                // The previous response is done: the next head starts now, under the idle timeout.
                *this.epoch = finished;
                *this.scan = HeadScan::default();
                *this.armed = true;
                this.timer.as_mut().reset(Instant::now() + this.limits.idle_timeout);
            }
            if this.scan.complete {
                return read_through(this.inner, this.prefix, cx, buf);
            }
            if *this.armed && this.timer.as_mut().poll(cx).is_ready() {
                *this.armed = false;
                if this.scan.bytes > 0 {
                    self.as_mut().reply(408, "Request Timeout", "the request head was not received in time");
                } else {
                    *self.as_mut().project().mode = Mode::Closed;
                }
                continue;
            }
            let before = buf.filled().len();
            ready!(read_through(this.inner, this.prefix, cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            let first_byte = this.scan.bytes == 0;
            let max = this.limits.max_header_bytes;
            match this.scan.feed(&buf.filled()[before..], max) {
                Scan::More => {
                    if first_byte && this.scan.bytes > 0 {
                        // From the first byte, the head must arrive within header_timeout
                        // (on a fresh connection the deadline already runs from accept).
                        let dl = Instant::now() + this.limits.header_timeout;
                        if dl < this.timer.deadline() {
                            this.timer.as_mut().reset(dl);
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Scan::Complete => return Poll::Ready(Ok(())),
                Scan::UriTooLong => {
                    buf.set_filled(before);
                    self.as_mut().reply(414, "URI Too Long", "the request line is longer than the listener allows");
                }
                Scan::TooLarge => {
                    buf.set_filled(before);
                    self.as_mut().reply(
                        431,
                        "Request Header Fields Too Large",
                        "the request head is larger than the listener allows",
                    );
                }
            }
        }
    }
}

fn read_through<T: AsyncRead>(
    inner: Pin<&mut T>,
    prefix: &mut Bytes,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if !prefix.is_empty() {
        let n = prefix.len().min(buf.remaining());
        buf.put_slice(&prefix.split_to(n));
        return Poll::Ready(Ok(()));
    }
    inner.poll_read(cx, buf)
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !matches!(self.mode, Mode::Open) || self.as_mut().intercept(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = self.as_mut().project().inner.poll_write(cx, buf);
        self.after_write(cx, r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum();
        if !matches!(self.mode, Mode::Open) {
            return Poll::Ready(Ok(total));
        }
        // Cheap checks first: this runs for every response written.
        if total <= MAX_OWN_ANSWER
            && self.scan.bytes > 0
            && self.state.started() == self.epoch
            && bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 "))
        {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if self.as_mut().intercept(&joined) {
                return Poll::Ready(Ok(total));
            }
        }
        let r = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.after_write(cx, r, total)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !matches!(self.mode, Mode::Open) {
            return Poll::Ready(Ok(()));
        }
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            *this.unflushed = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.mode, Mode::Open) && self.state.linger.load(Ordering::Relaxed) {
            // We answered without reading the whole request (413, 408): drain a little so
            // the client sees our answer rather than a reset.
            *self.as_mut().project().mode = Mode::Shutdown;
        }
        if !matches!(self.mode, Mode::Open) {
            ready!(self.as_mut().poll_close(cx));
            return Poll::Ready(Ok(()));
        }
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(head: &[u8], max: usize, piece: usize) -> &'static str {
        let mut s = HeadScan::default();
        for chunk in head.chunks(piece) {
            match s.feed(chunk, max) {
                Scan::More => {}
                Scan::Complete => return "complete",
                Scan::UriTooLong => return "414",
                Scan::TooLarge => return "431",
            }
        }
        "more"
    }

    #[test]
    fn scan_agrees_whatever_the_pieces() {
        let many: String = (0..120).map(|i| format!("h{i}: v\r\n")).collect();
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 1024, "complete"),
            (b"GET / HTTP/1.1\nHost: x\n\n".to_vec(), 1024, "complete"),
            (b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nBODY".to_vec(), 1024, "complete"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(), 1024, "more"),
            (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100)).into_bytes(), 64, "414"),
            (format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100)).into_bytes(), 64, "431"),
            (format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(), 1 << 20, "431"),
        ];
        for (head, max, want) in &cases {
            for piece in [1, 2, 7, 4096] {
                assert_eq!(
                    outcome(head, *max, piece),
                    *want,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(head)
                );
            }
        }
    }
}
