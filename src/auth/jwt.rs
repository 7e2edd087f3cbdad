//! JWT verification for one issuer: the algorithm list, issuer, audiences, time claims and
//! required claims come from config; the token supplies only data to check.

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::{Map, Value};

use super::jwks::Source;
use crate::config::JwtIssuerConfig;

/// Most keys one token is checked against (only tokens without `kid` have several).
const MAX_TRIES: usize = 4;

/// Largest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

/// What a verified token proves, kept (in a [`TokenCache`]) while it stays valid.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer that signed it.
    pub(crate) issuer: usize,
    pub(crate) exp: u64,
    pub(crate) nbf: Option<u64>,
    /// Generation of the key set that verified it.
    pub(crate) generation: u64,
    /// `sub`.
    pub subject: Option<String>,
    /// The issuer's consumer claim.
    pub consumer: Option<Arc<str>>,
    /// Scopes (`scope` or `scp`).
    pub scopes: Vec<String>,
    /// The issuer's groups claim.
    pub claim_groups: Vec<Arc<str>>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// `consumer`, `subject` and `scopes` (space-joined) as header values, made once.
    pub(crate) values: [Option<http::HeaderValue>; 3],
    /// The issuer, as a header value.
    pub(crate) issuer_value: http::HeaderValue,
}

/// Tokens verified recently, by SHA-256 of the whole token, so that a client reusing its
/// token (the common case) costs a digest and a lookup rather than a signature check. Only
/// successes are kept; an entry is used only while its key set is the one in force and its
/// time claims hold. Bounded: 16 shards of at most [`CACHE_PER_SHARD`] entries.
#[derive(Debug)]
pub(crate) struct TokenCache {
    shards: Vec<parking_lot::Mutex<std::collections::HashMap<[u8; 32], Arc<Verified>>>>,
}

/// Entries per shard (16 shards).
pub const CACHE_PER_SHARD: usize = 1024;

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { shards: (0..16).map(|_| Default::default()).collect() }
    }
}

