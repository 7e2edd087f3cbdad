//! One downstream connection: the TLS handshake on TLS listeners, protocol detection (ALPN,
//! or HTTP/1.1 and h2c prior knowledge told apart by their first bytes), the hyper
//! connection with its limits, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::pipeline::{ConnCtx, handle};
use crate::config::ListenerLimits;
use crate::observe::new_request_id_string;
use crate::protect::headers::client_ip_value;
use crate::protect::{ConnPermit, ConnState, GuardedIo, HeadLimits};
use crate::tls::{PeerCert, ServerTls};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest wait for an HTTP/2 connection to close after GOAWAY.
const H2_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Concurrent streams per HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 128;

/// Read just enough to tell HTTP/2 prior knowledge from HTTP/1.
async fn sniff<S: AsyncRead + Unpin>(stream: &mut S, deadline: Instant) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        let want = H2_PREFACE.len() - buf.len();
        let mut chunk = [0u8; 24];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((false, buf.freeze())));
        }
        if buf.len() == H2_PREFACE.len() {
            return Ok(Some((true, buf.freeze())));
        }
    }
}

/// The start of an HTTP/2 connection, checked before hyper sees it: the client preface and
/// the header of the first frame, which RFC 9113 §3.4 says MUST be SETTINGS (on stream 0, not
/// an acknowledgement). The h2 crate would serve a request sent before the client's SETTINGS;
/// here such a connection gets GOAWAY(PROTOCOL_ERROR) and is closed. `read` is what was
/// already read (a prefix of the preface); the rest must arrive by `deadline`. Returns the
/// bytes read, to be replayed to hyper, or `None` when the connection is to be dropped.
async fn h2_start<S>(stream: &mut S, read: Bytes, deadline: Instant) -> Option<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const FRAME_HEAD: usize = 9;
    const SETTINGS: u8 = 0x4;
    const ACK: u8 = 0x1;
    let want = H2_PREFACE.len() + FRAME_HEAD;
    let mut buf = BytesMut::with_capacity(want);
    buf.extend_from_slice(&read);
    while buf.len() < want {
        let mut chunk = [0u8; 33];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want - buf.len()])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
        let preface = buf.len().min(H2_PREFACE.len());
        if buf[..preface] != H2_PREFACE[..preface] {
            return None;
        }
    }
    let head = &buf[H2_PREFACE.len()..];
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    if head[3] != SETTINGS || head[4] & ACK != 0 || stream_id != 0 || !len.is_multiple_of(6) {
        // GOAWAY: last stream 0, PROTOCOL_ERROR (0x1). Best effort; the connection ends anyway.
        const GOAWAY: [u8; 17] = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let _ = tokio::time::timeout_at(deadline, stream.write_all(&GOAWAY)).await;
        return None;
    }
    Some(buf.freeze())
}

/// What every request on one connection shares.
struct Conn {
    gw: Arc<Inner>,
    peer: SocketAddr,
    limits: ListenerLimits,
    accepted: Instant,
    cancel: CancellationToken,
    /// The verified client certificate, on TLS listeners that ask for one.
    cert: Option<Arc<PeerCert>>,
    tls: bool,
    /// The connection's place under `max_connections` and `max_connections_per_ip`; shared
    /// with a WebSocket relay, which outlives the HTTP connection.
    permit: Arc<ConnPermit>,
    listener: Arc<str>,
}

impl Conn {
    fn ctx(&self, state: Arc<ConnState>, http1: bool) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            gw: self.gw.clone(),
            peer: self.peer,
            client: self.peer.ip().to_canonical(),
            client_ip: client_ip_value(self.peer.ip()),
            limits: self.limits,
            state: Some(state),
            http1,
            cert: self.cert.clone(),
            tls: self.tls,
            permit: self.permit.clone(),
            listener: self.listener.clone(),
        })
    }
}

/// What the accept loop knows of a connection it hands over.
pub(crate) struct Accepted {
    pub(crate) peer: SocketAddr,
    /// The listener's name.
    pub(crate) listener: Arc<str>,
    pub(crate) gw: Arc<Inner>,
    pub(crate) limits: ListenerLimits,
    /// The listener's TLS, if it terminates TLS.
    pub(crate) tls: Option<Arc<ServerTls>>,
    pub(crate) cancel: CancellationToken,
    /// Its place under the listener's connection limits.
    pub(crate) permit: ConnPermit,
}

/// Serve one accepted connection to the end: TLS first on a TLS listener (ALPN says which
/// HTTP), else HTTP/1.1 or h2c prior knowledge, told apart by the first bytes.
pub(crate) async fn serve(stream: TcpStream, a: Accepted) {
    let Accepted { peer, listener, gw, limits, tls, cancel, permit } = a;
    let accepted = Instant::now();
    let deadline = accepted + limits.header_timeout;
    let permit = Arc::new(permit);
    let mut conn = Conn { gw, peer, limits, accepted, cancel, cert: None, tls: tls.is_some(), permit, listener };
    let Some(tls) = tls else {
        return serve_sniffed(stream, deadline, conn).await;
    };
    // The handshake counts against the header timeout, like the first request's head.
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, TlsAcceptor::from(tls.config()).accept(stream)) => r,
        _ = conn.cancel.cancelled() => return,
    };
    let metrics = &conn.gw.shared.metrics;
    let stream = match handshake {
        Ok(Ok(s)) => {
            metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            s
        }
        Ok(Err(e)) => {
            metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    // rustls handed over only a chain it verified against the listener's CA bundle.
    conn.cert = session.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerCert::parse(c)).map(Arc::new);
    match alpn.as_deref() {
        Some(b"h2") => serve_h2(stream, Bytes::new(), deadline, conn).await,
        Some(_) => serve_h1(stream, Bytes::new(), conn).await,
        // No ALPN: the first bytes tell, as on a plain listener.
        None => serve_sniffed(stream, deadline, conn).await,
    }
}

