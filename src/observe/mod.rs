//! Observability: log set-up, request ids and metrics ([`metrics`]).
//!
//! Logs go to stderr: human-readable on a terminal, JSON lines otherwise (or as forced by
//! `PORTCULLIS_LOG_FORMAT=json|text`). The level comes from `RUST_LOG` (default `info`).
//! Every event about a request carries `request_id`, `client` and `config_version`.

pub mod access;
pub mod audit;
pub mod budget;
pub mod events;
pub mod metrics;
pub mod trace;

use std::io::IsTerminal;

use http::HeaderValue;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ =
        if json { builder.json().flatten_event(true).with_current_span(false).try_init() } else { builder.try_init() };
}

/// A fresh request id: 32 hex digits from a per-thread generator. Ids are unique, not secret.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// [`new_request_id`] as a `String`, for answers made below hyper.
pub(crate) fn new_request_id_string() -> String {
    new_request_id().to_str().unwrap_or("0").to_string()
}

/// Append `s` to `out` as the inside of a JSON string.
pub fn json_escape(s: &str, out: &mut String) {
    // Most values need no escaping: one scan, one copy.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Append `n` in decimal, with at least `width` digits (zero-padded), without the
/// formatting machinery (this runs once per access-log field).
pub fn push_u64(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    out.extend(buf[start..].iter().map(|&b| char::from(b)));
}

/// Append `2026-11-27T17:21:43.123Z` ([`rfc3339`] with milliseconds) to `out`.
pub fn write_rfc3339_millis(out: &mut String, t: std::time::SystemTime) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ((y, m, day), rem) = civil(d.as_secs());
    let parts = [(y.max(0) as u64, 4, '-'), (m as u64, 2, '-'), (day as u64, 2, 'T'), (rem / 3600, 2, ':')];
    for (v, w, sep) in parts {
        push_u64(out, v, w);
        out.push(sep);
    }
    push_u64(out, rem % 3600 / 60, 2);
    out.push(':');
    push_u64(out, rem % 60, 2);
    out.push('.');
    push_u64(out, u64::from(d.subsec_millis()), 3);
    out.push('Z');
}

/// `2026-11-27T17:21:43Z`: a wall-clock time in RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ((y, m, day), rem) = civil(secs);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// (year, month, day) of a Unix time, and the seconds into that day.
fn civil(secs: u64) -> ((i64, i64, i64), u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    ((yoe + era * 400 + i64::from(month <= 2), month, day), rem)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_800_103)), "2026-11-27T17:21:43Z");
        let mut s = String::new();
        super::write_rfc3339_millis(&mut s, UNIX_EPOCH + Duration::from_millis(1_795_800_103_045));
        assert_eq!(s, "2026-11-27T17:21:43.045Z");
        let mut n = String::new();
        super::push_u64(&mut n, 7, 3);
        super::push_u64(&mut n, 0, 1);
        super::push_u64(&mut n, 18_446_744_073_709_551_615, 2);
        assert_eq!(n, "007018446744073709551615");
        let mut j = String::new();
        super::json_escape("a\"b\\c\nd\u{7f}é", &mut j);
        assert_eq!(j, "a\\\"b\\\\c\\u000ad\\u007fé");
    }
}
