//! Test certificates made at test time with rcgen, and a TLS client (rustls) that speaks
//! HTTP/1.1 or HTTP/2 as ALPN decides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{TestBody, full};

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Arc<PrivateKeyDer<'static>>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("self-signed");
        Ca { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(p, key) }
    }

    /// A server certificate for `names` (DNS SANs).
    pub fn server(&self, names: &[&str]) -> Leaf {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        self.sign(p)
    }

    /// A client certificate with common name `cn`, and the given URI SAN.
    pub fn client(&self, cn: &str, uri: Option<&str>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, "Portcullis Tests");
        if let Some(u) = uri {
            p.subject_alt_names.push(SanType::URI(u.try_into().expect("uri")));
        }
        self.sign(p)
    }

    /// A client certificate that expired in 2020.
    pub fn expired_client(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: Arc::new(PrivateKeyDer::try_from(key.serialize_der()).expect("key der")),
        }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, &self.pem).expect("write ca");
        p
    }
}

impl Leaf {
    /// Write `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

/// How a test client connects.
#[derive(Clone)]
pub struct TlsClient {
    pub roots: Vec<CertificateDer<'static>>,
    pub identity: Option<Leaf>,
    pub alpn: Vec<Vec<u8>>,
    pub tls12_only: bool,
}

/// What one exchange over TLS gave.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub alpn: Option<Vec<u8>>,
    pub version: http::Version,
    /// The certificate the server presented.
    pub server_cert: CertificateDer<'static>,
}

pub type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl TlsClient {
    pub fn new(ca: &Ca) -> TlsClient {
        TlsClient {
            roots: vec![ca.der.clone()],
            identity: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls12_only: false,
        }
    }

    pub fn with_cert(mut self, leaf: &Leaf) -> TlsClient {
        self.identity = Some(leaf.clone());
        self
    }

    pub fn alpn(mut self, protos: &[&[u8]]) -> TlsClient {
        self.alpn = protos.iter().map(|p| p.to_vec()).collect();
        self
    }

    pub fn config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for r in &self.roots {
            roots.add(r.clone()).expect("root");
        }
        let versions: &[&'static rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut cfg = match &self.identity {
            Some(l) => b.with_client_auth_cert(vec![l.der.clone()], l.key_der.clone_key()).expect("client cert"),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        cfg
    }

    /// Connect and finish the handshake (for TLS 1.3, a refused client certificate shows
    /// only when the server's alert is read, so a request tells more).
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> std::io::Result<Stream> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).expect("server name");
        tokio_rustls::TlsConnector::from(Arc::new(self.config())).connect(name, tcp).await
    }

    /// One GET of `path` on a new connection.
    pub async fn get(&self, addr: SocketAddr, sni: &str, path: &str) -> Result<TlsAnswer, String> {
        let s = self.connect(addr, sni).await.map_err(|e| format!("handshake: {e}"))?;
        let req = Request::get(path).header("host", sni).body(full("")).expect("request");
        exchange(s, req).await
    }
}

/// Send `req` on a TLS connection as ALPN chose (HTTP/1.1 without ALPN).
pub async fn exchange(s: Stream, req: Request<TestBody>) -> Result<TlsAnswer, String> {
    let (_, session) = s.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let server_cert = session.peer_certificates().and_then(|c| c.first()).cloned().expect("server certificate");
    let io = TokioIo::new(s);
    let res = if alpn.as_deref() == Some(b"h2") {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri =
            format!("https://{}{}", parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("x"), parts.uri)
                .parse()
                .expect("uri");
        parts.headers.remove("host");
        tx.send_request(Request::from_parts(parts, body)).await.map_err(|e| format!("request: {e}"))?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| format!("request: {e}"))?
    };
    let status = res.status().as_u16();
    let version = res.version();
    let headers = res.headers().clone();
    let body: Bytes = res.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(TlsAnswer { status, headers, body: String::from_utf8_lossy(&body).into_owned(), alpn, version, server_cert })
}

/// An HTTPS upstream on 127.0.0.1 presenting `leaf`; with `client_ca`, it requires client
/// certificates from that CA. It answers every request 200 with `x-version` (the HTTP
/// version it was spoken to in), `x-host` and `x-authority` (the `Host` header and the URI's
/// authority it got, or `absent`), `x-client-cert` (SHA-256 of the client's certificate, hex,
/// or `none`) and `x-sni`; hits are counted.
pub async fn tls_upstream(leaf: &Leaf, client_ca: Option<&Ca>) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).expect("root");
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_single_cert(vec![leaf.der.clone()], leaf.key_der.clone_key()).expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { continue };
            let acceptor = acceptor.clone();
            let hits = h.clone();
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else { return };
                let (_, session) = s.get_ref();
                let cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map_or_else(|| "none".to_string(), |c| sha256_hex(c));
                let sni = session.server_name().unwrap_or("none").to_string();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("absent").to_string();
                    let authority = req.uri().authority().map_or_else(|| "absent".to_string(), |a| a.to_string());
                    let res = http::Response::builder()
                        .header("x-host", host)
                        .header("x-authority", authority)
                        .header("x-version", format!("{:?}", req.version()))
                        .header("x-client-cert", cert.clone())
                        .header("x-sni", sni.clone())
                        .body(full("tls upstream"))
                        .expect("response");
                    async move { Ok::<_, std::convert::Infallible>(res) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// SHA-256 of `der`, lower-case hex.
pub fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
