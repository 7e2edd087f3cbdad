//! Traffic protection through real sockets: ban rules (bad API keys, 404 scans, refused
//! consumers), bans refused at accept and per request and released after `ban_for`, repeat
//! offenders banned twice as long, IP rules, bans and quotas surviving a restart, the bans
//! CLI and admin API, slowloris at one byte a second, and the admitted rate over 10 s.
//!
//! Clients on other loopback addresses (127.0.0.2, 127.0.0.3) play other machines: Linux
//! routes all of 127.0.0.0/8 to the loopback interface.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const ATTACKER: &str = "127.0.0.2";
const BYSTANDER: &str = "127.0.0.3";
/// A client nobody bans in the first test.
const NEIGHBOUR: &str = "127.0.0.4";
const BAD_KEY: &str = "pcl_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A client whose connections come from `ip`.
fn client_from(ip: &str) -> Client<HttpConnector, TestBody> {
    let mut c = HttpConnector::new();
    c.set_local_address(Some(ip.parse().expect("ip")));
    Client::builder(TokioExecutor::new()).build(c)
}

async fn call_from(
    c: &Client<HttpConnector, TestBody>,
    url: &str,
    key: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut req = Request::get(url);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    match c.request(req.body(full("")).expect("request")).await {
        Ok(res) => {
            use http_body_util::BodyExt;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }
        // A connection refused at accept may be reset before the answer is read.
        Err(_) => (0, http::HeaderMap::new(), String::new()),
    }
}

/// Connect from `ip` and read what the gateway says without sending anything.
async fn raw_from(ip: &str, to: SocketAddr) -> String {
    raw_within(ip, to, Duration::from_secs(5)).await
}

/// [`raw_from`], reading for at most `wait`.
async fn raw_within(ip: &str, to: SocketAddr, wait: Duration) -> String {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(ip.parse().expect("ip"), 0)).expect("bind");
    let mut s = sock.connect(to).await.expect("connect");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn admin(gw: &portcullis::server::Gateway, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let addr = gw.admin_addr().expect("admin");
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", "Bearer test-admin-token-0123456789")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .expect("request");
    let (status, _, text) = send(req).await;
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

async fn start(path: &Path) -> portcullis::server::Gateway {
    let cfg = portcullis::config::load(path).unwrap_or_else(|e| panic!("config:\n{e}"));
    let options = portcullis::server::StartOptions { admin_token: Some("test-admin-token-0123456789".into()) };
    portcullis::server::Gateway::start_with(cfg, Some(path.to_path_buf()), 0, options).await.expect("start")
}

fn config(db: &Path, up: SocketAddr, protection: &str, extra_routes: &str) -> String {
    format!(
        r#"version: 1
node: {{ store: "sqlite://{db}" }}
admin: {{ bind: "127.0.0.1:0", public_metrics: true }}
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{up}" }}] }}]
routes:
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, public: true }}
  - {{ name: keyed, match: {{ prefix: /api }}, upstream: app, auth: [api_key] }}
{extra_routes}{protection}"#,
        db = db.display()
    )
}

