//! Connection caps: per listener and per client IP, checked at accept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Counts open connections of one listener. The map holds only IPs with open connections,
/// so it is bounded by the listener's connection cap.
#[derive(Debug, Default)]
pub(crate) struct ConnLimiter {
    // Locked once at accept and once at close, never across an await.
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
}

/// Held for as long as a connection is open.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Listener,
    PerIp,
}

impl ConnLimiter {
    pub(crate) fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: u32,
        max_per_ip: u32,
    ) -> Result<ConnPermit, Refused> {
        let mut c = self.inner.lock();
        if c.total >= max_total {
            return Err(Refused::Listener);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnPermit { limiter: self.clone(), ip })
    }

    /// Open connections right now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> u32 {
        self.inner.lock().total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self.limiter.inner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let l = Arc::new(ConnLimiter::default());
        let ip: IpAddr = "10.1.1.1".parse().expect("ip");
        let a = l.acquire(ip, 3, 2).expect("a");
        let _b = l.acquire(ip, 3, 2).expect("b");
        assert_eq!(l.acquire(ip, 3, 2).err(), Some(Refused::PerIp));
        let _c = l.acquire("10.1.1.2".parse().expect("ip"), 3, 2).expect("c");
        assert_eq!(l.acquire("10.1.1.3".parse().expect("ip"), 3, 2).err(), Some(Refused::Listener));
        drop(a);
        assert!(l.acquire(ip, 4, 2).is_ok());
        assert_eq!(l.open(), 2);
    }
}
