//! gRPC through the gateway, with tonic on both sides: a unary call and a bidirectional
//! stream pass with messages, headers and trailers intact over an HTTP/2 upstream; errors the
//! gateway makes itself reach the caller as `grpc-status`; `grpc-timeout` bounds the wait.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::*;
use futures_util::Stream;
use http::uri::PathAndQuery;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

/// Messages are raw bytes: no protobuf, no code generation.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Unary: the message reversed, with a response header; `sleep` first waits that long.
struct Reverse;

impl tonic::server::UnaryService<Bytes> for Reverse {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let wait = req.metadata().get("x-sleep-ms").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let seen_te = req.metadata().get("te").is_some();
            let mut body = req.into_inner().to_vec();
            body.reverse();
            let mut res = Response::new(Bytes::from(body));
            res.metadata_mut().insert("x-served-by", MetadataValue::from_static("tonic"));
            if seen_te {
                res.metadata_mut().insert("x-saw-te", MetadataValue::from_static("yes"));
            }
            Ok(res)
        })
    }
}

/// Bidirectional: each message echoed with a prefix as it arrives; at the end of the input,
/// a status with trailer metadata (or OK when the last message was `ok`).
struct Echo;

impl tonic::server::StreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let inbound = req.into_inner();
            let out = futures_util::stream::unfold((inbound, false, 0u32), |(mut inbound, done, n)| async move {
                if done {
                    return None;
                }
                match inbound.message().await {
                    Ok(Some(m)) if &m[..] == b"ok" => None,
                    Ok(Some(m)) => Some((Ok([&b"echo:"[..], &m].concat().into()), (inbound, false, n + 1))),
                    Ok(None) => {
                        let mut st = Status::new(Code::Aborted, format!("stream ended after {n} messages"));
                        st.metadata_mut().insert("x-final", MetadataValue::from_static("trailer-intact"));
                        Some((Err(st), (inbound, true, n)))
                    }
                    Err(e) => Some((Err(e), (inbound, true, n))),
                }
            });
            Ok(Response::new(Box::pin(out) as BoxStream))
        })
    }
}

/// A tonic gRPC server over HTTP/2 (prior knowledge) on 127.0.0.1, and a count of the
/// connections it accepted.
async fn grpc_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let res = match req.uri().path() {
                        "/test.Echo/Reverse" => tonic::server::Grpc::new(RawCodec).unary(Reverse, req).await,
                        "/test.Echo/Chat" => tonic::server::Grpc::new(RawCodec).streaming(Echo, req).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(res)
                });
                let _ = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, conns)
}

fn gateway_config(upstream: SocketAddr, extra_routes: &str) -> String {
    format!(
        "version: 1\nadmin: {{ bind: \"127.0.0.1:0\", public_metrics: true }}\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nupstreams:\n  - name: grpc\n    protocol: h2\n    targets: [{{ url: \"http://{upstream}\" }}]\n    timeouts: {{ connect: 1s, response: 5s }}\n  - name: dead\n    protocol: h2\n    targets: [{{ url: \"http://127.0.0.1:1\" }}]\n    timeouts: {{ connect: 1s }}\nroutes:\n{extra_routes}  - {{ name: dead, match: {{ prefix: /test.Dead }}, upstream: dead, public: true }}\n  - {{ name: grpc, match: {{ prefix: /test.Echo }}, upstream: grpc, public: true }}\n"
    )
}

async fn client(gw: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch =
        tonic::transport::Channel::from_shared(format!("http://{gw}")).expect("uri").connect().await.expect("connect");
    tonic::client::Grpc::new(ch)
}

async fn unary(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    req: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    c.ready().await.expect("ready");
    c.unary(req, PathAndQuery::from_static(path), RawCodec).await
}