/// Poll `f` every 50 ms until it is true or `limit` passes; whether it became true.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_bad_keys_ban_the_ip_until_ban_for_while_others_are_served() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    let rules = "protection:\n  bans: [{ on: auth_failures, threshold: 20, window: 1m, ban_for: 2s }]\n";
    std::fs::write(&path, config(&dir.join("state.db"), up.addr, rules, "")).expect("write");
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("listener");
    let url = |p: &str| format!("http://{addr}{p}");
    let attacker = client_from(ATTACKER);

    // A bystander keeps calling throughout; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let background = {
        let (stop, served, url) = (stop.clone(), served.clone(), url("/open/bystander"));
        tokio::spawn(async move {
            let c = client_from(NEIGHBOUR);
            let mut bad = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let s = call_from(&c, &url, None).await.0;
                if s == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    bad.push(s);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bad
        })
    };

    // A missing key is not an attack: it does not count.
    for _ in 0..25 {
        assert_eq!(call_from(&attacker, &url("/api/x"), None).await.0, 401);
    }
    // The ban starts with the 20th bad key: no sooner than this instant.
    let mut before_ban = Instant::now();
    for i in 0..20 {
        if i == 19 {
            before_ban = Instant::now();
        }
        assert_eq!(call_from(&attacker, &url("/api/x"), Some(BAD_KEY)).await.0, 401, "bad key {i}");
    }
    // The 21st: on the kept-alive connection, refused per request with 403 problem+json...
    let (status, h, body) = call_from(&attacker, &url("/open/x"), None).await;
    assert_eq!(status, 403, "{body}");
    problem(403, &h, &body);
    // ...and a new connection is answered at accept, before it sends anything.
    let raw = raw_from(ATTACKER, addr).await;
    assert!(raw.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{raw}");
    assert!(raw.contains("application/problem+json") && raw.contains("\"status\":403"), "{raw}");

    // The ban is listed, counted and announced.
    let (s, bans) = admin(&gw, "GET", "/api/v1/bans", "").await;
    assert_eq!(s, 200);
    assert_eq!(bans[0]["key"], format!("ip:{ATTACKER}"), "{bans}");
    assert_eq!(bans[0]["offences"], 1);
    let first_len = bans[0]["until_ms"].as_i64().expect("until") - bans[0]["created_ms"].as_i64().expect("created");
    assert_eq!(first_len, 2_000);
    let (_, _, text) = get(&format!("http://{}/metrics", gw.admin_addr().expect("admin"))).await;
    assert_eq!(metric_sum(&text, "portcullis_bans_total", &[("on", "auth_failures")]), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "portcullis_bans_active", &[]), 1.0);
    assert!(metric_sum(&text, "portcullis_blocked_total", &[("reason", "banned"), ("stage", "accept")]) >= 1.0);
    assert!(metric_sum(&text, "portcullis_blocked_total", &[("reason", "banned"), ("stage", "request")]) >= 1.0);

    // Released after ban_for (2 s), not before.
    let fresh = || client_from(ATTACKER);
    assert!(
        eventually(Duration::from_secs(10), async || call_from(&fresh(), &url("/open/back"), None).await.0 == 200)
            .await,
        "the ban never ended"
    );
    let lasted = before_ban.elapsed();
    assert!(lasted >= Duration::from_millis(1_900), "released early: {lasted:?}");

    // A repeat offender is banned twice as long.
    let again = client_from(ATTACKER);
    for _ in 0..20 {
        call_from(&again, &url("/api/x"), Some(BAD_KEY)).await;
    }
    let (_, bans) = admin(&gw, "GET", "/api/v1/bans", "").await;
    assert_eq!(bans[0]["offences"], 2, "{bans}");
    let len = bans[0]["until_ms"].as_i64().expect("until") - bans[0]["created_ms"].as_i64().expect("created");
    assert_eq!(len, 4_000);
    // An operator lifts it at once.
    let (s, _) = admin(&gw, "DELETE", &format!("/api/v1/bans/ip:{ATTACKER}"), "").await;
    assert_eq!(s, 204);
    assert_eq!(call_from(&client_from(ATTACKER), &url("/open/lifted"), None).await.0, 200);
    let (s, _) = admin(&gw, "DELETE", &format!("/api/v1/bans/ip:{ATTACKER}"), "").await;
    assert_eq!(s, 404, "nothing left to lift");
    // An operator bans a whole network: both of its addresses, and nothing else.
    let (s, ban) = admin(&gw, "POST", "/api/v1/bans", r#"{"key":"ip:127.0.0.2/31","for":"1m","reason":"drill"}"#).await;
    assert_eq!((s, ban["key"].as_str()), (201, Some("ip:127.0.0.2/31")), "{ban}");
    assert!(raw_from(ATTACKER, addr).await.starts_with("HTTP/1.1 403"));
    assert!(raw_from("127.0.0.3", addr).await.starts_with("HTTP/1.1 403"));
    assert_eq!(get(&url("/open/local")).await.0, 200, "127.0.0.1 is outside the /31");
    let (s, _) = admin(&gw, "DELETE", "/api/v1/bans/ip:127.0.0.2%2F31", "").await;
    assert_eq!(s, 204);

    stop.store(true, Ordering::SeqCst);
    let bad = background.await.expect("bystander");
    assert!(bad.is_empty(), "the bystander got {bad:?}");
    assert!(served.load(Ordering::SeqCst) >= 10, "the bystander was served throughout");
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_and_a_ban_survive_a_restart_and_the_cli_lifts_bans_on_the_store() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    let quota = "  - { name: metered, match: { prefix: /metered }, upstream: app, auth: [api_key], quota: { limit: 3, period: day } }\n";
    std::fs::write(&path, config(&dir.join("state.db"), up.addr, "", quota)).expect("write");
    assert_eq!(cli(&path, &["consumers", "add", "app1"]).0, 0);
    let (code, key, _) = cli(&path, &["keys", "issue", "app1"]);
    assert_eq!(code, 0);
    let key = key.trim().to_string();

    let gw = start(&path).await;
    let url = |gw: &portcullis::server::Gateway, p: &str| format!("http://{}{p}", gw.local_addr("public").expect("l"));
    let c = client();
    let keyed = |u: String| {
        let c = c.clone();
        let key = key.clone();
        async move {
            let req = Request::get(u).header("x-api-key", key).body(full("")).expect("request");
            let res = c.request(req).await.expect("response");
            let h = res.headers().clone();
            (res.status().as_u16(), h)
        }
    };
    for left in ["2", "1"] {
        let (s, h) = keyed(url(&gw, "/metered")).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-quota-limit"], "3");
        assert_eq!(h["x-quota-remaining"], left);
        let reset: u64 = h["x-quota-reset"].to_str().expect("reset").parse().expect("number");
        assert!((1..=86_400).contains(&reset), "{reset}");
    }
    let (s, ban) =
        admin(&gw, "POST", "/api/v1/bans", &format!(r#"{{"key":"{BYSTANDER}","for":"1h","reason":"test"}}"#)).await;
    assert_eq!(s, 201, "{ban}");
    assert_eq!(ban["key"], format!("ip:{BYSTANDER}"));
    let (s, _) = admin(&gw, "POST", "/api/v1/bans", r#"{"key":"not-an-ip","for":"1h"}"#).await;
    assert_eq!(s, 400);
    gw.shutdown(Duration::from_secs(2)).await;

    // A new process on the same store.
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("listener");
    let (s, h) = keyed(url(&gw, "/metered")).await;
    assert_eq!((s, h["x-quota-remaining"].to_str().expect("h")), (200, "0"), "the count survived the restart");
    let (s, h) = keyed(url(&gw, "/metered")).await;
    assert_eq!(s, 429);
    assert_eq!(h["x-quota-remaining"], "0");
    let retry: u64 = h["retry-after"].to_str().expect("retry").parse().expect("number");
    assert_eq!(h["x-quota-reset"].to_str().expect("reset").parse::<u64>().expect("n").max(1), retry);
    assert_eq!(up.count(), 3, "the refused request did not reach the upstream");
    let raw = raw_from(BYSTANDER, addr).await;
    assert!(raw.starts_with("HTTP/1.1 403"), "the ban survived the restart: {raw}");

    // The CLI lists the ban on the store and lifts it; the running node follows.
    let (code, out, _) = cli(&path, &["bans", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("ip:{BYSTANDER}")) && out.contains("test"), "{out}");
    let (code, _, err) = cli(&path, &["bans", "unban", BYSTANDER]);
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(5), async || call_from(&client_from(BYSTANDER), &url(&gw, "/open"), None)
            .await
            .0
            == 200)
        .await,
        "the node did not see the lifted ban"
    );
    let (code, _, _) = cli(&path, &["bans", "unban", BYSTANDER]);
    assert_eq!(code, 1, "nothing left to lift");
    // A ban added on the store reaches the running node too.
    let (code, _, err) = cli(&path, &["bans", "add", &format!("ip:{ATTACKER}"), "--for", "1h", "--reason", "ops"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(Duration::from_secs(5), async || raw_within(ATTACKER, addr, Duration::from_millis(300))
            .await
            .starts_with("HTTP/1.1 403"))
        .await,
        "the node did not see the new ban"
    );
    let (code, _, _) = cli(&path, &["bans", "add", "nonsense", "--for", "1h"]);
    assert_eq!(code, 1);
    gw.shutdown(Duration::from_secs(2)).await;

    // Every ban and unban is in the audit log, with who did it.
    let (code, out, _) = cli(&path, &["audit", "tail", "-n", "50", "--json"]);
    assert_eq!(code, 0);
    let kinds: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| (r["kind"].as_str().unwrap_or("").to_string(), r["actor"].as_str().unwrap_or("").to_string()))
        .filter(|(k, _)| k == "ban" || k == "unban")
        .collect();
    assert_eq!(kinds.len(), 3, "{out}");
    assert_eq!(kinds[0], ("ban".to_string(), "admin".to_string()));
    assert_eq!(kinds[1].0, "unban");
    assert!(kinds[1].1.starts_with("cli:"), "{kinds:?}");
    assert_eq!(cli(&path, &["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn ip_rules_refuse_at_accept_and_per_request_after_a_reload() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    let yaml = |rules: &str| config(&dir.join("state.db"), up.addr, rules, "");
    std::fs::write(&path, yaml("")).expect("write");
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("listener");
    let url = format!("http://{addr}/open");
    // A connection opened before the rule, kept alive across the reload.
    let kept = client_from(ATTACKER);
    assert_eq!(call_from(&kept, &url, None).await.0, 200);

    std::fs::write(&path, yaml(&format!("protection:\n  ip_rules: {{ deny: [\"{ATTACKER}/32\"] }}\n"))).expect("write");
    gw.reload().await.expect("reload");
    let (status, h, body) = call_from(&kept, &url, None).await;
    assert_eq!(status, 403, "the kept-alive connection is refused per request");
    problem(403, &h, &body);
    assert!(raw_from(ATTACKER, addr).await.starts_with("HTTP/1.1 403"));
    assert_eq!(call_from(&client_from(BYSTANDER), &url, None).await.0, 200);

    // An allow list admits only its networks; deny still wins inside it.
    let rules = format!("protection:\n  ip_rules: {{ allow: [127.0.0.0/30], deny: [\"{BYSTANDER}\"] }}\n");
    std::fs::write(&path, yaml(&rules)).expect("write");
    gw.reload().await.expect("reload");
    assert_eq!(call_from(&client_from(ATTACKER), &url, None).await.0, 200, "inside allow");
    assert!(raw_from(BYSTANDER, addr).await.starts_with("HTTP/1.1 403"), "denied inside allow");
    assert!(raw_from("127.0.0.9", addr).await.starts_with("HTTP/1.1 403"), "outside allow");
    let (_, _, text) = get(&format!("http://{}/metrics", gw.admin_addr().expect("admin"))).await;
    assert!(
        metric_sum(&text, "portcullis_blocked_total", &[("reason", "ip_rule"), ("stage", "accept")]) >= 3.0,
        "{text}"
    );
    assert_eq!(metric_sum(&text, "portcullis_blocked_total", &[("reason", "ip_rule"), ("stage", "request")]), 1.0);
    assert_eq!(metric_sum(&text, "portcullis_bans_active", &[]), 0.0, "IP rules are not bans");
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_404_scan_bans_the_scanner_but_not_an_exempt_monitor_and_refused_consumers_are_banned() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    let rules = format!(
        "protection:\n  bans:\n    - {{ on: not_found, threshold: 5, window: 1m, ban_for: 1h }}\n    - {{ on: denied, threshold: 3, window: 1m, ban_for: 1h, key: consumer }}\n  exempt: [\"{BYSTANDER}\"]\n"
    );
    let partners = "  - { name: partners, match: { prefix: /partners }, upstream: app, auth: [api_key], allow: { groups: [partners] } }\n";
    std::fs::write(&path, config(&dir.join("state.db"), up.addr, &rules, partners)).expect("write");
    assert_eq!(cli(&path, &["consumers", "add", "nosy"]).0, 0);
    let key = cli(&path, &["keys", "issue", "nosy"]).1.trim().to_string();
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("listener");
    let url = |p: &str| format!("http://{addr}{p}");

    // Five unrouted paths from the scanner: banned.
    let scanner = client_from(ATTACKER);
    for p in ["/.env", "/wp-admin", "/.git/config", "/phpinfo.php", "/backup.zip"] {
        assert_eq!(call_from(&scanner, &url(p), None).await.0, 404);
    }
    assert_eq!(call_from(&scanner, &url("/open"), None).await.0, 403);
    // The exempt monitor makes as many 404s and stays served.
    let monitor = client_from(BYSTANDER);
    for i in 0..10 {
        assert_eq!(call_from(&monitor, &url(&format!("/missing/{i}")), None).await.0, 404);
    }
    assert_eq!(call_from(&monitor, &url("/open"), None).await.0, 200);
    // Exempt means never refused by a ban, even one an operator makes.
    let (s, _) = admin(&gw, "POST", "/api/v1/bans", &format!(r#"{{"key":"{BYSTANDER}","for":"1m"}}"#)).await;
    assert_eq!(s, 201);
    assert_eq!(call_from(&client_from(BYSTANDER), &url("/open"), None).await.0, 200);
    let (s, _) = admin(&gw, "DELETE", &format!("/api/v1/bans/ip:{BYSTANDER}"), "").await;
    assert_eq!(s, 204);

    // A consumer refused by `allow` three times is banned by name, from any address.
    let c = client();
    for _ in 0..3 {
        let req = Request::get(url("/partners/x")).header("x-api-key", &key).body(full("")).expect("req");
        assert_eq!(c.request(req).await.expect("res").status(), 403);
    }
    let req = Request::get(url("/api/own")).header("x-api-key", &key).body(full("")).expect("req");
    let (status, h, body) = send(req).await;
    assert_eq!(status, 403, "the banned consumer is refused on routes it may use");
    problem(403, &h, &body);
    let (_, bans) = admin(&gw, "GET", "/api/v1/bans", "").await;
    let keys: Vec<&str> = bans.as_array().expect("list").iter().filter_map(|b| b["key"].as_str()).collect();
    assert!(keys.contains(&"consumer:nosy") && keys.contains(&"ip:127.0.0.2"), "{bans}");
    assert_eq!(keys.len(), 2, "{bans}");
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Slowloris at one byte a second: cut at `header_timeout` (408), while another client is
/// served the whole time.
#[tokio::test]
async fn slowloris_one_byte_a_second_is_cut_at_header_timeout_while_others_are_served() {
    let up = TestUpstream::start("app").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "header_timeout: 2s", "")).await;
    let addr = gw.addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let url = gw.url("/fast");
    let others = tokio::spawn(async move {
        let mut codes = Vec::new();
        for _ in 0..15 {
            codes.push(get(&url).await.0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        codes
    });
    let started = Instant::now();
    let mut sent = 0;
    let mut answer = Vec::new();
    for &b in head.iter().chain(b"aaaaaaaaaaaaaaaaaaaa") {
        if s.write_all(&[b]).await.is_err() {
            break;
        }
        sent += 1;
        // One byte a second, reading whatever the gateway says meanwhile.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut answer)).await;
                break;
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(sent < 10, "the slow head lived for {sent} bytes at one a second");
    assert!(started.elapsed() >= Duration::from_millis(1_500), "cut before header_timeout");
    let codes = others.await.expect("others");
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(up.count(), 15);
}

/// A client far above the rate for 10 s gets the configured rate (±5%) plus the burst. The
/// burst (half a second's worth) absorbs scheduling stalls of a loaded machine: a stall
/// shorter than it loses no admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admitted_rate_over_ten_seconds_is_the_configured_rate() {
    let up = TestUpstream::start("app").await;
    let extra = "  - { name: limited, match: { prefix: /limited }, upstream: up, public: true, rate_limit: { key: ip, rate: 40/s, burst: 20 } }\n";
    let gw = TestGateway::start(&simple_config(&[up.addr], "", extra)).await;
    let url = gw.url("/limited");
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run = Duration::from_secs(10);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, admitted, refused) = (url.clone(), admitted.clone(), refused.clone());
            tokio::spawn(async move {
                let c = client();
                while started.elapsed() < run {
                    let req = Request::get(&url).body(full("")).expect("req");
                    match c.request(req).await.map(|r| r.status().as_u16()) {
                        Ok(200) => admitted.fetch_add(1, Ordering::SeqCst),
                        Ok(429) => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other:?}"),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let secs = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    let expected = 40.0 * secs + 20.0;
    assert!(refused.load(Ordering::SeqCst) > 100, "the client was not above the rate");
    // Never more than the rate allows (the limiter's promise); a stalled client thread can
    // only take fewer, so the lower bound has room for a loaded machine.
    assert!(
        admitted <= expected * 1.05 && admitted >= expected * 0.85,
        "admitted {admitted} in {secs:.2} s; expected {expected:.0} (+5% / -15%)"
    );
}

/// `portcullis bans … --admin URL` works on a running node through its admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bans_cli_works_online_through_the_admin_api() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    std::fs::write(&path, config(&dir.join("state.db"), up.addr, "", "")).expect("write");
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("listener");
    let admin_url = format!("http://{}", gw.admin_addr().expect("admin"));
    let run = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(args).args(["--admin", &admin_url]).env_remove("PORTCULLIS_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("PORTCULLIS_ADMIN_TOKEN", t);
        }
        let out = cmd.output().expect("run portcullis");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token = Some("test-admin-token-0123456789");
    let (code, _, err) = run(&["bans", "add", ATTACKER, "--for", "10m", "--reason", "cli drill"], token);
    assert_eq!(code, 0, "{err}");
    assert!(raw_from(ATTACKER, addr).await.starts_with("HTTP/1.1 403"), "banned at once");
    let (code, out, _) = run(&["bans", "list", "--json"], token);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list[0]["key"], format!("ip:{ATTACKER}"));
    assert_eq!(list[0]["reason"], "cli drill");
    // Without the token the node refuses, and the CLI says how to fix it.
    let (code, _, err) = run(&["bans", "list"], None);
    assert_eq!(code, 1);
    assert!(err.contains("401") && err.contains("PORTCULLIS_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = run(&["bans", "unban", &format!("ip:{ATTACKER}")], token);
    assert_eq!(code, 0, "{err}");
    assert_eq!(call_from(&client_from(ATTACKER), &format!("http://{addr}/open"), None).await.0, 200);
    let (code, _, err) = run(&["bans", "unban", ATTACKER], token);
    assert_eq!(code, 1, "nothing left to lift: {err}");
    gw.shutdown(Duration::from_secs(2)).await;
}
