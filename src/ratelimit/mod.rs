//! Rate limits: GCRA (the generic cell rate algorithm) over a bounded, sharded key table;
//! quotas per calendar period are in [`quota`]; buckets shared by nodes through Redis in
//! [`shared`].
//!
//! A limit of `rate` per second with `burst` lets a key spend up to `burst` requests at once
//! and then one every `1/rate` seconds. Each key's whole state is one number, its theoretical
//! arrival time (TAT). The clock is passed in (`now` in nanoseconds on any monotonic scale),
//! so the arithmetic is tested exactly. Memory is bounded: at most `max_keys` keys; a full
//! shard first forgets keys whose bucket is full again (they are the same as absent), then
//! the one of a few sampled keys that would be full soonest — so rotating keys cannot grow
//! the table, only push out idle or nearly idle keys.

pub mod quota;
pub mod shared;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::config::RouteConfig;

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Keys sampled to choose one to forget when a shard is full of active keys.
const SAMPLE: usize = 8;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go.
    pub allowed: bool,
    /// Requests the key could still make at once.
    pub remaining: u64,
    /// Nanoseconds until the next request would be allowed (0 when allowed).
    pub retry_after_ns: u64,
    /// Nanoseconds until the key's bucket is full again.
    pub reset_ns: u64,
}

/// One limit (`rate`, `burst`) over many keys.
#[derive(Debug)]
pub struct Limiter {
    /// Nanoseconds between requests at the steady rate.
    interval: u64,
    /// `interval * burst`: how far ahead of now a key's TAT may run.
    tolerance: u64,
    burst: u64,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
    limited: std::sync::atomic::AtomicU64,
}

