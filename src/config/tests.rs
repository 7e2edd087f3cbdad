use super::*;

fn errors(src: &str) -> Vec<String> {
    match parse("gw.yaml", src) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = r#"
version: 1
node: { name: edge-1, workers: 2, shutdown_grace: 5s }
listeners:
  - name: public
    bind: "127.0.0.1:8080"
    limits: { header_timeout: 2s, max_header_bytes: 8KiB, max_body_bytes: 1MiB }
upstreams:
  - name: orders
    targets: [{ url: "http://127.0.0.1:9001" }, { url: "http://localhost:9002/" }]
    timeouts: { connect: 250ms, response: 5s, idle: 90s }
routes:
  - name: orders-v1
    match: { host: api.example.com, path: "/v1/orders/{id}", methods: [GET, POST], headers: { x-env: prod } }
    upstream: orders
    public: true
  - name: status
    match: { prefix: /status }
    upstream: orders
    public: true
"#;

#[test]
fn good_config_decodes_exactly() {
    let c = parse("gw.yaml", GOOD).expect("valid");
    assert_eq!(c.node.name, "edge-1");
    assert_eq!(c.node.workers.map(|w| w.get()), Some(2));
    assert_eq!(c.node.shutdown_grace, std::time::Duration::from_secs(5));
    assert_eq!(c.listeners[0].limits.max_header_bytes, 8192);
    assert_eq!(c.listeners[0].limits.max_body_bytes, 1 << 20);
    assert_eq!(c.listeners[0].limits.idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(c.upstreams[0].targets[1].authority.as_str(), "localhost:9002");
    assert_eq!(c.upstreams[0].connect_timeout, std::time::Duration::from_millis(250));
    assert_eq!(c.upstreams[0].response_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.upstreams[0].idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(c.routes[0].methods, vec![http::Method::GET, http::Method::POST, http::Method::HEAD]);
    assert_eq!(c.routes[0].upstream, 0);
    assert_eq!(c.routes[1].path, pattern::PathPattern::Prefix("/status".into()));
}

#[test]
fn every_error_is_reported_with_position() {
    let src = r#"version: 1
listeners:
  - name: public
    bind: "127.0.0.1:8080"
    limits: { header_timeout: 10 parsecs }
    colour: blue
upstreams:
  - name: a
    targets: [{ url: "http://127.0.0.1:9001" }]
routes:
  - name: r1
    match: { prefix: / }
    upstream: nope
    public: true
  - name: r1
    match: { prefix: /x }
    upstream: a
    public: true
"#;
    assert_eq!(
        errors(src),
        vec![
            "gw.yaml:5:31: listeners[0].limits.header_timeout: invalid duration `10 parsecs`: unknown unit ` parsecs` (use ms, s, m, h or d)",
            "gw.yaml:6:5: listeners[0].colour: unknown field `colour`; expected one of: bind, limits, name, tls",
            "gw.yaml:13:15: routes[0].upstream: unknown upstream `nope`",
            "gw.yaml:15:11: routes[1].name: duplicate route name `r1`",
        ]
    );
}

#[test]
fn unsupported_sections_are_refused_not_ignored() {
    let src =
        "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\", tls: {} }]\ncluster: { redis: \"rediss://h:1\" }\n";
    let e = errors(src);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("listeners[0].tls.certificates: missing field `certificates`"), "{e:?}");
    assert!(e[1].contains("cluster.redis: Redis over TLS (rediss://) is not supported yet"), "{e:?}");
}

const BASE: &str = "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\nupstreams: [{ name: u, targets: [{url: \"http://127.0.0.1:2\"}] }]\n";

#[test]
fn routes_must_authenticate_or_say_public() {
    let e = errors(&format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u }}]\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("routes[0].auth: a route must authenticate its callers"), "{e:?}");
    let e = errors(&format!(
        "{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, public: true, auth: [api_key] }}]\n"
    ));
    assert!(e[0].contains("routes[0].auth: a `public: true` route takes no `auth`"), "{e:?}");
    let e = errors(&format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, auth: [jwt] }}]\n"));
    assert!(e[0].contains("`jwt` needs at least one issuer"), "{e:?}");
    let e = errors(&format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, auth: [] }}]\n"));
    assert!(e[0].contains("list at least one method"), "{e:?}");
    let e = errors(&format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, auth: [basic] }}]\n"));
    assert!(e[0].contains("unknown method `basic`"), "{e:?}");
    let e = errors(&format!(
        "{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, public: true, allow: {{ groups: [g] }} }}]\n"
    ));
    assert!(e[0].contains("only `ips` rules apply"), "{e:?}");
    let ok = parse("gw.yaml", &format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, auth: [api_key], allow: [{{ groups: [g] }}, {{ ips: [10.0.0.0/8, 192.168.1.1] }}] }}]\n"))
        .expect("valid");
    assert_eq!(ok.routes[0].auth, vec![AuthMethod::ApiKey]);
    assert_eq!(ok.routes[0].allow.len(), 2);
    assert_eq!(ok.routes[0].allow[1].ips.len(), 2);
}

