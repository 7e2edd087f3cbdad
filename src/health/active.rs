//! Active health checks: a GET of a configured path to each target, on an interval.
//!
//! One task per target per config version, stopped when that version is replaced. A probe
//! opens its own connection (so it also proves the target accepts new connections), sends
//! `Connection: close`, and passes if the response head arrives within `timeout` with an
//! accepted status. `unhealthy_after` failures in a row take a target out;
//! `healthy_after` passes in a row bring it back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use super::{TargetHealth, jitter};
use crate::config::ActiveHealth;
use crate::net::Connector;

/// Start probing `target` until `stop` is cancelled.
pub fn spawn(target: Arc<TargetHealth>, cfg: Arc<ActiveHealth>, connector: Arc<Connector>, stop: CancellationToken) {
    let generation = target.new_probes();
    tokio::spawn(async move {
        // The first probe soon, but not in step with every other target.
        let mut wait =
            Duration::from_millis(fastrand::u64(0..=cfg.interval.min(Duration::from_secs(1)).as_millis() as u64 / 4));
        let (mut passes, mut fails) = (0u32, 0u32);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = probe(&target, &cfg, &connector) => r,
            };
            match result {
                Ok(detail) => {
                    passes = passes.saturating_add(1);
                    fails = 0;
                    target.probed(generation, true, detail, passes >= cfg.healthy_after);
                }
                Err(detail) => {
                    fails = fails.saturating_add(1);
                    passes = 0;
                    target.probed(generation, false, detail, fails >= cfg.unhealthy_after);
                }
            }
            wait = jitter(cfg.interval);
        }
    });
}

/// One probe: `Ok(status)` if it passed, `Err(why)` if not.
async fn probe(target: &TargetHealth, cfg: &ActiveHealth, connector: &Connector) -> Result<String, String> {
    let run = async {
        let (stream, h2) = connector.open(target.authority(), cfg.timeout).await.map_err(|e| match e {
            crate::net::DialError::Timeout => "connect timed out".to_string(),
            crate::net::DialError::Resolve(_) => "name did not resolve".to_string(),
            crate::net::DialError::Connect(e) => format!("connect failed: {}", e.kind()),
            crate::net::DialError::Tls(e) => format!("TLS handshake failed: {e}"),
        })?;
        let io = TokioIo::new(stream);
        let host = match &cfg.host {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(target.authority().as_str()).map_err(|_| "bad host".to_string())?,
        };
        let res = if h2 {
            let (mut tx, conn) = http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io)
                .await
                .map_err(|_| "HTTP/2 handshake failed".to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let scheme = if connector.is_tls() { "https" } else { "http" };
            let authority = host.to_str().map_err(|_| "bad host".to_string())?;
            let req = Request::get(format!("{scheme}://{authority}{}", cfg.path))
                .header(header::USER_AGENT, "portcullis-health-check")
                .body(Empty::new())
                .map_err(|_| "bad probe request".to_string())?;
            tx.send_request(req).await.map_err(|_| "no response".to_string())?
        } else {
            let (mut tx, conn) = http1::Builder::new()
                .handshake::<_, Empty<Bytes>>(io)
                .await
                .map_err(|_| "HTTP handshake failed".to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::get(cfg.path.as_str())
                .header(header::HOST, host)
                .header(header::USER_AGENT, "portcullis-health-check")
                .header(header::CONNECTION, "close")
                .body(Empty::new())
                .map_err(|_| "bad probe request".to_string())?;
            tx.send_request(req).await.map_err(|_| "no response".to_string())?
        };
        let code = res.status().as_u16();
        if cfg.statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)) {
            Ok(code.to_string())
        } else {
            Err(format!("status {code}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}ms", cfg.timeout.as_millis())),
    }
}
