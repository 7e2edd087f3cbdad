//! The two clocks the gateway reads: Unix time in milliseconds (for what is stored or shown:
//! bans, audit records) and a monotonic count of nanoseconds (for windows, buckets and
//! back-off, which a wall-clock step must not stretch or shrink).

use std::sync::OnceLock;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Nanoseconds since the first call in this process, on the monotonic clock.
pub fn mono_ns() -> u64 {
    static ZERO: OnceLock<tokio::time::Instant> = OnceLock::new();
    let zero = *ZERO.get_or_init(tokio::time::Instant::now);
    u64::try_from(zero.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
