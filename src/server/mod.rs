//! The gateway process: listeners, the current config snapshot, reloads and shutdown.
//!
//! Owns the one `ArcSwap<Snapshot>` every request reads, the set of bound listeners, and the
//! task tracker that shutdown drains. A reload compiles a complete new snapshot, binds any
//! new listeners, and only then swaps; on any failure the running config stays in force.

mod conn;
mod pipeline;
mod tunnel;
mod watch;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::auth::directory::Directory;
use crate::auth::jwks::SourceCache;
use crate::config::{self, Config, ConfigErrors, ListenerConfig};
use crate::config::{AccessLogConfig, StoreUrl};
use crate::health::HealthCache;
use crate::observe::access::AccessLog;
use crate::observe::audit::Audit;
use crate::observe::events::Events;
use crate::observe::events::{BlockReason, SecurityEvent};
use crate::observe::metrics::{Metrics, RouteMetrics, family, label_value, write_process};
use crate::observe::trace::{Counters as TraceCounters, Tracer};
use crate::protect::{ConnLimiter, Refused};
use crate::router::Table;
use crate::store::Store;
use crate::tls::ServerTls;
use crate::upstream::{PoolCache, Upstream, Upstreams};
use crate::upstream::{TargetView, UpstreamStatus};

pub use watch::watch_config;

/// One compiled, immutable version of the configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with each config applied since start.
    pub version: u64,
    /// The config it was built from.
    pub config: Config,
    /// The compiled route table.
    pub table: Table,
    /// Upstreams, indexed like `config.upstreams`.
    pub upstreams: Upstreams,
    /// Stops this version's background work (health probes) when it is replaced.
    stop: CancellationToken,
    /// Metrics of each route, indexed like `config.routes` (kept across reloads by name).
    pub(crate) route_metrics: Vec<Arc<RouteMetrics>>,
    /// Where request lines go, if anywhere.
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// Route and upstream names, shared with access-log records.
    pub(crate) route_names: Vec<Arc<str>>,
    pub(crate) upstream_names: Vec<Arc<str>>,
    /// Authentication and authorisation settings of this version.
    pub(crate) auth: Authenticator,
    /// The span exporter, when `observability.tracing` is set.
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// Each route's rate limiter, indexed like `config.routes`.
    pub(crate) limiters: Vec<Option<Arc<crate::ratelimit::Limiter>>>,
    /// Where rate-limit buckets are shared with other nodes (`cluster.redis`), if anywhere.
    pub(crate) shared_limits: Option<Arc<dyn crate::ratelimit::shared::SharedLimits>>,
    /// Each route's quota, indexed like `config.routes`.
    pub(crate) quotas: Vec<Option<Arc<crate::ratelimit::quota::Quota>>>,
    /// Each listener's TLS, indexed like `config.listeners`.
    pub(crate) listener_tls: Vec<Option<Arc<ServerTls>>>,
    /// The protected routes with lower-case patterns, when public routes exist next to them:
    /// a public route's request whose loose spelling they match is refused.
    pub(crate) shadow: Option<Table>,
}

impl Snapshot {
    fn build(version: u64, config: Config, inner: &Shared) -> Result<Snapshot, GatewayStartError> {
        let auth =
            Authenticator::build(&config, inner.directory.clone(), &inner.jwks).map_err(GatewayStartError::Auth)?;
        let table = Table::new(&config.routes);
        let shadow = (config.routes.iter().any(|r| r.auth.is_empty())
            && config.routes.iter().any(|r| !r.auth.is_empty()))
        .then(|| {
            let protected: Vec<_> = config
                .routes
                .iter()
                .filter(|r| !r.auth.is_empty())
                .map(|r| crate::config::RouteConfig { path: r.path.to_lowercase(), ..r.clone() })
                .collect();
            Table::new(&protected)
        });
        let stop = inner.shutdown.child_token();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, &inner.clients, &inner.health, &stop).map(Arc::new))
            .collect::<Result<Upstreams, String>>()
            .map_err(GatewayStartError::Tls)?;
        let route_metrics = config.routes.iter().map(|r| inner.metrics.route(&r.name)).collect();
        inner.metrics.retain_routes(config.routes.iter().map(|r| r.name.as_str()));
        let access_log = inner.access_log(config.access_log.as_ref());
        let tracer = inner.tracer(config.tracing.as_ref());
        let limiters = inner.limiters(&config.routes);
        let quotas = inner.quotas.for_routes(&config.routes);
        let shared_limits = inner.shared_limits(config.cluster.as_ref()).map_err(GatewayStartError::Cluster)?;
        let route_names = config.routes.iter().map(|r| Arc::from(r.name.as_str())).collect();
        let upstream_names = config.upstreams.iter().map(|u| Arc::from(u.name.as_str())).collect();
        let listener_tls = inner.listener_tls(&config.listeners)?;
        Ok(Snapshot {
            listener_tls,
            version,
            config,
            table,
            upstreams,
            stop,
            route_metrics,
            access_log,
            route_names,
            upstream_names,
            auth,
            shadow,
            tracer,
            limiters,
            quotas,
            shared_limits,
        })
    }
}

