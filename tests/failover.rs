//! Health, failover, retries and circuit breaking with real upstream servers that die,
//! fail, reset and stall.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

fn config(upstream: &str, routes_extra: &str) -> String {
    format!(
        "version: 1\nnode: {{ shutdown_grace: 5s }}\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin: {{ bind: \"127.0.0.1:0\" }}\nupstreams:\n  - name: up\n{upstream}\nroutes:\n  - name: all\n    match: {{ prefix: / }}\n    upstream: up\n    public: true\n{routes_extra}"
    )
}

fn urls(addrs: &[SocketAddr]) -> String {
    let t: Vec<String> = addrs.iter().map(|a| format!("{{ url: \"http://{a}\" }}")).collect();
    format!("[{}]", t.join(", "))
}

/// Poll until `f` holds (checks every 10 ms, gives up after `limit`).
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A server that reads each request head, counts it, and closes the connection without an
/// answer.
async fn resetter() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                // Dropped: the connection closes with no response.
            });
        }
    });
    (addr, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_costs_no_request_and_comes_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    // Default passive detection and retries.
    let up = format!(
        "    targets: {}\n    health:\n      active: {{ path: /healthz, interval: 100ms, timeout: 500ms, healthy_after: 2, unhealthy_after: 2 }}",
        urls(&[a.addr, b.addr, c.addr])
    );
    let gw = TestGateway::start(&config(&up, "")).await;
    let url = gw.url("/work");
    let total = 6_000;
    let (next, load) = spawn_load(&url, total, 32);
    // Kill b once traffic flows.
    assert!(until(Duration::from_secs(20), || next.load(Ordering::SeqCst) > 1_000).await);
    b.stop();
    let killed = Instant::now();
    assert!(until(Duration::from_secs(10), || gw.target_state("up", b.addr) == "unhealthy").await);
    let detected = killed.elapsed();
    eprintln!("killed target marked unhealthy after {detected:?} (interval 100ms × unhealthy_after 2)");
    // interval × unhealthy_after = 200 ms, plus the ±10% jitter and scheduling slack (the
    // same two threads run 32 clients, three upstreams and the gateway). Still well under
    // `until`'s 10 s, and only the probes make a target `unhealthy` (passive detection, which
    // also counts the failed attempts on b, makes it `ejected`); the reason below says so too.
    assert!(detected < Duration::from_secs(3), "marked unhealthy after {detected:?}");
    let st = gw.upstream_status("up");
    let bt =
        st["targets"].as_array().expect("targets").iter().find(|t| t["url"] == format!("http://{}", b.addr)).cloned();
    let bt = bt.expect("b listed");
    assert!(bt["reason"].as_str().unwrap_or("").contains("active probes fail"), "{bt}");
    assert_eq!(st["healthy"], 2);
    let failed: Vec<u16> = load.await.expect("load").into_iter().filter(|s| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {total} requests failed: {failed:?}", failed.len());

    // b comes back on the same port and returns to rotation.
    let b2 = TestUpstream::start_on(b.addr, "b").await;
    assert!(until(Duration::from_secs(10), || gw.target_state("up", b.addr) == "healthy").await);
    let cl = client();
    for _ in 0..30 {
        let res = cl.request(Request::get(&url).body(full("")).expect("req")).await.expect("response");
        assert_eq!(res.status(), 200);
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    assert!(b2.count() >= 5, "b got {} requests after coming back", b2.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_when_primaries_are_down_and_nothing_healthy_is_a_fast_503() {
    let (dead1, dead2) = (dead_port(), dead_port());
    let (p1, p2) = (dead1.addr, dead2.addr);
    let backup = TestUpstream::start("backup").await;
    let up = format!(
        "    targets: {}\n    backup: {}\n    health:\n      active: {{ path: /healthz, interval: 100ms, timeout: 300ms, healthy_after: 1, unhealthy_after: 1 }}",
        urls(&[p1, p2]),
        urls(&[backup.addr])
    );
    let gw = TestGateway::start(&config(&up, "")).await;
    assert!(until(Duration::from_secs(10), || gw.upstream_status("up")["serving"] == "backup").await);
    let (status, _, body) = get(&gw.url("/x")).await;
    assert_eq!((status, body.as_str()), (200, "backup"));

    backup.stop();
    assert!(until(Duration::from_secs(10), || gw.upstream_status("up")["serving"] == "none").await);
    let cl = client();
    // The first request also opens the connection; the ones timed below only wait for the answer.
    let warm = cl.request(Request::get(gw.url("/x")).body(full("")).expect("req")).await.expect("response");
    assert_eq!(warm.status(), 503);
    for _ in 0..5 {
        let started = Instant::now();
        let res = cl.request(Request::get(gw.url("/x")).body(full("")).expect("req")).await.expect("response");
        let took = started.elapsed();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("body").to_bytes();
        let p = problem(status, &headers, &String::from_utf8_lossy(&body));
        assert_eq!(status, 503);
        assert_eq!(p["detail"], "no healthy upstream target is available");
        // Nothing is tried and nothing waits (no retry backoff, no queue): a generous bound
        // for a loaded machine that still catches a wait of connect or retry timeouts.
        assert!(took < Duration::from_millis(500), "503 took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_ejects_a_failing_target_and_lets_it_back() {
    let good1 = TestUpstream::start("good1").await;
    let good2 = TestUpstream::start("good2").await;
    let bad = TestUpstream::start("bad").await;
    bad.fail_status.store(500, Ordering::SeqCst);
    // eject_for is far longer than the requests below take, so the target cannot come back
    // while they run, however slow the machine.
    let up = format!(
        "    targets: {}\n    health:\n      passive: {{ consecutive_failures: 3, eject_for: 5s }}",
        urls(&[good1.addr, good2.addr, bad.addr])
    );
    let gw = TestGateway::start(&config(&up, "")).await;
    let cl = client();
    let mut errors = 0;
    for _ in 0..45 {
        let res = cl.request(Request::get(gw.url("/p")).body(full("")).expect("req")).await.expect("response");
        if res.status() != 200 {
            errors += 1;
        }
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    assert_eq!(bad.count(), 3, "the failing target is ejected after 3 failures in a row");
    assert_eq!(errors, 3, "a 500 is passed on, not retried, by default");
    assert_eq!(gw.target_state("up", bad.addr), "ejected");
    let st = gw.upstream_status("up");
    let t = st["targets"][2].clone();
    assert!(t["reason"].as_str().unwrap_or("").contains("3 consecutive failures"), "{t}");
    assert!(t["ejected_until"].is_string(), "{t}");
    // Back after eject_for; healthy again once it answers well.
    bad.fail_status.store(0, Ordering::SeqCst);
    assert!(until(Duration::from_secs(20), || gw.target_state("up", bad.addr) == "healthy").await);
    for _ in 0..30 {
        let (status, _, _) = get(&gw.url("/p")).await;
        assert_eq!(status, 200);
    }
    assert!(bad.count() > 3, "the target is back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_takes_more_than_the_cap() {
    let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await];
    for u in &ups {
        u.fail_status.store(500, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let up = format!(
        "    targets: {}\n    health:\n      passive: {{ consecutive_failures: 2, eject_for: 30s }}",
        urls(&addrs)
    );
    let gw = TestGateway::start(&config(&up, "")).await;
    for _ in 0..60 {
        let (status, _, _) = get(&gw.url("/cap")).await;
        assert_eq!(status, 500);
    }
    // 50% of 3, rounded down: one target ejected, two keep serving.
    let st = gw.upstream_status("up");
    let ejected = st["targets"].as_array().expect("targets").iter().filter(|t| t["state"] == "ejected").count();
    assert_eq!(ejected, 1, "{st}");
    assert_eq!(st["serving"], "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_attempts_when_every_target_fails() {
    let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await];
    for u in &ups {
        u.fail_status.store(503, Ordering::SeqCst);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let up = format!(
        "    targets: {}\n    retries: {{ attempts: 3, on: [\"503\"], budget: 20% }}\n    health:\n      passive: {{ consecutive_failures: 0 }}",
        urls(&addrs)
    );
    let gw = TestGateway::start(&config(&up, "")).await;
    let requests = 1_000;
    let url = gw.url("/b");
    let (_, load) = spawn_load(&url, requests, 4);
    assert!(load.await.expect("load").iter().all(|s| *s == 503));
    let attempts: usize = ups.iter().map(|u| u.count()).sum();
    let bound = requests + requests / 5 + portcullis::upstream::retry::RESERVE as usize + 4;
    assert!(attempts <= bound, "{attempts} upstream attempts for {requests} requests (bound {bound})");
    assert!(attempts > requests + requests / 10, "retries happen while the budget allows: {attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_unless_the_route_opts_in() {
    let (reset_addr, resets) = resetter().await;
    let up = format!("    targets: {}", urls(&[reset_addr]));
    let extra = "  - name: opted-in\n    match: { prefix: /retry-ok }\n    upstream: up\n    public: true\n    retry_non_idempotent: true\n";
    let gw = TestGateway::start(&config(&up, extra)).await;
    let post = |path: &str| Request::post(gw.url(path)).body(full("payload")).expect("req");

    let (status, _, _) = send(post("/orders")).await;
    assert_eq!(status, 502);
    assert_eq!(resets.load(Ordering::SeqCst), 1, "a POST goes out once");

    let (status, _, _) = get(&gw.url("/orders")).await;
    assert_eq!(status, 502);
    assert_eq!(resets.load(Ordering::SeqCst), 3, "a GET is tried twice (attempts: 2)");

    let (status, _, _) = send(post("/retry-ok/orders")).await;
    assert_eq!(status, 502);
    assert_eq!(resets.load(Ordering::SeqCst), 5, "the opted-in route retries its POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_body_is_replayed_on_another_target_and_a_big_one_is_not() {
    let (reset_addr, resets) = resetter().await;
    let good = TestUpstream::start("good").await;
    let up = format!("    targets: {}\n    retries: {{ attempts: 2, max_body: 1KiB }}", urls(&[reset_addr, good.addr]));
    let gw = TestGateway::start(&config(&up, "")).await;
    // Round robin starts at the resetter; the PUT is replayed, body and all, on `good`.
    let small = "x".repeat(600);
    let (status, _, body) = send(Request::put(gw.url("/echo/doc")).body(full(small.clone())).expect("req")).await;
    assert_eq!((status, body.len()), (200, 600));
    assert_eq!(body, small);
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    // The retry moved the round robin on by one: the next PUT starts at the resetter again,
    // with a body too big to keep: no retry.
    let big = "z".repeat(4096);
    let before = good.count();
    let (status, _, _) = send(Request::put(gw.url("/echo/doc")).body(full(big)).expect("req")).await;
    assert_eq!(status, 502);
    assert_eq!(resets.load(Ordering::SeqCst), 2);
    assert_eq!(good.count(), before, "the big body was not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_refuses_beyond_connections_and_pending() {
    let slow = TestUpstream::start("slow").await;
    // Long enough that all six requests reach the gateway while the first two are in flight.
    slow.delay_ms.store(2_000, Ordering::SeqCst);
    let up = format!("    targets: {}\n    limits: {{ max_connections: 2, max_pending: 1 }}", urls(&[slow.addr]));
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = gw.url("/cb");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, headers, body) = t.await.expect("task");
        match status {
            200 => ok += 1,
            503 => {
                let p = problem(status, &headers, &body);
                assert!(p["detail"].as_str().unwrap_or("").contains("overloaded"), "{p}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + refused, 6);
    assert!(refused >= 3, "two in flight and one waiting; the rest refused: {ok} ok, {refused} refused");
    assert!(ok >= 2, "{ok} ok");
    assert!(slow.count() <= 3, "the upstream never saw more than its limits allow at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_survives_a_reload_and_probes_follow_the_new_config() {
    let good = TestUpstream::start("good").await;
    let dead_port = dead_port();
    let dead = dead_port.addr;
    let probe = |interval: &str| {
        format!(
            "    targets: {}\n    health:\n      active: {{ path: /healthz, interval: {interval}, timeout: 300ms, healthy_after: 1, unhealthy_after: 1 }}",
            urls(&[good.addr, dead])
        )
    };
    let gw = TestGateway::start(&config(&probe("100ms"), "")).await;
    assert!(until(Duration::from_secs(10), || gw.target_state("up", dead) == "unhealthy").await);
    // A reload with a long interval keeps what is known: the dead target stays out.
    gw.rewrite(&config(&probe("1m"), "# reloaded\n")).await.expect("reload");
    assert_eq!(gw.target_state("up", dead), "unhealthy");
    for _ in 0..20 {
        let (status, _, body) = get(&gw.url("/r")).await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    // Without active checks their old verdict no longer holds; retries cover the dead one.
    gw.rewrite(&config(&format!("    targets: {}", urls(&[good.addr, dead])), "")).await.expect("reload");
    assert_eq!(gw.target_state("up", dead), "healthy");
    for _ in 0..10 {
        let (status, _, body) = get(&gw.url("/r")).await;
        assert_eq!((status, body.as_str()), (200, "good"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_token() {
    let a = TestUpstream::start("a").await;
    let token = "test-admin-token-0123456789";
    let gw =
        TestGateway::start_with_token(&config(&format!("    targets: {}", urls(&[a.addr])), ""), Some(token)).await;
    let (s, v) = gw.admin_get("/healthz", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, _) = gw.admin_get("/readyz", None).await;
    assert_eq!(s, 200);
    let (s, v) = gw.admin_get("/api/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(v["paths"]["/api/v1/upstreams"].is_object());
    for bad in [None, Some("wrong"), Some("test-admin-token-012345678"), Some("test-admin-token-01234567890")] {
        let (s, v) = gw.admin_get("/api/v1/status", bad).await;
        assert_eq!(s, 401, "{bad:?}");
        assert_eq!(v["status"], 401);
    }
    let (s, v) = gw.admin_get("/api/v1/status", Some(token)).await;
    assert_eq!(s, 200);
    // The scheme is case-insensitive.
    let addr = gw.gw.admin_addr().expect("admin");
    let req = Request::get(format!("http://{addr}/api/v1/status"))
        .header("authorization", format!("bearer {token}"))
        .body(full(""))
        .expect("req");
    assert_eq!(send(req).await.0, 200);
    assert_eq!(v["config_version"], 1);
    assert_eq!(v["upstreams"][0]["name"], "up");
    assert_eq!(v["upstreams"][0]["targets"][0]["state"], "healthy");
    let (s, v) = gw.admin_get("/api/v1/upstreams/up", Some(token)).await;
    assert_eq!((s, v["balance"].as_str()), (200, Some("round_robin")));
    let (s, _) = gw.admin_get("/api/v1/upstreams/nope", Some(token)).await;
    assert_eq!(s, 404);
    let (s, v) = gw.admin_get("/nothing/here", Some(token)).await;
    assert_eq!((s, v["status"].as_u64()), (404, Some(404)));

    // Without a token configured, the API stays locked.
    let gw2 = TestGateway::start(&config(&format!("    targets: {}", urls(&[a.addr])), "")).await;
    let (s, _) = gw2.admin_get("/api/v1/status", Some(token)).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_no_while_draining() {
    let slow = TestUpstream::start("slow").await;
    // The in-flight request keeps the drain (and the admin API) going while /readyz is asked.
    slow.delay_ms.store(3_000, Ordering::SeqCst);
    let gw = TestGateway::start(&config(&format!("    targets: {}", urls(&[slow.addr])), "")).await;
    let url = gw.url("/slow");
    let inflight = tokio::spawn(async move { get(&url).await.0 });
    assert!(until(Duration::from_secs(5), || slow.count() == 1).await);
    let g = gw.gw.clone();
    let drain = tokio::spawn(async move { g.shutdown(Duration::from_secs(10)).await });
    let mut ready = (0, None);
    for _ in 0..100 {
        let (s, v) = gw.admin_get("/readyz", None).await;
        ready = (s, v["status"].as_u64());
        if s == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, (503, Some(503)));
    assert_eq!(inflight.await.expect("task"), 200);
    assert!(drain.await.expect("task"), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_the_clients_fault_not_the_targets() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let up = format!(
        "    targets: {}\n    health:\n      passive: {{ consecutive_failures: 2, eject_for: 1m }}",
        urls(&[a.addr, b.addr])
    );
    let yaml = config(&up, "")
        .replace("bind: \"127.0.0.1:0\"\nadmin", "bind: \"127.0.0.1:0\"\n    limits: { body_timeout: 300ms }\nadmin");
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..6 {
        // Half a body, then nothing: the body deadline passes while the upstream waits for it.
        let head = b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        let (resp, _) = raw_exchange(gw.addr(), head, Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    }
    for t in [a.addr, b.addr] {
        assert_eq!(gw.target_state("up", t), "healthy", "a slow client must not get a target ejected");
    }
}
