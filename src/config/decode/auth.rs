//! Decoding of identity settings: `node.store`, `auth`, `consumers`, and routes' `auth` and
//! `allow`. Key material named here is read and checked now, so `validate` catches a bad key.

use std::collections::HashMap;
use std::path::PathBuf;

use http::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::*;

/// Largest key file (a JWKS document or a PEM key) read with the config.
const MAX_KEY_FILE: u64 = 1024 * 1024;

impl Decoder<'_> {
    /// A path from the config, relative to the config file's directory.
    pub(super) fn resolve(&self, s: &str) -> PathBuf {
        let p = std::path::Path::new(s);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match std::path::Path::new(self.file).parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn read_file(&mut self, node: &Node, path: &str, s: &str) -> Option<(PathBuf, String)> {
        let file = self.resolve(s);
        let text = std::fs::metadata(&file)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if m.len() > MAX_KEY_FILE {
                    Err(format!("larger than {MAX_KEY_FILE} bytes"))
                } else {
                    std::fs::read_to_string(&file).map_err(|e| e.to_string())
                }
            })
            .map_err(|e| self.err(node.pos, path, format!("cannot read `{}`: {e}", file.display())))
            .ok()?;
        Some((file, text))
    }
}

pub(super) fn decode_store(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<StoreUrl> {
    let s = scalar(d, node, path)?;
    if let Some(rest) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
        if rest.is_empty() || rest.contains('?') {
            d.err(node.pos, path, "expected `sqlite://PATH` (a file path, no options)");
            return None;
        }
        return Some(StoreUrl::Sqlite(d.resolve(rest)));
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        d.err(node.pos, path, "a PostgreSQL store is not supported yet in this version of Portcullis");
        return None;
    }
    d.err(node.pos, path, format!("unknown store `{s}`; expected `sqlite://PATH`"));
    None
}

fn strings(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        if let Some(s) = scalar(d, item, &ip) {
            if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
                d.err(item.pos, &ip, "expected 1-256 printable characters");
            } else if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
    }
    out
}

fn names(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        if let Some(n) = name(d, item, &format!("{path}[{i}]"))
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

pub(super) fn decode_auth(d: &mut Decoder<'_>, node: &Node, path: &str) -> AuthConfig {
    let mut out = AuthConfig::default();
    let Some(mut f) = Fields::new(d, node, path) else {
        return out;
    };
    if let Some((n, p)) = f.get("api_key")
        && let Some(mut kf) = Fields::new(d, n, &p)
    {
        if let Some((n, p)) = kf.get("header")
            && let Some(s) = scalar(d, n, &p)
        {
            match HeaderName::from_bytes(s.as_bytes()) {
                Ok(h) if !is_reserved_header(&h) => out.api_key.header = h,
                Ok(_) => d.err(n.pos, &p, format!("`{s}` cannot carry API keys")),
                Err(_) => d.err(n.pos, &p, format!("invalid header name `{s}`")),
            }
        }
        if let Some((n, p)) = kf.get("query")
            && let Some(s) = scalar(d, n, &p)
        {
            if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                d.err(n.pos, &p, "expected a query parameter name: 1-64 letters, digits, `-`, `_` or `.`");
            } else {
                out.api_key.query = Some(s.to_string());
            }
        }
        kf.finish(d);
    }
    if let Some((n, p)) = f.get("jwt") {
        let mut issuers: HashMap<String, ()> = HashMap::new();
        for (i, item) in seq(d, n, &p).iter().enumerate() {
            let ip = format!("{p}[{i}]");
            if let Some(iss) = decode_issuer(d, item, &ip) {
                if issuers.insert(iss.issuer.clone(), ()).is_some() {
                    d.err(item.pos, &join(&ip, "issuer"), format!("duplicate issuer `{}`", iss.issuer));
                }
                out.jwt.push(iss);
            }
        }
    }
    if let Some((n, p)) = f.get("mtls")
        && let Some(mut mf) = Fields::new(d, n, &p)
    {
        if let Some((n, p)) = mf.get("consumer")
            && let Some(s) = scalar(d, n, &p)
        {
            out.mtls.consumer = match s {
                "cn" => CertField::CommonName,
                "dns" => CertField::Dns,
                "uri" => CertField::Uri,
                "email" => CertField::Email,
                "fingerprint" => CertField::Fingerprint,
                other => {
                    d.err(
                        n.pos,
                        &p,
                        format!("unknown certificate field `{other}`; expected cn, dns, uri, email or fingerprint"),
                    );
                    CertField::CommonName
                }
            };
        }
        mf.finish(d);
    }
    if let Some((n, p)) = f.get("identity_headers")
        && let Some(mut hf) = Fields::new(d, n, &p)
    {
        if let Some((n, p)) = hf.get("prefix")
            && let Some(s) = scalar(d, n, &p)
        {
            let ok = (2..=32).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.ends_with('-');
            if ok {
                out.identity.prefix = s.to_string();
            } else {
                d.err(n.pos, &p, "expected 2-32 lower-case letters, digits or `-`, ending in `-` (like `x-consumer-`)");
            }
        }
        out.identity.assertion = hf.get("assertion").and_then(|(n, p)| decode_assertion(d, n, &p));
        hf.finish(d);
    }
    f.finish(d);
    if out.api_key.header.as_str().starts_with(&out.identity.prefix) {
        d.err(
            node.pos,
            path,
            format!(
                "the identity prefix `{}` would remove the API key header `{}` before it is read",
                out.identity.prefix, out.api_key.header
            ),
        );
    }
    out
}

