//! Identity: who is calling (authentication), whether they may (authorisation), and what
//! upstreams are told about them (identity propagation).
//!
//! Owns API-key checking ([`apikey`]), the consumer [`directory`], JWT verification
//! ([`jwt`], keys in [`jwks`]), routes' `allow` rules and the identity headers. One
//! [`Authenticator`] is compiled per config version; the directory read from the store and
//! fetched JWT keys outlive versions. The request pipeline calls, in order:
//! [`Authenticator::strip_identity`] (every request), [`Authenticator::authenticate`] and
//! [`Authenticator::authorise`] (routes with `auth`), then [`Authenticator::set_identity`].

pub mod apikey;
pub mod directory;
pub(crate) mod jwks;
pub mod jwt;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::Value;

use crate::config::{AllowRule, AuthMethod, Config};
use crate::tls::PeerCert;
use directory::{ConsumerInfo, Directory};
use jwt::{Issuer, JwtError};

/// Who a request was authenticated as.
#[derive(Debug)]
pub struct Identity {
    /// How.
    pub method: AuthMethod,
    /// The consumer: the key's owner, or the JWT's consumer claim (`sub` by default).
    pub consumer: Option<Arc<str>>,
    /// The consumer's groups (from the directory, and the JWT's groups claim).
    pub groups: Arc<[Arc<str>]>,
    /// What the JWT proved, if that is how.
    pub token: Option<Arc<jwt::Verified>>,
    /// The directory entry, when the consumer is known there.
    info: Option<Arc<ConsumerInfo>>,
}

/// Why authentication did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential of an accepted kind was presented (401).
    Missing,
    /// A credential was presented and is not valid (401).
    Invalid(AuthMethod, &'static str),
    /// A credential could not be checked: no JWT keys are available (503).
    Unavailable(AuthMethod),
}

impl AuthFailure {
    /// Short reason, safe to show the caller and to log.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "credentials are required",
            AuthFailure::Invalid(_, why) => why,
            AuthFailure::Unavailable(_) => "the identity provider's keys are unavailable",
        }
    }
}

/// Method name as used in config, metrics and headers.
pub fn method_name(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::ApiKey => "api_key",
        AuthMethod::Jwt => "jwt",
        AuthMethod::Mtls => "mtls",
    }
}

/// The identity headers upstreams get, by name.
#[derive(Debug)]
struct IdentityHeaders {
    prefix: String,
    id: HeaderName,
    groups: HeaderName,
    subject: HeaderName,
    scopes: HeaderName,
    auth: HeaderName,
    issuer: HeaderName,
    /// A verified client certificate's subject, SANs and SHA-256 fingerprint.
    cert: [HeaderName; 3],
}

/// Signs the identity assertion upstreams may verify instead of trusting plain headers.
struct Assertion {
    key: jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    issuer: String,
    audience: Option<String>,
    ttl: u64,
    name: HeaderName,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion").field("issuer", &self.issuer).field("alg", &self.header.alg).finish_non_exhaustive()
    }
}

/// The claims of an identity assertion.
#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
    /// Fresh per assertion (a client may choose its request id).
    jti: String,
    /// The request id, for correlation.
    request_id: &'a str,
    auth: &'static str,
    /// The `iss` of the token the caller presented, when that is how.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    route: &'a str,
}

impl Assertion {
    fn new(cfg: &crate::config::AssertionConfig, name: HeaderName) -> Result<Assertion, String> {
        use jsonwebtoken::{AlgorithmFamily as F, EncodingKey};
        let pem = &cfg.key.0;
        let key = match cfg.algorithm.family() {
            F::Rsa => EncodingKey::from_rsa_pem(pem),
            F::Ec => EncodingKey::from_ec_pem(pem),
            F::Ed => EncodingKey::from_ed_pem(pem),
            F::Hmac => return Err("assertions are signed with a private key".into()),
        }
        .map_err(|e| format!("assertion key: {e}"))?;
        let mut header = jsonwebtoken::Header::new(cfg.algorithm);
        header.kid = cfg.kid.clone();
        Ok(Assertion {
            key,
            header,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.ttl.as_secs(),
            name,
        })
    }

