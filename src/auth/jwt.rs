//! JWT verification for one issuer: the algorithm list, issuer, audiences, time claims and
//! required claims come from config; the token supplies only data to check.

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde_json::{Map, Value};

use super::jwks::Source;
use crate::config::JwtIssuerConfig;

/// Largest token accepted, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

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
        }
    }

    /// Verify `token` and return its claims.
    pub(crate) async fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
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
                    Some(newer) if !Arc::ptr_eq(&newer, &keys) => try_keys(&newer, kid, header.alg, token, validation),
                    _ => Err(JwtError::Invalid("unknown key")),
                }
            }
            other => other,
        }
        .and_then(|claims| {
            for c in &self.required {
                if claims.get(c).is_none_or(Value::is_null) {
                    return Err(JwtError::Invalid("token lacks a required claim"));
                }
            }
            Ok(claims)
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
    for key in keys.candidates(kid, alg) {
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
