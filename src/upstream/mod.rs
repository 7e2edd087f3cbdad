//! Upstreams: choosing a healthy target and forwarding to it, with retries and circuit
//! breaking.
//!
//! Owns the connection pools (kept across reloads, keyed by target and settings), the
//! balancers ([`balance`]), the retry rules and budget ([`retry`]), the per-upstream
//! circuit breaker (`limits.max_connections` / `max_pending`), and the exchange with the
//! upstream. Target health is read from the `health` module and fed back to it with the
//! outcome of every attempt; nothing here changes health state directly.

pub mod balance;
mod body;
mod breaker;
mod pool;
pub mod retry;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Balance, RetryConfig, UpstreamConfig, UpstreamProtocol, UpstreamTls};
use crate::error::{GatewayError, cause_ref};
use crate::health::{Group, HealthCache, InFlight, TargetStatus};
use crate::net::Connector;
use crate::protect::{BodyError, BodyProgress, LimitedBody};
use balance::{Candidate, Live, Mode, Tried, hash_key};
pub use body::ProxyBody;
use body::Replayer;
use breaker::{Slot, Slots};
use pool::Pool;
pub use pool::{ConnectError, Loan};
use retry::Budget;

/// Pools shared across config versions. A reload that keeps a target keeps its warm
/// connections; pools of targets no config uses any more are dropped at the next apply.
#[derive(Debug, Default)]
pub struct PoolCache {
    // Cold path: locked only while a config is compiled.
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Circuit-breaker slots and retry budget per upstream name, kept while their settings
    /// stay the same, so a reload neither doubles the in-flight limit nor refills the budget.
    guards: Mutex<HashMap<String, Guards>>,
}

#[derive(Debug, Clone)]
struct Guards {
    settings: (u32, u32, u8),
    slots: Arc<Slots>,
    budget: Arc<Budget>,
}

/// What makes two pools interchangeable: the target and how it is reached (TLS settings
/// and the contents of their files).
type PoolKey = (Authority, Duration, UpstreamProtocol, Option<UpstreamTls>, [u8; 32]);

impl PoolCache {
    fn get(&self, authority: &Authority, cfg: &UpstreamConfig, connector: &Arc<Connector>) -> Arc<Pool> {
        let key = (authority.clone(), cfg.connect_timeout, cfg.protocol, cfg.tls.clone(), connector.tls_files());
        self.pools
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(Pool::new(authority.clone(), cfg.connect_timeout, connector.clone())))
            .clone()
    }

    fn guards(&self, cfg: &UpstreamConfig) -> Guards {
        let settings = (cfg.limits.max_connections, cfg.limits.max_pending, cfg.retries.budget);
        let mut all = self.guards.lock();
        match all.get(&cfg.name) {
            Some(g) if g.settings == settings => g.clone(),
            _ => {
                let g = Guards {
                    settings,
                    slots: Slots::new(cfg.limits.max_connections, cfg.limits.max_pending),
                    budget: Arc::new(Budget::new(cfg.retries.budget)),
                };
                all.insert(cfg.name.clone(), g.clone());
                g
            }
        }
    }

    /// Drop the pools and guards that none of `upstreams` uses.
    pub fn retain_used(&self, upstreams: &[Arc<Upstream>]) {
        self.pools.lock().retain(|_, p| upstreams.iter().any(|u| u.members.iter().any(|t| Arc::ptr_eq(&t.pool, p))));
        self.guards.lock().retain(|_, g| upstreams.iter().any(|u| Arc::ptr_eq(&u.slots, &g.slots)));
    }
}

#[derive(Debug)]
struct Member {
    authority: Authority,
    /// `host:port`, the member's place on the hash ring.
    key: String,
    pool: Arc<Pool>,
    weight: u32,
    backup: bool,
}

/// What a request holds while its exchange lasts: its in-flight count on the target and its
/// circuit-breaker slot.
#[derive(Debug)]
pub(crate) struct Held {
    _in_flight: InFlight,
    _slot: Slot,
}

