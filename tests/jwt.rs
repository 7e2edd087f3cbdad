//! JWT authentication and identity propagation through real sockets: a real gateway, a real
//! upstream that records what it was sent, and a JWKS server in the test whose key set can be
//! swapped, made to fail, or stopped. Keys are generated at test time; attack tokens are
//! forged by hand (base64url `header.payload.signature`) where a JWT library would refuse to
//! make them.
//!
//! Every refusal is checked for its status, its `WWW-Authenticate` challenge, its
//! problem+json body, and for never reaching the upstream. Waits are polls with a deadline.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaEncoding, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ISS: &str = "https://id.test/";
const AUD: &str = "orders-api";
/// Upper bound for anything that should be quick.
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// PEM armour around DER, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `b64(header).b64(claims).b64(sign(signing input))`.
fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn hmac_sha256(secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, msg).as_ref().to_vec()
}

/// Claims of a valid token for `sub`: right issuer and audience, ten minutes to live.
fn claims(sub: &str) -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now(),
        "exp": now() + 600,
        "scope": "orders:read profile",
    })
}

/// `claims(sub)` with some members replaced (a `null` value removes the member).
fn claims_with(sub: &str, changes: Value) -> Value {
    let mut c = claims(sub);
    let obj = c.as_object_mut().expect("object");
    for (k, v) in changes.as_object().expect("changes object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

struct RsaKey {
    kid: String,
    pair: RsaKeyPair,
}

impl RsaKey {
    fn new(kid: &str) -> RsaKey {
        RsaKey { kid: kid.to_string(), pair: RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa keygen") }
    }

    /// The public key as a JWK (RFC 7517/7518).
    fn jwk(&self) -> Value {
        let pk = self.pair.public_key();
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
            "n": b64(pk.modulus().big_endian_without_leading_zero()),
            "e": b64(pk.exponent().big_endian_without_leading_zero()),
        })
    }

    /// SubjectPublicKeyInfo DER.
    fn spki_der(&self) -> Vec<u8> {
        self.pair.public_key().as_der().expect("spki der").as_ref().to_vec()
    }

    /// PKCS#1 `RSAPublicKey` DER.
    fn pkcs1_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    fn spki_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der())
    }

    fn sign(&self, enc: &'static dyn RsaEncoding, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair.sign(enc, &SystemRandom::new(), msg, &mut sig).expect("rsa sign");
        sig
    }

    /// An RS256 token with this key's `kid`.
    fn token(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        jws(&header, claims, |m| self.sign(&signature::RSA_PKCS1_SHA256, m))
    }
}

struct EcKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl EcKey {
    fn new(kid: &str) -> EcKey {
        EcKey {
            kid: kid.to_string(),
            pair: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec keygen"),
        }
    }

    fn spki_pem(&self) -> String {
        let der = self.pair.public_key().as_der().expect("spki der");
        pem("PUBLIC KEY", der.as_ref())
    }

    /// An ES256 token (signature in the fixed r||s form JWS wants).
    fn token(&self, claims: &Value) -> String {
        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        jws(&header, claims, |m| self.pair.sign(&SystemRandom::new(), m).expect("ec sign").as_ref().to_vec())
    }
}

// ---------------------------------------------------------------------------------------
// A JWKS server whose answer can be swapped, made to fail, or stopped
// ---------------------------------------------------------------------------------------

