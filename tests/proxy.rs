//! The proxy path through real sockets: bodies, header hygiene, ids, errors.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

#[tokio::test]
async fn bodies_round_trip_byte_exact_with_length_and_chunked() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    for size in [0usize, 1024, 300 * 1024] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        // Content-Length
        let (status, _, body) = send_bytes(Request::post(gw.url("/echo")).body(full(data.clone())).expect("req")).await;
        assert_eq!(status, 200);
        assert!(body[..] == data[..], "content-length body of {size} came back as {} different bytes", body.len());
        if size > 0 {
            assert_eq!(
                up.last().headers.get("content-length").map(|v| v.to_str().unwrap_or("")),
                Some(size.to_string().as_str())
            );
        }
        // chunked: a stream of 1 KiB frames
        let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
            data.chunks(1024).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let (status, _, got) = send_bytes(Request::post(gw.url("/echo")).body(body).expect("req")).await;
        assert_eq!(status, 200);
        assert!(got[..] == data[..], "chunked body of {size} came back as {} different bytes", got.len());
        assert!(up.last().headers.get("transfer-encoding").is_some_and(|v| v == "chunked"));
    }
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_never_reach_the_upstream() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    let req = Request::get(gw.url("/x"))
        .header("connection", "x-secret, x-other")
        .header("x-secret", "s")
        .header("x-other", "o")
        .header("keep-alive", "timeout=1")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip, trailers")
        .header("upgrade", "websocket")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-kept", "yes")
        .body(full(""))
        .expect("req");
    let (status, headers, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last().headers;
    for h in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(!seen.contains_key(h), "{h} reached the upstream: {seen:?}");
    }
    // Of `TE`, only `trailers` goes on (gRPC servers need it).
    assert_eq!(seen["te"], "trailers");
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], gw.addr().to_string().as_str());
    assert_eq!(seen["host"], gw.addr().to_string().as_str());
    // and on the way back
    assert!(!headers.contains_key("x-up-secret"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    assert_eq!(headers["x-upstream"], "a");
}

#[tokio::test]
async fn request_id_is_generated_or_kept_and_returned() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    let (_, headers, _) = get(&gw.url("/")).await;
    let id = headers["x-request-id"].to_str().expect("id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(up.last().headers["x-request-id"], id.as_str());

    let req = Request::get(gw.url("/")).header("x-request-id", "trace-abc.123").body(full("")).expect("req");
    let (_, headers, _) = send(req).await;
    assert_eq!(headers["x-request-id"], "trace-abc.123");
    assert_eq!(up.last().headers["x-request-id"], "trace-abc.123");

    // a hostile id is replaced
    let req = Request::get(gw.url("/")).header("x-request-id", "x\"><script>").body(full("")).expect("req");
    let (_, headers, _) = send(req).await;
    assert_ne!(headers["x-request-id"], "x\"><script>");
}

#[tokio::test]
async fn no_route_is_404_problem_json() {
    let up = TestUpstream::start("a").await;
    let yaml = simple_config(&[up.addr], "", "").replace("prefix: /", "prefix: /api");
    let gw = TestGateway::start(&yaml).await;
    let (status, headers, body) = get(&gw.url("/apix")).await;
    let p = problem(status, &headers, &body);
    assert_eq!(status, 404);
    assert_eq!(p["title"], "Not Found");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dead_upstream_is_502_without_internal_addresses() {
    let dead_port = dead_port();
    let dead = dead_port.addr;
    let gw = TestGateway::start(&simple_config(&[dead], "", "")).await;
    let (status, headers, body) = get(&gw.url("/x")).await;
    problem(status, &headers, &body);
    assert_eq!(status, 502);
    assert!(!body.contains("127.0.0.1"), "{body}");
    assert!(!body.contains(&dead.port().to_string()), "{body}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = TestUpstream::start("a").await;
    let yaml = simple_config(&[up.addr], "", "").replace("response: 2s", "response: 200ms");
    let gw = TestGateway::start(&yaml).await;
    let (status, headers, body) = get(&gw.url("/slow/3000")).await;
    problem(status, &headers, &body);
    assert_eq!(status, 504);
}

#[tokio::test]
async fn round_robin_spreads_requests() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&simple_config(&[a.addr, b.addr], "", "")).await;
    for _ in 0..10 {
        let (status, _, _) = get(&gw.url("/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied_to_an_http1_upstream() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    let res =
        h2_client().request(Request::post(gw.url("/echo/h2")).body(full("over h2")).expect("req")).await.expect("h2");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"over h2");
    let seen = up.last();
    assert_eq!(seen.headers["host"], gw.addr().to_string().as_str());
    assert_eq!(seen.path_and_query, "/echo/h2");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    // sequential requests reuse one kept-alive upstream connection: the upstream sees the
    // same peer port each time
    let c = client();
    for _ in 0..20 {
        let res = c.request(Request::get(gw.url("/")).body(full("")).expect("req")).await.expect("res");
        let _ = res.into_body().collect().await;
    }
    let peers: std::collections::HashSet<_> = up.seen.lock().iter().map(|s| s.peer).collect();
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert_eq!(peers.len(), 1, "{peers:?}");
}

#[tokio::test]
async fn pooled_connections_to_a_restarted_upstream_are_replaced() {
    let up = TestUpstream::start("first").await;
    let addr = up.addr;
    let gw = TestGateway::start(&simple_config(&[addr], "", "")).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/")).await.2, "first");
    }
    up.stop();
    // while it is down: 502, fast
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (status, headers, body) = get(&gw.url("/")).await;
    problem(status, &headers, &body);
    assert_eq!(status, 502);
    let again = TestUpstream::start_on(addr, "second").await;
    for _ in 0..5 {
        let (status, _, body) = get(&gw.url("/")).await;
        assert_eq!((status, body.as_str()), (200, "second"));
    }
    again.stop();
}

#[tokio::test]
async fn a_get_with_a_chunked_body_keeps_its_body() {
    // hyper's client would send GET with an unknown-length body as `Content-Length: 0` and
    // drop the body; some APIs (search engines) do send bodies with GET.
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], "", "")).await;
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\n{\"query\":\r\n2\r\n1}\r\n0\r\n\r\n",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("{\"query\":") && resp.contains("1}"), "{resp}");
    assert_eq!(up.last().headers.get("transfer-encoding").map(|v| v.as_bytes()), Some(&b"chunked"[..]));
    // and a GET with a declared length too
    let (status, _, got) = send(Request::get(gw.url("/echo")).body(full("abc")).expect("req")).await;
    assert_eq!((status, got.as_str()), (200, "abc"));
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_off() {
    let up = TestUpstream::start("a").await;
    let yaml = simple_config(&[up.addr], "", "").replace("response: 2s", "response: 2s, idle: 300ms");
    let gw = TestGateway::start(&yaml).await;
    // a short pause is fine
    let (status, _, body) = get(&gw.url("/stall/50")).await;
    assert_eq!((status, body.as_str()), (200, "partial rest"));
    // a long one aborts the response instead of holding the client forever
    let res = client().request(Request::get(gw.url("/stall/5000")).body(full("")).expect("req")).await.expect("head");
    assert_eq!(res.status(), 200);
    let got = tokio::time::timeout(std::time::Duration::from_secs(4), res.into_body().collect())
        .await
        .expect("cut off in time");
    assert!(got.is_err(), "the stalled body should end in an error, not complete");
}

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_is_bounded_by_body_timeout() {
    // A black hole: accepts connections, never reads, never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = hole.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let yaml =
        simple_config(&[addr], "body_timeout: 1s, max_body_bytes: 64MiB", "").replace("response: 2s", "response: 1s");
    let gw = TestGateway::start(&yaml).await;
    let data = Bytes::from(vec![7u8; 32 * 1024 * 1024]);
    let req = Request::post(gw.url("/upload")).body(full(data)).expect("req");
    let res = tokio::time::timeout(std::time::Duration::from_secs(15), client().request(req)).await;
    let res = res.expect("the gateway answered in time").expect("response");
    assert_eq!(res.status(), 504);
}