/// The open store: its URL, the store, and the token that stops its sync task.
type OpenStore = (StoreUrl, Arc<dyn Store>, CancellationToken);

/// What outlives config versions: connection pools, target health, the shutdown signal.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    clients: PoolCache,
    health: HealthCache,
    shutdown: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    /// The running access log, reused by a reload that keeps its settings.
    access_log: Mutex<Option<Arc<AccessLog>>>,
    /// Security events (authentication outcomes, refusals) and their subscribers.
    pub(crate) events: Arc<Events>,
    /// Bans, IP rules and the detector (subscribed to `events`).
    pub(crate) protection: Arc<crate::protect::Protection>,
    /// The Redis backend of shared rate limits, reused by a reload that keeps `cluster`.
    redis: Mutex<Option<Arc<crate::ratelimit::shared::RedisLimits>>>,
    /// Quota counters, written to the store by a task.
    pub(crate) quotas: Arc<crate::ratelimit::quota::Quotas>,
    /// The audit log's recorder (writes into the store, when there is one).
    pub(crate) audit: Arc<Audit>,
    /// The running span exporter, reused by a reload that keeps its settings.
    tracer: Mutex<Option<Arc<Tracer>>>,
    /// Span export counters (kept across exporters).
    trace_counters: Arc<TraceCounters>,
    /// Rate limiters by route name, kept across reloads that keep the route's `rate_limit`.
    limiters:
        Mutex<std::collections::HashMap<String, (crate::config::RateLimitConfig, Arc<crate::ratelimit::Limiter>)>>,
    /// Consumers and keys from the store, kept current by a sync task.
    directory: Arc<ArcSwap<Directory>>,
    /// Fetched JWT keys, shared by config versions.
    jwks: SourceCache,
    /// The open store, its URL, and the token that stops its sync task.
    store: tokio::sync::Mutex<Option<OpenStore>>,
    /// Listeners' TLS by listener name, kept across reloads that keep its settings (its
    /// files are re-read when they change, reload or not).
    tls: Mutex<std::collections::HashMap<String, Arc<crate::tls::ServerTls>>>,
}

impl Shared {
    /// Open the store `url` names (if it is not the one open already), load its consumers
    /// and keys, and keep them in sync; with `None`, close it and forget them.
    async fn use_store(&self, url: Option<&StoreUrl>) -> Result<(), GatewayStartError> {
        let mut cur = self.store.lock().await;
        if cur.as_ref().map(|(u, ..)| u) == url {
            return Ok(());
        }
        let Some(url) = url else {
            if let Some((_, _, stop)) = cur.take() {
                stop.cancel();
            }
            self.directory.store(Arc::new(Directory::default()));
            self.audit.set_store(None);
            self.quotas.set_store(None);
            self.protection.bans.forget_store();
            return Ok(());
        };
        let store = crate::store::open(url).await.map_err(GatewayStartError::Store)?;
        let ids = store.identities().await.map_err(GatewayStartError::Store)?;
        tracing::info!(consumers = ids.consumers.len(), keys = ids.keys.len(), "Store opened");
        self.directory.store(Arc::new(Directory::from_store(&ids)));
        // Not a child of `shutdown`: the store keeps syncing (bans lifted, quota counts
        // written) while requests drain; shutdown stops it after.
        let stop = CancellationToken::new();
        tokio::spawn(crate::auth::directory::sync(store.clone(), self.directory.clone(), stop.clone()));
        let seen = crate::protect::bans::load(&*store, &self.protection.bans).await;
        tokio::spawn(crate::protect::bans::sync(store.clone(), self.protection.bans.clone(), stop.clone(), seen));
        tokio::spawn(crate::ratelimit::quota::flusher(store.clone(), self.quotas.clone(), stop.clone()));
        self.audit.set_store(Some(store.clone()));
        self.quotas.set_store(Some(store.clone()));
        if let Some((_, _, old)) = cur.replace((url.clone(), store, stop)) {
            old.cancel();
        }
        Ok(())
    }

    fn limiters(&self, routes: &[crate::config::RouteConfig]) -> Vec<Option<Arc<crate::ratelimit::Limiter>>> {
        let (limiters, _) = crate::ratelimit::per_route(
            &mut self.limiters.lock(),
            routes,
            |r| r.rate_limit.as_ref(),
            |_, c| crate::ratelimit::Limiter::new(c.per_second, c.burst, c.max_keys),
        );
        limiters
    }