    fn sign(&self, id: &Identity, request_id: &str, route: &str) -> Option<HeaderValue> {
        let now = crate::store::now().max(0) as u64;
        let claims = AssertionClaims {
            iss: &self.issuer,
            aud: self.audience.as_deref(),
            sub: id.consumer.as_deref().or(id.token.as_ref().and_then(|t| t.subject.as_deref())),
            iat: now,
            nbf: now,
            exp: now + self.ttl,
            jti: {
                let mut b = [0u8; 16];
                aws_lc_rs::rand::fill(&mut b).ok()?;
                crate::hex::encode(&b)
            },
            request_id,
            auth: method_name(id.method),
            token_iss: id.token.as_ref().and_then(|t| t.issuer_value.to_str().ok()),
            groups: id.groups.iter().map(|g| &**g).collect(),
            scope: id.token.as_ref().filter(|t| !t.scopes.is_empty()).map(|t| t.scopes.join(" ")),
            route,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key).ok()?;
        HeaderValue::from_str(&token).ok()
    }
}

/// One config version's authentication and authorisation settings.
#[derive(Debug)]
pub struct Authenticator {
    key_header: HeaderName,
    key_query: Option<String>,
    /// Consumers and keys declared in the config file.
    declared: Directory,
    /// Consumers and keys from the store (shared by all versions).
    stored: Arc<ArcSwap<Directory>>,
    issuers: Vec<Issuer>,
    /// Tokens verified recently (this config version's issuers).
    tokens: jwt::TokenCache,
    headers: IdentityHeaders,
    assertion: Option<Assertion>,
    /// `auth.mtls.consumer`: the certificate field naming the consumer.
    cert_consumer: crate::config::CertField,
    /// `WWW-Authenticate` values for a 401 on routes with API keys only, JWT only, both;
    /// and for a bad bearer token.
    challenge_key: HeaderValue,
    challenge_bearer: HeaderValue,
    challenge_both: HeaderValue,
    challenge_invalid_token: HeaderValue,
    /// For routes taking client certificates only (no HTTP scheme asks for one).
    challenge_cert: HeaderValue,
}

impl Authenticator {
    /// Compile `cfg`'s identity settings. `stored` is the store's directory; `jwks` keeps
    /// fetched keys across versions.
    pub(crate) fn build(
        cfg: &Config,
        stored: Arc<ArcSwap<Directory>>,
        jwks: &jwks::SourceCache,
    ) -> Result<Authenticator, String> {
        let a = &cfg.auth;
        let mut issuers = Vec::with_capacity(a.jwt.len());
        for i in &a.jwt {
            let source = jwks.source(i).map_err(|e| format!("auth.jwt `{}`: {e}", i.issuer))?;
            issuers.push(Issuer::new(i, source));
        }
        let p = &a.identity.prefix;
        let name = |s: &str| HeaderName::from_bytes(format!("{p}{s}").as_bytes()).map_err(|e| e.to_string());
        let headers = IdentityHeaders {
            prefix: p.clone(),
            id: name("id")?,
            groups: name("groups")?,
            subject: name("subject")?,
            scopes: name("scopes")?,
            auth: name("auth")?,
            issuer: name("issuer")?,
            cert: [name("cert-subject")?, name("cert-san")?, name("cert-fingerprint")?],
        };
        let assertion = match &a.identity.assertion {
            Some(c) => Some(Assertion::new(c, name("assertion")?)?),
            None => None,
        };
        let key = format!("ApiKey realm=\"portcullis\", header=\"{}\"", a.api_key.header);
        let challenge_key = HeaderValue::from_str(&key).map_err(|e| e.to_string())?;
        let challenge_both =
            HeaderValue::from_str(&format!("Bearer realm=\"portcullis\", {key}")).map_err(|e| e.to_string())?;
        Ok(Authenticator {
            key_header: a.api_key.header.clone(),
            key_query: a.api_key.query.clone(),
            declared: Directory::from_config(&cfg.consumers),
            stored,
            issuers,
            tokens: jwt::TokenCache::default(),
            headers,
            assertion,
            cert_consumer: a.mtls.consumer,
            challenge_key,
            challenge_bearer: HeaderValue::from_static("Bearer realm=\"portcullis\""),
            challenge_both,
            challenge_invalid_token: HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            challenge_cert: HeaderValue::from_static("ClientCertificate realm=\"portcullis\""),
        })
    }

