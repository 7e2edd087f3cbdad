//! The request path, one readable function: protect → route → upstream → response.
//!
//! Each request loads the current config snapshot once and keeps it to the end, so a reload
//! never changes the rules under a request in flight.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Inner, Snapshot};
use crate::auth::{AuthFailure, Authenticator};
use crate::body::{Done, Finish, GwBody};
use crate::config::AuthMethod;
use crate::config::ListenerLimits;
use crate::error::{GatewayError, rescue, rescue_grpc};
use crate::observe::access::{Record, clip_path, trace_id};
use crate::observe::events::{AuthOutcome, BlockReason, SecurityEvent};
use crate::observe::trace::{Span, TraceContext, now_ns};

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
use crate::observe::metrics::Metrics;
use crate::observe::new_request_id;
use crate::protect::headers::{X_REQUEST_ID, acceptable_request_id, has_token, set_forwarding, strip_hop_by_hop};
use crate::protect::{BodyProgress, ConnState, LimitedBody};
use crate::router::path::normalise;
use crate::router::{RequestView, request_authority, route_host};
use crate::upstream::{Call, proxy_body};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) gw: Arc<Inner>,
    pub(crate) peer: SocketAddr,
    /// The peer's address as every check sees it (an IPv4-mapped IPv6 address as IPv4).
    pub(crate) client: std::net::IpAddr,
    /// `X-Forwarded-For` for this client, made once.
    pub(crate) client_ip: HeaderValue,
    pub(crate) limits: ListenerLimits,
    /// Request/response counters: the HTTP/1 head guard's, or HTTP/2's open streams.
    pub(crate) state: Option<Arc<ConnState>>,
    /// HTTP/1 (one exchange at a time) rather than HTTP/2.
    pub(crate) http1: bool,
    /// The client certificate the listener verified, if it asked for one and got one.
    pub(crate) cert: Option<Arc<crate::tls::PeerCert>>,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    /// The connection's place under the listener's connection limits.
    pub(crate) permit: Arc<crate::protect::ConnPermit>,
    /// The listener it came on (as named when accepted).
    pub(crate) listener: Arc<str>,
}

/// hyper's entry point for one request.
/// What the pipeline learnt about a request, for metrics and the access log.
#[derive(Debug, Default)]
struct Outcome {
    /// Index of the matched route.
    route: Option<usize>,
    /// Time from sending upstream to the response head.
    upstream: Option<std::time::Duration>,
    /// The target that answered.
    target: Option<usize>,
    /// When there is an access log: the normalised path once known, else the request's
    /// target as received (a cheap shared copy, turned into text only if it is logged).
    path: Option<String>,
    raw: Option<http::Uri>,
    /// The authenticated consumer, if any.
    consumer: Option<Arc<str>>,
    /// The request is gRPC (`content-type: application/grpc…`).
    grpc: bool,
}

/// What a request's metrics and access-log line need, gathered as it goes. Turned into the
/// response body's [`Finish`] once the response is ready; if the request is dropped before
/// that (the client went away, or shutdown ran out of time), it is recorded on drop with
/// status 499, so that abandoned requests are neither uncounted nor unlogged.
struct Recorder<'a> {
    started: Instant,
    method: Method,
    version: Version,
    snap: Arc<Snapshot>,
    metrics: &'a Metrics,
    events: &'a crate::observe::events::Events,
    client: std::net::IpAddr,
    request_id: HeaderValue,
    trace: Option<[u8; 32]>,
    /// This request's span, when tracing is on: its context and start (Unix ns).
    span: Option<(TraceContext, u64)>,
    progress: Option<Arc<BodyProgress>>,
    outcome: Outcome,
    armed: bool,
}

/// nginx's "client closed request".
const CLIENT_CLOSED: u16 = 499;

