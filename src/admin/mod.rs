//! The admin API on its own listener (loopback by default): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus; token-protected unless `admin.public_metrics`) and the
//! token-protected REST API under `/api/v1` (node status, upstream health, bans), described by
//! `/api/v1/openapi.json`.
//!
//! Owns the admin listener, its limits, the bearer-token check and the JSON shapes. It reads
//! the running node through the [`Node`] trait, which the server implements, so data flows
//! one way: the server hands the admin API a view; the admin API never reaches into it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::problem_json;
use crate::observe::new_request_id_string;
use crate::upstream::UpstreamStatus;

/// Concurrent admin connections; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Time allowed for an admin request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin API can see of the running node.
pub trait Node: Send + Sync + 'static {
    /// Node, config version, listeners, upstreams.
    fn status(&self) -> NodeStatus;
    /// Config loaded and listeners bound, not shutting down.
    fn ready(&self) -> bool;
    /// Every metric, in the Prometheus text format.
    fn metrics(&self) -> String;
    /// An admin API call was allowed or refused (for the audit log).
    fn audit_admin(&self, _method: &str, _path: &str, _allowed: bool, _client: Option<std::net::IpAddr>) {}
    /// Bans in force, longest first.
    fn bans(&self) -> Vec<crate::store::BanRecord>;
    /// Ban `key` (`ip:ADDRESS`, an address, or `consumer:NAME`) for `len`; the ban, or why not.
    fn ban(&self, key: &str, len: Duration, reason: &str) -> Result<crate::store::BanRecord, String>;
    /// Lift the ban of `key`: whether one was in force, or why the key is unusable.
    fn unban(&self, key: &str) -> Result<bool, String>;
}

/// The peer address of an admin connection, for the audit log.
#[derive(Debug, Clone, Copy)]
struct ClientAddr(std::net::SocketAddr);

/// `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// `node.name`.
    pub node: String,
    /// Portcullis version.
    pub version: &'static str,
    /// The config version serving now (1 at start, +1 per applied change).
    pub config_version: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Bound listeners.
    pub listeners: Vec<ListenerStatus>,
    /// Every upstream with its targets' health.
    pub upstreams: Vec<UpstreamStatus>,
}

/// One bound listener.
#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    /// Name from config.
    pub name: String,
    /// Bound address.
    pub address: String,
}

#[derive(Clone)]
struct AppState {
    node: Arc<dyn Node>,
    token: Option<Arc<[u8]>>,
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = problem_json(status.as_u16(), title, detail, &new_request_id_string());
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    res
}

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let presented = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).and_then(|v| {
        let (scheme, rest) = v.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
    });
    let ok = match (&st.token, presented) {
        // Constant time in the token's bytes (a length mismatch is refused at once).
        (Some(want), Some(got)) => bool::from(want.as_ref().ct_eq(got)),
        _ => false,
    };
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
    // Scrapes of /metrics are routine, not worth an audit record each.
    if !(ok && req.uri().path() == "/metrics") {
        st.node.audit_admin(req.method().as_str(), req.uri().path(), ok, client);
    }
    if ok {
        return next.run(req).await;
    }
    // The same answer whether or not the node has a token: callers learn nothing. Logged at
    // debug: anyone who can reach the listener could otherwise flood the log.
    tracing::debug!(path = %req.uri().path(), token_configured = st.token.is_some(), "Admin API: request without a valid token refused");
    let detail = "a valid admin token is required: Authorization: Bearer TOKEN";
    let mut res = problem(StatusCode::UNAUTHORIZED, "Unauthorized", detail);
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis-admin\""));
    res
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.node.ready() {
        (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ready" }))).into_response()
    } else {
        problem(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "the node is not ready")
    }
}

async fn status(State(st): State<AppState>) -> Response {
    axum::Json(st.node.status()).into_response()
}

async fn upstreams(State(st): State<AppState>) -> Response {
    axum::Json(st.node.status().upstreams).into_response()
}

async fn upstream(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    match st.node.status().upstreams.into_iter().find(|u| u.name == name) {
        Some(u) => axum::Json(u).into_response(),
        None => problem(StatusCode::NOT_FOUND, "Not Found", "no upstream has that name"),
    }
}

async fn bans(State(st): State<AppState>) -> Response {
    axum::Json(st.node.bans()).into_response()
}

/// `POST /api/v1/bans`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    key: String,
    /// A duration like `15m`.
    #[serde(rename = "for")]
    len: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn ban(State(st): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: BanRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "Bad Request", &format!("invalid ban request: {e}")),
    };
    let Some(len) = crate::protect::bans::operator_ban_length(&req.len) else {
        return problem(StatusCode::BAD_REQUEST, "Bad Request", "`for` must be a duration like 15m, up to 365d");
    };
    let reason = crate::protect::bans::operator_reason(req.reason);
    match st.node.ban(&req.key, len, &reason) {
        Ok(rec) => (StatusCode::CREATED, axum::Json(rec)).into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, "Bad Request", &e),
    }
}

async fn unban(State(st): State<AppState>, Path(key): Path<String>) -> Response {
    match st.node.unban(&key) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "Not Found", "that key is not banned"),
        Err(e) => problem(StatusCode::BAD_REQUEST, "Bad Request", &e),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut res = st.node.metrics().into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

async fn openapi() -> Response {
    let mut res = OPENAPI.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not Found", "no such admin endpoint")
}

/// The admin routes.
fn router(node: Arc<dyn Node>, token: Option<Arc<[u8]>>, public_metrics: bool) -> Router {
    let st = AppState { node, token };
    let mut api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/upstreams/{name}", get(upstream))
        .route("/api/v1/bans", get(bans).post(ban))
        .route("/api/v1/bans/{key}", axum::routing::delete(unban))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_token));
    let open = Router::new().route("/metrics", get(metrics));
    let mut app = Router::new();
    if public_metrics {
        app = app.merge(open);
    } else {
        api = api.merge(open.route_layer(middleware::from_fn_with_state(st.clone(), require_token)));
    }
    app.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(api)
        .fallback(not_found)
        .with_state(st)
}

/// Serve the admin API on `sock` until `stop` is cancelled. `token` is the bearer token
/// that opens `/api/v1` (none: every such call is refused).
/// `public_metrics` opens `/metrics` without the token.
pub async fn serve(
    sock: TcpListener,
    node: Arc<dyn Node>,
    token: Option<String>,
    public_metrics: bool,
    stop: CancellationToken,
) {
    // A short token is no lock at all: treated as none.
    let token = token.filter(|t| t.len() >= MIN_TOKEN_LEN);
    if let Ok(addr) = sock.local_addr() {
        if token.is_none() {
            let open = if public_metrics {
                "only /healthz, /readyz, /metrics and /api/v1/openapi.json answer"
            } else {
                "only /healthz, /readyz and /api/v1/openapi.json answer"
            };
            tracing::warn!(addr = %addr, "Admin API without a token: {open}");
        }
        if !addr.ip().is_loopback() {
            tracing::warn!(addr = %addr, "Admin API listens beyond loopback: keep it behind a firewall");
        }
    }
    let app = router(node, token.map(|t| Arc::from(t.into_bytes())), public_metrics);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = sock.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone().layer(axum::Extension(ClientAddr(peer))));
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
}

/// The OpenAPI description of this API.
const OPENAPI: &str = include_str!("openapi.json");
