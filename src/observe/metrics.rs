//! Prometheus metrics: counters and histograms kept in atomics, written out in the
//! Prometheus text format (0.0.4) when `/metrics` is scraped.
//!
//! Cardinality is bounded by construction: labels are route names, upstream names and
//! target `host:port`s from the config, a fixed set of methods and status classes — never a
//! raw path, client address or credential (targets appear as `http://host:port`, as in the
//! admin API). Per-route counters are made when a config is
//! compiled and kept across reloads (by route name), so the request path only does relaxed
//! atomic adds on handles it already holds: no lock, no lookup, no allocation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// The same bounds in nanoseconds, compared without floating point on the request path.
const BUCKET_NANOS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];
const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, and a last one for everything above (+Inf). The count is their sum,
    /// so a scrape never sees `+Inf` below a finite bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Microseconds (a u64 of them lasts half a million years of summed time).
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.iter().position(|b| nanos <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(nanos / 1000, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = cumulative + self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The counters of one route (or of requests that matched none).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// From the request head to the end of the response body.
    pub duration: Histogram,
    /// From sending to the upstream until its response head (retries included).
    pub upstream: Histogram,
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    }
}

impl RouteMetrics {
    /// Count one answered request.
    #[inline]
    pub fn answered(&self, method: &Method, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[method_index(method)][class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Gateway-wide metrics, kept for the life of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    // Cold: locked when a config is compiled and when metrics are scraped.
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    unmatched: Arc<RouteMetrics>,
    /// Config reloads applied.
    pub reloads_applied: AtomicU64,
    /// Config reloads refused (invalid file, failed bind).
    pub reloads_failed: AtomicU64,
    /// Access-log lines dropped because the sink was too slow.
    pub access_log_dropped: AtomicU64,
    /// Access-log lines written.
    pub access_log_written: AtomicU64,
    /// HTTP/2 connections closed because their client cancelled most of its requests.
    pub h2_abusive_closes: AtomicU64,
    /// HTTP/2 connections closed because their client took no response bytes for a whole
    /// `idle_timeout` while a response waited for it.
    pub h2_stalled_closes: AtomicU64,
    /// TLS handshakes completed on listeners.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (bad or missing client certificate, protocol errors,
    /// timeouts).
    pub tls_handshake_failures: AtomicU64,
}

/// A label value, escaped (the names we use are plain, but never trust that).
pub fn label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

impl Metrics {
    /// The counters of the route called `name` (the same ones across reloads).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes.lock().entry(name.to_string()).or_default().clone()
    }

    /// Counters of requests that matched no route.
    pub fn unmatched(&self) -> &Arc<RouteMetrics> {
        &self.unmatched
    }

    /// Forget routes not in `names` (a reload removed them).
    pub fn retain_routes<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) {
        self.routes.lock().retain(|k, _| names.clone().any(|n| n == k));
    }