impl Recorder<'_> {
    fn finish(&mut self, status: u16) -> Finish {
        self.armed = false;
        let snap = &self.snap;
        let outcome = &mut self.outcome;
        let metrics = match outcome.route.and_then(|i| snap.route_metrics.get(i)) {
            Some(m) => m.clone(),
            None => self.metrics.unmatched().clone(),
        };
        metrics.answered(&self.method, status);
        if status == 404 {
            let consumer = outcome.consumer.as_deref();
            self.events.publish(&SecurityEvent::NotFound { client: self.client, consumer });
        }
        if let Some(d) = outcome.upstream {
            metrics.upstream.observe(d);
        }
        let log = snap.access_log.as_ref().map(|log| {
            let route = outcome.route.and_then(|i| snap.config.routes.get(i));
            let upstream = route.and_then(|r| snap.upstreams.get(r.upstream));
            let record = Record {
                request_id: self.request_id.clone(),
                route: outcome.route.and_then(|i| snap.route_names.get(i)).cloned(),
                client: self.client,
                method: self.method.clone(),
                path: outcome
                    .path
                    .take()
                    .or_else(|| outcome.raw.as_ref().map(|u| clip_path(u.path())))
                    .unwrap_or_default(),
                version: match self.version {
                    Version::HTTP_2 => "HTTP/2.0",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                status,
                upstream: route.and_then(|r| snap.upstream_names.get(r.upstream)).cloned(),
                target: upstream.zip(outcome.target).and_then(|(u, i)| u.target(i)).cloned(),
                upstream_time: outcome.upstream,
                trace_id: self.trace,
                consumer: outcome.consumer.take(),
            };
            (log.clone(), Box::new(record), self.progress.clone())
        });
        let span = self.span.filter(|(c, _)| c.sampled).and_then(|(ctx, start_ns)| {
            let tracer = snap.tracer.as_ref()?;
            let route = outcome.route.and_then(|i| snap.route_names.get(i));
            let upstream = route
                .and(outcome.route)
                .and_then(|i| snap.config.routes.get(i))
                .and_then(|r| snap.upstreams.get(r.upstream));
            let path = match (&log, &outcome.path, &outcome.raw) {
                // Prefer what the access log already made.
                (Some((_, r, _)), _, _) => r.path.clone(),
                (None, Some(p), _) => p.clone(),
                (None, None, Some(u)) => clip_path(u.path()),
                _ => String::new(),
            };
            let span = Span {
                ctx,
                name: route.cloned().unwrap_or_else(|| Arc::from("unmatched")),
                start_ns,
                end_ns: 0,
                method: self.method.clone(),
                path,
                status,
                client: self.client,
                target: upstream.zip(outcome.target).and_then(|(u, i)| u.target(i)).cloned(),
            };
            Some((tracer.clone(), Box::new(span)))
        });
        Finish { started: self.started, metrics, log, span, bytes_out: 0 }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if self.armed {
            drop(self.finish(CLIENT_CLOSED));
        }
    }
}

pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<GwBody>, Infallible> {
    let started = Instant::now();
    // Counted as finished when the response body is done, or here if the request is dropped.
    let done = ctx.state.as_ref().map(Done::start);
    let progress =
        (!req.body().is_end_stream()).then(|| Arc::new(BodyProgress::new(started + ctx.limits.body_timeout)));
    let snap = ctx.gw.snapshot.load_full();
    let logging = snap.access_log.is_some();
    let span = snap.tracer.as_ref().map(|t| (TraceContext::from_headers(req.headers(), t.sample()), now_ns()));
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if acceptable_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    let mut rec = Recorder {
        started,
        method: req.method().clone(),
        version: req.version(),
        trace: match &span {
            Some((c, _)) => Some(c.trace_hex()),
            None if logging => req.headers().get("traceparent").and_then(|v| trace_id(v.as_bytes())),
            None => None,
        },
        span,
        outcome: Outcome {
            raw: (logging || span.is_some_and(|(c, _)| c.sampled)).then(|| req.uri().clone()),
            grpc: req
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            ..Outcome::default()
        },
        metrics: &ctx.gw.shared.metrics,
        events: &ctx.gw.shared.events,
        client: ctx.client,
        request_id: request_id.clone(),
        progress: progress.clone(),
        snap,
        armed: true,
    };
    // HTTP/2: a request dropped before `proxy` returns was cancelled by its client.
    let mut cancel = Cancelled(if ctx.http1 { None } else { ctx.state.as_deref() });
    // gRPC callers (over HTTP/2) get the gateway's refusals as gRPC statuses.
    let grpc = !ctx.http1 && rec.outcome.grpc;
    // The HTTP status a refusal stands for, when the answer carries another (gRPC's 200).
    let mut refused = None;
    let traceparent = span.map(|(c, _)| (c.traceparent(), c.parent.is_some()));
    let mut res = match proxy(&ctx, &rec.snap, req, &request_id, traceparent, progress.as_ref(), &mut rec.outcome).await
    {
        Ok(r) => r,
        Err(e) => {
            let (status, _, _) = e.describe();
            let version = rec.snap.version;
            // An identity-provider outage is logged once by the key source, not per request.
            if status.is_server_error() && !matches!(e, GatewayError::AuthUnavailable) {
                tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), request_id = ?request_id, client = %ctx.peer, config_version = version, status = status.as_u16(), "Request failed");
            } else {
                tracing::debug!(error = %e, request_id = ?request_id, client = %ctx.peer, config_version = version, status = status.as_u16(), "Request refused");
            }
            if grpc {
                refused = Some(status.as_u16());
                rescue_grpc(&e, &request_id)
            } else {
                rescue(&e, &request_id)
            }
        }
    };
    // Answered: not a cancellation.
    cancel.0 = None;
    if ctx.http1
        && let Some(s) = &ctx.state
    {
        // A request body not read to its end (refused early, or answered by the upstream
        // before it was all sent) leaves bytes that must never be parsed as a next request:
        // close after this response, draining a little so the client sees the answer.
        let unread = progress.as_ref().is_some_and(|p| p.done_at().is_none());
        if unread || res.headers().get(header::CONNECTION).is_some_and(|v| v == "close") {
            s.set_linger();
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    if let Some(d) = done {
        res.body_mut().track(d);
    }
    // Metrics, the access log and ban rules see what the refusal was (a 404 is a 404).
    let finish = rec.finish(refused.unwrap_or_else(|| res.status().as_u16()));
    res.body_mut().on_finish(finish);
    Ok(res)
}

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(v: &[u8]) -> Option<std::time::Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    use std::time::Duration as D;
    Some(match unit {
        b'H' => D::from_secs(n * 3600),
        b'M' => D::from_secs(n * 60),
        b'S' => D::from_secs(n),
        b'm' => D::from_millis(n),
        b'u' => D::from_micros(n),
        b'n' => D::from_nanos(n),
        _ => return None,
    })
}

/// Counts an HTTP/2 request as cancelled if dropped (it is forgotten once answered).
struct Cancelled<'a>(Option<&'a ConnState>);

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.request_cancelled();
        }
    }
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 upstream must get one
/// (RFC 9113 §8.2.3).
fn join_cookies(h: &mut http::HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

fn content_length(h: &http::HeaderMap) -> Result<Option<u64>, GatewayError> {
    let mut out = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
        if out.is_some_and(|o| o != n) {
            return Err(GatewayError::BadRequest("conflicting Content-Length headers"));
        }
        out = Some(n);
    }
    Ok(out)
}

