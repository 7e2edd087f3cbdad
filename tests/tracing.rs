//! Tracing through real sockets: W3C `traceparent` accepted and passed on with the gateway's
//! span as parent, `tracestate` unchanged, and sampled spans exported over OTLP/HTTP (JSON)
//! to a small collector started by the test, which parses what it receives.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

/// A minimal OTLP/HTTP collector: accepts `POST /v1/traces` (JSON), keeps every span.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = Collector::default();
        let c2 = c.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let c3 = c2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let c4 = c3.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers().get("content-type").is_some_and(|v| v == "application/json");
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let mut status = 200;
                            if !ok || doc.is_null() {
                                status = 400;
                            }
                            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                                for a in rs["resource"]["attributes"].as_array().into_iter().flatten() {
                                    if a["key"] == "service.name" {
                                        c4.service_names
                                            .lock()
                                            .push(a["value"]["stringValue"].as_str().unwrap_or("").into());
                                    }
                                }
                                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                    for s in ss["spans"].as_array().into_iter().flatten() {
                                        c4.spans.lock().push(s.clone());
                                    }
                                }
                            }
                            let mut res = Response::new(full("{}"));
                            *res.status_mut() = http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
                });
            }
        });
        (c, addr)
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            if self.spans.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spans.lock().clone()
    }
}

fn config(up: SocketAddr, collector: SocketAddr, sample: &str) -> String {
    format!(
        r#"version: 1
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{up}" }}] }}]
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, public: true }}
observability:
  tracing: {{ otlp: "http://{collector}", sample: {sample}, service_name: edge-gw }}
"#
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"].as_array().and_then(|a| a.iter().find(|x| x["key"] == key)).map_or(&Value::Null, |x| &x["value"])
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_are_exported_and_the_context_is_passed_on() {
    let up = TestUpstream::start("app").await;
    let (collector, caddr) = Collector::start().await;
    let gw = TestGateway::start(&config(up.addr, caddr, "1.0")).await;

    // A client in a trace: same trace, the gateway's span in between.
    let req = Request::get(gw.url("/orders/7"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc,other=1")
        .body(full(""))
        .expect("request");
    assert_eq!(send(req).await.0, 200);
    let seen = up.last();
    let tp = seen.headers["traceparent"].to_str().expect("ascii").to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CLIENT_TRACE, "01"), "{tp}");
    assert_ne!(parts[2], CLIENT_SPAN, "the upstream's parent is the gateway's span");
    assert_eq!(seen.headers["tracestate"], "vendor=abc,other=1");

    // A client without one: a new trace.
    assert_eq!(get(&gw.url("/orders/8")).await.0, 200);
    let tp2 = up.last().headers["traceparent"].to_str().expect("ascii").to_string();
    let p2: Vec<&str> = tp2.split('-').collect();
    assert_eq!(p2.len(), 4);
    assert_ne!(p2[1], CLIENT_TRACE);
    // An invalid traceparent (upper-case flags) or two of them start a new trace, and the
    // client's tracestate is not passed on with it.
    for extra in [
        vec![("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-0A"))],
        vec![
            ("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")),
            ("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00")),
        ],
    ] {
        let mut req = Request::get(gw.url("/orders/9")).header("tracestate", "vendor=abc");
        for (k, v) in &extra {
            req = req.header(*k, v);
        }
        assert_eq!(send(req.body(full("")).expect("request")).await.0, 200);
        let h = up.last().headers;
        let tp = h["traceparent"].to_str().expect("ascii");
        assert!(!tp.contains(CLIENT_TRACE), "{extra:?}: {tp}");
        assert!(!h.contains_key("tracestate"), "{extra:?}");
    }
    // No route: a span named `unmatched`, 404.
    assert_eq!(get(&gw.url("/nothing")).await.0, 404);

    let spans = collector.wait_for(5).await;
    assert_eq!(spans.len(), 5, "{spans:?}");
    let first = spans.iter().find(|s| s["traceId"] == CLIENT_TRACE).expect("the client's trace");
    assert_eq!(first["parentSpanId"], CLIENT_SPAN);
    assert_eq!(first["spanId"], parts[2]);
    assert_eq!(first["name"], "orders");
    assert_eq!(first["kind"], 2);
    assert_eq!(attr(first, "http.request.method")["stringValue"], "GET");
    assert_eq!(attr(first, "url.path")["stringValue"], "/orders/7");
    assert_eq!(attr(first, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(first, "server.address")["stringValue"], up.addr.to_string());
    let start: u64 = first["startTimeUnixNano"].as_str().and_then(|s| s.parse().ok()).expect("start");
    let end: u64 = first["endTimeUnixNano"].as_str().and_then(|s| s.parse().ok()).expect("end");
    assert!(end >= start && start > 1_700_000_000_000_000_000);
    let second = spans.iter().find(|s| s["traceId"] == p2[1]).expect("the new trace");
    assert!(second.get("parentSpanId").is_none());
    assert_eq!(second["spanId"], p2[2]);
    let unmatched = spans.iter().find(|s| s["name"] == "unmatched").expect("unmatched");
    assert_eq!(attr(unmatched, "http.response.status_code")["intValue"], "404");
    assert!(collector.service_names.lock().iter().all(|n| n == "edge-gw"));
}

#[tokio::test]
async fn sampling_follows_the_parent_and_the_ratio() {
    let up = TestUpstream::start("app").await;
    let (collector, caddr) = Collector::start().await;
    let gw = TestGateway::start(&config(up.addr, caddr, "0")).await;
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/orders/1")).await.0, 200);
        let tp = up.last().headers["traceparent"].to_str().expect("ascii").to_string();
        assert!(tp.ends_with("-00"), "not sampled, and says so: {tp}");
    }
    // A client that samples its trace is followed (parent-based).
    let req = Request::get(gw.url("/orders/2"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(full(""))
        .expect("request");
    assert_eq!(send(req).await.0, 200);
    let spans = collector.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let spans_later = collector.spans.lock().len();
    assert_eq!((spans.len(), spans_later), (1, 1), "only the sampled request's span: {spans:?}");
    assert_eq!(spans[0]["traceId"], CLIENT_TRACE);
}

#[tokio::test]
async fn a_dead_collector_costs_spans_not_requests() {
    let up = TestUpstream::start("app").await;
    let dead_port = dead_port();
    let dead = dead_port.addr;
    let yaml = config(up.addr, dead, "1")
        .replace("listeners:", "admin: { bind: \"127.0.0.1:0\", public_metrics: true }\nlisteners:");
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/orders/1")).await.0, 200);
    }
    let admin = gw.gw.admin_addr().expect("admin");
    let mut failed = 0.0;
    for _ in 0..100 {
        let (_, _, text) = get(&format!("http://{admin}/metrics")).await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
        failed = scrape
            .samples
            .iter()
            .find(|s| s.metric == "portcullis_trace_spans_total" && s.labels.get("result") == Some("failed"))
            .map_or(0.0, |s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            });
        if failed >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed, 10.0);
}
