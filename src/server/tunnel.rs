//! Upgraded connections (WebSocket): once the upstream has answered `101 Switching
//! Protocols`, bytes flow both ways between the client and the upstream until either side
//! closes, nothing moves either way for the idle timeout, or the gateway shuts down.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::body::Done;
use crate::protect::ConnPermit;
use crate::protect::headers::has_token;
use crate::upstream::Loan;

/// Whether `h` asks to upgrade to WebSocket (`Upgrade: websocket` and `Connection: upgrade`,
/// case-insensitive tokens).
pub(crate) fn wants_websocket(h: &http::HeaderMap) -> bool {
    has_token(h, &http::header::UPGRADE, "websocket") && has_token(h, &http::header::CONNECTION, "upgrade")
}

/// Whether `v` is a `Sec-WebSocket-Key`: 16 bytes in base64 (RFC 6455 §4.1).
pub(crate) fn valid_key(v: &http::HeaderValue) -> bool {
    use base64::Engine as _;
    v.len() == 24 && base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).is_ok_and(|b| b.len() == 16)
}

/// Whether a `101` completes the WebSocket handshake for `key`: `Upgrade: websocket` and
/// `Sec-WebSocket-Accept` = base64(SHA-1(key + the RFC 6455 GUID)).
pub(crate) fn wants_websocket_response(h: &http::HeaderMap, key: &http::HeaderValue) -> bool {
    use base64::Engine as _;
    let upgrade = has_token(h, &http::header::UPGRADE, "websocket");
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let want = base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref());
    upgrade && h.get(http::header::SEC_WEBSOCKET_ACCEPT).is_some_and(|v| v.as_bytes() == want.as_bytes())
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64).
pub(crate) fn new_key() -> http::HeaderValue {
    use base64::Engine as _;
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let key = base64::engine::general_purpose::STANDARD.encode(b);
    http::HeaderValue::from_str(&key).unwrap_or_else(|_| http::HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// What a relay holds while it lasts: the upstream connection's breaker slot and in-flight
/// count, the client connection's place under the listener's connection limits, and for
/// an HTTP/2 stream, its count as an open stream.
pub(crate) struct Hold {
    pub(crate) _loan: Option<Loan>,
    pub(crate) _permit: Arc<ConnPermit>,
    pub(crate) _stream: Option<Done>,
}

/// How often a relay checks that its client is still allowed (bans, IP rules).
const RECHECK: Duration = Duration::from_secs(1);

/// Relay between the two upgraded connections until one closes, `idle` passes without a
/// byte either way, `allowed` says no (checked every second), or `stop`; what `hold` holds
/// is released at the end.
pub(crate) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    stop: CancellationToken,
    hold: Hold,
    allowed: impl Fn() -> bool,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let last = Arc::new(AtomicU64::new(crate::clock::mono_ns()));
    let mut a = Active { inner: TokioIo::new(client), last: last.clone() };
    let mut b = Active { inner: TokioIo::new(upstream), last: last.clone() };
    let idle_ns = idle.as_nanos() as u64;
    let watch = async {
        loop {
            let quiet = crate::clock::mono_ns().saturating_sub(last.load(Ordering::Relaxed));
            if quiet >= idle_ns {
                tracing::debug!("Upgraded connection idle; closing");
                return;
            }
            if !allowed() {
                tracing::info!("Upgraded connection's client is now refused (ban or IP rule); closing");
                return;
            }
            tokio::time::sleep(Duration::from_nanos(idle_ns - quiet).min(RECHECK)).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Upgraded connection ended");
            }
        }
        () = watch => {}
        () = stop.cancelled() => {}
    }
    drop(hold);
}

/// An I/O wrapper that stamps the time of every byte read.
struct Active<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(crate::clock::mono_ns(), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
