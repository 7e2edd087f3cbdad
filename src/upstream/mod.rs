//! Upstreams: target selection and the pooled HTTP/1.1 client that forwards requests.
//!
//! Owns connection pools (kept across reloads, keyed by their settings), balancing
//! (round robin) and the upstream side of header hygiene.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::protect::LimitedBody;

mod body;
pub use body::ProxyBody;

/// The pooled client type.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per target.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Clients (and so their connection pools) shared across config versions, keyed by the
/// settings that shape them. A reload that keeps an upstream's settings keeps its pool.
#[derive(Debug, Default)]
pub struct ClientCache {
    // Cold path: locked only while a config is compiled.
    clients: Mutex<HashMap<Duration, HttpClient>>,
}

impl ClientCache {
    fn get(&self, connect_timeout: Duration) -> HttpClient {
        self.clients
            .lock()
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut conn = HttpConnector::new();
                conn.set_nodelay(true);
                conn.set_connect_timeout(Some(connect_timeout));
                conn.set_keepalive(Some(Duration::from_secs(60)));
                conn.enforce_http(true);
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                    .http1_preserve_header_case(false)
                    .build(conn)
            })
            .clone()
    }
}

/// One upstream of a config version.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    targets: Vec<Authority>,
    next: AtomicUsize,
    client: HttpClient,
    response_timeout: Duration,
}

impl Upstream {
    /// Build from config, reusing a pooled client from `cache`.
    pub fn new(cfg: &UpstreamConfig, cache: &ClientCache) -> Self {
        Upstream {
            name: cfg.name.clone(),
            targets: cfg.targets.iter().map(|t| t.authority.clone()).collect(),
            next: AtomicUsize::new(0),
            client: cache.get(cfg.connect_timeout),
            response_timeout: cfg.response_timeout,
        }
    }

    /// Name from config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Round robin over the targets.
    fn pick(&self) -> Option<&Authority> {
        if self.targets.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.targets.get(n % self.targets.len())
    }

    /// Send `req` (headers already cleaned) to a target. `path` is the normalised path with
    /// the query, to be sent as is.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        path: PathAndQuery,
    ) -> Result<Response<Incoming>, GatewayError> {
        let target = self
            .pick()
            .ok_or_else(|| GatewayError::NoTarget {
                upstream: self.name.clone(),
            })?
            .clone();
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(target);
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| GatewayError::BadRequest("unusable request target"))?;
        *req.version_mut() = Version::HTTP_11;
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                upstream: self.name.clone(),
            }),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) if e.is_connect() => Err(GatewayError::UpstreamConnect {
                upstream: self.name.clone(),
                source: e,
            }),
            Ok(Err(e)) => Err(GatewayError::Upstream {
                upstream: self.name.clone(),
                source: e,
            }),
        }
    }
}

/// Wrap a client body for forwarding.
pub fn proxy_body(b: Option<LimitedBody>) -> ProxyBody {
    ProxyBody::new(b)
}

/// All upstreams of a config version, indexed like the config's list.
pub type Upstreams = Vec<Arc<Upstream>>;