    /// The shared rate-limit backend for `cfg` (the running one if its settings are the same).
    fn shared_limits(
        &self,
        cfg: Option<&crate::config::ClusterConfig>,
    ) -> Result<Option<Arc<dyn crate::ratelimit::shared::SharedLimits>>, String> {
        let running = keep_or_try_start(
            &self.redis,
            cfg,
            |r| r.config(),
            |c| crate::ratelimit::shared::RedisLimits::new(c).map(Arc::new),
        )?;
        Ok(running.map(|r| r as Arc<dyn crate::ratelimit::shared::SharedLimits>))
    }

    /// Each listener's TLS, indexed like `listeners`: the running one when its settings are
    /// unchanged (checked for changed files now), else read from its files.
    fn listener_tls(&self, listeners: &[ListenerConfig]) -> Result<Vec<Option<Arc<ServerTls>>>, GatewayStartError> {
        let mut cache = self.tls.lock();
        let mut out = Vec::with_capacity(listeners.len());
        for l in listeners {
            let Some(cfg) = &l.tls else {
                out.push(None);
                continue;
            };
            let tls = match cache.get(&l.name).filter(|t| t.settings() == cfg) {
                Some(t) => {
                    t.refresh();
                    t.clone()
                }
                None => {
                    let t = Arc::new(ServerTls::load(&l.name, cfg).map_err(GatewayStartError::Tls)?);
                    cache.insert(l.name.clone(), t.clone());
                    t
                }
            };
            out.push(Some(tls));
        }
        cache.retain(|name, _| listeners.iter().any(|l| l.name == *name && l.tls.is_some()));
        Ok(out)
    }

    fn tracer(&self, cfg: Option<&crate::config::TracingConfig>) -> Option<Arc<Tracer>> {
        keep_or_start(&self.tracer, cfg, |t| t.config(), |c| Tracer::start(c.clone(), self.trace_counters.clone()))
    }

    /// Without an access log any more, the writer (and its file) go with the last request.
    fn access_log(&self, cfg: Option<&AccessLogConfig>) -> Option<Arc<AccessLog>> {
        keep_or_start(&self.access_log, cfg, |a| a.config(), |c| AccessLog::start(c.clone(), self.metrics.clone()))
    }
}

/// The running instance in `slot` if it was started with `cfg`, else a new one (or none,
/// without `cfg`): what a reload does for the parts that outlive config versions.
fn keep_or_start<C: PartialEq, T>(
    slot: &Mutex<Option<Arc<T>>>,
    cfg: Option<&C>,
    config_of: impl Fn(&T) -> &C,
    start: impl FnOnce(&C) -> Arc<T>,
) -> Option<Arc<T>> {
    let started: Result<_, std::convert::Infallible> = keep_or_try_start(slot, cfg, config_of, |c| Ok(start(c)));
    started.unwrap_or_else(|never| match never {})
}

/// [`keep_or_start`] for parts whose start can fail (the running one is kept then).
fn keep_or_try_start<C: PartialEq, T, E>(
    slot: &Mutex<Option<Arc<T>>>,
    cfg: Option<&C>,
    config_of: impl Fn(&T) -> &C,
    start: impl FnOnce(&C) -> Result<Arc<T>, E>,
) -> Result<Option<Arc<T>>, E> {
    let mut cur = slot.lock();
    let Some(cfg) = cfg else {
        *cur = None;
        return Ok(None);
    };
    if let Some(running) = cur.as_ref().filter(|r| config_of(r) == cfg) {
        return Ok(Some(running.clone()));
    }
    let fresh = start(cfg)?;
    *cur = Some(fresh.clone());
    Ok(Some(fresh))
}

/// Errors starting or reloading.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("listener `{name}` cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error("{0}")]
    Store(#[source] crate::store::StoreError),
    /// Identity settings could not be compiled.
    #[error("{0}")]
    Auth(String),
    /// `cluster` settings could not be used.
    #[error("{0}")]
    Cluster(String),
    /// A listener's certificates, key or CA bundle cannot be used.
    #[error("{0}")]
    Tls(String),
    /// `reload` was called on a gateway started without a file.
    #[error("this gateway was not started from a file")]
    NoFile,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// A new version is serving.
    Applied(u64),
    /// The file had not changed; this version keeps serving.
    Unchanged(u64),
}

#[derive(Debug)]
struct Running {
    /// Shared with the accept loop, which reads it per connection: a listener renamed on
    /// reload keeps its socket.
    name: Arc<Mutex<Arc<str>>>,
    bind: SocketAddr,
    local: SocketAddr,
    cancel: CancellationToken,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    shared: Shared,
    // Cold path: touched at start, reload and shutdown only.
    listeners: Mutex<Vec<Running>>,
    reload_lock: tokio::sync::Mutex<u64>,
    tracker: TaskTracker,
    path: Option<PathBuf>,
    started: tokio::time::Instant,
    started_wall: std::time::SystemTime,
    admin: Option<SocketAddr>,
    admin_stop: CancellationToken,
}

