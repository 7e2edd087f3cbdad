//! Quotas: requests per key (consumer, client IP or header value) per UTC calendar day or
//! month, counted in memory and persisted in the store, so a restart does not reset them.
//!
//! A key's count is read from the store the first time the key is seen in a period (or
//! after it was forgotten), then counted in memory; what was counted is added to the store
//! every second and at shutdown. So the count is exact on one node, except that a crash
//! loses at most the last second's requests (they were served, not counted). Memory is
//! bounded by `max_keys` per quota; a forgotten key's pending count goes to the store first.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{QuotaConfig, QuotaPeriod, RouteConfig};
use crate::store::{QuotaDelta, Store};

const SHARDS: usize = 16;
/// How often counts are written to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a key's count on the request path.
const READ_TIMEOUT: Duration = Duration::from_millis(250);
/// Most counts waiting for the store (forgotten keys, ended periods, failed writes).
const MAX_RETIRED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the period counted (Unix seconds).
    period: i64,
    /// Requests counted in the period (stored and not yet stored).
    used: u64,
    /// Of `used`, not yet added to the store.
    unflushed: u64,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go (and was counted).
    pub allowed: bool,
    /// Requests per period.
    pub limit: u64,
    /// Requests left in the period after this one.
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset_secs: u64,
}

/// One route's quota over many keys.
#[derive(Debug)]
pub struct Quota {
    route: Arc<str>,
    cfg: QuotaConfig,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<Box<[u8]>, Entry>>>,
    /// Counts of forgotten keys and ended periods, and failed writes, waiting for the store,
    /// by key text and period.
    retired: Mutex<HashMap<(String, i64), u64>>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day number.
fn civil_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// The period holding `now` (Unix seconds): its start and the next one's.
pub fn period_bounds(period: QuotaPeriod, now: i64) -> (i64, i64) {
    const DAY: i64 = 86_400;
    let day = now.div_euclid(DAY);
    match period {
        QuotaPeriod::Day => (day * DAY, (day + 1) * DAY),
        QuotaPeriod::Month => {
            let (y, m) = civil_month(day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (days_from_civil(y, m, 1) * DAY, days_from_civil(ny, nm, 1) * DAY)
        }
    }
}

/// A quota key as text for the store: `ip:ADDRESS`, `consumer:NAME`, `header:VALUE`.
fn key_text(key: &[u8]) -> String {
    match key.split_first() {
        Some((b'i', a)) => match <[u8; 4]>::try_from(a) {
            Ok(v4) => format!("ip:{}", std::net::Ipv4Addr::from(v4)),
            Err(_) => <[u8; 16]>::try_from(a)
                .map_or_else(|_| "ip:?".into(), |v6| format!("ip:{}", std::net::Ipv6Addr::from(v6))),
        },
        Some((b'c', n)) => format!("consumer:{}", String::from_utf8_lossy(n)),
        // A header may carry a secret: the store keeps its SHA-256, not the value.
        Some((_, v)) => format!(
            "header-sha256:{}",
            crate::hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v).as_ref())
        ),
        None => String::new(),
    }
}

