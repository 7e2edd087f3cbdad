//! Bans in force: client IPs and consumers refused until a time, and the memory of past
//! bans that makes a repeat offender's next ban twice as long.
//!
//! Owns the in-memory ban table (read at accept and per request, so a check is one atomic
//! load while nothing is banned), its bound, and its persistence: new bans and lifts are
//! queued for the store and written by [`sync`], which also picks up bans lifted or added
//! by other writers (the CLI working on the store) within a second.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::store::{BanRecord, Store};

/// How long an ended ban is remembered: a key banned again within this time gets double.
pub const REPEAT_MEMORY_MS: i64 = 24 * 3600 * 1000;
/// Most keys banned (or remembered) at once; beyond it, new bans are not imposed (counted).
pub const MAX_BANS: usize = 200_000;
/// Most ban writes waiting for the store.
const MAX_PENDING: usize = 10_000;
/// How often the store is written and read.
const SYNC_EVERY: Duration = Duration::from_millis(250);

/// Longest ban an operator may impose.
pub const MAX_OPERATOR_BAN: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest operator-given reason kept, in bytes.
const MAX_REASON: usize = 200;

/// An operator's ban length (`15m`, `2h`, `7d`): more than zero, at most [`MAX_OPERATOR_BAN`].
pub fn operator_ban_length(s: &str) -> Option<Duration> {
    crate::config::units::parse_duration(s).ok().filter(|d| !d.is_zero() && *d <= MAX_OPERATOR_BAN)
}

/// An operator's reason as kept: control characters removed, at most 200 bytes (cut on a
/// character boundary); a default when none is given.
pub fn operator_reason(reason: Option<String>) -> String {
    let mut reason = reason.unwrap_or_else(|| "banned by an operator".into());
    reason.retain(|c| !c.is_control());
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    reason
}

/// Who a ban is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A client address (a /32 or /128 network) or a network of them.
    Net(IpNet),
    /// An authenticated consumer.
    Consumer(&'a str),
}

/// `net` with an IPv4-mapped IPv6 network written as the IPv4 one it is.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
    .trunc()
}

impl<'a> Subject<'a> {
    /// `ip:ADDRESS`, `ip:NETWORK/LEN`, a bare address or network, or `consumer:NAME`.
    pub fn parse(s: &'a str) -> Option<Subject<'a>> {
        if let Some(name) = s.strip_prefix("consumer:") {
            let ok = !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control);
            return ok.then_some(Subject::Consumer(name));
        }
        let ip = s.strip_prefix("ip:").unwrap_or(s);
        let net = ip.parse::<IpNet>().ok().or_else(|| ip.parse::<IpAddr>().ok().map(IpNet::from))?;
        Some(Subject::Net(canonical_net(net)))
    }

    /// The client address `ip`, widened to `v6_prefix` bits if it is an IPv6 address (one
    /// host of IPv6 usually holds a whole /64).
    pub fn client(ip: IpAddr, v6_prefix: u8) -> Subject<'static> {
        let net = match ip.to_canonical() {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
            IpAddr::V6(a) => Ipv6Net::new(a, v6_prefix.min(128)).map_or(IpNet::V6(Ipv6Net::from(a)), IpNet::V6),
        };
        Subject::Net(net.trunc())
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "ip:{}", n.addr()),
            Subject::Net(n) => write!(f, "ip:{n}"),
            Subject::Consumer(n) => write!(f, "consumer:{n}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    reason: Box<str>,
    created_ms: i64,
    until_ms: i64,
    offences: u32,
}

impl From<&BanRecord> for Entry {
    fn from(r: &BanRecord) -> Entry {
        Entry {
            reason: Box::from(r.reason.as_str()),
            created_ms: r.created_ms,
            until_ms: r.until_ms,
            offences: r.offences,
        }
    }
}

#[derive(Debug, Default)]
struct Tables {
    nets: HashMap<IpNet, Entry>,
    consumers: HashMap<Box<str>, Entry>,
    /// The prefix lengths in `nets` (bit `n` of word `n / 64`): IPv4 in `v4`, IPv6 in `v6`,
    /// so a lookup tries only the lengths in use (usually /32, /128 and /64).
    v4: u64,
    v6: [u64; 3],
}

impl Tables {
    fn len(&self) -> usize {
        self.nets.len() + self.consumers.len()
    }

    fn get_mut(&mut self, s: Subject<'_>) -> Option<&mut Entry> {
        match s {
            Subject::Net(n) => self.nets.get_mut(&n),
            Subject::Consumer(n) => self.consumers.get_mut(n),
        }
    }

