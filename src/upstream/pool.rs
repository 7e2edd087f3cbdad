//! Keep-alive connection pools, one per target.
//!
//! A lean pool on hyper's HTTP/1 client connections: checkout pops the most recently used
//! idle connection (LIFO keeps few connections warm), and a connection goes back only when
//! its response body has been read to the end, so an unread body never poisons the next
//! request. No task is spawned and nothing is allocated per request beyond what hyper does.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Held, ProxyBody};
use crate::net::{DialError, dial};

/// Idle connections kept per target.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: many servers close
/// idle connections after 60 s, and reusing one they are closing loses the request.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

pub(crate) type Sender = SendRequest<ProxyBody>;

/// Idle connections to one target.
#[derive(Debug)]
pub(crate) struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    // Locked for a push or a pop only, never across an await.
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// Idle keep-alive connections that could be used now (closed or too old ones, which
    /// leave the list at the next checkout, are not counted).
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().iter().filter(|(s, at)| !s.is_closed() && at.elapsed() <= MAX_IDLE_AGE).count()
    }
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Resolving or TCP connect failed, or took longer than `timeouts.connect`.
    #[error(transparent)]
    Dial(#[from] DialError),
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

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let stream = dial(&self.authority, self.connect_timeout).await?;
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
    /// The request's in-flight count and circuit-breaker slot, released with the loan.
    _held: Held,
}

impl Loan {
    pub(crate) fn new(tx: Sender, pool: Arc<Pool>, held: Held) -> Self {
        Loan { tx, pool, _held: held }
    }

    /// The exchange is complete: the connection may serve the next request.
    pub fn give_back(self) {
        self.pool.checkin(self.tx);
    }
}