#[test]
fn jwt_issuers_are_checked() {
    let issuer = |body: &str| format!("{BASE}auth:\n  jwt:\n    - {{ issuer: \"https://id.test/\", {body} }}\n");
    let e = errors(&issuer("audiences: [a], algorithms: [none], jwks_url: \"http://127.0.0.1:1/k\""));
    assert!(e[0].contains("unknown or refused algorithm `none`"), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [HS256, RS256], jwks_url: \"http://127.0.0.1:1/k\""));
    assert!(e.iter().any(|e| e.contains("cannot be mixed")), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [RS256]"));
    assert!(e[0].contains("keys are needed"), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [RS256], jwks_url: \"http://x/k\", discovery: true"));
    assert!(e[0].contains("exactly one of"), "{e:?}");
    let e = errors(&issuer("algorithms: [RS256], jwks_url: \"http://x/k\""));
    assert!(e[0].contains("missing field `audiences`"), "{e:?}");
    let e = errors(&issuer("audiences: [a], jwks_url: \"http://x/k\""));
    assert!(e[0].contains("never from the token"), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [RS256], jwks_url: \"ftp://x/k\""));
    assert!(e[0].contains("expected an http:// or https:// URL"), "{e:?}");
    let e = errors(&issuer(
        "audiences: [a], algorithms: [RS256], keys: [{ pem: \"-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\" }]",
    ));
    assert!(e[0].contains("not a PEM public key"), "{e:?}");
    let e =
        errors(&issuer("audiences: [a], algorithms: [HS256], keys: [{ secret_env: PORTCULLIS_TEST_UNSET_VARIABLE }]"));
    assert!(e[0].contains("is not set"), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [RS256], jwks_file: /nonexistent/jwks.json"));
    assert!(e[0].contains("cannot read `/nonexistent/jwks.json`"), "{e:?}");
    let e = errors(&issuer("audiences: [a], algorithms: [RS256], jwks_url: \"http://x/k\", leeway: 1h"));
    assert!(e[0].contains("at most 5m"), "{e:?}");
    let ok = parse(
        "gw.yaml",
        &issuer("audiences: [a], algorithms: [RS256, ES256], discovery: true, required_claims: [tenant]"),
    )
    .expect("valid");
    let j = &ok.auth.jwt[0];
    assert_eq!(j.keys, KeySource::Discovery("https://id.test/.well-known/openid-configuration".parse().expect("uri")));
    assert_eq!((j.leeway.as_secs(), j.consumer_claim.as_str()), (30, "sub"));
}

