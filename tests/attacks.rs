//! The attacker's suite: hostile clients on real sockets against a real gateway, each case
//! citing the RFC section or CVE it comes from. Every test ends by checking that the gateway
//! still answers a normal request correctly. Timing is only ever asserted as "done within N
//! seconds" with N far above the configured limits; every loop is bounded.
//!
//! Not repeated here (see tests/limits.rs and tests/routing.rs): CL+TE, duplicate differing
//! Content-Length, `chunked, identity`, `xchunked`, `Transfer-Encoding : chunked`, `+4`,
//! a non-hex chunk size, obs-fold, NUL, spaces in names, plain slowloris, oversized heads,
//! 150 header lines, long request lines, path spellings.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tight limits so that timeouts fire fast: 300 ms for a head, 500 ms for a body.
const LIMITS: &str =
    "header_timeout: 300ms, idle_timeout: 300ms, body_timeout: 500ms, max_header_bytes: 2KiB, max_body_bytes: 1KiB";
/// Room for large bodies (pool tests).
const BIG: &str = "header_timeout: 2s, idle_timeout: 2s, body_timeout: 3s, max_body_bytes: 1MiB";
/// Upper bound for anything that should be quick.
const T: Duration = Duration::from_secs(10);

async fn setup(limits: &str) -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[up.addr], limits, "")).await;
    (up, gw)
}

