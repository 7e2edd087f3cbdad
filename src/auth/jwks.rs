//! Verification keys of JWT issuers: inline, from a JWKS file, or fetched from a JWKS URL
//! (directly or found by OpenID Connect discovery) and kept fresh.
//!
//! A fetched source keeps its last good key set when a refresh fails (stale-if-error) and
//! counts the failure; a token naming an unknown `kid` may trigger one refresh, at most once
//! per `min_refresh`, so forged `kid`s cannot turn into a fetch flood. `jku`, `x5u` and
//! embedded `jwk` headers are never followed: keys come only from config.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{JwtIssuerConfig, KeyMaterial, KeySource};

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Most keys kept from one JWKS document.
const MAX_KEYS: usize = 64;
/// Time allowed for one fetch.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable verification key.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// The algorithm the key is restricted to, if its JWK says so.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) family: AlgorithmFamily,
    pub(crate) key: DecodingKey,
}

/// A set of keys, as loaded at one time.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    pub(crate) keys: Vec<Key>,
    /// Unique per key set made by this process: a token verified under another generation
    /// is verified again (its key may be gone).
    pub(crate) generation: u64,
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Keys {
    /// Keys that may verify a token with this header.
    pub(crate) fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.family == alg.family() && k.alg.is_none_or(|a| a == alg) && (kid.is_none() || k.kid.as_deref() == kid)
        })
    }

    fn from_jwks(text: &[u8]) -> Result<Keys, String> {
        let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in set.keys.iter().take(MAX_KEYS) {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(key) if key.family() != AlgorithmFamily::Hmac => {
                    keys.push(Key { kid: jwk.common.key_id.clone(), alg, family: key.family(), key })
                }
                Ok(_) => {} // symmetric keys are never taken from a JWKS
                Err(e) => tracing::debug!(kid = ?jwk.common.key_id, error = %e, "JWKS key skipped: unusable"),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS document has no usable signing key".into());
        }
        Ok(Keys { keys, generation: next_generation() })
    }

    fn inline(cfg: &JwtIssuerConfig, list: &[crate::config::InlineKey]) -> Keys {
        let mut keys = Vec::new();
        for k in list {
            let made = match &k.material {
                KeyMaterial::Secret(s) => Some(DecodingKey::from_secret(&s.0)),
                KeyMaterial::Pem(pem) => cfg.algorithms.iter().find_map(|a| match a.family() {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()).ok(),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()).ok(),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()).ok(),
                    AlgorithmFamily::Hmac => None,
                }),
            };
            if let Some(key) = made {
                keys.push(Key { kid: k.kid.clone(), alg: None, family: key.family(), key });
            }
        }
        Keys { keys, generation: next_generation() }
    }
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

/// Where a source gets its keys from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    Url(http::Uri),
    Discovery { url: http::Uri, issuer: String },
}

/// A key source: its current keys and, for fetched ones, the refresh machinery.
#[derive(Debug)]
pub(crate) struct Source {
    /// The issuer, for logs and metrics.
    pub(crate) issuer: String,
    keys: ArcSwapOption<Keys>,
    fetch: Option<Fetcher>,
}

#[derive(Debug)]
struct Fetcher {
    origin: Origin,
    refresh: Duration,
    min_refresh: Duration,
    client: HttpsClient,
    state: Mutex<FetchState>,
    /// Bumped after every fetch attempt, success or not.
    done: watch::Sender<u64>,
    pub(crate) failures: AtomicU64,
    pub(crate) successes: AtomicU64,
    /// The last refresh failed and older keys are in use.
    pub(crate) stale: AtomicBool,
}

#[derive(Debug, Default)]
struct FetchState {
    running: bool,
    last_start: Option<Instant>,
}

/// What the metrics report about one source.
#[derive(Debug, Clone)]
pub(crate) struct SourceStatus {
    pub(crate) issuer: String,
    pub(crate) keys: usize,
    pub(crate) fetches_ok: u64,
    pub(crate) fetches_failed: u64,
    pub(crate) stale: bool,
}

impl Source {
    /// Keys now; `None` when a fetched source has never fetched successfully.
    pub(crate) fn current(&self) -> Option<Arc<Keys>> {
        self.keys.load_full()
    }

    pub(crate) fn status(&self) -> SourceStatus {
        let f = self.fetch.as_ref();
        SourceStatus {
            issuer: self.issuer.clone(),
            keys: self.keys.load().as_ref().map_or(0, |k| k.keys.len()),
            fetches_ok: f.map_or(0, |f| f.successes.load(Ordering::Relaxed)),
            fetches_failed: f.map_or(0, |f| f.failures.load(Ordering::Relaxed)),
            stale: f.is_some_and(|f| f.stale.load(Ordering::Relaxed)),
        }
    }

    /// Fetch again now if this source fetches, none is running, and the last one started at
    /// least `min_refresh` ago (or `force`, for the first fetch). Returns a receiver that
    /// changes when the fetch this caller can wait for ends; `None` if none will.
    pub(crate) fn refresh(self: &Arc<Self>, force: bool) -> Option<watch::Receiver<u64>> {
        let f = self.fetch.as_ref()?;
        let rx = f.done.subscribe();
        {
            let mut st = f.state.lock();
            if st.running {
                return Some(rx);
            }
            if !force && st.last_start.is_some_and(|t| t.elapsed() < f.min_refresh) {
                return None;
            }
            st.running = true;
            st.last_start = Some(Instant::now());
        }
        let me = self.clone();
        tokio::spawn(async move { me.fetch_once().await });
        Some(rx)
    }

