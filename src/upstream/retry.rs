//! Retry budget: retries may add at most a set share to the requests an upstream receives.
//!
//! A token bucket in thousandths of a retry: every request deposits `budget` (20% → 200),
//! every retry withdraws 1000, and the bucket holds at most [`RESERVE`] retries. So over any
//! stretch of time, retries ≤ requests × budget + `RESERVE`: when every target fails,
//! upstream attempts stay within requests × (1 + budget) plus that constant, however many
//! attempts each request is allowed. Two relaxed atomics; no lock, no clock.

use std::sync::atomic::{AtomicI64, Ordering};

/// Retries that may be made beyond the share, for a quiet upstream's first failures.
pub const RESERVE: i64 = 10;

/// Retries available to one upstream.
#[derive(Debug)]
pub struct Budget {
    per_request: i64,
    tokens: AtomicI64,
    /// Retries taken so far (for metrics).
    taken: std::sync::atomic::AtomicU64,
}

impl Budget {
    /// `percent` of requests may be retried; 0 turns retries off.
    pub fn new(percent: u8) -> Self {
        let per_request = i64::from(percent) * 10;
        Budget {
            per_request,
            tokens: AtomicI64::new(if per_request > 0 { RESERVE * 1000 } else { 0 }),
            taken: Default::default(),
        }
    }

    /// A request arrived.
    #[inline]
    pub fn deposit(&self) {
        // Full (the usual state) costs one load; otherwise a compare-and-swap that never
        // passes the cap.
        const FULL: i64 = RESERVE * 1000;
        if self.per_request > 0 && self.tokens.load(Ordering::Relaxed) < FULL {
            let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < FULL).then(|| (t + self.per_request).min(FULL))
            });
        }
    }

    /// Take one retry, if the budget has it.
    pub fn withdraw(&self) -> bool {
        let ok =
            self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t >= 1000).then_some(t - 1000)).is_ok();
        if ok {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Retries taken so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share() {
        let b = Budget::new(20);
        let mut retries = 0;
        for _ in 0..10_000 {
            b.deposit();
            // Every request wants two retries.
            for _ in 0..2 {
                if b.withdraw() {
                    retries += 1;
                }
            }
        }
        assert!(retries <= 10_000 / 5 + RESERVE as usize + 1, "{retries}");
        assert!(retries >= 10_000 / 5, "{retries}");
        assert!(!Budget::new(0).withdraw());
    }
}
