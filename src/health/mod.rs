//! Target health: what is known about each upstream target, and the rules that change it.
//!
//! Owns the per-target state ([`TargetHealth`]: active probe verdict, passive ejection,
//! in-flight count, slow-start start time), the passive outlier rules of one upstream
//! ([`Group`]: consecutive failures, the ejection cap, longer ejections for repeat
//! offenders), the active probe tasks ([`active`]) and the read-only view the admin API
//! shows ([`TargetStatus`]). State lives in a [`HealthCache`] so a reload that keeps a target
//! keeps what is known about it. The balancer (`upstream`) reads this module; nothing here
//! reads the balancer.

pub mod active;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::PassiveHealth;
use crate::observe::rfc3339;

/// Health state of every target of every upstream, kept across reloads.
#[derive(Debug, Default)]
pub struct HealthCache {
    // Cold path: locked only while a config is compiled.
    targets: Mutex<HashMap<TargetKey, Arc<TargetHealth>>>,
    /// Per upstream name: bumped by every change of one of its targets' availability; its
    /// balancer compares it with the value its view was built at.
    epochs: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

/// Upstream name, target, backup, TLS.
type TargetKey = (String, Authority, bool, bool);

impl HealthCache {
    /// The state of `authority` (reached over TLS when `https`) as a primary (or backup)
    /// target of `upstream`.
    pub fn target(&self, upstream: &str, authority: &Authority, backup: bool, https: bool) -> Arc<TargetHealth> {
        let epoch = self.epoch(upstream);
        self.targets
            .lock()
            .entry((upstream.to_string(), authority.clone(), backup, https))
            .or_insert_with(|| Arc::new(TargetHealth::new(upstream, authority.clone(), backup, https, epoch)))
            .clone()
    }

    /// Forget targets (and upstreams) no group in `groups` uses.
    pub fn retain_used<'a>(&self, groups: impl Iterator<Item = &'a Group> + Clone) {
        self.targets.lock().retain(|_, t| groups.clone().any(|g| g.members.iter().any(|m| Arc::ptr_eq(m, t))));
        self.epochs.lock().retain(|name, _| groups.clone().any(|g| g.upstream == *name));
    }

    /// The change counter of one upstream's targets.
    pub fn epoch(&self, upstream: &str) -> Arc<AtomicU64> {
        self.epochs.lock().entry(upstream.to_string()).or_default().clone()
    }
}

/// What is known about one target of one upstream.
#[derive(Debug)]
pub struct TargetHealth {
    upstream: String,
    authority: Authority,
    backup: bool,
    https: bool,
    epoch: Arc<AtomicU64>,
    /// The active probes say it is down.
    probed_down: AtomicBool,
    /// Passive detection took it out.
    ejected: AtomicBool,
    /// Consecutive failed requests.
    failures: AtomicU32,
    in_flight: AtomicU32,
    /// Identifies the current ejection, so an old timer never ends a newer one.
    eject_gen: AtomicU64,
    /// Identifies the current set of probe tasks: results of older ones (a config version
    /// being replaced) are ignored.
    probe_gen: AtomicU64,
    // Cold: touched on state changes and by the status view only.
    info: Mutex<Info>,
}

#[derive(Debug)]
struct Info {
    since: SystemTime,
    reason: Option<String>,
    ejections: u32,
    ejections_total: u64,
    ejected_until: Option<SystemTime>,
    last_back: Option<Instant>,
    back_at: Option<Instant>,
    last_probe: Option<ProbeStatus>,
    /// The timer that ends the current ejection.
    eject_timer: Option<tokio::task::AbortHandle>,
}

/// The last active probe of a target.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// When it finished (RFC 3339).
    pub at: String,
    /// Whether it passed.
    pub ok: bool,
    /// Status code or failure.
    pub detail: String,
}

/// One target as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// `http://host:port`.
    pub url: String,
    /// A `backup` target.
    pub backup: bool,
    /// `unhealthy` (active probes fail), `ejected` (passive detection) or `healthy`.
    pub state: &'static str,
    /// When the state last changed (RFC 3339).
    pub since: String,
    /// Why it is out of rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the current ejection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_until: Option<String>,
    /// Ejections in the current run of repeat offences (each lasts longer).
    pub ejections: u32,
    /// Ejections since start.
    pub ejections_total: u64,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Failed requests in a row.
    pub consecutive_failures: u32,
    /// Last active probe, if probes are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeStatus>,
}