    /// Wait (bounded) for keys after asking for a refresh; the keys then in force.
    pub(crate) async fn refreshed(self: &Arc<Self>, force: bool) -> Option<Arc<Keys>> {
        if let Some(mut rx) = self.refresh(force) {
            let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), rx.changed()).await;
        }
        self.current()
    }

    async fn fetch_once(self: Arc<Self>) {
        let Some(f) = self.fetch.as_ref() else { return };
        let result = tokio::time::timeout(FETCH_TIMEOUT, f.load()).await.unwrap_or_else(|_| Err("timed out".into()));
        match result {
            Ok(keys) => {
                let n = keys.keys.len();
                self.keys.store(Some(Arc::new(keys)));
                f.successes.fetch_add(1, Ordering::Relaxed);
                if f.stale.swap(false, Ordering::Relaxed) {
                    tracing::info!(issuer = %self.issuer, keys = n, "JWT keys fetched again");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = n, "JWT keys fetched");
                }
            }
            Err(e) => {
                f.failures.fetch_add(1, Ordering::Relaxed);
                if self.keys.load().is_some() {
                    f.stale.store(true, Ordering::Relaxed);
                    tracing::warn!(issuer = %self.issuer, error = %e, "Cannot refresh JWT keys; still using the ones fetched before");
                } else {
                    tracing::warn!(issuer = %self.issuer, error = %e, "Cannot fetch JWT keys; tokens of this issuer get 503 until it works");
                }
            }
        }
        f.state.lock().running = false;
        f.done.send_modify(|g| *g += 1);
    }
}

impl Fetcher {
    async fn get(&self, url: &http::Uri) -> Result<Bytes, String> {
        let req = http::Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| format!("{url}: {e}"))?;
        if res.status() != http::StatusCode::OK {
            return Err(format!("{url}: status {}", res.status()));
        }
        let body = Limited::new(res.into_body(), MAX_DOCUMENT).collect().await.map_err(|e| format!("{url}: {e}"))?;
        Ok(body.to_bytes())
    }

    async fn load(&self) -> Result<Keys, String> {
        let url = match &self.origin {
            Origin::Url(u) => u.clone(),
            Origin::Discovery { url, issuer } => {
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let doc: Discovery = serde_json::from_slice(&self.get(url).await?)
                    .map_err(|e| format!("{url}: not an OpenID configuration: {e}"))?;
                if doc.issuer != *issuer {
                    return Err(format!("{url}: names issuer `{}`, not `{issuer}`", doc.issuer));
                }
                // Keys found over https are fetched over https: no downgrade.
                let https = url.scheme_str() == Some("https");
                match doc.jwks_uri.parse::<http::Uri>() {
                    Ok(u)
                        if u.authority().is_some()
                            && (u.scheme_str() == Some("https") || (!https && u.scheme_str() == Some("http"))) =>
                    {
                        u
                    }
                    _ => return Err(format!("{url}: unusable jwks_uri")),
                }
            }
        };
        Keys::from_jwks(&self.get(&url).await?)
    }
}

/// What makes two issuers' fetched sources the same: origin, issuer, refresh periods.
type SourceId = (Origin, String, Duration, Duration);

/// Fetched sources shared across config versions, so a reload that keeps an issuer keeps
/// its keys (and does not fetch them again).
#[derive(Debug, Default)]
pub(crate) struct SourceCache {
    sources: Mutex<HashMap<SourceId, Weak<Source>>>,
}

impl SourceCache {
    /// The key source for one issuer's config.
    pub(crate) fn source(&self, cfg: &JwtIssuerConfig) -> Result<Arc<Source>, String> {
        let origin = match &cfg.keys {
            KeySource::Inline(list) => {
                return Ok(Arc::new(Source {
                    issuer: cfg.issuer.clone(),
                    keys: ArcSwapOption::from_pointee(Keys::inline(cfg, list)),
                    fetch: None,
                }));
            }
            KeySource::JwksFile(_, text) => {
                return Ok(Arc::new(Source {
                    issuer: cfg.issuer.clone(),
                    keys: ArcSwapOption::from_pointee(Keys::from_jwks(text.as_bytes())?),
                    fetch: None,
                }));
            }
            KeySource::JwksUrl(u) => Origin::Url(u.clone()),
            KeySource::Discovery(u) => Origin::Discovery { url: u.clone(), issuer: cfg.issuer.clone() },
        };
        let id = (origin.clone(), cfg.issuer.clone(), cfg.refresh, cfg.min_refresh);
        let mut map = self.sources.lock();
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = map.get(&id).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let connector = crate::net::https_connector()?;
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build(connector);
        let (done, _) = watch::channel(0);
        let source = Arc::new(Source {
            issuer: cfg.issuer.clone(),
            keys: ArcSwapOption::empty(),
            fetch: Some(Fetcher {
                origin,
                refresh: cfg.refresh,
                min_refresh: cfg.min_refresh,
                client,
                state: Mutex::new(FetchState::default()),
                done,
                failures: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                stale: AtomicBool::new(false),
            }),
        });
        map.insert(id, Arc::downgrade(&source));
        drop(map);
        source.refresh(true);
        tokio::spawn(refresh_loop(Arc::downgrade(&source)));
        Ok(source)
    }
}

/// Refresh a fetched source every `refresh` (sooner, with backoff, while it has no keys)
/// until the last config version using it is gone.
async fn refresh_loop(source: Weak<Source>) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = {
            let Some(s) = source.upgrade() else { return };
            let Some(f) = s.fetch.as_ref() else { return };
            if s.keys.load().is_some() {
                retry = Duration::from_secs(1);
                f.refresh
            } else {
                retry = (retry * 2).min(f.refresh);
                retry
            }
        };
        tokio::time::sleep(wait).await;
        let Some(s) = source.upgrade() else { return };
        s.refresh(true);
    }
}