    fn note_len(&mut self, n: &IpNet) {
        let len = usize::from(n.prefix_len());
        match n {
            IpNet::V4(_) => self.v4 |= 1 << len,
            IpNet::V6(_) => self.v6[len / 64] |= 1 << (len % 64),
        }
    }

    fn insert(&mut self, s: Subject<'_>, e: Entry) {
        match s {
            Subject::Net(n) => {
                self.note_len(&n);
                self.nets.insert(n, e);
            }
            Subject::Consumer(n) => {
                self.consumers.insert(Box::from(n), e);
            }
        }
    }

    fn remove(&mut self, s: Subject<'_>) -> Option<Entry> {
        match s {
            Subject::Net(n) => self.nets.remove(&n),
            Subject::Consumer(n) => self.consumers.remove(n),
        }
    }

    /// The entry of the longest banned network holding `ip`.
    fn lookup(&self, ip: IpAddr, now_ms: i64) -> bool {
        let hit = |n: IpNet| self.nets.get(&n.trunc()).is_some_and(|e| e.until_ms > now_ms);
        match ip {
            IpAddr::V4(a) => (0..=32u8)
                .rev()
                .filter(|l| self.v4 & (1 << l) != 0)
                .any(|l| Ipv4Net::new(a, l).is_ok_and(|n| hit(IpNet::V4(n)))),
            IpAddr::V6(a) => (0..=128u8)
                .rev()
                .filter(|l| self.v6[usize::from(*l) / 64] & (1 << (l % 64)) != 0)
                .any(|l| Ipv6Net::new(a, l).is_ok_and(|n| hit(IpNet::V6(n)))),
        }
    }

    /// Recount the prefix lengths in use and the bans in force at `now_ms`.
    fn recount(&mut self, now_ms: i64) -> usize {
        self.v4 = 0;
        self.v6 = [0; 3];
        let nets: Vec<IpNet> = self.nets.keys().copied().collect();
        for n in &nets {
            self.note_len(n);
        }
        self.nets.values().chain(self.consumers.values()).filter(|e| e.until_ms > now_ms).count()
    }
}

/// A write waiting for the store.
#[derive(Debug, Clone)]
enum Write {
    Put(BanRecord),
    Remove(String),
}

/// The ban table.
#[derive(Debug, Default)]
pub struct Bans {
    // Locked briefly, never across an await.
    tables: RwLock<Tables>,
    /// Entries whose ban may still be in force: 0 means no lookup is needed.
    active: AtomicUsize,
    /// Bans not imposed because the table was full.
    refused: AtomicUsize,
    persist: AtomicBool,
    pending: Mutex<Vec<Write>>,
}

fn record(s: Subject<'_>, e: &Entry) -> BanRecord {
    BanRecord {
        key: s.to_string(),
        reason: e.reason.to_string(),
        created_ms: e.created_ms,
        until_ms: e.until_ms,
        offences: e.offences,
    }
}

impl Bans {
    /// Whether `ip` (canonical) is banned, itself or as part of a banned network, at `now_ms`.
    pub fn ip_banned(&self, ip: IpAddr, now_ms: i64) -> bool {
        self.active.load(Ordering::Relaxed) > 0 && self.tables.read().lookup(ip, now_ms)
    }

    /// Whether the consumer `name` is banned at `now_ms`.
    pub fn consumer_banned(&self, name: &str, now_ms: i64) -> bool {
        self.active.load(Ordering::Relaxed) > 0
            && self.tables.read().consumers.get(name).is_some_and(|e| e.until_ms > now_ms)
    }

    /// No store any more: keep changes in memory only.
    pub fn forget_store(&self) {
        self.persist.store(false, Ordering::Relaxed);
        self.pending.lock().clear();
    }

