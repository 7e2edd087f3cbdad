//! The access log: one JSON line per request, written by a task of its own through a
//! bounded queue, so a slow sink costs dropped (and counted) lines, never a slower proxy.
//!
//! A line never carries a credential: no request or response header is logged, and the
//! path is the normalised path without its query string (which may hold an API key).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use std::io::Write;
use std::sync::mpsc;

use super::metrics::Metrics;
use crate::config::{AccessLogConfig, LogSink};

/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 8192;
/// Bytes waiting for the writer; more are dropped.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// Longest method written (extension methods are tokens of any length).
const MAX_METHOD: usize = 32;
/// How often the writer checks whether its file was rotated away.
const ROTATION_CHECK: Duration = Duration::from_secs(1);
/// How long the writer lets lines gather before writing them out.
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Longest path written; longer ones are cut (and marked with `…`).
const MAX_PATH: usize = 1024;

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    tx: mpsc::SyncSender<String>,
    metrics: Arc<Metrics>,
    state: Arc<WriterState>,
    // Cold: taken once, by `close`.
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Shared between the senders and the writer thread.
#[derive(Debug, Default)]
struct WriterState {
    /// Bytes of the lines in the queue: the queue is bounded in bytes too.
    queued_bytes: std::sync::atomic::AtomicUsize,
    /// Shutdown: write what is queued, then stop.
    closing: std::sync::atomic::AtomicBool,
}

/// What is known of a request when its response head is ready; completed when its body is
/// finished with. Cheap to fill: shared names and byte buffers, one owned path.
#[derive(Debug)]
pub struct Record {
    /// Request id (as returned to the client).
    pub request_id: http::HeaderValue,
    /// Matched route, if any.
    pub route: Option<Arc<str>>,
    /// Client address.
    pub client: std::net::IpAddr,
    /// Method.
    pub method: http::Method,
    /// Normalised path, without the query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: &'static str,
    /// Status sent.
    pub status: u16,
    /// Upstream name, if one was chosen.
    pub upstream: Option<Arc<str>>,
    /// Target `host:port` that answered.
    pub target: Option<http::uri::Authority>,
    /// Time to the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// W3C trace id from `traceparent`, if the client sent a valid one.
    pub trace_id: Option<[u8; 32]>,
    /// The authenticated consumer, if any.
    pub consumer: Option<Arc<str>>,
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero).
pub fn trace_id(traceparent: &[u8]) -> Option<[u8; 32]> {
    let s = std::str::from_utf8(traceparent).ok()?;
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    let mut out = [0u8; 32];
    if ok {
        out.copy_from_slice(trace.as_bytes());
    }
    ok.then_some(out)
}

