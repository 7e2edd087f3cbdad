//! The one rescue point: every error the gateway answers itself becomes an RFC 9457
//! `application/problem+json` response with a `request_id`, and never carries an internal
//! address, a stack trace or an upstream's error text.

use std::error::Error as StdError;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::GwBody;
use crate::observe::json_escape;
use crate::protect::BodyError;
use crate::router::path::PathError;

/// Errors the request pipeline answers itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the request.
    #[error("no route matches the request")]
    RouteNotFound,
    /// The path was refused by normalisation.
    #[error(transparent)]
    BadPath(#[from] PathError),
    /// The request was malformed in another way.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The declared body is larger than the listener allows.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The request body did not arrive within the listener's `body_timeout`.
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// Authentication failed or no credential was presented (401).
    #[error("authentication failed: {reason}")]
    Unauthenticated {
        /// `WWW-Authenticate` value.
        challenge: HeaderValue,
        /// Why, safe to show.
        reason: &'static str,
    },
    /// Over the route's rate limit (429).
    #[error("rate limit exceeded")]
    RateLimited {
        /// Whole seconds until a request would be allowed (at least 1).
        retry_after: u64,
        /// `RateLimit-Policy` value.
        policy: HeaderValue,
        /// `RateLimit` value.
        state: HeaderValue,
    },
    /// The route's quota for this period is used up (429).
    #[error("quota exceeded")]
    QuotaExceeded {
        /// Requests per period.
        limit: u64,
        /// Seconds until the period ends.
        reset_secs: u64,
    },
    /// Rate limits are shared through Redis, Redis is unreachable, and
    /// `cluster.redis_failure: closed` (503).
    #[error("shared rate limits are unavailable")]
    LimitsUnavailable,
    /// The client (or its consumer) is banned or refused by IP rules (403).
    #[error("client blocked")]
    Blocked,
    /// Authenticated, but the route's `allow` rules refuse this caller (403).
    #[error("access denied by the route's allow rules")]
    Forbidden,
    /// The credential could not be checked: no identity-provider keys are available (503).
    #[error("identity provider keys are unavailable")]
    AuthUnavailable,
    /// The upstream has no target to send to.
    #[error("upstream `{upstream}` has no available target")]
    NoTarget {
        /// Upstream name.
        upstream: String,
    },
    /// The upstream's circuit breaker is open: too many requests in flight and waiting.
    #[error("upstream `{upstream}` is overloaded")]
    Overloaded {
        /// Upstream name.
        upstream: String,
    },
    /// Could not connect to the chosen target.
    #[error("connecting to upstream `{upstream}` failed")]
    UpstreamConnect {
        /// Upstream name.
        upstream: String,
        /// What failed.
        #[source]
        source: crate::upstream::ConnectError,
    },
    /// The TCP connect took longer than `timeouts.connect`.
    #[error("connecting to upstream `{upstream}` timed out")]
    UpstreamConnectTimeout {
        /// Upstream name.
        upstream: String,
    },
    /// No response head within `timeouts.response`.
    #[error("upstream `{upstream}` did not answer in time")]
    UpstreamTimeout {
        /// Upstream name.
        upstream: String,
    },
    /// The upstream cannot take this kind of request, or answered in a way that cannot be
    /// passed on (a WebSocket to an HTTP/2-only upstream, an unasked-for `101`).
    #[error("upstream `{upstream}`: {why}")]
    UpstreamProtocol {
        /// Upstream name.
        upstream: String,
        /// What went wrong.
        why: &'static str,
    },
    /// The exchange with the upstream failed after connecting.
    #[error("request to upstream `{upstream}` failed")]
    Upstream {
        /// Upstream name.
        upstream: String,
        /// The client error.
        #[source]
        source: hyper::Error,
    },
}

/// Find an error of type `E` anywhere in the cause chain.
pub fn cause_ref<'a, E: StdError + 'static>(mut err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    loop {
        if let Some(e) = err.downcast_ref::<E>() {
            return Some(e);
        }
        err = err.source()?;
    }
}