fn decode_assertion(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<AssertionConfig> {
    let mut f = Fields::new(d, node, path)?;
    let algorithm = match f.get("algorithm") {
        Some((n, p)) => {
            let s = scalar(d, n, &p)?;
            match algorithm(s) {
                Some(a) if !is_hmac(a) => Some(a),
                _ => {
                    d.err(
                        n.pos,
                        &p,
                        format!("expected a public-key algorithm (RS256, PS256, ES256, ES384, EdDSA…), found `{s}`"),
                    );
                    None
                }
            }
        }
        None => Some(Algorithm::ES256),
    };
    let key = match f.get("key_file") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| d.read_file(n, &p, s)).and_then(|(_, pem)| {
            use jsonwebtoken::{AlgorithmFamily as F, EncodingKey};
            let ok = match algorithm.map(|a| a.family()) {
                Some(F::Rsa) => EncodingKey::from_rsa_pem(pem.as_bytes()).is_ok(),
                Some(F::Ec) => EncodingKey::from_ec_pem(pem.as_bytes()).is_ok(),
                Some(F::Ed) => EncodingKey::from_ed_pem(pem.as_bytes()).is_ok(),
                _ => true,
            };
            if !ok {
                d.err(n.pos, &p, "not a PEM private key (PKCS#8) for the assertion's algorithm");
                return None;
            }
            Some(Secret(pem.into_bytes()))
        }),
        None => {
            d.err(node.pos, &join(path, "key_file"), "missing field `key_file` (the gateway's PEM private key)");
            None
        }
    };
    let mut issuer = "portcullis".to_string();
    if let Some((n, p)) = f.get("issuer")
        && let Some(s) = scalar(d, n, &p)
    {
        issuer = s.to_string();
    }
    let audience = f.get("audience").and_then(|(n, p)| scalar(d, n, &p).map(str::to_string));
    let kid = f.get("kid").and_then(|(n, p)| scalar(d, n, &p).map(str::to_string));
    let mut ttl = std::time::Duration::from_secs(60);
    if let Some((n, p)) = f.get("ttl")
        && let Some(v) = duration(d, n, &p)
    {
        if v > std::time::Duration::from_secs(3600) || v < std::time::Duration::from_secs(1) {
            d.err(n.pos, &p, "between 1s and 1h");
        } else {
            ttl = v;
        }
    }
    f.finish(d);
    Some(AssertionConfig { key: key?, algorithm: algorithm?, issuer, audience, ttl, kid })
}