/// Settings of a start that do not come from the config file.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// Bearer token that opens the admin API's `/api/v1` (from `PORTCULLIS_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
}

/// The admin API's view of the node.
struct NodeView(Arc<Inner>);

impl crate::admin::Node for NodeView {
    fn status(&self) -> crate::admin::NodeStatus {
        let snap = self.0.snapshot.load_full();
        let listeners = self
            .0
            .listeners
            .lock()
            .iter()
            .map(|r| crate::admin::ListenerStatus { name: r.name.lock().to_string(), address: r.local.to_string() })
            .collect();
        crate::admin::NodeStatus {
            node: snap.config.node.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            config_version: snap.version,
            uptime_seconds: self.0.started.elapsed().as_secs(),
            listeners,
            upstreams: snap.upstreams.iter().map(|u| u.status()).collect(),
        }
    }

    fn ready(&self) -> bool {
        !self.0.shared.shutdown.is_cancelled()
    }

    fn audit_admin(&self, method: &str, path: &str, allowed: bool, client: Option<std::net::IpAddr>) {
        let audit = &self.0.shared.audit;
        if !audit.active() {
            return;
        }
        let actor = if allowed { "admin-token" } else { "anonymous" };
        let detail = crate::observe::audit::admin_detail(method, path, allowed, client);
        audit.record_admin(allowed, "admin_access", actor, detail);
    }

    fn bans(&self) -> Vec<crate::store::BanRecord> {
        self.0.shared.protection.bans.list(crate::clock::unix_ms())
    }

    fn ban(&self, key: &str, len: Duration, reason: &str) -> Result<crate::store::BanRecord, String> {
        let who = crate::protect::bans::Subject::parse(key).ok_or_else(|| bad_ban_key(key))?;
        self.0.shared.protection.ban(who, reason, len, "admin").ok_or_else(|| "the ban table is full".to_string())
    }

    fn unban(&self, key: &str) -> Result<bool, String> {
        let who = crate::protect::bans::Subject::parse(key).ok_or_else(|| bad_ban_key(key))?;
        Ok(self.0.shared.protection.unban(who, "admin"))
    }