/// Cut `path` to at most [`MAX_PATH`] bytes at a character boundary.
pub fn clip_path(path: &str) -> String {
    if path.len() <= MAX_PATH {
        return path.to_string();
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

impl AccessLog {
    /// Start a writer for `config`. Lines are counted in `metrics`.
    pub fn start(config: AccessLogConfig, metrics: Arc<Metrics>) -> Arc<AccessLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let state = Arc::new(WriterState::default());
        let (sink, m, st) = (config.to.clone(), metrics.clone(), state.clone());
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(sink, rx, m, st));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the access-log writer; its lines are dropped");
                None
            }
        };
        Arc::new(AccessLog { config, tx, metrics, state, thread: parking_lot::Mutex::new(thread) })
    }

    /// Write out what is queued and stop the writer, waiting at most `wait` (a sink that
    /// blocks for good is left behind). Blocking: call it off the async workers.
    pub fn close(&self, wait: Duration) {
        self.state.closing.store(true, Ordering::Release);
        let Some(thread) = self.thread.lock().take() else { return };
        let (done_tx, done_rx) = mpsc::channel();
        let joiner = std::thread::Builder::new().name("access-log-close".into()).spawn(move || {
            let _ = thread.join();
            let _ = done_tx.send(());
        });
        if joiner.is_ok() && done_rx.recv_timeout(wait).is_err() {
            tracing::warn!("The access log did not finish writing in time");
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Queue the line for `record`, finished after `duration` with these byte counts. Never
    /// waits: a full queue drops the line and counts it.
    pub fn log(&self, r: &Record, duration: Duration, bytes_in: u64, bytes_out: u64) {
        use super::push_u64;
        let mut l = String::with_capacity(320 + r.path.len());
        l.push_str("{\"time\":\"");
        super::write_rfc3339_millis(&mut l, SystemTime::now());
        // The request id (checked or made by us), route and upstream names and the target
        // (checked by the config), and the method (an HTTP token) hold no quote, backslash
        // or control character; only the path needs escaping.
        l.push_str("\",\"request_id\":\"");
        l.push_str(r.request_id.to_str().unwrap_or(""));
        if let Some(route) = &r.route {
            l.push_str("\",\"route\":\"");
            l.push_str(route);
        }
        if let Some(c) = &r.consumer {
            // A JWT's consumer claim is the caller's text: escaped.
            l.push_str("\",\"consumer\":\"");
            super::json_escape(c, &mut l);
        }
        l.push_str("\",\"client_ip\":\"");
        match r.client {
            std::net::IpAddr::V4(a) => {
                for (i, o) in a.octets().iter().enumerate() {
                    if i > 0 {
                        l.push('.');
                    }
                    push_u64(&mut l, u64::from(*o), 1);
                }
            }
            std::net::IpAddr::V6(a) => {
                use std::fmt::Write as _;
                let _ = write!(l, "{a}");
            }
        }
        l.push_str("\",\"method\":\"");
        // An extension method can be as long as the request head allows.
        let method = r.method.as_str();
        match method.get(..MAX_METHOD) {
            Some(cut) if method.len() > MAX_METHOD => {
                l.push_str(cut);
                l.push('…');
            }
            _ => l.push_str(method),
        }
        l.push_str("\",\"path\":\"");
        super::json_escape(&r.path, &mut l);
        l.push_str("\",\"version\":\"");
        l.push_str(r.version);
        l.push_str("\",\"status\":");
        push_u64(&mut l, u64::from(r.status), 1);
        l.push_str(",\"bytes_in\":");
        push_u64(&mut l, bytes_in, 1);
        l.push_str(",\"bytes_out\":");
        push_u64(&mut l, bytes_out, 1);
        l.push_str(",\"duration_ms\":");
        write_ms(&mut l, duration);
        if let Some(u) = &r.upstream {
            l.push_str(",\"upstream\":\"");
            l.push_str(u);
            l.push('"');
        }
        if let Some(t) = &r.target {
            l.push_str(",\"target\":\"");
            l.push_str(t.as_str());
            l.push('"');
        }
        if let Some(d) = r.upstream_time {
            l.push_str(",\"upstream_ms\":");
            write_ms(&mut l, d);
        }
        if let Some(t) = &r.trace_id {
            l.push_str(",\"trace_id\":\"");
            l.push_str(std::str::from_utf8(t).unwrap_or(""));
            l.push('"');
        }
        l.push_str("}\n");
        let len = l.len();
        let queued = self.state.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if queued + len > MAX_QUEUED_BYTES || self.tx.try_send(l).is_err() {
            self.state.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Milliseconds with three decimals (`12.345`), by integer arithmetic.
fn write_ms(out: &mut String, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    super::push_u64(out, us / 1000, 1);
    out.push('.');
    super::push_u64(out, us % 1000, 3);
}

/// A sink opened, and the identity (device, inode) of the file it writes, if it is one.
type Opened = (Box<dyn Write + Send>, Option<(u64, u64)>);

fn open(sink: &LogSink) -> std::io::Result<Opened> {
    use std::os::unix::fs::MetadataExt;
    Ok(match sink {
        LogSink::Stdout => (Box::new(std::io::stdout()), None),
        LogSink::Stderr => (Box::new(std::io::stderr()), None),
        LogSink::File(p) => {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
            // The identity of the file opened, not of whatever is at the path by now.
            let id = f.metadata().ok().map(|m| (m.dev(), m.ino()));
            (Box::new(f), id)
        }
    })
}

/// Device and inode of the file at the sink's path (`None` if missing or not a file sink).
fn file_id(sink: &LogSink) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    match sink {
        LogSink::File(p) => std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())),
        _ => None,
    }
}

/// The writer thread: blocking writes on a thread of its own, so neither the sink nor the
/// file system ever stalls a worker. Ends when every sender is gone or [`AccessLog::close`]
/// asks, after writing what is queued.
fn write_lines(sink: LogSink, rx: mpsc::Receiver<String>, metrics: Arc<Metrics>, state: Arc<WriterState>) {
    type Out = std::io::BufWriter<Box<dyn Write + Send>>;
    let mut out: Option<(Out, Option<(u64, u64)>)> = None;
    let mut last_attempt: Option<tokio::time::Instant> = None;
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut warn = |what: &str, error: &dyn std::fmt::Display| {
        // At most one warning every 10 s, however often the sink fails.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_warning = Some(tokio::time::Instant::now());
            tracing::warn!(sink = ?sink, error = %error, "{what}");
        }
    };
    loop {
        let first = match rx.recv_timeout(ROTATION_CHECK) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let closing = state.closing.load(Ordering::Acquire);
        if first.is_some() && !closing {
            // Let a batch gather: one wake-up, write and flush per batch rather than per
            // line (senders do not wake a writer that is not waiting).
            std::thread::sleep(BATCH_WAIT);
        }
        // (Re)open: at start, after a failure, or when the file was rotated away.
        let due = last_attempt.is_none_or(|t| t.elapsed() >= ROTATION_CHECK);
        let rotated = matches!(&out, Some((_, id)) if id.is_some() && file_id(&sink) != *id);
        if due && (out.is_none() || rotated) {
            last_attempt = Some(tokio::time::Instant::now());
            if let Some((mut o, _)) = out.take() {
                let _ = o.flush();
                if let LogSink::File(p) = &sink {
                    tracing::info!(path = %p.display(), "Access log reopened (rotated)");
                }
            }
            match open(&sink) {
                Ok((o, id)) => out = Some((std::io::BufWriter::with_capacity(64 * 1024, o), id)),
                Err(e) => warn("Cannot open the access log; its lines are dropped until it can be", &e),
            }
        }
        let mut lines = first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()));
        let mut batch = 0u64;
        let mut failed = None;
        for line in &mut lines {
            state.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
            batch += 1;
            if let Some((o, _)) = &mut out
                && let Err(e) = o.write_all(line.as_bytes())
            {
                failed = Some(e);
                break;
            }
        }
        if failed.is_none()
            && let Some((o, _)) = &mut out
            && let Err(e) = o.flush()
        {
            failed = Some(e);
        }
        match (&out, failed) {
            (Some(_), None) => {
                metrics.access_log_written.fetch_add(batch, Ordering::Relaxed);
            }
            (_, failed) => {
                // Nothing kept of a failed batch: a half-written buffer is discarded with the
                // writer, and the sink is opened afresh at the next check.
                let mut rest = 0u64;
                for l in lines {
                    state.queued_bytes.fetch_sub(l.len(), Ordering::AcqRel);
                    rest += 1;
                }
                metrics.access_log_dropped.fetch_add(batch + rest, Ordering::Relaxed);
                if let Some(e) = failed {
                    warn("Writing the access log failed; lines dropped", &e);
                    out = None;
                }
            }
        }
        // The batch above took everything queued.
        if closing {
            break;
        }
    }
    if let Some((mut o, _)) = out {
        let _ = o.flush();
    }
    // Lines that came after the last batch of a close are counted, not silently lost.
    let late = std::iter::from_fn(|| rx.try_recv().ok()).count() as u64;
    metrics.access_log_dropped.fetch_add(late, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(format!("00-{id}-00f067aa0ba902b7-01").as_bytes()),
            Some(*b"4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(format!("00-{id}-0000000000000000-01").as_bytes()), None);
        assert_eq!(trace_id(format!("ff-{id}-00f067aa0ba902b7-01").as_bytes()), None);
        assert_eq!(trace_id(format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()).as_bytes()), None);
        assert_eq!(trace_id(format!("00-{id}-00f067aa0ba902b7-01-extra").as_bytes()), None);
        assert_eq!(trace_id(b"garbage"), None);
    }

    #[test]
    fn long_paths_are_clipped() {
        let p = "é".repeat(1000);
        let c = clip_path(&p);
        assert!(c.len() <= MAX_PATH + "…".len());
        assert!(c.ends_with('…'));
    }
}