impl TokenCache {
    fn shard(&self, key: &[u8; 32]) -> &parking_lot::Mutex<std::collections::HashMap<[u8; 32], Arc<Verified>>> {
        &self.shards[usize::from(key[0]) % self.shards.len()]
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Arc<Verified>> {
        self.shard(key).lock().get(key).cloned()
    }

    pub(crate) fn remove(&self, key: &[u8; 32]) {
        self.shard(key).lock().remove(key);
    }

    pub(crate) fn insert(&self, key: [u8; 32], v: Arc<Verified>) {
        let mut shard = self.shard(&key).lock();
        if shard.len() >= CACHE_PER_SHARD
            && let Some(victim) = shard.keys().next().copied()
        {
            shard.remove(&victim);
        }
        shard.insert(key, v);
    }

    pub(crate) fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// The token is bad: the caller's fault (401).
    Invalid(&'static str),
    /// No key is available to check it: the gateway's fault (503).
    Unavailable,
}

/// One configured issuer.
#[derive(Debug)]
pub(crate) struct Issuer {
    pub(crate) iss: String,
    algorithms: Vec<Algorithm>,
    validations: Vec<(AlgorithmFamily, Validation)>,
    pub(crate) source: Arc<Source>,
    required: Vec<String>,
    pub(crate) consumer_claim: String,
    pub(crate) groups_claim: Option<String>,
    /// Whether consumer names from this issuer's tokens are looked up in the directory.
    pub(crate) map_consumers: bool,
}

impl Issuer {
    pub(crate) fn new(cfg: &JwtIssuerConfig, source: Arc<Source>) -> Issuer {
        let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
        for alg in &cfg.algorithms {
            if let Some((_, v)) = validations.iter_mut().find(|(f, _)| *f == alg.family()) {
                v.algorithms.push(*alg);
                continue;
            }
            let mut v = Validation::new(*alg);
            v.set_issuer(&[&cfg.issuer]);
            v.set_audience(&cfg.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v.leeway = cfg.leeway.as_secs();
            validations.push((alg.family(), v));
        }
        Issuer {
            iss: cfg.issuer.clone(),
            algorithms: cfg.algorithms.clone(),
            validations,
            source,
            required: cfg.required_claims.clone(),
            consumer_claim: cfg.consumer_claim.clone(),
            groups_claim: cfg.groups_claim.clone(),
            map_consumers: cfg.map_consumers,
        }
    }

    /// Whether a token verified earlier still holds now: its keys are the ones in force and
    /// its time claims (with leeway) still allow it.
    pub(crate) fn still_valid(&self, v: &Verified, now: u64) -> bool {
        let leeway = self.validations.first().map_or(0, |(_, v)| v.leeway);
        let keys_current = self.source.current().is_some_and(|k| k.generation == v.generation);
        keys_current && now <= v.exp.saturating_add(leeway) && v.nbf.is_none_or(|n| n <= now.saturating_add(leeway))
    }

    /// Verify `token` and return what it proves.
    pub(crate) async fn verify(&self, token: &str, issuer: usize) -> Result<Verified, JwtError> {
        let (claims, generation) = self.verify_claims(token).await?;
        let as_u64 = |name: &str| claims.get(name).and_then(Value::as_f64).map(|f| f.max(0.0) as u64);
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_string);
        let consumer = claims.get(&self.consumer_claim).and_then(Value::as_str).map(Arc::from);
        let claim_groups = self.groups_claim.as_ref().map(|gc| claim_words(claims.get(gc))).unwrap_or_default();
        let scopes = scopes(&claims);
        let value = |s: Option<&str>| match s {
            Some(s) => http::HeaderValue::from_str(s)
                .map(Some)
                .map_err(|_| JwtError::Invalid("identity claims cannot be sent as headers")),
            None => Ok(None),
        };
        let joined = (!scopes.is_empty()).then(|| scopes.join(" "));
        let values = [value(consumer.as_deref())?, value(subject.as_deref())?, value(joined.as_deref())?];
        // Groups are sent comma-separated: one holding a comma, a space or a control
        // character would read as several (or break the header).
        if claim_groups.iter().any(|g| g.is_empty() || !g.bytes().all(|b| b.is_ascii_graphic() && b != b',')) {
            return Err(JwtError::Invalid("identity claims cannot be sent as headers"));
        }
        let issuer_value = value(Some(&self.iss))?.unwrap_or_else(|| http::HeaderValue::from_static(""));
        Ok(Verified {
            issuer,
            exp: as_u64("exp").unwrap_or(0),
            nbf: as_u64("nbf"),
            generation,
            subject,
            consumer,
            scopes,
            values,
            issuer_value,
            claim_groups: claim_groups.into_iter().map(Arc::from).collect(),
            claims,
        })
    }

    /// The claims of a valid token, and the generation of the key set that verified it.
    async fn verify_claims(&self, token: &str) -> Result<(Map<String, Value>, u64), JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid("malformed token header"))?;
        if header.crit.is_some() {
            return Err(JwtError::Invalid("token has critical header extensions"));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Invalid("token algorithm not accepted"));
        }
        let validation = self
            .validations
            .iter()
            .find(|(f, _)| *f == header.alg.family())
            .map(|(_, v)| v)
            .ok_or(JwtError::Invalid("token algorithm not accepted"))?;
        let kid = header.kid.as_deref();
        let keys = match self.source.current() {
            Some(k) => k,
            // Never fetched: wait for a fetch under way, or start one if `min_refresh`
            // allows — callers cannot turn an identity-provider outage into a fetch flood.
            None => self.source.refreshed(false).await.ok_or(JwtError::Unavailable)?,
        };
        match try_keys(&keys, kid, header.alg, token, validation) {
            Err(JwtError::Invalid("unknown key")) if kid.is_some() => {
                // Perhaps the issuer rotated: fetch again (rate limited) and look once more.
                match self.source.refreshed(false).await {
                    Some(newer) if !Arc::ptr_eq(&newer, &keys) => {
                        try_keys(&newer, kid, header.alg, token, validation).map(|c| (c, newer.generation))
                    }
                    _ => Err(JwtError::Invalid("unknown key")),
                }
            }
            other => other.map(|c| (c, keys.generation)),
        }
        .and_then(|(claims, generation)| {
            for c in &self.required {
                if claims.get(c).is_none_or(Value::is_null) {
                    return Err(JwtError::Invalid("token lacks a required claim"));
                }
            }
            Ok((claims, generation))
        })
    }
}

fn try_keys(
    keys: &super::jwks::Keys,
    kid: Option<&str>,
    alg: Algorithm,
    token: &str,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    let mut outcome = JwtError::Invalid("unknown key");
    // A token without `kid` may be tried against a few keys, not all: an anonymous request
    // must not cost dozens of signature checks.
    for key in keys.candidates(kid, alg).take(MAX_TRIES) {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => return Ok(data.claims),
            // Another key with the same `kid` (or, without one, of the same family) may fit.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                outcome = JwtError::Invalid("bad token signature")
            }
            Err(e) => {
                return Err(JwtError::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid",
                    ErrorKind::InvalidIssuer => "wrong token issuer",
                    ErrorKind::InvalidAudience => "wrong token audience",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                    _ => "malformed token",
                }));
            }
        }
    }
    Err(outcome)
}

/// The `iss` of a token, read without trusting anything, to pick the issuer's settings.
pub(crate) fn peek_issuer(token: &str) -> Result<Option<String>, JwtError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Invalid("malformed token"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Invalid("malformed token"))?;
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    let p: Peek = serde_json::from_slice(&bytes).map_err(|_| JwtError::Invalid("malformed token"))?;
    Ok(p.iss)
}

/// A claim holding a string, or a list of strings, or space-separated words in a string.
pub(crate) fn claim_words(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// The token's scopes, from `scope` (RFC 8693) or `scp`.
pub(crate) fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let s = claim_words(claims.get("scope"));
    if s.is_empty() { claim_words(claims.get("scp")) } else { s }
}
