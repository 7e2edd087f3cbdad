//! The `portcullis` binary as users run it: validate, explain, run with signals, and a
//! 100 MiB streamed body with the gateway's memory measured.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn validate_reports_every_error_with_line_and_column() {
    let dir = scratch_dir();
    let f = write(
        &dir,
        "bad.yaml",
        r#"version: 1
listeners:
  - name: public
    bind: "127.0.0.1:8080"
    limits: { header_timeout: 10 seconds }
upstreams:
  - name: orders
    targets: [{ url: "http://127.0.0.1:9001" }]
    colour: blue
routes:
  - name: r1
    match: { prefix: /a }
    upstream: orderz
    public: true
  - name: r1
    match: { prefix: /b }
    upstream: orders
    public: true
"#,
    );
    let out = Command::new(BIN).args(["validate", "-c"]).arg(&f).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let file = f.display().to_string();
    let want = [
        format!("{file}:5:31: listeners[0].limits.header_timeout: invalid duration `10 seconds`"),
        format!("{file}:9:5: upstreams[0].colour: unknown field `colour`"),
        format!("{file}:13:15: routes[0].upstream: unknown upstream `orderz`"),
        format!("{file}:15:11: routes[1].name: duplicate route name `r1`"),
    ];
    assert_eq!(lines.len(), want.len(), "{stdout}");
    for (line, w) in lines.iter().zip(want.iter()) {
        assert!(line.starts_with(w.as_str()), "{line}\n  should start with\n{w}");
    }

    let good = write(&dir, "good.yaml", &simple_config(&["127.0.0.1:9".parse().expect("addr")], "", ""));
    let out = Command::new(BIN).args(["validate", "-c"]).arg(&good).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let out = Command::new(BIN).args(["validate"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = Command::new(BIN).args(["validate", "-c"]).arg(dir.join("missing.yaml")).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn explain_names_the_route_and_the_near_misses() {
    let dir = scratch_dir();
    let f = write(
        &dir,
        "gw.yaml",
        r#"version: 1
listeners: [{ name: public, bind: "127.0.0.1:0" }]
upstreams: [{ name: orders, targets: [{ url: "http://127.0.0.1:9001" }] }]
routes:
  - { name: orders-v1, match: { host: api.example.com, path: "/v1/orders/{id}", methods: [GET] }, upstream: orders, public: true }
  - { name: canary, match: { prefix: /v1, headers: { x-canary: "1" } }, upstream: orders, public: true }
"#,
    );
    let out = Command::new(BIN)
        .args(["explain", "-c"])
        .arg(&f)
        .args(["GET", "http://api.example.com/v1/orders/7"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("route: orders-v1 -> upstream orders"), "{text}");
    assert!(text.contains("header: wants x-canary: 1, got (absent)"), "{text}");

    let out = Command::new(BIN)
        .args(["explain", "-c"])
        .arg(&f)
        .args(["DELETE", "http://other.org/v1/orders/../orders/7", "-H", "x-canary: 2"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("route: none"), "{text}");
    assert!(text.contains("host: wants api.example.com, got other.org"), "{text}");
    assert!(text.contains("method: wants GET|HEAD, got DELETE"), "{text}");
    assert!(text.contains("header: wants x-canary: 1, got 2"), "{text}");
}

/// A gateway process; killed on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread copying stderr into `logs`; it ends when the process closes stderr.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(config: &Path) -> Proc {
        Self::start_env(config, &[])
    }

    fn start_env(config: &Path, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let l2 = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "Listening"
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or("").to_string());
                }
                l2.lock().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("gateway did not report its address");
        Proc { child, addr: addr.parse().expect("addr"), logs, reader: Some(reader) }
    }

    fn signal(&self, sig: &str) {
        // The shell's built-in kill: no dependency on procps being installed.
        let ok = Command::new("sh").arg("-c").arg(format!("kill -{sig} {}", self.child.id())).status().expect("kill");
        assert!(ok.success());
    }

    fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("field")
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        // A blocking wait on a child process, outside any runtime: the wall clock is right here.
        #[allow(clippy::disallowed_types)]
        let deadline = std::time::Instant::now() + limit;
        #[allow(clippy::disallowed_types)]
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Every line the process wrote is in `logs` once the reader reaches EOF.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_slow_requests_and_refuses_new_connections() {
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let f =
        write(&dir, "gw.yaml", &simple_config(&[up.addr], "", "").replace("shutdown_grace: 5s", "shutdown_grace: 20s"));
    let mut p = Proc::start(&f);
    let addr = p.addr;
    let mut slow = Vec::new();
    for i in 0..3 {
        let url = format!("http://{addr}/slow/1500/{i}");
        slow.push(tokio::spawn(async move { get(&url).await }));
    }
    for _ in 0..1000 {
        if up.hits.load(std::sync::atomic::Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal("TERM");
    // new connections are refused once the listener is closed
    let mut refused = false;
    for _ in 0..2000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "still accepting after SIGTERM");
    for s in slow {
        let (status, _, body) = s.await.expect("task");
        assert_eq!((status, body.as_str()), (200, "a"), "an in-flight request was cut");
    }
    let code = tokio::task::spawn_blocking(move || {
        let c = p.wait_exit(Duration::from_secs(30));
        (c, p.logs.lock().clone())
    })
    .await
    .expect("join");
    assert_eq!(code.0, Some(0), "{:#?}", code.1);
    assert!(code.1.iter().any(|l| l.contains("Drained")), "{:#?}", code.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    // The config path is a symlink into another directory, so the file watcher (which
    // watches the link's directory) does not see the edits: only SIGHUP can apply them.
    let real_dir = scratch_dir();
    let link_dir = scratch_dir();
    let real = write(&real_dir, "real.yaml", &simple_config(&[a.addr], "", ""));
    let link = link_dir.join("gw.yaml");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let p = Proc::start(&link);
    let url = format!("http://{}/", p.addr);
    assert_eq!(get(&url).await.2, "a");

    std::fs::write(&real, "version: 1\nlisteners: [{ name: public, bind: nowhere }]\n").expect("write");
    p.signal("HUP");
    let mut refused_logged = false;
    for _ in 0..500 {
        refused_logged = p.logs.lock().iter().any(|l| l.contains("Reload refused"));
        if refused_logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused_logged, "{:#?}", p.logs.lock());
    assert_eq!(get(&url).await.2, "a", "a bad config replaced a good one");

    std::fs::write(&real, simple_config(&[b.addr], "", "")).expect("write");
    p.signal("HUP");
    let mut body = String::new();
    for _ in 0..500 {
        body = get(&url).await.2;
        if body == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(body, "b", "SIGHUP did not apply the new config");
    // The log line follows the swap, and reaches us through a reader thread: wait for it.
    let mut reload_logged = false;
    for _ in 0..500 {
        reload_logged = p.logs.lock().iter().any(|l| l.contains("\"trigger\":\"SIGHUP\"") && l.contains("Reloaded"));
        if reload_logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reload_logged, "{:#?}", p.logs.lock());
}

#[test]
fn run_with_an_invalid_config_exits_1() {
    let dir = scratch_dir();
    let f = write(&dir, "gw.yaml", "version: 1\nlisteners: []\n");
    let out = Command::new(BIN).args(["run", "-c"]).arg(&f).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one listener"));
}

/// Deterministic bytes: a xorshift stream, so both ends can check without storing 100 MiB.
struct Gen(u64);
impl Gen {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_body_streams_through_without_buffering() {
    const TOTAL: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let up = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let f = write(&dir, "gw.yaml", &simple_config(&[up.addr], "max_body_bytes: 200MiB", ""));
    let p = Proc::start(&f);
    // warm up so the baseline includes the runtime and pools
    assert_eq!(get(&format!("http://{}/", p.addr)).await.0, 200);
    let rss_before = p.status_kb("VmRSS:");

    for chunked in [true, false] {
        let frames = futures_util::stream::unfold(Gen(0x9E3779B97F4A7C15), |mut g| async move {
            let mut buf = vec![0u8; CHUNK];
            g.fill(&mut buf);
            Some((Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(buf))), g))
        });
        let frames = futures_util::StreamExt::take(frames, TOTAL / CHUNK);
        let body = StreamBody::new(frames).boxed();
        let mut req = Request::post(format!("http://{}/echo/big", p.addr));
        if !chunked {
            req = req.header("content-length", TOTAL.to_string());
        }
        let res = client().request(req.body(body).expect("req")).await.expect("response");
        assert_eq!(res.status(), 200);
        let mut check = Gen(0x9E3779B97F4A7C15);
        let mut expect = vec![0u8; CHUNK];
        let mut pending: Vec<u8> = Vec::new();
        let mut got = 0usize;
        let mut body = res.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            let Some(data) = frame.data_ref() else {
                continue;
            };
            got += data.len();
            pending.extend_from_slice(data);
            while pending.len() >= CHUNK {
                check.fill(&mut expect);
                assert!(pending[..CHUNK] == expect[..], "corrupted near byte {got}");
                pending.drain(..CHUNK);
            }
        }
        assert_eq!(got, TOTAL, "chunked={chunked}");
        assert!(pending.is_empty());
    }
    let peak = p.status_kb("VmHWM:");
    let grew_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!("gateway peak RSS grew by {grew_mib} MiB over the 2 x 100 MiB transfers");
    assert!(grew_mib < 64, "gateway memory grew by {grew_mib} MiB (peak {peak} KiB, before {rss_before} KiB)");
}

#[test]
fn status_shows_upstream_health_from_the_admin_api() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let up = rt.block_on(TestUpstream::start("a"));
    let dir = scratch_dir();
    let yaml =
        simple_config(&[up.addr], "", "").replacen("version: 1\n", "version: 1\nadmin: { bind: \"127.0.0.1:0\" }\n", 1);
    let cfg = write(&dir, "gw.yaml", &yaml);
    let token = "cli-test-token-0123456789abcdef";
    let p = Proc::start_env(&cfg, &[("PORTCULLIS_ADMIN_TOKEN", token)]);
    let admin = p
        .logs
        .lock()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "Admin API listening")
        .and_then(|v| v["addr"].as_str().map(str::to_string))
        .expect("admin address logged");
    let url = format!("http://{admin}");
    let status = |tok: &str, extra: &[&str]| {
        Command::new(BIN)
            .args(["status", "--admin", &url])
            .args(extra)
            .env("PORTCULLIS_ADMIN_TOKEN", tok)
            .output()
            .expect("run")
    };
    let out = status(token, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("config version 1"), "{stdout}");
    assert!(stdout.contains("round_robin · serving primary · 1/1 healthy"), "{stdout}");
    assert!(stdout.contains(&format!("http://{}", up.addr)), "{stdout}");

    let out = status(token, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["upstreams"][0]["targets"][0]["state"], "healthy");

    let out = status("not-the-token-at-all", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(p);
    drop(up);
}