/// Counts a request in flight to a target until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<TargetHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TargetHealth {
    fn new(upstream: &str, authority: Authority, backup: bool, https: bool, epoch: Arc<AtomicU64>) -> Self {
        TargetHealth {
            upstream: upstream.to_string(),
            authority,
            backup,
            https,
            epoch,
            probed_down: AtomicBool::new(false),
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            eject_gen: AtomicU64::new(0),
            probe_gen: AtomicU64::new(0),
            info: Mutex::new(Info {
                since: SystemTime::now(),
                reason: None,
                ejections: 0,
                ejections_total: 0,
                ejected_until: None,
                last_back: None,
                back_at: None,
                last_probe: None,
                eject_timer: None,
            }),
        }
    }

    /// The target's `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Neither the probes nor passive detection have taken it out.
    pub fn available(&self) -> bool {
        !self.probed_down.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Count one more request in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When it last came back into rotation (for slow start).
    pub fn back_at(&self) -> Option<Instant> {
        self.info.lock().back_at
    }

    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn came_back(&self, info: &mut Info, why: &str) {
        let now = Instant::now();
        info.since = SystemTime::now();
        info.reason = None;
        info.ejected_until = None;
        info.last_back = Some(now);
        info.back_at = Some(now);
        tracing::info!(upstream = %self.upstream, target = %self.authority, why, "Target back in rotation");
    }

    /// New probe tasks start: from now on only results stamped with the returned
    /// generation count.
    pub(crate) fn new_probes(&self) -> u64 {
        self.probe_gen.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Record an active probe of generation `generation`. Returns true if the target's
    /// availability changed.
    pub(crate) fn probed(&self, generation: u64, ok: bool, detail: String, flip: bool) -> bool {
        let mut info = self.info.lock();
        // Checked under the lock that `forget_probes` takes too.
        if self.probe_gen.load(Ordering::Acquire) != generation {
            return false;
        }
        info.last_probe = Some(ProbeStatus { at: rfc3339(SystemTime::now()), ok, detail: detail.clone() });
        if !flip || self.probed_down.load(Ordering::Relaxed) != ok {
            return false;
        }
        self.probed_down.store(!ok, Ordering::Relaxed);
        if ok {
            // The probes had taken it out and now pass: the outage that (most likely) also
            // got it ejected is over, so the ejection ends too.
            if self.ejected.swap(false, Ordering::AcqRel) {
                self.eject_gen.fetch_add(1, Ordering::AcqRel);
                self.failures.store(0, Ordering::Relaxed);
                if let Some(t) = info.eject_timer.take() {
                    t.abort();
                }
            }
            self.came_back(&mut info, "active probes pass");
        } else {
            info.since = SystemTime::now();
            info.reason = Some(format!("active probes fail: {detail}"));
            tracing::warn!(upstream = %self.upstream, target = %self.authority, reason = %detail, "Target unhealthy: active probes fail");
        }
        drop(info);
        self.changed();
        true
    }

    fn uneject(&self, generation: u64) {
        let mut info = self.info.lock();
        // Under the lock every ejection and early end takes: this timer's ejection is still
        // the current one.
        if self.eject_gen.load(Ordering::Acquire) != generation || !self.ejected.load(Ordering::Acquire) {
            return;
        }
        info.eject_timer = None;
        self.ejected.store(false, Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        if self.probed_down.load(Ordering::Relaxed) {
            info.ejected_until = None;
        } else {
            self.came_back(&mut info, "ejection ended");
        }
        drop(info);
        self.changed();
    }

    /// Active checks are no longer configured: their last verdict no longer holds.
    pub fn forget_probes(&self) {
        let mut info = self.info.lock();
        self.probe_gen.fetch_add(1, Ordering::AcqRel);
        info.last_probe = None;
        if self.probed_down.swap(false, Ordering::AcqRel) {
            if !self.ejected.load(Ordering::Relaxed) {
                self.came_back(&mut info, "active checks removed from the config");
            }
            drop(info);
            self.changed();
        }
    }

    /// The view the admin API shows.
    pub fn status(&self) -> TargetStatus {
        let info = self.info.lock();
        // The probes' verdict first: an ejected target that also fails its probes is down.
        let state = if self.probed_down.load(Ordering::Relaxed) {
            "unhealthy"
        } else if self.ejected.load(Ordering::Relaxed) {
            "ejected"
        } else {
            "healthy"
        };
        TargetStatus {
            url: format!("{}://{}", if self.https { "https" } else { "http" }, self.authority),
            backup: self.backup,
            state,
            since: rfc3339(info.since),
            reason: info.reason.clone(),
            ejected_until: info.ejected_until.map(rfc3339),
            ejections: info.ejections,
            ejections_total: info.ejections_total,
            in_flight: self.in_flight(),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            last_probe: info.last_probe.clone(),
        }
    }
}

/// The targets of one upstream (one config version), primaries first, and its passive
/// outlier rules.
#[derive(Debug)]
pub struct Group {
    upstream: String,
    members: Vec<Arc<TargetHealth>>,
    passive: PassiveHealth,
    // Cold: taken only to decide an ejection, so the cap holds under concurrent failures.
    eject_lock: Mutex<()>,
}

impl Group {
    /// A group over `members` (as handed out by the [`HealthCache`]).
    pub fn new(upstream: &str, members: Vec<Arc<TargetHealth>>, passive: PassiveHealth) -> Self {
        Group { upstream: upstream.to_string(), members, passive, eject_lock: Mutex::new(()) }
    }

    /// The members, in config order (primaries, then backups).
    pub fn members(&self) -> &[Arc<TargetHealth>] {
        &self.members
    }

    /// A request to member `i` succeeded (as far as the target's health goes).
    #[inline]
    pub fn record_success(&self, i: usize) {
        if let Some(m) = self.members.get(i)
            && m.failures.load(Ordering::Relaxed) != 0
        {
            m.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to member `i` failed: connect error, timeout, reset or 5xx.
    pub fn record_failure(&self, i: usize, what: &str) {
        let threshold = self.passive.consecutive_failures;
        let Some(m) = self.members.get(i) else { return };
        let n = m.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if threshold == 0 || n < threshold || m.ejected.load(Ordering::Relaxed) {
            return;
        }
        let _decide = self.eject_lock.lock();
        if m.ejected.load(Ordering::Acquire) {
            return;
        }
        // The cap counts the member's own tier (primaries or backups).
        let tier = self.members.iter().filter(|o| o.backup == m.backup);
        let size = tier.clone().count();
        // Out already: ejected, or taken out by the probes.
        let out = tier.filter(|o| !o.available()).count();
        let allowed = size * usize::from(self.passive.max_ejected) / 100;
        if out >= allowed {
            tracing::debug!(upstream = %self.upstream, target = %m.authority, ejected = out, allowed, "Not ejecting: ejection cap reached");
            return;
        }
        let mut info = m.info.lock();
        // A target that has behaved for a while starts again from the shortest ejection.
        if info.last_back.is_some_and(|t| t.elapsed() > self.passive.max_eject_for * 2) {
            info.ejections = 0;
        }
        info.ejections = info.ejections.saturating_add(1);
        info.ejections_total = info.ejections_total.saturating_add(1);
        let span = self.passive.eject_for.saturating_mul(info.ejections).min(self.passive.max_eject_for);
        info.since = SystemTime::now();
        info.ejected_until = Some(info.since + span);
        info.reason = Some(format!("{n} consecutive failures (last: {what})"));
        let generation = m.eject_gen.fetch_add(1, Ordering::AcqRel) + 1;
        m.ejected.store(true, Ordering::Release);
        let target = m.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(span).await;
            target.uneject(generation);
        });
        if let Some(old) = info.eject_timer.replace(timer.abort_handle()) {
            old.abort();
        }
        tracing::warn!(
            upstream = %self.upstream, target = %m.authority, failures = n, last = what,
            ejection = info.ejections, eject_for_ms = span.as_millis() as u64,
            "Target ejected"
        );
        drop(info);
        m.changed();
    }

    /// Status of every member.
    pub fn status(&self) -> Vec<TargetStatus> {
        self.members.iter().map(|m| m.status()).collect()
    }
}

/// Spread `base` by ±10% so that probes of many targets do not fire together.
pub(crate) fn jitter(base: Duration) -> Duration {
    let spread = base.as_millis() as u64 / 10;
    if spread == 0 {
        return base;
    }
    let off = fastrand::u64(0..=2 * spread);
    (base + Duration::from_millis(off)).saturating_sub(Duration::from_millis(spread))
}
