//! Distributed tracing: W3C Trace Context in, one server span per request, the context
//! passed on to the upstream, and sampled spans exported over OTLP/HTTP (JSON) in batches.
//!
//! With `observability.tracing` set, each request gets a span: its trace id is the client's
//! (from a valid `traceparent`) or a new one; the upstream receives a `traceparent` naming
//! the gateway's span as parent, and the client's `tracestate` unchanged. Sampling is
//! parent-based: a client's sampled flag is followed, otherwise `sample` is the share of new
//! traces recorded. Export never slows a request: spans go through a bounded queue to one
//! exporter task, and what does not fit is dropped and counted.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::config::TracingConfig;

static TRACEPARENT_NAME: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Spans queued at most.
const QUEUE: usize = 8192;
/// Spans sent in one request at most.
const BATCH: usize = 512;
/// How long spans wait for a fuller batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Time allowed for one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trace context of one request.
#[derive(Debug, Clone, Copy)]
pub struct TraceContext {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The client's span, if it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// Whether the span is recorded and exported.
    pub sampled: bool,
}

/// Parse a W3C `traceparent`: trace id, parent id and flags, if valid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |x: &str| x.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if version.len() != 2 || !lower_hex(version) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
        || !lower_hex(trace)
        || !lower_hex(parent)
        || !lower_hex(flags)
    {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    crate::hex::decode(trace, &mut t)?;
    crate::hex::decode(parent, &mut p)?;
    let mut f = [0u8; 1];
    crate::hex::decode(flags, &mut f)?;
    (t != [0; 16] && p != [0; 8]).then_some((t, p, f[0]))
}

fn nonzero<const N: usize>(mut f: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let v = f();
        if v != [0; N] {
            return v;
        }
    }
}

impl TraceContext {
    /// The context for a request with these headers: its `traceparent`, if it has exactly
    /// one and it is valid (several are invalid, W3C §3.2).
    pub fn from_headers(h: &http::HeaderMap, sample: f64) -> TraceContext {
        let mut all = h.get_all(&TRACEPARENT_NAME).iter();
        let one = match (all.next(), all.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        };
        Self::start(one, sample)
    }

    /// The context for a request carrying this `traceparent` (or none).
    pub fn start(traceparent: Option<&HeaderValue>, sample: f64) -> TraceContext {
        let span_id = nonzero(|| fastrand::u64(..).to_be_bytes());
        match traceparent.and_then(|v| parse_traceparent(v.as_bytes())) {
            Some((trace_id, parent, flags)) => {
                TraceContext { trace_id, parent: Some(parent), span_id, sampled: flags & 1 == 1 }
            }
            None => TraceContext {
                trace_id: nonzero(|| fastrand::u128(..).to_be_bytes()),
                parent: None,
                span_id,
                sampled: fastrand::f64() < sample,
            },
        }
    }

    /// The `traceparent` for the upstream: this trace, the gateway's span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        crate::hex::push(&self.trace_id, &mut s);
        s.push('-');
        crate::hex::push(&self.span_id, &mut s);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id in hex, as the access log writes it.
    pub fn trace_hex(&self) -> [u8; 32] {
        let mut s = String::with_capacity(32);
        crate::hex::push(&self.trace_id, &mut s);
        let mut out = [0u8; 32];
        out.copy_from_slice(s.as_bytes());
        out
    }
}

/// One finished server span.
#[derive(Debug)]
pub struct Span {
    /// Context.
    pub ctx: TraceContext,
    /// Route name, or `unmatched`.
    pub name: Arc<str>,
    /// Start and end, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// HTTP method.
    pub method: http::Method,
    /// Normalised path.
    pub path: String,
    /// Status sent.
    pub status: u16,
    /// Client address.
    pub client: std::net::IpAddr,
    /// Upstream target that answered.
    pub target: Option<http::uri::Authority>,
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span exporter of one `observability.tracing` setting.
#[derive(Debug)]
pub struct Tracer {
    config: TracingConfig,
    tx: mpsc::Sender<Span>,
    counters: Arc<Counters>,
}

/// Export counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans accepted by the collector.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost to a failed export.
    pub failed: AtomicU64,
}

