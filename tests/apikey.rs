//! API keys end to end: consumers and keys made with the real CLI on a real SQLite store,
//! a running gateway that authenticates with them, revocation seen within a second,
//! keys declared in the config, keys in the query string, and `allow` rules.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

use common::*;
use http::Request;

/// A config with a store in `dir`, a public route and key-protected ones.
fn config(dir: &Path, upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"version: 1
node: {{ store: "sqlite://{db}" }}
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{upstream}" }}] }}]
auth:
  api_key: {{ header: x-api-key, query: api_key }}
routes:
  - {{ name: open, match: {{ prefix: /public }}, upstream: app, public: true }}
  - {{ name: partners, match: {{ prefix: /partners }}, upstream: app, auth: [api_key], allow: {{ groups: [partners] }} }}
  - {{ name: keyed, match: {{ prefix: / }}, upstream: app, auth: [api_key] }}
{extra}"#,
        db = dir.join("state.db").display()
    )
}

fn write_config(text: &str) -> (PathBuf, PathBuf) {
    let dir = scratch_dir();
    let path = dir.join("gw.yaml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

async fn start(path: &Path) -> portcullis::server::Gateway {
    let cfg = portcullis::config::load(path).unwrap_or_else(|e| panic!("config:\n{e}"));
    portcullis::server::Gateway::start(cfg, Some(path.to_path_buf())).await.expect("start")
}

async fn call(gw: &portcullis::server::Gateway, path: &str, key: Option<&str>) -> (u16, http::HeaderMap, String) {
    let addr = gw.local_addr("public").expect("listener");
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    send(req.body(full("")).expect("request")).await
}

// Multi-threaded: the CLI runs as a blocking child process while the in-process gateway
// (and its store writer) must keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_cli_authenticate_and_revocation_is_seen_within_a_few_polls() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let (_, path) = write_config(&config(&dir, up.addr, ""));

    assert_eq!(cli(&path, &["consumers", "add", "billing", "--group", "partners"]).0, 0);
    assert_eq!(cli(&path, &["consumers", "add", "reports"]).0, 0);
    let (code, _, err) = cli(&path, &["consumers", "add", "billing"]);
    assert_eq!(code, 1, "a duplicate consumer is refused: {err}");
    let (code, key, err) = cli(&path, &["keys", "issue", "billing"]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("pcl_") && key.len() == 60 && !key.contains('\n'), "stdout is the key alone: {key:?}");
    assert!(!err.contains(&key), "the key is not repeated on stderr");
    let (_, other_key, _) = cli(&path, &["keys", "issue", "reports"]);
    let other_key = other_key.trim().to_string();
    assert_eq!(cli(&path, &["keys", "issue", "nobody"]).0, 1, "no key for an unknown consumer");

    // The store keeps no key: neither the listing nor the database file holds one.
    let (code, list, _) = cli(&path, &["keys", "list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(!list.contains(&key[17..]));
    let mut db = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        db.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    assert!(!db.windows(43).any(|w| w == &key.as_bytes()[17..]), "the secret is not in the store");

    let gw = start(&path).await;
    let (status, h, body) = call(&gw, "/orders", None).await;
    assert_eq!(status, 401);
    problem(401, &h, &body);
    let challenge = h.get("www-authenticate").expect("WWW-Authenticate").to_str().expect("text");
    assert!(challenge.contains("x-api-key"), "{challenge}");

    let before = up.count();
    let mut wrong = key.clone().into_bytes();
    wrong[30] = if wrong[30] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).expect("ascii");
    for bad in [wrong.as_str(), "pcl_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "secret", ""] {
        let (status, h, _) = call(&gw, "/orders", Some(bad)).await;
        assert_eq!(status, 401, "{bad:?}");
        assert!(h.contains_key("www-authenticate"));
    }
    assert_eq!(up.count(), before, "refused requests never reach the upstream");

    let (status, _, _) = call(&gw, "/orders?x=1", Some(&key)).await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-consumer-id"], "billing");
    assert_eq!(seen.headers["x-consumer-groups"], "partners");
    assert_eq!(seen.headers["x-consumer-auth"], "api_key");
    assert!(!seen.headers.contains_key("x-api-key"), "the key does not travel upstream");

    // `Connection` cannot name the gateway's identity headers away.
    let req = Request::get(format!("http://{}/orders", gw.local_addr("public").expect("addr")))
        .header("x-api-key", &key)
        .header("connection", "x-consumer-id, x-consumer-groups, x-consumer-auth")
        .body(full(""))
        .expect("request");
    assert_eq!(send(req).await.0, 200);
    assert_eq!(up.last().headers["x-consumer-id"], "billing");
    assert_eq!(up.last().headers["x-consumer-auth"], "api_key");

    // allow: { groups: [partners] }
    assert_eq!(call(&gw, "/partners/x", Some(&key)).await.0, 200);
    let (status, h, body) = call(&gw, "/partners/x", Some(&other_key)).await;
    assert_eq!(status, 403);
    problem(403, &h, &body);

    // Two keys at once is not "any one of them".
    let req = Request::get(format!("http://{}/orders", gw.local_addr("public").expect("addr")))
        .header("x-api-key", &key)
        .header("x-api-key", &other_key)
        .body(full(""))
        .expect("request");
    assert_eq!(send(req).await.0, 401);

    // Revoked on the running node within a second.
    let id = &key[4..16];
    let (code, _, err) = cli(&path, &["keys", "revoke", id]);
    assert_eq!(code, 0, "{err}");
    let revoked_at = Instant::now();
    loop {
        let status = call(&gw, "/orders", Some(&key)).await.0;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "revocation never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = revoked_at.elapsed();
    println!("revocation seen after {took:?}");
    // One poll (250 ms) and two small queries; a loaded 2-core machine gets room for a few.
    assert!(took < Duration::from_secs(2), "revocation took {took:?}");
    assert_eq!(call(&gw, "/orders", Some(&other_key)).await.0, 200, "other keys still work");
    assert_eq!(cli(&path, &["keys", "revoke", id]).0, 1, "revoking twice reports nothing to do");

    // Removing a consumer removes its keys.
    assert_eq!(cli(&path, &["consumers", "remove", "reports"]).0, 0);
    let t = Instant::now();
    while call(&gw, "/orders", Some(&other_key)).await.0 != 401 {
        assert!(t.elapsed() < Duration::from_secs(5), "removal never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown(Duration::from_secs(1)).await;
    // The store was closed: its write-ahead log is folded into the database file, so
    // copying `state.db` alone is a complete backup.
    let wal = std::fs::metadata(dir.join("state.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "write-ahead log left behind");
}

#[tokio::test]
async fn keys_declared_in_the_config_and_in_the_query_string() {
    let up = TestUpstream::start("app").await;
    let k = portcullis::auth::apikey::generate().expect("key");
    let hex: String = k.digest.iter().map(|b| format!("{b:02x}")).collect();
    let extra = format!(
        "admin: {{ bind: \"127.0.0.1:0\", public_metrics: true }}\nconsumers:\n  - {{ name: ci, groups: [partners, deploy], api_keys: [{{ id: {}, sha256: \"{hex}\" }}] }}\n",
        k.id
    );
    let dir = scratch_dir();
    let (_, path) = write_config(&config(&dir, up.addr, &extra));
    let gw = start(&path).await;
    assert_eq!(call(&gw, "/x", Some(&k.key)).await.0, 200);
    assert_eq!(up.last().headers["x-consumer-groups"], "partners,deploy");

    // ?api_key=… works and is removed before forwarding; other parameters stay.
    let (status, _, _) =
        get(&format!("http://{}/x?a=1&api_key={}&b=2", gw.local_addr("public").expect("a"), k.key)).await;
    assert_eq!(status, 200);
    assert_eq!(up.last().path_and_query, "/x?a=1&b=2");
    let (status, _, _) = get(&format!("http://{}/x?api_key={}", gw.local_addr("public").expect("a"), k.key)).await;
    assert_eq!(status, 200);
    assert_eq!(up.last().path_and_query, "/x");
    let (status, _, _) = get(&format!("http://{}/x?api_key=pcl_nope", gw.local_addr("public").expect("a"))).await;
    assert_eq!(status, 401);

    // Spoofed identity headers never reach the upstream, on public routes either.
    for route in ["/public/a", "/x"] {
        let req = Request::get(format!("http://{}{route}", gw.local_addr("public").expect("a")))
            .header("x-api-key", &k.key)
            .header("X-Consumer-Id", "admin")
            .header("x-consumer-groups", "root")
            .header("x-consumer-anything", "1")
            .body(full(""))
            .expect("request");
        assert_eq!(send(req).await.0, 200);
        let h = up.last().headers;
        assert!(!h.contains_key("x-consumer-anything"), "{route}");
        if route == "/x" {
            assert_eq!(h["x-consumer-id"], "ci");
            assert_eq!(h.get_all("x-consumer-groups").iter().count(), 1);
        } else {
            assert!(!h.contains_key("x-consumer-id") && !h.contains_key("x-consumer-groups"), "{route}");
        }
    }

    // Metrics count outcomes by method, and never name a key.
    let admin = gw.admin_addr().expect("admin");
    let (_, _, metrics) = get(&format!("http://{admin}/metrics")).await;
    let families = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let value = |method: &str, outcome: &str| {
        families
            .samples
            .iter()
            .find(|s| {
                s.metric == "portcullis_auth_total"
                    && s.labels.get("method") == Some(method)
                    && s.labels.get("outcome") == Some(outcome)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => -1.0,
            })
    };
    assert_eq!(value("api_key", "success"), Some(4.0), "{metrics}");
    assert_eq!(value("api_key", "invalid"), Some(1.0));
    assert!(!metrics.contains(&k.key[17..]));
    gw.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn cli_refuses_without_a_store_and_with_bad_input() {
    let (_, path) = write_config(&simple_config(&["127.0.0.1:9".parse().expect("addr")], "", ""));
    let (code, _, err) = cli(&path, &["consumers", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("names no store"), "{err}");
    let dir = scratch_dir();
    let (_, path) = write_config(&config(&dir, "127.0.0.1:9".parse().expect("addr"), ""));
    let (code, _, err) = cli(&path, &["consumers", "add", "bad name"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = cli(&path, &["keys", "revoke", "not-an-id"]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = cli(&path, &["consumers", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    let (code, _, _) = cli(&path, &["keys"]);
    assert_eq!(code, 2, "a usage error");
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// With `identity_headers.assertion`, upstreams get a JWT signed by the gateway that they can
/// verify with its public key; a client cannot forge or pass one through.
#[tokio::test]
async fn upstreams_get_a_signed_identity_assertion() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let up = TestUpstream::start("app").await;
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
    let dir = scratch_dir();
    std::fs::write(dir.join("gw.key"), pem("PRIVATE KEY", pair.to_pkcs8v1().expect("pkcs8").as_ref())).expect("key");
    let public = pem("PUBLIC KEY", pair.public_key().as_der().expect("spki").as_ref());
    let k = portcullis::auth::apikey::generate().expect("key");
    let hex: String = k.digest.iter().map(|b| format!("{b:02x}")).collect();
    let yaml = format!(
        r#"version: 1
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{}" }}] }}]
consumers: [{{ name: ci, groups: [deploy], api_keys: [{{ id: {}, sha256: "{hex}" }}] }}]
auth:
  identity_headers:
    assertion: {{ key_file: gw.key, algorithm: ES256, issuer: edge-gw, audience: backends, ttl: 30s, kid: gw1 }}
routes:
  - {{ name: keyed, match: {{ prefix: / }}, upstream: app, auth: [api_key] }}
"#,
        up.addr, k.id
    );
    let path = dir.join("gw.yaml");
    std::fs::write(&path, yaml).expect("write");
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("addr");
    let req = Request::get(format!("http://{addr}/orders"))
        .header("x-api-key", &k.key)
        .header("x-consumer-assertion", "forged")
        .header("x-request-id", "req-42")
        .body(full(""))
        .expect("request");
    assert_eq!(send(req).await.0, 200);
    let seen = up.last();
    let values: Vec<_> = seen.headers.get_all("x-consumer-assertion").iter().collect();
    assert_eq!(values.len(), 1, "one assertion, the gateway's");
    let token = values[0].to_str().expect("ascii");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_issuer(&["edge-gw"]);
    v.set_audience(&["backends"]);
    v.validate_nbf = true;
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).expect("public key");
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).expect("the assertion verifies");
    assert_eq!(data.header.kid.as_deref(), Some("gw1"));
    let c = data.claims;
    assert_eq!(c["sub"], "ci");
    assert_eq!(c["groups"], serde_json::json!(["deploy"]));
    assert_eq!(c["auth"], "api_key");
    assert_eq!(c["request_id"], "req-42");
    assert_eq!(c["jti"].as_str().map(str::len), Some(32), "a fresh jti, not the client-chosen request id");
    assert_eq!(c["route"], "keyed");
    let ttl = c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat");
    assert_eq!(ttl, 30);
    // Another key does not verify it.
    let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
    let other = pem("PUBLIC KEY", other.public_key().as_der().expect("spki").as_ref());
    let other = jsonwebtoken::DecodingKey::from_ec_pem(other.as_bytes()).expect("public key");
    assert!(jsonwebtoken::decode::<serde_json::Value>(token, &other, &v).is_err());
    gw.shutdown(Duration::from_secs(1)).await;
}

/// With a public catch-all in front of the same backend, another spelling of a protected
/// path (case, `;parameters`, trailing dots) is refused rather than served unauthenticated:
/// lenient backends (Tomcat, IIS, case-insensitive file systems) would read it as the
/// protected path.
#[tokio::test]
async fn other_spellings_of_a_protected_path_do_not_slip_through_a_public_route() {
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        r#"version: 1
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://{}" }}] }}]
routes:
  - {{ name: site, match: {{ prefix: / }}, upstream: app, public: true }}
  - {{ name: admin, match: {{ prefix: /admin }}, upstream: app, auth: [api_key] }}
"#,
        up.addr
    );
    let (_, path) = write_config(&yaml);
    let gw = start(&path).await;
    let addr = gw.local_addr("public").expect("addr");
    for p in ["/Admin/users", "/ADMIN", "/admin;jsessionid=x/users", "/admin./users", "/aDmIn.;x/", "/admin%3bx/users"]
    {
        let (head, _) = raw_exchange(
            addr,
            format!("GET {p} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(status == 400 || status == 401, "{p}: {head}");
    }
    assert_eq!(up.count(), 0, "no spelling of /admin reached the backend");
    for p in ["/", "/About/Us", "/administrator", "/shop;x", "/file.txt."] {
        assert_eq!(get(&format!("http://{addr}{p}")).await.0, 200, "{p}");
    }
    assert_eq!(get(&format!("http://{addr}/admin/x")).await.0, 401);
    gw.shutdown(Duration::from_secs(1)).await;
}
