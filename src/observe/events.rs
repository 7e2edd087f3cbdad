//! Security events: every authentication outcome and every authorisation refusal, published
//! to the sinks that care — counted for `/metrics`, logged (failures, with a bound on lines
//! per second so an attack cannot flood the log), and handed to any subscriber (automated
//! bans and the audit log subscribe here).

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
const METHODS: [&str; 3] = ["api_key", "jwt", "none"];

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
}

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
    log: super::budget::PerSecond,
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
                let m = method.map_or(2, |m| m as usize);
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
        }
        for s in self.sinks.load().iter() {
            s.publish(e);
        }
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
                OUTCOMES.iter().enumerate().filter(move |(o, _)| m < 2 || *o == 1).map(move |(o, outcome)| {
                    (format!("method=\"{method}\",outcome=\"{outcome}\""), self.auth[m][o].load(Ordering::Relaxed))
                })
            }),
        );
        family(
            out,
            "portcullis_access_denied_total",
            "Requests refused by allow rules (403).",
            "counter",
            [(String::new(), self.denied.load(Ordering::Relaxed))],
        );
    }
}
