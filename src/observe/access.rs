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
        let (sink, m) = (config.to.clone(), metrics.clone());
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(sink, rx, m));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "Cannot start the access-log writer; its lines are dropped");
        }
        Arc::new(AccessLog { config, tx, metrics })
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
            std::net::IpAddr::V6(a) => l.push_str(&a.to_string()),
        }
        l.push_str("\",\"method\":\"");
        l.push_str(r.method.as_str());
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
        if self.tx.try_send(l).is_err() {
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

fn open(sink: &LogSink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        LogSink::Stdout => Box::new(std::io::stdout()),
        LogSink::Stderr => Box::new(std::io::stderr()),
        LogSink::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

/// The writer thread: blocking writes on a thread of its own, so neither the sink nor the
/// file system ever stalls a worker. Ends when every sender is gone.
fn write_lines(sink: LogSink, rx: mpsc::Receiver<String>, metrics: Arc<Metrics>) {
    let mut out = match open(&sink) {
        Ok(o) => std::io::BufWriter::with_capacity(64 * 1024, o),
        Err(e) => {
            tracing::error!(sink = ?sink, error = %e, "Cannot open the access log; its lines are dropped");
            // Keep draining so that senders count drops instead of filling the queue.
            while rx.recv().is_ok() {
                metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let mut opened = file_id(&sink);
    let mut checked = tokio::time::Instant::now();
    while let Ok(line) = rx.recv() {
        // Let a batch gather: one wake-up, write and flush per batch rather than per line
        // (senders do not wake a writer that is not waiting).
        std::thread::sleep(BATCH_WAIT);
        // A file renamed or removed by log rotation is reopened at its path.
        if checked.elapsed() >= ROTATION_CHECK {
            checked = tokio::time::Instant::now();
            if let LogSink::File(p) = &sink
                && file_id(&sink) != opened
            {
                let _ = out.flush();
                match open(&sink) {
                    Ok(o) => {
                        out = std::io::BufWriter::with_capacity(64 * 1024, o);
                        opened = file_id(&sink);
                        tracing::info!(path = %p.display(), "Access log reopened (rotated)");
                    }
                    Err(e) => tracing::warn!(path = %p.display(), error = %e, "Cannot reopen the rotated access log"),
                }
            }
        }
        let mut batch = 1;
        let mut ok = out.write_all(line.as_bytes()).is_ok();
        // Everything already queued goes out in the same write; then one flush.
        while ok && let Ok(more) = rx.try_recv() {
            ok = out.write_all(more.as_bytes()).is_ok();
            batch += 1;
        }
        if ok {
            ok = out.flush().is_ok();
        }
        if ok {
            metrics.access_log_written.fetch_add(batch, Ordering::Relaxed);
        } else {
            metrics.access_log_dropped.fetch_add(batch, Ordering::Relaxed);
            tracing::warn!(sink = ?sink, "Writing the access log failed; lines dropped");
        }
    }
}

/// Device and inode of the file at the sink's path (`None` if missing or not a file sink).
fn file_id(sink: &LogSink) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    match sink {
        LogSink::File(p) => std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())),
        _ => None,
    }
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
