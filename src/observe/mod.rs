//! Observability: log set-up and request ids.
//!
//! Logs go to stderr: human-readable on a terminal, JSON lines otherwise (or as forced by
//! `PORTCULLIS_LOG_FORMAT=json|text`). The level comes from `RUST_LOG` (default `info`).
//! Every event about a request carries `request_id`, `client` and `config_version`.

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
