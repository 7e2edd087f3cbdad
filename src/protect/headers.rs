//! Header hygiene on the way in and out: hop-by-hop headers (RFC 9110 §7.6.1) and every
//! header the `Connection` header names are removed in both directions; client-sent
//! forwarding headers are replaced by ours.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only describe one hop, never forwarded. The order is the bit order used by
/// [`strip_hop_by_hop`].
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Forwarding headers a client could forge; the gateway sets its own.
static FORWARDING: [HeaderName; 6] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether any `name` field of `h` lists `token` (a comma-separated list, tokens compared
/// without case, as `Connection`, `Upgrade` and `TE` are).
pub fn has_token(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Remove hop-by-hop headers, including every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to see which are present (most messages carry at most `Connection`), then
    // remove only those: hashing every candidate name cost more than the rest of this path.
    let mut present = 0u16;
    for k in headers.keys() {
        // A string match (length first) is cheaper than nine HeaderName comparisons.
        let bit = match k.as_str() {
            "connection" => 0,
            "te" => 1,
            "trailer" => 2,
            "transfer-encoding" => 3,
            "upgrade" => 4,
            "proxy-authenticate" => 5,
            "proxy-authorization" => 6,
            "keep-alive" => 7,
            "proxy-connection" => 8,
            _ => continue,
        };
        present |= 1 << bit;
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for t in v.to_str().unwrap_or("").split(',') {
                let t = t.trim();
                // the usual tokens name no extra header (keep-alive is removed below anyway)
                if t.is_empty() || t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// The `X-Forwarded-For` value for a client, made once per connection.
pub fn client_ip_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Replace client-sent forwarding headers with the gateway's own view of the hop:
/// `client_ip` from [`client_ip_value`], and the host the client asked for.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    let forged = headers.keys().any(|k| {
        matches!(
            k.as_str(),
            "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
                | "x-forwarded-port"
                | "x-real-ip"
        )
    });
    if forged {
        for h in &FORWARDING {
            headers.remove(h);
        }
    }
    headers.insert(&FORWARDING[1], client_ip.clone());
    headers.insert(&FORWARDING[3], HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(&FORWARDING[2], h);
    }
}

/// A client-sent request id worth keeping: 1-128 characters of `A-Z a-z 0-9 - _ . : /`.
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret , keep-alive"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_hop_by_hop_header_goes_alone() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} survived");
            assert!(h.contains_key("x-kept"));
        }
    }

    #[test]
    fn forwarding_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let ip = client_ip_value("127.0.0.1".parse().expect("ip"));
        set_forwarding(&mut h, &ip, "http", Some(HeaderValue::from_static("api.example.com")));
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert!(!h.contains_key("forwarded"));
    }
}
