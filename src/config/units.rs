//! Durations (`250ms`, `10s`, `5m`, `1h`) and sizes (`512B`, `16KiB`, `10MiB`, `1GiB`).

use std::time::Duration;

/// Parse a duration written as an integer followed by `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid duration `{s}`: expected a number and a unit, like 250ms, 10s, 5m"));
    }
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`: number too large"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        "" => {
            return Err(format!("invalid duration `{s}`: missing unit (ms, s, m, h or d)"));
        }
        _ => {
            return Err(format!("invalid duration `{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"));
        }
    }
    .ok_or_else(|| format!("invalid duration `{s}`: too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Parse a size: an integer number of bytes, optionally with `B`, `KiB`, `MiB` or `GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size `{s}`: expected a number and a unit, like 16KiB or 10MiB"));
    }
    let n: u64 = num.parse().map_err(|_| format!("invalid size `{s}`: number too large"))?;
    let mult: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" | "MB" | "GB" | "K" | "M" | "G" => {
            return Err(format!("invalid size `{s}`: use binary units (KiB, MiB, GiB) or B"));
        }
        other => {
            return Err(format!("invalid size `{s}`: unknown unit `{other}` (use B, KiB, MiB or GiB)"));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid size `{s}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "10", "10x", "1.5s", "-1s", "99999999999999999999s", "10 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        for bad in ["", "KiB", "10MB", "1.5MiB", "-1", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