/// The route's `auth` and `allow`: authenticate, publish the outcome, authorise, and set the
/// identity headers. Returns the query parameter that carried an API key, if it must go.
async fn identify<'s>(
    ctx: &ConnCtx,
    snap: &'s Snapshot,
    idx: usize,
    headers: &mut http::HeaderMap,
    query: Option<&str>,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Option<&'s str>, GatewayError> {
    let rc = &snap.config.routes[idx];
    if rc.auth.is_empty() && rc.allow.is_empty() {
        return Ok(None);
    }
    let auth = &snap.auth;
    let events = &ctx.gw.shared.events;
    let route = snap.route_names.get(idx).map_or("", |n| &**n);
    let client = ctx.client;
    if rc.auth.is_empty() {
        // A public route with `allow.ips`.
        if !Authenticator::authorise(&rc.allow, None, client) {
            events.publish(&SecurityEvent::Denied { client, route, consumer: None });
            return Err(GatewayError::Forbidden);
        }
        return Ok(None);
    }
    let refuse = |f: AuthFailure| match f {
        AuthFailure::Unavailable(_) => GatewayError::AuthUnavailable,
        _ => GatewayError::Unauthenticated { challenge: auth.challenge(&rc.auth, &f), reason: f.reason() },
    };
    let id = match auth.authenticate(&rc.auth, headers, query, ctx.cert.as_deref()).await {
        Ok(id) => id,
        Err(f) => {
            let (method, result) = match f {
                AuthFailure::Missing => (None, AuthOutcome::Missing),
                AuthFailure::Invalid(m, _) => (Some(m), AuthOutcome::Invalid),
                AuthFailure::Unavailable(m) => (Some(m), AuthOutcome::Unavailable),
            };
            let reason = f.reason();
            events.publish(&SecurityEvent::Auth { method, outcome: result, client, route, consumer: None, reason });
            return Err(refuse(f));
        }
    };
    outcome.consumer = id.consumer.clone();
    let consumer = id.consumer.as_deref();
    let method = Some(id.method);
    events.publish(&SecurityEvent::Auth { method, outcome: AuthOutcome::Success, client, route, consumer, reason: "" });
    if !Authenticator::authorise(&rc.allow, Some(&id), client) {
        events.publish(&SecurityEvent::Denied { client, route, consumer });
        return Err(GatewayError::Forbidden);
    }
    auth.set_identity(headers, &id, request_id, route).map_err(refuse)?;
    auth.hide_key(headers);
    Ok(if rc.auth.contains(&AuthMethod::ApiKey) { auth.key_query() } else { None })
}

/// The client as limits and quotas count it: an IPv4 address, or an IPv6 address's network
/// of `protection.ipv6_prefix` bits (one host usually holds a whole /64), as ban rules do.
fn limit_ip(ip: std::net::IpAddr, v6_prefix: u8) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(a) => {
            std::net::IpAddr::V6(ipnet::Ipv6Net::new(a, v6_prefix.min(128)).map_or(a, |n| n.trunc().addr()))
        }
        v4 => v4,
    }
}

/// The key a rate limit or quota counts a request under: a tag byte (`c` consumer, `h`
/// header value, `i` client address), so that no header value can pose as an address or a
/// consumer, then the bytes; on the stack unless long. A consumer key without a consumer, or
/// a header key without the header, counts under the address.
struct LimitKey {
    buf: [u8; 80],
    len: usize,
    long: Vec<u8>,
}