    /// Whether anything may be banned now (one atomic load).
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Ban `who` by a rule: for `base`, doubled for each ban it had within
    /// [`REPEAT_MEMORY_MS`] of the last one's end, at most `max`. `None` if it is banned
    /// already or the table is full.
    pub fn ban_by_rule(
        &self,
        who: Subject<'_>,
        reason: &str,
        base: Duration,
        max: Duration,
        now_ms: i64,
    ) -> Option<BanRecord> {
        let mut t = self.tables.write();
        let offences = match t.get_mut(who) {
            Some(e) if e.until_ms > now_ms => return None,
            Some(e) if e.until_ms.saturating_add(REPEAT_MEMORY_MS) > now_ms => e.offences.saturating_add(1),
            _ => 1,
        };
        let factor = 1u32.checked_shl(offences.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        let len = base.saturating_mul(factor).min(max);
        self.put(&mut t, who, reason, len, offences, now_ms)
    }

    /// Ban `who` for exactly `len` (an operator's ban), replacing any ban in force.
    pub fn ban_for(&self, who: Subject<'_>, reason: &str, len: Duration, now_ms: i64) -> Option<BanRecord> {
        let mut t = self.tables.write();
        let offences = t.get_mut(who).map_or(1, |e| e.offences.saturating_add(1));
        self.put(&mut t, who, reason, len, offences, now_ms)
    }

    fn put(
        &self,
        t: &mut Tables,
        who: Subject<'_>,
        reason: &str,
        len: Duration,
        offences: u32,
        now_ms: i64,
    ) -> Option<BanRecord> {
        let existing = t.get_mut(who).is_some();
        if !existing && t.len() >= MAX_BANS {
            // Ended bans are forgotten by `sweep` (every second); nothing is scanned here.
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let until_ms = now_ms.saturating_add(i64::try_from(len.as_millis()).unwrap_or(i64::MAX));
        let e = Entry { reason: Box::from(reason), created_ms: now_ms, until_ms, offences };
        let rec = record(who, &e);
        t.insert(who, e);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.queue(Write::Put(rec.clone()));
        Some(rec)
    }

    /// Lift and forget the ban of `who` (its repeat count too); whether it was banned.
    pub fn lift(&self, who: Subject<'_>, now_ms: i64) -> bool {
        let removed = self.tables.write().remove(who);
        self.queue(Write::Remove(who.to_string()));
        removed.is_some_and(|e| e.until_ms > now_ms)
    }

    /// The bans in force at `now_ms`, longest first.
    pub fn list(&self, now_ms: i64) -> Vec<BanRecord> {
        let t = self.tables.read();
        let mut out: Vec<BanRecord> = t
            .nets
            .iter()
            .filter(|(_, e)| e.until_ms > now_ms)
            .map(|(n, e)| record(Subject::Net(*n), e))
            .chain(
                t.consumers.iter().filter(|(_, e)| e.until_ms > now_ms).map(|(n, e)| record(Subject::Consumer(n), e)),
            )
            .collect();
        out.sort_by(|a, b| b.until_ms.cmp(&a.until_ms).then_with(|| a.key.cmp(&b.key)));
        out
    }

    /// Bans in force at `now_ms`.
    pub fn active_count(&self, now_ms: i64) -> usize {
        let t = self.tables.read();
        t.nets.values().chain(t.consumers.values()).filter(|e| e.until_ms > now_ms).count()
    }

    /// Bans not imposed because the table was full.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Forget bans that ended more than [`REPEAT_MEMORY_MS`] ago and recount those in force.
    pub fn sweep(&self, now_ms: i64) {
        let keep = |e: &Entry| e.until_ms.saturating_add(REPEAT_MEMORY_MS) > now_ms;
        {
            // Most seconds there is nothing to forget: look under the read lock first.
            let t = self.tables.read();
            if t.nets.values().chain(t.consumers.values()).all(keep) {
                let n = t.nets.values().chain(t.consumers.values()).filter(|e| e.until_ms > now_ms).count();
                self.active.store(n, Ordering::Relaxed);
                return;
            }
        }
        let mut t = self.tables.write();
        t.nets.retain(|_, e| keep(e));
        t.consumers.retain(|_, e| keep(e));
        let n = t.recount(now_ms);
        self.active.store(n, Ordering::Relaxed);
    }

    /// Replace the table with what the store holds.
    fn replace(&self, rows: &[BanRecord], now_ms: i64) {
        let mut t = Tables::default();
        for r in rows.iter().take(MAX_BANS) {
            let Some(who) = Subject::parse(&r.key) else {
                tracing::warn!(key = %r.key, "The store holds a ban of an unreadable key; ignored");
                continue;
            };
            t.insert(who, Entry::from(r));
        }
        // Changes made here since the store was read are not in it yet: keep them.
        let mut cur = self.tables.write();
        for w in self.pending.lock().iter() {
            match w {
                Write::Put(r) => {
                    if let Some(who) = Subject::parse(&r.key) {
                        t.insert(who, Entry::from(r));
                    }
                }
                Write::Remove(key) => {
                    if let Some(who) = Subject::parse(key) {
                        t.remove(who);
                    }
                }
            }
        }
        let n = t.recount(now_ms);
        let old = std::mem::replace(&mut *cur, t);
        self.active.store(n, Ordering::Relaxed);
        drop(cur);
        drop(old);
    }

    fn queue(&self, w: Write) {
        if !self.persist.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.pending.lock();
        if p.len() < MAX_PENDING {
            p.push(w);
        } else {
            tracing::warn!("Too many ban changes waiting for the store; this one is kept in memory only");
        }
    }

    /// Write what is queued to `store`; on failure the writes are kept for the next try.
    /// Returns the bans generation after the last write and the number of writes, if
    /// anything was written.
    pub async fn write_pending(&self, store: &dyn Store) -> Option<(i64, i64)> {
        let batch = std::mem::take(&mut *self.pending.lock());
        let mut generation = None;
        let mut written = 0;
        for (i, w) in batch.iter().enumerate() {
            let r = match w {
                Write::Put(rec) => store.put_ban(rec, crate::clock::unix_ms() - REPEAT_MEMORY_MS).await,
                Write::Remove(key) => store.remove_ban(key).await.map(|(_, g)| g),
            };
            match r {
                Ok(g) => {
                    generation = Some(g);
                    written += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot write bans to the store; will retry");
                    let mut p = self.pending.lock();
                    let rest: Vec<Write> = batch[i..].to_vec();
                    p.splice(0..0, rest);
                    break;
                }
            }
        }
        generation.map(|g| (g, written))
    }
}

/// Load the store's bans into `bans` (before a node serves), and from now on queue changes
/// for the store; the bans generation read, for [`sync`] (-1 if the store could not be read).
pub async fn load(store: &dyn Store, bans: &Bans) -> i64 {
    bans.persist.store(true, Ordering::Relaxed);
    match store.bans(crate::clock::unix_ms() - REPEAT_MEMORY_MS).await {
        Ok((rows, g)) => {
            let now = crate::clock::unix_ms();
            if rows.iter().any(|r| r.until_ms > now) {
                tracing::info!(bans = rows.iter().filter(|r| r.until_ms > now).count(), "Bans loaded from the store");
            }
            bans.replace(&rows, now);
            g
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read bans from the store; starting without them");
            -1
        }
    }
}

/// Keep `bans` and `store` in step until `stop`, starting from generation `seen` (what
/// [`load`] read): every [`SYNC_EVERY`] write queued changes and reload when another
/// writer changed them. At `stop`, queued writes are written once more.
pub async fn sync(store: Arc<dyn Store>, bans: Arc<Bans>, stop: CancellationToken, mut seen: i64) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
        if let Some((g, written)) = bans.write_pending(&*store).await
            && g == seen + written
        {
            // Our own writes alone (anything else in between leaves `seen` behind: reload).
            seen = g;
        }
        let current = match store.bans_generation().await {
            Ok(g) => g,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Cannot read bans from the store; keeping those in memory");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        if current == seen {
            continue;
        }
        match store.bans(crate::clock::unix_ms() - REPEAT_MEMORY_MS).await {
            Ok((rows, g)) if !stop.is_cancelled() => {
                bans.replace(&rows, crate::clock::unix_ms());
                seen = g;
                tracing::info!(bans = bans.active_count(crate::clock::unix_ms()), "Bans reloaded from the store");
            }
            Ok(_) => break,
            Err(e) => tracing::warn!(error = %e, "Cannot read bans from the store; keeping those in memory"),
        }
    }
    bans.write_pending(&*store).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn repeat_offenders_get_double_up_to_the_cap() {
        let b = Bans::default();
        let ip = Subject::client("192.0.2.1".parse().expect("ip"), 64);
        let mut now = 1_000_000;
        let mut lens = Vec::new();
        for _ in 0..6 {
            let r = b.ban_by_rule(ip, "test", MIN, 8 * MIN, now).expect("banned");
            assert!(b.ip_banned("192.0.2.1".parse().expect("ip"), now));
            assert!(b.ban_by_rule(ip, "test", MIN, 8 * MIN, now + 1).is_none(), "already banned");
            lens.push((r.until_ms - now) / 60_000);
            now = r.until_ms + 1;
            assert!(!b.ip_banned("192.0.2.1".parse().expect("ip"), now));
        }
        assert_eq!(lens, [1, 2, 4, 8, 8, 8]);
        // A day later, the slate is clean.
        now += REPEAT_MEMORY_MS;
        let r = b.ban_by_rule(ip, "test", MIN, 8 * MIN, now).expect("banned");
        assert_eq!(r.offences, 1);
    }

