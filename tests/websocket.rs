//! WebSocket through the gateway: HTTP/1.1 Upgrade and RFC 8441 (extended CONNECT over
//! HTTP/2) to a real WebSocket server, both directions streaming, and the idle timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A WebSocket echo server on 127.0.0.1 (tungstenite): every text or binary message comes
/// back as it was sent.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(up: SocketAddr, idle: &str) -> String {
    config_with(up, idle, "")
}

fn config_with(up: SocketAddr, idle: &str, limits: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    limits: {{ {limits} }}\nupstreams:\n  - name: ws\n    targets: [{{ url: \"http://{up}\" }}]\n    timeouts: {{ idle: {idle} }}\nroutes:\n  - {{ name: keyed, match: {{ prefix: /keyed }}, upstream: ws, auth: [api_key] }}\n  - {{ name: ws, match: {{ prefix: /ws, methods: [GET] }}, upstream: ws, public: true }}\n"
    )
}

/// A WebSocket on an HTTP/2 stream (RFC 8441) to `path` through the gateway at `gw`.
async fn h2_websocket(
    gw: SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let tcp = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2");
    tokio::spawn(conn);
    // A first request, so the gateway's SETTINGS (ENABLE_CONNECT_PROTOCOL) have arrived.
    let warm = http::Request::get(format!("http://{gw}/ws")).body(full("")).expect("req");
    let _ = tx.send_request(warm).await.expect("warm-up");
    let mut req = http::Request::connect(format!("http://{gw}{path}"))
        .header("sec-websocket-version", "13")
        .body(full(""))
        .expect("req");
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let res = tx.send_request(req).await.expect("extended CONNECT");
    assert_eq!(res.status(), 200, "RFC 8441: 200 opens the stream");
    assert!(!res.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(res).await.expect("upgraded stream");
    tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// Send `total` messages in windows of `window`, each echo checked in order.
async fn round_trips<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, total: usize, window: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let msg = |i: usize| {
        if i.is_multiple_of(2) {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(vec![(i % 251) as u8; 1 + i % 300])
        }
    };
    let mut sent = 0;
    while sent < total {
        let n = window.min(total - sent);
        for i in sent..sent + n {
            ws.feed(msg(i)).await.expect("send");
        }
        ws.flush().await.expect("flush");
        for i in sent..sent + n {
            let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("echo in time")
                .expect("open")
                .expect("message");
            assert_eq!(got, msg(i), "message {i}");
        }
        sent += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_round_trip_over_an_http1_upgrade() {
    let up = echo_server().await;
    let gw = TestGateway::start(&config(up, "30s")).await;
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", gw.addr())).await.expect("upgrade");
    assert_eq!(res.status(), 101);
    assert!(res.headers().contains_key("x-request-id"));
    round_trips(&mut ws, 10_000, 100).await;
    assert_eq!(gw.upstream_status("ws")["in_flight"], 1, "the tunnel holds its upstream connection");
    ws.close(None).await.expect("close");
    drop(ws);

    // Routes still rule: a keyed route refuses an upgrade without a key.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/keyed", gw.addr())).await.expect_err("no key");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    // The upstream connection is released when the tunnel ends.
    let mut released = false;
    for _ in 0..100 {
        if gw.upstream_status("ws")["in_flight"] == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "in_flight back to 0 after the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    let up = echo_server().await;
    let gw = TestGateway::start(&config(up, "30s")).await;
    let mut ws = h2_websocket(gw.addr(), "/ws/h2").await;
    round_trips(&mut ws, 2_000, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_and_a_busy_one_is_not() {
    let up = echo_server().await;
    let gw = TestGateway::start(&config(up, "1s")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr())).await.expect("upgrade");
    // Busy for three idle periods: a message every 100 ms keeps it open.
    for _ in 0..30 {
        round_trips(&mut ws, 1, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then quiet: the gateway closes it.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed within the idle timeout");
    assert!(matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_under_the_listeners_connection_limits() {
    let up = echo_server().await;
    let gw = TestGateway::start(&config_with(up, "30s", "max_connections_per_ip: 1")).await;
    let url = format!("ws://{}/ws", gw.addr());
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await.expect("first tunnel");
    round_trips(&mut first, 10, 5).await;
    // The HTTP connection became a tunnel; it still holds this client's one connection.
    let second = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await;
    assert!(matches!(second, Ok(Err(_))), "a second tunnel from the same address is refused");
    round_trips(&mut first, 10, 5).await;
    first.close(None).await.expect("close");
    drop(first);
    // Once the tunnel has ended, the address may connect again.
    let mut again = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = again.expect("a new tunnel after the first ended");
    round_trips(&mut ws, 10, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_websocket_stream_keeps_its_connection_busy() {
    let up = echo_server().await;
    // The listener closes idle HTTP/2 connections after 1 s; a tunnel in use is not idle.
    let gw = TestGateway::start(&config_with(up, "30s", "idle_timeout: 1s")).await;
    let mut ws = h2_websocket(gw.addr(), "/ws").await;
    // Three idle periods of traffic, then still open.
    for _ in 0..30 {
        round_trips(&mut ws, 1, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    round_trips(&mut ws, 5, 5).await;
}

/// An upstream that answers every request with a `101` that is not a WebSocket handshake
/// (no `Sec-WebSocket-Accept`), then echoes raw bytes: what a backend tricked into saying 101
/// looks like.
async fn fake_switch_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let relayed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = relayed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let Ok(n) = s.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    count.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    (addr, relayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_real_websocket_handshake_opens_a_tunnel() {
    let (up, relayed) = fake_switch_server().await;
    let gw = TestGateway::start(&config(up, "30s")).await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    // A 101 without the accept value for our key: 502, and nothing after it is relayed.
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\nGET /internal HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let (text, _) = raw_exchange(gw.addr(), upgrade.as_bytes(), Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("101"), "{text}");
    // A 101 to a request that asked for no upgrade: 502 too.
    let (text, _) = raw_exchange(gw.addr(), b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    // A handshake without a valid key, or with a body, is refused before any upstream.
    let bad =
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\n\r\n";
    let (text, _) = raw_exchange(gw.addr(), bad.as_bytes(), Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let body = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nContent-Length: 5\r\n\r\nhello"
    );
    let (text, _) = raw_exchange(gw.addr(), body.as_bytes(), Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(relayed.load(std::sync::atomic::Ordering::SeqCst), 0, "no byte went through a tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_rule_closes_open_tunnels() {
    let up = echo_server().await;
    let yaml = config(up, "30s");
    let gw = TestGateway::start(&yaml).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr())).await.expect("upgrade");
    round_trips(&mut ws, 10, 5).await;
    gw.rewrite(&format!("{yaml}protection:\n  ip_rules: {{ deny: [\"127.0.0.0/8\"] }}\n")).await.expect("reload");
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed after the deny");
    assert!(matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))), "{end:?}");
}