    /// Compile `cfg`'s identity settings on their own: consumers from the file only, and
    /// key sources not shared with anything (for tools and benchmarks; fetched key sources
    /// need a Tokio runtime).
    pub fn from_config(cfg: &Config) -> Result<Authenticator, String> {
        Self::build(cfg, Arc::default(), &jwks::SourceCache::default())
    }

    /// The `WWW-Authenticate` value for a 401 with this failure on a route taking `methods`.
    pub fn challenge(&self, methods: &[AuthMethod], f: &AuthFailure) -> HeaderValue {
        if let AuthFailure::Invalid(AuthMethod::Jwt, _) = f {
            return self.challenge_invalid_token.clone();
        }
        match (methods.contains(&AuthMethod::ApiKey), methods.contains(&AuthMethod::Jwt)) {
            (true, true) => self.challenge_both.clone(),
            (true, false) => self.challenge_key.clone(),
            (false, true) => self.challenge_bearer.clone(),
            (false, false) => self.challenge_cert.clone(),
        }
    }

    /// Remove every client-sent header under the identity prefix, also when spelled with
    /// `_` for `-` (CGI-style backends read `x_consumer_id` as `x-consumer-id`).
    pub fn strip_identity(&self, h: &mut HeaderMap) {
        let prefix = self.headers.prefix.as_bytes();
        let spoofed = |k: &HeaderName| {
            let k = k.as_str().as_bytes();
            k.len() >= prefix.len() && k.iter().zip(prefix).all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
        };
        if !h.keys().any(spoofed) {
            return;
        }
        let doomed: Vec<HeaderName> = h.keys().filter(|k| spoofed(k)).cloned().collect();
        for k in doomed {
            h.remove(k);
        }
    }

    /// Authenticate with the first of `methods` whose credential is present and valid.
    /// `query` is the request's query string (for keys sent as a parameter); `cert` the
    /// client certificate the listener verified, if any.
    pub async fn authenticate(
        &self,
        methods: &[AuthMethod],
        h: &HeaderMap,
        query: Option<&str>,
        cert: Option<&PeerCert>,
    ) -> Result<Identity, AuthFailure> {
        let mut failure = AuthFailure::Missing;
        for m in methods {
            let r = match m {
                AuthMethod::ApiKey => self.api_key(h, query),
                AuthMethod::Jwt => self.jwt(h).await,
                AuthMethod::Mtls => self.mtls(cert),
            };
            match r {
                Ok(id) => return Ok(id),
                // Keep the most telling failure: unavailable > invalid > missing.
                Err(AuthFailure::Missing) => {}
                Err(f @ AuthFailure::Unavailable(_)) => failure = f,
                Err(f) if !matches!(failure, AuthFailure::Unavailable(_)) => failure = f,
                Err(_) => {}
            }
        }
        // When a credential could not be checked for want of keys, that is the answer (503):
        // the caller may hold a good token.
        Err(failure)
    }

    fn api_key(&self, h: &HeaderMap, query: Option<&str>) -> Result<Identity, AuthFailure> {
        let invalid = |why| AuthFailure::Invalid(AuthMethod::ApiKey, why);
        let mut values = h.get_all(&self.key_header).iter();
        let key: &[u8] = match (values.next(), values.next()) {
            (Some(v), None) => v.as_bytes(),
            (Some(_), Some(_)) => return Err(invalid("several API keys")),
            (None, _) => match (&self.key_query, query) {
                (Some(name), Some(q)) => match query_param(q, name) {
                    Some(v) => v.as_bytes(),
                    None => return Err(AuthFailure::Missing),
                },
                _ => return Err(AuthFailure::Missing),
            },
        };
        let info = match self.declared.check_key(key) {
            Some(c) => c.clone(),
            None => self.stored.load().check_key(key).cloned().ok_or_else(|| invalid("unknown or revoked API key"))?,
        };
        Ok(Identity {
            method: AuthMethod::ApiKey,
            consumer: Some(info.name.clone()),
            groups: info.groups.clone(),
            token: None,
            info: Some(info),
        })
    }