fn jwks_doc(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

#[derive(Clone)]
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    /// Answer 500 to everything.
    failing: Arc<AtomicBool>,
    /// The `issuer` its OpenID configuration names (default: its own URL).
    discovery_issuer: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

impl JwksServer {
    async fn start(keys: &[Value]) -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let srv = JwksServer {
            addr: l.local_addr().expect("addr"),
            body: Arc::new(Mutex::new(jwks_doc(keys))),
            hits: Arc::default(),
            failing: Arc::default(),
            discovery_issuer: Arc::default(),
            stop: CancellationToken::new(),
        };
        let s = srv.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = s.stop.cancelled() => return,
                };
                let stop = s.stop.clone();
                let s2 = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s3 = s2.clone();
                        async move { Ok::<_, Infallible>(s3.answer(&req)) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(sock), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                });
            }
        });
        srv
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<TestBody> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let mut res = if self.failing.load(Ordering::SeqCst) {
            let mut r = Response::new(full("internal error"));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        } else if req.uri().path() == "/.well-known/openid-configuration" {
            let issuer = self.discovery_issuer.lock().clone().unwrap_or_else(|| format!("http://{}", self.addr));
            let doc = json!({ "issuer": issuer, "jwks_uri": self.url() }).to_string();
            let mut r = Response::new(full(doc));
            r.headers_mut().insert("content-type", "application/json".parse().expect("hv"));
            r
        } else if req.uri().path() != "/jwks.json" {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r
        } else {
            let mut r = Response::new(full(self.body.lock().clone()));
            r.headers_mut().insert("content-type", "application/json".parse().expect("hv"));
            r
        };
        res.headers_mut().insert("cache-control", "no-store".parse().expect("hv"));
        res
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set_keys(&self, keys: &[Value]) {
        *self.body.lock() = jwks_doc(keys);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Close the listener and every open connection (connection refused from now on).
    fn stop(&self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------
// Gateway config and requests
// ---------------------------------------------------------------------------------------

/// One listener, one upstream `app`, a public route `/public` and a JWT route `/private`
/// (plus `extra_routes`), and one issuer with the given key source line, algorithms and
/// extra issuer fields (`leeway: 0s` always).
fn config(
    up: SocketAddr,
    key_source: &str,
    algorithms: &str,
    issuer_extra: &[(&str, &str)],
    extra_routes: &str,
) -> String {
    let extra: String = issuer_extra.iter().map(|(k, v)| format!("      {k}: {v}\n")).collect();
    format!(
        r#"version: 1
listeners:
  - name: public
    bind: "127.0.0.1:0"
    limits: {{ max_header_bytes: 64KiB }}
upstreams:
  - name: app
    targets: [{{ url: "http://{up}" }}]
    timeouts: {{ connect: 1s, response: 5s }}
routes:
  - name: open
    match: {{ prefix: /public }}
    upstream: app
    public: true
  - name: private
    match: {{ prefix: /private }}
    upstream: app
    auth: [jwt]
{extra_routes}auth:
  jwt:
    - issuer: "{ISS}"
      audiences: [{AUD}]
      algorithms: [{algorithms}]
      {key_source}
      leeway: 0s
{extra}  identity_headers: {{ prefix: "x-consumer-" }}
"#
    )
}

fn jwks_source(j: &JwksServer) -> String {
    format!("jwks_url: \"{}\"", j.url())
}

/// `keys: [{ kid, pem }]` on one line (the PEM's newlines escaped in a YAML double-quoted string).
fn inline_source(kid: &str, pem: &str) -> String {
    format!("keys: [{{ kid: {kid}, pem: \"{}\" }}]", pem.replace('\n', "\\n"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// GET `path` with an optional `Authorization` value.
async fn call(gw: &TestGateway, path: &str, authorization: Option<&str>) -> (u16, HeaderMap, String) {
    let mut req = Request::get(gw.url(path));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    tokio::time::timeout(T, send(req.body(full("")).expect("request"))).await.expect("gateway answered in time")
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Raw HTTP/1.1 GET (exact bytes: header-name casing and path spelling kept).
async fn raw(gw: &TestGateway, target: &str, extra_headers: &str) -> (u16, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n");
    let (resp, _) = raw_exchange(gw.addr(), req.as_bytes(), T).await;
    (status_of(&resp), resp)
}

/// Every value of a header, in order.
fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

/// The identity-prefixed headers, for failure messages.
fn consumer_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter(|(n, _)| n.as_str().starts_with("x-consumer-"))
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

fn www_authenticate(h: &HeaderMap) -> String {
    values(h, "www-authenticate").join(", ")
}

/// A problem+json body with the members RFC 9457 and the spec ask for.
fn check_problem(case: &str, want: u16, res: &(u16, HeaderMap, String)) -> Result<(), String> {
    let (status, headers, body) = res;
    if *status != want {
        return Err(format!("{case}: expected {want}, got {status}: {body}"));
    }
    let ct = headers.get("content-type").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if ct.as_deref() != Some("application/problem+json") {
        return Err(format!("{case}: content-type {ct:?}, not application/problem+json: {body}"));
    }
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("{case}: problem+json does not parse ({e}): {body}"))?;
    if v["status"] != want {
        return Err(format!("{case}: problem status member is not {want}: {body}"));
    }
    for k in ["type", "title", "detail", "request_id"] {
        if !v[k].is_string() {
            return Err(format!("{case}: problem+json lacks `{k}`: {body}"));
        }
    }
    Ok(())
}

/// A 401 problem+json with a Bearer challenge (and `error="invalid_token"` when asked).
fn check_401(case: &str, res: &(u16, HeaderMap, String), invalid_token: bool) -> Result<(), String> {
    check_problem(case, 401, res)?;
    let w = www_authenticate(&res.1);
    if !w.to_ascii_lowercase().contains("bearer") {
        return Err(format!("{case}: WWW-Authenticate must name the Bearer scheme, got {w:?}"));
    }
    if invalid_token && !w.contains("error=\"invalid_token\"") {
        return Err(format!("{case}: WWW-Authenticate must say error=\"invalid_token\", got {w:?}"));
    }
    Ok(())
}

fn expect_401(case: &str, res: &(u16, HeaderMap, String), invalid_token: bool) {
    if let Err(e) = check_401(case, res, invalid_token) {
        panic!("{e}");
    }
    problem(401, &res.1, &res.2);
}

fn expect_problem(case: &str, want: u16, res: &(u16, HeaderMap, String)) {
    if let Err(e) = check_problem(case, want, res) {
        panic!("{e}");
    }
    problem(want, &res.1, &res.2);
}

// ---------------------------------------------------------------------------------------
// 1. A valid token, identity headers, spoofed headers
// ---------------------------------------------------------------------------------------

/// Client headers under the identity prefix, in several casings, each with a value an
/// attacker would like the upstream to believe.
const SPOOFS: &str = "x-consumer-id: admin\r\n\
X-Consumer-Groups: root\r\n\
x-consumer-anything: 1\r\n\
X-CONSUMER-SUBJECT: root\r\n\
X-Consumer-Scopes: admin:all\r\n\
x-CoNsUmEr-AuTh: jwt\r\n";
const SPOOF_VALUES: [&str; 5] = ["admin", "root", "1", "admin:all", "jwt"];

#[tokio::test]
async fn valid_rs256_token_passes_with_identity_headers_and_spoofed_ones_removed() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let jwks = JwksServer::start(&[k1.jwk()]).await;
    let gw = TestGateway::start(&config(up.addr, &jwks_source(&jwks), "RS256", &[], "")).await;
    let token = k1.token(&claims("alice"));

    let (status, resp) = raw(&gw, "/private/orders?x=1", &format!("Authorization: Bearer {token}\r\n{SPOOFS}")).await;
    assert_eq!(status, 200, "valid token refused: {resp}");
    assert_eq!(up.count(), 1);
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/private/orders?x=1");
    let all = consumer_headers(&seen.headers);
    assert_eq!(values(&seen.headers, "x-consumer-id"), ["alice"], "x-consumer-id (all identity headers: {all:?})");
    assert_eq!(values(&seen.headers, "x-consumer-subject"), ["alice"], "x-consumer-subject ({all:?})");
    assert_eq!(values(&seen.headers, "x-consumer-scopes"), ["orders:read profile"], "x-consumer-scopes ({all:?})");
    assert_eq!(values(&seen.headers, "x-consumer-auth"), ["jwt"], "x-consumer-auth ({all:?})");
    assert!(
        values(&seen.headers, "x-consumer-groups").iter().all(|v| !v.contains("root")),
        "the client's X-Consumer-Groups reached the upstream: {all:?}"
    );
    assert!(
        values(&seen.headers, "x-consumer-anything").is_empty(),
        "x-consumer-anything reached the upstream: {all:?}"
    );
    assert_eq!(values(&seen.headers, "authorization"), [bearer(&token)], "Authorization must be forwarded unchanged");

    // the same spoofs on a public route: stripped too, nothing set in their place
    let (status, resp) = raw(&gw, "/public/x", SPOOFS).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(up.count(), 2);
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/public/x");
    let all = consumer_headers(&seen.headers);
    for name in ["x-consumer-id", "x-consumer-groups", "x-consumer-anything", "x-consumer-subject", "x-consumer-scopes"]
    {
        assert!(
            values(&seen.headers, name).is_empty(),
            "public route: client-sent {name} reached the upstream: {all:?}"
        );
    }
    for (name, value) in &all {
        assert!(!SPOOF_VALUES.contains(&value.as_str()), "public route: spoofed {name}: {value} reached the upstream");
    }

    // the auth scheme is case-insensitive (RFC 9110 §11.1)
    let res = call(&gw, "/private/lower", Some(&format!("bearer {token}"))).await;
    assert_eq!(res.0, 200, "`bearer` (lower case) scheme refused: {}", res.2);
    assert_eq!(up.count(), 3);
}

/// Beyond the brief: CGI/WSGI/PHP backends map `x_consumer_id` and `x-consumer-id` to the
/// same variable (HTTP_X_CONSUMER_ID), so an underscore spelling must not get through either.
#[tokio::test]
async fn identity_headers_spelled_with_underscores_do_not_reach_the_upstream() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let gw = TestGateway::start(&config(up.addr, &inline_source("k1", &k1.spki_pem()), "RS256", &[], "")).await;
    let token = k1.token(&claims("alice"));
    let spoof = "x_consumer_id: admin\r\nX_Consumer_Groups: root\r\n";
    let mut failures = Vec::new();
    for (path, auth) in [("/public/u", String::new()), ("/private/u", format!("Authorization: Bearer {token}\r\n"))] {
        let before = up.count();
        let (status, resp) = raw(&gw, path, &format!("{auth}{spoof}")).await;
        assert!(matches!(status, 200 | 400), "{path}: {resp}");
        if status == 200 {
            assert_eq!(up.count(), before + 1);
            let seen = up.last();
            let leaked: Vec<_> = seen
                .headers
                .iter()
                .filter(|(n, _)| n.as_str().replace('_', "-").starts_with("x-consumer-"))
                .filter(|(_, v)| v.as_bytes() == b"admin" || v.as_bytes() == b"root")
                .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            if !leaked.is_empty() {
                failures.push(format!("{path}: underscore-spelled identity headers reached the upstream: {leaked:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 2. Attacks: 401, never the upstream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_attacks_get_401_and_never_reach_the_upstream() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let jwks = JwksServer::start(&[k1.jwk()]).await;
    let gw = TestGateway::start(&config(up.addr, &jwks_source(&jwks), "RS256", &[], "")).await;
    let good = claims("alice");
    let valid = k1.token(&good);

    // the setup works: a valid token passes
    let res = call(&gw, "/private/x", Some(&bearer(&valid))).await;
    assert_eq!(res.0, 200, "valid token refused: {}", res.2);
    assert_eq!(up.count(), 1);

    let enc = |v: &Value| b64(v.to_string().as_bytes());
    let (valid_h, valid_sig) = {
        let parts: Vec<&str> = valid.split('.').collect();
        (parts[0].to_string(), parts[2].to_string())
    };
    // an attacker's own key, offered through token headers the gateway must never follow
    let attacker = RsaKey::new("k-attacker");
    let attacker_jwks = JwksServer::start(&[attacker.jwk()]).await;
    let mut attacks: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| attacks.push((name.to_string(), token));

    // alg none, unsigned (empty signature), in several spellings, with and without a kid
    for alg in ["none", "None", "NONE", "nOnE"] {
        add(&format!("alg {alg}"), format!("{}.{}.", enc(&json!({ "alg": alg, "typ": "JWT" })), enc(&good)));
    }
    add("alg none with kid k1", format!("{}.{}.", enc(&json!({ "alg": "none", "kid": "k1" })), enc(&good)));
    add(
        "alg none with the valid signature",
        format!("{}.{}.{valid_sig}", enc(&json!({ "alg": "none", "kid": "k1" })), enc(&good)),
    );
    // key confusion: HS256 with the RSA public key as the HMAC secret
    let pem_text = k1.spki_pem();
    let confusion_secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PEM", pem_text.clone().into_bytes()),
        ("PEM without trailing newline", pem_text.trim_end().as_bytes().to_vec()),
        ("SPKI DER", k1.spki_der()),
        ("PKCS#1 DER", k1.pkcs1_der()),
        ("JWK JSON", k1.jwk().to_string().into_bytes()),
    ];
    for (label, secret) in &confusion_secrets {
        let h = json!({ "alg": "HS256", "typ": "JWT", "kid": "k1" });
        add(&format!("HS256 signed with the RSA public key ({label})"), jws(&h, &good, |m| hmac_sha256(secret, m)));
    }
    // keys
    add("unknown kid", RsaKey::new("k-unknown").token(&good));
    add("another key claiming kid k1", RsaKey::new("k1").token(&good));
    add("no kid, signed by another key", {
        let other = RsaKey::new("x");
        jws(&json!({ "alg": "RS256", "typ": "JWT" }), &good, |m| other.sign(&signature::RSA_PKCS1_SHA256, m))
    });
    // time
    add("expired", k1.token(&claims_with("alice", json!({ "exp": now() - 60, "iat": now() - 700 }))));
    add("not yet valid (nbf)", k1.token(&claims_with("alice", json!({ "nbf": now() + 600 }))));
    add("missing exp", k1.token(&claims_with("alice", json!({ "exp": null }))));
    add("exp as a string", k1.token(&claims_with("alice", json!({ "exp": (now() + 600).to_string() }))));
    // issuer and audience
    add("wrong iss", k1.token(&claims_with("alice", json!({ "iss": "https://evil.test/" }))));
    add("iss without the trailing slash", k1.token(&claims_with("alice", json!({ "iss": "https://id.test" }))));
    add("missing iss", k1.token(&claims_with("alice", json!({ "iss": null }))));
    add("wrong aud", k1.token(&claims_with("alice", json!({ "aud": "other-api" }))));
    add("wrong aud list", k1.token(&claims_with("alice", json!({ "aud": ["other-api", "billing"] }))));
    add("missing aud", k1.token(&claims_with("alice", json!({ "aud": null }))));
    // integrity
    add(
        "tampered payload (sub changed, signature kept)",
        format!(
            "{valid_h}.{}.{valid_sig}",
            enc(&claims_with("admin", json!({ "exp": good["exp"], "iat": good["iat"] })))
        ),
    );
    add(
        "tampered payload (scope widened, signature kept)",
        format!(
            "{valid_h}.{}.{valid_sig}",
            enc(&claims_with(
                "alice",
                json!({ "scope": "orders:read orders:admin", "exp": good["exp"], "iat": good["iat"] })
            ))
        ),
    );
    add("bad signature (random bytes)", {
        let mut sig = vec![0u8; 256];
        aws_lc_rs::rand::fill(&mut sig).expect("random");
        format!("{valid_h}.{}.{}", enc(&good), b64(&sig))
    });
    add("signature stripped", format!("{valid_h}.{}.", enc(&good)));
    // shape
    add("malformed base64", "!!!.@@@.###".to_string());
    add("two parts", format!("{valid_h}.{}", enc(&good)));
    add("five parts (JWE shape)", format!("{valid}.x.y"));
    add("header not JSON", format!("{}.{}.{valid_sig}", b64(b"not json"), enc(&good)));
    add("padded base64", format!("{valid}=="));
    add(
        "oversized (> 8 KiB, validly signed)",
        k1.token(&claims_with("alice", json!({ "pad": "x".repeat(10 * 1024) }))),
    );
    // algorithm not in the config
    add("RS512 (config allows RS256 only)", {
        let h = json!({ "alg": "RS512", "typ": "JWT", "kid": "k1" });
        jws(&h, &good, |m| k1.sign(&signature::RSA_PKCS1_SHA512, m))
    });
    add("PS256 (config allows RS256 only)", {
        let h = json!({ "alg": "PS256", "typ": "JWT", "kid": "k1" });
        jws(&h, &good, |m| k1.sign(&signature::RSA_PSS_SHA256, m))
    });
    // keys named by the token itself (RFC 7515 §4.1.2-4.1.5; CVE-2018-0114 for `jwk`)
    for (label, kid) in [("embedded jwk", "k-attacker"), ("embedded jwk claiming kid k1", "k1")] {
        let h = json!({ "alg": "RS256", "typ": "JWT", "kid": kid, "jwk": attacker.jwk() });
        add(label, jws(&h, &good, |m| attacker.sign(&signature::RSA_PKCS1_SHA256, m)));
    }
    for (label, kid) in [("jku to the attacker's JWKS", "k-attacker"), ("jku to the attacker's JWKS, kid k1", "k1")] {
        let h = json!({ "alg": "RS256", "typ": "JWT", "kid": kid, "jku": attacker_jwks.url() });
        add(label, jws(&h, &good, |m| attacker.sign(&signature::RSA_PKCS1_SHA256, m)));
    }
    add("x5u to the attacker", {
        let h = json!({ "alg": "RS256", "typ": "JWT", "kid": "k-attacker", "x5u": attacker_jwks.url() });
        jws(&h, &good, |m| attacker.sign(&signature::RSA_PKCS1_SHA256, m))
    });
    // a critical extension the gateway cannot understand (RFC 7515 §4.1.11), validly signed
    add("crit header extension", {
        let h = json!({ "alg": "RS256", "typ": "JWT", "kid": "k1", "crit": ["x-unknown"], "x-unknown": true });
        jws(&h, &good, |m| k1.sign(&signature::RSA_PKCS1_SHA256, m))
    });

    let mut failures = Vec::new();
    for (name, token) in &attacks {
        let before = up.count();
        let res = call(&gw, "/private/x", Some(&bearer(token))).await;
        if let Err(e) = check_401(name, &res, true) {
            failures.push(e);
        }
        if up.count() != before {
            failures.push(format!("{name}: REACHED THE UPSTREAM (status {})", res.0));
        }
    }

    // not a bearer token at all
    let non_tokens: [(&str, Option<String>); 5] = [
        ("no Authorization header", None),
        ("Authorization: Basic", Some("Basic YWxpY2U6c2VjcmV0".to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
        ("bare `Bearer`", Some("Bearer".to_string())),
        ("token without a scheme", Some(valid.clone())),
    ];
    for (name, auth) in &non_tokens {
        let before = up.count();
        let res = call(&gw, "/private/x", auth.as_deref()).await;
        if let Err(e) = check_401(name, &res, false) {
            failures.push(e);
        }
        if up.count() != before {
            failures.push(format!("{name}: REACHED THE UPSTREAM (status {})", res.0));
        }
    }
    // two Authorization headers (a valid token and another): ambiguous, refused
    for (name, second) in
        [("two Authorization headers", bearer(&valid)), ("valid token plus Basic", "Basic YQ==".into())]
    {
        let before = up.count();
        let req = Request::get(gw.url("/private/x"))
            .header("authorization", bearer(&valid))
            .header("authorization", second)
            .body(full(""))
            .expect("request");
        let res = send(req).await;
        if let Err(e) = check_401(name, &res, false) {
            failures.push(e);
        }
        if up.count() != before {
            failures.push(format!("{name}: REACHED THE UPSTREAM (status {})", res.0));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        attacks.len() + non_tokens.len() + 2,
        failures.join("\n")
    );
    assert_eq!(attacker_jwks.hits(), 0, "the gateway fetched keys from a URL named in a token");

    // and the gateway still lets the valid token through
    let res = call(&gw, "/private/x", Some(&bearer(&valid))).await;
    assert_eq!(res.0, 200, "valid token refused after the attacks: {}", res.2);
    assert_eq!(up.count(), 2);
}

// ---------------------------------------------------------------------------------------
// 3. ES256 with an inline key
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn es256_with_an_inline_pem_key() {
    let up = TestUpstream::start("app").await;
    let e1 = EcKey::new("e1");
    let gw = TestGateway::start(&config(up.addr, &inline_source("e1", &e1.spki_pem()), "ES256", &[], "")).await;

    let res = call(&gw, "/private/es", Some(&bearer(&e1.token(&claims("bob"))))).await;
    assert_eq!(res.0, 200, "valid ES256 token refused: {}", res.2);
    assert_eq!(up.count(), 1);
    assert_eq!(values(&up.last().headers, "x-consumer-id"), ["bob"]);

    // another P-256 key claiming the same kid
    let res = call(&gw, "/private/es", Some(&bearer(&EcKey::new("e1").token(&claims("bob"))))).await;
    expect_401("ES256 token signed by another key", &res, true);
    // an RS256 token is not accepted by an ES256-only issuer
    let res = call(&gw, "/private/es", Some(&bearer(&RsaKey::new("e1").token(&claims("bob"))))).await;
    expect_401("RS256 token for an ES256 issuer", &res, true);
    assert_eq!(up.count(), 1, "a refused token reached the upstream");
}

// ---------------------------------------------------------------------------------------
// 4. JWKS rotation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_a_restart() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let k2 = RsaKey::new("k2");
    let jwks = JwksServer::start(&[k1.jwk()]).await;
    let timing = [("refresh", "5m"), ("min_refresh", "0s")];
    let gw = TestGateway::start(&config(up.addr, &jwks_source(&jwks), "RS256", &timing, "")).await;
    let t1 = k1.token(&claims("alice"));
    let t2 = k2.token(&claims("bob"));

    let res = call(&gw, "/private/r", Some(&bearer(&t1))).await;
    assert_eq!(res.0, 200, "k1 token refused: {}", res.2);

    // rotate: k2 in, k1 out
    jwks.set_keys(&[k2.jwk()]);
    let hits = jwks.hits();
    let res = call(&gw, "/private/r", Some(&bearer(&t2))).await;
    assert_eq!(res.0, 200, "the first request with the new kid k2 should succeed (unknown kid -> refetch): {}", res.2);
    assert!(jwks.hits() > hits, "no JWKS refetch happened for the unknown kid");
    assert_eq!(values(&up.last().headers, "x-consumer-id"), ["bob"]);

    let before = up.count();
    let res = call(&gw, "/private/r", Some(&bearer(&t1))).await;
    expect_401("k1 token after k1 was removed from the JWKS", &res, true);
    assert_eq!(up.count(), before, "a token with a removed key reached the upstream");

    // k2 keeps working
    let res = call(&gw, "/private/r", Some(&bearer(&t2))).await;
    assert_eq!(res.0, 200, "{}", res.2);
}

// ---------------------------------------------------------------------------------------
// 5. Stale-if-error
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_server_is_down() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let jwks = JwksServer::start(&[k1.jwk()]).await;
    let timing = [("refresh", "200ms"), ("min_refresh", "0s")];
    let gw = TestGateway::start(&config(up.addr, &jwks_source(&jwks), "RS256", &timing, "")).await;
    let auth = bearer(&k1.token(&claims("alice")));

    let res = call(&gw, "/private/s", Some(&auth)).await;
    assert_eq!(res.0, 200, "{}", res.2);

    // phase 1: the JWKS server answers 500; wait for at least three failed refreshes
    jwks.failing.store(true, Ordering::SeqCst);
    let hits = jwks.hits();
    let deadline = tokio::time::Instant::now() + T;
    let mut statuses = Vec::new();
    while jwks.hits() < hits + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no three background refreshes (refresh: 200ms) against the failing JWKS server within {T:?}: {} hits",
            jwks.hits() - hits
        );
        statuses.push(call(&gw, "/private/s", Some(&auth)).await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "cached key refused while the JWKS server answers 500: {statuses:?}");

    // phase 2: the JWKS server is gone (connection refused) for five refresh periods
    jwks.stop();
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut statuses = Vec::new();
    while tokio::time::Instant::now() < until {
        statuses.push(call(&gw, "/private/s", Some(&auth)).await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "cached key refused while the JWKS server is down: {statuses:?}");
    assert!(up.count() >= 2 + statuses.len());
}

// ---------------------------------------------------------------------------------------
// 6. No key ever fetched: 503
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn no_key_ever_fetched_is_503_not_401() {
    let up = TestUpstream::start("app").await;
    let dead_port = dead_port();
    let dead = dead_port.addr;
    let src = format!("jwks_url: \"http://{dead}/jwks.json\"");
    let gw = TestGateway::start(&config(up.addr, &src, "RS256", &[], "")).await;
    let k1 = RsaKey::new("k1");
    let auth = bearer(&k1.token(&claims("alice")));

    let res = call(&gw, "/private/x", Some(&auth)).await;
    expect_problem("well-formed token, JWKS unreachable since start", 503, &res);
    let res = call(&gw, "/private/x", Some(&auth)).await;
    expect_problem("well-formed token, JWKS unreachable since start (again)", 503, &res);

    // the caller's own faults are still the caller's
    let res = call(&gw, "/private/x", None).await;
    expect_401("no credentials, JWKS unreachable", &res, false);
    let res = call(&gw, "/private/x", Some(&bearer("!!!.@@@.###"))).await;
    expect_401("malformed token, JWKS unreachable", &res, true);

    assert_eq!(up.count(), 0, "a request reached the upstream without a verified token");
}

/// While an identity provider is down and no key was ever fetched, callers get 503 without
/// each of them causing a fetch: request-triggered fetches obey `min_refresh`.
#[tokio::test]
async fn an_outage_before_any_key_does_not_become_a_fetch_flood() {
    let up = TestUpstream::start("app").await;
    let jwks = JwksServer::start(&[]).await;
    jwks.failing.store(true, Ordering::SeqCst);
    let gw = TestGateway::start(&config(up.addr, &jwks_source(&jwks), "RS256", &[("min_refresh", "1m")], "")).await;
    let auth = bearer(&RsaKey::new("k1").token(&claims("alice")));
    for i in 0..20 {
        let res = call(&gw, "/private/x", Some(&auth)).await;
        expect_problem(&format!("request {i} during the outage"), 503, &res);
    }
    // The fetch at start, and at most the background retry (after 1 s) if the machine is slow.
    assert!(jwks.hits() <= 2, "{} JWKS fetches for 20 requests", jwks.hits());
    assert_eq!(up.count(), 0);
}

// ---------------------------------------------------------------------------------------
// 7. allow rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn allow_rules_scopes_and_claims() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let routes = r#"  - name: orders
    match: { prefix: /orders }
    upstream: app
    auth: [jwt]
    allow: { scopes: ["orders:read"] }
  - name: tenant
    match: { prefix: /tenant }
    upstream: app
    auth: [jwt]
    allow: { claims: { tenant: [acme] } }
"#;
    let gw = TestGateway::start(&config(up.addr, &inline_source("k1", &k1.spki_pem()), "RS256", &[], routes)).await;
    let tok = |changes: Value| bearer(&k1.token(&claims_with("alice", changes)));

    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("scope lacking orders:read", "/orders/1", tok(json!({ "scope": "profile orders:write" })), 403),
        ("scope with a longer look-alike", "/orders/1", tok(json!({ "scope": "orders:readx xorders:read" })), 403),
        ("no scope at all", "/orders/1", tok(json!({ "scope": null })), 403),
        ("scope string with orders:read", "/orders/1", tok(json!({ "scope": "profile orders:read" })), 200),
        ("scp array with orders:read", "/orders/1", tok(json!({ "scope": null, "scp": ["orders:read", "x"] })), 200),
        ("tenant acme", "/tenant/1", tok(json!({ "tenant": "acme" })), 200),
        ("tenant evil", "/tenant/1", tok(json!({ "tenant": "evil" })), 403),
        ("tenant ACME (case differs)", "/tenant/1", tok(json!({ "tenant": "ACME" })), 403),
        ("no tenant claim", "/tenant/1", tok(json!({})), 403),
    ];
    for (name, path, auth, want) in &cases {
        let before = up.count();
        let res = call(&gw, path, Some(auth)).await;
        if *want == 200 {
            assert_eq!(res.0, 200, "{name}: {}", res.2);
            assert_eq!(up.count(), before + 1, "{name}");
        } else {
            expect_problem(name, *want, &res);
            assert_eq!(up.count(), before, "{name}: a forbidden request reached the upstream");
        }
    }
    // scopes from an `scp` array go upstream space-separated
    let res = call(&gw, "/orders/2", Some(&tok(json!({ "scope": null, "scp": ["orders:read", "profile"] })))).await;
    assert_eq!(res.0, 200, "{}", res.2);
    assert_eq!(values(&up.last().headers, "x-consumer-scopes"), ["orders:read profile"]);

    // an invalid token on an allow-guarded route is 401, not 403
    let res = call(&gw, "/orders/1", Some(&bearer(&RsaKey::new("k1").token(&claims("alice"))))).await;
    expect_401("bad signature on an allow route", &res, true);
    let res = call(&gw, "/orders/1", None).await;
    expect_401("no credentials on an allow route", &res, false);
}

// ---------------------------------------------------------------------------------------
// 8. Path tricks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn path_tricks_do_not_reach_the_protected_route_without_credentials() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let gw = TestGateway::start(&config(up.addr, &inline_source("k1", &k1.spki_pem()), "RS256", &[], "")).await;

    // (request target, expected status)
    let cases: [(&str, u16); 14] = [
        ("/public/../private", 401),
        ("/public/%2e%2e/private", 401),
        ("/public/%2E%2E/private", 401),
        ("/public/.%2e/private", 401),
        ("//private", 401),
        ("/private/", 401),
        ("/./private", 401),
        ("/%70rivate", 401),
        ("/public/..%2fprivate", 400),
        ("/public/..;/private", 400),
        ("/PRIVATE", 404),
        ("/private.", 404),
        ("/private%2f", 404),
        ("/Private/x", 404),
    ];
    let mut observed = Vec::new();
    for (target, _) in &cases {
        let before = up.count();
        let (status, resp) = raw(&gw, target, "").await;
        let reached = (up.count() > before).then(|| up.last().path_and_query);
        observed.push((target, status, reached, resp));
    }
    let report: Vec<String> = observed.iter().map(|(t, s, r, _)| format!("{t} -> {s} (upstream saw {r:?})")).collect();
    let report = report.join("\n");
    for ((target, want), (_, status, reached, resp)) in cases.iter().zip(&observed) {
        assert!(matches!(status, 200 | 400 | 401 | 404), "{target}: {resp}\nall:\n{report}");
        if let Some(p) = reached {
            assert!(
                !p.to_ascii_lowercase().starts_with("/private"),
                "{target} reached the upstream as {p}\nall:\n{report}"
            );
            assert!(p.starts_with("/public/"), "{target} reached the upstream as {p}\nall:\n{report}");
        }
        assert_eq!(status, want, "{target}\nall:\n{report}");
        if *status == 401 {
            let lower = resp.to_ascii_lowercase();
            assert!(lower.contains("www-authenticate: bearer"), "{target}: 401 without a Bearer challenge: {resp}");
        }
    }
    for s in up.seen.lock().iter() {
        assert!(
            !s.path_and_query.to_ascii_lowercase().starts_with("/private"),
            "the upstream saw {}\nall:\n{report}",
            s.path_and_query
        );
    }

    // with a token, the same normalisation takes the request to /private (so 401 above was auth)
    let token = k1.token(&claims("alice"));
    let (status, resp) = raw(&gw, "/public/%2e%2e/private/x", &format!("Authorization: Bearer {token}\r\n")).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(up.last().path_and_query, "/private/x");
    assert_eq!(values(&up.last().headers, "x-consumer-id"), ["alice"]);
}

// ---------------------------------------------------------------------------------------
// 9. Config validation
// ---------------------------------------------------------------------------------------

fn validation_config(route_extra: &str, algorithms: &str) -> String {
    format!(
        r#"version: 1
listeners: [{{ name: public, bind: "127.0.0.1:0" }}]
upstreams: [{{ name: app, targets: [{{ url: "http://127.0.0.1:9" }}] }}]
routes:
  - name: open
    match: {{ prefix: /public }}
    upstream: app
    public: true
  - name: private
    match: {{ prefix: /private }}
    upstream: app
{route_extra}auth:
  jwt:
    - issuer: "{ISS}"
      audiences: [{AUD}]
      algorithms: [{algorithms}]
      jwks_url: "http://127.0.0.1:9/jwks.json"
"#
    )
}

#[tokio::test]
async fn config_refuses_unauthenticated_routes_and_unsafe_algorithms() {
    let ok = validation_config("    auth: [jwt]\n", "RS256");
    if let Err(e) = portcullis::config::parse("gw.yaml", &ok) {
        panic!("the base config should be valid:\n{e}");
    }

    let no_auth = validation_config("", "RS256");
    match portcullis::config::parse("gw.yaml", &no_auth) {
        Ok(_) => panic!("a route with neither `auth` nor `public: true` was accepted"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("auth"), "the error should mention `auth`: {text}");
            assert!(text.contains("routes[1]"), "the error should point at the route: {text}");
        }
    }

    for algs in ["none", "None", "HS256, RS256", "RS256, HS256"] {
        let src = validation_config("    auth: [jwt]\n", algs);
        match portcullis::config::parse("gw.yaml", &src) {
            Ok(_) => panic!("algorithms: [{algs}] was accepted"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("algorithms"),
                    "algorithms: [{algs}]: the error should name `algorithms`: {text}"
                );
            }
        }
    }
}

/// A token verified once is remembered, but not past its `exp`.
#[tokio::test]
async fn a_remembered_token_still_expires() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let gw = TestGateway::start(&config(up.addr, &inline_source("k1", &k1.spki_pem()), "RS256", &[], "")).await;
    let exp = now() + 2;
    let auth = bearer(&k1.token(&claims_with("alice", json!({ "exp": exp }))));
    for _ in 0..3 {
        assert_eq!(call(&gw, "/private/x", Some(&auth)).await.0, 200);
    }
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = call(&gw, "/private/x", Some(&auth)).await;
    expect_401("the same token after its exp", &res, true);
    assert_eq!(up.count(), 3);
}

/// `discovery: true`: the keys are found through `{issuer}/.well-known/openid-configuration`,
/// whose `issuer` must be the configured one.
#[tokio::test]
async fn keys_found_by_openid_discovery() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let idp = JwksServer::start(&[k1.jwk()]).await;
    let issuer = format!("http://{}", idp.addr);
    let yaml = config(up.addr, "discovery: true", "RS256", &[], "").replace(ISS, &issuer);
    let gw = TestGateway::start(&yaml).await;
    let token = |iss: &str| {
        let mut c = claims("alice");
        c["iss"] = json!(iss);
        bearer(&k1.token(&c))
    };
    assert_eq!(call(&gw, "/private/x", Some(&token(&issuer))).await.0, 200);
    assert_eq!(up.last().headers["x-consumer-subject"], "alice");
    assert!(idp.hits() >= 2, "the configuration, then the JWKS");

    // A discovery document naming another issuer is not believed.
    let up2 = TestUpstream::start("app").await;
    let liar = JwksServer::start(&[k1.jwk()]).await;
    *liar.discovery_issuer.lock() = Some("https://evil.example/".into());
    let issuer2 = format!("http://{}", liar.addr);
    let gw2 = TestGateway::start(&config(up2.addr, "discovery: true", "RS256", &[], "").replace(ISS, &issuer2)).await;
    let res = call(&gw2, "/private/x", Some(&token(&issuer2))).await;
    expect_problem("discovery naming another issuer", 503, &res);
    assert_eq!(up2.count(), 0);
}

/// A token's consumer claim gets a directory consumer's groups only from an issuer trusted
/// to name consumers (`map_consumers: true`); the upstream is told the issuer either way.
#[tokio::test]
async fn consumer_groups_come_from_the_directory_only_for_trusted_issuers() {
    let up = TestUpstream::start("app").await;
    let k1 = RsaKey::new("k1");
    let consumers = "consumers: [{ name: billing, groups: [partners] }]\n";
    let auth = bearer(&k1.token(&claims("billing")));
    for (extra, groups) in [(&[][..], None), (&[("map_consumers", "true")][..], Some("partners"))] {
        let yaml = format!("{}{consumers}", config(up.addr, &inline_source("k1", &k1.spki_pem()), "RS256", extra, ""));
        let gw = TestGateway::start(&yaml).await;
        assert_eq!(call(&gw, "/private/x", Some(&auth)).await.0, 200);
        let h = up.last().headers;
        assert_eq!(h["x-consumer-id"], "billing");
        assert_eq!(h["x-consumer-issuer"], ISS);
        assert_eq!(h.get("x-consumer-groups").and_then(|v| v.to_str().ok()), groups, "{extra:?}");
    }
}
