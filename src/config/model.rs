//! The validated, typed configuration: what the rest of the gateway reads.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
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
    /// `observability.tracing`; `None`: no spans (a client's `traceparent` passes through).
    pub tracing: Option<TracingConfig>,
    /// `auth:`: how callers prove who they are (used by routes' `auth`).
    pub auth: AuthConfig,
    /// `consumers:` declared in the file (GitOps), next to those in the store.
    pub consumers: Vec<ConsumerConfig>,
    /// `protection:`: automated bans and IP rules.
    pub protection: ProtectionConfig,
    /// `cluster:`: what nodes share (today: rate-limit buckets in Redis).
    pub cluster: Option<ClusterConfig>,
}

/// `cluster:`
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `cluster.redis`: `redis://[:PASSWORD@]HOST:PORT[/DB]`, where rate-limit buckets live.
    pub redis: String,
    /// `cluster.redis_failure`: what rate limits do while Redis is unreachable.
    pub redis_failure: RedisFailure,
    /// `cluster.redis_timeout`: longest wait for one check (default 50ms).
    pub redis_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only where it points.
        let shown = match self.redis.rsplit_once('@') {
            Some((_, host)) => format!("redis://***@{host}"),
            None => self.redis.clone(),
        };
        f.debug_struct("ClusterConfig")
            .field("redis", &shown)
            .field("redis_failure", &self.redis_failure)
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

/// `cluster.redis_failure`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Fall back to this node's own limits (fail-open for the cluster: each node limits alone).
    Local,
    /// Refuse rate-limited requests with 503 (fail-closed).
    Closed,
}

impl RedisFailure {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            RedisFailure::Local => "local",
            RedisFailure::Closed => "closed",
        }
    }
}

/// `protection:`
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectionConfig {
    /// `protection.bans`: detection rules and the bans they impose.
    pub bans: Vec<BanRule>,
    /// `protection.ip_rules.allow`: when not empty, only these networks may connect.
    pub ip_allow: Vec<ipnet::IpNet>,
    /// `protection.ip_rules.deny`: these networks may not connect (wins over `allow`).
    pub ip_deny: Vec<ipnet::IpNet>,
    /// `protection.exempt`: networks no ban rule ever bans (monitoring, own proxies).
    pub exempt: Vec<ipnet::IpNet>,
    /// `protection.ipv6_prefix`: an IPv6 client is counted and banned by this prefix
    /// (default 64: one host usually holds a whole /64).
    pub ipv6_prefix: u8,
}

impl Default for ProtectionConfig {
    fn default() -> ProtectionConfig {
        ProtectionConfig {
            bans: Vec::new(),
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            exempt: Vec::new(),
            ipv6_prefix: 64,
        }
    }
}

impl ProtectionConfig {
    /// Whether `ip` may connect under `ip_rules`.
    pub fn ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        (self.ip_allow.is_empty() || self.ip_allow.iter().any(|n| n.contains(&ip)))
            && !self.ip_deny.iter().any(|n| n.contains(&ip))
    }
}

/// One `protection.bans[]` rule: `threshold` events of kind `on` by one key within `window`
/// ban that key for `ban_for` (doubled for each repeat offence, at most `max_ban_for`).
#[derive(Debug, Clone, PartialEq)]
pub struct BanRule {
    /// What is counted.
    pub on: BanTrigger,
    /// Events within `window` that trigger the ban.
    pub threshold: u32,
    /// The sliding window.
    pub window: Duration,
    /// The first ban's length.
    pub ban_for: Duration,
    /// The longest a repeat ban grows to (default 24h).
    pub max_ban_for: Duration,
    /// Whose events are counted and who is banned.
    pub key: BanKeyKind,
    /// Keys tracked at most (default 100,000).
    pub max_keys: usize,
}

/// `bans[].on`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTrigger {
    /// Bad credentials (401 for an invalid key or token; a missing one does not count).
    AuthFailures,
    /// 404 answers (the gateway's or the upstream's).
    NotFound,
    /// 429 answers of route rate limits.
    RateLimited,
    /// 403 answers of `allow` rules.
    Denied,
}

impl BanTrigger {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            BanTrigger::AuthFailures => "auth_failures",
            BanTrigger::NotFound => "not_found",
            BanTrigger::RateLimited => "rate_limited",
            BanTrigger::Denied => "denied",
        }
    }
}

/// `bans[].key`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanKeyKind {
    /// The client's IP address.
    Ip,
    /// The authenticated consumer.
    Consumer,
}

/// `routes[].quota`: requests per consumer (or IP, or header value) per calendar period.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaConfig {
    /// Whose quota a request counts against.
    pub key: RateKey,
    /// Requests per period.
    pub limit: u64,
    /// The period (UTC calendar day or month).
    pub period: QuotaPeriod,
    /// Keys held in memory at most (default 100,000; the store holds them all).
    pub max_keys: usize,
}

/// `quota.period`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// `node.store`: where consumers, keys and other state live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (relative paths are relative to the config file's directory).
    Sqlite(PathBuf),
}

