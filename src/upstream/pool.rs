//! Connections to one target: a pool of keep-alive HTTP/1.1 connections, or one shared
//! HTTP/2 connection.
//!
//! HTTP/1.1: checkout pops the most recently used idle connection (LIFO keeps few
//! connections warm), and a connection goes back only when its response body has been read
//! to the end, so an unread body never poisons the next request. HTTP/2: every request
//! shares one multiplexed connection, replaced when it closes. No task is spawned and nothing
//! is allocated per request beyond what hyper does.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Held, ProxyBody};
use crate::net::{Connector, DialError};

/// Idle connections kept per target.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: many servers close
/// idle connections after 60 s, and reusing one they are closing loses the request.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);
/// HTTP/2 keep-alive: a PING after this long without frames, and the connection is given up
/// if the answer takes longer than `H2_PING_TIMEOUT`.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control windows towards upstreams: 1 MiB per stream, 32 MiB per connection,
/// so it takes 32 stalled streams to stall a connection, and a connection buffers at most
/// 32 MiB of response data its clients have not read.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 32 << 20;

/// A connection ready for one exchange.
#[derive(Debug)]
pub(crate) enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    /// Whether requests go out as HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Send `req`; an error hands back a request that was never sent.
    pub(crate) async fn try_send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// Connections to one target.
#[derive(Debug)]
pub(crate) struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    connector: Arc<Connector>,
    // Locked for a push or a pop only, never across an await.
    idle: Mutex<Vec<(http1::SendRequest<ProxyBody>, Instant)>>,
    /// The shared HTTP/2 connection, if one is open.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// The connector may open HTTP/2 connections (else `h2` is never looked at).
    may_be_h2: bool,
    /// Held while an HTTP/2 connection is being opened (`protocol: h2`), so that requests
    /// arriving meanwhile share it rather than each opening one.
    connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// Idle keep-alive connections that could be used now (closed or too old ones, which
    /// leave the list at the next checkout, are not counted); an open HTTP/2 connection
    /// counts as one.
    pub(crate) fn idle_count(&self) -> usize {
        let h1 = self.idle.lock().iter().filter(|(s, at)| !s.is_closed() && at.elapsed() <= MAX_IDLE_AGE).count();
        h1 + usize::from(self.h2.lock().as_ref().is_some_and(|s| !s.is_closed()))
    }

    /// How targets are reached (shared with the health probes).
    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Resolving, TCP connect or the TLS handshake failed, or took longer than
    /// `timeouts.connect`.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The HTTP handshake failed.
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
}

impl Pool {
    pub(crate) fn new(authority: Authority, connect_timeout: Duration, connector: Arc<Connector>) -> Self {
        let may_be_h2 = connector.may_be_h2();
        Pool {
            authority,
            connect_timeout,
            connector,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            may_be_h2,
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn shared_h2(&self) -> Option<Sender> {
        self.h2.lock().as_ref().filter(|s| s.is_ready()).map(|s| Sender::H2(s.clone()))
    }

    /// A connection ready for one request; the flag says whether it was reused.
    pub(crate) async fn checkout(&self) -> Result<(Sender, bool), ConnectError> {
        if self.may_be_h2 {
            if let Some(tx) = self.shared_h2() {
                return Ok((tx, true));
            }
            if self.connector.always_h2() {
                // One connection attempt at a time; who waited uses what it opened.
                let _one = self.connecting.lock().await;
                if let Some(tx) = self.shared_h2() {
                    return Ok((tx, true));
                }
                return self.connect().await.map(|tx| (tx, false));
            }
        }
        loop {
            let Some((tx, since)) = self.idle.lock().pop() else { break };
            // Not ready means the previous exchange is still going (the upstream answered
            // before the request body was all sent): never wait behind another client's
            // upload; drop our handle and let that exchange finish on its own.
            if tx.is_ready() && since.elapsed() <= MAX_IDLE_AGE {
                return Ok((Sender::H1(tx), true));
            }
        }
        self.connect().await.map(|tx| (tx, false))
    }

    /// Return a connection whose exchange is complete.
    pub(crate) fn checkin(&self, tx: Sender) {
        if tx.is_closed() || !tx.is_ready() {
            return;
        }
        match tx {
            Sender::H1(tx) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push((tx, Instant::now()));
                }
            }
            // The pool holds the shared connection already.
            Sender::H2(_) => {}
        }
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let (stream, h2) = self.connector.open(&self.authority, self.connect_timeout).await?;
        let io = TokioIo::new(stream);
        if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                // Every stream to the target shares this connection: a few clients that stop
                // reading must not use up its whole window and stall everyone else's.
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(false);
            let (tx, conn) = b.handshake(io).await.map_err(ConnectError::Handshake)?;
            tokio::spawn(async move {
                // Ends when the upstream closes or the last sender is dropped.
                let _ = conn.await;
            });
            *self.h2.lock() = Some(tx.clone());
            return Ok(Sender::H2(tx));
        }
        let (tx, conn) = http1::Builder::new().handshake(io).await.map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            // With upgrades: a `101` hands the connection over to a WebSocket relay.
            let _ = conn.with_upgrades().await;
        });
        Ok(Sender::H1(tx))
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
