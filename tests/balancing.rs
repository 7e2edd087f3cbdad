//! Balancers through real sockets: how requests spread over real upstream servers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::Request;

/// A config with upstream `up` described by `upstream` (YAML under the list item).
pub fn lb_config(upstream: &str) -> String {
    format!(
        "version: 1\nnode: {{ shutdown_grace: 5s }}\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nupstreams:\n  - name: up\n{upstream}\nroutes:\n  - name: all\n    match: {{ prefix: / }}\n    upstream: up\n    public: true\n"
    )
}

fn targets(list: &[(SocketAddr, u32)]) -> String {
    let t: Vec<String> = list.iter().map(|(a, w)| format!("{{ url: \"http://{a}\", weight: {w} }}")).collect();
    format!("[{}]", t.join(", "))
}

/// Send `n` GETs over `conc` concurrent keep-alive clients; `header(i)` may add one header.
/// Returns how many answers each upstream name gave, and the statuses that were not 200.
async fn spread(
    url: &str,
    n: usize,
    conc: usize,
    header: impl Fn(usize) -> Option<(String, String)> + Send + Sync + 'static,
) -> (HashMap<String, usize>, Vec<u16>) {
    let next = Arc::new(AtomicUsize::new(0));
    let header = Arc::new(header);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, header, url) = (next.clone(), header.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return out;
                }
                let mut req = Request::get(&url);
                if let Some((k, v)) = header(i) {
                    req = req.header(k, v);
                }
                let res = c.request(req.body(full("")).expect("req")).await.expect("response");
                let status = res.status().as_u16();
                let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("body").to_bytes();
                out.push((status, String::from_utf8_lossy(&body).into_owned()));
            }
        }));
    }
    let mut counts = HashMap::new();
    let mut bad = Vec::new();
    for t in tasks {
        for (status, body) in t.await.expect("task") {
            if status == 200 {
                *counts.entry(body).or_insert(0) += 1;
            } else {
                bad.push(status);
            }
        }
    }
    (counts, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_three_to_one_within_five_percent() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = lb_config(&format!("    balance: weighted\n    targets: {}", targets(&[(a.addr, 3), (b.addr, 1)])));
    let gw = TestGateway::start(&yaml).await;
    let (counts, bad) = spread(&gw.url("/w"), 10_000, 8, |_| None).await;
    assert!(bad.is_empty(), "failures: {bad:?}");
    let share = counts["a"] as f64 / 10_000.0;
    assert!((share - 0.75).abs() <= 0.75 * 0.05, "a got {share:.4} of the requests: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_random_spread_evenly() {
    let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await];
    let list: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    for balance in ["round_robin", "random"] {
        let gw =
            TestGateway::start(&lb_config(&format!("    balance: {balance}\n    targets: {}", targets(&list)))).await;
        let (counts, bad) = spread(&gw.url("/r"), 3_000, 4, |_| None).await;
        assert!(bad.is_empty(), "{balance}: failures {bad:?}");
        for name in ["a", "b", "c"] {
            let n = counts.get(name).copied().unwrap_or(0);
            assert!((800..=1200).contains(&n), "{balance}: {name} got {n}: {counts:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_a_slow_target() {
    let fast1 = TestUpstream::start("fast1").await;
    let fast2 = TestUpstream::start("fast2").await;
    let slow = TestUpstream::start("slow").await;
    // Far slower than a fast answer can get on a loaded debug build, so the split is clear.
    slow.delay_ms.store(200, Ordering::SeqCst);
    let list = [(fast1.addr, 1), (fast2.addr, 1), (slow.addr, 1)];
    let gw =
        TestGateway::start(&lb_config(&format!("    balance: least_request\n    targets: {}", targets(&list)))).await;
    let (counts, bad) = spread(&gw.url("/l"), 1_500, 12, |_| None).await;
    assert!(bad.is_empty(), "failures: {bad:?}");
    let slow_n = counts.get("slow").copied().unwrap_or(0);
    let fast_min = counts.get("fast1").copied().unwrap_or(0).min(counts.get("fast2").copied().unwrap_or(0));
    assert!(slow_n * 3 < fast_min, "the slow target got {slow_n}, the fast ones at least {fast_min}: {counts:?}");
}

/// Which target answered each of `keys` keys (by `x-account`).
async fn placement(gw: &TestGateway, keys: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for k in 0..keys {
        let req = Request::get(gw.url("/h")).header("x-account", format!("account-{k}")).body(full("")).expect("req");
        let res = c.request(req).await.expect("response");
        assert_eq!(res.status(), 200);
        let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("body").to_bytes();
        out.push(String::from_utf8_lossy(&body).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_when_a_target_goes() {
    let mut ups = Vec::new();
    for i in 0..5 {
        ups.push(TestUpstream::start(&format!("t{i}")).await);
    }
    let all: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let yaml = |list: &[(SocketAddr, u32)]| {
        lb_config(&format!(
            "    balance: consistent_hash\n    hash_on: header:x-account\n    targets: {}",
            targets(list)
        ))
    };
    let gw = TestGateway::start(&yaml(&all)).await;
    let before = placement(&gw, 1_000).await;
    // The same key always lands on the same target.
    assert_eq!(before, placement(&gw, 1_000).await);
    let used: std::collections::HashSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 5, "every target gets keys");
    // Remove t2 by reload.
    let without: Vec<(SocketAddr, u32)> = all.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, t)| *t).collect();
    gw.rewrite(&yaml(&without)).await.expect("reload");
    let after = placement(&gw, 1_000).await;
    let kept = before.iter().zip(&after).filter(|(b, a)| b == a).count();
    assert!(kept >= 700, "only {kept} of 1000 keys stayed on their target");
    // Keys that moved are exactly those that were on t2.
    assert!(before.iter().zip(&after).all(|(b, a)| b == a || b == "t2"), "a key not on t2 moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_cookie_and_ip() {
    let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await];
    let list: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let gw = TestGateway::start(&lb_config(&format!(
        "    balance: consistent_hash\n    hash_on: cookie:session\n    targets: {}",
        targets(&list)
    )))
    .await;
    let (counts, bad) =
        spread(&gw.url("/c"), 60, 3, |_| Some(("cookie".into(), "theme=dark; session=abc123".into()))).await;
    assert!(bad.is_empty());
    assert_eq!(counts.len(), 1, "one session, one target: {counts:?}");
    // Without the cookie, requests still spread.
    let (counts, _) = spread(&gw.url("/c"), 60, 3, |_| None).await;
    assert_eq!(counts.len(), 3, "no key: round robin: {counts:?}");

    let gw = TestGateway::start(&lb_config(&format!(
        "    balance: consistent_hash\n    hash_on: ip\n    targets: {}",
        targets(&list)
    )))
    .await;
    let (counts, _) = spread(&gw.url("/i"), 60, 3, |_| None).await;
    assert_eq!(counts.len(), 1, "one client address, one target: {counts:?}");
}