#[test]
fn store_consumers_and_identity_headers() {
    let ok = parse("gw.yaml", &format!(
        "version: 1\nnode: {{ store: \"sqlite://state/p.db\" }}\nlisteners: [{{ name: a, bind: \"127.0.0.1:1\" }}]\nconsumers:\n  - {{ name: app1, groups: [partners], api_keys: [{{ id: 0123456789ab, sha256: \"{}\" }}] }}\nauth: {{ api_key: {{ header: x-key, query: key }}, identity_headers: {{ prefix: x-caller- }} }}\n",
        "ab".repeat(32)
    ))
    .expect("valid");
    assert_eq!(ok.node.store, Some(StoreUrl::Sqlite("state/p.db".into())));
    assert_eq!(ok.consumers[0].api_keys[0].sha256, [0xab; 32]);
    assert_eq!((ok.auth.api_key.header.as_str(), ok.auth.api_key.query.as_deref()), ("x-key", Some("key")));
    assert_eq!(ok.auth.identity.prefix, "x-caller-");
    let e =
        errors("version: 1\nnode: { store: \"postgres://db/x\" }\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\n");
    assert!(e[0].contains("PostgreSQL store is not supported yet"), "{e:?}");
    let e = errors(
        "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\nconsumers: [{ name: a, api_keys: [{ id: XYZ, sha256: abc }] }, { name: a }]\nauth: { api_key: { header: host }, identity_headers: { prefix: X-Bad } }\n",
    );
    assert_eq!(e.len(), 5, "{e:?}");
    assert!(e[0].contains("12 lower-case hex digits") && e[1].contains("64 hex digits"), "{e:?}");
    assert!(e[2].contains("duplicate consumer name `a`"), "{e:?}");
    assert!(e[3].contains("`host` cannot carry API keys") && e[4].contains("ending in `-`"), "{e:?}");
    let e = errors(
        "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\nauth: { identity_headers: { assertion: { algorithm: HS256, ttl: 2h } } }\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("missing field `key_file`") && e[1].contains("public-key algorithm"), "{e:?}");
    assert!(e[2].contains("between 1s and 1h"), "{e:?}");
    let e = errors(
        "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\nauth: { identity_headers: { prefix: x- } }\n",
    );
    assert!(e[0].contains("would remove the API key header `x-api-key`"), "{e:?}");
}

#[test]
fn hostile_yaml_is_refused() {
    assert!(!errors("version: 1\na: &x [1]\nb: *x\n").is_empty());
    assert!(!errors(&("[".repeat(500))).is_empty());
    assert!(!errors("version: 1\nversion: 1\nlisteners: []\n").is_empty());
    assert!(!errors("--- \nversion: 1\n---\nversion: 1\n").is_empty());
    assert_eq!(errors("").len(), 1);
    assert!(errors("version: 2\nlisteners: []").iter().any(|e| e.contains("unsupported version")));
}

#[test]
fn bad_values() {
    let src = r#"version: 1
node: { workers: lots }
listeners:
  - { name: "bad name", bind: "localhost:80" }
  - { name: b, bind: "127.0.0.1:80", limits: { max_body_bytes: 10MB } }
upstreams:
  - { name: u, targets: [{ url: "ftp://x" }, { url: "http://u:p@x:1" }, { url: "http://x:1/base" }], balance: fastest }
routes:
  - { name: r, match: { path: "/a//b", methods: [get] }, upstream: u, public: yes }
  - { name: s, match: { path: /a, prefix: /b }, upstream: u, public: true }
  - { name: t, match: { host: "http://x", prefix: /b }, upstream: u, public: true }
"#;
    let e = errors(src);
    let want = [
        "2:18: node.workers",
        "4:13: listeners[0].name",
        "4:31: listeners[0].bind",
        "5:64: listeners[1].limits.max_body_bytes",
        "7:33: upstreams[0].targets[0].url",
        "7:53: upstreams[0].targets[1].url",
        "7:80: upstreams[0].targets[2].url",
        "7:111: upstreams[0].balance",
        "9:31: routes[0].match.path",
        "9:50: routes[0].match.methods[0]",
        "9:79: routes[0].public",
        "10:43: routes[1].match.prefix",
        "11:31: routes[2].match.host",
    ];
    for w in want {
        assert!(e.iter().any(|x| x.contains(w)), "missing {w} in {e:#?}");
    }
}

/// Random damage to a valid file (deleted, duplicated and swapped bytes) must give errors,
/// never a panic or a hang.
#[test]
fn damaged_files_never_panic() {
    let mut rng = fastrand::Rng::with_seed(9);
    let good = GOOD.as_bytes();
    for _ in 0..3_000 {
        let mut b = good.to_vec();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => {
                    b.remove(i);
                }
                1 => b.insert(i, b"{}[]:,-&*!|>'\"#%@ \n\t"[rng.usize(..20)]),
                _ => {
                    let j = rng.usize(..b.len());
                    b.swap(i, j);
                }
            }
        }
        let text = String::from_utf8_lossy(&b);
        let _ = parse("fuzz.yaml", &text);
    }
}