    #[test]
    fn lifting_forgets_and_consumers_are_separate() {
        let b = Bans::default();
        let now = 5_000;
        assert!(!b.any());
        b.ban_for(Subject::Consumer("alice"), "ops", MIN, now).expect("banned");
        assert!(b.any() && b.consumer_banned("alice", now) && !b.consumer_banned("bob", now));
        assert!(!b.ip_banned("192.0.2.1".parse().expect("ip"), now));
        assert_eq!(b.list(now)[0].key, "consumer:alice");
        assert!(b.lift(Subject::Consumer("alice"), now));
        assert!(!b.consumer_banned("alice", now));
        assert!(!b.lift(Subject::Consumer("alice"), now));
        b.sweep(now);
        assert!(!b.any());
    }

    #[test]
    fn networks_ban_every_address_in_them_and_only_those() {
        let b = Bans::default();
        let now = 1_000;
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // A rule ban of one IPv6 client covers its /64.
        let client = Subject::client(ip("2001:db8:0:1::5"), 64);
        b.ban_by_rule(client, "test", MIN, MIN, now).expect("banned");
        assert!(b.ip_banned(ip("2001:db8:0:1:ffff::9"), now), "same /64");
        assert!(!b.ip_banned(ip("2001:db8:0:2::5"), now), "next /64");
        // An operator bans an IPv4 network and a single address.
        b.ban_for(Subject::parse("198.51.100.0/24").expect("net"), "ops", MIN, now).expect("banned");
        b.ban_for(Subject::parse("192.0.2.7").expect("ip"), "ops", MIN, now).expect("banned");
        assert!(b.ip_banned(ip("198.51.100.200"), now));
        assert!(b.ip_banned(ip("192.0.2.7"), now));
        assert!(!b.ip_banned(ip("192.0.2.8"), now));
        assert!(!b.ip_banned(ip("198.51.101.1"), now));
        let keys: Vec<String> = b.list(now).into_iter().map(|r| r.key).collect();
        assert!(keys.contains(&"ip:198.51.100.0/24".to_string()) && keys.contains(&"ip:2001:db8:0:1::/64".to_string()));
        // Lifting the network frees its addresses; the sweep recounts what is left.
        assert!(b.lift(Subject::parse("ip:198.51.100.0/24").expect("net"), now));
        assert!(!b.ip_banned(ip("198.51.100.200"), now));
        b.sweep(now + MIN.as_millis() as i64 + 1);
        assert!(!b.any(), "every ban has ended");
    }

