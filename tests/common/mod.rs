//! Shared test kit: real upstream servers and a real gateway on 127.0.0.1 ephemeral ports.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;

pub mod h2;
pub mod pki;

/// A port on 127.0.0.1 where a connection is refused, held for as long as this lives: the
/// socket is bound but never listens, so no other test can take the port meanwhile (a port
/// bound and closed again could be taken by a test running in parallel).
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

pub fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    DeadPort { _socket: socket, addr }
}

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The gateway-side address of the connection it came on.
    pub peer: SocketAddr,
}

/// A real HTTP/1.1 upstream on 127.0.0.1.
///
/// * `/echo…`: streams the request body back;
/// * `/collect…`: reads the whole body, then answers with its length;
/// * `/stall/{ms}…`: sends `partial `, pauses, then `rest`;
/// * `/status/{code}`: an empty answer with that status;
/// * `/big/{mib}`: that many MiB of zeros;
/// * `/slow/{ms}…`: waits, then answers;
/// * anything else: `200 <name>`.
#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    /// Milliseconds every answer waits first (0: none).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// A status every answer has instead (0: answer normally).
    pub fail_status: Arc<std::sync::atomic::AtomicU16>,
    stop: tokio_util::sync::CancellationToken,
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        Self::serve(l, name).await
    }

    /// Start again on the address of a stopped upstream. The port may be briefly held (by the
    /// old listener's task winding down, or by a test running in parallel): retry for 5 s.
    pub async fn start_on(addr: SocketAddr, name: &str) -> TestUpstream {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(addr).await {
                return Self::serve(l, name).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot bind {addr} again");
    }

    async fn serve(l: TcpListener, name: &str) -> TestUpstream {
        let up = TestUpstream {
            addr: l.local_addr().expect("addr"),
            name: name.to_string(),
            seen: Arc::default(),
            hits: Arc::default(),
            delay_ms: Arc::default(),
            fail_status: Arc::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let (s, peer) = tokio::select! {
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = u.stop.cancelled() => return,
                };
                let u2 = u.clone();
                let stop = u.stop.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| u2.clone().answer(req, peer));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(s), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                });
            }
        });
        up
    }

    /// Close the listener and every open connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn answer(self, req: Request<Incoming>, peer: SocketAddr) -> Result<Response<TestBody>, Infallible> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        self.seen.lock().push(Seen {
            method: req.method().to_string(),
            path_and_query: pq.clone(),
            headers: req.headers().clone(),
            peer,
        });
        let path = req.uri().path().to_string();
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = self.fail_status.load(Ordering::SeqCst);
        if fail != 0 {
            let mut res = Response::new(full(self.name.clone()));
            *res.status_mut() = http::StatusCode::from_u16(fail).unwrap_or(http::StatusCode::IM_A_TEAPOT);
            return Ok(res);
        }
        if path.starts_with("/echo") {
            let body = req.into_body().map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>).boxed();
            return Ok(Response::new(body));
        }
        if let Some(rest) = path.strip_prefix("/stall/") {
            // sends a first chunk, pauses, then the rest
            let ms: u64 = rest.split('/').next().and_then(|x| x.parse().ok()).unwrap_or(100);
            let stream = futures_util::stream::unfold(0u8, move |step| async move {
                match step {
                    0 => Some((
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                            Bytes::from_static(b"partial "),
                        )),
                        1,
                    )),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Some((Ok(hyper::body::Frame::data(Bytes::from_static(b"rest"))), 2))
                    }
                    _ => None,
                }
            });
            return Ok(Response::new(http_body_util::StreamBody::new(stream).boxed()));
        }
        if let Some(mib) = path.strip_prefix("/big/").and_then(|m| m.parse::<usize>().ok()) {
            // `mib` MiB of zeros, in 64 KiB frames
            let frames = futures_util::stream::iter((0..mib * 16).map(|_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(Bytes::from(vec![
                    0u8;
                    64 * 1024
                ])))
            }));
            return Ok(Response::new(http_body_util::StreamBody::new(frames).boxed()));
        }
        if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
            // an empty answer with that status
            let mut res = Response::new(full(""));
            *res.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::IM_A_TEAPOT);
            res.headers_mut().insert("x-upstream", self.name.parse().expect("hv"));
            return Ok(res);
        }
        if path.starts_with("/collect") {
            // reads the whole body before answering with its length
            let n = match req.into_body().collect().await {
                Ok(c) => c.to_bytes().len(),
                Err(_) => return Ok(Response::new(full("body error"))),
            };
            return Ok(Response::new(full(n.to_string())));
        }
        if let Some(rest) = path.strip_prefix("/slow/") {
            let ms: u64 = rest.split('/').next().and_then(|x| x.parse().ok()).unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut res = Response::new(full(self.name.clone()));
        res.headers_mut().insert("x-upstream", self.name.parse().expect("hv"));
        res.headers_mut().insert("connection", "x-up-secret".parse().expect("hv"));
        res.headers_mut().insert("x-up-secret", "1".parse().expect("hv"));
        res.headers_mut().insert("keep-alive", "timeout=5".parse().expect("hv"));
        Ok(res)
    }

    /// Requests seen so far.
    pub fn count(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().last().cloned().expect("upstream saw a request")
    }
}

