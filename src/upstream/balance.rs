//! Balancing: which target of an upstream serves the next request.
//!
//! A [`Live`] view is built from target health whenever it changes (cold path) and read
//! lock-free per request through an `ArcSwap`. It holds the targets eligible now — healthy
//! primaries; or, with none, healthy backups; or, below the panic threshold, all primaries —
//! and what each algorithm needs precomputed: the smooth weighted round-robin sequence, or
//! the hash ring. Every pick is O(1), except the ring's O(log n) search.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use crate::config::{Balance, HashOn};

/// Longest smooth weighted round-robin sequence; larger weight sums are scaled down to it.
const MAX_SEQUENCE: u32 = 16_384;
/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 160;
/// Most ring points in all.
const MAX_POINTS: u32 = 65_536;

/// Why the eligible set is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Healthy primary targets.
    Primary,
    /// No primary is healthy: healthy backups.
    Backup,
    /// Too few primaries are healthy: all primaries, healthy or not.
    Panic,
    /// Nothing is healthy: requests are refused at once.
    Empty,
}

/// What the balancer needs to know about one target.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Available to serve (healthy and not ejected).
    pub available: bool,
    /// A backup target.
    pub backup: bool,
    /// Configured weight.
    pub weight: u32,
    /// Back in rotation at this time (slow start).
    pub back_at: Option<Instant>,
}

/// The eligible targets and the precomputed state to pick among them.
#[derive(Debug)]
pub struct Live {
    /// Health epoch this view was built at.
    pub epoch: u64,
    /// Why these targets.
    pub mode: Mode,
    /// Member indices eligible now.
    set: Box<[u16]>,
    /// Weighted: the smooth sequence of member indices.
    sequence: Box<[u16]>,
    /// Consistent hash: (point, member index), sorted by point.
    ring: Box<[(u64, u16)]>,
    /// Members still ramping up after coming back: (index, since); empty without slow start.
    ramping: Box<[(u16, Instant)]>,
    slow_start: Duration,
}

/// The targets one request has tried; at most 10 (`retries.attempts`).
#[derive(Debug, Default)]
pub struct Tried {
    ids: [u16; 10],
    len: usize,
}

impl Tried {
    /// Remember member `i`.
    pub fn push(&mut self, i: u16) {
        if self.len < self.ids.len() {
            self.ids[self.len] = i;
            self.len += 1;
        }
    }

    /// Attempts made so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn contains(&self, i: u16) -> bool {
        self.ids[..self.len].contains(&i)
    }
}

/// FNV-1a, then a 64-bit finaliser so that similar keys spread over the whole ring.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash key of a request for `consistent_hash`, if it has one.
pub fn hash_key(on: &HashOn, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match on {
        HashOn::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => headers.get_all(http::header::COOKIE).iter().find_map(|v| {
            v.as_bytes().split(|b| *b == b';').find_map(|pair| {
                let pair = pair.trim_ascii_start();
                let rest = pair.strip_prefix(name.as_bytes())?;
                rest.strip_prefix(b"=").map(hash_bytes)
            })
        }),
        HashOn::Ip => Some(match client {
            IpAddr::V4(a) => hash_bytes(&a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => hash_bytes(&v4.octets()),
                None => hash_bytes(&a.octets()),
            },
        }),
    }
}

impl Live {
    /// Build the view for `members` (in config order) under the upstream's rules.
    /// `keys` are the members' stable names, used to place them on the hash ring.
    pub fn build(
        epoch: u64,
        balance: &Balance,
        members: &[Candidate],
        keys: &[&str],
        panic_threshold: u8,
        slow_start: Duration,
    ) -> Live {
        let primaries = members.iter().filter(|m| !m.backup).count();
        let healthy_primaries: Vec<u16> =
            (0..members.len()).filter(|&i| !members[i].backup && members[i].available).map(|i| i as u16).collect();
        let healthy_backups: Vec<u16> =
            (0..members.len()).filter(|&i| members[i].backup && members[i].available).map(|i| i as u16).collect();
        let below_panic = |healthy: usize| healthy * 100 < primaries * usize::from(panic_threshold);
        let (mode, set) = if !healthy_primaries.is_empty() && !below_panic(healthy_primaries.len()) {
            (Mode::Primary, healthy_primaries)
        } else if !healthy_primaries.is_empty() || (healthy_backups.is_empty() && panic_threshold > 0) {
            let all: Vec<u16> = (0..members.len()).filter(|&i| !members[i].backup).map(|i| i as u16).collect();
            (Mode::Panic, all)
        } else if !healthy_backups.is_empty() {
            (Mode::Backup, healthy_backups)
        } else {
            (Mode::Empty, Vec::new())
        };
        let sequence = match balance {
            Balance::Weighted => smooth_sequence(&set, members),
            _ => Box::default(),
        };
        let ring = match balance {
            Balance::ConsistentHash(_) => ring(&set, members, keys),
            _ => Box::default(),
        };
        let now = Instant::now();
        let ramping: Box<[(u16, Instant)]> = if slow_start.is_zero() {
            Box::default()
        } else {
            set.iter()
                .filter_map(|&i| members[usize::from(i)].back_at.filter(|t| now < *t + slow_start).map(|t| (i, t)))
                .collect()
        };
        Live { epoch, mode, set: set.into_boxed_slice(), sequence, ring, ramping, slow_start }
    }