impl LimitKey {
    fn new(
        kind: &crate::config::RateKey,
        ip: std::net::IpAddr,
        headers: &http::HeaderMap,
        consumer: Option<&str>,
    ) -> LimitKey {
        let octets = match ip {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        let (tag, body): (u8, &[u8]) = match (kind, consumer) {
            (crate::config::RateKey::Consumer, Some(c)) => (b'c', c.as_bytes()),
            (crate::config::RateKey::Header(h), _) if headers.contains_key(h) => {
                (b'h', headers.get(h).map_or(&[][..], HeaderValue::as_bytes))
            }
            _ if ip.is_ipv4() => (b'i', &octets[12..]),
            _ => (b'i', &octets[..]),
        };
        let mut k = LimitKey { buf: [0u8; 80], len: body.len() + 1, long: Vec::new() };
        if body.len() < k.buf.len() {
            k.buf[0] = tag;
            k.buf[1..=body.len()].copy_from_slice(body);
        } else {
            k.long = [&[tag][..], body].concat();
        }
        k
    }

    fn as_bytes(&self) -> &[u8] {
        if self.long.is_empty() { &self.buf[..self.len] } else { &self.long }
    }
}

/// The route's `rate_limit`: count this request against its key's bucket (in Redis when
/// the nodes share limits, else here).
async fn rate_limit(
    ctx: &ConnCtx,
    snap: &Snapshot,
    idx: usize,
    limiter: &crate::ratelimit::Limiter,
    headers: &http::HeaderMap,
    consumer: Option<&str>,
) -> Result<(), GatewayError> {
    let Some(cfg) = snap.config.routes.get(idx).and_then(|r| r.rate_limit.as_ref()) else {
        return Ok(());
    };
    let ip = ctx.client;
    let key = LimitKey::new(&cfg.key, limit_ip(ip, snap.config.protection.ipv6_prefix), headers, consumer);
    let key = key.as_bytes();
    let route = snap.route_names.get(idx).map_or("", |n| &**n);
    let d = match &snap.shared_limits {
        None => limiter.check_now(key),
        Some(shared) => match shared.check(route, key, limiter.interval_ns(), limiter.tolerance_ns()).await {
            Ok(d) => {
                if !d.allowed {
                    limiter.note_limited();
                }
                d
            }
            Err(_) => match snap.config.cluster.as_ref().map(|c| c.redis_failure) {
                Some(crate::config::RedisFailure::Closed) => return Err(GatewayError::LimitsUnavailable),
                _ => limiter.check_now(key),
            },
        },
    };
    if d.allowed {
        return Ok(());
    }
    ctx.gw.shared.events.publish(&SecurityEvent::Limited { client: ip, route, consumer });
    const NS: u64 = 1_000_000_000;
    let retry_after = d.retry_after_ns.div_ceil(NS).max(1);
    let policy = format!("\"route\";q={};w={}", limiter.burst(), limiter.window_secs());
    let state = format!("\"route\";r=0;t={retry_after}");
    Err(GatewayError::RateLimited {
        retry_after,
        policy: HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("")),
        state: HeaderValue::from_str(&state).unwrap_or_else(|_| HeaderValue::from_static("")),
    })
}

/// The route's `quota`: count this request against its key's allowance for the period.
async fn quota(
    ctx: &ConnCtx,
    snap: &Snapshot,
    idx: usize,
    q: &crate::ratelimit::quota::Quota,
    headers: &http::HeaderMap,
    consumer: Option<&str>,
) -> Result<crate::ratelimit::quota::Decision, GatewayError> {
    let ip = ctx.client;
    let key = LimitKey::new(q.key(), limit_ip(ip, snap.config.protection.ipv6_prefix), headers, consumer);
    let key = key.as_bytes();
    let d = ctx.gw.shared.quotas.check(q, key, crate::store::now()).await;
    if d.allowed {
        return Ok(d);
    }
    let route = snap.route_names.get(idx).map_or("", |n| &**n);
    ctx.gw.shared.events.publish(&SecurityEvent::QuotaExceeded { client: ip, route, consumer });
    Err(GatewayError::QuotaExceeded { limit: d.limit, reset_secs: d.reset_secs })
}

