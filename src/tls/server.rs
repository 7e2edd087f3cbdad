//! A listener's TLS: its rustls configuration, rebuilt whenever the certificate, key or CA
//! files change on disk, so rotation needs no reload and no restart. Connections already
//! open keep the session they have; new ones get the new files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use crate::config::{ClientAuthMode, TlsConfig, TlsVersion};

/// Sessions remembered for resumption by ID (TLS 1.2); TLS 1.3 uses tickets.
const SESSION_CACHE: usize = 4096;

/// What a file looked like when last read: modification and change times, length and
/// inode (a missing file is `None`). A change of any means read it again (`cp -p` keeps the
/// modification time, not the change time; a rename brings another inode).
type Stamp = Option<(SystemTime, i64, u64, u64)>;

/// One listener's TLS settings, live.
#[derive(Debug)]
pub struct ServerTls {
    listener: String,
    cfg: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The files' stamps when last tried (whether that load worked or not).
    seen: Mutex<Vec<Stamp>>,
    /// When the first of the certificates in use expires (Unix seconds).
    not_after: AtomicI64,
}

impl ServerTls {
    /// Read the files of `cfg` and build listener `listener`'s TLS.
    pub fn load(listener: &str, cfg: &TlsConfig) -> Result<ServerTls, String> {
        let seen = stamps(cfg);
        let (config, not_after) = build(cfg).map_err(|e| format!("listener `{listener}`: {e}"))?;
        Ok(ServerTls {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(seen),
            not_after: AtomicI64::new(not_after),
        })
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &TlsConfig {
        &self.cfg
    }

    /// When the first of the certificates served expires (Unix seconds), for monitoring.
    pub fn expires_at(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The rustls configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Read the files again if any changed since last tried. A set that does not load (a
    /// key written before its certificate, say) is logged, and the previous one keeps
    /// serving until the files change again. Returns true when new files are in use.
    pub fn refresh(&self) -> bool {
        let now = stamps(&self.cfg);
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match build(&self.cfg) {
            Ok((config, not_after)) => {
                self.current.store(Arc::new(config));
                self.not_after.store(not_after, Ordering::Relaxed);
                tracing::info!(listener = %self.listener, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(listener = %self.listener, error = %e, "TLS files changed but cannot be used; the previous certificates keep serving");
                false
            }
        }
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Stamp> {
    let files = cfg.certificates.iter().flat_map(|c| [&c.cert, &c.key]).chain(cfg.client_auth.ca.as_ref());
    files
        .map(|p: &PathBuf| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.ctime_nsec() + m.ctime() * 1_000_000_000, m.len(), m.ino())))
        })
        .collect()
}

/// The rustls configuration of `cfg`, and when its first certificate expires.
fn build(cfg: &TlsConfig) -> Result<(ServerConfig, i64), String> {
    let mut resolver = SniResolver::default();
    let mut not_after = i64::MAX;
    for c in &cfg.certificates {
        let (ck, leaf) = super::load_pair(&c.cert, &c.key)?;
        if leaf.not_after < crate::clock::unix_ms() / 1000 {
            tracing::warn!(cert = %c.cert.display(), "TLS certificate has expired");
        }
        not_after = not_after.min(leaf.not_after);
        resolver.add(ck, &leaf.names);
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&version::TLS13, &version::TLS12],
        TlsVersion::Tls13 => &[&version::TLS13],
    };
    let provider = super::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match (&cfg.client_auth.mode, &cfg.client_auth.ca) {
        (ClientAuthMode::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err("client certificates need a CA bundle (`client_auth.ca`)".into()),
        (mode, Some(ca)) => {
            let roots = Arc::new(super::load_roots(ca)?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let v = if *mode == ClientAuthMode::Optional { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client CA bundle: {e}"))?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if cfg.client_auth.mode == ClientAuthMode::None {
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    } else {
        // A resumed session keeps the client certificate it began with, unchecked: one that
        // has expired since would go on working. Every connection verifies it afresh.
        config.session_storage = std::sync::Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok((config, not_after))
}

/// Picks a certificate by the client's SNI: an exact name, else a wildcard one label deep,
/// else the first certificate listed.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, ck: Arc<CertifiedKey>, names: &[String]) {
        for n in names {
            // The first certificate listed for a name wins.
            match n.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()).or_insert_with(|| ck.clone()),
                None => self.exact.entry(n.clone()).or_insert_with(|| ck.clone()),
            };
        }
        self.default.get_or_insert(ck);
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            // rustls hands SNI over lower-cased and validated as a DNS name.
            if let Some(ck) = self.exact.get(name) {
                return Some(ck.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(ck) = self.wildcard.get(parent)
            {
                return Some(ck.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}
