//! Upstreams: target selection and forwarding over pooled HTTP/1.1 connections.
//!
//! Owns the connection pools (kept across reloads, keyed by target and settings),
//! balancing (round robin) and the exchange with the upstream, including the one safe
//! retry: a request that a reused connection could not even send goes out again on a
//! fresh connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::protect::{BodyProgress, LimitedBody};
use tokio::time::Instant;

mod body;
mod pool;
pub use body::ProxyBody;
use pool::Pool;
pub use pool::{ConnectError, Loan};

/// Pools shared across config versions. A reload that keeps a target keeps its warm
/// connections; pools of targets no config uses any more are dropped at the next apply.
#[derive(Debug, Default)]
pub struct PoolCache {
    // Cold path: locked only while a config is compiled.
    pools: Mutex<HashMap<(Authority, Duration), Arc<Pool>>>,
}

impl PoolCache {
    fn get(&self, authority: &Authority, connect_timeout: Duration) -> Arc<Pool> {
        self.pools
            .lock()
            .entry((authority.clone(), connect_timeout))
            .or_insert_with(|| Arc::new(Pool::new(authority.clone(), connect_timeout)))
            .clone()
    }

    /// Drop the pools that none of `upstreams` uses.
    pub fn retain_used(&self, upstreams: &[Arc<Upstream>]) {
        self.pools.lock().retain(|_, p| upstreams.iter().any(|u| u.targets.iter().any(|t| Arc::ptr_eq(&t.pool, p))));
    }
}

#[derive(Debug)]
struct Target {
    authority: Authority,
    pool: Arc<Pool>,
}

/// One upstream of a config version.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    response_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// Build from config, reusing pools from `cache`.
    pub fn new(cfg: &UpstreamConfig, cache: &PoolCache) -> Self {
        Upstream {
            name: cfg.name.clone(),
            targets: cfg
                .targets
                .iter()
                .map(|t| Target { authority: t.authority.clone(), pool: cache.get(&t.authority, cfg.connect_timeout) })
                .collect(),
            next: AtomicUsize::new(0),
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// Name from config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `timeouts.idle`: the longest pause allowed between chunks of the response body.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Round robin over the targets.
    fn pick(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.targets.get(n % self.targets.len())
    }

    /// Send `req` (headers already cleaned, `Host` set) to a target. `path` is the
    /// normalised path with the query. The [`Loan`] must travel with the response body.
    /// `body`, for a request with a body, tells when it has been sent: the response timeout
    /// runs from then, so a long upload is bounded by the listener's `body_timeout` only.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        path: PathAndQuery,
        body: Option<&BodyProgress>,
    ) -> Result<(Response<Incoming>, Option<Loan>), GatewayError> {
        let target = self.pick().ok_or_else(|| GatewayError::NoTarget { upstream: self.name.clone() })?;
        // HTTP/1.1 upstream requests use origin-form; Host carries the authority.
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(h) = http::HeaderValue::from_str(target.authority.as_str())
        {
            req.headers_mut().insert(http::header::HOST, h);
        }
        let exchange = async {
            let mut req = req;
            loop {
                let (mut tx, reused) = target.pool.checkout().await.map_err(|e| self.connect_error(e))?;
                match tx.try_send_request(req).await {
                    Ok(res) => return Ok((res, tx)),
                    Err(mut e) => match e.take_message() {
                        // Not sent at all: safe to send again, on another connection.
                        Some(r) if reused => req = r,
                        _ => {
                            return Err(GatewayError::Upstream { upstream: self.name.clone(), source: e.into_error() });
                        }
                    },
                }
            }
        };
        let limit = self.response_timeout;
        let expired = async {
            let mut deadline = Instant::now() + limit;
            loop {
                tokio::time::sleep_until(deadline).await;
                match body.map(BodyProgress::done_at) {
                    None => return,
                    Some(Some(sent)) if sent + limit <= Instant::now() => return,
                    Some(Some(sent)) => deadline = sent + limit,
                    // Still uploading. An upstream that stopped reading stalls the upload
                    // without the body ever being polled again, so the body's own deadline
                    // is enforced here too.
                    Some(None) if Instant::now() >= body.map_or(deadline, BodyProgress::deadline) => return,
                    Some(None) => {
                        deadline = (Instant::now() + limit).min(body.map_or(deadline, BodyProgress::deadline))
                    }
                }
            }
        };
        let (res, tx) = tokio::select! {
            biased;
            r = exchange => r?,
            () = expired => return Err(GatewayError::UpstreamTimeout { upstream: self.name.clone() }),
        };
        let loan = Loan::new(tx, target.pool.clone());
        if http_body::Body::is_end_stream(res.body()) {
            loan.give_back();
            return Ok((res, None));
        }
        Ok((res, Some(loan)))
    }

    fn connect_error(&self, source: ConnectError) -> GatewayError {
        match source {
            ConnectError::Timeout => GatewayError::UpstreamConnectTimeout { upstream: self.name.clone() },
            source => GatewayError::UpstreamConnect { upstream: self.name.clone(), source },
        }
    }
}

/// Wrap a client body for forwarding.
pub fn proxy_body(b: Option<LimitedBody>) -> ProxyBody {
    ProxyBody::new(b)
}

/// All upstreams of a config version, indexed like the config's list.
pub type Upstreams = Vec<Arc<Upstream>>;