impl GatewayError {
    /// Status, title and client-safe detail.
    pub fn describe(&self) -> (StatusCode, &'static str, String) {
        // A failure while the client's body streamed is the client's, whatever wrapped it.
        if let GatewayError::Upstream { source, .. } = self
            && let Some(b) = cause_ref::<BodyError>(source)
        {
            return match b {
                BodyError::TooLarge { limit } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Content Too Large",
                    format!("the request body is larger than {limit} bytes"),
                ),
                BodyError::Timeout => {
                    (StatusCode::REQUEST_TIMEOUT, "Request Timeout", "the request body was not received in time".into())
                }
                BodyError::Client(_) => {
                    (StatusCode::BAD_REQUEST, "Bad Request", "the request body could not be read".into())
                }
            };
        }
        match self {
            GatewayError::RouteNotFound => (StatusCode::NOT_FOUND, "Not Found", "no route matches this request".into()),
            GatewayError::BadPath(e) => (StatusCode::BAD_REQUEST, "Bad Request", e.to_string()),
            GatewayError::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad Request", (*why).into()),
            GatewayError::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Content Too Large",
                format!("the request body is larger than {limit} bytes"),
            ),
            GatewayError::BodyTimeout => {
                (StatusCode::REQUEST_TIMEOUT, "Request Timeout", "the request body was not received in time".into())
            }
            GatewayError::Unauthenticated { reason, .. } => {
                (StatusCode::UNAUTHORIZED, "Unauthorized", reason.to_string())
            }
            GatewayError::RateLimited { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                format!("the rate limit of this route is exceeded; retry after {retry_after} s"),
            ),
            GatewayError::QuotaExceeded { reset_secs, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                format!("the quota of this route for the period is used up; it resets in {reset_secs} s"),
            ),
            GatewayError::Blocked => (StatusCode::FORBIDDEN, "Forbidden", "this client is blocked".into()),
            GatewayError::LimitsUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "rate limits cannot be checked right now; try again later".into(),
            ),
            GatewayError::Forbidden => {
                (StatusCode::FORBIDDEN, "Forbidden", "this caller is not allowed to use this route".into())
            }
            GatewayError::AuthUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "credentials cannot be checked right now: the identity provider's keys are unavailable".into(),
            ),
            GatewayError::NoTarget { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "no healthy upstream target is available".into(),
            ),
            GatewayError::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "the upstream service is overloaded; try again later".into(),
            ),
            GatewayError::UpstreamConnect { .. } => {
                (StatusCode::BAD_GATEWAY, "Bad Gateway", "the upstream service could not be reached".into())
            }
            GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamConnectTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", "the upstream service did not answer in time".into())
            }
            GatewayError::Upstream { .. } => {
                (StatusCode::BAD_GATEWAY, "Bad Gateway", "the upstream service failed to answer".into())
            }
            GatewayError::UpstreamProtocol { .. } => (
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                "the upstream service cannot take this request or answered in a way that cannot be passed on".into(),
            ),
        }
    }
}

/// The problem+json document for one error.
pub fn problem_json(status: u16, title: &str, detail: &str, request_id: &str) -> String {
    let mut s = String::with_capacity(160 + detail.len());
    s.push_str("{\"type\":\"about:blank\",\"title\":\"");
    json_escape(title, &mut s);
    s.push_str("\",\"status\":");
    s.push_str(&status.to_string());
    s.push_str(",\"detail\":\"");
    json_escape(detail, &mut s);
    s.push_str("\",\"request_id\":\"");
    json_escape(request_id, &mut s);
    s.push_str("\"}");
    s
}

