//! Keep-alive connection pools, one per target.
//!
//! A lean pool on hyper's HTTP/1 client connections: checkout pops the most recently used
//! idle connection (LIFO keeps few connections warm), and a connection goes back only when
//! its response body has been read to the end, so an unread body never poisons the next
//! request. No task is spawned and nothing is allocated per request beyond what hyper does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ProxyBody;

/// Idle connections kept per target.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: many servers close
/// idle connections after 60 s, and reusing one they are closing loses the request.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

type Sender = SendRequest<ProxyBody>;

/// Idle connections to one target.
#[derive(Debug)]
pub(crate) struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    // Locked for a push or a pop only, never across an await.
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target name did not resolve.
    #[error("resolving the target failed")]
    Resolve(#[source] io::Error),
    /// TCP connect failed.
    #[error("connect failed")]
    Connect(#[source] io::Error),
    /// TCP connect took longer than `timeouts.connect`.
    #[error("connect timed out")]
    Timeout,
    /// The HTTP/1 handshake failed.
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
}

impl Pool {
    pub(crate) fn new(authority: Authority, connect_timeout: Duration) -> Self {
        Pool { authority, connect_timeout, idle: Mutex::new(Vec::new()) }
    }

    /// A connection ready for one request; the flag says whether it was reused.
    pub(crate) async fn checkout(&self) -> Result<(Sender, bool), ConnectError> {
        loop {
            let Some((tx, since)) = self.idle.lock().pop() else { break };
            // Not ready means the previous exchange is still going (the upstream answered
            // before the request body was all sent): never wait behind another client's
            // upload; drop our handle and let that exchange finish on its own.
            if tx.is_ready() && since.elapsed() <= MAX_IDLE_AGE {
                return Ok((tx, true));
            }
        }
        self.connect().await.map(|tx| (tx, false))
    }

    /// Return a connection whose exchange is complete.
    pub(crate) fn checkin(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push((tx, Instant::now()));
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse() {
            return Ok(SocketAddr::new(ip, port));
        }
        tokio::net::lookup_host((host, port))
            .await
            .map_err(ConnectError::Resolve)?
            .next()
            .ok_or_else(|| ConnectError::Resolve(io::Error::new(io::ErrorKind::NotFound, "no address")))
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let started = Instant::now();
        let addr =
            tokio::time::timeout(self.connect_timeout, self.resolve()).await.map_err(|_| ConnectError::Timeout)??;
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        let stream = tokio::time::timeout(left, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            // Ends when the upstream closes or the last sender is dropped.
            let _ = conn.await;
        });
        Ok(tx)
    }
}

/// A connection on loan for one exchange; goes back to its pool when the response body
/// has been read to the end (and is closed if it is dropped before that).
#[derive(Debug)]
pub struct Loan {
    tx: Sender,
    pool: Arc<Pool>,
}

impl Loan {
    pub(crate) fn new(tx: Sender, pool: Arc<Pool>) -> Self {
        Loan { tx, pool }
    }

    /// The exchange is complete: the connection may serve the next request.
    pub fn give_back(self) {
        self.pool.checkin(self.tx);
    }
}
