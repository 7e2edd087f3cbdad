//! Routing through real sockets: normalisation, prefixes that cannot be escaped, hosts,
//! methods, headers and templates. The upstream records the path it received.

mod common;

use std::time::Duration;

use common::*;

fn config(public: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    format!(
        r#"version: 1
listeners:
  - {{ name: public, bind: "127.0.0.1:0" }}
upstreams:
  - {{ name: public-up, targets: [{{ url: "http://{public}" }}] }}
  - {{ name: admin-up, targets: [{{ url: "http://{admin}" }}] }}
routes:
  - name: public
    match: {{ prefix: /public }}
    upstream: public-up
    public: true
  - name: admin-only-internal
    match: {{ prefix: /admin, headers: {{ x-internal: "yes" }} }}
    upstream: admin-up
    public: true
  - name: order
    match: {{ path: "/v1/orders/{{id}}", methods: [GET] }}
    upstream: admin-up
    public: true
  - name: host
    match: {{ host: "*.example.com", prefix: / }}
    upstream: admin-up
    public: true
"#
    )
}

async fn raw_get(gw: &TestGateway, target: &str, host: &str) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(10)).await.0
}

#[tokio::test]
async fn paths_are_normalised_and_the_upstream_gets_the_normal_form() {
    let p = TestUpstream::start("public").await;
    let a = TestUpstream::start("admin").await;
    let gw = TestGateway::start(&config(p.addr, a.addr)).await;
    let cases = [
        ("/public/a/../b", "/public/b"),
        ("/public//a///b", "/public/a/b"),
        ("/public/%2e%2e/public/x", "/public/x"),
        ("/public/%7Euser?q=%2e%2e", "/public/~user?q=%2e%2e"),
        ("/public/a%2Fb", "/public/a%2Fb"),
        ("/public/a%2fb", "/public/a%2Fb"),
        ("/public/%252e%252e/admin", "/public/%252e%252e/admin"),
        ("/public/./x/.", "/public/x/"),
    ];
    for (sent, want) in cases {
        let resp = raw_get(&gw, sent, "localhost").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{sent}: {resp}");
        assert_eq!(p.last().path_and_query, want, "{sent}");
    }
}

#[tokio::test]
async fn no_spelling_climbs_out_of_a_prefix() {
    let p = TestUpstream::start("public").await;
    let a = TestUpstream::start("admin").await;
    let gw = TestGateway::start(&config(p.addr, a.addr)).await;
    // Each tries to reach /admin (which needs x-internal) through the public prefix.
    let attempts = [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/..%2fadmin",
        "/public/%2e%2e%2fadmin",
        "/public/%252e%252e/admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public/..%5cadmin",
        "/public/%c0%ae%c0%ae/admin",
        "/public/%ef%bc%8e%ef%bc%8e/admin",
        "/public/....//admin",
        "/admin/../public/../admin",
    ];
    for path in attempts {
        let resp = raw_get(&gw, path, "localhost").await;
        let status: u16 = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(matches!(status, 200 | 400 | 404), "{path}: {resp}");
        if status == 200 {
            let got = p.last().path_and_query;
            assert!(got.starts_with("/public/") || got == "/public", "{path} reached the public upstream as {got}");
            let segments: Vec<&str> = got.split('/').collect();
            assert!(!segments.contains(&"..") && !segments.contains(&"."), "{path} -> {got}");
        }
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the admin upstream was reached");
    // with the header it is reachable, so the route itself works
    let req = "GET /admin/x HTTP/1.1\r\nHost: localhost\r\nX-Internal: yes\r\nConnection: close\r\n\r\n";
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn templates_methods_and_hosts() {
    let p = TestUpstream::start("public").await;
    let a = TestUpstream::start("admin").await;
    let gw = TestGateway::start(&config(p.addr, a.addr)).await;
    assert!(raw_get(&gw, "/v1/orders/42", "localhost").await.starts_with("HTTP/1.1 200"));
    assert_eq!(a.last().path_and_query, "/v1/orders/42");
    assert!(raw_get(&gw, "/v1/orders/42/items", "localhost").await.starts_with("HTTP/1.1 404"));
    let req = "DELETE /v1/orders/42 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(10)).await.0.starts_with("HTTP/1.1 404"));
    // HEAD is allowed wherever GET is
    let req = "HEAD /v1/orders/42 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(10)).await.0.starts_with("HTTP/1.1 200"));
    // host match is case-insensitive and ignores the port and a trailing dot
    let before = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(raw_get(&gw, "/anything", "API.Example.COM.:8080").await.starts_with("HTTP/1.1 200"));
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), before + 1);
    assert!(raw_get(&gw, "/anything", "example.com").await.starts_with("HTTP/1.1 404"));
}