    /// The request metrics, in the Prometheus text format.
    pub fn write_requests(&self, out: &mut String) {
        let mut routes: Vec<(String, Arc<RouteMetrics>)> =
            self.routes.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        routes.push((String::new(), self.unmatched.clone()));
        out.push_str("# HELP portcullis_requests_total Requests answered, by route (empty: no route matched), method and status class.\n# TYPE portcullis_requests_total counter\n");
        for (name, m) in &routes {
            let name = label_value(name);
            for (mi, method) in METHODS.iter().enumerate() {
                // Every class of a method once it has been seen, zeros included, so that the
                // first 5xx of a route is an increase from 0 that `rate` can see.
                let seen = m.requests[mi].iter().any(|c| c.load(Ordering::Relaxed) > 0);
                for (ci, class) in CLASSES.iter().enumerate() {
                    let n = m.requests[mi][ci].load(Ordering::Relaxed);
                    if seen {
                        let _ = writeln!(
                            out,
                            "portcullis_requests_total{{route=\"{name}\",method=\"{method}\",status=\"{class}\"}} {n}"
                        );
                    }
                }
            }
        }
        out.push_str("# HELP portcullis_request_duration_seconds Time from the request head to the end of the response body, by route.\n# TYPE portcullis_request_duration_seconds histogram\n");
        for (name, m) in &routes {
            m.duration.write(out, "portcullis_request_duration_seconds", &format!("route=\"{}\"", label_value(name)));
        }
        out.push_str("# HELP portcullis_upstream_duration_seconds Time from sending a request upstream to its response head (retries included), by route.\n# TYPE portcullis_upstream_duration_seconds histogram\n");
        for (name, m) in routes.iter().filter(|(n, _)| !n.is_empty()) {
            m.upstream.write(out, "portcullis_upstream_duration_seconds", &format!("route=\"{}\"", label_value(name)));
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
        };
        let _ = write!(
            out,
            "# HELP portcullis_config_reloads_total Config reloads, by result.\n# TYPE portcullis_config_reloads_total counter\nportcullis_config_reloads_total{{result=\"applied\"}} {}\nportcullis_config_reloads_total{{result=\"failed\"}} {}\n",
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        counter(
            out,
            "portcullis_h2_abusive_connections_closed_total",
            "HTTP/2 connections closed because their client cancelled most of its requests (rapid reset).",
            self.h2_abusive_closes.load(Ordering::Relaxed),
        );
        counter(
            out,
            "portcullis_h2_stalled_connections_closed_total",
            "HTTP/2 connections closed because their client took no response bytes for a whole idle_timeout (slow reader).",
            self.h2_stalled_closes.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP portcullis_tls_handshakes_total TLS handshakes on listeners, by result.\n# TYPE portcullis_tls_handshakes_total counter\nportcullis_tls_handshakes_total{{result=\"ok\"}} {}\nportcullis_tls_handshakes_total{{result=\"failed\"}} {}\n",
            self.tls_handshakes.load(Ordering::Relaxed),
            self.tls_handshake_failures.load(Ordering::Relaxed)
        );
        counter(
            out,
            "portcullis_access_log_lines_total",
            "Access-log lines written.",
            self.access_log_written.load(Ordering::Relaxed),
        );
        counter(
            out,
            "portcullis_access_log_dropped_total",
            "Access-log lines dropped because the sink could not keep up.",
            self.access_log_dropped.load(Ordering::Relaxed),
        );
    }
}

/// The HELP and TYPE lines of one metric family.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// One metric family: its HELP and TYPE lines, then a sample per (labels, value); `labels`
/// is `k="v",…` with values escaped by [`label_value`], or empty.
pub fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: impl IntoIterator<Item = (String, u64)>) {
    header(out, name, help, kind);
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Process metrics from `/proc/self` (Linux): CPU seconds, resident memory, open files,
/// start time.
pub fn write_process(out: &mut String, started_unix: f64) {
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the command: state is 0, utime 11, stime 12, rss 21 (pages).
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        header(out, "process_cpu_seconds_total", "User and system CPU time.", "counter");
        let _ = writeln!(out, "process_cpu_seconds_total {}", (num(11) + num(12)) / ticks);
        header(out, "process_resident_memory_bytes", "Resident memory.", "gauge");
        let _ = writeln!(out, "process_resident_memory_bytes {}", num(21) * 4096.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(out, "process_open_fds", "Open file descriptors.", "gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    header(out, "process_start_time_seconds", "Start time, seconds since the Unix epoch.", "gauge");
    let _ = writeln!(out, "process_start_time_seconds {started_unix}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_agree() {
        for (s, n) in BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((s * 1e9).round() as u64, n);
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        h.write(&mut s, "x", "route=\"r\"");
        assert!(s.contains("x_bucket{route=\"r\",le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{route=\"r\",le=\"0.01\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{route=\"r\",le=\"30\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{route=\"r\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{route=\"r\"} 3\n"), "{s}");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