    /// The eligible member indices.
    pub fn set(&self) -> &[u16] {
        &self.set
    }

    /// When the slow start of the last ramping member ends, if any is ramping.
    pub fn ramp_ends(&self) -> Option<Instant> {
        self.ramping.iter().map(|(_, t)| *t + self.slow_start).max()
    }

    /// Pick a member for a request. `tried` are skipped if any other member is eligible.
    /// `load(i)` is member `i`'s in-flight count and weight (for `least_request`).
    pub fn pick(
        &self,
        balance: &Balance,
        counter: &AtomicUsize,
        key: Option<u64>,
        tried: &Tried,
        load: impl Fn(u16) -> (u32, u32),
    ) -> Option<u16> {
        let first = self.pick_once(balance, counter, key, tried, &load)?;
        if self.ramping.is_empty() {
            return Some(first);
        }
        // Slow start: a ramping member keeps a pick with probability (time back ÷ slow_start);
        // otherwise one more pick is made (which may land on it again).
        match self.ramping.iter().find(|(i, _)| *i == first) {
            Some((_, since)) => {
                let share = since.elapsed().as_secs_f64() / self.slow_start.as_secs_f64();
                if fastrand::f64() < share.max(0.05) {
                    Some(first)
                } else {
                    let mut again = Tried { ids: tried.ids, len: tried.len };
                    again.push(first);
                    self.pick_once(balance, counter, key, &again, &load).or(Some(first))
                }
            }
            None => Some(first),
        }
    }