/// Headers that must never be taken over as credential carriers.
fn is_reserved_header(h: &HeaderName) -> bool {
    use http::header::*;
    // Framing and hop-by-hop headers (removed before authentication), and `Authorization`
    // (the bearer token's).
    [
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TE,
        TRAILER,
        COOKIE,
        CONTENT_TYPE,
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
    ]
    .contains(h)
        || matches!(h.as_str(), "keep-alive" | "proxy-connection")
}

const ALGORITHMS: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512";

fn algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn http_url(d: &mut Decoder<'_>, node: &Node, path: &str, s: &str) -> Option<http::Uri> {
    match s.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => Some(u),
        _ => {
            d.err(node.pos, path, format!("expected an http:// or https:// URL, found `{s}`"));
            None
        }
    }
}

fn decode_issuer(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<JwtIssuerConfig> {
    let mut f = Fields::new(d, node, path)?;
    let mut ok = true;
    let issuer = match f.get("issuer") {
        Some((n, p)) => scalar(d, n, &p).map(str::to_string).filter(|s| {
            let good = !s.is_empty() && s.len() <= 512;
            if !good {
                d.err(n.pos, &p, "expected the issuer's `iss` value");
            }
            good
        }),
        None => {
            d.err(node.pos, &join(path, "issuer"), "missing field `issuer`");
            None
        }
    };
    let audiences = match f.get("audiences") {
        Some((n, p)) => {
            let a = strings(d, n, &p);
            if a.is_empty() {
                d.err(n.pos, &p, "at least one audience is required");
            }
            a
        }
        None => {
            d.err(node.pos, &join(path, "audiences"), "missing field `audiences` (the `aud` values accepted)");
            Vec::new()
        }
    };
    let mut algorithms = Vec::new();
    match f.get("algorithms") {
        Some((n, p)) => {
            for (i, item) in seq(d, n, &p).iter().enumerate() {
                let ap = format!("{p}[{i}]");
                let Some(s) = scalar(d, item, &ap) else { continue };
                match algorithm(s) {
                    Some(a) if !algorithms.contains(&a) => algorithms.push(a),
                    Some(_) => {}
                    None => {
                        ok = false;
                        d.err(
                            item.pos,
                            &ap,
                            format!("unknown or refused algorithm `{s}`; expected one of {ALGORITHMS}"),
                        )
                    }
                }
            }
            if algorithms.is_empty() && ok {
                d.err(n.pos, &p, "at least one algorithm is required");
            }
            if algorithms.iter().any(|a| is_hmac(*a)) && algorithms.iter().any(|a| !is_hmac(*a)) {
                d.err(n.pos, &p, "HMAC (HS*) and public-key algorithms cannot be mixed in one issuer");
                ok = false;
            }
        }
        None => {
            d.err(
                node.pos,
                &join(path, "algorithms"),
                "missing field `algorithms` (they come from config, never from the token)",
            );
            ok = false;
        }
    }
    let hmac = algorithms.iter().any(|a| is_hmac(*a));
    let mut sources = 0;
    let mut source = None;
    if let Some((n, p)) = f.get("jwks_url")
        && let Some(s) = scalar(d, n, &p)
    {
        sources += 1;
        source = http_url(d, n, &p, s).map(KeySource::JwksUrl);
    }
    if let Some((n, p)) = f.get("jwks_file")
        && let Some(s) = scalar(d, n, &p)
    {
        sources += 1;
        if let Some((file, text)) = d.read_file(n, &p, s) {
            match serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text) {
                Ok(set)
                    if set.keys.iter().any(|k| {
                        DecodingKey::from_jwk(k).is_ok_and(|k| k.family() != jsonwebtoken::AlgorithmFamily::Hmac)
                    }) =>
                {
                    source = Some(KeySource::JwksFile(file, text));
                }
                Ok(_) => d.err(
                    n.pos,
                    &p,
                    "the JWKS document has no usable public key (symmetric keys are never taken from a JWKS)",
                ),
                Err(e) => d.err(n.pos, &p, format!("not a JWKS document: {e}")),
            }
        }
    }
    if let Some((n, p)) = f.get("discovery")
        && let Some(on) = boolean(d, n, &p)
        && on
    {
        sources += 1;
        let url = issuer.as_deref().map(|i| format!("{}/.well-known/openid-configuration", i.trim_end_matches('/')));
        if let Some(u) = url.and_then(|u| http_url(d, n, &p, &u)) {
            source = Some(KeySource::Discovery(u));
        }
    }
    if let Some((n, p)) = f.get("keys") {
        sources += 1;
        let keys = decode_inline_keys(d, n, &p, &algorithms);
        if !keys.is_empty() {
            source = Some(KeySource::Inline(keys));
        }
    }
    if sources > 1 {
        d.err(node.pos, path, "give exactly one of `jwks_url`, `jwks_file`, `discovery: true` or `keys`");
        ok = false;
    } else if sources == 0 {
        d.err(node.pos, path, "keys are needed: give one of `jwks_url`, `jwks_file`, `discovery: true` or `keys`");
        ok = false;
    }
    if hmac && matches!(source, Some(KeySource::JwksUrl(_) | KeySource::Discovery(_) | KeySource::JwksFile(..))) {
        d.err(node.pos, path, "HMAC (HS*) algorithms take their secret from `keys: [{ secret_env: VAR }]`");
        ok = false;
    }
    finish_issuer(d, f, issuer, audiences, algorithms, source, ok)
}