    fn metrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.0.shared.metrics.write_requests(&mut out);
        let snap = self.0.snapshot.load_full();
        family(
            &mut out,
            "portcullis_config_version",
            "The config version serving now.",
            "gauge",
            [(String::new(), snap.version)],
        );
        family(
            &mut out,
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "When the first of a TLS listener's certificates in use expires (Unix time).",
            "gauge",
            snap.listener_tls
                .iter()
                .flatten()
                .map(|t| (format!("listener=\"{}\"", label_value(t.listener())), t.expires_at().max(0) as u64)),
        );
        let ups: Vec<_> = snap.upstreams.iter().map(|u| u.status()).collect();
        let upstream = |u: &UpstreamStatus| format!("upstream=\"{}\"", label_value(&u.name));
        let per_upstream = |out: &mut String, name: &str, help: &str, kind: &str, value: fn(&UpstreamStatus) -> u64| {
            family(out, name, help, kind, ups.iter().map(|u| (upstream(u), value(u))));
        };
        per_upstream(&mut out, "portcullis_upstream_in_flight", "Requests in flight to the upstream.", "gauge", |u| {
            u.in_flight.into()
        });
        per_upstream(
            &mut out,
            "portcullis_upstream_pending",
            "Requests waiting for a circuit-breaker slot.",
            "gauge",
            |u| u.pending.into(),
        );
        per_upstream(&mut out, "portcullis_upstream_retries_total", "Retries made to other targets.", "counter", |u| {
            u.retries
        });
        per_upstream(&mut out, "portcullis_upstream_healthy_targets", "Targets able to serve now.", "gauge", |u| {
            u.healthy as u64
        });
        let targets = || ups.iter().flat_map(|u| u.targets.iter().map(move |t| (u, t)));
        let target = |u: &UpstreamStatus, t: &TargetView| {
            format!("upstream=\"{}\",target=\"{}\"", label_value(&u.name), label_value(&t.health.url))
        };
        family(
            &mut out,
            "portcullis_target_healthy",
            "1 if the target is in rotation, 0 if unhealthy (probes) or ejected (passive detection).",
            "gauge",
            targets().map(|(u, t)| {
                let role = if t.health.backup { "backup" } else { "primary" };
                (format!("{},role=\"{role}\"", target(u, t)), u64::from(t.health.state == "healthy"))
            }),
        );
        family(
            &mut out,
            "portcullis_target_state",
            "1 for the state the target is in, 0 for the others.",
            "gauge",
            targets().flat_map(|(u, t)| {
                ["healthy", "unhealthy", "ejected"]
                    .map(|state| (format!("{},state=\"{state}\"", target(u, t)), u64::from(t.health.state == state)))
            }),
        );
        family(
            &mut out,
            "portcullis_target_in_flight",
            "Requests in flight to the target.",
            "gauge",
            targets().map(|(u, t)| (target(u, t), u64::from(t.health.in_flight))),
        );
        family(
            &mut out,
            "portcullis_target_idle_connections",
            "Idle keep-alive connections in the target's pool (in use ones are in portcullis_target_in_flight).",
            "gauge",
            targets().map(|(u, t)| (target(u, t), t.idle_connections as u64)),
        );
        family(
            &mut out,
            "portcullis_refused_heads_total",
            "Requests answered by the connection guard before routing: malformed (400), too slow (408), too large (413, 414, 431).",
            "counter",
            crate::protect::head::refused_counts().map(|(status, n)| (format!("status=\"{status}\""), n)),
        );
        family(
            &mut out,
            "portcullis_target_ejections_total",
            "Passive ejections of the target.",
            "counter",
            targets().map(|(u, t)| (target(u, t), t.health.ejections_total)),
        );
        self.0.shared.events.write_metrics(&mut out);
        self.0.shared.protection.write_metrics(&mut out);
        if let Some(r) = &snap.shared_limits {
            family(
                &mut out,
                "portcullis_shared_limits_up",
                "1 while the cluster's Redis answers rate-limit checks, 0 while limits fall back (cluster.redis_failure).",
                "gauge",
                [(String::new(), u64::from(r.up()))],
            );
            family(
                &mut out,
                "portcullis_shared_limits_failures_total",
                "Rate-limit checks the cluster's Redis failed or did not answer in time.",
                "counter",
                [(String::new(), r.failures())],
            );
        }
        family(
            &mut out,
            "portcullis_quota_unread_total",
            "Requests let through uncounted because their quota could not be read from the store.",
            "counter",
            [(String::new(), self.0.shared.quotas.unread())],
        );
        self.0.shared.audit.write_metrics(&mut out);
        family(
            &mut out,
            "portcullis_rate_limited_total",
            "Requests refused with 429 by the route's rate limit.",
            "counter",
            snap.limiters
                .iter()
                .zip(&snap.route_names)
                .filter_map(|(l, name)| l.as_ref().map(|l| (format!("route=\"{}\"", label_value(name)), l.limited()))),
        );
        let tc = &self.0.shared.trace_counters;
        family(
            &mut out,
            "portcullis_trace_spans_total",
            "Spans: exported to the collector, dropped (queue full), failed (export error).",
            "counter",
            [
                ("result=\"exported\"".to_string(), tc.exported.load(std::sync::atomic::Ordering::Relaxed)),
                ("result=\"dropped\"".to_string(), tc.dropped.load(std::sync::atomic::Ordering::Relaxed)),
                ("result=\"failed\"".to_string(), tc.failed.load(std::sync::atomic::Ordering::Relaxed)),
            ],
        );
        let jwks: Vec<_> = snap.auth.jwks_status();
        let issuer = |s: &crate::auth::jwks::SourceStatus| format!("issuer=\"{}\"", label_value(&s.issuer));
        family(
            &mut out,
            "portcullis_jwt_keys",
            "Verification keys held for the issuer.",
            "gauge",
            jwks.iter().map(|s| (issuer(s), s.keys as u64)),
        );
        family(
            &mut out,
            "portcullis_jwt_key_fetches_total",
            "Fetches of the issuer's keys, by result.",
            "counter",
            jwks.iter().flat_map(|s| {
                [
                    (format!("{},result=\"ok\"", issuer(s)), s.fetches_ok),
                    (format!("{},result=\"failed\"", issuer(s)), s.fetches_failed),
                ]
            }),
        );
        family(
            &mut out,
            "portcullis_jwt_keys_stale",
            "1 while the last refresh of the issuer's keys failed and older keys are in use.",
            "gauge",
            jwks.iter().map(|s| (issuer(s), u64::from(s.stale))),
        );
        let started = self.0.started_wall.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        write_process(&mut out, started);
        out
    }
}

fn bad_ban_key(key: &str) -> String {
    let shown: String = key.chars().take(64).collect();
    format!("`{shown}` is not a ban key: expected ip:ADDRESS, ip:NETWORK/LEN, an address or network, or consumer:NAME")
}