/// What one request needs from the pipeline besides the request itself.
#[derive(Debug)]
pub struct Call<'a> {
    /// Normalised path and the query.
    pub path: PathAndQuery,
    /// For a request with a body: when it has been sent. The response timeout runs from
    /// then, so a long upload is bounded by the listener's `body_timeout` only.
    pub body: Option<&'a BodyProgress>,
    /// The client's address (for `hash_on: ip`).
    pub client: IpAddr,
    /// The route allows retrying non-idempotent methods.
    pub retry_non_idempotent: bool,
    /// A deadline the caller set (gRPC's `grpc-timeout`): the response head must come
    /// within it, if that is sooner than `timeouts.response`.
    pub deadline: Option<Duration>,
}

/// How an attempt failed, for the retry rules and passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection: the request was not sent.
    Connect,
    /// The connection failed after the request was (perhaps partly) sent.
    Reset,
    /// No response head in time.
    Timeout,
    /// The client's own body failed; not the target's fault.
    Client,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect failed",
            Failure::Reset => "connection reset",
            Failure::Timeout => "response timeout",
            Failure::Client => "client body",
        }
    }
}

struct Failed {
    error: GatewayError,
    kind: Failure,
}

/// One upstream of a config version.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    balance: Balance,
    members: Vec<Member>,
    health: Group,
    live: ArcSwap<Live>,
    epoch: Arc<AtomicU64>,
    // try_lock only: one request rebuilds a stale view, the others use the old one.
    rebuilding: Mutex<()>,
    /// When the pending end-of-slow-start rebuild is due (cold: taken by rebuilds only).
    ramp_timer: Mutex<Option<Instant>>,
    counter: AtomicUsize,
    panic_threshold: u8,
    slow_start: Duration,
    retry: RetryConfig,
    budget: Arc<Budget>,
    slots: Arc<Slots>,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
}

/// An upstream as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    /// Name from config.
    pub name: String,
    /// Balancing algorithm.
    pub balance: &'static str,
    /// `primary`, `backup` (no primary healthy), `panic` (too few healthy: all primaries)
    /// or `none` (nothing healthy: requests get 503).
    pub serving: &'static str,
    /// Targets able to serve now.
    pub healthy: usize,
    /// Requests in flight to this upstream.
    pub in_flight: u32,
    /// Requests waiting for a slot (`limits.max_pending`).
    pub pending: u32,
    /// Retries made since start (kept across reloads while `retries.budget` and `limits` stay).
    pub retries: u64,
    /// Every target, primaries then backups.
    pub targets: Vec<TargetView>,
}

/// One target in [`UpstreamStatus`].
#[derive(Debug, Serialize)]
pub struct TargetView {
    /// Health.
    #[serde(flatten)]
    pub health: TargetStatus,
    /// Configured weight.
    pub weight: u32,
    /// Idle keep-alive connections in its pool.
    pub idle_connections: usize,
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

impl Upstream {
    /// Build from config, reusing pools and health state. Active probes, if configured,
    /// run until `stop` is cancelled. Fails if the TLS files named cannot be used.
    pub fn new(
        cfg: &UpstreamConfig,
        pools: &PoolCache,
        health: &HealthCache,
        stop: &CancellationToken,
    ) -> Result<Self, String> {
        let connector = Arc::new(
            Connector::new(cfg.protocol, cfg.tls.as_ref()).map_err(|e| format!("upstream `{}`: {e}", cfg.name))?,
        );
        let targets = cfg.targets.iter().map(|t| (t, false)).chain(cfg.backup.iter().map(|t| (t, true)));
        let mut members = Vec::new();
        let mut states = Vec::new();
        for (t, backup) in targets {
            members.push(Member {
                authority: t.authority.clone(),
                key: t.authority.to_string(),
                pool: pools.get(&t.authority, cfg, &connector),
                weight: t.weight,
                backup,
            });
            states.push(health.target(&cfg.name, &t.authority, backup, t.https));
        }
        match &cfg.health.active {
            Some(active) => {
                let active = Arc::new(active.clone());
                for (s, m) in states.iter().zip(&members) {
                    let connector = m.pool.connector().clone();
                    crate::health::active::spawn(s.clone(), active.clone(), connector, stop.child_token());
                }
            }
            None => states.iter().for_each(|s| s.forget_probes()),
        }
        let guards = pools.guards(cfg);
        let up = Upstream {
            name: cfg.name.clone(),
            balance: cfg.balance.clone(),
            members,
            health: Group::new(&cfg.name, states, cfg.health.passive),
            live: ArcSwap::from_pointee(Live::build(u64::MAX, &Balance::RoundRobin, &[], &[], 0, Duration::ZERO)),
            epoch: health.epoch(&cfg.name),
            rebuilding: Mutex::new(()),
            ramp_timer: Mutex::new(None),
            counter: AtomicUsize::new(0),
            panic_threshold: cfg.health.panic_threshold,
            slow_start: cfg.health.slow_start,
            retry: cfg.retries.clone(),
            budget: guards.budget,
            slots: guards.slots,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
        };
        up.rebuild();
        Ok(up)
    }

