//! Detection and automated response: `protection.bans` rules count security events per key
//! over sliding windows and ban a key that reaches a rule's threshold; `ip_rules` refuse
//! networks outright.
//!
//! Owns [`Protection`], the subscriber to security events that feeds the rules, and the
//! decisions made at accept and per request (banned or denied → refused). A window is ten
//! slots of a tenth of the rule's window each, so a count covers between 90% and 100% of
//! the window (never more): memory is fixed per key, and keys are bounded per rule.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::bans::{Bans, Subject};
use crate::config::{BanKeyKind, BanRule, BanTrigger, ProtectionConfig};
use crate::observe::events::{AuthOutcome, BlockReason, EventSink, Events, SecurityEvent};

const SHARDS: usize = 16;
const SLOTS: u64 = 10;
/// Keys sampled to choose one to forget when a shard is full.
const SAMPLE: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    counts: [u32; SLOTS as usize],
    /// The slot (absolute, in slot widths since the clock's zero) counted last.
    last: u64,
}

impl Window {
    /// Count one event in `slot`; the events of the last [`SLOTS`] slots.
    fn hit(&mut self, slot: u64) -> u32 {
        if slot >= self.last + SLOTS {
            self.counts = [0; SLOTS as usize];
        } else {
            for s in self.last + 1..=slot {
                self.counts[(s % SLOTS) as usize] = 0;
            }
        }
        self.last = self.last.max(slot);
        let c = &mut self.counts[(slot % SLOTS) as usize];
        *c = c.saturating_add(1);
        self.sum(slot)
    }

    fn sum(&self, slot: u64) -> u32 {
        if slot >= self.last + SLOTS {
            return 0;
        }
        // Slots after `last` are empty; those before `slot - 9` have been zeroed.
        self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c))
    }
}

#[derive(Debug)]
struct Rule {
    cfg: BanRule,
    slot_ns: u64,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<Box<[u8]>, Window>>>,
}