const FULL_UPSTREAM: &str = r#"
version: 1
listeners: [{ name: public, bind: "127.0.0.1:8080" }]
admin: { bind: "127.0.0.1:9901" }
upstreams:
  - name: orders
    balance: consistent_hash
    hash_on: header:x-account
    targets: [{ url: "http://10.0.0.5:9001", weight: 2 }, { url: "http://10.0.0.6:9001" }]
    backup: [{ url: "http://10.0.1.5:9001" }]
    health:
      active: { path: /healthz, interval: 5s, timeout: 1s, healthy_after: 2, unhealthy_after: 3, statuses: [200, "204-299"] }
      passive: { consecutive_failures: 5, eject_for: 30s, max_eject_for: 2m, max_ejected: 34% }
      panic_threshold: 25%
      slow_start: 20s
    retries: { attempts: 3, on: [connect_failure, timeout, "502", "503"], budget: 10%, max_body: 8KiB }
    timeouts: { connect: 1s, response: 30s }
    limits: { max_connections: 100, max_pending: 10 }
routes:
  - name: orders
    match: { prefix: /orders }
    upstream: orders
    public: true
    retry_non_idempotent: true
"#;

#[test]
fn upstream_settings_decode_exactly() {
    let c = parse("gw.yaml", FULL_UPSTREAM).expect("valid");
    let u = &c.upstreams[0];
    assert_eq!(u.balance, Balance::ConsistentHash(HashOn::Header(http::HeaderName::from_static("x-account"))));
    assert_eq!((u.targets[0].weight, u.targets[1].weight), (2, 1));
    assert_eq!(u.backup[0].authority.as_str(), "10.0.1.5:9001");
    let a = u.health.active.as_ref().expect("active");
    assert_eq!((a.path.as_str(), a.healthy_after, a.unhealthy_after), ("/healthz", 2, 3));
    assert_eq!(a.statuses, vec![(200, 200), (204, 299)]);
    assert_eq!(u.health.passive.max_eject_for, std::time::Duration::from_secs(120));
    assert_eq!((u.health.passive.max_ejected, u.health.panic_threshold), (34, 25));
    assert_eq!(u.health.slow_start, std::time::Duration::from_secs(20));
    let r = &u.retries;
    assert_eq!((r.attempts, r.on_connect_failure, r.on_reset, r.on_timeout), (3, true, false, true));
    assert_eq!((r.on_statuses.clone(), r.budget, r.max_body), (vec![502, 503], 10, 8192));
    assert_eq!((u.limits.max_connections, u.limits.max_pending), (100, 10));
    assert!(c.routes[0].retry_non_idempotent);
    assert_eq!(c.admin.expect("admin").bind.port(), 9901);
    // Defaults.
    let d = parse("gw.yaml", GOOD).expect("valid");
    let u = &d.upstreams[0];
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.retries, RetryConfig::default());
    assert_eq!(u.health.passive, PassiveHealth::default());
    assert!(u.health.active.is_none() && d.admin.is_none());
}

