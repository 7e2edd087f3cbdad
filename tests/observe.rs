//! Observability through real sockets: `/metrics` scraped from the admin listener and read
//! with a real Prometheus text parser.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::Request;

const TOKEN: &str = "metrics-test-token-0123456789";

fn config(up: std::net::SocketAddr, admin_extra: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin: {{ bind: \"127.0.0.1:0\"{admin_extra} }}\nupstreams:\n  - name: up\n    targets: [{{ url: \"http://{up}\" }}]\nroutes:\n  - name: orders\n    match: {{ prefix: /orders }}\n    upstream: up\n    public: true\n  - name: status\n    match: {{ prefix: /status }}\n    upstream: up\n    public: true\n"
    )
}

/// Scrape `/metrics` and parse it; samples as (name, labels) → value.
async fn scrape(gw: &TestGateway, token: Option<&str>) -> (u16, HashMap<(String, Vec<(String, String)>), f64>) {
    let addr = gw.gw.admin_addr().expect("admin");
    let mut req = Request::get(format!("http://{addr}/metrics"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, headers, body) = send(req.body(full("")).expect("req")).await;
    if status != 200 {
        return (status, HashMap::new());
    }
    assert!(headers["content-type"].to_str().unwrap_or("").starts_with("text/plain; version=0.0.4"));
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert((s.metric, labels), v);
    }
    (200, out)
}

fn key(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.sort();
    (name.to_string(), l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_request_by_route_method_and_status() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start_with_token(&config(up.addr, ""), Some(TOKEN)).await;
    let c = client();
    for _ in 0..7 {
        let res = c.request(Request::get(gw.url("/orders/1")).body(full("")).expect("req")).await.expect("res");
        assert_eq!(res.status(), 200);
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    for _ in 0..3 {
        let res = c.request(Request::post(gw.url("/orders")).body(full("x")).expect("req")).await.expect("res");
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    for _ in 0..4 {
        let (s, _, _) = get(&gw.url("/status/503")).await;
        assert_eq!(s, 503);
    }
    for _ in 0..2 {
        let (s, _, _) = get(&gw.url("/nowhere")).await;
        assert_eq!(s, 404);
    }
    // The duration is recorded when the response body is finished with: let it settle.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (status, _) = scrape(&gw, None).await;
    assert_eq!(status, 401, "metrics need the token unless public_metrics");
    let (_, m) = scrape(&gw, Some(TOKEN)).await;
    let get_n = |name: &str, labels: &[(&str, &str)]| m.get(&key(name, labels)).copied();
    let req = "portcullis_requests_total";
    assert_eq!(get_n(req, &[("route", "orders"), ("method", "GET"), ("status", "2xx")]), Some(7.0));
    assert_eq!(get_n(req, &[("route", "orders"), ("method", "POST"), ("status", "2xx")]), Some(3.0));
    assert_eq!(get_n(req, &[("route", "status"), ("method", "GET"), ("status", "5xx")]), Some(4.0));
    assert_eq!(get_n(req, &[("route", ""), ("method", "GET"), ("status", "4xx")]), Some(2.0));
    let total: f64 = m.iter().filter(|((n, _), _)| n == req).map(|(_, v)| v).sum();
    assert_eq!(total, 16.0, "nothing else was counted");
    assert_eq!(get_n("portcullis_request_duration_seconds_count", &[("route", "orders")]), Some(10.0));
    assert_eq!(get_n("portcullis_upstream_duration_seconds_count", &[("route", "status")]), Some(4.0));
    assert_eq!(get_n("portcullis_config_version", &[]), Some(1.0));
    let target = format!("http://{}", up.addr);
    assert_eq!(
        get_n("portcullis_target_healthy", &[("upstream", "up"), ("target", &target), ("role", "primary")]),
        Some(1.0)
    );
    assert!(get_n("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    // No raw path, query or client address ever becomes a label.
    for (_, labels) in m.keys() {
        for (k, v) in labels {
            assert!(
                !v.contains("/orders/1") && !v.contains("nowhere") && !v.contains("127.0.0.1:") || k == "target",
                "{k}={v}"
            );
        }
    }

    // Counters survive a reload; the reload is counted.
    let reloaded = config(up.addr, "").replace("name: status", "name: status2");
    gw.rewrite(&reloaded).await.expect("reload");
    let (_, m) = scrape(&gw, Some(TOKEN)).await;
    assert_eq!(m.get(&key(req, &[("route", "orders"), ("method", "GET"), ("status", "2xx")])).copied(), Some(7.0));
    assert_eq!(m.get(&key("portcullis_config_reloads_total", &[("result", "applied")])).copied(), Some(1.0));
    assert_eq!(m.get(&key("portcullis_config_version", &[])).copied(), Some(2.0));
    std::fs::write(&gw.path, "version: 1\nlisteners: oops\n").expect("write");
    assert!(gw.gw.reload().await.is_err());
    let (_, m) = scrape(&gw, Some(TOKEN)).await;
    assert_eq!(m.get(&key("portcullis_config_reloads_total", &[("result", "failed")])).copied(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_no_token_but_the_api_still_does() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start_with_token(&config(up.addr, ", public_metrics: true"), Some(TOKEN)).await;
    let (status, m) = scrape(&gw, None).await;
    assert_eq!(status, 200);
    assert!(m.contains_key(&key("portcullis_config_version", &[])));
    let (s, _) = gw.admin_get("/api/v1/status", None).await;
    assert_eq!(s, 401);
}

fn with_access_log(up: std::net::SocketAddr, to: &std::path::Path) -> String {
    config(up, "").replacen(
        "upstreams:",
        &format!("observability: {{ access_log: {{ format: json, to: \"{}\" }} }}\nupstreams:", to.display()),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_and_carry_no_credentials() {
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let gw = TestGateway::start(&with_access_log(up.addr, &file)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for i in 0..5 {
        let req = Request::post(gw.url(&format!("/orders/./{i}?api_key=query-secret-1&x=1")))
            .header("authorization", "Bearer header-secret-2")
            .header("x-api-key", "header-secret-3")
            .header("cookie", "session=cookie-secret-4")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(full("hello"))
            .expect("req");
        let (status, _, _) = send(req).await;
        assert_eq!(status, 200);
    }
    let (s, _, _) = get(&gw.url("/nowhere?token=query-secret-5")).await;
    assert_eq!(s, 404);
    let mut text = String::new();
    for _ in 0..500 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().count() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert_eq!(lines.len(), 6, "{text}");
    for secret in ["query-secret", "header-secret", "cookie-secret", "Bearer", "authorization", "api_key"] {
        assert!(
            !text.to_lowercase().contains(&secret.to_lowercase()),
            "`{secret}` leaked into the access log:\n{text}"
        );
    }
    let first = &lines[0];
    assert_eq!(first["route"], "orders");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/orders/0", "normalised, without the query");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], 1, "the upstream answered `a`");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["upstream"], "up");
    assert_eq!(first["target"], up.addr.to_string());
    assert_eq!(first["trace_id"], trace);
    assert_eq!(first["version"], "HTTP/1.1");
    assert!(first["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(first["duration_ms"].as_f64().is_some() && first["upstream_ms"].as_f64().is_some());
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 24), "{}", first["time"]);
    let last = &lines[5];
    assert_eq!((last["status"].as_u64(), last["path"].as_str()), (Some(404), Some("/nowhere")));
    assert!(last.get("route").is_none() && last.get("upstream").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_takes_nothing_costs_dropped_lines_not_requests() {
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    // A FIFO nobody reads: opening it for writing blocks, so the writer never takes a line.
    let fifo = dir.join("stuck.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let gw = TestGateway::start_with_token(&with_access_log(up.addr, &fifo), Some(TOKEN)).await;
    let url = gw.url("/orders/x");
    let total = 9_000;
    let (_, load) = spawn_load(&url, total, 8);
    let statuses = tokio::time::timeout(Duration::from_secs(120), load).await.expect("requests kept flowing");
    assert!(statuses.expect("load").iter().all(|s| *s == 200));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, m) = scrape(&gw, Some(TOKEN)).await;
    let dropped = m.get(&key("portcullis_access_log_dropped_total", &[])).copied().unwrap_or(0.0);
    // The queue holds 8,192 lines, and the writer took one before blocking on the FIFO.
    assert!(dropped >= (total - 8192 - 1) as f64, "dropped {dropped}");
    // Let the blocked writer go, so the test runtime can shut down.
    let f = fifo.clone();
    std::thread::spawn(move || {
        let _ = std::fs::read(f);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_access_log_is_reopened() {
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let gw = TestGateway::start(&with_access_log(up.addr, &file)).await;
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    get(&gw.url("/orders/first")).await;
    for _ in 0..500 {
        if lines(&file) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines(&file), 1);
    // logrotate's default: rename, and the writer must start a new file at the old path.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&file, &rotated).expect("rename");
    let mut reopened = false;
    for _ in 0..100 {
        get(&gw.url("/orders/after")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if lines(&file) > 0 {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "no new file at the old path");
    assert!(std::fs::read_to_string(&rotated).expect("rotated").contains("/orders/first"));
    assert!(std::fs::read_to_string(&file).expect("new").contains("/orders/after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_is_counted_and_logged_as_499() {
    let up = TestUpstream::start("a").await;
    up.delay_ms.store(2_000, std::sync::atomic::Ordering::SeqCst);
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let gw = TestGateway::start_with_token(&with_access_log(up.addr, &file), Some(TOKEN)).await;
    {
        // Send a request, then hang up while the upstream thinks.
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        s.write_all(b"GET /orders/slow HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(499), Some("orders")), "{line}");
    let (_, m) = scrape(&gw, Some(TOKEN)).await;
    assert_eq!(
        m.get(&key("portcullis_requests_total", &[("route", "orders"), ("method", "GET"), ("status", "4xx")])).copied(),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_out_every_queued_line() {
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let file = dir.join("access.log");
    let gw = TestGateway::start(&with_access_log(up.addr, &file)).await;
    let c = client();
    for _ in 0..200 {
        let res = c.request(Request::get(gw.url("/orders/n")).body(full("")).expect("req")).await.expect("res");
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    drop(c);
    assert!(gw.gw.shutdown(Duration::from_secs(5)).await);
    let n = std::fs::read_to_string(&file).expect("log").lines().count();
    assert_eq!(n, 200, "every line is out when shutdown returns");
}

/// Answers made by the connection guard before routing are counted, and target pools show
/// their idle connections.
#[tokio::test]
async fn refused_heads_and_pool_use_are_in_the_metrics() {
    let up = TestUpstream::start("a").await;
    let yaml = simple_config(&[up.addr], "max_header_bytes: 1KiB", "")
        .replace("listeners:", "admin: { bind: \"127.0.0.1:0\", public_metrics: true }\nlisteners:");
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/x")).await.0, 200);
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(4096));
    let (head, _) = raw_exchange(gw.addr(), big.as_bytes(), Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let admin = gw.gw.admin_addr().expect("admin");
    let (_, _, text) = get(&format!("http://{admin}/metrics")).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let find = |metric: &str, label: (&str, &str)| {
        scrape.samples.iter().find(|s| s.metric == metric && s.labels.get(label.0) == Some(label.1)).map(|s| {
            match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => -1.0,
            }
        })
    };
    assert!(find("portcullis_refused_heads_total", ("status", "431")).is_some_and(|v| v >= 1.0), "{text}");
    let target = format!("http://{}", up.addr);
    assert_eq!(find("portcullis_target_idle_connections", ("target", &target)), Some(1.0), "{text}");
}
