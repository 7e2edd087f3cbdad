//! The access log: one JSON line per request, written by a task of its own through a
//! bounded queue, so a slow sink costs dropped (and counted) lines, never a slower proxy.
//!
//! A line never carries a credential: no request or response header is logged, and the
//! path is the normalised path without its query string (which may hold an API key).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::config::{AccessLogConfig, LogSink};

/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 8192;
/// Longest path written; longer ones are cut (and marked with `…`).
const MAX_PATH: usize = 1024;

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    tx: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

/// What is known of a request when its response head is ready; completed when its body is
/// finished with.
#[derive(Debug, Default)]
pub struct Record {
    /// Request id (as returned to the client).
    pub request_id: String,
    /// Matched route, if any.
    pub route: Option<String>,
    /// Client address.
    pub client: String,
    /// Method.
    pub method: String,
    /// Normalised path, without the query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: &'static str,
    /// Status sent.
    pub status: u16,
    /// Upstream name, if one was chosen.
    pub upstream: Option<String>,
    /// Target `host:port` that answered.
    pub target: Option<String>,
    /// Time to the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// W3C trace id from `traceparent`, if the client sent a valid one.
    pub trace_id: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    client_ip: &'a str,
    method: &'a str,
    path: &'a str,
    version: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero).
pub fn trace_id(traceparent: &[u8]) -> Option<String> {
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
    ok.then(|| trace.to_string())
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
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(config.to.clone(), rx, metrics.clone()));
        Arc::new(AccessLog { config, tx, metrics })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Queue the line for `record`, finished after `duration` with these byte counts. Never
    /// waits: a full queue drops the line and counts it.
    pub fn log(&self, r: &Record, duration: Duration, bytes_in: u64, bytes_out: u64) {
        let line = Line {
            time: super::rfc3339_millis(SystemTime::now()),
            request_id: &r.request_id,
            route: r.route.as_deref(),
            client_ip: &r.client,
            method: &r.method,
            path: &r.path,
            version: r.version,
            status: r.status,
            bytes_in,
            bytes_out,
            duration_ms: duration.as_secs_f64() * 1000.0,
            upstream: r.upstream.as_deref(),
            target: r.target.as_deref(),
            upstream_ms: r.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            trace_id: r.trace_id.as_deref(),
        };
        let Ok(mut text) = serde_json::to_string(&line) else { return };
        text.push('\n');
        if self.tx.try_send(text).is_err() {
            self.metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn open(sink: &LogSink) -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
    Ok(match sink {
        LogSink::Stdout => Box::new(tokio::io::stdout()),
        LogSink::Stderr => Box::new(tokio::io::stderr()),
        LogSink::File(p) => Box::new(tokio::fs::OpenOptions::new().create(true).append(true).open(p).await?),
    })
}

async fn write_lines(sink: LogSink, mut rx: mpsc::Receiver<String>, metrics: Arc<Metrics>) {
    let out = match open(&sink).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(sink = ?sink, error = %e, "Cannot open the access log; its lines are dropped");
            // Keep draining so that senders count drops instead of filling the queue.
            while rx.recv().await.is_some() {
                metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, out);
    while let Some(line) = rx.recv().await {
        let mut batch = 1;
        let mut ok = out.write_all(line.as_bytes()).await.is_ok();
        // Everything already queued goes out in the same write; then one flush.
        while ok && let Ok(more) = rx.try_recv() {
            ok = out.write_all(more.as_bytes()).await.is_ok();
            batch += 1;
        }
        if ok {
            ok = out.flush().await.is_ok();
        }
        if ok {
            metrics.access_log_written.fetch_add(batch, Ordering::Relaxed);
        } else {
            metrics.access_log_dropped.fetch_add(batch, Ordering::Relaxed);
            tracing::warn!(sink = ?sink, "Writing the access log failed; lines dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(format!("00-{id}-00f067aa0ba902b7-01").as_bytes()).as_deref(), Some(id));
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
