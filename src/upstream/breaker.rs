//! Circuit breaking: at most `max_connections` requests in flight to an upstream, at most
//! `max_pending` more waiting for one of those slots; the rest are refused at once.
//!
//! The fast path is one compare-and-swap (and one subtract on release); only when the
//! upstream is full does a request touch the wait queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The slots of one upstream.
#[derive(Debug)]
pub(crate) struct Slots {
    max: u32,
    max_pending: u32,
    in_use: AtomicU32,
    pending: AtomicU32,
    freed: Notify,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.0.pending.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// One request waiting for a slot.
struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    pub(crate) fn new(max: u32, max_pending: u32) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            max_pending,
            in_use: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            freed: Notify::new(),
        })
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        // A compare-and-swap, not add-then-undo: a full upstream never looks fuller than it is.
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// A slot at once, or after waiting up to `wait` if fewer than `max_pending` requests
    /// wait already; `None` means refused. Requests already waiting go first.
    pub(crate) async fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        if self.pending.load(Ordering::Acquire) == 0
            && let Some(s) = self.try_take()
        {
            return Some(s);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Counted out however this ends, the request being dropped while it waits included.
        let _waiting = Waiting(self);
        tokio::time::timeout(wait, async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Registered before the check, so a release in between is not missed.
                freed.as_mut().enable();
                if let Some(s) = self.try_take() {
                    return s;
                }
                freed.await;
            }
        })
        .await
        .ok()
    }

    /// Requests in flight now.
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Requests waiting now.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_then_pending_then_refused() {
        let s = Slots::new(2, 1);
        let a = s.take(Duration::from_millis(10)).await.expect("a");
        let _b = s.take(Duration::from_millis(10)).await.expect("b");
        assert!(s.take(Duration::from_millis(10)).await.is_none(), "waited and timed out");
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.take(Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.pending(), 1);
        assert!(s.take(Duration::from_secs(5)).await.is_none(), "one waits already: refused at once");
        drop(a);
        assert!(waiter.await.expect("task"), "a freed slot goes to the waiter");
        // The waiter's slot went back when its task ended: only `_b` is held.
        assert_eq!((s.in_use(), s.pending()), (1, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let s = Slots::new(1, 1);
        let _a = s.take(Duration::from_millis(10)).await.expect("a");
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.take(Duration::from_secs(60)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.pending(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(s.pending(), 0, "a cancelled waiter leaves the queue");
    }
}
