//! Security events: every authentication outcome and every authorisation refusal, published
//! to the sinks that care — counted for `/metrics`, logged (failures, with a bound on lines
//! per second so an attack cannot flood the log), and handed to any subscriber (automated
//! bans and the audit log subscribe here). Blocks, bans and quota refusals are published here
//! too.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::config::AuthMethod;

/// How an authentication attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Accepted.
    Success,
    /// No credential presented.
    Missing,
    /// A bad credential.
    Invalid,
    /// The credential could not be checked (no keys): the gateway's fault.
    Unavailable,
}

const OUTCOMES: [&str; 4] = ["success", "missing", "invalid", "unavailable"];
const METHODS: [&str; 4] = ["api_key", "jwt", "mtls", "none"];

/// One security event.
#[derive(Debug, Clone, Copy)]
pub enum SecurityEvent<'a> {
    /// A request to a route with `auth` was authenticated or not.
    Auth {
        /// The method that decided (`None` when no credential was presented at all).
        method: Option<AuthMethod>,
        /// Outcome.
        outcome: AuthOutcome,
        /// Client address.
        client: IpAddr,
        /// Route name.
        route: &'a str,
        /// The consumer, when known.
        consumer: Option<&'a str>,
        /// Why it failed (empty on success).
        reason: &'a str,
    },
    /// A request was refused by the route's rate limit.
    Limited {
        /// Client address.
        client: IpAddr,
        /// Route name.
        route: &'a str,
        /// The consumer, when known.
        consumer: Option<&'a str>,
    },
    /// An authenticated (or anonymous, on a public route) caller was refused by `allow`.
    Denied {
        /// Client address.
        client: IpAddr,
        /// Route name.
        route: &'a str,
        /// The consumer, when known.
        consumer: Option<&'a str>,
    },
    /// A 404 answer (fed to ban rules; not logged: the access log has it).
    NotFound {
        /// Client address.
        client: IpAddr,
        /// The consumer, when known.
        consumer: Option<&'a str>,
    },
    /// A connection (at accept) or a request was refused by a ban, an IP rule or a cap.
    Blocked {
        /// Client address.
        client: IpAddr,
        /// Why.
        reason: BlockReason,
        /// At accept (no HTTP read) rather than per request.
        at_accept: bool,
    },
    /// A key was banned.
    Banned {
        /// `ip:ADDRESS` or `consumer:NAME`.
        key: &'a str,
        /// Why.
        reason: &'a str,
        /// When it ends (Unix ms).
        until_ms: i64,
        /// The how-manieth ban in a row.
        offences: u32,
        /// `rule`, or the operator's channel (`admin`).
        by: &'a str,
    },
    /// An operator lifted a ban.
    Unbanned {
        /// `ip:ADDRESS` or `consumer:NAME`.
        key: &'a str,
        /// The operator's channel (`admin`).
        by: &'a str,
        /// Whether a ban was in force.
        was_banned: bool,
    },
    /// A request over its route's quota.
    QuotaExceeded {
        /// Client address.
        client: IpAddr,
        /// Route name.
        route: &'a str,
        /// The consumer, when known.
        consumer: Option<&'a str>,
    },
}

/// Why a connection or request was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// The client IP (or, per request, the consumer) is banned.
    Banned,
    /// `protection.ip_rules` refuse the client's address.
    IpRule,
    /// The listener's `max_connections` is reached.
    Connections,
    /// The client's `max_connections_per_ip` is reached.
    ConnectionsPerIp,
}

const BLOCK_REASONS: [&str; 4] = ["banned", "ip_rule", "max_connections", "max_connections_per_ip"];

/// Something that wants security events (called on the request path: be quick, never block).
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Take one event.
    fn publish(&self, e: &SecurityEvent<'_>);
}

/// Most failure lines logged per second; the rest are counted and summarised.
const LOG_PER_SECOND: u64 = 50;

/// The event hub: counters, the rate-bounded log, and subscribers.
#[derive(Debug, Default)]
pub struct Events {
    auth: [[AtomicU64; OUTCOMES.len()]; METHODS.len()],
    denied: AtomicU64,
    /// Refusals by reason, at accept (0) and per request (1).
    blocked: [[AtomicU64; 2]; BLOCK_REASONS.len()],
    quota_exceeded: AtomicU64,
    log: super::budget::PerSecond,
    /// Bans and lifts have their own budget: a flood of failures cannot hide them.
    ban_log: super::budget::PerSecond,
    sinks: ArcSwap<Vec<Arc<dyn EventSink>>>,
}

impl Events {
    /// Add a subscriber.
    pub fn subscribe(&self, sink: Arc<dyn EventSink>) {
        self.sinks.rcu(|cur| {
            let mut v = Vec::clone(cur);
            v.push(sink.clone());
            v
        });
    }