    /// Name from config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `timeouts.idle`: the longest pause allowed between chunks of the response body.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The `host:port` of target `idx` (as returned by [`Upstream::forward`]).
    pub fn target(&self, idx: usize) -> Option<&Authority> {
        self.members.get(idx).map(|m| &m.authority)
    }

    /// The health group (for status views).
    pub fn health(&self) -> &Group {
        &self.health
    }

    fn rebuild(&self) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let candidates: Vec<Candidate> = self
            .members
            .iter()
            .zip(self.health.members())
            .map(|(m, h)| Candidate {
                available: h.available(),
                backup: m.backup,
                weight: m.weight,
                back_at: h.back_at(),
            })
            .collect();
        let keys: Vec<&str> = self.members.iter().map(|m| m.key.as_str()).collect();
        let live = Live::build(epoch, &self.balance, &candidates, &keys, self.panic_threshold, self.slow_start);
        if let Some(end) = live.ramp_ends() {
            let mut scheduled = self.ramp_timer.lock();
            if scheduled.is_none_or(|t| t < end) {
                *scheduled = Some(end);
                // Rebuild when the ramp is over, so picks stop consulting the clock.
                let epoch = self.epoch.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(end).await;
                    epoch.fetch_add(1, Ordering::Release);
                });
            }
        }
        let before = self.live.load();
        // The first view (built with the upstream) logs only if it does not serve normally.
        let first = before.epoch == u64::MAX;
        if live.mode != before.mode && !(first && live.mode == Mode::Primary) {
            match live.mode {
                Mode::Primary => tracing::info!(upstream = %self.name, "Serving from primary targets"),
                Mode::Backup => {
                    tracing::warn!(upstream = %self.name, "No primary target is healthy: serving from backups")
                }
                Mode::Panic => {
                    tracing::warn!(upstream = %self.name, "Too few healthy targets: panic mode, balancing over all primaries")
                }
                Mode::Empty => tracing::error!(upstream = %self.name, "No target is healthy: refusing requests"),
            }
        }
        self.live.store(Arc::new(live));
    }

    /// The current view, rebuilt first if target health changed since it was made.
    #[inline]
    fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        let live = self.live.load();
        if live.epoch == self.epoch.load(Ordering::Acquire) {
            return live;
        }
        drop(live);
        if let Some(_one) = self.rebuilding.try_lock() {
            self.rebuild();
        }
        self.live.load()
    }

    /// A circuit-breaker slot: at once if one is free; otherwise wait (up to
    /// `timeouts.connect`) if fewer than `max_pending` requests are waiting already.
    async fn admit(&self) -> Result<Slot, GatewayError> {
        self.slots
            .take(self.connect_timeout)
            .await
            .ok_or_else(|| GatewayError::Overloaded { upstream: self.name.clone() })
    }

    /// Send `req` (headers already cleaned, `Host` set) to a healthy target, retrying as
    /// configured. The [`Loan`] must travel with the response body; the index names the target
    /// that answered ([`Upstream::target`]).
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        call: Call<'_>,
    ) -> Result<(Response<Incoming>, Option<Loan>, usize), GatewayError> {
        // Nothing healthy: refused at once, without waiting for a breaker slot.
        if self.live().mode == Mode::Empty {
            return Err(GatewayError::NoTarget { upstream: self.name.clone() });
        }
        let admitted = self.admit().await?;
        self.budget.deposit();
        // HTTP/1.1 upstream requests use origin-form; Host carries the authority.
        *req.uri_mut() = Uri::from(call.path);
        *req.version_mut() = Version::HTTP_11;
        let key = match &self.balance {
            Balance::ConsistentHash(on) => hash_key(on, req.headers(), call.client),
            _ => None,
        };
        let attempts = self.retry.attempts as usize;
        let resend = attempts > 1
            && (is_idempotent(req.method()) || call.retry_non_idempotent)
            && (self.retry.on_reset || self.retry.on_timeout || !self.retry.on_statuses.is_empty());
        if resend {
            req.body_mut().keep(self.retry.max_body);
        }
        let mut tried = Tried::default();
        // The request for the next attempt; put back by an attempt that never sent it.
        let mut pending = Some(req);
        loop {
            let i = {
                let live = self.live();
                live.pick(&self.balance, &self.counter, key, &tried, |i| {
                    let m = usize::from(i);
                    (self.health.members().get(m).map_or(0, |h| h.in_flight()), self.members[m].weight)
                })
            };
            let Some(i) = i else {
                return Err(GatewayError::NoTarget { upstream: self.name.clone() });
            };
            tried.push(i);
            let idx = usize::from(i);
            let more = tried.len() < attempts;
            // Whatever a resend would need, taken before the request is given away.
            let again = match &pending {
                Some(req) if resend && more => Some((head_of(req), req.body().replayer())),
                _ => None,
            };
            let in_flight = self.health.members()[idx].start_request();
            match self.attempt(idx, &mut pending, call.body, call.deadline).await {
                Ok((res, tx)) => {
                    let status = res.status();
                    if status.is_server_error() {
                        self.health.record_failure(idx, status.as_str());
                    } else {
                        self.health.record_success(idx);
                    }
                    if self.retry.on_statuses.contains(&status.as_u16())
                        && let Some(r) = again.as_ref().and_then(rebuild)
                        && self.budget.withdraw()
                    {
                        tracing::debug!(upstream = %self.name, target = %self.members[idx].authority, status = status.as_u16(), "Retrying on another target");
                        pending = Some(r);
                        continue;
                    }
                    let held = Held { _in_flight: in_flight, _slot: admitted };
                    let loan = Loan::new(tx, self.members[idx].pool.clone(), held);
                    // An upgraded connection never goes back to the pool.
                    if status != http::StatusCode::SWITCHING_PROTOCOLS && http_body::Body::is_end_stream(res.body()) {
                        loan.give_back();
                        return Ok((res, None, idx));
                    }
                    return Ok((res, Some(loan), idx));
                }
                Err(Failed { error, kind }) => {
                    if kind != Failure::Client {
                        self.health.record_failure(idx, kind.as_str());
                    }
                    let retry = match kind {
                        // Never sent: the same request goes out again, whatever its method.
                        Failure::Connect => self.retry.on_connect_failure && pending.is_some(),
                        Failure::Reset if self.retry.on_reset => {
                            pending = again.as_ref().and_then(rebuild);
                            pending.is_some()
                        }
                        Failure::Timeout if self.retry.on_timeout => {
                            pending = again.as_ref().and_then(rebuild);
                            pending.is_some()
                        }
                        _ => false,
                    };
                    if retry && more && self.budget.withdraw() {
                        tracing::debug!(upstream = %self.name, target = %self.members[idx].authority, failure = kind.as_str(), "Retrying on another target");
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One try on member `idx` with the request in `slot`. If the request never left the
    /// gateway, it is back in `slot` when this returns (it is passed by reference so that
    /// the large request is not moved through every layer of futures).
    async fn attempt(
        &self,
        idx: usize,
        slot: &mut Option<Request<ProxyBody>>,
        progress: Option<&BodyProgress>,
        deadline: Option<Duration>,
    ) -> Result<(Response<Incoming>, pool::Sender), Failed> {
        let member = &self.members[idx];
        let mut progress = progress;
        if let Some(req) = slot.as_mut() {
            // (A request made for HTTP/2 already has its host in the URI.)
            if !req.headers().contains_key(http::header::HOST)
                && req.uri().authority().is_none()
                && let Ok(h) = http::HeaderValue::from_str(member.authority.as_str())
            {
                req.headers_mut().insert(http::header::HOST, h);
            }
            // Only the client's live body has upload progress; a replayed one is in memory.
            if !matches!(req.body(), ProxyBody::Stream { .. }) {
                progress = None;
            }
        }
        let exchange = async {
            let mut resends = 0;
            loop {
                let (mut tx, reused) = match member.pool.checkout().await {
                    Ok(x) => x,
                    Err(e) => return Err(Failed { error: self.connect_error(e), kind: Failure::Connect }),
                };
                let Some(mut req) = slot.take() else {
                    return Err(Failed {
                        error: GatewayError::BadRequest("request already sent"),
                        kind: Failure::Client,
                    });
                };
                if tx.is_h2() {
                    if req.headers().contains_key(http::header::UPGRADE) {
                        return Err(Failed {
                            error: GatewayError::UpstreamProtocol {
                                upstream: self.name.clone(),
                                why: "WebSocket needs an HTTP/1.1 upstream",
                            },
                            kind: Failure::Client,
                        });
                    }
                    as_h2(&mut req, &member.authority, member.pool.connector().is_tls());
                } else if req.version() != Version::HTTP_11 {
                    as_h1(&mut req);
                }
                match tx.try_send(req).await {
                    Ok(res) => return Ok((res, tx)),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let source = e.into_error();
                        let never_sent = unsent.is_some();
                        *slot = unsent;
                        if never_sent && reused && resends < 3 {
                            // Not sent at all: send it again on another connection.
                            resends += 1;
                            continue;
                        }
                        let kind = if never_sent {
                            Failure::Connect
                        } else if cause_ref::<BodyError>(&source).is_some() {
                            Failure::Client
                        } else {
                            Failure::Reset
                        };
                        return Err(Failed {
                            error: GatewayError::Upstream { upstream: self.name.clone(), source },
                            kind,
                        });
                    }
                }
            }
        };
        let limit = deadline.map_or(self.response_timeout, |d| d.min(self.response_timeout));
        // Ends with the side at fault: the client (its body stopped coming) or the upstream.
        let expired = async {
            let mut deadline = Instant::now() + limit;
            loop {
                tokio::time::sleep_until(deadline).await;
                match progress {
                    None => return Failure::Timeout,
                    Some(p) => match p.done_at() {
                        Some(sent) if sent + limit <= Instant::now() => return Failure::Timeout,
                        Some(sent) => deadline = sent + limit,
                        // Still uploading at the body's deadline: the client's fault if its
                        // body is what we wait for; the upstream's if it stopped reading (then
                        // the body is not polled, so its own timer never fires).
                        None if Instant::now() >= p.deadline() => {
                            return if p.waiting_on_client() { Failure::Client } else { Failure::Timeout };
                        }
                        None => deadline = (Instant::now() + limit).min(p.deadline()),
                    },
                }
            }
        };
        // The caller's own deadline, shorter than the upstream's: running out of it is no
        // fault of the target (no health record, no retry), or any caller could eject
        // healthy targets by asking for `grpc-timeout: 1n`.
        let callers = deadline.is_some_and(|d| d < self.response_timeout);
        tokio::select! {
            biased;
            r = exchange => r,
            kind = expired => Err(Failed {
                error: match kind {
                    Failure::Client => GatewayError::BodyTimeout,
                    _ => GatewayError::UpstreamTimeout { upstream: self.name.clone() },
                },
                kind: if callers { Failure::Client } else { kind },
            }),
        }
    }

    fn connect_error(&self, source: ConnectError) -> GatewayError {
        match source {
            ConnectError::Dial(crate::net::DialError::Timeout) => {
                GatewayError::UpstreamConnectTimeout { upstream: self.name.clone() }
            }
            source => GatewayError::UpstreamConnect { upstream: self.name.clone(), source },
        }
    }

    /// The view the admin API shows.
    pub fn status(&self) -> UpstreamStatus {
        let live = self.live();
        UpstreamStatus {
            name: self.name.clone(),
            balance: match self.balance {
                Balance::RoundRobin => "round_robin",
                Balance::Weighted => "weighted",
                Balance::LeastRequest => "least_request",
                Balance::ConsistentHash(_) => "consistent_hash",
                Balance::Random => "random",
            },
            serving: match live.mode {
                Mode::Primary => "primary",
                Mode::Backup => "backup",
                Mode::Panic => "panic",
                Mode::Empty => "none",
            },
            healthy: self.health.members().iter().filter(|h| h.available()).count(),
            in_flight: self.slots.in_use(),
            pending: self.slots.pending(),
            retries: self.budget.taken(),
            targets: self
                .health
                .status()
                .into_iter()
                .zip(&self.members)
                .map(|(health, m)| TargetView { health, weight: m.weight, idle_connections: m.pool.idle_count() })
                .collect(),
        }
    }
}

/// Make `req` (origin-form, `Host` set) an HTTP/2 request: the absolute URI gives
/// `:scheme` and `:authority` (the `Host` the client asked for, which then goes: some
/// servers, NGINX among them, refuse both as a duplicate host), and HTTP/1.1 framing
/// headers go.
fn as_h2(req: &mut Request<ProxyBody>, target: &Authority, tls: bool) {
    // Already made for HTTP/2 (a resend): the URI has the client's host.
    if req.version() == Version::HTTP_2 && req.uri().authority().is_some() {
        return;
    }
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| target.clone());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = req.uri().path_and_query().cloned().or_else(|| Some(PathAndQuery::from_static("/")));
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(http::header::TRANSFER_ENCODING);
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = Version::HTTP_2;
}

/// Back to HTTP/1.1 (a request first fitted for an HTTP/2 connection that did not take it):
/// `Host` from the authority again, origin-form.
fn as_h1(req: &mut Request<ProxyBody>) {
    if let Some(a) = req.uri().authority()
        && let Ok(h) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().entry(http::header::HOST).or_insert(h);
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    // A body of unknown length is sent chunked (hyper would send a GET's as empty).
    let body = req.body();
    if !http_body::Body::is_end_stream(body) && http_body::Body::size_hint(body).exact().is_none() {
        req.headers_mut().insert(http::header::TRANSFER_ENCODING, http::HeaderValue::from_static("chunked"));
    }
    *req.version_mut() = Version::HTTP_11;
}

/// The head of a request, for sending it again.
fn head_of(req: &Request<ProxyBody>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

fn rebuild((head, body): &(Request<()>, Replayer)) -> Option<Request<ProxyBody>> {
    let body = body.body()?;
    Some(head.clone().map(|()| body))
}

/// Wrap a client body for forwarding.
pub fn proxy_body(b: Option<LimitedBody>) -> ProxyBody {
    ProxyBody::new(b)
}

/// All upstreams of a config version, indexed like the config's list.
pub type Upstreams = Vec<Arc<Upstream>>;