fn finish_issuer(
    d: &mut Decoder<'_>,
    mut f: Fields<'_>,
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    source: Option<KeySource>,
    ok: bool,
) -> Option<JwtIssuerConfig> {
    let mut leeway = std::time::Duration::from_secs(30);
    if let Some((n, p)) = f.get("leeway")
        && let Some(v) = duration_or_zero(d, n, &p)
    {
        if v > std::time::Duration::from_secs(300) {
            d.err(n.pos, &p, "at most 5m");
        } else {
            leeway = v;
        }
    }
    let mut required_claims = Vec::new();
    if let Some((n, p)) = f.get("required_claims") {
        required_claims = strings(d, n, &p);
    }
    let mut consumer_claim = "sub".to_string();
    if let Some((n, p)) = f.get("consumer_claim")
        && let Some(s) = scalar(d, n, &p)
    {
        consumer_claim = s.to_string();
    }
    let groups_claim = f.get("groups_claim").and_then(|(n, p)| scalar(d, n, &p).map(str::to_string));
    let mut map_consumers = false;
    f.set(d, "map_consumers", boolean, &mut map_consumers);
    let mut refresh = std::time::Duration::from_secs(300);
    f.set(d, "refresh", duration, &mut refresh);
    let mut min_refresh = std::time::Duration::from_secs(10);
    f.set(d, "min_refresh", duration_or_zero, &mut min_refresh);
    f.finish(d);
    if !ok {
        return None;
    }
    Some(JwtIssuerConfig {
        issuer: issuer?,
        audiences,
        algorithms,
        keys: source?,
        leeway,
        required_claims,
        consumer_claim,
        groups_claim,
        map_consumers,
        refresh,
        min_refresh,
    })
}