    /// Publish one event.
    pub fn publish(&self, e: &SecurityEvent<'_>) {
        match *e {
            SecurityEvent::Auth { method, outcome, client, route, consumer, reason } => {
                let m = match method {
                    Some(AuthMethod::ApiKey) => 0,
                    Some(AuthMethod::Jwt) => 1,
                    Some(AuthMethod::Mtls) => 2,
                    None => 3,
                };
                self.auth[m][outcome as usize].fetch_add(1, Ordering::Relaxed);
                if outcome != AuthOutcome::Success && self.may_log() {
                    let method = METHODS[m];
                    if outcome == AuthOutcome::Unavailable {
                        // The gateway's trouble, not the caller's: never counted against them.
                        tracing::info!(target: "portcullis::security", event = "auth_unavailable", %client, route, method, reason, "Authentication could not be checked");
                    } else {
                        tracing::info!(target: "portcullis::security", event = "auth_failure", %client, route, method, consumer, reason, "Authentication failed");
                    }
                }
            }
            SecurityEvent::Limited { client, route, consumer } => {
                if self.may_log() {
                    tracing::info!(target: "portcullis::security", event = "rate_limited", %client, route, consumer, "Rate limit exceeded");
                }
            }
            SecurityEvent::Denied { client, route, consumer } => {
                self.denied.fetch_add(1, Ordering::Relaxed);
                if self.may_log() {
                    tracing::info!(target: "portcullis::security", event = "access_denied", %client, route, consumer, "Access denied by allow rules");
                }
            }
            SecurityEvent::NotFound { .. } => {}
            SecurityEvent::Blocked { client, reason, at_accept } => {
                self.blocked[reason as usize][usize::from(!at_accept)].fetch_add(1, Ordering::Relaxed);
                if self.may_log() {
                    let reason = BLOCK_REASONS[reason as usize];
                    let stage = if at_accept { "accept" } else { "request" };
                    tracing::info!(target: "portcullis::security", event = "blocked", %client, reason, stage, "Client refused");
                }
            }
            SecurityEvent::Banned { key, reason, until_ms, offences, by } => {
                if self.may_log_ban() {
                    let secs = (until_ms - crate::clock::unix_ms()).max(0) / 1000;
                    tracing::warn!(target: "portcullis::security", event = "banned", key, reason, ban_seconds = secs, offences, by, "Banned");
                }
            }
            SecurityEvent::Unbanned { key, by, was_banned } => {
                if self.may_log_ban() {
                    tracing::warn!(target: "portcullis::security", event = "unbanned", key, by, was_banned, "Ban lifted");
                }
            }
            SecurityEvent::QuotaExceeded { client, route, consumer } => {
                self.quota_exceeded.fetch_add(1, Ordering::Relaxed);
                if self.may_log() {
                    tracing::info!(target: "portcullis::security", event = "quota_exceeded", %client, route, consumer, "Quota exceeded");
                }
            }
        }
        for s in self.sinks.load().iter() {
            s.publish(e);
        }
    }

    /// Whether one more ban line fits in this second's budget (its own, of the same size).
    fn may_log_ban(&self) -> bool {
        self.ban_log.admit(LOG_PER_SECOND, |left_out| {
            tracing::warn!(target: "portcullis::security", suppressed = left_out, "Bans not logged (over {LOG_PER_SECOND} per second); see portcullis_bans_total and GET /api/v1/bans");
        })
    }

    /// Whether one more line fits in this second's budget.
    fn may_log(&self) -> bool {
        self.log.admit(LOG_PER_SECOND, |left_out| {
            tracing::warn!(target: "portcullis::security", suppressed = left_out, "Security events not logged (over {LOG_PER_SECOND} per second); they are counted in /metrics");
        })
    }

    /// `portcullis_auth_total` and `portcullis_access_denied_total`, for `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        use super::metrics::family;
        family(
            out,
            "portcullis_auth_total",
            "Authentication outcomes on routes with auth, by method (none: no credential presented).",
            "counter",
            METHODS.iter().enumerate().flat_map(|(m, method)| {
                OUTCOMES.iter().enumerate().filter(move |(o, _)| *method != "none" || *o == 1).map(
                    move |(o, outcome)| {
                        (format!("method=\"{method}\",outcome=\"{outcome}\""), self.auth[m][o].load(Ordering::Relaxed))
                    },
                )
            }),
        );
        family(
            out,
            "portcullis_access_denied_total",
            "Requests refused by allow rules (403).",
            "counter",
            [(String::new(), self.denied.load(Ordering::Relaxed))],
        );
        family(
            out,
            "portcullis_blocked_total",
            "Connections (stage=accept) and requests (stage=request) refused by bans, IP rules and connection caps.",
            "counter",
            BLOCK_REASONS.iter().enumerate().flat_map(|(r, reason)| {
                ["accept", "request"].into_iter().enumerate().filter(move |(s, _)| r < 2 || *s == 0).map(
                    move |(s, stage)| {
                        (format!("reason=\"{reason}\",stage=\"{stage}\""), self.blocked[r][s].load(Ordering::Relaxed))
                    },
                )
            }),
        );
        family(
            out,
            "portcullis_quota_exceeded_total",
            "Requests refused (429) because their quota for the period was used up.",
            "counter",
            [(String::new(), self.quota_exceeded.load(Ordering::Relaxed))],
        );
    }
}