async fn proxy(
    ctx: &ConnCtx,
    snap: &Snapshot,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    traceparent: Option<(HeaderValue, bool)>,
    progress: Option<&Arc<BodyProgress>>,
    outcome: &mut Outcome,
) -> Result<Response<GwBody>, GatewayError> {
    let (mut parts, body) = req.into_parts();

    // WebSocket: an HTTP/1.1 Upgrade, or RFC 8441's extended CONNECT on an HTTP/2 stream
    // (routed and sent upstream as the HTTP/1.1 GET it stands for).
    let h2_websocket = !ctx.http1
        && parts.method == Method::CONNECT
        && parts.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let websocket =
        h2_websocket || (ctx.http1 && parts.method == Method::GET && super::tunnel::wants_websocket(&parts.headers));
    let on_upgrade = if websocket { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    if h2_websocket {
        parts.method = Method::GET;
    }

    // protect: bans and IP rules (for connections opened before a ban or a reload)
    let client = ctx.client;
    let shared = &ctx.gw.shared;
    if let Some(reason) = shared.protection.refuse_ip(client, &snap.config.protection) {
        shared.events.publish(&SecurityEvent::Blocked { client, reason, at_accept: false });
        return Err(GatewayError::Blocked);
    }

    // protect: framing and size, before anything else reads the request
    let declared = content_length(&parts.headers)?;
    if declared.is_some() && parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    let limit = ctx.limits.max_body_bytes;
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }

    // router
    let path = normalise(parts.uri.path())?;
    if outcome.raw.is_some() {
        outcome.path = Some(clip_path(&path));
    }
    let original_host = request_authority(&parts).map_err(|e| GatewayError::BadRequest(e.0))?;
    let host = route_host(original_host.as_ref());
    let listener = Some(&*ctx.listener);
    let view =
        RequestView { host: host.as_deref(), path: &path, method: &parts.method, headers: &parts.headers, listener };
    let idx = snap.table.find(&view).ok_or(GatewayError::RouteNotFound)?;
    let route = &snap.table.routes()[idx];
    outcome.route = Some(idx);
    if let Some(shadow) = &snap.shadow
        && route.auth.is_empty()
        && let Some(loose) = crate::router::path::loose_form(&path)
    {
        // A public route took it, but a lenient backend might read it as a protected one.
        let v = RequestView {
            host: host.as_deref(),
            path: &loose,
            method: &parts.method,
            headers: &parts.headers,
            listener,
        };
        if shadow.find(&v).is_some() {
            return Err(GatewayError::BadRequest("the path is another spelling of a protected route"));
        }
    }
    let upstream = &snap.upstreams[route.upstream];
    drop(host);

    // gRPC's deadline: the upstream must answer within it (and is told it, as sent).
    let deadline =
        if outcome.grpc { parts.headers.get(&GRPC_TIMEOUT).and_then(|v| grpc_timeout(v.as_bytes())) } else { None };
    // `TE: trailers` is the one hop-by-hop value that goes on: gRPC servers need it.
    let te_trailers = has_token(&parts.headers, &header::TE, "trailers");
    // Hop-by-hop first: `Connection` must not be able to name (and so remove) the identity
    // headers set below.
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // The key the upstream must answer: the client's, or (HTTP/2 clients send none) ours.
    let ws_key = if websocket {
        if progress.is_some() {
            return Err(GatewayError::BadRequest("a WebSocket handshake has no body"));
        }
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if h2_websocket {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, super::tunnel::new_key());
        }
        let mut keys = parts.headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
        match (keys.next(), keys.next()) {
            (Some(k), None) if super::tunnel::valid_key(k) => Some(k.clone()),
            _ => return Err(GatewayError::BadRequest("a WebSocket upgrade needs one valid Sec-WebSocket-Key")),
        }
    } else {
        None
    };
    // identity: nobody may claim one by sending our headers; then authenticate and authorise
    snap.auth.strip_identity(&mut parts.headers);
    if let Some(cert) = &ctx.cert {
        snap.auth.set_certificate(&mut parts.headers, cert);
    }
    let hide_key_param = identify(ctx, snap, idx, &mut parts.headers, parts.uri.query(), request_id, outcome).await?;
    if let Some(c) = outcome.consumer.as_deref()
        && shared.protection.consumer_banned(c)
    {
        shared.events.publish(&SecurityEvent::Blocked { client, reason: BlockReason::Banned, at_accept: false });
        return Err(GatewayError::Blocked);
    }
    if let Some(limiter) = snap.limiters.get(idx).and_then(Option::as_ref) {
        rate_limit(ctx, snap, idx, limiter, &parts.headers, outcome.consumer.as_deref()).await?;
    }
    let quota = match snap.quotas.get(idx).and_then(Option::as_ref) {
        Some(q) => Some(quota(ctx, snap, idx, q, &parts.headers, outcome.consumer.as_deref()).await?),
        None => None,
    };

    // An API key sent as a query parameter does not travel on.
    let key_param =
        hide_key_param.filter(|name| parts.uri.query().is_some_and(|q| crate::auth::query_param(q, name).is_some()));
    let path_and_query = match (&path, parts.uri.path_and_query()) {
        (Cow::Borrowed(_), Some(pq)) if key_param.is_none() => pq.clone(),
        _ => {
            let query = match key_param {
                Some(name) => parts.uri.query().and_then(|q| crate::auth::without_param(q, name)).map(Cow::Owned),
                None => parts.uri.query().map(Cow::Borrowed),
            };
            let s = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            PathAndQuery::from_maybe_shared(s).map_err(|_| GatewayError::BadRequest("unusable request target"))?
        }
    };

    // headers for the upstream
    parts.headers.remove(header::CONTENT_LENGTH);
    // The upstream sees the host we routed on, whatever `Connection` named or the request
    // target said.
    if let Some(h) = &original_host {
        parts.headers.insert(header::HOST, h.clone());
    }
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    set_forwarding(&mut parts.headers, &ctx.client_ip, if ctx.tls { "https" } else { "http" }, original_host);
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some((tp, continued)) = traceparent {
        // The upstream's parent is the gateway's span. `tracestate` passes through as sent
        // when the client's trace continues; a restarted trace drops it (W3C §3.3).
        parts.headers.insert(&TRACEPARENT, tp);
        if !continued {
            parts.headers.remove(http::header::HeaderName::from_static("tracestate"));
        }
    }

    let body = progress.map(|p| LimitedBody::new(body, limit, p.deadline(), ctx.state.clone(), p.clone()));
    if let Some(b) = &body
        && b.size_hint().exact().is_none()
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE)
    {
        // hyper's client would send these methods with an unknown-length body as
        // `Content-Length: 0` and drop the body; say "chunked" explicitly.
        parts.headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    let upstream_req = Request::from_parts(parts, proxy_body(body));
    let call = Call {
        path: path_and_query,
        body: progress.map(|p| &**p),
        client: ctx.peer.ip(),
        retry_non_idempotent: route.retry_non_idempotent,
        deadline,
    };
    let sent = Instant::now();
    let forwarded = upstream.forward(upstream_req, call).await;
    // Refused before anything was sent (nothing healthy, breaker full): no upstream time.
    if !matches!(forwarded, Err(GatewayError::NoTarget { .. } | GatewayError::Overloaded { .. })) {
        outcome.upstream = Some(sent.elapsed());
    }
    let (mut res, loan, target) = forwarded?;
    outcome.target = Some(target);
    if h2_websocket && res.status().is_success() {
        // A 2xx would tell an RFC 8441 client its tunnel is open: only a switch may.
        return Err(GatewayError::UpstreamProtocol {
            upstream: upstream.name().to_string(),
            why: "answered a WebSocket upgrade without switching protocols",
        });
    }
    if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_side), Some(key)) = (on_upgrade, ws_key) else {
            return Err(GatewayError::UpstreamProtocol {
                upstream: upstream.name().to_string(),
                why: "switched protocols unasked",
            });
        };
        // Only a real WebSocket handshake opens a relay: a `101` without the accept value
        // for our key (a backend tricked into saying 101) would give the client a raw line
        // to a server still speaking HTTP, past every check made here.
        if !super::tunnel::wants_websocket_response(res.headers(), &key) {
            return Err(GatewayError::UpstreamProtocol {
                upstream: upstream.name().to_string(),
                why: "switched protocols without accepting the WebSocket handshake",
            });
        }
        let upstream_side = hyper::upgrade::on(&mut res);
        let (mut rp, _) = res.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        rp.headers.insert(X_REQUEST_ID, request_id.clone());
        if h2_websocket {
            // RFC 8441 §5: the stream is open once the CONNECT gets a 2xx.
            rp.status = http::StatusCode::OK;
            rp.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        } else {
            rp.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rp.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Some(s) = &ctx.state {
                s.set_upgraded();
            }
        }
        let hold = super::tunnel::Hold {
            _loan: loan,
            _permit: ctx.permit.clone(),
            // An HTTP/2 stream carrying a WebSocket counts as open while it lasts, so the
            // connection is not closed as idle under it.
            _stream: if h2_websocket { ctx.state.as_ref().map(Done::start) } else { None },
        };
        let stop = ctx.gw.shared.shutdown.clone();
        // Bans and IP rules made while the tunnel lasts close it too.
        let gw = ctx.gw.clone();
        let consumer = outcome.consumer.clone();
        let allowed = move || {
            let protection = &gw.shared.protection;
            protection.refuse_ip(client, &gw.snapshot.load().config.protection).is_none()
                && !consumer.as_deref().is_some_and(|c| protection.consumer_banned(c))
        };
        let relay = super::tunnel::relay(client_side, upstream_side, upstream.idle_timeout(), stop, hold, allowed);
        ctx.gw.tracker.spawn(relay);
        return Ok(Response::from_parts(rp, GwBody::full(bytes::Bytes::new())));
    }

    let (mut rp, rb) = res.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    rp.headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some(d) = quota {
        crate::error::set_quota_headers(&mut rp.headers, d.limit, d.remaining, d.reset_secs);
    }
    rp.version = Version::HTTP_11;
    Ok(Response::from_parts(rp, GwBody::upstream(rb, loan, upstream.idle_timeout())))
}