    /// The consumer a verified client certificate names (`auth.mtls.consumer`); its groups
    /// when the directory knows it. The listener's CA vouches for the name.
    fn mtls(&self, cert: Option<&PeerCert>) -> Result<Identity, AuthFailure> {
        let cert = cert.ok_or(AuthFailure::Missing)?;
        let name = cert
            .field(self.cert_consumer)
            .filter(|n| !n.is_empty() && n.len() <= 256)
            .ok_or(AuthFailure::Invalid(AuthMethod::Mtls, "the client certificate does not name a consumer"))?;
        let info = self.consumer(name);
        Ok(Identity {
            method: AuthMethod::Mtls,
            consumer: Some(info.as_ref().map_or_else(|| Arc::from(name), |i| i.name.clone())),
            groups: info.as_ref().map_or_else(|| Arc::from([]), |i| i.groups.clone()),
            token: None,
            info,
        })
    }

    /// Tell the upstream about the client certificate the listener verified.
    pub fn set_certificate(&self, h: &mut HeaderMap, cert: &PeerCert) {
        for (name, value) in self.headers.cert.iter().zip(&cert.headers) {
            if let Some(v) = value {
                h.insert(name.clone(), v.clone());
            }
        }
    }

    async fn jwt(&self, h: &HeaderMap) -> Result<Identity, AuthFailure> {
        let invalid = |why| AuthFailure::Invalid(AuthMethod::Jwt, why);
        let mut values = h.get_all(header::AUTHORIZATION).iter();
        let v = match (values.next(), values.next()) {
            (Some(v), None) => v.as_bytes(),
            (Some(_), Some(_)) => return Err(invalid("several Authorization headers")),
            (None, _) => return Err(AuthFailure::Missing),
        };
        let Some(token) = bearer(v) else {
            return Err(AuthFailure::Missing);
        };
        if token.len() > jwt::MAX_TOKEN {
            return Err(invalid("token too large"));
        }
        let token = std::str::from_utf8(token).map_err(|_| invalid("malformed token"))?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(invalid("malformed token"));
        }
        let digest = apikey::digest(token.as_bytes());
        let now = crate::store::now().max(0) as u64;
        let cached = self.tokens.get(&digest).filter(|v| {
            let ok = self.issuers.get(v.issuer).is_some_and(|i| i.still_valid(v, now));
            if !ok {
                self.tokens.remove(&digest);
            }
            ok
        });
        let verified = match cached {
            Some(v) => v,
            None => {
                let iss = jwt::peek_issuer(token).map_err(|_| invalid("malformed token"))?;
                let (index, issuer) = match iss {
                    Some(iss) => self
                        .issuers
                        .iter()
                        .enumerate()
                        .find(|(_, i)| i.iss == iss)
                        .ok_or(invalid("unknown token issuer"))?,
                    None => return Err(invalid("token lacks a required claim")),
                };
                let v = Arc::new(issuer.verify(token, index).await.map_err(|e| match e {
                    JwtError::Invalid(why) => invalid(why),
                    JwtError::Unavailable => AuthFailure::Unavailable(AuthMethod::Jwt),
                })?);
                self.tokens.insert(digest, v.clone());
                v
            }
        };
        // Only an issuer trusted to name consumers (`map_consumers: true`) gets their groups:
        // otherwise any issuer could claim any consumer's name.
        let mapped = self.issuers.get(verified.issuer).is_some_and(|i| i.map_consumers);
        let info = if mapped { verified.consumer.as_deref().and_then(|c| self.consumer(c)) } else { None };
        let directory_groups: Arc<[Arc<str>]> = info.as_ref().map_or_else(|| Arc::from([]), |i| i.groups.clone());
        let groups = if verified.claim_groups.is_empty() {
            directory_groups
        } else {
            let mut all = directory_groups.to_vec();
            for g in &verified.claim_groups {
                if !all.contains(g) {
                    all.push(g.clone());
                }
            }
            Arc::from(all)
        };
        Ok(Identity {
            method: AuthMethod::Jwt,
            consumer: verified.consumer.clone(),
            groups,
            token: Some(verified),
            info,
        })
    }

    /// Forget every verified token: the next use of each is checked in full again.
    pub fn clear_token_cache(&self) {
        self.tokens.clear();
    }

    fn consumer(&self, name: &str) -> Option<Arc<ConsumerInfo>> {
        self.declared.consumer(name).cloned().or_else(|| self.stored.load().consumer(name).cloned())
    }

    /// Whether `id`, calling from `client`, passes any of `rules` (no rules: yes).
    pub fn authorise(rules: &[AllowRule], id: Option<&Identity>, client: IpAddr) -> bool {
        rules.is_empty() || rules.iter().any(|r| allowed(r, id, client))
    }

    /// Drop the API key header: upstreams have no use for the gateway's credential.
    pub fn hide_key(&self, h: &mut HeaderMap) {
        h.remove(&self.key_header);
    }

    /// Set the identity headers (and the signed assertion, if configured) for the upstream.
    /// Fails if a token's values cannot be headers.
    pub fn set_identity(
        &self,
        h: &mut HeaderMap,
        id: &Identity,
        request_id: &HeaderValue,
        route: &str,
    ) -> Result<(), AuthFailure> {
        let bad = || AuthFailure::Invalid(id.method, "identity claims cannot be sent as headers");
        // Values made once per consumer or verified token: no allocation here.
        if let Some(t) = &id.token {
            h.insert(self.headers.issuer.clone(), t.issuer_value.clone());
        }
        let consumer = match (&id.info, &id.token) {
            (Some(i), _) => i.id_header.clone(),
            (None, Some(t)) => t.values[0].clone(),
            (None, None) => id.consumer.as_deref().and_then(crate::tls::identity::header_value),
        };
        if let Some(v) = consumer {
            h.insert(self.headers.id.clone(), v);
        }
        let groups = match id.info.as_ref().and_then(|i| i.groups_header.clone()) {
            Some(v) if id.groups.len() == id.info.as_ref().map_or(0, |i| i.groups.len()) => Some(v),
            _ if id.groups.is_empty() => None,
            _ => Some(HeaderValue::from_str(&id.groups.join(",")).map_err(|_| bad())?),
        };
        if let Some(g) = groups {
            h.insert(self.headers.groups.clone(), g);
        }
        if let Some(t) = &id.token {
            if let Some(v) = &t.values[1] {
                h.insert(self.headers.subject.clone(), v.clone());
            }
            if let Some(v) = &t.values[2] {
                h.insert(self.headers.scopes.clone(), v.clone());
            }
        }
        h.insert(self.headers.auth.clone(), HeaderValue::from_static(method_name(id.method)));
        if let Some(a) = &self.assertion {
            // A signing failure is ours, not the caller's: 503, logged.
            let v = a.sign(id, request_id.to_str().unwrap_or(""), route).ok_or_else(|| {
                tracing::error!("Cannot sign the identity assertion");
                AuthFailure::Unavailable(id.method)
            })?;
            h.insert(a.name.clone(), v);
        }
        Ok(())
    }

    /// The query parameter API keys may come in, if any (removed before forwarding).
    pub fn key_query(&self) -> Option<&str> {
        self.key_query.as_deref()
    }

    /// Key-source status of each issuer, for metrics.
    pub(crate) fn jwks_status(&self) -> Vec<jwks::SourceStatus> {
        self.issuers.iter().map(|i| i.source.status()).collect()
    }
}