#[test]
fn bad_upstream_settings() {
    let with = |up: &str| {
        format!(
            "version: 1\nlisteners: [{{ name: p, bind: \"127.0.0.1:1\" }}]\nupstreams:\n  - name: u\n    targets: [{{ url: \"http://127.0.0.1:2\" }}]\n{up}\n"
        )
    };
    let cases = [
        ("    balance: fastest", "upstreams[0].balance: unknown balance `fastest`"),
        ("    balance: consistent_hash", "consistent_hash needs `hash_on`"),
        ("    hash_on: ip", "`hash_on` is set, so `balance` must be `consistent_hash`"),
        ("    balance: consistent_hash\n    hash_on: body", "invalid hash_on `body`"),
        ("    balance: consistent_hash\n    hash_on: \"cookie:a b\"", "invalid hash_on"),
        (
            "    backup: [{ url: \"http://x:1\", weight: 0 }]",
            "backup[0].weight: expected a whole number from 1 to 1000",
        ),
        ("    health: { passive: { max_ejected: 150% } }", "expected a percentage from 0% to 100%"),
        ("    health: { panic_threshold: 50 }", "expected a percentage"),
        ("    health: { passive: { eject_for: 1m, max_eject_for: 10s } }", "must not be shorter than `eject_for`"),
        ("    health: { active: { interval: 5s } }", "health.active.path: missing field `path`"),
        ("    health: { active: { path: healthz } }", "invalid probe path `healthz`"),
        ("    health: { active: { path: /h, statuses: [\"300-200\"] } }", "invalid status `300-200`"),
        ("    health: { active: { path: /h, interval: 10ms } }", "must be at least 50ms"),
        ("    health: { active: { path: /h, host: \"a b\" } }", "invalid host `a b`"),
        ("    retries: { attempts: 0 }", "retries.attempts: expected a whole number from 1 to 10"),
        ("    retries: { on: [sometimes] }", "unknown retry condition `sometimes`"),
        ("    retries: { on: [\"200\"] }", "unknown retry condition `200`"),
        ("    limits: { max_connections: 0 }", "limits.max_connections"),
        ("    tls: {}", "`tls` is for https:// targets; these are http://"),
        ("    protocol: h3", "unknown protocol `h3`; expected http1, h2 or auto"),
        ("    backup: [{ url: \"https://b:1\" }]", "all http:// or all https://"),
        ("    tls: { client_cert: c.pem }", "`client_cert` needs `client_key`"),
        ("    tls: { ca: /nonexistent/ca.pem }", "cannot read `/nonexistent/ca.pem`"),
        ("    tls: { server_name: \"a b\" }", "is not a DNS name or IP address"),
        ("    backup: [{ url: \"http://127.0.0.1:2/\" }]", "127.0.0.1:2 is listed already as upstreams[0].targets[0]"),
    ];
    for (up, want) in cases {
        let e = errors(&with(up));
        assert!(e.iter().any(|m| m.contains(want)), "{up}: wanted `{want}` in {e:?}");
    }
    let clash = "version: 1\nlisteners: [{ name: p, bind: \"127.0.0.1:9901\" }]\nadmin: { bind: \"127.0.0.1:9901\" }\n";
    assert!(errors(clash).iter().any(|m| m.contains("admin.bind: address 127.0.0.1:9901 is bound by a listener")));
    let bad_admin = "version: 1\nlisteners: [{ name: p, bind: \"127.0.0.1:1\" }]\nadmin: { bind: nowhere, port: 3 }\n";
    let e = errors(bad_admin);
    assert!(e.iter().any(|m| m.contains("admin.bind: invalid bind address")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("admin.port: unknown field")), "{e:?}");
}