/// A running gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Fingerprint of config text and of the upstream TLS files its config names, to tell an
/// unchanged file from a changed one on reload.
pub fn source_hash(s: &str, config: &Config) -> u64 {
    hash_text(s) ^ upstream_tls_files_hash(config)
}

/// A hash of the contents of every file upstreams' `tls` settings name (0 for none).
fn upstream_tls_files_hash(config: &Config) -> u64 {
    let mut tls = config.upstreams.iter().filter_map(|u| u.tls.as_ref()).peekable();
    if tls.peek().is_none() {
        return 0;
    }
    let mut h = DefaultHasher::new();
    for t in tls {
        crate::tls::client::files_digest(t).hash(&mut h);
    }
    h.finish()
}

fn hash_text(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

async fn bind(l: &ListenerConfig) -> Result<TcpListener, GatewayStartError> {
    let err = |source| GatewayStartError::Bind { name: l.name.clone(), addr: l.bind, source };
    let domain = socket2::Domain::for_address(l.bind);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if l.bind.is_ipv6() {
        sock.set_only_v6(true).map_err(err)?;
    }
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&l.bind.into()).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    TcpListener::from_std(sock.into()).map_err(err)
}

impl Gateway {
    /// Start serving `config`. `path`, if given, is where [`Gateway::reload`] reads from.
    pub async fn start(config: Config, path: Option<PathBuf>) -> Result<Gateway, GatewayStartError> {
        // Unknown text: the first reload applies whatever is on disk.
        Self::start_from(config, path, 0).await
    }

    /// [`Gateway::start`] for a config parsed from text with this [`source_hash`], so that a
    /// reload of the same unchanged file is recognised as such.
    pub async fn start_from(
        config: Config,
        path: Option<PathBuf>,
        text_hash: u64,
    ) -> Result<Gateway, GatewayStartError> {
        Self::start_with(config, path, text_hash, StartOptions::default()).await
    }