/// The token of an `Authorization: Bearer` value (scheme case-insensitive).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
        return None;
    }
    let t = &v[7..];
    let start = t.iter().position(|b| *b != b' ').unwrap_or(t.len());
    Some(&t[start..])
}

/// The value of query parameter `name` (the first one), undecoded.
pub fn query_param<'q>(q: &'q str, name: &str) -> Option<&'q str> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// `q` without any `name=` parameter; `None` if nothing remains.
pub fn without_param(q: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = q.split('&').filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name).collect();
    let s = kept.join("&");
    (!s.is_empty()).then_some(s)
}

fn allowed(r: &AllowRule, id: Option<&Identity>, client: IpAddr) -> bool {
    if !r.ips.is_empty() && !r.ips.iter().any(|n| n.contains(&client)) {
        return false;
    }
    let needs_identity =
        !r.consumers.is_empty() || !r.groups.is_empty() || !r.scopes.is_empty() || !r.claims.is_empty();
    let Some(id) = id else {
        return !needs_identity;
    };
    if !r.consumers.is_empty() && !id.consumer.as_deref().is_some_and(|c| r.consumers.iter().any(|x| x == c)) {
        return false;
    }
    if !r.groups.is_empty() && !id.groups.iter().any(|g| r.groups.iter().any(|x| **x == **g)) {
        return false;
    }
    let scopes: &[String] = id.token.as_ref().map_or(&[], |t| &t.scopes);
    if !r.scopes.iter().all(|s| scopes.iter().any(|x| x == s)) {
        return false;
    }
    r.claims.iter().all(|(name, values)| {
        let v = id.token.as_ref().and_then(|t| t.claims.get(name));
        match v {
            Some(Value::String(s)) => values.iter().any(|x| x == s),
            Some(Value::Number(n)) => values.iter().any(|x| *x == n.to_string()),
            Some(Value::Bool(b)) => values.iter().any(|x| *x == b.to_string()),
            Some(Value::Array(a)) => a.iter().any(|e| e.as_str().is_some_and(|s| values.iter().any(|x| x == s))),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer "), Some(&b""[..]));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&api_key=xyz&b", "api_key"), Some("xyz"));
        assert_eq!(query_param("xapi_key=1", "api_key"), None);
        assert_eq!(without_param("a=1&api_key=xyz&b", "api_key").as_deref(), Some("a=1&b"));
        assert_eq!(without_param("api_key=xyz", "api_key"), None);
    }

    #[test]
    fn allow_rules() {
        let id = Identity {
            method: AuthMethod::Jwt,
            consumer: Some(Arc::from("app1")),
            groups: Arc::from([Arc::from("partners")]),
            token: Some(Arc::new(jwt::Verified {
                issuer: 0,
                exp: 0,
                nbf: None,
                generation: 0,
                subject: None,
                consumer: None,
                scopes: vec!["orders:read".into()],
                claim_groups: Vec::new(),
                claims: serde_json::from_str(r#"{"tenant":"acme","n":3}"#).expect("json"),
                values: [None, None, None],
                issuer_value: HeaderValue::from_static("https://id.test/"),
            })),
            info: None,
        };
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let r = |s: &str| -> AllowRule {
            let mut r = AllowRule::default();
            match s {
                "group" => r.groups = vec!["partners".into()],
                "other-group" => r.groups = vec!["staff".into()],
                "scope" => r.scopes = vec!["orders:read".into()],
                "two-scopes" => r.scopes = vec!["orders:read".into(), "orders:write".into()],
                "claim" => r.claims = vec![("tenant".into(), vec!["acme".into()])],
                "num-claim" => r.claims = vec![("n".into(), vec!["3".into()])],
                "bad-claim" => r.claims = vec![("tenant".into(), vec!["other".into()])],
                "net" => r.ips = vec!["10.0.0.0/8".parse().expect("net")],
                "other-net" => r.ips = vec!["192.168.0.0/16".parse().expect("net")],
                _ => r.consumers = vec![s.into()],
            }
            r
        };
        for (rule, want) in [
            ("group", true),
            ("other-group", false),
            ("scope", true),
            ("two-scopes", false),
            ("claim", true),
            ("num-claim", true),
            ("bad-claim", false),
            ("net", true),
            ("other-net", false),
            ("app1", true),
            ("app2", false),
        ] {
            assert_eq!(Authenticator::authorise(&[r(rule)], Some(&id), ip), want, "{rule}");
        }
        assert!(Authenticator::authorise(&[r("app2"), r("group")], Some(&id), ip), "rules are alternatives");
        assert!(!Authenticator::authorise(&[r("group")], None, ip), "identity rules need an identity");
        assert!(Authenticator::authorise(&[r("net")], None, ip));
        assert!(Authenticator::authorise(&[], None, ip));
    }
}
