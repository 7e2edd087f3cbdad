//! Listener limits and hostile HTTP/1.1 through raw sockets: every refusal is problem+json
//! and closes the connection. Sources: RFC 9112 §2.2, §6.1, §6.3, §11.2; RFC 9110 §15.5.
//! Timing tests use generous margins and only assert "closed before N s", never speed.

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITS: &str = "header_timeout: 300ms, idle_timeout: 300ms, body_timeout: 500ms, max_header_bytes: 2KiB, max_body_bytes: 1KiB, max_connections_per_ip: 4";

async fn setup() -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], LIMITS, "")).await;
    (up, gw)
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn body_of(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("problem+json {e}: {resp}"))
}

fn assert_problem(resp: &str, status: u16) {
    assert_eq!(status_of(resp), status, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("content-type: application/problem+json"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    let v = body_of(resp);
    assert_eq!(v["status"], status);
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{resp}");
}

/// Send raw bytes; the gateway must answer `status` as problem+json and close.
async fn expect_refusal(addr: std::net::SocketAddr, bytes: &[u8], status: u16) {
    let (resp, closed) = raw_exchange(addr, bytes, Duration::from_secs(10)).await;
    assert!(closed, "connection left open: {resp}");
    assert_problem(&resp, status);
}

#[tokio::test]
async fn slow_head_is_408_and_closed() {
    // slowloris: a head that never ends
    let (_up, gw) = setup().await;
    let (resp, closed) =
        raw_exchange(gw.addr(), b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1", Duration::from_secs(10)).await;
    assert!(closed, "connection left open");
    assert_problem(&resp, 408);
}

#[tokio::test]
async fn silent_connection_is_closed_without_answer() {
    let (_up, gw) = setup().await;
    let (resp, closed) = raw_exchange(gw.addr(), b"", Duration::from_secs(10)).await;
    assert!(closed);
    assert_eq!(resp, "");
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed() {
    let (_up, gw) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // then nothing: the gateway closes after idle_timeout, without sending anything
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in time");
    assert_eq!(r.expect("read"), 0);
}

#[tokio::test]
async fn oversized_head_is_431() {
    let (up, gw) = setup().await;
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(4096));
    expect_refusal(gw.addr(), big.as_bytes(), 431).await;
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn too_many_header_lines_is_431() {
    let (_up, gw) = setup().await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        req.push_str(&format!("a{i}: b\r\n"));
    }
    req.push_str("\r\n");
    expect_refusal(gw.addr(), req.as_bytes(), 431).await;
}

#[tokio::test]
async fn long_request_line_is_414() {
    let (_up, gw) = setup().await;
    let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(4096));
    expect_refusal(gw.addr(), req.as_bytes(), 414).await;
}

#[tokio::test]
async fn declared_body_over_limit_is_413_before_the_upstream() {
    let (up, gw) = setup().await;
    let req = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}", "b".repeat(5000));
    expect_refusal(gw.addr(), req.as_bytes(), 413).await;
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn chunked_body_over_limit_is_413() {
    let (_up, gw) = setup().await;
    let mut req = String::from("POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..4 {
        req.push_str(&format!("200\r\n{}\r\n", "c".repeat(512)));
    }
    req.push_str("0\r\n\r\n");
    expect_refusal(gw.addr(), req.as_bytes(), 413).await;
}

#[tokio::test]
async fn slow_body_is_408() {
    let (_up, gw) = setup().await;
    // declares 100 bytes, sends 10, then stalls: body_timeout is a deadline for the whole body
    let (resp, closed) = raw_exchange(
        gw.addr(),
        b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed);
    assert_problem(&resp, 408);
}

#[tokio::test]
async fn smuggling_shapes_are_refused() {
    // RFC 9112 §6.1/§6.3 and §11.2: ambiguous framing must never be forwarded
    let (up, gw) = setup().await;
    // CL + TE: hyper follows RFC 9112 §6.3 (chunked wins, connection closed after). Either
    // way the upstream must never see the client's Content-Length next to a chunked body.
    let (resp, closed) = raw_exchange(
        gw.addr(),
        b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "{resp}");
    assert!(!resp.contains("smuggled"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "a second request was served: {resp}");
    if status_of(&resp) == 200 {
        let seen = up.last();
        assert!(!seen.headers.contains_key("content-length"), "{:?}", seen.headers);
        assert!(up.seen.lock().iter().all(|s| s.path_and_query != "/smuggled"));
    }
    up.seen.lock().clear();
    up.hits.store(0, std::sync::atomic::Ordering::SeqCst);
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
        b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: a\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        let (resp, closed) = raw_exchange(gw.addr(), case, Duration::from_secs(10)).await;
        let status = status_of(&resp);
        assert!(closed, "case {i}: connection left open: {resp}");
        assert!(status == 400 || status == 501, "case {i}: got {resp:?}");
        assert_problem(&resp, status);
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0, "an ambiguous request reached the upstream");
}

#[tokio::test]
async fn invalid_paths_are_400_problem_json() {
    let (up, gw) = setup().await;
    for path in ["/a%5Cb", "/%2e%2e%5c", "/..;/admin", "/%c0%ae%c0%ae/x", "/%EF%BC%8E%EF%BC%8E/x", "/a%00", "/%zz"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), Duration::from_secs(10)).await;
        assert!(closed, "{path}");
        assert_problem(&resp, 400);
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    // A long idle timeout: a held connection must not be closed by it while the test runs.
    let up = TestUpstream::start("a").await;
    let gw =
        TestGateway::start(&simple_config(&[up.addr], &LIMITS.replace("idle_timeout: 300ms", "idle_timeout: 30s"), ""))
            .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0);
        held.push(s);
    }
    // the fifth from the same IP is closed at once
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    drop(held);
    // and once they close (the gateway sees it when it next reads), new connections are
    // served again
    let mut status = None;
    for _ in 0..100 {
        let req = Request::get(gw.url("/")).body(full("")).expect("req");
        status = client().request(req).await.ok().map(|r| r.status().as_u16());
        if status == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn keepalive_requests_each_get_a_fresh_head_budget() {
    // many small requests on one connection: the head limit applies per request, not per connection
    let (_up, gw) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let mut buf = vec![0u8; 8192];
    for _ in 0..50 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n").await.expect("write");
        let n = s.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

#[tokio::test]
async fn host_header_rules() {
    // RFC 9112 §3.2: a missing Host in HTTP/1.1 and more than one Host are 400
    let (up, gw) = setup().await;
    for case in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"] {
        let (resp, closed) = raw_exchange(gw.addr(), case, Duration::from_secs(10)).await;
        assert!(closed);
        assert_problem(&resp, 400);
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // absolute-form: the target's authority wins over Host, for routing and upstream alike
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"GET http://real.example/x HTTP/1.1\r\nHost: fake.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["host"], "real.example");
    assert_eq!(seen.headers["x-forwarded-host"], "real.example");
    assert_eq!(seen.path_and_query, "/x");
}

#[tokio::test]
async fn idle_h2_connection_is_closed() {
    use hyper::client::conn::http2;
    let (_up, gw) = setup().await;
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut tx, conn) =
        http2::handshake::<_, _, TestBody>(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn_task = tokio::spawn(conn);
    let res = tx.send_request(http::Request::get(gw.url("/")).body(full("")).expect("req")).await.expect("response");
    assert_eq!(res.status(), 200);
    drop(res);
    // with no stream open the gateway sends GOAWAY and closes within 2 x idle_timeout
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    assert!(ended.is_ok(), "idle h2 connection still open");
}

#[tokio::test]
async fn every_head_on_a_kept_alive_connection_is_limited() {
    let (_up, gw) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(4096));
    s.write_all(big.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("closed");
    assert_problem(&String::from_utf8_lossy(&out), 431);
}

#[tokio::test]
async fn an_upstream_empty_error_answer_is_passed_through_untouched() {
    // the guard rewrites only hyper's own answers to unparsable heads, never a real response
    let (_up, gw) = setup().await;
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"GET /status/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("x-upstream: a"), "{resp}");
    assert!(!resp.contains("problem+json"), "{resp}");
}

#[tokio::test]
async fn an_early_answer_during_an_upload_closes_cleanly() {
    // The upstream answers before reading the body. The rest of the upload must never be
    // parsed as a next request head (no injected 431/414/408): one answer, then close.
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "max_header_bytes: 2KiB, max_body_bytes: 1MiB", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"POST /status/403 HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n").await.expect("head");
    s.write_all(&[b'x'; 20000]).await.expect("part 1");
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await.expect("answer").expect("read");
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 403"), "{first}");
    assert!(first.to_ascii_lowercase().contains("connection: close"), "{first}");
    let _ = s.write_all(&[b'x'; 40000]).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("HTTP/1.1"), "a second answer was injected: {rest}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "idle_timeout: 300ms", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(b"GET /big/64 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    // read nothing for a while: the gateway's writes stall and it gives up after idle_timeout
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "connection still open");
    assert!(total < 64 * 1024 * 1024, "the whole body arrived ({total} bytes): the stall was not cut");
}