#[test]
fn tracing_settings() {
    let base = "version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\n";
    let ok = parse(
        "gw.yaml",
        &format!("{base}observability: {{ tracing: {{ otlp: \"http://127.0.0.1:4318\", sample: 0.25 }} }}\n"),
    )
    .expect("valid");
    let t = ok.tracing.expect("tracing");
    assert_eq!(
        (t.endpoint.to_string().as_str(), t.sample, t.service.as_str()),
        ("http://127.0.0.1:4318/v1/traces", 0.25, "portcullis")
    );
    let ok = parse(
        "gw.yaml",
        &format!("{base}observability: {{ tracing: {{ otlp: \"https://otel.example/custom/path\" }} }}\n"),
    )
    .expect("valid");
    assert_eq!(ok.tracing.expect("tracing").endpoint.path(), "/custom/path");
    let e = errors(&format!("{base}observability: {{ tracing: {{ otlp: \"grpc://x:4317\", sample: 2 }} }}\n"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("http:// or https://") && e[1].contains("from 0 to 1"), "{e:?}");
    let e = errors(&format!("{base}observability: {{ tracing: {{ sample: 0.5 }} }}\n"));
    assert!(e[0].contains("missing field `otlp`"), "{e:?}");
}

#[test]
fn rate_limit_settings() {
    let route = |rl: &str, auth: &str| {
        format!("{BASE}routes: [{{ name: r, match: {{ prefix: / }}, upstream: u, {auth}, rate_limit: {rl} }}]\n")
    };
    let ok = parse("gw.yaml", &route("{ key: \"header:x-tenant\", rate: 600/m }", "public: true")).expect("valid");
    let rl = ok.routes[0].rate_limit.clone().expect("limit");
    assert_eq!(
        (rl.key, rl.per_second, rl.burst, rl.max_keys),
        (RateKey::Header("x-tenant".parse().expect("h")), 10.0, 10, 100_000)
    );
    let e = errors(&route("{ key: consumer, rate: 5/s }", "public: true"));
    assert!(e[0].contains("`key: consumer` needs a route with `auth`"), "{e:?}");
    let e = errors(&route("{ key: cookie, rate: 5/d, burst: 0 }", "public: true"));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].contains("unknown key `cookie`") && e[1].contains("like 100/s") && e[2].contains("from 1 to"),
        "{e:?}"
    );
    assert!(parse("gw.yaml", &route("{ key: consumer, rate: 1/h, burst: 5 }", "auth: [api_key]")).is_ok());
}

#[test]
fn protection_rules_decode_and_bad_ones_are_located() {
    let ok = format!(
        "{BASE}protection:\n  bans:\n    - {{ on: auth_failures, threshold: 20, window: 1m, ban_for: 15m }}\n    - {{ on: not_found, threshold: 200, window: 1m, ban_for: 5m, max_ban_for: 1h, key: ip }}\n  ip_rules: {{ allow: [10.0.0.0/8, \"2001:db8::/32\"], deny: [10.9.9.9] }}\n  exempt: [10.1.0.0/16]\n"
    );
    let cfg = crate::config::parse("gw.yaml", &ok).expect("valid");
    let p = &cfg.protection;
    assert_eq!(p.bans.len(), 2);
    assert_eq!(p.bans[0].on, BanTrigger::AuthFailures);
    assert_eq!(p.bans[0].max_ban_for, std::time::Duration::from_secs(86_400));
    assert_eq!(p.bans[1].max_ban_for, std::time::Duration::from_secs(3_600));
    assert!(p.ip_allowed("10.1.2.3".parse().expect("ip")));
    assert!(!p.ip_allowed("10.9.9.9".parse().expect("ip")), "deny wins over allow");
    assert!(!p.ip_allowed("192.0.2.1".parse().expect("ip")), "outside allow");
    assert!(p.ip_allowed("2001:db8::1".parse().expect("ip")));

    let bad = format!(
        "{BASE}protection:\n  bans:\n    - {{ on: bad_vibes, threshold: 0, window: 2d, ban_for: 15m }}\n    - {{ on: auth_failures, threshold: 3, window: 1m, ban_for: 1h, max_ban_for: 1m, key: consumer }}\n  ip_rules: {{ deny: [300.1.1.1, \"::ffff:10.0.0.0/104\"] }}\n  ipv6_prefix: 8\n"
    );
    let e = errors(&bad);
    assert!(e.iter().any(|m| m.contains("protection.bans[0].on: unknown event `bad_vibes`")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.bans[0].threshold: expected a whole number from 1")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.bans[0].window: at most 86400s")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.bans[1].key: a failed authentication has no consumer")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.ip_rules.deny[0]: expected an address or CIDR")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.bans[1].max_ban_for: must be at least `ban_for`")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("protection.ipv6_prefix: expected a whole number from 32 to 128")), "{e:?}");
    // A mapped IPv6 network is the IPv4 one (clients are seen as IPv4).
    let mapped = format!("{BASE}protection: {{ ip_rules: {{ deny: [\"::ffff:10.0.0.0/104\"] }} }}\n");
    let cfg = crate::config::parse("gw.yaml", &mapped).expect("valid");
    assert!(!cfg.protection.ip_allowed("10.1.2.3".parse().expect("ip")));
    assert_eq!(cfg.protection.ipv6_prefix, 64);
}