fn decode_inline_keys(d: &mut Decoder<'_>, node: &Node, path: &str, algorithms: &[Algorithm]) -> Vec<InlineKey> {
    let mut out = Vec::new();
    let hmac = algorithms.iter().any(|a| is_hmac(*a));
    let mut kids: HashMap<Option<String>, ()> = HashMap::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(mut f) = Fields::new(d, item, &ip) else { continue };
        let kid = f.get("kid").and_then(|(n, p)| scalar(d, n, &p).map(str::to_string));
        if kids.insert(kid.clone(), ()).is_some() {
            d.err(item.pos, &ip, "two keys with the same `kid`");
        }
        let mut material = None;
        let mut given = 0;
        if let Some((n, p)) = f.get("pem")
            && let Some(s) = scalar(d, n, &p)
        {
            given += 1;
            material = check_pem(d, n, &p, s, algorithms);
        }
        if let Some((n, p)) = f.get("pem_file")
            && let Some(s) = scalar(d, n, &p)
        {
            given += 1;
            if let Some((_, text)) = d.read_file(n, &p, s) {
                material = check_pem(d, n, &p, &text, algorithms);
            }
        }
        if let Some((n, p)) = f.get("secret_env")
            && let Some(s) = scalar(d, n, &p)
        {
            given += 1;
            if !hmac {
                d.err(n.pos, &p, "a shared secret needs HMAC algorithms (HS256, HS384, HS512)");
            }
            match std::env::var(s) {
                Ok(v) if v.len() >= 32 => material = Some(KeyMaterial::Secret(Secret(v.into_bytes()))),
                Ok(_) => d.err(n.pos, &p, format!("the secret in `{s}` is shorter than 32 bytes")),
                Err(_) => d.err(n.pos, &p, format!("environment variable `{s}` is not set")),
            }
        }
        if given != 1 {
            d.err(item.pos, &ip, "give exactly one of `pem`, `pem_file` or `secret_env`");
        }
        if hmac && matches!(material, Some(KeyMaterial::Pem(_))) {
            d.err(item.pos, &ip, "HMAC (HS*) algorithms need `secret_env`, not a public key");
            material = None;
        }
        f.finish(d);
        if let Some(material) = material {
            out.push(InlineKey { kid, material });
        }
    }
    out
}

fn check_pem(d: &mut Decoder<'_>, node: &Node, path: &str, pem: &str, algorithms: &[Algorithm]) -> Option<KeyMaterial> {
    let bytes = pem.as_bytes();
    let usable = algorithms.iter().any(|a| {
        use jsonwebtoken::AlgorithmFamily as F;
        match a.family() {
            F::Rsa => DecodingKey::from_rsa_pem(bytes).is_ok(),
            F::Ec => DecodingKey::from_ec_pem(bytes).is_ok(),
            F::Ed => DecodingKey::from_ed_pem(bytes).is_ok(),
            _ => false,
        }
    });
    if pem.contains("PRIVATE KEY") {
        d.err(node.pos, path, "this is a private key; the gateway needs only the public key");
        return None;
    }
    if !usable {
        d.err(node.pos, path, "not a PEM public key of the issuer's algorithms");
        return None;
    }
    Some(KeyMaterial::Pem(pem.to_string()))
}

pub(super) fn decode_consumers(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<ConsumerConfig> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut key_ids: HashMap<String, ()> = HashMap::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(mut f) = Fields::new(d, item, &ip) else { continue };
        let cname = unique_name(d, &mut f, item, &ip, &mut seen, "consumer");
        let groups = f.get("groups").map(|(n, p)| names(d, n, &p)).unwrap_or_default();
        let mut api_keys = Vec::new();
        if let Some((n, p)) = f.get("api_keys") {
            for (j, k) in seq(d, n, &p).iter().enumerate() {
                let kp = format!("{p}[{j}]");
                let Some(mut kf) = Fields::new(d, k, &kp) else { continue };
                let id = kf.get("id").and_then(|(n, p)| {
                    let s = scalar(d, n, &p)?;
                    if !crate::auth::apikey::valid_id(s) {
                        d.err(n.pos, &p, "expected a key id: 12 lower-case hex digits");
                        return None;
                    }
                    if key_ids.insert(s.to_string(), ()).is_some() {
                        d.err(n.pos, &p, format!("duplicate key id `{s}`"));
                    }
                    Some(s.to_string())
                });
                let sha = kf.get("sha256").and_then(|(n, p)| {
                    let s = scalar(d, n, &p)?;
                    let v = hex32(s);
                    if v.is_none() {
                        d.err(n.pos, &p, "expected 64 hex digits (SHA-256 of the whole key)");
                    }
                    v
                });
                if id.is_none() && kf.get("id").is_none() {
                    d.err(k.pos, &join(&kp, "id"), "missing field `id`");
                }
                kf.finish(d);
                if let (Some(id), Some(sha256)) = (id, sha) {
                    api_keys.push(ConfigApiKey { id, sha256 });
                }
            }
        }
        f.finish(d);
        if let Some(name) = cname {
            out.push(ConsumerConfig { name, groups, api_keys });
        }
    }
    out
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    crate::hex::decode(s, &mut out).map(|()| out)
}

