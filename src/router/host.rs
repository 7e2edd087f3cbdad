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
        return HeaderValue::from_str(a.as_str()).map(Some).map_err(|_| HostError("invalid authority"));
    }
    if host.is_none() && req.version == Version::HTTP_11 {
        return Err(HostError("missing Host header"));
    }
    Ok(host.cloned())
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
    fn route_hosts() {
        let h = |s: &'static str| route_host(Some(&HeaderValue::from_static(s))).map(|c| c.into_owned());
        assert_eq!(h("API.Example.com.:8443").as_deref(), Some("api.example.com"));
        assert_eq!(h("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(route_host(None), None);
    }
}
