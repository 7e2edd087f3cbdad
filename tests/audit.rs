//! The audit log end to end: a running node and the real CLI append to one hash chain in a
//! real SQLite store; `portcullis audit tail` shows what happened; `portcullis audit verify`
//! passes, then names the first record after one is edited or deleted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use http::Request;

const TOKEN: &str = "audit-test-admin-token-0123456789";

fn config(db: &Path, upstream: std::net::SocketAddr, extra_route: &str) -> String {
    format!(
        r#"version: 1
node: {{ name: audit-node, store: "sqlite://{}" }}
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
admin: {{ bind: "127.0.0.1:0" }}
upstreams: [{{ name: app, targets: [{{ url: "http://{upstream}" }}] }}]
routes:
  - {{ name: keyed, match: {{ prefix: /api }}, upstream: app, auth: [api_key] }}
{extra_route}"#,
        db.display()
    )
}

async fn sql(db: &Path, statement: &'static str, seq: i64, value: Option<&str>) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.expect("open db");
    let q = sqlx::query(statement);
    let q = match value {
        Some(v) => q.bind(v).bind(seq),
        None => q.bind(seq),
    };
    q.execute(&pool).await.expect("tamper");
    pool.close().await;
}

// Multi-threaded: the CLI runs as a blocking child process while the in-process gateway
// (and its store writer) must keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_records_security_and_admin_events_and_shows_tampering() {
    let up = TestUpstream::start("app").await;
    let dir = scratch_dir();
    let db = dir.join("state.db");
    let path = dir.join("gw.yaml");
    std::fs::write(&path, config(&db, up.addr, "")).expect("write");

    assert_eq!(cli(&path, &["consumers", "add", "app1"]).0, 0);
    let (code, key, _) = cli(&path, &["keys", "issue", "app1"]);
    assert_eq!(code, 0);
    let key = key.trim().to_string();

    let cfg = portcullis::config::load(&path).expect("config");
    let options = portcullis::server::StartOptions { admin_token: Some(TOKEN.into()) };
    let gw = portcullis::server::Gateway::start_with(cfg, Some(path.clone()), 0, options).await.expect("start");
    let addr = gw.local_addr("public").expect("listener");
    let admin = gw.admin_addr().expect("admin");

    let bad = Request::get(format!("http://{addr}/api/x")).header("x-api-key", "pcl_000000000000_wrong").body(full(""));
    assert_eq!(send(bad.expect("req")).await.0, 401);
    let good = Request::get(format!("http://{addr}/api/x")).header("x-api-key", &key).body(full(""));
    assert_eq!(send(good.expect("req")).await.0, 200);
    let anon = Request::get(format!("http://{addr}/api/x")).body(full(""));
    assert_eq!(send(anon.expect("req")).await.0, 401, "missing credentials: counted, not audited");
    let status =
        Request::get(format!("http://{admin}/api/v1/status")).header("authorization", format!("Bearer {TOKEN}"));
    assert_eq!(send(status.body(full("")).expect("req")).await.0, 200);
    assert_eq!(send(Request::get(format!("http://{admin}/api/v1/status")).body(full("")).expect("req")).await.0, 401);

    std::fs::write(
        &path,
        config(&db, up.addr, "  - { name: open, match: { prefix: /open }, upstream: app, public: true }\n"),
    )
    .expect("write");
    assert!(gw.reload().await.is_ok());
    std::fs::write(&path, "version: 1\nlisteners: []\nbogus: 1\n").expect("write");
    assert!(gw.reload().await.is_err());
    assert_eq!(cli(&path.with_file_name("cli.yaml"), &["audit", "verify"]).0, 1, "no such config: refused");
    std::fs::write(dir.join("cli.yaml"), config(&db, up.addr, "")).expect("write");
    let cli_cfg = dir.join("cli.yaml");
    assert_eq!(cli(&cli_cfg, &["keys", "revoke", &key[4..16]]).0, 0);
    gw.shutdown(Duration::from_secs(2)).await;

    let (code, out, err) = cli(&cli_cfg, &["audit", "tail", "-n", "100", "--json"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap_or("")).collect();
    let want = [
        "consumer_added",
        "key_issued",
        "node_started",
        "auth_failure",
        "admin_access",
        "admin_access",
        "config_applied",
        "config_refused",
        "key_revoked",
        "node_stopped",
    ];
    // The node queues its records and the CLI appends at once, so the two interleave: the
    // node's own come in its order, and all of them are there.
    let node_kinds: Vec<&str> =
        records.iter().filter(|r| r["node"] == "audit-node").map(|r| r["kind"].as_str().unwrap_or("")).collect();
    assert_eq!(
        node_kinds,
        want.iter().copied().filter(|k| !k.starts_with("consumer") && !k.starts_with("key")).collect::<Vec<_>>()
    );
    let (mut sorted, mut want_sorted) = (kinds.clone(), want.to_vec());
    sorted.sort_unstable();
    want_sorted.sort_unstable();
    assert_eq!(sorted, want_sorted, "{out}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as i64 + 1);
    }
    let admin: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "admin_access").collect();
    assert!(admin[0]["detail"].as_str().is_some_and(|d| d.contains("\"allowed\"") && d.contains("/api/v1/status")));
    assert_eq!((admin[0]["actor"].as_str(), admin[1]["actor"].as_str()), (Some("admin-token"), Some("anonymous")));
    let failure = records.iter().find(|r| r["kind"] == "auth_failure").expect("auth failure");
    assert_eq!(failure["actor"], "127.0.0.1");
    assert!(records[0]["actor"].as_str().is_some_and(|a| a.starts_with("cli:")));
    assert!(!out.contains(&key[17..]), "no secret in the audit log");
    assert!(!out.contains(TOKEN), "no admin token in the audit log");

    let (code, out, _) = cli(&cli_cfg, &["audit", "verify"]);
    assert_eq!((code, out.trim()), (0, "ok: 10 records, the chain is intact"));
    // A pinned record: still there with its hash.
    let pin = format!("10:{}", records[9]["hash"].as_str().expect("hash"));
    let (code, out, _) = cli(&cli_cfg, &["audit", "verify", "--expect", &pin]);
    assert_eq!((code, out.trim()), (0, "ok: 10 records, the chain is intact, the pinned record matches"));
    assert_eq!(cli(&cli_cfg, &["audit", "verify", "--expect", "10:nothex"]).0, 2, "a bad pin is a usage error");

    // Edit one record: verify names it.
    let original = records[3]["detail"].as_str().expect("detail").to_string();
    assert_eq!(records[3]["seq"], 4);
    sql(&db, "UPDATE audit SET detail = $1 WHERE seq = $2", 4, Some(r#"{"route":"nothing happened"}"#)).await;
    let (code, out, _) = cli(&cli_cfg, &["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("broken at record 4") && out.contains("edited"), "{out}");
    sql(&db, "UPDATE audit SET detail = $1 WHERE seq = $2", 4, Some(&original)).await;
    assert_eq!(cli(&cli_cfg, &["audit", "verify"]).0, 0, "restored");

    // Delete one: the next one is named.
    sql(&db, "DELETE FROM audit WHERE seq = $1", 6, None).await;
    let (code, out, _) = cli(&cli_cfg, &["audit", "verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("broken at record 7") && out.contains("missing"), "{out}");

    // Cutting the newest records off leaves a valid chain: only a pin shows it.
    sql(&db, "DELETE FROM audit WHERE seq >= $1", 9, None).await;
    let (code, out, _) = cli(&cli_cfg, &["audit", "verify", "--expect", &pin]);
    assert_eq!(code, 1);
    assert!(out.contains("broken at record 7"), "the gap still comes first: {out}");
    let (code, out, err) = cli(&cli_cfg, &["audit", "tail", "-n", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("audit verify --expect "), "{err}");
}