impl Tracer {
    /// Start the exporter task for `config` (within the runtime).
    pub fn start(config: TracingConfig, counters: Arc<Counters>) -> Arc<Tracer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(rx, config.clone(), counters.clone()));
        Arc::new(Tracer { config, tx, counters })
    }

    /// Its settings.
    pub fn config(&self) -> &TracingConfig {
        &self.config
    }

    /// Share of new traces sampled.
    pub fn sample(&self) -> f64 {
        self.config.sample
    }

    /// Hand over a finished span (never waits).
    pub fn finish(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn export(mut rx: mpsc::Receiver<Span>, cfg: TracingConfig, counters: Arc<Counters>) {
    let client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> = match crate::net::https_connector() {
        Ok(c) => Client::builder(TokioExecutor::new()).pool_max_idle_per_host(2).build(c),
        Err(e) => {
            tracing::error!(error = %e, "Span export disabled");
            return;
        }
    };
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        let first = match rx.recv().await {
            Some(s) => s,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&batch, &cfg.service);
        batch.clear();
        let req = http::Request::post(cfg.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let ok = match req {
            Ok(req) => {
                let exchange = async {
                    let res = client.request(req).await.ok()?;
                    let ok = res.status().is_success();
                    // Read the (small) answer so the connection is kept for the next batch.
                    let _ = http_body_util::Limited::new(res.into_body(), 64 * 1024).collect().await;
                    Some(ok)
                };
                matches!(tokio::time::timeout(EXPORT_TIMEOUT, exchange).await, Ok(Some(true)))
            }
            Err(_) => false,
        };
        if ok {
            counters.exported.fetch_add(n, Ordering::Relaxed);
            failing = false;
        } else {
            counters.failed.fetch_add(n, Ordering::Relaxed);
            if !failing {
                tracing::warn!(endpoint = %cfg.endpoint, spans = n, "Cannot export spans to the OTLP collector; dropping them");
                failing = true;
            }
        }
    }
}

fn attr(out: &mut String, key: &str, value: &str) {
    out.push_str("{\"key\":\"");
    out.push_str(key);
    out.push_str("\",\"value\":{\"stringValue\":\"");
    super::json_escape(value, out);
    out.push_str("\"}},");
}

/// OTLP/HTTP JSON (`ExportTraceServiceRequest`) for a batch of spans.
pub fn encode(spans: &[Span], service: &str) -> String {
    let mut out = String::with_capacity(256 + spans.len() * 512);
    out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    attr(&mut out, "service.name", service);
    out.pop();
    out.push_str("]},\"scopeSpans\":[{\"scope\":{\"name\":\"portcullis\",\"version\":\"");
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str("\"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"traceId\":\"");
        crate::hex::push(&s.ctx.trace_id, &mut out);
        out.push_str("\",\"spanId\":\"");
        crate::hex::push(&s.ctx.span_id, &mut out);
        out.push('"');
        if let Some(p) = s.ctx.parent {
            out.push_str(",\"parentSpanId\":\"");
            crate::hex::push(&p, &mut out);
            out.push('"');
        }
        out.push_str(",\"name\":\"");
        super::json_escape(&s.name, &mut out);
        let _ = write!(
            out,
            "\",\"kind\":2,\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            s.start_ns, s.end_ns
        );
        attr(&mut out, "http.request.method", s.method.as_str());
        attr(&mut out, "url.path", &s.path);
        attr(&mut out, "http.route", &s.name);
        attr(&mut out, "client.address", &s.client.to_string());
        if let Some(t) = &s.target {
            attr(&mut out, "server.address", t.as_str());
        }
        let _ = write!(out, "{{\"key\":\"http.response.status_code\",\"value\":{{\"intValue\":\"{}\"}}}}", s.status);
        // OTLP status: ERROR for 5xx answered by the server side.
        let code = if s.status >= 500 { 2 } else { 0 };
        let _ = write!(out, "],\"status\":{{\"code\":{code}}}}}");
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = TraceContext::start(Some(&v), 0.0);
        assert!(c.sampled, "the parent's decision is followed");
        assert_eq!(c.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        let out = c.traceparent();
        let (t, p, f) = parse_traceparent(out.as_bytes()).expect("valid");
        assert_eq!((t, p, f), (c.trace_id, c.span_id, 1));
        assert_eq!(&c.trace_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        let fresh = TraceContext::start(None, 1.0);
        assert!(fresh.sampled && fresh.parent.is_none());
        assert!(!TraceContext::start(None, 0.0).sampled);
    }

    #[test]
    fn encoded_batches_are_json() {
        let span = Span {
            ctx: TraceContext::start(None, 1.0),
            name: Arc::from("orders"),
            start_ns: 1,
            end_ns: 2,
            method: http::Method::GET,
            path: "/a\"b".into(),
            status: 503,
            client: "127.0.0.1".parse().expect("ip"),
            target: None,
        };
        let v: serde_json::Value = serde_json::from_str(&encode(&[span], "svc")).expect("json");
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["name"], "orders");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["attributes"][1]["value"]["stringValue"], "/a\"b");
    }
}
