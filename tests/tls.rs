//! TLS termination through real sockets: SNI and ALPN, client certificates, rotation of
//! certificate files while connections stay open, and refused configs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::pki::{self, Ca, TlsClient};
use common::*;

/// A config whose `public` listener terminates TLS with `tls` (YAML flow mapping), in front of
/// `up`, with the given routes (a catch-all public route when empty).
fn tls_config(up: SocketAddr, tls: &str, routes: &str, extra: &str) -> String {
    let routes = if routes.is_empty() {
        "  - { name: all, match: { prefix: / }, upstream: up, public: true }\n".to_string()
    } else {
        routes.to_string()
    };
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\n    limits: {{ header_timeout: 2s }}\n    tls: {tls}\nupstreams:\n  - name: up\n    targets: [{{ url: \"http://{up}\" }}]\nroutes:\n{routes}{extra}"
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let up = TestUpstream::start("up").await;
    let dir = scratch_dir();
    let ca = Ca::new("Server CA");
    let a = ca.server(&["a.test"]);
    let b = ca.server(&["*.b.test"]);
    let (ac, ak) = a.write(&dir, "a");
    let (bc, bk) = b.write(&dir, "b");
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}, {{ cert: \"{}\", key: \"{}\" }}] }}",
        path(&ac),
        path(&ak),
        path(&bc),
        path(&bk)
    );
    let admin = "admin: { bind: \"127.0.0.1:0\", public_metrics: true }\n";
    let gw = TestGateway::start(&tls_config(up.addr, &tls, "", admin)).await;
    let addr = gw.addr();
    let client = TlsClient::new(&ca);

    // HTTP/2 by ALPN, with a's certificate.
    let r = client.get(addr, "a.test", "/x").await.expect("h2 over TLS");
    assert_eq!(r.status, 200);
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.server_cert, a.der);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // HTTP/1.1 by ALPN, a wildcard name picks b's certificate.
    let r = client.clone().alpn(&[b"http/1.1"]).get(addr, "api.b.test", "/y").await.expect("h1 over TLS");
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_11));
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.server_cert, b.der);

    // No ALPN at all: HTTP/1.1 (and h2 prior knowledge would work too).
    let r = client.clone().alpn(&[]).get(addr, "a.test", "/z").await.expect("no ALPN");
    assert_eq!((r.status, r.alpn.clone()), (200, None));

    // An unknown name gets the first certificate, which the client then refuses.
    let err = client.get(addr, "other.test", "/").await.expect_err("name mismatch");
    assert!(err.contains("handshake"), "{err}");

    // TLS 1.2 works (and only ECDHE AEAD suites are offered by the provider).
    let mut old = client.clone();
    old.tls12_only = true;
    let s = old.connect(addr, "a.test").await.expect("TLS 1.2");
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let (text, _) = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", Duration::from_secs(3)).await;
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");

    // Handshakes are counted.
    let (_, _, m) = get(&format!("http://{}/metrics", gw.gw.admin_addr().expect("admin"))).await;
    assert!(metric_sum(&m, "portcullis_tls_handshakes_total", &[("result", "ok")]) >= 4.0, "{m}");
    assert!(metric_sum(&m, "portcullis_tls_handshakes_total", &[("result", "failed")]) >= 2.0);
    // rcgen's certificates last until 4096.
    let expiry = metric_sum(&m, "portcullis_tls_certificate_expiry_timestamp_seconds", &[("listener", "public")]);
    assert!(expiry > 4_000_000_000.0, "{m}");

    // curl, when this machine has it, agrees on both protocols.
    let curl_ok = std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    if curl_ok {
        let cafile = ca.write(&dir, "server-ca");
        for (flag, want) in [("--http2", "2 200"), ("--http1.1", "1.1 200")] {
            let port = addr.port();
            let out = tokio::task::spawn_blocking({
                let cafile = cafile.clone();
                move || {
                    std::process::Command::new("curl")
                        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", flag, "--cacert"])
                        .arg(&cafile)
                        .args(["--resolve", &format!("api.b.test:{port}:127.0.0.1")])
                        .arg(format!("https://api.b.test:{port}/curl"))
                        .output()
                        .expect("curl")
                }
            })
            .await
            .expect("join");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "curl {flag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("curl not found: the rustls clients above covered TLS with h2 and HTTP/1.1");
    }
}