impl Rule {
    fn new(cfg: &BanRule) -> Rule {
        let window_ns = u64::try_from(cfg.window.as_nanos()).unwrap_or(u64::MAX);
        Rule {
            cfg: cfg.clone(),
            slot_ns: (window_ns / SLOTS).max(1),
            max_per_shard: (cfg.max_keys / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Count one event of `key` at `now_ns`; true when it reaches the threshold (the key's
    /// window then starts again).
    fn hit(&self, key: &[u8], now_ns: u64) -> bool {
        let slot = now_ns / self.slot_ns;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock();
        if let Some(w) = map.get_mut(key) {
            if w.hit(slot) >= self.cfg.threshold {
                map.remove(key);
                return true;
            }
            return false;
        }
        if self.cfg.threshold <= 1 {
            return true;
        }
        if map.len() >= self.max_per_shard {
            // Forget the quietest of a few sampled keys (a finished window counts 0): no scan
            // of the whole shard on the request path.
            let victim = map.iter().take(SAMPLE).min_by_key(|(_, w)| w.sum(slot)).map(|(k, _)| k.clone());
            if let Some(k) = victim {
                map.remove(&k);
            }
        }
        let mut w = Window { last: slot, ..Window::default() };
        w.hit(slot);
        map.insert(Box::from(key), w);
        false
    }

    fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The rules of one config version.
#[derive(Debug, Default)]
struct Detector {
    cfg: ProtectionConfig,
    /// Shared with the next version while `bans` stays the same, so counts survive reloads
    /// that change only IP rules or exemptions.
    rules: Arc<[Rule]>,
}

/// Automated protection: the ban table, the detection rules, and the counters of bans.
#[derive(Debug, Default)]
pub struct Protection {
    /// Bans in force.
    pub bans: Arc<Bans>,
    detector: ArcSwap<Detector>,
    events: OnceLock<Weak<Events>>,
    /// Bans imposed, by trigger (index of [`BanTrigger`]) and one more for operators.
    imposed: [AtomicU64; 5],
}

/// The label of each `imposed` counter.
const IMPOSED: [&str; 5] = ["auth_failures", "not_found", "rate_limited", "denied", "manual"];

fn trigger_index(t: BanTrigger) -> usize {
    match t {
        BanTrigger::AuthFailures => 0,
        BanTrigger::NotFound => 1,
        BanTrigger::RateLimited => 2,
        BanTrigger::Denied => 3,
    }
}

impl Protection {
    /// Where bans are announced (the event hub this protection subscribes to).
    pub fn attach(&self, events: Weak<Events>) {
        let _ = self.events.set(events);
    }

    /// Use `cfg`'s rules from now on; counts are kept when the rules did not change.
    pub fn configure(&self, cfg: &ProtectionConfig) {
        let cur = self.detector.load();
        if cur.cfg == *cfg {
            return;
        }
        let rules = if cur.cfg.bans == cfg.bans && cur.cfg.ipv6_prefix == cfg.ipv6_prefix {
            cur.rules.clone()
        } else {
            cfg.bans.iter().map(Rule::new).collect()
        };
        self.detector.store(Arc::new(Detector { cfg: cfg.clone(), rules }));
    }

    /// Why a connection or request from `ip` must be refused, if it must.
    pub fn refuse_ip(&self, ip: IpAddr, cfg: &ProtectionConfig) -> Option<BlockReason> {
        if !cfg.ip_allowed(ip) {
            return Some(BlockReason::IpRule);
        }
        // An exempt address is never refused by a ban (a neighbour's /64 ban included).
        if self.bans.any()
            && self.bans.ip_banned(ip, crate::clock::unix_ms())
            && !cfg.exempt.iter().any(|n| n.contains(&ip))
        {
            return Some(BlockReason::Banned);
        }
        None
    }

    /// Whether the consumer is banned.
    pub fn consumer_banned(&self, name: &str) -> bool {
        self.bans.any() && self.bans.consumer_banned(name, crate::clock::unix_ms())
    }

    /// An operator's ban: `who` for `len`.
    pub fn ban(
        &self,
        who: Subject<'_>,
        reason: &str,
        len: std::time::Duration,
        by: &str,
    ) -> Option<crate::store::BanRecord> {
        let rec = self.bans.ban_for(who, reason, len, crate::clock::unix_ms())?;
        self.imposed[4].fetch_add(1, Ordering::Relaxed);
        self.announce(&rec, by);
        Some(rec)
    }

    /// An operator lifts the ban of `who`; whether one was in force.
    pub fn unban(&self, who: Subject<'_>, by: &str) -> bool {
        let lifted = self.bans.lift(who, crate::clock::unix_ms());
        if let Some(ev) = self.events.get().and_then(Weak::upgrade) {
            let key = who.to_string();
            ev.publish(&SecurityEvent::Unbanned { key: &key, by, was_banned: lifted });
        }
        lifted
    }

    fn announce(&self, rec: &crate::store::BanRecord, by: &str) {
        if let Some(ev) = self.events.get().and_then(Weak::upgrade) {
            ev.publish(&SecurityEvent::Banned {
                key: &rec.key,
                reason: &rec.reason,
                until_ms: rec.until_ms,
                offences: rec.offences,
                by,
            });
        }
    }

    /// Count one event for the rules that watch `trigger`.
    fn count(&self, trigger: BanTrigger, client: IpAddr, consumer: Option<&str>) {
        let det = self.detector.load();
        if det.rules.is_empty() {
            return;
        }
        let now_ns = crate::clock::mono_ns();
        for rule in det.rules.iter().filter(|r| r.cfg.on == trigger) {
            let mut ipbuf = [0u8; 17];
            let (who, key): (Subject<'_>, &[u8]) = match rule.cfg.key {
                BanKeyKind::Ip => {
                    if det.cfg.exempt.iter().any(|n| n.contains(&client)) {
                        continue;
                    }
                    // The client's network (its /64 for IPv6): rotating addresses inside it
                    // counts as one client.
                    let who = Subject::client(client, det.cfg.ipv6_prefix);
                    let key = match who {
                        Subject::Net(ipnet::IpNet::V4(n)) => {
                            ipbuf[..4].copy_from_slice(&n.addr().octets());
                            &ipbuf[..4]
                        }
                        Subject::Net(ipnet::IpNet::V6(n)) => {
                            ipbuf[..16].copy_from_slice(&n.addr().octets());
                            ipbuf[16] = n.prefix_len();
                            &ipbuf[..]
                        }
                        Subject::Consumer(_) => continue,
                    };
                    (who, key)
                }
                BanKeyKind::Consumer => match consumer {
                    Some(c) => (Subject::Consumer(c), c.as_bytes()),
                    None => continue,
                },
            };
            if !rule.hit(key, now_ns) {
                continue;
            }
            let c = &rule.cfg;
            let reason = format!("{}: {} within {}s", c.on.name(), c.threshold, c.window.as_secs_f64());
            if let Some(rec) = self.bans.ban_by_rule(who, &reason, c.ban_for, c.max_ban_for, crate::clock::unix_ms()) {
                self.imposed[trigger_index(trigger)].fetch_add(1, Ordering::Relaxed);
                self.announce(&rec, "rule");
            }
        }
    }

    /// `portcullis_bans_total`, `portcullis_bans_active` and the detector's key count.
    pub fn write_metrics(&self, out: &mut String) {
        use crate::observe::metrics::family;
        family(
            out,
            "portcullis_bans_total",
            "Bans imposed, by the event a rule counted (manual: by an operator).",
            "counter",
            IMPOSED.iter().zip(&self.imposed).map(|(l, c)| (format!("on=\"{l}\""), c.load(Ordering::Relaxed))),
        );
        family(
            out,
            "portcullis_bans_active",
            "Keys (client IPs and consumers) banned now.",
            "gauge",
            [(String::new(), self.bans.active_count(crate::clock::unix_ms()) as u64)],
        );
        family(
            out,
            "portcullis_bans_refused_total",
            "Bans not imposed because the ban table was full.",
            "counter",
            [(String::new(), self.bans.refused() as u64)],
        );
        let det = self.detector.load();
        family(
            out,
            "portcullis_ban_rule_keys",
            "Keys whose events a ban rule is counting now.",
            "gauge",
            det.rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("rule=\"{i}\",on=\"{}\"", r.cfg.on.name()), r.keys() as u64)),
        );
    }
}

impl EventSink for Protection {
    fn publish(&self, e: &SecurityEvent<'_>) {
        match *e {
            SecurityEvent::Auth { outcome: AuthOutcome::Invalid, client, consumer, .. } => {
                self.count(BanTrigger::AuthFailures, client, consumer)
            }
            SecurityEvent::NotFound { client, consumer } => self.count(BanTrigger::NotFound, client, consumer),
            SecurityEvent::Limited { client, consumer, .. } => self.count(BanTrigger::RateLimited, client, consumer),
            SecurityEvent::Denied { client, consumer, .. } => self.count(BanTrigger::Denied, client, consumer),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rule(threshold: u32, window: u64) -> BanRule {
        BanRule {
            on: BanTrigger::AuthFailures,
            threshold,
            window: Duration::from_secs(window),
            ban_for: Duration::from_secs(60),
            max_ban_for: Duration::from_secs(3600),
            key: BanKeyKind::Ip,
            max_keys: 1_000,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn threshold_within_the_window_fires_and_old_events_do_not_count() {
        let r = Rule::new(&rule(5, 10));
        // 4 events, then 11 s of quiet: they have left the window.
        for i in 0..4 {
            assert!(!r.hit(b"k", 100 * S + i));
        }
        for i in 0..4 {
            assert!(!r.hit(b"k", 111 * S + i), "old events must not count");
        }
        assert!(r.hit(b"k", 112 * S), "the fifth within 10 s fires");
        // The window restarts after firing.
        assert!(!r.hit(b"k", 112 * S + 1));
        // Other keys are separate.
        assert!(!r.hit(b"other", 112 * S + 2));
    }

    #[test]
    fn spread_events_inside_the_window_count() {
        let r = Rule::new(&rule(10, 10));
        // One event every 0.95 s: ten of them span 8.55 s, inside the window.
        let fired: Vec<bool> = (0..10).map(|i| r.hit(b"k", 500 * S + i * 950_000_000)).collect();
        assert_eq!(fired.iter().filter(|f| **f).count(), 1);
        assert!(fired[9]);
    }

    #[test]
    fn many_keys_stay_within_the_bound() {
        let r = Rule::new(&rule(3, 60));
        for i in 0u32..100_000 {
            r.hit(&i.to_be_bytes(), S + u64::from(i));
        }
        assert!(r.keys() <= 1_000, "{} keys", r.keys());
    }
}