    /// [`Gateway::start_from`] with settings from outside the config file.
    pub async fn start_with(
        config: Config,
        path: Option<PathBuf>,
        text_hash: u64,
        options: StartOptions,
    ) -> Result<Gateway, GatewayStartError> {
        let shared = Shared::default();
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push((l.clone(), bind(l).await?));
        }
        let admin_sock = match &config.admin {
            Some(a) => {
                let l = ListenerConfig { name: "admin".into(), bind: a.bind, limits: Default::default(), tls: None };
                Some(bind(&l).await?)
            }
            None => None,
        };
        let admin = admin_sock.as_ref().and_then(|s| s.local_addr().ok());
        let store = config.node.store.clone();
        shared.events.subscribe(shared.audit.clone());
        shared.events.subscribe(shared.protection.clone());
        shared.protection.attach(Arc::downgrade(&shared.events));
        shared.protection.configure(&config.protection);
        tokio::spawn(sweep_bans(shared.protection.bans.clone(), shared.shutdown.clone()));
        shared.audit.set_node(&config.node.name);
        let snapshot = Snapshot::build(1, config, &shared)?;
        shared.use_store(store.as_ref()).await?;
        shared.audit.record(
            "node_started",
            "portcullis",
            serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "config_version": 1 }),
        );
        let inner = Arc::new(Inner {
            snapshot: ArcSwap::from_pointee(snapshot),
            shared,
            listeners: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(text_hash),
            tracker: TaskTracker::new(),
            path,
            started: tokio::time::Instant::now(),
            started_wall: std::time::SystemTime::now(),
            admin,
            admin_stop: CancellationToken::new(),
        });
        let gw = Gateway { inner };
        tokio::spawn(watch_tls_files(Arc::downgrade(&gw.inner), gw.inner.shared.shutdown.clone()));
        if let Some(sock) = admin_sock {
            if let Some(a) = admin {
                tracing::info!(addr = %a, "Admin API listening");
            }
            let node: Arc<dyn crate::admin::Node> = Arc::new(NodeView(gw.inner.clone()));
            // Not the tracker's: the admin API keeps answering (/readyz: 503) while requests
            // drain, and stops after.
            let public_metrics = gw.inner.snapshot.load().config.admin.as_ref().is_some_and(|a| a.public_metrics);
            tokio::spawn(crate::admin::serve(
                sock,
                node,
                options.admin_token,
                public_metrics,
                gw.inner.admin_stop.clone(),
            ));
        }
        for (l, sock) in bound {
            gw.spawn_listener(&l, sock);
        }
        Ok(gw)
    }

    fn spawn_listener(&self, l: &ListenerConfig, sock: TcpListener) {
        let local = sock.local_addr().unwrap_or(l.bind);
        let cancel = self.inner.shared.shutdown.child_token();
        tracing::info!(listener = %l.name, addr = %local, "Listening");
        let name = Arc::new(Mutex::new(Arc::<str>::from(l.name.as_str())));
        self.inner.listeners.lock().push(Running { name: name.clone(), bind: l.bind, local, cancel: cancel.clone() });
        let inner = self.inner.clone();
        self.inner.tracker.spawn(accept_loop(inner, name, sock, cancel));
    }

    /// Address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.inner.listeners.lock().iter().find(|r| &**r.name.lock() == listener).map(|r| r.local)
    }

    /// The admin API's bound address, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin
    }

    /// Every listener's name and bound address.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.inner.listeners.lock().iter().map(|r| (r.name.lock().to_string(), r.local)).collect()
    }

    /// The snapshot serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Re-read the config file and apply it if it is valid. On any error the running
    /// config stays in force and the error is returned.
    pub async fn reload(&self) -> Result<Reloaded, GatewayStartError> {
        let path = self.inner.path.clone().ok_or(GatewayStartError::NoFile)?;
        let mut last_hash = self.inner.reload_lock.lock().await;
        let result: Result<Reloaded, GatewayStartError> = async {
            // One read: what is hashed is what is parsed.
            let text = config::read(&path)?;
            let config = config::parse(&path.display().to_string(), &text)?;
            // Upstreams' TLS files are read when a config is applied: a reload after they
            // were replaced applies again, even if the config text is the same. (Listeners'
            // files are watched on their own.)
            let h = source_hash(&text, &config);
            if h == *last_hash {
                return Ok(Reloaded::Unchanged(self.inner.snapshot.load().version));
            }
            let v = self.apply_locked(config).await?;
            *last_hash = h;
            Ok(Reloaded::Applied(v))
        }
        .await;
        let m = &self.inner.shared.metrics;
        match &result {
            Ok(Reloaded::Applied(_)) => m.reloads_applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Ok(Reloaded::Unchanged(_)) => 0,
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or("").to_string();
                self.inner.shared.audit.record(
                    "config_refused",
                    "portcullis",
                    serde_json::json!({ "error": first, "file": path.display().to_string() }),
                );
                m.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        };
        result
    }

    /// Apply a validated config now (as a reload does).
    pub async fn apply(&self, config: Config) -> Result<u64, GatewayStartError> {
        let _guard = self.inner.reload_lock.lock().await;
        self.apply_locked(config).await
    }

    async fn apply_locked(&self, config: Config) -> Result<u64, GatewayStartError> {
        // Match each listener of the new config to a running one: the same name and address
        // keeps it; the same (fixed) address under a new name keeps its socket and renames
        // it. Everything else is bound now, before anything changes: if a bind fails, the
        // reload is refused and the running config and listeners stay exactly as they were.
        let running: Vec<(usize, String, SocketAddr)> = {
            let r = self.inner.listeners.lock();
            r.iter().enumerate().map(|(i, r)| (i, r.name.lock().to_string(), r.bind)).collect()
        };
        let mut claimed = vec![false; running.len()];
        let mut renames: Vec<(usize, String)> = Vec::new();
        let mut to_bind: Vec<&ListenerConfig> = Vec::new();
        for l in &config.listeners {
            if let Some((i, ..)) = running.iter().find(|(i, n, b)| !claimed[*i] && n == &l.name && *b == l.bind) {
                claimed[*i] = true;
            } else if let Some((i, ..)) =
                running.iter().find(|(i, n, b)| !claimed[*i] && *b == l.bind && l.bind.port() != 0 && n != &l.name)
            {
                claimed[*i] = true;
                renames.push((*i, l.name.clone()));
            } else {
                to_bind.push(l);
            }
        }
        let mut added = Vec::new();
        for l in to_bind {
            added.push((l.clone(), bind(l).await?));
        }
        if config.node.workers != self.inner.snapshot.load().config.node.workers {
            tracing::warn!("node.workers changed: it takes effect at the next restart");
        }
        if config.admin != self.inner.snapshot.load().config.admin {
            tracing::warn!("admin changed: the admin listener changes at the next restart");
        }
        let version = self.inner.snapshot.load().version + 1;
        // Everything that can fail comes before anything changes: build, then switch stores.
        let store = config.node.store.clone();
        let node_name = config.node.name.clone();
        let snap = Snapshot::build(version, config, &self.inner.shared)?;
        self.inner.shared.use_store(store.as_ref()).await?;
        self.inner.shared.audit.set_node(&node_name);
        self.inner.shared.protection.configure(&snap.config.protection);
        self.inner.shared.clients.retain_used(&snap.upstreams);
        self.inner.shared.health.retain_used(snap.upstreams.iter().map(|u| u.health()));
        let old = self.inner.snapshot.swap(Arc::new(snap));
        old.stop.cancel();
        {
            let mut listeners = self.inner.listeners.lock();
            for (i, new_name) in renames {
                if let Some(r) = listeners.get(i) {
                    let mut n = r.name.lock();
                    tracing::info!(listener = %new_name, was = %*n, addr = %r.local, "Listener renamed");
                    *n = Arc::from(new_name.as_str());
                }
            }
            let mut idx = 0;
            listeners.retain(|r| {
                let keep = claimed.get(idx).copied().unwrap_or(true);
                idx += 1;
                if !keep {
                    tracing::info!(listener = %*r.name.lock(), addr = %r.local, "Listener removed");
                    r.cancel.cancel();
                }
                keep
            });
        }
        for (l, sock) in added {
            self.spawn_listener(&l, sock);
        }
        tracing::info!(config_version = version, "Config applied");
        self.inner.shared.audit.record(
            "config_applied",
            "portcullis",
            serde_json::json!({ "config_version": version }),
        );
        Ok(version)
    }

    /// Stop accepting, let in-flight requests finish for up to `grace`, then return.
    /// Returns true if everything drained in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.shared.shutdown.cancel();
        self.inner.tracker.close();
        let drained = tokio::time::timeout(grace, self.inner.tracker.wait()).await.is_ok();
        // The last lines reach the access log before the process goes.
        let log = self.inner.shared.access_log.lock().clone();
        if let Some(log) = log {
            let _ = tokio::task::spawn_blocking(move || log.close(Duration::from_secs(2))).await;
        }
        self.inner.admin_stop.cancel();
        self.inner.listeners.lock().clear();
        let shared = &self.inner.shared;
        shared.audit.summarise_pending();
        shared.audit.record("node_stopped", "portcullis", serde_json::json!({ "drained": drained }));
        shared.audit.flush(Duration::from_secs(2)).await;
        // Closing the store checkpoints SQLite's write-ahead log into the database file.
        if let Some((_, store, stop)) = self.inner.shared.store.lock().await.take() {
            stop.cancel();
            // Quota counts and bans still in memory go to the store first.
            shared.quotas.flush(&*store).await;
            shared.protection.bans.write_pending(&*store).await;
            store.close().await;
        }
        drained
    }

    /// The config file this gateway reloads from.
    pub fn config_path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }
}

