//! Rate limits shared by nodes through a real `redis-server` (started here on a free port):
//! two gateways drain one bucket; with Redis gone, limits fall back to each node's own
//! (`redis_failure: local`) or refuse with 503 (`closed`), it is reported in `/metrics`,
//! and shared limits resume when Redis is back.
//!
//! Needs `redis-server` on the PATH (`.ci/run` installs Debian's package).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::time::Instant;

/// A redis-server of its own, stopped on drop.
struct TestRedis {
    port: u16,
    child: Child,
}

impl TestRedis {
    /// Start on `port`; `None` if it did not come up there (the port was taken, say).
    fn try_start_on(port: u16) -> Option<TestRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run these tests (apt-get install redis-server)");
        let mut r = TestRedis { port, child };
        // Up to 10 s for it to answer PING (not just for something to listen on the port).
        for _ in 0..500 {
            if r.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if ping(port) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r.stop();
        None
    }

    fn start_on(port: u16) -> TestRedis {
        (0..20)
            .find_map(|_| {
                let r = Self::try_start_on(port);
                if r.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r
            })
            .expect("redis-server did not start on its old port")
    }

    fn start() -> TestRedis {
        (0..5)
            .find_map(|_| {
                let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
                Self::try_start_on(port)
            })
            .expect("redis-server did not start")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a Redis answers PING on `port`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(up: SocketAddr, redis_port: u16, failure: &str) -> String {
    format!(
        r#"version: 1
admin: {{ bind: "127.0.0.1:0", public_metrics: true }}
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{up}" }}] }}]
routes:
  - {{ name: limited, match: {{ prefix: /limited }}, upstream: app, public: true, rate_limit: {{ key: ip, rate: 1/m, burst: 4 }} }}
cluster: {{ redis: "redis://127.0.0.1:{redis_port}", redis_failure: {failure}, redis_timeout: 1s }}
"#
    )
}

async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let (_, _, text) = get(&format!("http://{}/metrics", gw.gw.admin_addr().expect("admin"))).await;
    assert!(text.contains(name), "{name} missing from /metrics");
    metric_sum(&text, name, &[])
}

#[tokio::test]
async fn two_nodes_drain_one_shared_bucket() {
    let redis = TestRedis::start();
    let up = TestUpstream::start("app").await;
    let a = TestGateway::start(&config(up.addr, redis.port, "local")).await;
    let b = TestGateway::start(&config(up.addr, redis.port, "local")).await;
    // The burst of 4 is shared: two requests through each node use it up.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(get(&gw.url("/limited")).await.0, 200);
    }
    for gw in [&a, &b] {
        let (status, h, body) = get(&gw.url("/limited")).await;
        assert_eq!(status, 429, "{body}");
        problem(429, &h, &body);
        let retry: u64 = h["retry-after"].to_str().expect("retry").parse().expect("number");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_eq!(up.count(), 4);
    assert_eq!(metric(&a, "portcullis_shared_limits_up").await, 1.0);
    assert_eq!(metric(&a, "portcullis_shared_limits_failures_total").await, 0.0);
}

#[tokio::test]
async fn without_redis_limits_fall_back_to_the_node_and_resume_when_it_returns() {
    let mut redis = TestRedis::start();
    let port = redis.port;
    let up = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(up.addr, port, "local")).await;
    assert_eq!(get(&gw.url("/limited")).await.0, 200, "shared");
    redis.stop();
    // This node's own limiter takes over: a fresh bucket of 4, then 429.
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(get(&gw.url("/limited")).await.0);
        }
        v
    };
    assert_eq!(codes, [200, 200, 200, 200, 429], "local limits while Redis is away");
    assert_eq!(metric(&gw, "portcullis_shared_limits_up").await, 0.0);
    assert!(metric(&gw, "portcullis_shared_limits_failures_total").await >= 1.0);

    // Redis is back (empty): after the retry pause, checks go to it again.
    let _redis = TestRedis::start_on(port);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = get(&gw.url("/limited")).await.0;
        if s == 200 && metric(&gw, "portcullis_shared_limits_up").await == 1.0 {
            break;
        }
        assert!(Instant::now() < end, "shared limits did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_redis_failure_closed_requests_are_refused_with_503() {
    let mut redis = TestRedis::start();
    let up = TestUpstream::start("app").await;
    let gw = TestGateway::start(&config(up.addr, redis.port, "closed")).await;
    assert_eq!(get(&gw.url("/limited")).await.0, 200);
    redis.stop();
    for _ in 0..3 {
        let (status, h, body) = get(&gw.url("/limited")).await;
        assert_eq!(status, 503, "{body}");
        problem(503, &h, &body);
        assert_eq!(h["retry-after"], "1");
    }
    assert_eq!(up.count(), 1, "nothing passed while limits could not be checked");
}