/// A unique scratch directory.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// A gateway started in this process from YAML written to a file.
pub struct TestGateway {
    pub gw: portcullis::server::Gateway,
    pub path: PathBuf,
}

impl TestGateway {
    pub async fn start(yaml: &str) -> TestGateway {
        Self::start_with_token(yaml, None).await
    }

    /// Start with an admin token (the config needs `admin:` for it to matter).
    pub async fn start_with_token(yaml: &str, token: Option<&str>) -> TestGateway {
        let dir = scratch_dir();
        let path = dir.join("gw.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let cfg = portcullis::config::load(&path).unwrap_or_else(|e| panic!("config:\n{e}"));
        let options = portcullis::server::StartOptions { admin_token: token.map(str::to_string) };
        let gw = portcullis::server::Gateway::start_with(cfg, Some(path.clone()), 0, options).await.expect("start");
        TestGateway { gw, path }
    }

    /// GET an admin API path with a bearer token; status and parsed JSON (Null if not JSON).
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let addr = self.gw.admin_addr().expect("admin listener");
        let mut req = Request::get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (status, _, body) = send(req.body(full("")).expect("request")).await;
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    /// The health of upstream `name` straight from the gateway (no admin listener needed).
    pub fn upstream_status(&self, name: &str) -> serde_json::Value {
        let snap = self.gw.snapshot();
        let u = snap.upstreams.iter().find(|u| u.name() == name).expect("upstream");
        serde_json::to_value(u.status()).expect("json")
    }

    /// The state (`healthy`, `unhealthy`, `ejected`) of the target with this address.
    pub fn target_state(&self, upstream: &str, addr: SocketAddr) -> String {
        let st = self.upstream_status(upstream);
        let url = format!("http://{addr}");
        st["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["url"] == url.as_str())
            .map(|t| t["state"].as_str().unwrap_or("").to_string())
            .expect("target listed")
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw.local_addr("public").expect("listener `public`")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// Write new YAML and reload from it.
    pub async fn rewrite(
        &self,
        yaml: &str,
    ) -> Result<portcullis::server::Reloaded, portcullis::server::GatewayStartError> {
        std::fs::write(&self.path, yaml).expect("write config");
        self.gw.reload().await
    }
}

/// A config with one `public` listener on an ephemeral port, one upstream `up` over the
/// given targets, and a catch-all public route; `extra` is appended under `routes:`.
pub fn simple_config(targets: &[SocketAddr], limits: &str, extra_routes: &str) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("{{ url: \"http://{a}\" }}")).collect();
    format!(
        "version: 1\nnode: {{ shutdown_grace: 5s }}\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    limits: {{ {limits} }}\nupstreams:\n  - name: up\n    targets: [{}]\n    timeouts: {{ connect: 1s, response: 2s }}\nroutes:\n  - name: all\n    match: {{ prefix: / }}\n    upstream: up\n    public: true\n{extra_routes}",
        t.join(", ")
    )
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

/// GET a URL, returning status, headers and body text.
pub async fn get(url: &str) -> (u16, HeaderMap, String) {
    send(Request::get(url).body(full("")).expect("req")).await
}

pub async fn send(req: Request<TestBody>) -> (u16, HeaderMap, String) {
    let (status, headers, body) = send_bytes(req).await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn send_bytes(req: Request<TestBody>) -> (u16, HeaderMap, Bytes) {
    let res = client().request(req).await.expect("response");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

/// Parse a problem+json body and check its required members.
pub fn problem(status: u16, headers: &HeaderMap, body: &str) -> serde_json::Value {
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap_or("")),
        Some("application/problem+json"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("problem+json {e}: {body}"));
    assert_eq!(v["status"], status, "{body}");
    for k in ["type", "title", "detail", "request_id"] {
        assert!(v[k].is_string(), "missing {k} in {body}");
    }
    assert_eq!(headers.get("x-request-id").map(|h| h.to_str().unwrap_or("")), v["request_id"].as_str());
    v
}

/// Read whatever comes until the peer closes (true) or `limit` elapses (false).
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16384];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Raw TCP: send bytes, read everything until the server closes (or `limit` elapses).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let (out, closed) = read_to_close(&mut s, limit).await;
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Load: `total` GETs of `url` from `conc` concurrent keep-alive clients, in the background.
/// The counter says how many have been started; the task returns every status received.
pub fn spawn_load(url: &str, total: usize, conc: usize) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<Vec<u16>>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, url) = (next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let res = c.request(Request::get(&url).body(full("")).expect("req")).await.expect("response");
                statuses.push(res.status().as_u16());
                let _ = res.into_body().collect().await;
            }
            statuses
        }));
    }
    let all = tokio::spawn(async move {
        let mut out = Vec::new();
        for t in tasks {
            out.extend(t.await.expect("load task"));
        }
        out
    });
    (next, all)
}

/// Run the real `portcullis` binary with `args` and `-c config`: (exit code, stdout, stderr).
pub fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sum of the counter or gauge samples of `name` in a Prometheus scrape whose labels
/// include all of `labels` (0 when there are none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}