/// Only `/api…` is routed, so anything else is a 404 the gateway answers itself.
fn api_only_config(up: SocketAddr, limits: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    limits: {{ {limits} }}\nupstreams:\n  - name: up\n    targets: [{{ url: \"http://{up}\" }}]\n    timeouts: {{ connect: 1s, response: 2s }}\nroutes:\n  - name: api\n    match: {{ prefix: /api }}\n    upstream: up\n    public: true\n"
    )
}

fn hits(up: &TestUpstream) -> usize {
    up.hits.load(Ordering::SeqCst)
}

fn seen_paths(up: &TestUpstream) -> Vec<String> {
    up.seen.lock().iter().map(|s| s.path_and_query.clone()).collect()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn assert_problem(resp: &str, status: u16) {
    assert_eq!(status_of(resp), status, "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/problem+json"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("problem+json {e}: {resp}"));
    assert_eq!(v["status"], status, "{resp}");
}

/// The gateway still serves a plain request, with the right body from the right upstream.
async fn assert_healthy(gw: &TestGateway, path: &str, want_body: &str) {
    let (status, _, body) = get(&gw.url(path)).await;
    assert_eq!(status, 200, "gateway unhealthy after the attack: {body}");
    assert_eq!(body, want_body, "gateway answered with the wrong body after the attack");
}

/// No request line the attacker hid inside a body ever reached the upstream.
fn assert_nothing_smuggled(up: &TestUpstream) {
    for p in seen_paths(up) {
        assert!(!p.contains("smuggled"), "a smuggled request reached the upstream: {p}");
    }
}

/// One HTTP/1.1 response read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse one complete response at the start of `buf`; returns it and the bytes it used.
/// `head_only`: the response answers a HEAD request (no body whatever the headers say).
/// `eof`: no more bytes will come (a body without framing ends here).
fn parse_one(buf: &[u8], head_only: bool, eof: bool) -> Option<(Resp, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = status_of(&head);
    let mut r = Resp { status, head, body: Vec::new() };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some((r, end));
    }
    if let Some(n) = r.header("content-length") {
        let n: usize = n.parse().ok()?;
        if buf.len() < end + n {
            return None;
        }
        r.body = buf[end..end + n].to_vec();
        return Some((r, end + n));
    }
    if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut at = end;
        loop {
            let line_end = find(&buf[at..], b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // no trailers from our upstream: just the final CRLF
                if buf.len() < at + 2 {
                    return None;
                }
                return Some((r, at + 2));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            r.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    if eof {
        r.body = buf[end..].to_vec();
        return Some((r, buf.len()));
    }
    None
}

/// Read until `want` responses have arrived, the peer closes, or `limit` elapses.
/// `heads[i]` says whether response `i` answers a HEAD. Returns the responses and whether
/// the connection was closed by the peer.
async fn read_responses(s: &mut TcpStream, want: usize, heads: &[bool], limit: Duration) -> (Vec<Resp>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut closed = false;
    loop {
        while out.len() < want {
            let head_only = heads.get(out.len()).copied().unwrap_or(false);
            match parse_one(&buf, head_only, closed) {
                Some((r, used)) => {
                    out.push(r);
                    buf.drain(..used);
                }
                None => break,
            }
        }
        if out.len() >= want || closed {
            return (out, closed);
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 framing and smuggling
// ---------------------------------------------------------------------------------------

/// RFC 9112 §7.1 (chunk-size is 1*HEXDIG, CRLF after the size and after the data) and §11.2.
/// Lenient chunk-header parsing is the smuggling class of CVE-2015-3183 (Apache httpd) and
/// of the "chunk-size overflow" / bare-LF terminator differentials between proxies and
/// backends. Each body hides a second request; none may reach the upstream, and the
/// connection must close after the refusal so nothing after the body is parsed.
#[tokio::test]
async fn bad_chunked_framing_is_refused_and_nothing_is_smuggled() {
    let (up, gw) = setup(LIMITS).await;
    let tail = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let bodies = [
        // 2^64 + 1: wraps to 1 in a naive u64 parser
        format!("10000000000000001\r\nx\r\n0\r\n\r\n{tail}"),
        format!("ffffffffffffffff1\r\nx\r\n0\r\n\r\n{tail}"),
        // data longer than the declared size
        format!("3\r\nabcdef\r\n0\r\n\r\n{tail}"),
        // a size that swallows the fake last-chunk, so the "next request" becomes a size line
        format!("8\r\nabc\r\n0\r\n\r\n{tail}"),
        // bare LF after the chunk size / after the data / as the last-chunk terminator
        format!("3\nabc\r\n0\r\n\r\n{tail}"),
        format!("3\r\nabc\n0\r\n\r\n{tail}"),
        format!("3\r\nabc\r\n0\n\n{tail}"),
        // bare CR as a terminator
        format!("3\rabc\r\n0\r\n\r\n{tail}"),
        // sign, hex prefix, whitespace inside the size, empty size
        format!("-3\r\nabc\r\n0\r\n\r\n{tail}"),
        format!("0x3\r\nabc\r\n0\r\n\r\n{tail}"),
        format!("1 2\r\nabc\r\n0\r\n\r\n{tail}"),
        format!("\r\nabc\r\n0\r\n\r\n{tail}"),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let req = format!("POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
        assert!(closed, "case {i}: connection left open: {resp:?}");
        assert!(!resp.contains("smuggled"), "case {i}: {resp}");
        assert!(resp.matches("HTTP/1.1 ").count() <= 1, "case {i}: more than one response: {resp}");
        let status = status_of(&resp);
        assert!(resp.is_empty() || status == 400, "case {i}: expected 400, got {resp:?}");
        // The upstream may have seen the start of the request, never a completed body.
        assert!(!resp.starts_with("HTTP/1.1 200"), "case {i}: {resp}");
    }
    assert_nothing_smuggled(&up);
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9112 §7.1.1: chunk extensions are legal and must be ignored, not forwarded; their
/// total size must be bounded (unbounded extensions were CVE-2023-39326 in Go's net/http).
/// §7.1.2: trailer fields must not become headers (a forged `X-Forwarded-For` in a trailer).
#[tokio::test]
async fn chunk_extensions_and_trailers_are_harmless() {
    let (up, gw) = setup(LIMITS).await;
    let req = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;name=value;quoted=\"a;b\"\r\nhello\r\n0;last=1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Trailer-Smuggle: 1\r\n\r\n";
    let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(closed);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello") || resp.contains("\r\n\r\n5\r\nhello\r\n"), "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.headers.contains_key("x-trailer-smuggle"), "{:?}", seen.headers);

    // 64 KiB of extensions on 1-byte chunks: far beyond any sane use; must be refused or
    // capped, never read forever. (The body itself is 64 bytes, under max_body_bytes.)
    let mut body = String::new();
    for _ in 0..64 {
        body.push_str(&format!("1;{}\r\nx\r\n", "e".repeat(1024)));
    }
    body.push_str("0\r\n\r\n");
    let req =
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}");
    let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(closed, "{resp}");
    assert!(!resp.starts_with("HTTP/1.1 200"), "64 KiB of chunk extensions were accepted: {resp}");
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9112 §6.1 (chunked must not be applied twice; TE in HTTP/1.0 is faulty framing),
/// §6.3 (Content-Length must be exactly 1*DIGIT; a list of identical values may be accepted),
/// §5.1 (no whitespace between field name and colon), §2.2 (bare CR must be rejected).
/// Whatever is accepted must reach the upstream with the gateway's own, consistent framing.
#[tokio::test]
async fn framing_header_obfuscations() {
    let (up, gw) = setup(LIMITS).await;
    let tail = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // Must be refused outright.
    let refused = [
        format!("POST /collect HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length\t: 3\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551619\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3, 4\r\n\r\nabc{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{tail}"),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n{tail}"),
        format!("POST /collect HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n0\r\n\r\n{tail}"),
        format!(
            "POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{tail}"
        ),
        format!("POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n{tail}"),
    ];
    for (i, req) in refused.iter().enumerate() {
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
        assert!(closed, "refused case {i}: connection left open: {resp}");
        let status = status_of(&resp);
        assert!(resp.is_empty() || matches!(status, 400 | 501), "refused case {i}: got {resp:?}");
    }
    assert_eq!(hits(&up), 0, "an ambiguous request reached the upstream: {:?}", seen_paths(&up));

    // May be accepted (or refused), but then with one, unambiguous reading: the upstream's
    // /collect answers with the length it actually received.
    let lenient = [
        (
            format!(
                "POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{tail}"
            ),
            "3",
        ),
        (
            format!(
                "POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{tail}"
            ),
            "3",
        ),
        (
            format!(
                "POST /collect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n{tail}"
            ),
            "3",
        ),
        (format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc{tail}"), "3"),
        (format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc{tail}"), "3"),
        (format!("POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\nabc{tail}"), "3"),
    ];
    for (i, (req, want)) in lenient.iter().enumerate() {
        let mut s = connect(gw.addr()).await;
        s.write_all(req.as_bytes()).await.expect("write");
        let (resps, _) = read_responses(&mut s, 2, &[false, false], Duration::from_secs(3)).await;
        let first = resps.first().unwrap_or_else(|| panic!("lenient case {i}: no answer"));
        if first.status == 200 {
            assert_eq!(first.text(), *want, "lenient case {i}: the upstream read a different body");
        } else {
            assert!(matches!(first.status, 400 | 501), "lenient case {i}: {first:?}");
        }
        // The hidden request may be served as a second request of the connection (it was
        // sent after a complete body), but only ever as its own request, never as body bytes.
        for r in resps.iter().skip(1) {
            assert!(r.status == 200 || r.status >= 400, "lenient case {i}: {r:?}");
        }
    }
    assert!(seen_paths(&up).iter().all(|p| p == "/collect" || p == "/smuggled"), "{:?}", seen_paths(&up));
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9112 §9.3.2 (pipelining) and §6.3: a request whose body the upstream never reads
/// must not leave that body to be parsed as the next request, neither by the gateway nor on
/// the pooled upstream connection. The upstream's record of paths is the oracle.
#[tokio::test]
async fn pipelined_requests_behind_an_unread_body_stay_separate() {
    let (up, gw) = setup(LIMITS).await;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // `/ignore` is answered by the upstream without reading the body.
    let by_length = format!(
        "POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}GET /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        hidden.len()
    );
    let chunked = format!(
        "POST /ignore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        hidden.len()
    );
    for (name, req) in [("content-length", by_length), ("chunked", chunked)] {
        up.seen.lock().clear();
        let mut s = connect(gw.addr()).await;
        s.write_all(req.as_bytes()).await.expect("write");
        let (resps, _) = read_responses(&mut s, 3, &[false; 3], T).await;
        assert_eq!(resps.len(), 3, "{name}: {resps:?}");
        for r in &resps {
            assert_eq!(r.status, 200, "{name}: {r:?}");
            assert_eq!(r.text(), "a", "{name}: {r:?}");
        }
        assert_eq!(seen_paths(&up), ["/ignore", "/second", "/third"], "{name}");
    }
    assert_nothing_smuggled(&up);
    // and the pooled upstream connections are clean
    for i in 0..5 {
        assert_healthy(&gw, &format!("/after-{i}"), "a").await;
    }
}

/// RFC 9112 §9.3.2 and §6.3, the gateway's own answer: a 404 the gateway makes without
/// reading the body must either consume that body or close the connection; the hidden
/// request in the body must never be routed.
#[tokio::test]
async fn pipelined_requests_behind_a_gateway_answered_body_stay_separate() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&api_only_config(up.addr, LIMITS)).await;
    let hidden = "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{hidden}GET /api/second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        hidden.len()
    );
    let mut s = connect(gw.addr()).await;
    s.write_all(req.as_bytes()).await.expect("write");
    let (resps, _) = read_responses(&mut s, 3, &[false; 3], T).await;
    assert!(!resps.is_empty(), "no answer");
    assert_eq!(resps[0].status, 404, "{resps:?}");
    assert!(resps.len() <= 2, "more answers than requests: {resps:?}");
    if let Some(second) = resps.get(1) {
        assert_eq!(second.status, 200, "{resps:?}");
        assert_eq!(seen_paths(&up), ["/api/second"]);
    }
    assert_nothing_smuggled(&up);
    assert_healthy(&gw, "/api/ok", "a").await;
}

/// RFC 9112 §6.3 applies to every method: a GET, HEAD, OPTIONS or DELETE with a body is
/// framed by its Content-Length or chunked coding like any other. A gateway that ignores
/// such a body (CVE-2020-12440 in nginx, the "GET body" smuggling class) leaves it to be
/// parsed as the next request.
#[tokio::test]
async fn bodies_on_bodiless_methods_are_never_parsed_as_requests() {
    let (up, gw) = setup(LIMITS).await;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
        for chunked in [false, true] {
            up.seen.lock().clear();
            let framing = if chunked {
                format!("Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len())
            } else {
                format!("Content-Length: {}\r\n\r\n{hidden}", hidden.len())
            };
            let req = format!(
                "{method} /m HTTP/1.1\r\nHost: x\r\n{framing}GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut s = connect(gw.addr()).await;
            s.write_all(req.as_bytes()).await.expect("write");
            let (resps, _) = read_responses(&mut s, 3, &[method == "HEAD", false, false], T).await;
            let case = format!("{method} chunked={chunked}");
            assert!(!resps.is_empty() && resps.len() <= 2, "{case}: {resps:?}");
            assert!(resps[0].status == 200 || resps[0].status == 400, "{case}: {resps:?}");
            if let Some(second) = resps.get(1) {
                assert_eq!((second.status, second.text()), (200, "a".to_string()), "{case}: {resps:?}");
            }
            let paths = seen_paths(&up);
            assert!(paths.iter().all(|p| p == "/m" || p == "/second"), "{case}: {paths:?}");
        }
    }
    assert_nothing_smuggled(&up);
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9110 §10.1.1: with `Expect: 100-continue` a server that will refuse the content
/// answers with the final status instead of 100, so an oversized body is never invited;
/// within the limit, 100 comes first and the body is forwarded.
#[tokio::test]
async fn expect_continue_does_not_invite_an_oversized_body() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = connect(gw.addr()).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    let r = resps.first().unwrap_or_else(|| panic!("no answer"));
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(hits(&up), 0);

    let mut s = connect(gw.addr()).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    let r = resps.first().unwrap_or_else(|| panic!("no interim answer"));
    assert_eq!(r.status, 100, "{r:?}");
    s.write_all(b"hello").await.expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    let r = resps.first().unwrap_or_else(|| panic!("no final answer"));
    assert_eq!((r.status, r.text()), (200, "hello".to_string()), "{r:?}");
    assert!(!up.last().headers.contains_key("expect") || up.last().headers["expect"] == "100-continue");
    assert_healthy(&gw, "/ok", "a").await;
}

// ---------------------------------------------------------------------------------------
// Head limits on keep-alive connections, slow clients
// ---------------------------------------------------------------------------------------

/// Slowloris, one byte at a time (RFC 9112 §9.3 / CWE-400): `header_timeout` is a deadline
/// for the whole head, so a byte every 50 ms must not keep the head alive. The drip would
/// take 6 s; the gateway must cut it with 408 long before it ends.
#[tokio::test]
async fn slow_drip_head_is_cut_by_a_total_deadline() {
    let (up, gw) = setup(LIMITS).await;
    let (resp, written) = drip(gw.addr(), b"", b"GET /x HTTP/1.1\r\nHost: x\r\nX-Drip: ", 120).await;
    assert!(written < 120, "the drip was never cut ({written} bytes over 6 s)");
    assert_problem(&resp, 408);
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/ok", "a").await;
}

/// The same on the second request of a kept-alive connection, after a proxied response.
#[tokio::test]
async fn slow_drip_second_head_after_proxied_response_is_cut() {
    let (up, gw) = setup(LIMITS).await;
    let (resp, written) =
        drip(gw.addr(), b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /second HTTP/1.1\r\nHost: x\r\nX-Drip: ", 120)
            .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(written < 120, "the drip was never cut ({written} bytes over 6 s)");
    let second = &resp[resp.find("HTTP/1.1 408").unwrap_or_else(|| panic!("no 408 after the drip: {resp}"))..];
    assert_problem(second, 408);
    assert_eq!(seen_paths(&up), ["/first"]);
    assert_healthy(&gw, "/ok", "a").await;
}

/// Slow POST (RFC 9110 §15.5.9, "R-U-Dead-Yet"): `body_timeout` is a deadline for the
/// whole body, not per read, so a byte every 50 ms is cut with 408.
#[tokio::test]
async fn slow_drip_body_is_cut_by_a_total_deadline() {
    let (_up, gw) = setup(LIMITS).await;
    let (resp, written) =
        drip(gw.addr(), b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", b"", 120).await;
    assert!(written < 120, "the drip was never cut ({written} bytes over 6 s)");
    assert_problem(&resp, 408);
    assert_healthy(&gw, "/ok", "a").await;
}

/// Send `first` at once, then `prefix` + `n` bytes of `a` one every 50 ms while reading.
/// Returns what was read until the gateway closed, and how many drip bytes went out.
async fn drip(addr: SocketAddr, first: &[u8], prefix: &[u8], n: usize) -> (String, usize) {
    let s = connect(addr).await;
    let (mut r, mut w) = s.into_split();
    w.write_all(first).await.expect("write");
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (written2, stop2) = (written.clone(), stop.clone());
    let prefix = prefix.to_vec();
    let wait_first = !first.is_empty();
    let writer = tokio::spawn(async move {
        if wait_first {
            // give the first request time to be answered before the drip starts
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for &b in &prefix {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..n {
            if stop2.load(Ordering::SeqCst) || w.write_all(b"a").await.is_err() {
                return;
            }
            written2.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let at_close = written.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    (String::from_utf8_lossy(&out).into_owned(), at_close)
}

/// After an answer the gateway makes itself (a 404), the next head on the same kept-alive
/// connection is still held to the listener's limits. RFC 9112 §9.3 (idle connections);
/// slowloris / CWE-400. Here: the connection is closed after `idle_timeout`.
#[tokio::test]
async fn idle_timeout_applies_after_a_gateway_answer() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&api_only_config(up.addr, LIMITS)).await;
    let mut s = connect(gw.addr()).await;
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    assert_eq!(resps.first().map(|r| r.status), Some(404), "{resps:?}");
    // then nothing: idle_timeout is 300 ms
    let (rest, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "connection still open 5 s after a 404 (idle_timeout 300ms)");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_healthy(&gw, "/api/ok", "a").await;
}

/// As above, for `max_header_bytes`: a 4 KiB head after a 404 is 431, never forwarded
/// (RFC 6585 §5).
#[tokio::test]
async fn head_size_limit_applies_after_a_gateway_answer() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&api_only_config(up.addr, LIMITS)).await;
    let mut s = connect(gw.addr()).await;
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    assert_eq!(resps.first().map(|r| r.status), Some(404), "{resps:?}");
    let big = format!("GET /api/big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(4096));
    s.write_all(big.as_bytes()).await.expect("write");
    let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
    assert_eq!(resps.first().map(|r| r.status), Some(431), "a 4 KiB head (limit 2 KiB) was served: {resps:?}");
    assert_eq!(hits(&up), 0, "the oversized head reached the upstream");
    assert_healthy(&gw, "/api/ok", "a").await;
}

/// As above, for `header_timeout`: a head dripped after a 404 is cut with 408.
#[tokio::test]
async fn header_timeout_applies_after_a_gateway_answer() {
    let up = TestUpstream::start("a").await;
    let gw = TestGateway::start(&api_only_config(up.addr, LIMITS)).await;
    let (resp, written) =
        drip(gw.addr(), b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Drip: ", 120)
            .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(written < 120, "the drip after a 404 was never cut ({written} bytes over 6 s)");
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/api/ok", "a").await;
}

// ---------------------------------------------------------------------------------------
// Pool poisoning
// ---------------------------------------------------------------------------------------

/// A client that walks away mid-response must not leave the rest of that response on a
/// pooled upstream connection for the next client to read (response queue poisoning; RFC
/// 9112 §9.6 and §9.3.2, and CVE-2022-22720 in Apache httpd for the request side).
#[tokio::test]
async fn client_abort_mid_response_does_not_poison_the_pool() {
    let (up, gw) = setup(BIG).await;
    let body = vec![b'Z'; 512 * 1024];
    for _ in 0..3 {
        let mut s = connect(gw.addr()).await;
        let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&body).await.expect("write");
        // read a little of the echo, then vanish
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        drop(s);
    }
    // a client that aborts before the response head (upstream is slow)
    for _ in 0..3 {
        let mut s = connect(gw.addr()).await;
        s.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        drop(s);
    }
    // a client that aborts mid request body
    for _ in 0..3 {
        let mut s = connect(gw.addr()).await;
        s.write_all(b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n").await.expect("write");
        s.write_all(&[b'Q'; 5000]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    // every later exchange, on one kept-alive connection, gets exactly its own answer
    let mut s = connect(gw.addr()).await;
    for i in 0..20 {
        let want = format!("clean-{i}");
        let req = format!("POST /echo/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{want}", want.len());
        s.write_all(req.as_bytes()).await.expect("write");
        let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
        let r = resps.first().unwrap_or_else(|| panic!("no answer to request {i}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), want, "request {i} got someone else's bytes");
        s.write_all(format!("GET /plain/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
        let (resps, _) = read_responses(&mut s, 1, &[false], T).await;
        let r = resps.first().unwrap_or_else(|| panic!("no answer to GET {i}"));
        assert_eq!((r.status, r.text()), (200, "a".to_string()), "{r:?}");
    }
    assert!(!seen_paths(&up).iter().any(|p| p.contains('Z') || p.contains('Q')));
}

/// RFC 9110 §9.3.2 and RFC 9112 §6.3 rule 1: a response to HEAD has no body even with a
/// Content-Length. If the gateway's upstream client read one, the next request on that
/// pooled connection would get the wrong bytes.
#[tokio::test]
async fn head_responses_do_not_desync_pooled_connections() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = connect(gw.addr()).await;
    for i in 0..10 {
        s.write_all(format!("HEAD /h/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
        s.write_all(format!("GET /g/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
        let (resps, _) = read_responses(&mut s, 2, &[true, false], T).await;
        assert_eq!(resps.len(), 2, "round {i}: {resps:?}");
        assert_eq!(resps[0].status, 200, "{resps:?}");
        assert!(resps[0].body.is_empty());
        assert_eq!((resps[1].status, resps[1].text()), (200, "a".to_string()), "round {i}: {resps:?}");
    }
    // nothing extra is waiting on the connection
    let mut buf = [0u8; 64];
    // (the read may also see the gateway's idle close, which is no extra byte)
    let extra = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
    assert!(!matches!(extra, Ok(Ok(n)) if n > 0), "unexpected bytes after the last response: {extra:?}");
    assert_eq!(hits(&up), 20);
}

// ---------------------------------------------------------------------------------------
// Request targets, versions, hosts
// ---------------------------------------------------------------------------------------

/// RFC 9112 §3.2.3 (authority-form is for CONNECT only) and §3.2.4 (asterisk-form is for
/// a server-wide OPTIONS only): neither may be forwarded as if it were a path, and CONNECT
/// must never open a tunnel (an open CONNECT proxy is an SSRF primitive).
#[tokio::test]
async fn connect_and_asterisk_form_are_not_forwarded() {
    let (up, gw) = setup(LIMITS).await;
    // CONNECT to the upstream itself, then bytes that would go through a tunnel
    let req = format!(
        "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\nGET /tunneled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        a = up.addr
    );
    let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(closed);
    let status = status_of(&resp);
    assert!(status >= 400, "CONNECT was accepted: {resp}");
    assert!(up.seen.lock().iter().all(|s| s.method != "CONNECT"), "CONNECT reached the upstream");
    // OPTIONS *
    let (resp, _) = raw_exchange(gw.addr(), b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", T).await;
    let status = status_of(&resp);
    assert!(matches!(status, 200 | 204 | 400 | 404 | 405 | 501), "{resp}");
    for s in up.seen.lock().iter() {
        assert!(s.path_and_query == "*" || s.path_and_query == "/tunneled", "OPTIONS * forwarded as {s:?}");
    }
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9110 §4.2.4: userinfo in an `http` URI is deprecated and a recipient SHOULD treat it
/// as an error; RFC 9112 §3.2.2: the host of an absolute-form target replaces `Host`.
/// `http://a.example:80@b.example/` names host `b.example` (the http crate agrees), so a
/// gateway that routes on `a.example` while the upstream receives `Host: a.example:80@b.example`
/// routes on one host and forwards another, and leaks the credentials upstream.
#[tokio::test]
async fn absolute_form_with_userinfo_is_refused() {
    let (up, gw) = setup(LIMITS).await;
    let mut accepted = Vec::new();
    for target in ["http://user:secret@real.example/x", "http://a.example:80@b.example/x", "http://@b.example/x"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n");
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
        assert!(closed);
        if status_of(&resp) == 400 {
            assert_problem(&resp, 400);
            continue;
        }
        let seen = up.seen.lock().last().cloned();
        let host = seen.as_ref().and_then(|s| s.headers.get("host").cloned());
        let xfh = seen.as_ref().and_then(|s| s.headers.get("x-forwarded-host").cloned());
        accepted.push(format!("{target}: {} -> upstream Host {host:?}, X-Forwarded-Host {xfh:?}", status_of(&resp)));
    }
    assert!(accepted.is_empty(), "absolute-form with userinfo accepted: {accepted:#?}");
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
/// request message that ... contains ... a Host header field with an invalid field value."
/// RFC 9110 §7.2: Host = uri-host [ ":" port ]. Values a backend could read as a different
/// host (`@`, `/`, `?`, `#`, spaces, a non-numeric port) are Host header injection.
#[tokio::test]
async fn invalid_host_values_are_400() {
    let (up, gw) = setup(LIMITS).await;
    let bad = [
        "good.example:80@evil.example",
        "good.example@evil.example",
        "good.example/evil",
        "good.example?x",
        "good.example#x",
        "good example",
        "good.example:port",
        "good.example:80:81",
        "[::1",
        "good.example:99999999999",
    ];
    let mut forwarded = Vec::new();
    for host in bad {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
        assert!(closed);
        if status_of(&resp) != 400 {
            forwarded.push(format!("{host:?} -> {}", resp.lines().next().unwrap_or("")));
        }
    }
    assert!(forwarded.is_empty(), "invalid Host values accepted: {forwarded:#?}");
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/ok", "a").await;
}

/// CVE-2022-31813 (Apache mod_proxy) and CVE-2024-45410 (Traefik): a client lists headers
/// in `Connection` to make the proxy drop headers the backend relies on. The gateway's own
/// forwarding headers and the Host it routed on must survive whatever `Connection` names.
#[tokio::test]
async fn connection_header_cannot_strip_the_gateways_own_headers() {
    let (up, gw) = setup(LIMITS).await;
    let req = "GET /x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close, x-forwarded-for, x-forwarded-host, x-forwarded-proto, x-request-id\r\n\r\n";
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "api.example.com");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(seen.contains_key("x-request-id"));
    assert_healthy(&gw, "/ok", "a").await;
}

/// The Host the gateway routed on is the Host the upstream gets (see pipeline.rs). With
/// `Connection: host` the client must not make the upstream see a different host (the
/// target's address) than the one the route was chosen for. RFC 9110 §7.2 / §7.6.1.
#[tokio::test]
async fn connection_header_cannot_strip_host() {
    let p = TestUpstream::start("public").await;
    let v = TestUpstream::start("vhost").await;
    let yaml = format!(
        "version: 1\nlisteners:\n  - {{ name: public, bind: \"127.0.0.1:0\" }}\nupstreams:\n  - {{ name: p, targets: [{{ url: \"http://{}\" }}] }}\n  - {{ name: v, targets: [{{ url: \"http://{}\" }}] }}\nroutes:\n  - name: vhost\n    match: {{ host: \"api.example.com\", prefix: / }}\n    upstream: v\n    public: true\n  - name: rest\n    match: {{ prefix: / }}\n    upstream: p\n    public: true\n",
        p.addr, v.addr
    );
    let gw = TestGateway::start(&yaml).await;
    let req = "GET /x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close, host\r\n\r\n";
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(hits(&v), 1, "routing changed");
    let seen = v.last().headers;
    assert_eq!(
        seen.get("host").map(|h| h.to_str().unwrap_or("?")),
        Some("api.example.com"),
        "routed on api.example.com but the upstream got another Host"
    );
}

/// Request-target oddities (RFC 9112 §3.2, RFC 3986 §3.3): raw non-ASCII bytes (and a raw
/// full-width `．．`, U+FF0E, which some backends fold to `..`), a lone `%`, a fragment, tabs,
/// doubled spaces; refused, or forwarded in a form that cannot be read two ways.
#[tokio::test]
async fn request_target_oddities() {
    let (up, gw) = setup(LIMITS).await;
    let refused: [&[u8]; 10] = [
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a/\xef\xbc\x8e\xef\xbc\x8e/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xc0\xae\xc0\xae/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a% HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a%2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET\t/x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET  /x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /x  HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /x\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for (i, req) in refused.iter().enumerate() {
        let (resp, closed) = raw_exchange(gw.addr(), req, T).await;
        assert!(closed, "case {i}: {resp}");
        assert_eq!(status_of(&resp), 400, "case {i}: {resp:?}");
    }
    assert_eq!(hits(&up), 0, "{:?}", seen_paths(&up));

    // A fragment is not part of the request-target: never forwarded, and it cannot hide a
    // path from the router.
    let (resp, _) =
        raw_exchange(gw.addr(), b"GET /x#/../../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", T).await;
    if status_of(&resp) == 200 {
        assert_eq!(up.last().path_and_query, "/x");
    } else {
        assert_eq!(status_of(&resp), 400, "{resp}");
    }
    // A long query string within the head limit is forwarded byte for byte.
    let q: String = (0..1500).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let req = format!("GET /q?k={q}&x=%2e%2e%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().path_and_query, format!("/q?k={q}&x=%2e%2e%2F"));
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9112 §2.3 and §2.2: only HTTP/1.0 and HTTP/1.1 are spoken on an HTTP/1 connection; a
/// request line with another version (or none: HTTP/0.9) is refused and the connection
/// closed. Leading empty lines before a request line SHOULD be ignored (§2.2).
#[tokio::test]
async fn http_versions_on_the_http1_listener() {
    let (up, gw) = setup(LIMITS).await;
    let refused: [&[u8]; 6] = [
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/3\r\nHost: x\r\n\r\n",
        b"GET / http/1.1\r\nHost: x\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ];
    for (i, req) in refused.iter().enumerate() {
        let (resp, closed) = raw_exchange(gw.addr(), req, T).await;
        assert!(closed, "case {i}: {resp}");
        let status = status_of(&resp);
        assert!(resp.is_empty() || matches!(status, 400 | 505), "case {i}: {resp:?}");
    }
    assert_eq!(hits(&up), 0);
    let (resp, _) =
        raw_exchange(gw.addr(), b"\r\n\r\nGET /lead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", T).await;
    assert!(resp.starts_with("HTTP/1.1 200") || status_of(&resp) == 400, "{resp}");
    assert_healthy(&gw, "/ok", "a").await;
}

// ---------------------------------------------------------------------------------------
// Header bombs within the limits
// ---------------------------------------------------------------------------------------

/// Many tiny headers, one large value and many cookies, each within the limits (RFC 9110
/// §5.4: limits are applied consistently): accepted and forwarded intact; past the
/// documented 100 header lines it is 431 (RFC 6585 §5) and nothing is forwarded.
///
/// (The test upstream is hyper with its default cap of 100 headers, and the gateway adds 4
/// forwarding headers, so "within the limits" here means at most 96 client headers.)
#[tokio::test]
async fn header_bombs_within_the_limits() {
    let (up, gw) = setup(LIMITS).await;
    // 90 empty-valued headers
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..90 {
        req.push_str(&format!("c{i}:\r\n"));
    }
    req.push_str("\r\n");
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last().headers;
    assert!((0..90).all(|i| seen.get(format!("c{i}").as_str()).is_some_and(|v| v.is_empty())), "{seen:?}");
    // 102 header lines: over the limit, refused by the gateway itself
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..100 {
        req.push_str(&format!("c{i}:\r\n"));
    }
    req.push_str("\r\n");
    let before = hits(&up);
    let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(closed);
    assert_problem(&resp, 431);
    assert_eq!(hits(&up), before);
    // one value close to the 2 KiB head limit, forwarded byte for byte
    let value: String = (0..1900).map(|i| char::from(b'!' + (i % 90) as u8)).collect();
    let req = format!("GET /one HTTP/1.1\r\nHost: x\r\nX-Big: {value}\r\nConnection: close\r\n\r\n");
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().headers["x-big"].as_bytes(), value.as_bytes());
    // 90 Cookie lines: every crumb arrives, in order
    let mut req = String::from("GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..90 {
        req.push_str(&format!("Cookie: k{i}=v\r\n"));
    }
    req.push_str("\r\n");
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last().headers;
    let all: Vec<String> = seen.get_all("cookie").iter().map(|v| v.to_str().unwrap_or("").to_string()).collect();
    let want: Vec<String> = (0..90).map(|i| format!("k{i}=v")).collect();
    assert_eq!(all.join("; "), want.join("; "));
    assert_healthy(&gw, "/ok", "a").await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2 prior knowledge (h2c) with hand-made frames
// ---------------------------------------------------------------------------------------

use common::h2::{CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS};

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    common::h2::put_frame(&mut f, kind, flags, stream, payload);
    f
}

/// RFC 7541 §5.1 integer with an N-bit prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// RFC 7541 §6.2.2 literal header field without indexing, new name, no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        hpack_literal(&mut out, n.as_bytes(), v.as_bytes());
    }
    out
}

/// A GET request's header block with `extra` fields after the pseudo-headers.
fn h2_get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut f = vec![(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "localhost")];
    f.extend_from_slice(extra);
    hpack_block(&f)
}

async fn h2_open(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr).await;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("write preface");
    s
}

/// Read frames (acknowledging SETTINGS) until `done` says so, the peer closes (true), or
/// `limit` elapses.
async fn h2_read(s: &mut TcpStream, limit: Duration, done: impl Fn(&Frame) -> bool) -> (Vec<Frame>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    loop {
        while buf.len() >= 9 {
            let n = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + n {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + n].to_vec(),
            };
            buf.drain(..9 + n);
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[])).await;
            }
            let stop = done(&f);
            out.push(f);
            if stop {
                return (out, false);
            }
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How stream `id` ended: "200" (a 200 response head), "status" (another response head),
/// "reset", "goaway" (the connection was refused) or "none".
fn h2_outcome(frames: &[Frame], id: u32) -> &'static str {
    for f in frames {
        if f.stream == id && f.kind == HEADERS {
            // `:status: 200` is static table entry 8 (RFC 7541 Appendix A)
            return if f.payload.first() == Some(&0x88) { "200" } else { "status" };
        }
        if f.stream == id && f.kind == RST_STREAM {
            return "reset";
        }
        if f.kind == GOAWAY {
            return "goaway";
        }
    }
    "none"
}

fn ends_stream(id: u32) -> impl Fn(&Frame) -> bool {
    move |f: &Frame| {
        (f.stream == id && (f.kind == RST_STREAM || (f.flags & END_STREAM != 0 && matches!(f.kind, DATA | HEADERS))))
            || f.kind == GOAWAY
    }
}

/// The hand-made frames are right: a well-formed request is answered 200 (so the malformed
/// cases below fail for the reason they claim).
#[tokio::test]
async fn h2_control_request_with_handmade_frames() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = h2_open(gw.addr()).await;
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &h2_get("/h2", &[("x-a", "1")]))).await.expect("w");
    let (frames, _) = h2_read(&mut s, T, ends_stream(1)).await;
    assert_eq!(h2_outcome(&frames, 1), "200", "{frames:?}");
    assert_eq!(up.last().path_and_query, "/h2");
    assert_eq!(up.last().headers["x-a"], "1");
}

/// RFC 9113 §8.1.1, §8.2.1, §8.2.2, §8.3.1: malformed requests must be treated as stream
/// (or connection) errors and an intermediary MUST NOT forward them. The dangerous ones
/// are those that would turn into HTTP/1.1 framing or header injection on the way to the
/// upstream (h2 downgrade smuggling, as in CVE-2021-21295 / CVE-2021-33193).
#[tokio::test]
async fn h2_malformed_requests_are_not_forwarded() {
    let (up, gw) = setup(LIMITS).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("transfer-encoding", h2_get("/m", &[("transfer-encoding", "chunked")])),
        ("connection", h2_get("/m", &[("connection", "keep-alive")])),
        ("keep-alive", h2_get("/m", &[("keep-alive", "timeout=5")])),
        ("upgrade", h2_get("/m", &[("upgrade", "websocket")])),
        ("proxy-connection", h2_get("/m", &[("proxy-connection", "keep-alive")])),
        ("te: gzip", h2_get("/m", &[("te", "gzip")])),
        ("upper-case name", h2_get("/m", &[("X-Upper", "1")])),
        ("CRLF in value", h2_get("/m", &[("x-a", "b\r\nTransfer-Encoding: chunked")])),
        ("LF in value", h2_get("/m", &[("x-a", "b\nx-injected: 1")])),
        ("NUL in value", h2_get("/m", &[("x-a", "b\0c")])),
        ("space in name", h2_get("/m", &[("x a", "1")])),
        ("colon in name", h2_get("/m", &[("x:a", "1")])),
        ("empty name", h2_get("/m", &[("", "1")])),
        ("CRLF in path", h2_get("/m\r\nX-Injected: 1", &[])),
        ("space in path", h2_get("/m HTTP/1.1\r\nX: y", &[])),
        ("empty path", h2_get("", &[])),
        ("missing :path", hpack_block(&[(":method", "GET"), (":scheme", "http"), (":authority", "localhost")])),
        ("missing :method", hpack_block(&[(":scheme", "http"), (":path", "/m"), (":authority", "localhost")])),
        (
            "pseudo after regular",
            hpack_block(&[(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/m"), (":authority", "x")]),
        ),
        (
            "duplicate :path",
            hpack_block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/m"),
                (":path", "/n"),
                (":authority", "x"),
            ]),
        ),
        ("unknown pseudo", h2_get("/m", &[(":foo", "bar")])),
        ("response pseudo", h2_get("/m", &[(":status", "200")])),
        (
            "method with space",
            hpack_block(&[(":method", "GET /x HTTP/1.1"), (":scheme", "http"), (":path", "/m"), (":authority", "x")]),
        ),
        (
            "authority with CRLF",
            h2_get("/m", &[]).into_iter().chain(hpack_block(&[(":authority", "a\r\nb")])).collect(),
        ),
    ];
    let mut forwarded = Vec::new();
    for (name, block) in &cases {
        let before = hits(&up);
        let mut s = h2_open(gw.addr()).await;
        let _ = s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, block)).await;
        let (frames, closed) = h2_read(&mut s, Duration::from_secs(5), ends_stream(1)).await;
        let outcome = h2_outcome(&frames, 1);
        if outcome == "200" || hits(&up) != before {
            forwarded.push(format!("{name}: {outcome}, upstream saw {:?}", up.seen.lock().last()));
        } else {
            assert!(outcome != "none" || closed, "{name}: no answer at all: {frames:?}");
        }
    }
    assert!(forwarded.is_empty(), "malformed h2 requests forwarded: {forwarded:#?}");
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9113 §8.1.1: a request whose DATA does not add up to its content-length is malformed.
/// Through the gateway the upstream must never receive it as a complete request (the
/// upstream's /collect would answer 200 with the length it got).
#[tokio::test]
async fn h2_content_length_mismatch_is_not_completed_upstream() {
    let (_up, gw) = setup(LIMITS).await;
    for (declared, sent) in [("10", "abc"), ("2", "abcdef")] {
        let mut s = h2_open(gw.addr()).await;
        let block = hpack_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/collect"),
            (":authority", "localhost"),
            ("content-length", declared),
        ]);
        let mut out = frame(HEADERS, END_HEADERS, 1, &block);
        out.extend(frame(DATA, END_STREAM, 1, sent.as_bytes()));
        let _ = s.write_all(&out).await;
        let (frames, _) = h2_read(&mut s, Duration::from_secs(5), ends_stream(1)).await;
        assert_ne!(h2_outcome(&frames, 1), "200", "content-length {declared} with {sent:?} answered 200: {frames:?}");
    }
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9113 §8.3.1: the target's authority is `:authority`; a `host` field naming another
/// host must not win (routing confusion between HTTP/2 and the HTTP/1.1 upstream).
#[tokio::test]
async fn h2_host_header_cannot_override_authority() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = h2_open(gw.addr()).await;
    let block = hpack_block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/auth"),
        (":authority", "real.example"),
        ("host", "fake.example"),
    ]);
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)).await.expect("w");
    let (frames, _) = h2_read(&mut s, T, ends_stream(1)).await;
    match h2_outcome(&frames, 1) {
        "200" => {
            let seen = up.last().headers;
            let hosts: Vec<_> = seen.get_all("host").iter().collect();
            assert_eq!(hosts, ["real.example"], "{seen:?}");
            assert_eq!(seen["x-forwarded-host"], "real.example");
        }
        other => assert!(other != "none", "{frames:?}"),
    }
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9113 §8.2.3: cookie crumbs split into several `cookie` fields "MUST be concatenated
/// into a single octet string using the two-octet delimiter of 0x3b, 0x20 ("; ") before
/// being passed into a non-HTTP/2 context, such as an HTTP/1.1 connection". RFC 6265 §5.4:
/// an HTTP/1.1 request carries at most one Cookie header; backends often read only the first.
#[tokio::test]
async fn h2_cookie_crumbs_are_joined_for_the_http1_upstream() {
    let (up, gw) = setup(LIMITS).await;
    let req = http::Request::get(gw.url("/cookie"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(full(""))
        .expect("req");
    let res = h2_client().request(req).await.expect("h2 response");
    assert_eq!(res.status(), 200);
    let seen = up.last().headers;
    let cookies: Vec<_> = seen.get_all("cookie").iter().map(|v| v.to_str().unwrap_or("?").to_string()).collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"], "the HTTP/1.1 upstream got several Cookie headers");
}

/// RFC 9113 §3.4: a connection that starts like the preface but is not it, or a preface
/// followed by something other than SETTINGS, is a connection error; the gateway closes it
/// promptly and keeps serving others.
#[tokio::test]
async fn h2c_bad_prefaces_are_closed() {
    let (up, gw) = setup(LIMITS).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("almost the preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec()),
        ("preface then HTTP/1", [PREFACE, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat()),
        ("preface then zeros", [PREFACE, &[0u8; 64][..]].concat()),
        ("preface then oversized frame", [PREFACE, &[0xff, 0xff, 0xff, SETTINGS, 0, 0, 0, 0, 0][..]].concat()),
        ("preface then SETTINGS on a stream", [PREFACE, &frame(SETTINGS, 0, 1, &[])].concat()),
        ("half the preface, silence", PREFACE[..10].to_vec()),
    ];
    for (name, bytes) in &cases {
        let mut s = connect(gw.addr()).await;
        let _ = s.write_all(bytes).await;
        let (out, closed) = read_to_close(&mut s, T).await;
        assert!(closed, "{name}: connection still open after {T:?}");
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains(" 200 "), "{name}: {text}");
    }
    assert_eq!(hits(&up), 0, "{:?}", seen_paths(&up));
    assert_healthy(&gw, "/ok", "a").await;
}

/// CVE-2024-27316 (and the 2024 CONTINUATION flood family): HEADERS without END_HEADERS
/// followed by endless CONTINUATION frames must be cut off (GOAWAY / close) once the header
/// list exceeds the limit, not buffered without end. Nothing reaches the upstream.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = h2_open(gw.addr()).await;
    let mut out = frame(HEADERS, END_STREAM, 1, &h2_get("/flood", &[]));
    let mut piece = Vec::new();
    hpack_literal(&mut piece, b"x-flood", &[b'f'; 100]);
    for _ in 0..5000 {
        out.extend(frame(CONTINUATION, 0, 1, &piece));
    }
    let writer = tokio::spawn(async move {
        let r = tokio::time::timeout(T, s.write_all(&out)).await;
        (s, r)
    });
    let (mut s, _) = writer.await.expect("writer");
    let (frames, closed) = h2_read(&mut s, T, |f| f.kind == GOAWAY).await;
    let refused = closed || frames.iter().any(|f| f.kind == GOAWAY || f.kind == RST_STREAM);
    assert!(refused, "500 KiB of CONTINUATION frames neither refused nor closed: {frames:?}");
    assert_ne!(h2_outcome(&frames, 1), "200");
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/ok", "a").await;
}

/// CVE-2023-44487 (HTTP/2 rapid reset): streams opened and cancelled at once, in bulk. The
/// gateway must end the connection (GOAWAY) rather than keep doing work for each, and stay
/// healthy for everyone else.
#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let (up, gw) = setup(LIMITS).await;
    let mut s = h2_open(gw.addr()).await;
    let block = h2_get("/reset", &[]);
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tokio::time::timeout(T, s.write_all(&out)).await;
    let (frames, closed) = h2_read(&mut s, T, |f| f.kind == GOAWAY).await;
    assert!(closed || frames.iter().any(|f| f.kind == GOAWAY), "1000 rapid resets and no GOAWAY");
    assert!(hits(&up) < 1000, "every reset stream was still forwarded ({})", hits(&up));
    assert_healthy(&gw, "/ok", "a").await;
}

/// CVE-2019-9512 (ping flood), CVE-2019-9515 (settings flood), CVE-2019-9518 (empty frames
/// flood): the flood is either absorbed without unbounded work or the connection is closed;
/// either way other clients are served during and after it.
#[tokio::test]
async fn h2_control_frame_floods_do_not_hurt_others() {
    let (_up, gw) = setup(LIMITS).await;
    let floods: Vec<(&str, Vec<u8>)> = vec![
        ("ping", (0..20_000u32).flat_map(|i| frame(PING, 0, 0, &u64::from(i).to_be_bytes())).collect()),
        ("settings", (0..20_000).flat_map(|_| frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])).collect()),
        ("empty data", {
            let block = hpack_block(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/collect"),
                (":authority", "localhost"),
            ]);
            let mut v = frame(HEADERS, END_HEADERS, 1, &block);
            for _ in 0..20_000 {
                v.extend(frame(DATA, 0, 1, &[]));
            }
            v.extend(frame(DATA, END_STREAM, 1, &[]));
            v
        }),
    ];
    for (name, bytes) in floods {
        let mut s = h2_open(gw.addr()).await;
        // never read: the gateway's answers pile up on its side, which it must bound
        let writer = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&bytes)).await;
            s
        });
        // meanwhile another client is served
        let (status, _, body) = tokio::time::timeout(T, get(&gw.url("/during")))
            .await
            .unwrap_or_else(|_| panic!("{name}: a normal request stalled during the flood"));
        assert_eq!((status, body.as_str()), (200, "a"), "{name}");
        let s = writer.await.expect("writer");
        drop(s);
    }
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9113 §3.4: "The client connection preface ... MUST be followed by a SETTINGS frame";
/// anything else is a connection error of type PROTOCOL_ERROR. A request sent before the
/// client's SETTINGS must not be served (the h2 crate alone would serve it; the gateway checks
/// the first frame itself).
#[tokio::test]
async fn h2_request_before_client_settings_is_refused() {
    let (up, gw) = setup(LIMITS).await;
    let early = || frame(HEADERS, END_STREAM | END_HEADERS, 1, &h2_get("/early", &[]));
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("HEADERS first", early()),
        ("PING first, then HEADERS", [frame(PING, 0, 0, &[0; 8]), early()].concat()),
        ("SETTINGS ACK first, then HEADERS", [frame(SETTINGS, 1, 0, &[]), early()].concat()),
    ];
    for (name, bytes) in shapes {
        let mut s = connect(gw.addr()).await;
        let _ = s.write_all(&[PREFACE, &bytes].concat()).await;
        let (frames, closed) = h2_read(&mut s, Duration::from_secs(3), |f| f.kind == GOAWAY).await;
        assert_ne!(h2_outcome(&frames, 1), "200", "{name}: a request before SETTINGS was served: {frames:?}");
        // GOAWAY: the last stream id (4 bytes), then the error code; PROTOCOL_ERROR is 1.
        let code = frames
            .iter()
            .find(|f| f.kind == GOAWAY && f.payload.len() >= 8)
            .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]));
        assert_eq!(code, Some(1), "{name}: expected GOAWAY PROTOCOL_ERROR, got {frames:?} (closed: {closed})");
    }
    assert_eq!(hits(&up), 0);
    assert_healthy(&gw, "/ok", "a").await;
}

/// RFC 9113 §8.3.1: ":authority MUST NOT include the deprecated userinfo subcomponent for
/// "http" or "https" schemed URIs." Same host confusion as the HTTP/1.1 absolute-form case.
#[tokio::test]
async fn h2_authority_with_userinfo_is_refused() {
    let (up, gw) = setup(LIMITS).await;
    let mut accepted = Vec::new();
    for authority in ["user:secret@real.example", "a.example:80@b.example"] {
        let mut s = h2_open(gw.addr()).await;
        let block = hpack_block(&[(":method", "GET"), (":scheme", "http"), (":path", "/u"), (":authority", authority)]);
        let _ = s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)).await;
        let (frames, _) = h2_read(&mut s, Duration::from_secs(5), ends_stream(1)).await;
        if h2_outcome(&frames, 1) == "200" {
            let host = up.seen.lock().last().and_then(|s| s.headers.get("host").cloned());
            accepted.push(format!("{authority} -> upstream Host {host:?}"));
        }
    }
    assert!(accepted.is_empty(), ":authority with userinfo accepted: {accepted:#?}");
    assert_healthy(&gw, "/ok", "a").await;
}

/// Slowloris over HTTP/2: `idle_timeout` must close an idle h2c connection even if the
/// client never answers the PING that hyper's graceful shutdown waits for (RFC 9113 §6.8
/// lets a server close after GOAWAY; it must not wait on the client without a bound). The
/// well-behaved client is `idle_h2_connection_is_closed` in tests/limits.rs. Three idle
/// shapes: a completed handshake, the preface alone, the preface and half a frame.
#[tokio::test]
async fn h2_idle_connection_is_closed_even_if_pings_are_ignored() {
    let (_up, gw) = setup(LIMITS).await;
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("handshake done", [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()),
        ("preface only", PREFACE.to_vec()),
        ("preface and half a frame", [PREFACE, &[0, 0, 6][..]].concat()),
    ];
    let mut open = Vec::new();
    for (name, bytes) in shapes {
        let mut s = connect(gw.addr()).await;
        s.write_all(&bytes).await.expect("write");
        // SETTINGS are acknowledged by h2_read; PINGs never are
        let (frames, closed) = h2_read(&mut s, Duration::from_secs(5), |_| false).await;
        if !closed {
            open.push(format!("{name}: {:?}", frames.iter().map(|f| f.kind).collect::<Vec<_>>()));
        }
    }
    assert!(open.is_empty(), "idle h2c connections (idle_timeout 300ms) still open after 5 s: {open:#?}");
}