/// `auth:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    /// `auth.api_key`: where API keys are read from.
    pub api_key: ApiKeyConfig,
    /// `auth.jwt`: the issuers whose tokens are accepted.
    pub jwt: Vec<JwtIssuerConfig>,
    /// `auth.identity_headers`: what upstreams are told about the caller.
    pub identity: IdentityHeadersConfig,
    /// `auth.mtls`: how a client certificate names its consumer.
    pub mtls: MtlsConfig,
}

/// `auth.mtls`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MtlsConfig {
    /// `consumer`: the certificate field that names the consumer.
    pub consumer: CertField,
}

/// A field of a client certificate that can name a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertField {
    /// `cn`: the subject's common name.
    #[default]
    CommonName,
    /// `dns`: the first DNS subject alternative name.
    Dns,
    /// `uri`: the first URI subject alternative name (a SPIFFE ID, say).
    Uri,
    /// `email`: the first e-mail subject alternative name.
    Email,
    /// `fingerprint`: the SHA-256 of the certificate, in lower-case hex.
    Fingerprint,
}

/// `auth.api_key`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyConfig {
    /// Request header carrying the key (default `x-api-key`).
    pub header: HeaderName,
    /// Query parameter carrying the key, if keys may come in the URL (off by default).
    pub query: Option<String>,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        ApiKeyConfig { header: HeaderName::from_static("x-api-key"), query: None }
    }
}

/// `auth.identity_headers`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeadersConfig {
    /// Lower-case prefix: client headers starting with it are removed, then the gateway
    /// sets `{prefix}id`, `{prefix}groups`, `{prefix}subject`, `{prefix}scopes`, `{prefix}auth`.
    pub prefix: String,
    /// `assertion`: also send a signed JWT as `{prefix}assertion`.
    pub assertion: Option<AssertionConfig>,
}

impl Default for IdentityHeadersConfig {
    fn default() -> Self {
        IdentityHeadersConfig { prefix: "x-consumer-".into(), assertion: None }
    }
}

/// `auth.jwt[]`: one token issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtIssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (the token must name at least one).
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (never taken from the token; all of one family).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Where the verification keys come from.
    pub keys: KeySource,
    /// Clock skew allowed on `exp` and `nbf` (default 30s).
    pub leeway: Duration,
    /// Claims that must be present besides `exp`, `iss` and `aud`.
    pub required_claims: Vec<String>,
    /// Claim naming the consumer (default `sub`).
    pub consumer_claim: String,
    /// Claim listing the caller's groups, if any.
    pub groups_claim: Option<String>,
    /// `map_consumers: true`: the consumer claim names a consumer of the directory (config
    /// or store), whose groups the caller gets. Off by default: another issuer's tokens
    /// could otherwise claim a consumer's name and its groups.
    pub map_consumers: bool,
    /// Background refresh period of fetched key sets (default 5m).
    pub refresh: Duration,
    /// Least time between refreshes caused by an unknown `kid` (default 10s).
    pub min_refresh: Duration,
}

/// `auth.jwt[].{jwks_url, jwks_file, discovery, keys}`
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A JWKS document fetched over HTTP(S).
    JwksUrl(http::Uri),
    /// OpenID Connect discovery from `{issuer}/.well-known/openid-configuration`.
    Discovery(http::Uri),
    /// A JWKS document on disk, read with the config (its text, already checked).
    JwksFile(PathBuf, String),
    /// Keys written in the config.
    Inline(Vec<InlineKey>),
}

/// `auth.jwt[].keys[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineKey {
    /// `kid` the key answers to. A key without one is tried only for tokens without a
    /// `kid`; a token naming a `kid` is checked only with the key of that `kid`.
    pub kid: Option<String>,
    /// The key material.
    pub material: KeyMaterial,
}

/// Material of an inline key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A public key in PEM (`pem:` or read from `pem_file:`), already checked.
    Pem(String),
    /// A shared HMAC secret read from this environment variable at load time.
    Secret(Secret),
}

/// Secret bytes from the config's environment or files: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `auth.identity_headers.assertion`: a short-lived JWT, signed by the gateway, telling the
/// upstream who called (`{prefix}assertion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// The private key (PKCS#8 PEM), as read from `key_file`.
    pub key: Secret,
    /// Signature algorithm (matching the key).
    pub algorithm: jsonwebtoken::Algorithm,
    /// `iss` of the assertions (default `portcullis`).
    pub issuer: String,
    /// `aud` of the assertions, if any.
    pub audience: Option<String>,
    /// Lifetime (default 60s).
    pub ttl: Duration,
    /// `kid` header, if any.
    pub kid: Option<String>,
}

/// `consumers[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Unique name (also the identity sent upstream).
    pub name: String,
    /// Groups, for `allow.groups`.
    pub groups: Vec<String>,
    /// API keys, as their public id and SHA-256 digest.
    pub api_keys: Vec<ConfigApiKey>,
}