#[tokio::test]
async fn client_certificates_are_required_verified_and_passed_on() {
    let up = TestUpstream::start("up").await;
    let dir = scratch_dir();
    let server_ca = Ca::new("Server CA");
    let clients_ca = Ca::new("Clients CA");
    let rogue_ca = Ca::new("Rogue CA");
    let (sc, sk) = server_ca.server(&["api.test"]).write(&dir, "server");
    let ca_file = clients_ca.write(&dir, "clients-ca");
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}], client_auth: {{ mode: required, ca: \"{}\" }} }}",
        path(&sc),
        path(&sk),
        path(&ca_file)
    );
    let routes = "  - { name: orders, match: { prefix: /orders }, upstream: up, auth: [mtls], allow: { consumers: [app1] } }\n  - { name: open, match: { prefix: / }, upstream: up, public: true }\n";
    let admin = "admin: { bind: \"127.0.0.1:0\", public_metrics: true }\n";
    let gw = TestGateway::start(&tls_config(up.addr, &tls, routes, admin)).await;
    let addr = gw.addr();
    let base = TlsClient::new(&server_ca);

    // No certificate, one from another CA, an expired one: no request gets through.
    let rogue = rogue_ca.client("app1", None);
    let expired = clients_ca.expired_client("app1");
    for (what, client) in [
        ("no certificate", base.clone()),
        ("another CA", base.clone().with_cert(&rogue)),
        ("expired", base.clone().with_cert(&expired)),
    ] {
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let r = client.clone().alpn(&[alpn]).get(addr, "api.test", "/orders/1").await;
            assert!(r.is_err(), "{what} over {}: {r:?}", String::from_utf8_lossy(alpn));
        }
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // A good certificate: accepted, and its identity is what the route and upstream see.
    let app1 = clients_ca.client("app1", Some("spiffe://example.test/app1"));
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut req = http::Request::get("/orders/7").header("host", "api.test");
        // Claims a client makes about itself are dropped.
        req = req.header("x-consumer-cert-subject", "CN=admin").header("x-consumer-id", "admin");
        let s = base.clone().with_cert(&app1).alpn(&[alpn]).connect(addr, "api.test").await.expect("handshake");
        let r = pki::exchange(s, req.body(full("")).expect("req")).await.expect("exchange");
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = up.last();
        assert_eq!(seen.headers["x-consumer-id"], "app1");
        assert_eq!(seen.headers["x-consumer-auth"], "mtls");
        let subject = seen.headers["x-consumer-cert-subject"].to_str().expect("ascii");
        assert!(subject.contains("CN=app1") && subject.contains("O=Portcullis Tests"), "{subject}");
        assert_eq!(seen.headers["x-consumer-cert-san"], "URI:spiffe://example.test/app1");
        let fp = seen.headers["x-consumer-cert-fingerprint"].to_str().expect("ascii").to_string();
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    // A valid certificate of another consumer is authenticated but not allowed here.
    let app2 = clients_ca.client("app2", None);
    let r = base.clone().with_cert(&app2).get(addr, "api.test", "/orders/1").await.expect("exchange");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = base.clone().with_cert(&app2).get(addr, "api.test", "/open").await.expect("exchange");
    assert_eq!(r.status, 200);
    assert!(up.last().headers["x-consumer-cert-subject"].to_str().expect("ascii").contains("CN=app2"));

    // Counted under their own method.
    let (_, _, m) = get(&format!("http://{}/metrics", gw.gw.admin_addr().expect("admin"))).await;
    assert_eq!(metric_sum(&m, "portcullis_auth_total", &[("method", "mtls"), ("outcome", "success")]), 3.0, "{m}");
}

