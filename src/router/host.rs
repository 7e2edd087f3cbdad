//! Which host a request is for: one answer for routing, for the upstream's `Host`, and for
//! `portcullis explain`.

use std::borrow::Cow;

use http::Version;
use http::header::{self, HeaderValue};

/// Why a request's host is unusable (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub &'static str);

/// The authority a request is for, as sent: the request target's authority when it has one
/// (absolute-form, or HTTP/2 `:authority`; RFC 9112 §3.2.2 says it wins over `Host`), else
/// the `Host` header. More than one `Host`, or none in HTTP/1.1, is refused (RFC 9112 §3.2).
pub fn request_authority(req: &http::request::Parts) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError("more than one Host header"));
    }
    if let Some(a) = req.uri.authority() {
        if !valid_authority(a.as_str().as_bytes()) {
            return Err(HostError("invalid authority in the request target"));
        }
        return HeaderValue::from_str(a.as_str()).map(Some).map_err(|_| HostError("invalid authority"));
    }
    match host {
        None if req.version == Version::HTTP_11 => Err(HostError("missing Host header")),
        Some(h) if !valid_authority(h.as_bytes()) => Err(HostError("invalid Host header")),
        h => Ok(h.cloned()),
    }
}

/// `host[:port]` as RFC 9110 §7.2 allows it, and nothing else: a DNS name or IPv4 address
/// (letters, digits, `-`, `.`, `_`) or a bracketed IPv6 address, then at most one `:port`
/// of 1-5 digits. Userinfo (`user@`), paths, spaces and the like are refused, so the host
/// the gateway routes on is the host every backend parser reads.
fn valid_authority(a: &[u8]) -> bool {
    if a.is_empty() || a.len() > 262 {
        return false;
    }
    let (host, port) = if a[0] == b'[' {
        let Some(end) = a.iter().position(|b| *b == b']') else { return false };
        let inner = &a[1..end];
        if inner.is_empty() || !inner.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return false;
        }
        match &a[end + 1..] {
            [] => (&a[..0], None),
            [b':', rest @ ..] => (&a[..0], Some(rest)),
            _ => return false,
        }
    } else {
        match a.iter().position(|b| *b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    let host_ok = a[0] == b'['
        || (!host.is_empty() && host.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p).ok().and_then(|p| p.parse::<u16>().ok()).is_some()
    });
    host_ok && port_ok
}

/// The host to route on: lower-case, without port or one trailing dot.
pub fn route_host(authority: Option<&HeaderValue>) -> Option<Cow<'_, str>> {
    let raw = authority?.to_str().ok()?;
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next()?
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn authority_rules() {
        assert_eq!(
            request_authority(&parts("/", &["A.example:80"])),
            Ok(Some(HeaderValue::from_static("A.example:80")))
        );
        assert_eq!(request_authority(&parts("http://real/x", &["fake"])), Ok(Some(HeaderValue::from_static("real"))));
        assert!(request_authority(&parts("/", &["a", "b"])).is_err());
        assert!(request_authority(&parts("/", &[])).is_err());
    }

    #[test]
    fn authorities() {
        for ok in ["a.example", "a.example:8080", "127.0.0.1:80", "[::1]", "[::1]:443", "under_score.example"] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a.example:80@b.example",
            "user@a",
            "a b",
            "a/b",
            "a?b",
            "a#b",
            "a:80:81",
            "[::1",
            "[::1]x",
            "a:",
            ":80",
            "a:123456",
            "a:65536",
            "a:99999",
            "a:8o",
            "%61",
            "a\\b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn route_hosts() {
        let h = |s: &'static str| route_host(Some(&HeaderValue::from_static(s))).map(|c| c.into_owned());
        assert_eq!(h("API.Example.com.:8443").as_deref(), Some("api.example.com"));
        assert_eq!(h("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(route_host(None), None);
    }
}