impl Quota {
    /// The quota of `route` with `cfg`.
    pub fn new(route: &str, cfg: &QuotaConfig) -> Quota {
        Quota {
            route: Arc::from(route),
            cfg: cfg.clone(),
            max_per_shard: (cfg.max_keys / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            retired: Mutex::new(HashMap::new()),
        }
    }

    /// Requests per period.
    pub fn limit(&self) -> u64 {
        self.cfg.limit
    }

    /// Whose quota a request counts against.
    pub fn key(&self) -> &crate::config::RateKey {
        &self.cfg.key
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Start of the period holding `now`.
    pub fn period(&self, now: i64) -> i64 {
        period_bounds(self.cfg.period, now).0
    }

    fn retire(&self, key: &[u8], e: &Entry) {
        if e.unflushed > 0 {
            let d =
                QuotaDelta { route: self.route.to_string(), key: key_text(key), period: e.period, delta: e.unflushed };
            self.give_back(vec![d]);
        }
    }

    /// Count one request of `key` at `now` (Unix seconds) if the quota allows it. `None`
    /// when the key's count for this period is not in memory: [`Quota::load`] it first.
    pub fn check(&self, key: &[u8], now: i64) -> Option<Decision> {
        let (start, next) = period_bounds(self.cfg.period, now);
        let reset_secs = u64::try_from(next - now).unwrap_or(0);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock();
        let e = map.get_mut(key)?;
        if e.period != start {
            // A new period: what the old one still owes the store goes first.
            let old = *e;
            map.remove(key);
            drop(map);
            self.retire(key, &old);
            return None;
        }
        let limit = self.cfg.limit;
        if e.used >= limit {
            return Some(Decision { allowed: false, limit, remaining: 0, reset_secs });
        }
        e.used += 1;
        e.unflushed += 1;
        Some(Decision { allowed: true, limit, remaining: limit - e.used, reset_secs })
    }

    /// Remember that `key` had used `used` in the period starting at `period` (as read from
    /// the store). A count already in memory (another request loaded it first) is kept.
    pub fn load(&self, key: &[u8], period: i64, used: u64) {
        // Counts of this key and period forgotten but not yet written are still its own.
        let waiting: u64 = {
            let retired = self.retired.lock();
            if retired.is_empty() { 0 } else { retired.get(&(key_text(key), period)).copied().unwrap_or(0) }
        };
        let used = used.saturating_add(waiting);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut evicted = Vec::new();
        {
            let mut map = shard.lock();
            match map.get(key) {
                Some(e) if e.period == period => return,
                // A load for an older period than the one counting now changes nothing.
                Some(e) if e.period > period => return,
                Some(e) => {
                    let old = *e;
                    map.remove(key);
                    evicted.push((Box::from(key), old));
                }
                None => {}
            }
            if map.len() >= self.max_per_shard {
                // Forget one of a few sampled keys, preferring one with nothing pending: its
                // pending count waits for the store and is added back if it returns.
                let victim = map.iter().take(8).min_by_key(|(_, e)| e.unflushed).map(|(k, _)| k.clone());
                if let Some(k) = victim
                    && let Some(e) = map.remove(&k)
                {
                    evicted.push((k, e));
                }
            }
            map.insert(Box::from(key), Entry { period, used, unflushed: 0 });
        }
        for (k, e) in evicted {
            self.retire(&k, &e);
        }
    }

    /// Take every count not yet in the store.
    pub fn drain(&self) -> Vec<QuotaDelta> {
        let retired = std::mem::take(&mut *self.retired.lock());
        let route = self.route.to_string();
        let mut out: Vec<QuotaDelta> = retired
            .into_iter()
            .map(|((key, period), delta)| QuotaDelta { route: route.clone(), key, period, delta })
            .collect();
        for shard in &self.shards {
            let mut map = shard.lock();
            for (k, e) in map.iter_mut().filter(|(_, e)| e.unflushed > 0) {
                out.push(QuotaDelta {
                    route: self.route.to_string(),
                    key: key_text(k),
                    period: e.period,
                    delta: e.unflushed,
                });
                e.unflushed = 0;
            }
        }
        out
    }

    /// Keep counts for the store (failed writes, forgotten keys), at most [`MAX_RETIRED`].
    fn give_back(&self, deltas: Vec<QuotaDelta>) {
        let mut r = self.retired.lock();
        let mut lost = 0;
        for d in deltas {
            let full = r.len() >= MAX_RETIRED;
            match r.get_mut(&(d.key.clone(), d.period)) {
                Some(n) => *n = n.saturating_add(d.delta),
                None if full => lost += 1,
                None => {
                    r.insert((d.key, d.period), d.delta);
                }
            }
        }
        if lost > 0 {
            tracing::warn!(lost, route = %self.route, "Too many quota counts waiting for the store; some are dropped");
        }
    }

    /// Keys in memory.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// Every route's quota, kept across reloads while the route keeps its name and settings.
#[derive(Debug, Default)]
pub struct Quotas {
    by_route: Mutex<HashMap<String, (QuotaConfig, Arc<Quota>)>>,
    /// Replaced quotas whose last counts are still to be written.
    retiring: Mutex<Vec<Arc<Quota>>>,
    /// The store counts are read from (set while one is open).
    store: Mutex<Option<Arc<dyn Store>>>,
    unread: std::sync::atomic::AtomicU64,
}

impl Quotas {
    /// Read counts from `store` from now on (`None`: no store).
    pub fn set_store(&self, store: Option<Arc<dyn Store>>) {
        *self.store.lock() = store;
    }

    /// Count one request of `key` against `q` at `now` (Unix seconds), reading the key's
    /// count for the period from the store first if it is not in memory. If the store
    /// cannot be read the request is counted from zero (fail-open) and a warning logged.
    pub async fn check(&self, q: &Quota, key: &[u8], now: i64) -> Decision {
        if let Some(d) = q.check(key, now) {
            return d;
        }
        let (period, next) = period_bounds(q.cfg.period, now);
        let store = self.store.lock().clone();
        let read = match store {
            Some(s) => {
                match tokio::time::timeout(READ_TIMEOUT, s.quota_used(q.route(), &key_text(key), period)).await {
                    Ok(Ok(n)) => Some(n),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, route = q.route(), "Cannot read quota usage from the store; this request is let through uncounted");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(
                            route = q.route(),
                            "Reading quota usage from the store took too long; this request is let through uncounted"
                        );
                        None
                    }
                }
            }
            None => Some(0),
        };
        let Some(used) = read else {
            // Fail open, and remember nothing: the next request reads the store again.
            self.unread.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let limit = q.limit();
            return Decision {
                allowed: true,
                limit,
                remaining: limit,
                reset_secs: u64::try_from(next - now).unwrap_or(0),
            };
        };
        q.load(key, period, used);
        q.check(key, now).unwrap_or(Decision {
            allowed: true,
            limit: q.limit(),
            remaining: q.limit().saturating_sub(used + 1),
            reset_secs: u64::try_from(next - now).unwrap_or(0),
        })
    }

    /// Requests let through uncounted because the store could not be read.
    pub fn unread(&self) -> u64 {
        self.unread.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The quota of each route (indexed like `routes`).
    pub fn for_routes(&self, routes: &[RouteConfig]) -> Vec<Option<Arc<Quota>>> {
        let (quotas, replaced) =
            super::per_route(&mut self.by_route.lock(), routes, |r| r.quota.as_ref(), |r, c| Quota::new(&r.name, c));
        self.retiring.lock().extend(replaced);
        quotas
    }

    /// Write every pending count to `store`; counts that fail stay pending.
    pub async fn flush(&self, store: &dyn Store) {
        let live: Vec<Arc<Quota>> = self.by_route.lock().values().map(|(_, q)| q.clone()).collect();
        let retiring = std::mem::take(&mut *self.retiring.lock());
        for q in live.iter().chain(&retiring) {
            let deltas = q.drain();
            if deltas.is_empty() {
                continue;
            }
            if let Err(e) = store.add_quota_usage(&deltas).await {
                tracing::warn!(error = %e, route = q.route(), "Cannot write quota usage to the store; will retry");
                q.give_back(deltas);
                if retiring.iter().any(|r| Arc::ptr_eq(r, q)) {
                    self.retiring.lock().push(q.clone());
                }
            }
        }
    }
}

/// Write quota counts to `store` every [`FLUSH_EVERY`] until `stop`, then once more.
pub async fn flusher(store: Arc<dyn Store>, quotas: Arc<Quotas>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
        }
        quotas.flush(&*store).await;
    }
    quotas.flush(&*store).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateKey;

