//! The node's side of the audit log: security and admin events queued without blocking and
//! appended by one writer task to the store's hash chain ([`crate::store::audit`]).
//!
//! Recorded: node start and stop, config applied and refused, bad credentials and `allow`
//! refusals (from the [`Events`](super::events::Events) hub), and admin API access. The
//! CLI appends its own (consumers and keys) directly. Request-driven records are bounded to
//! [`PER_SECOND`] a second; what is over is counted and summarised in one record. The queue
//! is bounded too: a slow store costs dropped records (counted), never a slower request.
//! Without a store (`node.store`), nothing is recorded.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::budget::PerSecond;
use super::events::{AuthOutcome, EventSink, SecurityEvent};
use crate::store::Store;
use crate::store::audit::AuditEvent;

/// Records queued at most.
const QUEUE: usize = 4096;
/// Request-driven records (bad credentials, refusals, admin calls) kept per second.
pub const PER_SECOND: u64 = 20;

struct StoreRef(Arc<dyn Store>);

struct Inner {
    store: ArcSwapOption<StoreRef>,
    submitted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The audit recorder. Cheap to call from the request path.
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    rx: Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    inner: Arc<Inner>,
    node: Mutex<String>,
    /// Budgets: request-driven records from the listeners, admin API calls with the token,
    /// and refused admin calls — so neither a flood of bad credentials nor one of bad admin
    /// tokens can hide the use of the real one.
    requests: PerSecond,
    admin: PerSecond,
    admin_refused: PerSecond,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("written", &self.inner.written).finish_non_exhaustive()
    }
}

impl Default for Audit {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Audit {
            tx,
            rx: Mutex::new(Some(rx)),
            inner: Arc::new(Inner {
                store: ArcSwapOption::empty(),
                submitted: AtomicU64::new(0),
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
            node: Mutex::new("portcullis".into()),
            requests: PerSecond::default(),
            admin: PerSecond::default(),
            admin_refused: PerSecond::default(),
        }
    }
}

impl Audit {
    /// Record into `store` from now on (`None`: stop recording). Starts the writer task the
    /// first time (call from within the runtime).
    pub fn set_store(&self, store: Option<Arc<dyn Store>>) {
        self.inner.store.store(store.map(|s| Arc::new(StoreRef(s))));
        if let Some(rx) = self.rx.lock().take() {
            tokio::spawn(write(rx, self.inner.clone()));
        }
    }

    /// The node name records carry.
    pub fn set_node(&self, name: &str) {
        *self.node.lock() = name.to_string();
    }

