//! Rate limits shared by several nodes: the same GCRA as [`super::Limiter`], kept in Redis
//! and run as one Lua script per check, so nodes that share a Redis share every bucket.
//!
//! Owns the [`SharedLimits`] trait (what a cluster-wide limiter must do), its Redis backend,
//! and the failure policy: a failed or late check falls back for that request; two in a row
//! (connection trouble or timeouts, not an error Redis answered with) mark the backend down
//! for a second, during which checks do not touch Redis and one request then probes it. The
//! caller falls back as configured (`cluster.redis_failure`: this node's own limits, or
//! refuse). The bucket clock is Redis's (`TIME`), so nodes need not agree on time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Decision;
use crate::config::ClusterConfig;

/// How long the backend is left alone after it is marked down before one request probes it.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Connection failures or timeouts in a row that mark the backend down.
const DOWN_AFTER: u32 = 2;

/// Why a shared check gave no decision (the caller falls back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The backend failed or timed out on this check.
    Failed,
    /// The backend failed recently and is not being tried.
    Down,
}

/// The future of one shared check.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<Decision, Unavailable>> + Send + 'a>>;

/// A rate-limit store shared by nodes. Keys are scoped exactly as the in-memory limiter
/// scopes them: per route, then per key (consumer, client IP bytes or header value).
pub trait SharedLimits: Send + Sync + fmt::Debug {
    /// Count one request of `key` on `route` against a GCRA of `interval_ns` per request and
    /// `tolerance_ns` of burst, if it is allowed.
    fn check<'a>(&'a self, route: &'a str, key: &'a [u8], interval_ns: u64, tolerance_ns: u64) -> CheckFuture<'a>;
    /// Whether the backend answered its last check.
    fn up(&self) -> bool;
    /// Checks that failed (errors and timeouts).
    fn failures(&self) -> u64;
}

/// GCRA in microseconds on Redis's clock. KEYS[1]: the bucket; ARGV: interval, tolerance.
/// Returns {allowed, remaining, retry_after_us, reset_us}. The key expires when its bucket
/// is full again, so idle keys cost Redis nothing.
const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, 0, new_tat - now - tolerance, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
"#;

/// The Redis backend.
pub struct RedisLimits {
    cfg: ClusterConfig,
    client: redis::Client,
    manager: ConnectionManagerConfig,
    /// Replaced by a fresh (lazy) one after a failure it may not recover from by itself (a
    /// timeout on a half-open connection, a refused login).
    conn: ArcSwap<ConnectionManager>,
    script: redis::Script,
    /// Milliseconds on [`mono_ms`]'s clock until which the backend is not tried (0: up).
    down_until: AtomicU64,
    /// Connection failures and timeouts in a row.
    streak: AtomicU32,
    /// One request at a time probes a backend that is down.
    probing: AtomicBool,
    failures: AtomicU64,
    /// When the connection was last replaced ([`mono_ms`]).
    renewed: AtomicU64,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisLimits").field("up", &self.up()).finish_non_exhaustive()
    }
}

/// Milliseconds on the monotonic clock, never 0 (0 means "up" in `down_until`).
fn mono_ms() -> u64 {
    crate::clock::mono_ns() / 1_000_000 + 1
}

/// Clears the probing flag however the probe ends (a dropped request future included).
struct Probe<'a>(Option<&'a AtomicBool>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

