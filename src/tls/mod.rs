//! TLS, both ways: the listeners' server side and the client side towards upstreams.
//!
//! Owns reading certificates, keys and CA bundles from PEM files, choosing a listener's
//! certificate by SNI ([`server`]), re-reading the files when they change, and what a
//! verified client certificate says about its holder ([`identity`]). Everything runs on
//! rustls with the aws-lc provider; TLS 1.2 and 1.3 only, with that provider's default
//! (AEAD, forward-secret) cipher suites.

pub mod client;
pub mod identity;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use identity::PeerCert;
pub use server::ServerTls;

/// Largest PEM file read (a chain, a key or a CA bundle).
const MAX_PEM: u64 = 1024 * 1024;

/// The one crypto provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if meta.len() > MAX_PEM {
        return Err(format!("`{}` is larger than {MAX_PEM} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// The certificates of a PEM file, in order.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}`: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("`{}`: no usable private key: {e}", path.display()))
}

/// A certificate chain and its key, checked to belong together and to parse, with the
/// leaf's details.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, identity::Leaf), String> {
    let chain = read_certs(cert)?;
    let leaf =
        identity::Leaf::parse(&chain[0]).ok_or_else(|| format!("`{}`: not an X.509 certificate", cert.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(read_key(key)?)
        .map_err(|e| format!("`{}`: unsupported private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| format!("`{}` is not the key of `{}`", key.display(), cert.display()))?;
    Ok((Arc::new(ck), leaf))
}

/// A CA bundle: every certificate of the file as a trust anchor.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| format!("`{}`: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}