/// How often listeners' certificate, key and CA files are checked for changes.
const TLS_FILE_CHECK: Duration = Duration::from_secs(1);

/// Re-read listeners' TLS files when they change (a stat of each file a second), until
/// `stop`. Rotation tools replace files in place or by symlink swap; both change what a
/// stat of the path reports.
async fn watch_tls_files(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TLS_FILE_CHECK) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let snap = inner.snapshot.load_full();
        drop(inner);
        let tls: Vec<Arc<ServerTls>> = snap.listener_tls.iter().flatten().cloned().collect();
        if tls.is_empty() {
            continue;
        }
        // File reads off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            for t in &tls {
                t.refresh();
            }
        })
        .await;
    }
}

/// Forget old bans and recount those in force, every second until `stop`.
async fn sweep_bans(bans: Arc<crate::protect::bans::Bans>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => bans.sweep(crate::clock::unix_ms()),
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, name: Arc<Mutex<Arc<str>>>, sock: TcpListener, cancel: CancellationToken) {
    let limiter = Arc::new(ConnLimiter::default());
    // Kept for the instant of a reload that renames this listener (the new name is set just
    // after the new snapshot is stored).
    let mut last = None;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sock.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %*name.lock(), error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let name = name.lock().clone();
        let snap = inner.snapshot.load();
        let this = snap.config.listeners.iter().position(|l| *l.name == *name);
        let Some((limits, tls)) = this
            .map(|i| (snap.config.listeners[i].limits, snap.listener_tls.get(i).cloned().flatten()))
            .or_else(|| last.clone())
        else {
            continue;
        };
        last = Some((limits, tls.clone()));
        let client = peer.ip().to_canonical();
        let events = &inner.shared.events;
        if let Some(reason) = inner.shared.protection.refuse_ip(client, &snap.config.protection) {
            events.publish(&SecurityEvent::Blocked { client, reason, at_accept: true });
            crate::protect::refuse_connection(&stream);
            continue;
        }
        let permit = match limiter.acquire(peer.ip(), limits.max_connections, limits.max_connections_per_ip) {
            Ok(p) => p,
            Err(why) => {
                let reason = match why {
                    Refused::Listener => BlockReason::Connections,
                    Refused::PerIp => BlockReason::ConnectionsPerIp,
                };
                events.publish(&SecurityEvent::Blocked { client, reason, at_accept: true });
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn_cancel = cancel.child_token();
        let accepted =
            conn::Accepted { peer, listener: name, gw: inner.clone(), limits, tls, cancel: conn_cancel, permit };
        inner.tracker.spawn(conn::serve(stream, accepted));
    }
}