#[cfg(test)]
mod tests {
    use super::{LimitKey, grpc_timeout, limit_ip};
    use crate::config::RateKey;

    #[test]
    fn grpc_timeouts() {
        use std::time::Duration as D;
        assert_eq!(grpc_timeout(b"100m"), Some(D::from_millis(100)));
        assert_eq!(grpc_timeout(b"2S"), Some(D::from_secs(2)));
        assert_eq!(grpc_timeout(b"1H"), Some(D::from_secs(3600)));
        assert_eq!(grpc_timeout(b"99999999n"), Some(D::from_nanos(99_999_999)));
        for bad in [&b""[..], b"S", b"100", b"123456789S", b"-1S", b"1.5S", b"10x"] {
            assert_eq!(grpc_timeout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn limit_keys_of_different_sources_never_collide() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let header = http::HeaderName::from_static("x-tenant");
        let mut h = http::HeaderMap::new();
        // A header value spelled like the consumer name, and like the address's bytes.
        h.insert(&header, http::HeaderValue::from_static("app"));
        let by_header = LimitKey::new(&RateKey::Header(header.clone()), ip, &h, None);
        let by_consumer = LimitKey::new(&RateKey::Consumer, ip, &h, Some("app"));
        let by_ip = LimitKey::new(&RateKey::Ip, ip, &h, Some("app"));
        assert_eq!(by_header.as_bytes(), b"happ");
        assert_eq!(by_consumer.as_bytes(), b"capp");
        assert_eq!(by_ip.as_bytes(), [b'i', 127, 0, 0, 1]);
        // Without the header, or without a consumer, the address counts.
        assert_eq!(
            LimitKey::new(&RateKey::Header(header), ip, &http::HeaderMap::new(), None).as_bytes(),
            by_ip.as_bytes()
        );
        assert_eq!(LimitKey::new(&RateKey::Consumer, ip, &h, None).as_bytes(), by_ip.as_bytes());
        // An IPv6 client counts by its /64 (as ban rules count it), IPv4 by its address.
        let a = limit_ip("2001:db8:0:1:aaaa::1".parse().expect("ip"), 64);
        let b = limit_ip("2001:db8:0:1:bbbb::2".parse().expect("ip"), 64);
        let c = limit_ip("2001:db8:0:2::1".parse().expect("ip"), 64);
        let key = |ip| LimitKey::new(&RateKey::Ip, ip, &h, None).as_bytes().to_vec();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        assert_eq!(limit_ip(ip, 64), ip);
        // IPv6 keeps 16 bytes; a long value goes to the heap whole.
        let v6 = LimitKey::new(&RateKey::Ip, "2001:db8::1".parse().expect("ip"), &h, None);
        assert_eq!(v6.as_bytes().len(), 17);
        let long = "x".repeat(300);
        let mut h2 = http::HeaderMap::new();
        h2.insert("x-long", http::HeaderValue::from_str(&long).expect("value"));
        let k = LimitKey::new(&RateKey::Header(http::HeaderName::from_static("x-long")), ip, &h2, None);
        assert_eq!(k.as_bytes().len(), 301);
        assert_eq!(k.as_bytes()[0], b'h');
    }
}