    fn cfg(limit: u64, period: QuotaPeriod, max_keys: usize) -> QuotaConfig {
        QuotaConfig { key: RateKey::Consumer, limit, period, max_keys }
    }

    #[test]
    fn calendar_periods() {
        // 2026-11-27T23:31:40Z
        let now = 1_795_822_300;
        assert_eq!(period_bounds(QuotaPeriod::Day, now), (1_795_737_600, 1_795_824_000));
        // November 2026 starts 2026-11-01 (1793491200) and December 2026-12-01 (1796083200).
        assert_eq!(period_bounds(QuotaPeriod::Month, now), (1_793_491_200, 1_796_083_200));
        // December rolls into the next year; February of a leap year has 29 days.
        let dec = days_from_civil(2026, 12, 15) * 86_400;
        assert_eq!(period_bounds(QuotaPeriod::Month, dec).1, days_from_civil(2027, 1, 1) * 86_400);
        let feb = days_from_civil(2028, 2, 10) * 86_400;
        let (s, e) = period_bounds(QuotaPeriod::Month, feb);
        assert_eq!((e - s) / 86_400, 29);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn counts_to_the_limit_and_drains_what_is_new() {
        let q = Quota::new("r", &cfg(3, QuotaPeriod::Day, 1000));
        let now = 1_000_000;
        assert!(q.check(b"capp", now).is_none(), "not loaded yet");
        q.load(b"capp", q.period(now), 1);
        let d: Vec<_> = (0..3).map(|_| q.check(b"capp", now).expect("loaded")).collect();
        assert_eq!(d.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 1), (true, 0), (false, 0)]);
        let drained = q.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!((drained[0].key.as_str(), drained[0].delta), ("consumer:app", 2));
        assert!(q.drain().is_empty());
        // The next day the key is read again; yesterday owes nothing more.
        assert!(q.check(b"capp", now + 86_400).is_none());
        assert!(q.drain().is_empty());
    }

    #[test]
    fn many_keys_stay_within_the_bound_and_lose_no_counts() {
        let q = Quota::new("r", &cfg(10, QuotaPeriod::Month, 160));
        let now = 1_000_000;
        let p = q.period(now);
        let mut total = 0;
        for i in 0u32..100_000 {
            let k = format!("cuser-{i}").into_bytes();
            q.load(&k, p, 0);
            assert!(q.check(&k, now).is_some_and(|d| d.allowed));
            total += 1;
        }
        assert!(q.keys() <= 160, "{} keys", q.keys());
        let counted: u64 = q.drain().iter().map(|d| d.delta).sum();
        assert_eq!(counted, total);
    }

    #[test]
    fn key_texts() {
        assert_eq!(key_text(&[b'i', 10, 0, 0, 1]), "ip:10.0.0.1");
        assert_eq!(
            key_text(b"hgold"),
            "header-sha256:24d7f03d8dc3c3666969e6fa5bb1fac4736d3f1353c28307ed51b320f9dc42d3"
        );
    }
}