/// A problem+json response.
pub fn problem(status: StatusCode, title: &str, detail: &str, request_id: &HeaderValue) -> Response<GwBody> {
    let id = request_id.to_str().unwrap_or("");
    let body = problem_json(status.as_u16(), title, detail, id);
    let mut res = Response::new(GwBody::full(body.into()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(crate::protect::headers::X_REQUEST_ID, request_id.clone());
    res
}

/// Turn a pipeline error into its response.
pub fn rescue(err: &GatewayError, request_id: &HeaderValue) -> Response<GwBody> {
    let (status, title, detail) = err.describe();
    let mut res = problem(status, title, &detail, request_id);
    if let GatewayError::Unauthenticated { challenge, .. } = err {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.clone());
    }
    if let GatewayError::RateLimited { retry_after, policy, state } = err {
        let h = res.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        h.insert(http::HeaderName::from_static("ratelimit-policy"), policy.clone());
        h.insert(http::HeaderName::from_static("ratelimit"), state.clone());
    }
    if let GatewayError::QuotaExceeded { limit, reset_secs } = err {
        let h = res.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from((*reset_secs).max(1)));
        set_quota_headers(h, *limit, 0, *reset_secs);
    }
    if matches!(err, GatewayError::LimitsUnavailable) {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if matches!(err, GatewayError::Blocked) {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT | StatusCode::BAD_REQUEST) {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// gRPC status codes the gateway answers with.
pub mod grpc {
    /// The deadline passed before the upstream answered.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// A limit, quota or size was exceeded.
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// Refused by an `allow` rule or a ban.
    pub const PERMISSION_DENIED: u8 = 7;
    /// No route for this method.
    pub const UNIMPLEMENTED: u8 = 12;
    /// A malformed request (gRPC maps HTTP 400 so).
    pub const INTERNAL: u8 = 13;
    /// No upstream could be reached or answered; retrying may help.
    pub const UNAVAILABLE: u8 = 14;
    /// Missing or bad credentials.
    pub const UNAUTHENTICATED: u8 = 16;
    /// Anything else.
    pub const UNKNOWN: u8 = 2;
}

impl GatewayError {
    /// The gRPC status for this error: gRPC's HTTP-to-gRPC mapping, made exact where the
    /// gateway knows more (a deadline, an exhausted limit).
    pub fn grpc_status(&self) -> u8 {
        match self {
            GatewayError::UpstreamTimeout { .. } | GatewayError::BodyTimeout => grpc::DEADLINE_EXCEEDED,
            GatewayError::UpstreamConnectTimeout { .. } => grpc::UNAVAILABLE,
            GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. }
            | GatewayError::BodyTooLarge { .. } => grpc::RESOURCE_EXHAUSTED,
            _ => match self.describe().0.as_u16() {
                400 => grpc::INTERNAL,
                401 => grpc::UNAUTHENTICATED,
                403 => grpc::PERMISSION_DENIED,
                404 => grpc::UNIMPLEMENTED,
                408 => grpc::DEADLINE_EXCEEDED,
                413 | 429 => grpc::RESOURCE_EXHAUSTED,
                502..=504 => grpc::UNAVAILABLE,
                _ => grpc::UNKNOWN,
            },
        }
    }
}

/// Turn a pipeline error into its answer for a gRPC caller: a trailers-only response
/// (HTTP 200, `grpc-status` and `grpc-message` in the head, no body), with the headers the
/// HTTP answer would carry (`WWW-Authenticate`, `Retry-After`, rate-limit headers...).
pub fn rescue_grpc(err: &GatewayError, request_id: &HeaderValue) -> Response<GwBody> {
    let (_, _, detail) = err.describe();
    let mut res = rescue(err, request_id);
    *res.status_mut() = StatusCode::OK;
    *res.body_mut() = GwBody::full(bytes::Bytes::new());
    let h = res.headers_mut();
    h.remove(header::CONNECTION);
    h.remove(header::CACHE_CONTROL);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::HeaderName::from_static("grpc-status"), HeaderValue::from(u16::from(err.grpc_status())));
    // gRPC's own encoding of `grpc-message`: printable ASCII but `%` as is, the rest `%XX`.
    if let Ok(v) = HeaderValue::from_str(&crate::hex::percent_encode(&detail, b"")) {
        h.insert(http::HeaderName::from_static("grpc-message"), v);
    }
    res
}

/// `X-Quota-Limit`, `X-Quota-Remaining` and `X-Quota-Reset` (seconds until the period ends).
pub fn set_quota_headers(h: &mut http::HeaderMap, limit: u64, remaining: u64, reset_secs: u64) {
    h.insert(http::HeaderName::from_static("x-quota-limit"), HeaderValue::from(limit));
    h.insert(http::HeaderName::from_static("x-quota-remaining"), HeaderValue::from(remaining));
    h.insert(http::HeaderName::from_static("x-quota-reset"), HeaderValue::from(reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_is_valid_json() {
        let s = problem_json(404, "Not \"Found\"", "a\\b\n", "id-1");
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["status"], 404);
        assert_eq!(v["title"], "Not \"Found\"");
        assert_eq!(v["detail"], "a\\b\n");
        assert_eq!(v["request_id"], "id-1");
    }
}