    #[test]
    fn a_reload_from_the_store_keeps_changes_not_yet_written() {
        let b = Bans::default();
        b.persist.store(true, Ordering::Relaxed);
        let now = 10_000;
        let row = |key: &str| BanRecord {
            key: key.into(),
            reason: "stored".into(),
            created_ms: now,
            until_ms: now + 60_000,
            offences: 1,
        };
        b.ban_for(Subject::Consumer("new"), "memory", MIN, now).expect("banned");
        b.ban_for(Subject::Consumer("gone"), "memory", MIN, now).expect("banned");
        assert!(b.lift(Subject::Consumer("gone"), now));
        // The store, read before those changes were written, has `old` and `gone`.
        b.replace(&[row("consumer:old"), row("consumer:gone")], now);
        assert!(b.consumer_banned("old", now), "from the store");
        assert!(b.consumer_banned("new", now), "a ban not yet written survives the reload");
        assert!(!b.consumer_banned("gone", now), "a lift not yet written survives the reload");
        assert_eq!(b.pending.lock().len(), 3);
    }

    #[test]
    fn subjects_parse_and_print() {
        let text = |s: &str| Subject::parse(s).map(|s| s.to_string());
        assert_eq!(text("203.0.113.7").as_deref(), Some("ip:203.0.113.7"));
        assert_eq!(text("ip:::ffff:10.0.0.1").as_deref(), Some("ip:10.0.0.1"));
        assert_eq!(text("ip:::ffff:10.0.0.0/104").as_deref(), Some("ip:10.0.0.0/8"));
        assert_eq!(text("ip:2001:db8::1:2/64").as_deref(), Some("ip:2001:db8::/64"));
        assert_eq!(text("consumer:a\nb"), None);
        let c = Subject::client("2001:db8:0:1:aaaa:bbbb:cccc:dddd".parse().expect("ip"), 64);
        assert_eq!(c.to_string(), "ip:2001:db8:0:1::/64");
        assert_eq!(Subject::parse("consumer:app-1"), Some(Subject::Consumer("app-1")));
        assert_eq!(Subject::parse("consumer:"), None);
        assert_eq!(Subject::parse("nonsense"), None);
    }
}