#[tokio::test]
async fn optional_client_certificates_leave_the_choice_to_routes() {
    let up = TestUpstream::start("up").await;
    let dir = scratch_dir();
    let server_ca = Ca::new("Server CA");
    let clients_ca = Ca::new("Clients CA");
    let (sc, sk) = server_ca.server(&["api.test"]).write(&dir, "server");
    let ca_file = clients_ca.write(&dir, "clients-ca");
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}], client_auth: {{ mode: optional, ca: \"{}\" }} }}",
        path(&sc),
        path(&sk),
        path(&ca_file)
    );
    let routes = "  - { name: svc, match: { prefix: /svc }, upstream: up, auth: [mtls], allow: { consumers: [\"spiffe://example.test/svc-a\"] } }\n  - { name: open, match: { prefix: / }, upstream: up, public: true }\n";
    let extra = "auth:\n  mtls: { consumer: uri }\n";
    let gw = TestGateway::start(&tls_config(up.addr, &tls, routes, extra)).await;
    let addr = gw.addr();
    let base = TlsClient::new(&server_ca);

    let r = base.get(addr, "api.test", "/open").await.expect("no cert, public route");
    assert_eq!(r.status, 200);
    assert!(!up.last().headers.contains_key("x-consumer-cert-subject"));
    let r = base.get(addr, "api.test", "/svc").await.expect("no cert, mtls route");
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "ClientCertificate realm=\"portcullis\"");

    // The consumer is named by the URI SAN here; a certificate without one is refused.
    let spiffe = clients_ca.client("svc-a", Some("spiffe://example.test/svc-a"));
    let r = base.clone().with_cert(&spiffe).get(addr, "api.test", "/svc").await.expect("exchange");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-consumer-id"], "spiffe://example.test/svc-a");
    let plain = clients_ca.client("svc-b", None);
    let r = base.clone().with_cert(&plain).get(addr, "api.test", "/svc").await.expect("exchange");
    assert_eq!(r.status, 401, "{}", r.body);
    // Still, a certificate from an unknown CA fails the handshake even when optional.
    let rogue = Ca::new("Rogue").client("svc-a", Some("spiffe://example.test/svc-a"));
    assert!(base.clone().with_cert(&rogue).get(addr, "api.test", "/open").await.is_err());
}

