//! Rate limits through real sockets: a burst, then 429 problem+json with `Retry-After` and
//! the IETF `RateLimit-Policy` / `RateLimit` headers; keys kept apart; state kept by a reload
//! that keeps the limit; the refusals counted in `/metrics`.

mod common;

use std::time::Duration;

use common::*;
use http::Request;

fn config(up: std::net::SocketAddr, limit: &str) -> String {
    format!(
        r#"version: 1
admin: {{ bind: "127.0.0.1:0", public_metrics: true }}
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{up}" }}] }}]
routes:
  - {{ name: limited, match: {{ prefix: /limited }}, upstream: app, public: true, rate_limit: {limit} }}
  - {{ name: tenants, match: {{ prefix: /tenants }}, upstream: app, public: true, rate_limit: {{ key: "header:x-tenant", rate: 1/m, burst: 2 }} }}
"#
    )
}

async fn get_with(url: &str, header: Option<(&str, &str)>) -> (u16, http::HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    send(req.body(full("")).expect("request")).await
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after_and_ratelimit_headers() {
    let up = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(up.addr, "{ key: ip, rate: 1/m, burst: 3 }")).await;
    for i in 0..3 {
        assert_eq!(get(&gw.url("/limited")).await.0, 200, "request {i} is within the burst");
    }
    let (status, h, body) = get(&gw.url("/limited")).await;
    assert_eq!(status, 429);
    problem(429, &h, &body);
    // One request a minute: the next is allowed in 60 s (59 if a second passed since the
    // burst began: the wait is rounded up to whole seconds).
    let retry: u64 = h["retry-after"].to_str().ok().and_then(|v| v.parse().ok()).expect("retry-after");
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-policy"], "\"route\";q=3;w=180");
    assert_eq!(h["ratelimit"], format!("\"route\";r=0;t={retry}").as_str());
    assert_eq!(up.count(), 3, "refused requests never reach the upstream");

    // Keys are kept apart: each tenant has its own bucket; no header falls back to the IP.
    for tenant in ["a", "b"] {
        for _ in 0..2 {
            assert_eq!(get_with(&gw.url("/tenants"), Some(("x-tenant", tenant))).await.0, 200, "{tenant}");
        }
        assert_eq!(get_with(&gw.url("/tenants"), Some(("x-tenant", tenant))).await.0, 429, "{tenant}");
    }

    // A reload that keeps the limit keeps its state.
    let yaml = config(up.addr, "{ key: ip, rate: 1/m, burst: 3 }")
        .replace("public: true, rate_limit", "public: true, retry_non_idempotent: true, rate_limit");
    assert!(gw.rewrite(&yaml).await.is_ok());
    assert_eq!(get(&gw.url("/limited")).await.0, 429, "still limited after the reload");

    let admin = gw.gw.admin_addr().expect("admin");
    let (_, _, text) = get(&format!("http://{admin}/metrics")).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let limited = |route: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "portcullis_rate_limited_total" && s.labels.get("route") == Some(route))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => -1.0,
            })
    };
    assert_eq!((limited("limited"), limited("tenants")), (Some(2.0), Some(2.0)), "{text}");
}

#[tokio::test]
async fn the_steady_rate_is_let_through() {
    let up = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(up.addr, "{ key: ip, rate: 20/s, burst: 1 }")).await;
    // Well under the rate: every request passes.
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/limited")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}