/// Open a bidirectional `Chat` stream: the sender of its messages and the answers.
async fn chat(
    c: &mut tonic::client::Grpc<tonic::transport::Channel>,
) -> (tokio::sync::mpsc::Sender<Bytes>, Streaming<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    c.ready().await.expect("ready");
    let res = c
        .streaming(Request::new(outbound), PathAndQuery::from_static("/test.Echo/Chat"), RawCodec)
        .await
        .expect("stream opened");
    (tx, res.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_bidirectional_streaming_pass_with_trailers() {
    let (up, upstream_conns) = grpc_upstream().await;
    let gw = TestGateway::start(&gateway_config(up, "")).await;
    let mut c = client(gw.addr()).await;

    // 50 calls at once on a fresh gateway share one upstream connection.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            unary(&mut c, "/test.Echo/Reverse", Request::new(Bytes::from(format!("{i}")))).await.map(|_| ())
        }));
    }
    for call in calls {
        call.await.expect("join").expect("first calls");
    }
    assert_eq!(upstream_conns.load(std::sync::atomic::Ordering::SeqCst), 1, "one HTTP/2 connection upstream");

    // Unary: message, response header, and the OK status from the trailers.
    let res =
        unary(&mut c, "/test.Echo/Reverse", Request::new(Bytes::from_static(b"portcullis"))).await.expect("unary");
    assert_eq!(res.metadata().get("x-served-by").expect("header"), "tonic");
    assert_eq!(res.metadata().get("x-saw-te").expect("te: trailers reached the server"), "yes");
    assert!(res.metadata().get("x-request-id").is_some(), "the gateway's request id");
    assert_eq!(&res.into_inner()[..], b"silluctrop");

    // Bidirectional: 200 messages each way, interleaved, then a status in the trailers.
    let (tx, mut inbound) = chat(&mut c).await;
    for i in 0..200 {
        // Each answer arrives before the next message is sent: both directions stream.
        tx.send(Bytes::from(format!("m{i}"))).await.expect("send");
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("echo in time")
            .expect("message")
            .expect("not the end");
        assert_eq!(m, Bytes::from(format!("echo:m{i}")));
    }
    drop(tx);
    let end = inbound.message().await.expect_err("the server's final status");
    assert_eq!(end.code(), Code::Aborted);
    assert_eq!(end.message(), "stream ended after 200 messages");
    assert_eq!(end.metadata().get("x-final").expect("trailer metadata"), "trailer-intact");

    // A stream ending with OK: trailers carry grpc-status 0.
    let (tx, mut inbound) = chat(&mut c).await;
    tx.send(Bytes::from_static(b"one")).await.expect("send");
    assert_eq!(inbound.message().await.expect("ok").expect("message"), Bytes::from_static(b"echo:one"));
    tx.send(Bytes::from_static(b"ok")).await.expect("send");
    assert_eq!(inbound.message().await.expect("clean end"), None);
    let trailers = inbound.trailers().await.expect("trailers");
    assert!(trailers.is_some());

    // Many concurrent unary calls share the one upstream connection.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            let msg = Bytes::from(format!("{i:03}"));
            unary(&mut c, "/test.Echo/Reverse", Request::new(msg)).await.map(|r| r.into_inner())
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let got = call.await.expect("join").expect("concurrent unary");
        let mut want = format!("{i:03}").into_bytes();
        want.reverse();
        assert_eq!(&got[..], &want[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_grpc_statuses() {
    let (up, _) = grpc_upstream().await;
    let routes = "  - { name: keyed, match: { prefix: /test.Keyed }, upstream: grpc, auth: [api_key] }\n";
    let gw = TestGateway::start(&gateway_config(up, routes)).await;
    let mut c = client(gw.addr()).await;

    // A dead upstream: UNAVAILABLE.
    let err = unary(&mut c, "/test.Dead/Call", Request::new(Bytes::new())).await.expect_err("dead upstream");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "the upstream service could not be reached");

    // No route: UNIMPLEMENTED; no credentials: UNAUTHENTICATED.
    let err = unary(&mut c, "/test.Nowhere/Call", Request::new(Bytes::new())).await.expect_err("no route");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = unary(&mut c, "/test.Keyed/Call", Request::new(Bytes::new())).await.expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // grpc-timeout: the gateway gives up waiting at the caller's deadline. (tonic's client
    // would enforce the deadline itself, so this caller is plain HTTP/2 that does not.)
    let frame = [&[0u8, 0, 0, 0, 4][..], b"slow"].concat();
    let req = http::Request::post(format!("http://{}/test.Echo/Reverse", gw.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .header("x-sleep-ms", "3000")
        .body(full(frame))
        .expect("request");
    let started = tokio::time::Instant::now();
    let res = h2_client().request(req).await.expect("answer");
    assert!(started.elapsed() < Duration::from_millis(2500), "answered at the deadline, not the sleep's end");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED in a trailers-only answer");
    assert_eq!(res.headers()["grpc-message"], "the upstream service did not answer in time");
    // The caller's deadline is no fault of the target: five more do not eject it (passive
    // health ejects after 5 failures in a row), and nothing is retried.
    for _ in 0..5 {
        let frame = [&[0u8, 0, 0, 0, 4][..], b"slow"].concat();
        let req = http::Request::post(format!("http://{}/test.Echo/Reverse", gw.addr()))
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "1n")
            .header("x-sleep-ms", "3000")
            .body(full(frame))
            .expect("request");
        let res = h2_client().request(req).await.expect("answer");
        assert_eq!(res.headers()["grpc-status"], "4");
    }
    assert_eq!(gw.upstream_status("grpc")["targets"][0]["state"], "healthy");
    // Metrics count what the refusals were, not the 200 they travel in.
    let (_, _, m) = get(&format!("http://{}/metrics", gw.gw.admin_addr().expect("admin"))).await;
    assert!(metric_sum(&m, "portcullis_requests_total", &[("route", ""), ("status", "4xx")]) >= 1.0, "{m}");
    assert!(metric_sum(&m, "portcullis_requests_total", &[("route", "grpc"), ("status", "5xx")]) >= 6.0, "{m}");
    // Without a deadline the same call succeeds.
    let mut req = Request::new(Bytes::from_static(b"slow"));
    req.metadata_mut().insert("x-sleep-ms", MetadataValue::from_static("50"));
    assert_eq!(&unary(&mut c, "/test.Echo/Reverse", req).await.expect("in time").into_inner()[..], b"wols");
}