#[tokio::test]
async fn replaced_certificates_serve_new_connections_while_open_ones_continue() {
    let up = TestUpstream::start("up").await;
    let dir = scratch_dir();
    let ca = Ca::new("Server CA");
    let first = ca.server(&["api.test"]);
    let (c, k) = first.write(&dir, "api");
    let tls = format!("{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}", path(&c), path(&k));
    let gw = TestGateway::start(&tls_config(up.addr, &tls, "", "")).await;
    let addr = gw.addr();
    let client = TlsClient::new(&ca);

    // Two connections opened on the first certificate: HTTP/1.1 kept alive, and HTTP/2.
    let h1 = client.clone().alpn(&[b"http/1.1"]).connect(addr, "api.test").await.expect("h1");
    assert_eq!(h1.get_ref().1.peer_certificates().expect("cert")[0], first.der);
    let (mut h1_tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(h1)).await.expect("h1");
    tokio::spawn(conn);
    let h2 = client.clone().alpn(&[b"h2"]).connect(addr, "api.test").await.expect("h2");
    let (mut h2_tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(h2))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let get_h1 = || http::Request::get("/").header("host", "api.test").body(full("")).expect("req");
    let get_h2 = || http::Request::get("https://api.test/").body(full("")).expect("req");
    assert_eq!(h1_tx.send_request(get_h1()).await.expect("h1 before").status(), 200);
    assert_eq!(h2_tx.send_request(get_h2()).await.expect("h2 before").status(), 200);

    // A half-written rotation (a key that is not the certificate's) is not taken up.
    let second = ca.server(&["api.test"]);
    std::fs::write(&k, &second.key_pem).expect("write key");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = client.get(addr, "api.test", "/").await.expect("still the first");
    assert_eq!(r.server_cert, first.der);
    // The certificate follows: new connections get the new pair.
    std::fs::write(&c, &second.cert_pem).expect("write cert");
    let mut rotated = false;
    for _ in 0..100 {
        let r = client.get(addr, "api.test", "/").await.expect("exchange");
        assert_eq!(r.status, 200);
        if r.server_cert == second.der {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "new connections get the replaced certificate");

    // The connections opened before go on serving.
    assert_eq!(h1_tx.send_request(get_h1()).await.expect("h1 after").status(), 200);
    assert_eq!(h2_tx.send_request(get_h2()).await.expect("h2 after").status(), 200);
}

#[test]
fn bad_tls_settings_are_refused_with_their_place() {
    let dir = scratch_dir();
    let ca = Ca::new("CA");
    let (c, _) = ca.server(&["a.test"]).write(&dir, "a");
    let (_, other_key) = ca.server(&["b.test"]).write(&dir, "b");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let cases = [
        (
            format!("{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}", path(&c), path(&other_key)),
            "is not the key of",
        ),
        (
            format!("{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}", path(&garbage), path(&other_key)),
            "holds no certificate",
        ),
        (format!("{{ certificates: [{{ cert: \"{}/missing.pem\", key: \"x\" }}] }}", dir.display()), "cannot read"),
        (
            format!(
                "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}], client_auth: {{ mode: required }} }}",
                path(&c),
                path(&other_key)
            ),
            "a CA bundle is required",
        ),
        ("{ certificates: [], min_version: \"1.1\" }".to_string(), "unsupported TLS version"),
    ];
    for (tls, want) in cases {
        let yaml = tls_config("127.0.0.1:9".parse().expect("addr"), &tls, "", "");
        let err = portcullis::config::parse("gw.yaml", &yaml).expect_err(want).to_string();
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(err.starts_with("gw.yaml:6:"), "{err}");
        assert!(err.contains("listeners[0].tls"), "{err}");
    }
    // `mtls` needs a listener that asks for client certificates.
    let yaml = tls_config(
        "127.0.0.1:9".parse().expect("addr"),
        &format!("{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}", path(&c), path(&c)),
        "  - { name: r, match: { prefix: / }, upstream: up, auth: [mtls] }\n",
        "",
    );
    let err = portcullis::config::parse("gw.yaml", &yaml).expect_err("mtls").to_string();
    assert!(err.contains("routes[0].auth[0]: `mtls` needs a listener with `tls.client_auth.mode"), "{err}");
}

#[tokio::test]
async fn upstreams_over_tls_are_verified_and_get_the_gateways_certificate() {
    let dir = scratch_dir();
    let backend_ca = Ca::new("Backend CA");
    let gateway_ca = Ca::new("Gateway clients CA");
    let other_ca = Ca::new("Other CA");
    // The backend's certificate names backend.test, not the address it is reached at.
    let (up, hits) = pki::tls_upstream(&backend_ca.server(&["backend.test"]), Some(&gateway_ca)).await;
    let ca_file = backend_ca.write(&dir, "backend-ca");
    let other_file = other_ca.write(&dir, "other-ca");
    let gw_cert = gateway_ca.client("portcullis-gw", None);
    let (gc, gk) = gw_cert.write(&dir, "gw");
    let upstream = |name: &str, protocol: &str, tls: String| {
        format!(
            "  - name: {name}\n    protocol: {protocol}\n    targets: [{{ url: \"https://{up}\" }}]\n    timeouts: {{ connect: 2s }}\n    tls: {tls}\n    health: {{ active: {{ path: /, interval: 200ms, healthy_after: 1, unhealthy_after: 1 }} }}\n"
        )
    };
    let good = |extra: &str| {
        format!(
            "{{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\", server_name: backend.test{extra} }}",
            path(&ca_file),
            path(&gc),
            path(&gk)
        )
    };
    let upstreams = [
        upstream("auto", "auto", good("")),
        upstream("h1", "http1", good("")),
        upstream("h2", "h2", good("")),
        upstream(
            "other_ca",
            "auto",
            format!(
                "{{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\", server_name: backend.test }}",
                path(&other_file),
                path(&gc),
                path(&gk)
            ),
        ),
        upstream(
            "no_name",
            "auto",
            format!("{{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}", path(&ca_file), path(&gc), path(&gk)),
        ),
        upstream("no_cert", "auto", format!("{{ ca: \"{}\", server_name: backend.test }}", path(&ca_file))),
    ]
    .concat();
    let routes: String = ["auto", "h1", "h2", "other_ca", "no_name", "no_cert"]
        .iter()
        .map(|n| format!("  - {{ name: {n}, match: {{ prefix: /{n} }}, upstream: {n}, public: true }}\n"))
        .collect();
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nupstreams:\n{upstreams}routes:\n{routes}"
    );
    let gw = TestGateway::start(&yaml).await;

    // Verified, with SNI and the gateway's client certificate; the protocol as configured.
    let want_cert = pki::sha256_hex(&gw_cert.der);
    for (route, version) in [("auto", "HTTP/2.0"), ("h1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let (status, h, body) = get(&gw.url(&format!("/{route}/x"))).await;
        assert_eq!(status, 200, "{route}: {body}");
        assert_eq!(h["x-version"], version, "{route}");
        assert_eq!(h["x-client-cert"], want_cert.as_str(), "{route}");
        assert_eq!(h["x-sni"], "backend.test", "{route}");
        // The client's host goes on: as `Host` over HTTP/1.1, as `:authority` alone over
        // HTTP/2 (NGINX refuses both as a duplicate host).
        let host = gw.addr().to_string();
        if version == "HTTP/2.0" {
            assert_eq!(
                (h["x-host"].to_str().ok(), h["x-authority"].to_str().ok()),
                (Some("absent"), Some(host.as_str()))
            );
        } else {
            assert_eq!(h["x-host"], host.as_str(), "{route}");
        }
    }
    let served = hits.load(std::sync::atomic::Ordering::SeqCst);

    // A certificate from a CA the upstream's `tls.ca` does not hold, a name that does not
    // match it, no client certificate: 502 (503 once probes have failed too), and no
    // request reaches the backend.
    for route in ["other_ca", "no_name", "no_cert"] {
        let (status, _, body) = get(&gw.url(&format!("/{route}/x"))).await;
        assert!(status == 502 || status == 503, "{route}: {status} {body}");
    }
    // (Health probes of the good upstreams may have come in meanwhile; the refused ones
    // never get a request through.)
    let probes_only = hits.load(std::sync::atomic::Ordering::SeqCst) - served;
    assert!(probes_only <= 30, "{probes_only}");

    // Health probes speak TLS too: the good upstreams are healthy, the refused ones not.
    let state = |n: &str| gw.upstream_status(n)["targets"][0]["state"].as_str().unwrap_or("").to_string();
    let expected = [
        ("auto", "healthy"),
        ("h1", "healthy"),
        ("h2", "healthy"),
        ("other_ca", "unhealthy"),
        ("no_name", "unhealthy"),
        ("no_cert", "unhealthy"),
    ];
    let mut states = Vec::new();
    for _ in 0..200 {
        states = expected.iter().map(|(n, _)| (*n, state(n))).collect::<Vec<_>>();
        if states.iter().zip(&expected).all(|((_, got), (_, want))| got == want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states, expected.iter().map(|(n, w)| (*n, w.to_string())).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_reload_takes_up_replaced_upstream_certificates() {
    let dir = scratch_dir();
    let backend_ca = Ca::new("Backend CA");
    let gateway_ca = Ca::new("Gateway clients CA");
    let (up, _) = pki::tls_upstream(&backend_ca.server(&["127.0.0.1"]), Some(&gateway_ca)).await;
    let ca_file = backend_ca.write(&dir, "backend-ca");
    let first = gateway_ca.client("gw-2026", None);
    let (gc, gk) = first.write(&dir, "gw");
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nupstreams:\n  - name: up\n    targets: [{{ url: \"https://{up}\" }}]\n    tls: {{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: up, public: true }}\n",
        path(&ca_file),
        path(&gc),
        path(&gk)
    );
    let gw = TestGateway::start(&yaml).await;
    // Verified against an IP address SAN, with the first client certificate.
    let (status, h, _) = get(&gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-client-cert"], pki::sha256_hex(&first.der).as_str());
    assert_eq!(h["x-sni"], "none", "no SNI for an IP address");

    // New files at the same paths; the config text is unchanged, yet a reload applies.
    let second = gateway_ca.client("gw-2027", None);
    second.write(&dir, "gw");
    assert!(matches!(gw.gw.reload().await.expect("reload"), portcullis::server::Reloaded::Applied(2)));
    let (status, h, _) = get(&gw.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-client-cert"], pki::sha256_hex(&second.der).as_str(), "new connections use the new certificate");
    assert!(matches!(gw.gw.reload().await.expect("reload"), portcullis::server::Reloaded::Unchanged(2)));
}

#[tokio::test]
async fn routes_bound_to_a_listener_take_only_its_client_certificates() {
    let up = TestUpstream::start("up").await;
    let dir = scratch_dir();
    let server_ca = Ca::new("Server CA");
    let partners_ca = Ca::new("Partners CA");
    let staff_ca = Ca::new("Staff CA");
    let (sc, sk) = server_ca.server(&["api.test"]).write(&dir, "server");
    let partners = partners_ca.write(&dir, "partners-ca");
    let staff = staff_ca.write(&dir, "staff-ca");
    let listener = |name: &str, ca: &Path| {
        format!(
            "  - name: {name}\n    bind: \"127.0.0.1:0\"\n    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}], client_auth: {{ mode: required, ca: \"{}\" }} }}\n",
            path(&sc),
            path(&sk),
            path(ca)
        )
    };
    let yaml = format!(
        "version: 1\nlisteners:\n{}{}upstreams:\n  - name: up\n    targets: [{{ url: \"http://{}\" }}]\nroutes:\n  - {{ name: partner-api, match: {{ prefix: /partner, listeners: [partners] }}, upstream: up, auth: [mtls] }}\n  - {{ name: staff-api, match: {{ prefix: /staff, listeners: [staff] }}, upstream: up, auth: [mtls] }}\n",
        listener("partners", &partners),
        listener("staff", &staff),
        up.addr
    );
    let dir2 = scratch_dir();
    let cfg_path = dir2.join("gw.yaml");
    std::fs::write(&cfg_path, &yaml).expect("write");
    let cfg = portcullis::config::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let gw = portcullis::server::Gateway::start(cfg, None).await.expect("start");
    let at = |l: &str| gw.local_addr(l).expect("listener");
    let partner = TlsClient::new(&server_ca).with_cert(&partners_ca.client("acme", None));
    let employee = TlsClient::new(&server_ca).with_cert(&staff_ca.client("alice", None));

    let r = partner.get(at("partners"), "api.test", "/partner/orders").await.expect("exchange");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-consumer-id"], "acme");
    // A staff certificate is valid on its own listener, but partner routes are not there.
    let r = employee.get(at("staff"), "api.test", "/partner/orders").await.expect("exchange");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = employee.get(at("staff"), "api.test", "/staff/x").await.expect("exchange");
    assert_eq!(r.status, 200);
    // And the partners' listener does not take staff certificates at all.
    assert!(employee.get(at("partners"), "api.test", "/partner/orders").await.is_err());

    let bad = yaml.replace("listeners: [staff]", "listeners: [nowhere]");
    let err = portcullis::config::parse("gw.yaml", &bad).expect_err("unknown listener").to_string();
    assert!(err.contains("routes[1].match.listeners[0]: unknown listener `nowhere`"), "{err}");
}