impl Limiter {
    /// `per_second` requests a second (may be fractional, > 0), `burst` at once (≥ 1), at most
    /// `max_keys` keys remembered.
    pub fn new(per_second: f64, burst: u64, max_keys: usize) -> Limiter {
        let interval = (1e9 / per_second).round().max(1.0) as u64;
        let burst = burst.max(1);
        Limiter {
            interval,
            tolerance: interval.saturating_mul(burst),
            burst,
            max_per_shard: (max_keys / SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            limited: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Seconds a full bucket takes to refill from empty (for `RateLimit-Policy`'s window).
    pub fn window_secs(&self) -> u64 {
        self.tolerance.div_ceil(1_000_000_000).max(1)
    }

    /// Check (and, if allowed, count) one request of `key` at `now` (nanoseconds).
    pub fn check(&self, key: &[u8], now: u64) -> Decision {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut guard = shard.lock();
        let Shard { map, next_purge } = &mut *guard;
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        if new_tat - now > self.tolerance {
            // Allowed again once the TAT has come within the tolerance.
            let retry = new_tat - now - self.tolerance;
            self.limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Decision { allowed: false, remaining: 0, retry_after_ns: retry, reset_ns: tat - now };
        }
        if !map.contains_key(key) && map.len() >= self.max_per_shard {
            make_room(map, next_purge, now, self.interval);
        }
        match map.get_mut(key) {
            Some(t) => *t = new_tat,
            None => {
                map.insert(Box::from(key), new_tat);
            }
        }
        let remaining = (self.tolerance - (new_tat - now)) / self.interval;
        Decision { allowed: true, remaining, retry_after_ns: 0, reset_ns: new_tat - now }
    }

    /// Nanoseconds between requests at the steady rate.
    pub fn interval_ns(&self) -> u64 {
        self.interval
    }

    /// Nanoseconds the theoretical arrival time may run ahead of now (`burst` intervals).
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance
    }

    /// Count a refusal decided elsewhere (by a shared backend).
    pub fn note_limited(&self) {
        self.limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Check `key` now, on the process's monotonic clock.
    pub fn check_now(&self, key: &[u8]) -> Decision {
        // Offset by a day so that "now" is never below a fresh key's implicit TAT of 0.
        let now = crate::clock::mono_ns().min(u64::MAX / 2) + 86_400 * 1_000_000_000;
        self.check(key, now)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Objects made for each route from its settings (a limiter, a quota), kept across reloads
/// while the route keeps its name and settings. `cache` maps a route's name to the settings
/// its object was made with. Returns each route's object, indexed like `routes`, and the
/// objects replaced or no longer used.
pub fn per_route<C: PartialEq + Clone, T>(
    cache: &mut HashMap<String, (C, Arc<T>)>,
    routes: &[RouteConfig],
    settings: impl Fn(&RouteConfig) -> Option<&C>,
    make: impl Fn(&RouteConfig, &C) -> T,
) -> (Vec<Option<Arc<T>>>, Vec<Arc<T>>) {
    let mut dropped = Vec::new();
    let objects = routes
        .iter()
        .map(|r| {
            let cfg = settings(r)?;
            if let Some((c, o)) = cache.get(&r.name)
                && c == cfg
            {
                return Some(o.clone());
            }
            let o = Arc::new(make(r, cfg));
            dropped.extend(cache.insert(r.name.clone(), (cfg.clone(), o.clone())).map(|(_, old)| old));
            Some(o)
        })
        .collect();
    cache.retain(|name, (c, o)| {
        let keep = routes.iter().any(|r| &r.name == name && settings(r) == Some(&*c));
        if !keep {
            dropped.push(o.clone());
        }
        keep
    });
    (objects, dropped)
}

/// One shard: keys and their TATs, and when a full shard may next be scanned for keys whose
/// bucket is full again.
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<[u8]>, u64>,
    next_purge: u64,
}

/// Make room for one key in a full shard: forget every key whose bucket is full again; if
/// there is none, the sampled key whose bucket would be full soonest. A scan that freed
/// nothing is not repeated for 64 intervals (at least 1 ms, at most 1 s), so a shard full
/// of active keys costs a sample, not a scan, per new key.
fn make_room(map: &mut HashMap<Box<[u8]>, u64>, next_purge: &mut u64, now: u64, interval: u64) {
    if now >= *next_purge {
        let before = map.len();
        map.retain(|_, tat| *tat > now);
        if map.len() < before {
            return;
        }
        *next_purge = now.saturating_add(interval.saturating_mul(64).clamp(1_000_000, 1_000_000_000));
    }
    // Full of active keys: forget the sampled key whose bucket would be full soonest.
    if let Some(victim) = map.iter().take(SAMPLE).min_by_key(|(_, tat)| **tat).map(|(k, _)| k.clone()) {
        map.remove(&victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_the_steady_rate() {
        let l = Limiter::new(10.0, 5, 1000);
        let mut allowed = 0;
        for _ in 0..20 {
            if l.check(b"k", 0).allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "the burst at once");
        let d = l.check(b"k", 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, S / 10, "one interval until the next");
        assert!(l.check(b"k", S / 10).allowed);
        assert!(!l.check(b"k", S / 10).allowed);
        assert!(l.check(b"other", 0).allowed, "keys are independent");
    }

    #[test]
    fn admitted_rate_over_ten_seconds_is_the_rate() {
        // A client trying 1,000 times a second for 10 s (simulated clock).
        let l = Limiter::new(100.0, 50, 1000);
        let mut allowed = 0u64;
        for i in 0..10_000u64 {
            if l.check(b"k", i * S / 1000).allowed {
                allowed += 1;
            }
        }
        // rate × time + burst, within one request.
        let want = 100 * 10 + 50;
        assert!(allowed.abs_diff(want) <= 1, "{allowed} vs {want}");
    }

    #[test]
    fn many_keys_stay_within_the_bound() {
        let l = Limiter::new(1.0, 1, 10_000);
        for i in 0..100_000u32 {
            assert!(l.check(&i.to_be_bytes(), u64::from(i)).allowed);
        }
        assert!(l.len() <= 10_000, "{}", l.len());
        // An active key keeps its state under the flood only if it is not the oldest sampled;
        // a key whose bucket is full again is simply forgotten.
        let idle = Limiter::new(1000.0, 1, 16);
        for i in 0..1000u32 {
            idle.check(&i.to_be_bytes(), u64::from(i) * S);
        }
        assert!(idle.len() <= 16);
    }
}
