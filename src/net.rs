//! Outbound TCP: resolving a target's `host:port` and connecting within a deadline.
//!
//! Shared by the connection pools (`upstream`) and the health probes (`health`), so both
//! reach a target exactly the same way.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpStream;
use tokio::time::Instant;

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
}

async fn resolve(authority: &Authority) -> Result<SocketAddr, DialError> {
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(DialError::Resolve)?
        .next()
        .ok_or_else(|| DialError::Resolve(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// Resolve `authority` and connect to it, all within `limit`. Nagle is turned off.
pub async fn dial(authority: &Authority, limit: Duration) -> Result<TcpStream, DialError> {
    let started = Instant::now();
    let addr = tokio::time::timeout(limit, resolve(authority)).await.map_err(|_| DialError::Timeout)??;
    let left = limit.saturating_sub(started.elapsed());
    let stream = tokio::time::timeout(left, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