    fn pick_once(
        &self,
        balance: &Balance,
        counter: &AtomicUsize,
        key: Option<u64>,
        tried: &Tried,
        load: &impl Fn(u16) -> (u32, u32),
    ) -> Option<u16> {
        let n = self.set.len();
        if n == 0 {
            return None;
        }
        // The scan that skips tried members; on a first attempt it stops at once.
        let from = |start: usize, list: &[u16]| -> u16 {
            let len = list.len();
            (0..len).map(|k| list[(start + k) % len]).find(|i| !tried.contains(*i)).unwrap_or(list[start % len])
        };
        Some(match balance {
            Balance::RoundRobin => from(counter.fetch_add(1, Ordering::Relaxed), &self.set),
            Balance::Random => from(fastrand::usize(..n), &self.set),
            Balance::Weighted => from(counter.fetch_add(1, Ordering::Relaxed), &self.sequence),
            Balance::LeastRequest => {
                if n == 1 {
                    return Some(self.set[0]);
                }
                let a = from(fastrand::usize(..n), &self.set);
                let mut b = from(fastrand::usize(..n), &self.set);
                if a == b {
                    // Two distinct candidates whenever there are two.
                    b = from(self.set.iter().position(|x| *x == a).map_or(0, |p| p + 1), &self.set);
                }
                let (la, wa) = load(a);
                let (lb, wb) = load(b);
                // (in flight + 1) ÷ weight, compared without division.
                if u64::from(la + 1) * u64::from(wb) <= u64::from(lb + 1) * u64::from(wa) { a } else { b }
            }
            Balance::ConsistentHash(_) => match key {
                Some(k) if !self.ring.is_empty() => {
                    let start = self.ring.partition_point(|(p, _)| *p < k);
                    let len = self.ring.len();
                    (0..len)
                        .map(|s| self.ring[(start + s) % len].1)
                        .find(|i| !tried.contains(*i))
                        .unwrap_or(self.ring[start % len].1)
                }
                // No key: spread like round robin.
                _ => from(counter.fetch_add(1, Ordering::Relaxed), &self.set),
            },
        })
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: each member appears
/// `weight` times, interleaved as evenly as the weights allow.
fn smooth_sequence(set: &[u16], members: &[Candidate]) -> Box<[u16]> {
    if set.is_empty() {
        return Box::default();
    }
    let mut weights: Vec<u32> = set.iter().map(|&i| members[usize::from(i)].weight.max(1)).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total > u64::from(MAX_SEQUENCE) {
        let scale = f64::from(MAX_SEQUENCE) / total as f64;
        weights.iter_mut().for_each(|w| *w = ((f64::from(*w) * scale).round() as u32).max(1));
    }
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; set.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, w) in weights.iter().enumerate() {
            current[k] += i64::from(*w);
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        out.push(set[best]);
    }
    out.into_boxed_slice()
}

/// A hash ring with `weight × 160` points per member (scaled down to 65,536 in all). A
/// member's points depend only on its key, so a change in the set moves only the keys of
/// the members that came or went.
fn ring(set: &[u16], members: &[Candidate], keys: &[&str]) -> Box<[(u64, u16)]> {
    let weight = |i: u16| u64::from(members[usize::from(i)].weight.max(1));
    let total: u64 = set.iter().map(|&i| weight(i) * u64::from(POINTS_PER_WEIGHT)).sum();
    // Scaled down to at most MAX_POINTS in all (each member keeps at least one point).
    let points_of = |i: u16| -> u64 {
        let full = weight(i) * u64::from(POINTS_PER_WEIGHT);
        if total <= u64::from(MAX_POINTS) { full } else { (full * u64::from(MAX_POINTS) / total).max(1) }
    };
    let mut points = Vec::with_capacity(set.iter().map(|&i| points_of(i) as usize).sum());
    for &i in set {
        let base = hash_bytes(keys.get(usize::from(i)).copied().unwrap_or("").as_bytes());
        for v in 0..points_of(i) {
            points.push((mix(base ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i));
        }
    }
    points.sort_unstable();
    points.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().map(|&w| Candidate { available: true, backup: false, weight: w, back_at: None }).collect()
    }

    #[test]
    fn ring_size_is_capped() {
        let m: Vec<Candidate> =
            (0..1024).map(|_| Candidate { available: true, backup: false, weight: 1000, back_at: None }).collect();
        let set: Vec<u16> = (0..1024).collect();
        let names: Vec<String> = (0..1024).map(|i| format!("t{i}")).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = ring(&set, &m, &keys);
        assert!(r.len() <= MAX_POINTS as usize + 1024, "{}", r.len());
        assert!(r.len() >= 1024);
    }

    #[test]
    fn smooth_sequence_interleaves() {
        let m = cands(&[5, 1, 1]);
        let s = smooth_sequence(&[0, 1, 2], &m);
        assert_eq!(&*s, &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn backups_and_panic() {
        let mut m = cands(&[1, 1, 1]);
        m[2].backup = true;
        m[0].available = false;
        let keys = ["a", "b", "c"];
        let l = Live::build(0, &Balance::RoundRobin, &m, &keys, 0, Duration::ZERO);
        assert_eq!((l.mode, l.set()), (Mode::Primary, &[1u16][..]));
        let l = Live::build(0, &Balance::RoundRobin, &m, &keys, 60, Duration::ZERO);
        assert_eq!((l.mode, l.set()), (Mode::Panic, &[0u16, 1][..]));
        m[1].available = false;
        let l = Live::build(0, &Balance::RoundRobin, &m, &keys, 0, Duration::ZERO);
        assert_eq!((l.mode, l.set()), (Mode::Backup, &[2u16][..]));
        m[2].available = false;
        let l = Live::build(0, &Balance::RoundRobin, &m, &keys, 0, Duration::ZERO);
        assert_eq!(l.mode, Mode::Empty);
        assert!(l.pick(&Balance::RoundRobin, &AtomicUsize::new(0), None, &Tried::default(), |_| (0, 1)).is_none());
    }

    #[test]
    fn retries_go_elsewhere() {
        let m = cands(&[1, 1, 1]);
        let keys = ["a", "b", "c"];
        for b in [Balance::RoundRobin, Balance::Random, Balance::Weighted, Balance::LeastRequest] {
            let l = Live::build(0, &b, &m, &keys, 0, Duration::ZERO);
            let mut t = Tried::default();
            t.push(0);
            t.push(1);
            for _ in 0..50 {
                assert_eq!(l.pick(&b, &AtomicUsize::new(0), None, &t, |_| (0, 1)), Some(2), "{b:?}");
            }
        }
    }

    #[test]
    fn ring_moves_only_the_removed_members_keys() {
        let b = Balance::ConsistentHash(HashOn::Ip);
        let keys = ["t0", "t1", "t2", "t3", "t4"];
        let mut m = cands(&[1, 1, 1, 1, 1]);
        let before = Live::build(0, &b, &m, &keys, 0, Duration::ZERO);
        m[3].available = false;
        let after = Live::build(0, &b, &m, &keys, 0, Duration::ZERO);
        let c = AtomicUsize::new(0);
        let mut counts = [0usize; 5];
        for k in 0..10_000u64 {
            let key = Some(hash_bytes(&k.to_le_bytes()));
            let x = before.pick(&b, &c, key, &Tried::default(), |_| (0, 1)).expect("pick");
            let y = after.pick(&b, &c, key, &Tried::default(), |_| (0, 1)).expect("pick");
            counts[usize::from(x)] += 1;
            if x != 3 {
                assert_eq!(x, y, "a key not on the removed member moved");
            }
        }
        assert!(counts.iter().all(|&n| n > 1_200 && n < 2_800), "uneven ring: {counts:?}");
    }
}
