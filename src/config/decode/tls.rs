//! Decoding of `listeners[].tls`. The files named are read and checked now (a certificate
//! that does not parse, a key that does not match it, a CA bundle without a certificate), so
//! `validate` and a reload catch them before anything serves with them.

use super::*;

pub(super) fn decode_listener_tls(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<TlsConfig> {
    let mut f = Fields::new(d, node, path)?;
    let mut certificates = Vec::new();
    match f.get("certificates") {
        Some((n, p)) => {
            let items = seq(d, n, &p);
            if items.is_empty() && matches!(n.kind, Kind::Seq(_)) {
                d.err(n.pos, &p, "at least one certificate is required");
            }
            if items.len() > 256 {
                d.err(n.pos, &p, "at most 256 certificates");
            }
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let Some(mut cf) = Fields::new(d, item, &ip) else { continue };
                let cert = file(d, &mut cf, item, &ip, "cert", true);
                let key = file(d, &mut cf, item, &ip, "key", true);
                cf.finish(d);
                if let (Some(cert), Some(key)) = (cert, key) {
                    if let Err(e) = crate::tls::load_pair(&cert, &key) {
                        d.err(item.pos, &ip, e);
                    }
                    certificates.push(CertFiles { cert, key });
                }
            }
        }
        None => d.err(node.pos, &join(path, "certificates"), "missing field `certificates`"),
    }
    let mut client_auth = ClientAuth::default();
    if let Some((n, p)) = f.get("client_auth")
        && let Some(mut cf) = Fields::new(d, n, &p)
    {
        if let Some((mn, mp)) = cf.get("mode")
            && let Some(s) = scalar(d, mn, &mp)
        {
            client_auth.mode = match s {
                "none" => ClientAuthMode::None,
                "optional" => ClientAuthMode::Optional,
                "required" => ClientAuthMode::Required,
                other => {
                    d.err(mn.pos, &mp, format!("unknown mode `{other}`; expected none, optional or required"));
                    ClientAuthMode::None
                }
            };
        }
        client_auth.ca = file(d, &mut cf, n, &p, "ca", false);
        if client_auth.mode != ClientAuthMode::None && client_auth.ca.is_none() {
            d.err(n.pos, &join(&p, "ca"), "a CA bundle is required to verify client certificates");
        }
        if let Some(ca) = &client_auth.ca
            && let Err(e) = crate::tls::load_roots(ca)
        {
            d.err(n.pos, &join(&p, "ca"), e);
        }
        cf.finish(d);
    }
    let mut min_version = TlsVersion::Tls12;
    if let Some((n, p)) = f.get("min_version")
        && let Some(s) = scalar(d, n, &p)
    {
        match s {
            "1.2" => min_version = TlsVersion::Tls12,
            "1.3" => min_version = TlsVersion::Tls13,
            other => d.err(n.pos, &p, format!("unsupported TLS version `{other}`; expected \"1.2\" or \"1.3\"")),
        }
    }
    f.finish(d);
    (!certificates.is_empty()).then_some(TlsConfig { certificates, client_auth, min_version })
}

/// A file named by `key`, resolved against the config file's directory; a `required` one
/// that is missing is an error.
fn file(
    d: &mut Decoder<'_>,
    f: &mut Fields<'_>,
    parent: &Node,
    path: &str,
    key: &'static str,
    required: bool,
) -> Option<std::path::PathBuf> {
    match f.get(key) {
        Some((n, p)) => {
            let s = scalar(d, n, &p)?;
            if s.is_empty() {
                d.err(n.pos, &p, "expected a file path");
                return None;
            }
            Some(d.resolve(s))
        }
        None => {
            if required {
                d.err(parent.pos, &join(path, key), format!("missing field `{key}`"));
            }
            None
        }
    }
}

/// `upstreams[].tls`: `ca`, `client_cert` with `client_key`, `server_name`.
pub(super) fn decode_upstream_tls(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<UpstreamTls> {
    let mut f = Fields::new(d, node, path)?;
    let mut out = UpstreamTls::default();
    if let Some((n, p)) = f.get("ca")
        && let Some(s) = scalar(d, n, &p)
    {
        let ca = d.resolve(s);
        if let Err(e) = crate::tls::load_roots(&ca) {
            d.err(n.pos, &p, e);
        }
        out.ca = Some(ca);
    }
    let cert = f.get("client_cert").and_then(|(n, p)| scalar(d, n, &p).map(|s| (n.pos, d.resolve(s))));
    let key = f.get("client_key").and_then(|(n, p)| scalar(d, n, &p).map(|s| (n.pos, d.resolve(s))));
    match (cert, key) {
        (Some((pos, c)), Some((_, k))) => {
            if let Err(e) = crate::tls::load_pair(&c, &k) {
                d.err(pos, &join(path, "client_cert"), e);
            }
            out.client_cert = Some((c, k));
        }
        (Some((pos, _)), None) => d.err(pos, &join(path, "client_key"), "`client_cert` needs `client_key`"),
        (None, Some((pos, _))) => d.err(pos, &join(path, "client_cert"), "`client_key` needs `client_cert`"),
        (None, None) => {}
    }
    if let Some((n, p)) = f.get("server_name")
        && let Some(s) = scalar(d, n, &p)
    {
        match rustls_pki_types::ServerName::try_from(s) {
            Ok(_) => out.server_name = Some(s.to_string()),
            Err(_) => d.err(n.pos, &p, format!("`{s}` is not a DNS name or IP address")),
        }
    }
    f.finish(d);
    Some(out)
}