    /// Queue one record (never waits).
    pub fn record(&self, kind: &str, actor: &str, detail: serde_json::Value) {
        if self.inner.store.load().is_none() {
            return;
        }
        let e = AuditEvent {
            time_ms: crate::clock::unix_ms(),
            node: self.node.lock().clone(),
            kind: kind.to_string(),
            actor: actor.to_string(),
            detail: detail.to_string(),
        };
        self.inner.submitted.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(e).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Audit::record`] within the per-second budget of request-driven records.
    pub fn record_limited(&self, kind: &str, actor: &str, detail: serde_json::Value) {
        self.within(&self.requests, "requests", kind, actor, detail);
    }

    /// [`Audit::record`] within the per-second budget of admin API calls, allowed or refused.
    pub fn record_admin(&self, allowed: bool, kind: &str, actor: &str, detail: serde_json::Value) {
        if allowed {
            self.within(&self.admin, "admin", kind, actor, detail);
        } else {
            self.within(&self.admin_refused, "admin_refused", kind, actor, detail);
        }
    }

    /// Whether anything is recorded at all (a store is set).
    pub fn active(&self) -> bool {
        self.inner.store.load().is_some()
    }

    fn within(&self, b: &PerSecond, source: &str, kind: &str, actor: &str, detail: serde_json::Value) {
        if b.admit(PER_SECOND, |left_out| self.summarise(left_out, source)) {
            self.record(kind, actor, detail);
        }
    }

    fn summarise(&self, left_out: u64, source: &str) {
        let detail = serde_json::json!({ "count": left_out, "per_second": PER_SECOND, "source": source });
        self.record("events_suppressed", "portcullis", detail);
    }

    /// Record what is still counted but unwritten (at shutdown).
    pub fn summarise_pending(&self) {
        for (b, source) in
            [(&self.requests, "requests"), (&self.admin, "admin"), (&self.admin_refused, "admin_refused")]
        {
            let left_out = b.take_suppressed();
            if left_out > 0 {
                self.summarise(left_out, source);
            }
        }
    }

    /// Wait (at most `limit`) until every queued record is written or given up on.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let i = &self.inner;
        while i.written.load(Ordering::Relaxed) + i.dropped.load(Ordering::Relaxed) + i.failed.load(Ordering::Relaxed)
            < i.submitted.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `portcullis_audit_records_total`, for `/metrics`.
    pub fn write_metrics(&self, out: &mut String) {
        let i = &self.inner;
        super::metrics::family(
            out,
            "portcullis_audit_records_total",
            "Audit records: written to the store, dropped (queue full), failed (store error).",
            "counter",
            [
                ("result=\"written\"".to_string(), i.written.load(Ordering::Relaxed)),
                ("result=\"dropped\"".to_string(), i.dropped.load(Ordering::Relaxed)),
                ("result=\"failed\"".to_string(), i.failed.load(Ordering::Relaxed)),
            ],
        );
    }
}

async fn write(mut rx: mpsc::Receiver<AuditEvent>, inner: Arc<Inner>) {
    let mut failing = false;
    while let Some(e) = rx.recv().await {
        let Some(store) = inner.store.load_full() else {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match store.0.append_audit(&e).await {
            Ok(_) => {
                inner.written.fetch_add(1, Ordering::Relaxed);
                failing = false;
            }
            Err(err) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %err, kind = %e.kind, "Cannot append to the audit log");
                    failing = true;
                }
            }
        }
    }
}

impl EventSink for Audit {
    fn publish(&self, e: &SecurityEvent<'_>) {
        if !self.active() {
            // Nothing would be written: build nothing.
            return;
        }
        match *e {
            // Bad credentials (not missing ones: every anonymous probe would be one).
            SecurityEvent::Auth { method, outcome: AuthOutcome::Invalid, client, route, reason, .. } => self
                .record_limited(
                    "auth_failure",
                    &client.to_string(),
                    serde_json::json!({
                        "route": route,
                        "method": method.map(crate::auth::method_name),
                        "reason": reason,
                    }),
                ),
            SecurityEvent::Denied { client, route, consumer } => self.record_limited(
                "access_denied",
                &consumer.map_or_else(|| client.to_string(), str::to_string),
                serde_json::json!({ "route": route, "client": client.to_string() }),
            ),
            SecurityEvent::Banned { key, reason, until_ms, offences, by } => {
                let detail =
                    serde_json::json!({ "key": key, "reason": reason, "until_ms": until_ms, "offences": offences });
                // A rule's bans follow an attack's pace and share its budget; an operator's
                // are always recorded.
                if by == "rule" { self.record_limited("ban", by, detail) } else { self.record("ban", by, detail) }
            }
            SecurityEvent::Unbanned { key, by, was_banned } => {
                self.record("unban", by, serde_json::json!({ "key": key, "was_banned": was_banned }))
            }
            // Counted and logged; a flood of them is no audit trail.
            SecurityEvent::Auth { .. }
            | SecurityEvent::Limited { .. }
            | SecurityEvent::NotFound { .. }
            | SecurityEvent::Blocked { .. }
            | SecurityEvent::QuotaExceeded { .. } => {}
        }
    }
}

/// Longest admin path kept in a record (a caller chooses it).
const MAX_PATH: usize = 256;

/// An admin API call, for the audit log.
pub fn admin_detail(method: &str, path: &str, allowed: bool, client: Option<IpAddr>) -> serde_json::Value {
    let mut cut = path.len().min(MAX_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "method": method,
        "path": &path[..cut],
        "result": if allowed { "allowed" } else { "refused" },
        "client": client.map(|c| c.to_string()),
    })
}
