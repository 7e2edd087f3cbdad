//! The validated, typed configuration: what the rest of the gateway reads.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::pattern::{HostPattern, PathPattern};

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `node:` settings.
    pub node: NodeConfig,
    /// `listeners:`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `upstreams:`, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// `routes:`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `admin:`; `None` when the file has no admin listener.
    pub admin: Option<AdminConfig>,
    /// `observability.access_log`; `None`: no access log.
    pub access_log: Option<AccessLogConfig>,
}

/// `observability.access_log`: one JSON line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where the lines go.
    pub to: LogSink,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to (created if missing).
    File(std::path::PathBuf),
}

/// `admin:`: the admin API's own listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address and port (`127.0.0.1:9901` if not given).
    pub bind: SocketAddr,
    /// `public_metrics: true` serves `/metrics` without the admin token.
    pub public_metrics: bool,
}

/// `node:`
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Name of this node in logs (default `portcullis`).
    pub name: String,
    /// Worker threads; `None` is `auto` (one per core). Read at start only.
    pub workers: Option<NonZeroUsize>,
    /// How long a shutdown waits for in-flight requests (default 30s).
    pub shutdown_grace: Duration,
}

/// `listeners[]`
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address and port to bind.
    pub bind: SocketAddr,
    /// Per-connection limits.
    pub limits: ListenerLimits,
}

/// `listeners[].limits`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time allowed to receive a request head (from accept, or from its first byte on a
    /// kept-alive connection). 408 when exceeded.
    pub header_timeout: Duration,
    /// Time allowed to receive a whole request body. 408 when exceeded.
    pub body_timeout: Duration,
    /// How long a kept-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers). 431 (414 for the request line alone).
    pub max_header_bytes: usize,
    /// Largest request body. 413.
    pub max_body_bytes: u64,
    /// Concurrent connections from one client IP; more are closed at accept.
    pub max_connections_per_ip: u32,
    /// Concurrent connections on this listener; more are closed at accept.
    pub max_connections: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections_per_ip: 256,
            max_connections: 10_000,
        }
    }
}

/// `upstreams[].balance`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Each healthy target in turn.
    RoundRobin,
    /// Smooth weighted round robin on `targets[].weight`.
    Weighted,
    /// The less busy of two random targets (in-flight requests ÷ weight).
    LeastRequest,
    /// A hash ring: the same key goes to the same target while it is healthy.
    ConsistentHash(HashOn),
    /// A uniformly random healthy target.
    Random,
}

/// `upstreams[].hash_on`: what a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `header:NAME`.
    Header(HeaderName),
    /// `cookie:NAME`.
    Cookie(String),
    /// `ip`: the client's address.
    Ip,
}

/// `upstreams[]`
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    pub balance: Balance,
    /// At least one target.
    pub targets: Vec<TargetConfig>,
    /// `backup`: used only while no primary target is healthy.
    pub backup: Vec<TargetConfig>,
    /// `health`.
    pub health: HealthConfig,
    /// `retries`.
    pub retries: RetryConfig,
    /// `timeouts.connect` (default 2s).
    pub connect_timeout: Duration,
    /// `timeouts.response`: time until the response head arrives, counted from the end of
    /// the request body (default 30s).
    pub response_timeout: Duration,
    /// `timeouts.idle`: longest pause while the response body streams (default 5m).
    pub idle_timeout: Duration,
    /// `limits`: circuit breaking.
    pub limits: UpstreamLimits,
}

/// `upstreams[].targets[]` and `upstreams[].backup[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// `host:port` of the target (plain HTTP).
    pub authority: http::uri::Authority,
    /// `weight` (1-1000, default 1): share of traffic relative to the other targets.
    pub weight: u32,
}

/// `upstreams[].health`
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `active`: periodic probes; `None` when not configured.
    pub active: Option<ActiveHealth>,
    /// `passive`: outlier detection on live traffic.
    pub passive: PassiveHealth,
    /// `panic_threshold` (percent, default 0 = off): below this share of healthy primary
    /// targets, balance over all primary targets.
    pub panic_threshold: u8,
    /// `slow_start` (default 0 = off): a target back in rotation gets a share that grows
    /// linearly over this long.
    pub slow_start: Duration,
}

/// `upstreams[].health.active`
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealth {
    /// Path (and query) probed with GET.
    pub path: http::uri::PathAndQuery,
    /// `host`: Host header of probes (default: the target's `host:port`).
    pub host: Option<HeaderValue>,
    /// Time between probes of one target (±10% jitter).
    pub interval: Duration,
    /// Time allowed for a probe (connect and response head).
    pub timeout: Duration,
    /// Consecutive passed probes that bring an unhealthy target back.
    pub healthy_after: u32,
    /// Consecutive failed probes that take a healthy target out.
    pub unhealthy_after: u32,
    /// Accepted statuses, as inclusive ranges (default 200-399).
    pub statuses: Vec<(u16, u16)>,
}

/// `upstreams[].health.passive`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failures (connect errors, timeouts, resets, 5xx) that eject a target;
    /// 0 turns passive detection off.
    pub consecutive_failures: u32,
    /// First ejection time; each repeat ejection lasts one `eject_for` longer.
    pub eject_for: Duration,
    /// Longest ejection.
    pub max_eject_for: Duration,
    /// Most of an upstream's targets ejected at once, in percent (default 50).
    pub max_ejected: u8,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_eject_for: Duration::from_secs(300),
            max_ejected: 50,
        }
    }
}

/// When a failed attempt is tried again on another target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// `attempts`: most tries per request, the first included (1 = no retries; default 2).
    pub attempts: u32,
    /// `connect_failure`: the target could not be reached (the request was not sent).
    pub on_connect_failure: bool,
    /// `reset`: the connection failed after the request was sent, before a response.
    pub on_reset: bool,
    /// `timeout`: no response head within `timeouts.response`.
    pub on_timeout: bool,
    /// Response statuses that are retried (the response is discarded).
    pub on_statuses: Vec<u16>,
    /// `budget`: retries allowed as a share of requests, in percent (default 20).
    pub budget: u8,
    /// `max_body`: largest request body kept for replay (default 64KiB). A bigger body is
    /// retried only if the request was never sent.
    pub max_body: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            on_statuses: Vec::new(),
            budget: 20,
            max_body: 64 * 1024,
        }
    }
}

/// `upstreams[].limits`: circuit breaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Requests in flight to the upstream at once (each holds one connection).
    pub max_connections: u32,
    /// Requests allowed to wait for one of those; more get 503 at once.
    pub max_pending: u32,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits { max_connections: 1024, max_pending: 256 }
    }
}

/// `routes[]`
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Unique name.
    pub name: String,
    /// `match.host`; `None` matches any host.
    pub host: Option<HostPattern>,
    /// `match.path` or `match.prefix`.
    pub path: PathPattern,
    /// `match.methods`; empty matches any method. `GET` implies `HEAD`.
    pub methods: Vec<Method>,
    /// `match.headers`: each must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// `public: true`: no authentication required.
    pub public: bool,
    /// `retry_non_idempotent: true`: failed POST/PATCH (and other non-idempotent) requests
    /// may be retried like GETs. Off by default.
    pub retry_non_idempotent: bool,
}