/// `consumers[].api_keys[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApiKey {
    /// The key's public id (the part between `pcl_` and the next `_`).
    pub id: String,
    /// SHA-256 of the whole key.
    pub sha256: [u8; 32],
}

/// `routes[].rate_limit`
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// What a bucket belongs to.
    pub key: RateKey,
    /// Requests per second at the steady rate.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u64,
    /// Keys remembered at most (default 100,000).
    pub max_keys: usize,
}

/// `rate_limit.key`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The authenticated consumer (routes with `auth` only).
    Consumer,
    /// The client's IP address.
    Ip,
    /// A request header's value (the client IP when it is missing).
    Header(HeaderName),
}

/// One of a route's `auth` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `api_key`
    ApiKey,
    /// `jwt`
    Jwt,
    /// `mtls`: a client certificate verified by the listener.
    Mtls,
}

/// One `allow` rule: every condition given must hold. A route's rules are alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowRule {
    /// The consumer is one of these.
    pub consumers: Vec<String>,
    /// The consumer is in one of these groups.
    pub groups: Vec<String>,
    /// The token carries all of these scopes.
    pub scopes: Vec<String>,
    /// Each named claim equals one of its values.
    pub claims: Vec<(String, Vec<String>)>,
    /// The client address is in one of these networks.
    pub ips: Vec<ipnet::IpNet>,
}

/// `observability.access_log`: one JSON line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where the lines go.
    pub to: LogSink,
}

/// `observability.tracing`: spans exported over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans are POSTed (`otlp`, with `/v1/traces` added when it has no path).
    pub endpoint: http::Uri,
    /// Share of new traces recorded, 0 to 1 (a client's sampled flag is followed).
    pub sample: f64,
    /// `service.name` of the spans (default `portcullis`).
    pub service: String,
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
    /// `store`: the embedded store, if any.
    pub store: Option<StoreUrl>,
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
    /// `tls`: terminate TLS here; `None` serves plain HTTP/1.1 and h2c.
    pub tls: Option<TlsConfig>,
}

/// `listeners[].tls`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `certificates`: at least one; the client's SNI picks among them, the first is the
    /// default.
    pub certificates: Vec<CertFiles>,
    /// `client_auth`: whether clients present certificates, and whose.
    pub client_auth: ClientAuth,
    /// `min_version`: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// `tls.min_version`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `tls.client_auth`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientAuth {
    /// `mode`.
    pub mode: ClientAuthMode,
    /// `ca`: the CA bundle client certificates are verified against (required unless
    /// `mode: none`).
    pub ca: Option<std::path::PathBuf>,
}

/// `tls.client_auth.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMode {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one is served (routes needing `mtls` refuse it).
    Optional,
    /// A connection without a valid certificate fails its handshake.
    Required,
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
    /// `protocol`: the HTTP version spoken to the targets.
    pub protocol: UpstreamProtocol,
    /// TLS to the targets: set when they are `https://` (with `tls:`'s settings, or the
    /// system's roots and nothing else when `tls:` is not given).
    pub tls: Option<UpstreamTls>,
}

/// `upstreams[].protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// `http1` (default): HTTP/1.1, a pool of keep-alive connections.
    #[default]
    Http1,
    /// `h2`: HTTP/2 (prior knowledge on `http://`, ALPN `h2` on `https://`), one
    /// multiplexed connection per target. gRPC needs it.
    H2,
    /// `auto`: over TLS, what ALPN settles (h2 preferred); HTTP/1.1 on `http://`.
    Auto,
}

/// `upstreams[].tls`
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// `ca`: the CA bundle that verifies the targets' certificates (default: the system's
    /// roots).
    pub ca: Option<std::path::PathBuf>,
    /// `client_cert` and `client_key`: the gateway's certificate for mTLS to the targets.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `server_name`: the name sent as SNI and verified in the certificate (default: the
    /// target's host).
    pub server_name: Option<String>,
}

/// `upstreams[].targets[]` and `upstreams[].backup[]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// `host:port` of the target.
    pub authority: http::uri::Authority,
    /// `weight` (1-1000, default 1): share of traffic relative to the other targets.
    pub weight: u32,
    /// The URL is `https://`.
    pub https: bool,
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
    /// `match.listeners`: the listeners whose requests this route takes (empty: all). Binds
    /// a route to, say, the listener whose CA vouches for its `mtls` callers.
    pub listeners: Vec<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// `auth`: methods, any one of which must succeed; empty for a `public: true` route.
    pub auth: Vec<AuthMethod>,
    /// `allow`: alternative rules (empty: anyone who authenticated, or anyone on a public
    /// route).
    pub allow: Vec<AllowRule>,
    /// `rate_limit`, if any.
    pub rate_limit: Option<RateLimitConfig>,
    /// `quota`, if any.
    pub quota: Option<QuotaConfig>,
    /// `retry_non_idempotent: true`: failed POST/PATCH (and other non-idempotent) requests
    /// may be retried like GETs. Off by default.
    pub retry_non_idempotent: bool,
}
