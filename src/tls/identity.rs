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
    /// The subject, as an RFC 4514 string (`CN=app1,O=Example`, escaped).
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
        let subject = rfc4514(cert.subject());
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
        // Entries are comma-separated, so a comma inside one (a URI may have it) is encoded:
        // no SAN can pose as two.
        let sans: Vec<String> = dns
            .iter()
            .map(|n| format!("DNS:{}", crate::hex::percent_encode(n, b",")))
            .chain(uris.iter().map(|u| format!("URI:{}", crate::hex::percent_encode(u, b","))))
            .chain(emails.iter().map(|e| format!("email:{}", crate::hex::percent_encode(e, b","))))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        let headers = [
            header_value(&subject),
            (!sans.is_empty()).then(|| HeaderValue::from_str(&sans.join(",")).ok()).flatten(),
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
    HeaderValue::from_str(&crate::hex::percent_encode(s, b"")).ok()
}

/// A distinguished name as RFC 4514 writes it: the most specific part first
/// (`CN=app1,O=Example`), `+` between the values of one RDN, and the characters that would
/// change its structure escaped (`,` `+` `"` `\` `<` `>` `;`, a leading `#` or space, a
/// trailing space), so a value cannot pose as more of the name. A value that is not a
/// string is `#` and its hex.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(atv.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&atv.attr_type().to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape_value(v, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&crate::hex::encode(atv.as_slice()));
                }
            }
        }
    }
    out
}

fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
        } else {
            if special {
                out.push('\\');
            }
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::header_value;

    #[test]
    fn names_and_sans_cannot_pose_as_more_than_they_are() {
        let mut p = rcgen_params();
        p.0.distinguished_name.push(rcgen::DnType::OrganizationName, "Corp");
        p.0.distinguished_name.push(rcgen::DnType::CommonName, "bob, O=Admins");
        p.0.subject_alt_names.push(rcgen::SanType::URI("https://a/x,URI:spiffe://prod/admin".try_into().expect("uri")));
        let cert = p.0.self_signed(&p.1).expect("cert");
        let peer = super::PeerCert::parse(cert.der()).expect("parse");
        assert_eq!(peer.subject, "CN=bob\\, O=Admins,O=Corp");
        assert_eq!(peer.common_name.as_deref(), Some("bob, O=Admins"));
        let san = peer.headers[1].as_ref().expect("san header");
        assert_eq!(san, "URI:https://a/x%2CURI:spiffe://prod/admin");
        assert_eq!(peer.headers[0].as_ref().expect("subject header"), "CN=bob\\, O=Admins,O=Corp");
    }

    fn rcgen_params() -> (rcgen::CertificateParams, rcgen::KeyPair) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        (p, rcgen::KeyPair::generate().expect("key"))
    }

    #[test]
    fn header_values_are_printable_ascii() {
        assert_eq!(header_value("CN=app1,O=Ex").expect("v"), "CN=app1,O=Ex");
        assert_eq!(header_value("CN=a\r\nX: y").expect("v"), "CN=a%0D%0AX: y");
        assert_eq!(header_value("CN=é%").expect("v"), "CN=%C3%A9%25");
    }
}