/// A route's `auth` methods. `client_certs`: some listener asks clients for certificates.
pub(super) fn decode_route_auth(
    d: &mut Decoder<'_>,
    node: &Node,
    path: &str,
    auth: &AuthConfig,
    client_certs: bool,
) -> Vec<AuthMethod> {
    let mut out = Vec::new();
    let items = seq(d, node, path);
    if items.is_empty() {
        d.err(node.pos, path, "list at least one method (api_key, jwt, mtls), or say `public: true`");
    }
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(s) = scalar(d, item, &ip) else { continue };
        let m = match s {
            "api_key" => AuthMethod::ApiKey,
            "jwt" => {
                if auth.jwt.is_empty() {
                    d.err(item.pos, &ip, "`jwt` needs at least one issuer under `auth.jwt`");
                }
                AuthMethod::Jwt
            }
            "mtls" => {
                if !client_certs {
                    d.err(item.pos, &ip, "`mtls` needs a listener with `tls.client_auth.mode: optional` or `required`");
                }
                AuthMethod::Mtls
            }
            other => {
                d.err(item.pos, &ip, format!("unknown method `{other}`; expected api_key, jwt or mtls"));
                continue;
            }
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// `allow`: one rule (a mapping) or alternatives (a list of mappings).
pub(super) fn decode_allow(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<AllowRule> {
    match &node.kind {
        Kind::Seq(items) => {
            if items.is_empty() {
                d.err(node.pos, path, "an empty list would refuse everyone; remove `allow` or give a rule");
            }
            items.iter().enumerate().filter_map(|(i, n)| decode_rule(d, n, &format!("{path}[{i}]"))).collect()
        }
        _ => decode_rule(d, node, path).into_iter().collect(),
    }
}

fn decode_rule(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<AllowRule> {
    let mut f = Fields::new(d, node, path)?;
    let mut r = AllowRule::default();
    if let Some((n, p)) = f.get("consumers") {
        // Any printable name: JWT subjects and certificate fields (URIs, e-mail addresses)
        // name consumers too.
        r.consumers = strings(d, n, &p);
    }
    if let Some((n, p)) = f.get("groups") {
        r.groups = names(d, n, &p);
    }
    if let Some((n, p)) = f.get("scopes") {
        r.scopes = strings(d, n, &p);
    }
    if let Some((n, p)) = f.get("claims")
        && let Kind::Map(entries) = &n.kind
    {
        for (k, v) in entries {
            let kp = join(&p, key_str(k));
            let values = strings(d, v, &kp);
            if values.is_empty() {
                d.err(v.pos, &kp, "list the accepted values");
            }
            r.claims.push((key_str(k).to_string(), values));
        }
    } else if let Some((n, p)) = f.get("claims") {
        d.err(n.pos, &p, "expected a mapping of claim names to accepted values");
    }
    if let Some((n, p)) = f.get("ips") {
        r.ips = nets(d, n, &p);
    }
    f.finish(d);
    if r == AllowRule::default() {
        d.err(node.pos, path, "an empty rule would let every caller in; give consumers, groups, scopes, claims or ips");
        return None;
    }
    Some(r)
}