/// HTTP/1.1 or HTTP/2 prior knowledge, as the first bytes (read by `deadline`) tell.
async fn serve_sniffed<S>(mut stream: S, deadline: Instant, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sniffed = tokio::select! {
        r = sniff(&mut stream, deadline) => r,
        _ = conn.cancel.cancelled() => return,
    };
    match sniffed {
        Ok(Some((true, prefix))) => serve_h2(stream, prefix, deadline, conn).await,
        Ok(Some((false, prefix))) => serve_h1(stream, prefix, conn).await,
        Ok(None) | Err(_) => {}
    }
}

/// Serve HTTP/2 on `io`, of which `read` (part of the client preface) was read already.
async fn serve_h2<S>(mut io: S, read: Bytes, deadline: Instant, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = tokio::select! {
        s = h2_start(&mut io, read, deadline) => s,
        _ = conn.cancel.cancelled() => return,
    };
    let Some(prefix) = start else {
        return;
    };
    let io = Rewind { prefix, inner: io };
    let limits = conn.limits;
    // The same counters as HTTP/1, here counting open streams for the idle timeout, and
    // the response bodies waiting for the client to take their bytes.
    let state = Arc::new(ConnState::h2());
    let ctx = conn.ctx(state.clone(), false);
    let svc = service_fn(move |req| handle(ctx.clone(), req));
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        // h2's defaults, set so that a change of them cannot lift these limits quietly:
        // resets of streams not yet accepted (rapid reset), and streams we reset ourselves.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        // RFC 8441: WebSocket over HTTP/2 streams (extended CONNECT).
        .enable_connect_protocol();
    let h2 = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(h2);
    // Idle: no stream open and none started or finished over a whole idle_timeout
    // (so a connection closes between 1x and 2x idle_timeout after its last stream).
    let mut seen = state.counters();
    // Slow reader: a response body that has waited for the client (for flow-control
    // window, or for the socket to drain) over a whole idle_timeout closes the connection,
    // as HTTP/1's write-stall cut does (CVE-2019-9511 / 9517 shapes: the client answers
    // PINGs but takes no data).
    let mut waits_seen = None;
    let idle = loop {
        tokio::select! {
            _ = h2.as_mut() => return,
            _ = conn.cancel.cancelled() => break false,
            () = state.abusive() => {
                conn.gw.shared.metrics.h2_abusive_closes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = %conn.peer, "HTTP/2 client cancels most of its requests (rapid reset); closing the connection");
                // At once: a graceful close would take more streams until the client acks.
                return;
            }
            _ = tokio::time::sleep(limits.idle_timeout) => {
                let now = state.counters();
                if now.0 == now.1 && now == seen {
                    break true;
                }
                seen = now;
                let (waiting, resumed) = state.client_waits();
                if waiting > 0 && waits_seen == Some(resumed) {
                    conn.gw.shared.metrics.h2_stalled_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %conn.peer, "HTTP/2 client took no response bytes for idle_timeout; closing the connection");
                    return;
                }
                waits_seen = (waiting > 0).then_some(resumed);
            }
        }
    };
    h2.as_mut().graceful_shutdown();
    if idle {
        // Nothing is in flight; hyper's graceful close still waits for the client's PING
        // ack, and a client that never answers must not hold the connection.
        let _ = tokio::time::timeout(H2_CLOSE_WAIT, h2).await;
    } else {
        // Shutdown: in-flight streams finish within the process's grace period.
        let _ = h2.await;
    }
}

async fn serve_h1<S>(io: S, prefix: Bytes, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = conn.limits;
    let state = Arc::new(ConnState::default());
    let head = HeadLimits {
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
        max_header_bytes: limits.max_header_bytes,
    };
    let io = TokioIo::new(GuardedIo::new(io, prefix, state.clone(), head, conn.accepted, new_request_id_string));
    let ctx = conn.ctx(state, true);
    let svc = service_fn(move |req| handle(ctx.clone(), req));
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size((limits.max_header_bytes + 8192).max(64 * 1024));
    let h1 = b.serve_connection(io, svc).with_upgrades();
    tokio::pin!(h1);
    tokio::select! {
        _ = h1.as_mut() => return,
        _ = conn.cancel.cancelled() => h1.as_mut().graceful_shutdown(),
    }
    let _ = h1.await;
}

pin_project_lite::pin_project! {
    /// Replays bytes already read (sniffed, or the checked start of HTTP/2) before reading
    /// from the stream.
    #[derive(Debug)]
    struct Rewind<T> {
        prefix: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
