//! The gateway as a TLS client of its upstreams: verification on (against the upstream's CA
//! bundle, or the system's roots), SNI on (the target's host, or `server_name`), an optional
//! client certificate for mTLS, and ALPN offering what the upstream's `protocol` allows.

use std::sync::Arc;

use http::uri::Authority;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{UpstreamProtocol, UpstreamTls};

/// TLS settings towards one upstream's targets.
#[derive(Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// SHA-256 over the files read (CA bundle, client certificate and key).
    files: [u8; 32],
}

impl ClientTls {
    /// Build from an upstream's `tls` settings; its files are read now.
    pub fn new(cfg: &UpstreamTls, protocol: UpstreamProtocol) -> Result<ClientTls, String> {
        let roots = match &cfg.ca {
            Some(ca) => super::load_roots(ca)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no system root certificates found; give the upstream a `tls.ca`".into());
                }
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &cfg.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(super::read_certs(cert)?, super::read_key(key)?)
                .map_err(|e| format!("client certificate: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let server_name = match &cfg.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| format!("invalid server_name `{n}`"))?),
            None => None,
        };
        Ok(ClientTls { config: Arc::new(config), server_name, files: files_digest(cfg) })
    }

    /// A digest of the files the settings were read from: a reload that finds them changed
    /// builds new connections with them, even when the paths are the same.
    pub fn files(&self) -> [u8; 32] {
        self.files
    }

    /// Handshake over `tcp` with the target at `authority`; the stream and whether ALPN
    /// chose HTTP/2.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        authority: &Authority,
    ) -> std::io::Result<(TlsStream<TcpStream>, bool)> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string()).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "target host is not a valid TLS name")
                })?
            }
        };
        let s = TlsConnector::from(self.config.clone()).connect(name, tcp).await?;
        let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((s, h2))
    }
}

/// SHA-256 over the contents of the files `cfg` names (what tells one version of them from
/// the next).
pub fn files_digest(cfg: &UpstreamTls) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let paths = cfg.ca.iter().chain(cfg.client_cert.iter().flat_map(|(c, k)| [c, k]));
    for p in paths {
        // Unreadable files failed `new` already; what is read here only tells versions apart.
        ctx.update(&std::fs::read(p).unwrap_or_default());
        ctx.update(&[0]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}
