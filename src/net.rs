//! Outbound connections: resolving a target's `host:port`, connecting within a deadline, and
//! TLS to `https://` targets ([`Connector`]).
//!
//! Shared by the connection pools (`upstream`) and the health probes (`health`), so both
//! reach a target exactly the same way. Also the HTTP(S) client connector of the gateway's
//! own outbound calls (JWT key fetches, span export).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{UpstreamProtocol, UpstreamTls};
use crate::tls::client::ClientTls;

/// Why a TCP connection to a target could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The target name did not resolve.
    #[error("resolving the target failed")]
    Resolve(#[source] io::Error),
    /// TCP connect failed.
    #[error("connect failed")]
    Connect(#[source] io::Error),
    /// Resolving and connecting took longer than allowed.
    #[error("connect timed out")]
    Timeout,
    /// The TLS handshake failed (the certificate did not verify, no common protocol...).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
}

/// How one upstream's targets are reached: TCP, then TLS for `https://` targets, and which
/// HTTP version is spoken on the connection.
#[derive(Debug)]
pub struct Connector {
    protocol: UpstreamProtocol,
    tls: Option<ClientTls>,
}

/// A connection to a target: plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connector {
    /// For an upstream with this `protocol` and, for `https://` targets, these TLS settings.
    pub fn new(protocol: UpstreamProtocol, tls: Option<&UpstreamTls>) -> Result<Connector, String> {
        let tls = tls.map(|t| ClientTls::new(t, protocol)).transpose()?;
        Ok(Connector { protocol, tls })
    }

    /// Connect to `authority` (TLS included) within `limit`; the stream and whether it
    /// speaks HTTP/2.
    pub async fn open(&self, authority: &Authority, limit: Duration) -> Result<(Stream, bool), DialError> {
        let started = Instant::now();
        let tcp = dial(authority, limit).await?;
        let Some(tls) = &self.tls else {
            return Ok((Stream::Plain(tcp), self.protocol == UpstreamProtocol::H2));
        };
        let left = limit.saturating_sub(started.elapsed());
        let (s, alpn_h2) = tokio::time::timeout(left, tls.connect(tcp, authority))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(DialError::Tls)?;
        // `h2` speaks HTTP/2 even to a server that ignored ALPN; `auto` follows ALPN.
        let h2 = alpn_h2 || self.protocol == UpstreamProtocol::H2;
        Ok((Stream::Tls(Box::new(s)), h2))
    }

    /// Whether every connection speaks HTTP/2 (`protocol: h2`).
    pub fn always_h2(&self) -> bool {
        self.protocol == UpstreamProtocol::H2
    }

    /// Whether connections may speak HTTP/2 (`protocol: h2`, or `auto` over TLS).
    pub fn may_be_h2(&self) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2 => true,
            UpstreamProtocol::Auto => self.tls.is_some(),
        }
    }

    /// Tells TLS settings read from different file contents apart (zero without TLS).
    pub fn tls_files(&self) -> [u8; 32] {
        self.tls.as_ref().map_or([0; 32], ClientTls::files)
    }

    /// Whether targets are reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

async fn resolve(authority: &Authority) -> Result<Vec<SocketAddr>, DialError> {
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(DialError::Resolve)?.take(8).collect();
    if addrs.is_empty() {
        return Err(DialError::Resolve(io::Error::new(io::ErrorKind::NotFound, "no address")));
    }
    Ok(addrs)
}

/// Resolve `authority` and connect to it, all within `limit`; the addresses a name resolves
/// to are tried in turn (`localhost` may be `::1` first while the target listens on
/// 127.0.0.1). Nagle is turned off.
pub async fn dial(authority: &Authority, limit: Duration) -> Result<TcpStream, DialError> {
    let started = Instant::now();
    let addrs = tokio::time::timeout(limit, resolve(authority)).await.map_err(|_| DialError::Timeout)??;
    let mut last = None;
    for addr in addrs {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, TcpStream::connect(addr)).await {
            Err(_) => return Err(DialError::Timeout),
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
        }
    }
    Err(DialError::Connect(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))))
}

/// A connector for the gateway's own HTTP and HTTPS calls: rustls on aws-lc with the system's
/// root certificates (without them, https calls fail with a clear error; http ones work).
pub fn https_connector()
-> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String> {
    let provider = || rustls::crypto::aws_lc_rs::default_provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider())
        .map_err(|e| e.to_string())
        .or_else(|_| {
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider()))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
                })
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("TLS client: {e}"))?;
    Ok(builder.https_or_http().enable_http1().build())
}