#[test]
fn quotas_need_a_store_and_a_known_period() {
    let route = "routes: [{ name: r, match: { prefix: / }, upstream: u, auth: [api_key], quota: { limit: 1000, period: month } }]\n";
    let e = errors(&format!("{BASE}{route}"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("routes[0].quota: quotas are kept in the store"), "{e:?}");
    let with_store =
        format!("version: 1\nnode: {{ store: \"sqlite://x.db\" }}\n{}{route}", &BASE["version: 1\n".len()..]);
    let cfg = crate::config::parse("gw.yaml", &with_store).expect("valid");
    let q = cfg.routes[0].quota.as_ref().expect("quota");
    assert_eq!((q.limit, q.period, &q.key), (1000, QuotaPeriod::Month, &RateKey::Consumer));
    let e = errors(&with_store.replace("period: month", "period: fortnight"));
    assert!(e.iter().any(|m| m.contains("routes[0].quota.period: unknown period `fortnight`")), "{e:?}");
    let e = errors(&with_store.replace("auth: [api_key]", "public: true"));
    assert!(e.iter().any(|m| m.contains("routes[0].quota.key: `key: consumer` needs a route with `auth`")), "{e:?}");
}

#[test]
fn cluster_redis_settings() {
    let ok = format!(
        "{BASE}cluster: {{ redis: \"redis://:s3cret@127.0.0.1:6379/2\", redis_failure: closed, redis_timeout: 20ms }}\n"
    );
    let c = crate::config::parse("gw.yaml", &ok).expect("valid").cluster.expect("cluster");
    assert_eq!((c.redis_failure, c.redis_timeout), (RedisFailure::Closed, std::time::Duration::from_millis(20)));
    let defaults = format!("{BASE}cluster: {{ redis: \"redis://127.0.0.1\" }}\n");
    let c = crate::config::parse("gw.yaml", &defaults).expect("valid").cluster.expect("cluster");
    assert_eq!((c.redis_failure, c.redis_timeout), (RedisFailure::Local, std::time::Duration::from_millis(50)));
    let bad = format!(
        "{BASE}cluster: {{ redis: \"http://:s3cret@h\", redis_failure: maybe, redis_timeout: 1m, nodes: 3 }}\n"
    );
    let e = errors(&bad);
    assert!(e.iter().any(|m| m.contains("cluster.redis: expected a URL like redis://")), "{e:?}");
    assert!(e.iter().all(|m| !m.contains("s3cret")), "the password is never echoed: {e:?}");
    assert!(e.iter().any(|m| m.contains("cluster.redis_failure: unknown value `maybe`")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("cluster.redis_timeout: at most 5s")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("cluster.nodes: unknown field")), "{e:?}");
}
