//! What a certificate says: the names a server certificate answers for (for SNI), and the
//! identity of a verified client certificate (for `mtls` authentication and the headers
//! upstreams get).

use std::net::IpAddr;

use http::HeaderValue;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A server certificate's leaf, as far as choosing it by SNI needs.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// DNS names it answers for, lower case (`*.example.com` for a wildcard): its DNS
    /// subject alternative names, or its common name when it has none.
    pub names: Vec<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl Leaf {
    /// Parse a DER certificate.
    pub fn parse(der: &[u8]) -> Option<Leaf> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty()
            && let Some(cn) = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
        Some(Leaf { names, not_after: cert.validity().not_after.timestamp() })
    }
}

/// A client certificate the listener verified, and the headers that describe it, made once
/// per connection.
#[derive(Debug)]
pub struct PeerCert {
    /// The subject, as an RFC 4514 string (`CN=app1,O=Example`).
    pub subject: String,
    /// The subject's common name.
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs, say).
    pub uris: Vec<String>,
    /// E-mail subject alternative names.
    pub emails: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    /// Header values for upstreams: subject, SANs (`DNS:a,URI:b,email:c,IP:d`), fingerprint.
    pub headers: [Option<HeaderValue>; 3],
}

impl PeerCert {
    /// Read a verified client certificate (the leaf of the chain the client sent).
    pub fn parse(der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject().to_string();
        let common_name = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_string);
        let (mut dns, mut uris, mut emails, mut ips) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                match g {
                    GeneralName::DNSName(n) => dns.push(n.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let fingerprint = crate::hex::encode(digest.as_ref());
        let sans: Vec<String> = dns
            .iter()
            .map(|n| format!("DNS:{n}"))
            .chain(uris.iter().map(|u| format!("URI:{u}")))
            .chain(emails.iter().map(|e| format!("email:{e}")))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        let headers = [
            header_value(&subject),
            (!sans.is_empty()).then(|| header_value(&sans.join(","))).flatten(),
            HeaderValue::from_str(&fingerprint).ok(),
        ];
        Some(PeerCert { subject, common_name, dns, uris, emails, ips, fingerprint, headers })
    }

    /// The value of `field`, if the certificate has one.
    pub fn field(&self, field: crate::config::CertField) -> Option<&str> {
        use crate::config::CertField as F;
        match field {
            F::CommonName => self.common_name.as_deref(),
            F::Dns => self.dns.first().map(String::as_str),
            F::Uri => self.uris.first().map(String::as_str),
            F::Email => self.emails.first().map(String::as_str),
            F::Fingerprint => Some(&self.fingerprint),
        }
    }
}

/// Text from a certificate as a header value: printable ASCII kept, `%` and anything else
/// percent-encoded (a subject may hold any Unicode, or control characters).
pub(crate) fn header_value(s: &str) -> Option<HeaderValue> {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::header_value;

    #[test]
    fn header_values_are_printable_ascii() {
        assert_eq!(header_value("CN=app1,O=Ex").expect("v"), "CN=app1,O=Ex");
        assert_eq!(header_value("CN=a\r\nX: y").expect("v"), "CN=a%0D%0AX: y");
        assert_eq!(header_value("CN=é%").expect("v"), "CN=%C3%A9%25");
    }
}
