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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each target in turn.
    RoundRobin,
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
    /// `timeouts.connect` (default 2s).
    pub connect_timeout: Duration,
    /// `timeouts.response`: time until the response head arrives, counted from the end of
    /// the request body (default 30s).
    pub response_timeout: Duration,
    /// `timeouts.idle`: longest pause while the response body streams (default 5m).
    pub idle_timeout: Duration,
}

/// `upstreams[].targets[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// `host:port` of the target (plain HTTP).
    pub authority: http::uri::Authority,
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
}