impl RedisLimits {
    /// A backend for `cfg.redis`; it connects on first use (a node starts while Redis is down).
    pub fn new(cfg: &ClusterConfig) -> Result<RedisLimits, String> {
        let client = redis::Client::open(cfg.redis.as_str()).map_err(|e| format!("cluster.redis: {e}"))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
            .map_err(|e| format!("cluster.redis: {e}"))?;
        Ok(RedisLimits {
            cfg: cfg.clone(),
            client,
            manager,
            conn: ArcSwap::from_pointee(conn),
            script: redis::Script::new(SCRIPT),
            down_until: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            renewed: AtomicU64::new(0),
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// A check failed. `connection`: the link is in doubt (an I/O error, a refused or
    /// dropped connection, a timeout), not an error Redis answered with.
    fn failed(&self, why: &str, connection: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // Start again from a fresh (lazy) connection, at most once a second: the manager
        // does not recover from everything (a refused login, a half-open connection).
        let now = mono_ms();
        let last = self.renewed.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self.renewed.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            && let Ok(fresh) = ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone())
        {
            self.conn.store(std::sync::Arc::new(fresh));
        }
        if !connection {
            tracing::warn!(error = why, "Redis refused a shared rate-limit check; this request falls back");
            return;
        }
        if self.streak.fetch_add(1, Ordering::Relaxed) + 1 < DOWN_AFTER && self.down_until.load(Ordering::Relaxed) == 0
        {
            return;
        }
        let was_up = self.down_until.swap(mono_ms() + RETRY_AFTER_FAILURE.as_millis() as u64, Ordering::Relaxed) == 0;
        if was_up {
            tracing::warn!(
                error = why,
                fallback = self.cfg.redis_failure.name(),
                "Redis for shared rate limits is unreachable"
            );
        }
    }

    async fn run(&self, route: &str, key: &[u8], interval_ns: u64, tolerance_ns: u64) -> Result<Decision, Unavailable> {
        let down = self.down_until.load(Ordering::Relaxed);
        let _probe = if down == 0 {
            Probe(None)
        } else if mono_ms() < down || self.probing.swap(true, Ordering::Acquire) {
            return Err(Unavailable::Down);
        } else {
            Probe(Some(&self.probing))
        };
        // The bucket: a fixed prefix, the route, then the key (scoped as the local limiter
        // scopes it) as its raw SHA-256: a header value may be a secret, and Redis keys are
        // visible to whoever runs Redis.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
        let mut bucket = Vec::with_capacity(8 + route.len() + 1 + 32);
        bucket.extend_from_slice(b"pcl:rl:");
        bucket.extend_from_slice(route.as_bytes());
        bucket.push(b':');
        bucket.extend_from_slice(digest.as_ref());
        // Microseconds; the tolerance is a whole number of intervals, so the burst is exact.
        let interval_us = interval_ns.div_ceil(1_000).max(1);
        let tolerance_us = interval_us.saturating_mul((tolerance_ns / interval_ns.max(1)).max(1));
        let mut conn = ConnectionManager::clone(&self.conn.load());
        let mut invocation = self.script.key(bucket);
        invocation.arg(interval_us).arg(tolerance_us);
        let result = tokio::time::timeout(self.cfg.redis_timeout, invocation.invoke_async::<Vec<i64>>(&mut conn)).await;
        let v = match result {
            Ok(Ok(v)) if v.len() == 4 => v,
            Ok(Ok(_)) => {
                self.failed("unexpected script reply", false);
                return Err(Unavailable::Failed);
            }
            Ok(Err(e)) => {
                let connection = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::AuthenticationFailed;
                self.failed(&e.to_string(), connection);
                return Err(Unavailable::Failed);
            }
            Err(_) => {
                self.failed("timed out", true);
                return Err(Unavailable::Failed);
            }
        };
        self.streak.store(0, Ordering::Relaxed);
        if self.down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("Redis for shared rate limits answers again");
        }
        let ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1_000);
        Ok(Decision {
            allowed: v[0] == 1,
            remaining: u64::try_from(v[1]).unwrap_or(0),
            retry_after_ns: ns(v[2]),
            reset_ns: ns(v[3]),
        })
    }
}

impl SharedLimits for RedisLimits {
    fn check<'a>(&'a self, route: &'a str, key: &'a [u8], interval_ns: u64, tolerance_ns: u64) -> CheckFuture<'a> {
        Box::pin(self.run(route, key, interval_ns, tolerance_ns))
    }

    fn up(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) == 0
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
