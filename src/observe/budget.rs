//! A per-second budget: at most N events a second pass, the rest are counted so that one
//! summary can say how many were left out. Lock-free; shared by the security-event log and
//! the audit recorder.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most a fixed number of admissions per wall-clock second.
#[derive(Debug, Default)]
pub struct PerSecond {
    second: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl PerSecond {
    /// Whether one more event fits in this second's `limit`. `on_new_second` is called, first,
    /// with the number left out in the previous window when a new second begins and some were.
    pub fn admit(&self, limit: u64, on_new_second: impl FnOnce(u64)) -> bool {
        let now = crate::store::now() as u64;
        let was = self.second.load(Ordering::Relaxed);
        if was != now && self.second.compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.count.store(0, Ordering::Relaxed);
            let left_out = self.take_suppressed();
            if left_out > 0 {
                on_new_second(left_out);
            }
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < limit {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The number left out and not yet reported (and forget it).
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_counts_the_rest() {
        let b = PerSecond::default();
        let admitted = (0..30).filter(|_| b.admit(20, |_| {})).count();
        // A second boundary inside the loop can only admit more, never fewer.
        assert!(admitted >= 20, "{admitted}");
        assert_eq!(b.take_suppressed() + admitted as u64, 30);
        assert_eq!(b.take_suppressed(), 0);
    }
}
