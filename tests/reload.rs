//! Hot reload through real sockets: reloads under load lose nothing, bad configs change
//! nothing, listeners come and go without touching the others.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use portcullis::server::Reloaded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_across_ten_reloads_all_succeed() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&simple_config(&[a.addr], "", "")).await;
    let url = gw.url("/load");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let good = match c.request(Request::get(&url).body(full("")).expect("req")).await {
                    Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    let mut versions = Vec::new();
    for i in 0..10 {
        // wait for some traffic between reloads, bounded by count, not time
        let target = ok.load(Ordering::Relaxed) + 200;
        for _ in 0..2000 {
            if ok.load(Ordering::Relaxed) >= target || failed.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let targets = if i % 2 == 0 { vec![b.addr] } else { vec![a.addr, b.addr] };
        let r =
            gw.rewrite(&simple_config(&targets, &format!("max_body_bytes: {}KiB", 100 + i), "")).await.expect("reload");
        versions.push(r);
    }
    let target = ok.load(Ordering::Relaxed) + 200;
    for _ in 0..2000 {
        if ok.load(Ordering::Relaxed) >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
    assert!(ok.load(Ordering::Relaxed) >= 2000, "only {} requests", ok.load(Ordering::Relaxed));
    assert_eq!(versions.last(), Some(&Reloaded::Applied(11)), "{versions:?}");
    assert!(a.hits.load(Ordering::Relaxed) > 0 && b.hits.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config_serving() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&simple_config(&[a.addr], "", "")).await;
    let bad = simple_config(&[a.addr], "header_timeout: soon", "").replace("upstream: up", "upstream: nope");
    let err = gw.rewrite(&bad).await.expect_err("invalid config must be refused");
    let text = err.to_string();
    assert!(text.contains("header_timeout") && text.contains("unknown upstream `nope`"), "{text}");
    assert_eq!(gw.gw.snapshot().version, 1);
    let (status, _, body) = get(&gw.url("/still")).await;
    assert_eq!((status, body.as_str()), (200, "a"));
    // broken YAML too
    assert!(gw.rewrite("version: 1\nlisteners: [").await.is_err());
    let (status, _, _) = get(&gw.url("/still")).await;
    assert_eq!(status, 200);
    // and an unchanged file is not a new version
    gw.rewrite(&simple_config(&[a.addr], "", "")).await.expect("good again");
    assert_eq!(gw.gw.reload().await.expect("same"), Reloaded::Unchanged(gw.gw.snapshot().version));
}

fn two_listeners(up: std::net::SocketAddr, second: bool) -> String {
    let extra = if second { "  - { name: second, bind: \"127.0.0.1:0\" }\n" } else { "" };
    format!(
        "version: 1\nlisteners:\n  - {{ name: public, bind: \"127.0.0.1:0\" }}\n{extra}upstreams:\n  - {{ name: up, targets: [{{ url: \"http://{up}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: up, public: true }}\n"
    )
}

async fn get_on(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn adding_and_removing_a_listener_leaves_the_others_alone() {
    let a = TestUpstream::start("a").await;
    let gw = TestGateway::start(&two_listeners(a.addr, false)).await;
    let mut kept = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"));

    gw.rewrite(&two_listeners(a.addr, true)).await.expect("add");
    let second = gw.gw.local_addr("second").expect("second listener");
    let (status, _, _) = get(&format!("http://{second}/")).await;
    assert_eq!(status, 200);
    assert_eq!(gw.gw.local_addr("public"), Some(gw.addr()));
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"), "the open connection was disturbed");

    gw.rewrite(&two_listeners(a.addr, false)).await.expect("remove");
    assert_eq!(gw.gw.local_addr("second"), None);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(second).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"), "the open connection was disturbed");
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = TestGateway::start(&simple_config(&[a.addr], "", "")).await;
    let url = gw.url("/slow/400");
    let slow = tokio::spawn(async move { get(&url).await });
    // wait until the upstream has the request, then move the route to b
    for _ in 0..1000 {
        if a.hits.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    gw.rewrite(&simple_config(&[b.addr], "", "")).await.expect("reload");
    let (status, _, body) = slow.await.expect("slow request");
    assert_eq!((status, body.as_str()), (200, "a"));
    let (status, _, body) = get(&gw.url("/after")).await;
    assert_eq!((status, body.as_str()), (200, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    // Started as the CLI starts it, knowing the text it came from: the watcher's first look
    // applies the file only if it changed. (Started without it, as `TestGateway::start` does,
    // that look would apply the old file as version 2 whenever it reads before the write
    // below, and the change would land later as version 3.)
    let (gw, path) = start_from_file(&simple_config(&[a.addr], "", "")).await;
    let gw = TestGateway { gw, path };
    tokio::spawn(portcullis::server::watch_config(gw.gw.clone(), None));
    // No wait for the watch to be registered: a change made before it is found by the
    // watcher's first look, one made after it raises an event.
    std::fs::write(&gw.path, simple_config(&[b.addr], "", "")).expect("write");
    let mut version = 1;
    for _ in 0..200 {
        version = gw.gw.snapshot().version;
        if version > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version, 2, "the file change was not applied");
    let (_, _, body) = get(&gw.url("/")).await;
    assert_eq!(body, "b");
}

fn named_listener(name: &str, port: u16, up: std::net::SocketAddr) -> String {
    format!(
        "version: 1\nlisteners:\n  - {{ name: {name}, bind: \"127.0.0.1:{port}\" }}\nupstreams:\n  - {{ name: up, targets: [{{ url: \"http://{up}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: up, public: true }}\n"
    )
}

#[tokio::test]
async fn renaming_a_listener_keeps_its_socket_and_connections() {
    let a = TestUpstream::start("a").await;
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    // A fixed port (a rename keeps the socket only for one): a port found free and released
    // again may be taken by a test running in parallel before the gateway binds it, so a
    // failed bind tries another.
    let mut started = None;
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        std::fs::write(&path, named_listener("public", port, a.addr)).expect("write");
        let cfg = portcullis::config::load(&path).expect("config");
        match portcullis::server::Gateway::start(cfg, Some(path.clone())).await {
            Ok(gw) => {
                started = Some((gw, port));
                break;
            }
            Err(e @ portcullis::server::GatewayStartError::Bind { .. }) => eprintln!("{e}; another port"),
            Err(e) => panic!("start: {e}"),
        }
    }
    let (gw, port) = started.expect("no free port to start on");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"));

    std::fs::write(&path, named_listener("edge", port, a.addr)).expect("write");
    gw.reload().await.expect("rename");
    assert_eq!(gw.local_addr("edge"), Some(addr));
    assert_eq!(gw.local_addr("public"), None);
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"), "the open connection was disturbed");
    let (status, _, _) = get(&format!("http://{addr}/")).await;
    assert_eq!(status, 200);

    // a reload whose new listener cannot bind is refused as a whole
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let two = named_listener("edge", port, a.addr)
        .replace("listeners:\n", &format!("listeners:\n  - {{ name: other, bind: \"127.0.0.1:{busy}\" }}\n"));
    std::fs::write(&path, two).expect("write");
    assert!(gw.reload().await.is_err());
    assert_eq!(gw.local_addr("edge"), Some(addr));
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn reloading_the_file_it_started_from_is_no_new_version() {
    let a = TestUpstream::start("a").await;
    let text = simple_config(&[a.addr], "", "");
    let (gw, path) = start_from_file(&text).await;
    assert_eq!(gw.reload().await.expect("reload"), Reloaded::Unchanged(1));
    std::fs::write(&path, text.replace("shutdown_grace: 5s", "shutdown_grace: 6s")).expect("write");
    assert_eq!(gw.reload().await.expect("reload"), Reloaded::Applied(2));
}

/// A gateway started from `text` written to a file, as the CLI starts one: knowing the hash
/// of the text it came from, so reloading an unchanged file is no new version.
async fn start_from_file(text: &str) -> (portcullis::server::Gateway, std::path::PathBuf) {
    let path = scratch_dir().join("gw.yaml");
    std::fs::write(&path, text).expect("write");
    let cfg = portcullis::config::parse("gw.yaml", text).expect("config");
    let hash = portcullis::server::source_hash(text, &cfg);
    let gw = portcullis::server::Gateway::start_from(cfg, Some(path.clone()), hash).await.expect("start");
    (gw, path)
}
