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
