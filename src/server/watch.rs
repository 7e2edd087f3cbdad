//! Reload triggers: the config file changing on disk (debounced) and SIGHUP.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Gateway, Reloaded};

/// Debounce for bursts of file events (editors write, rename and chmod in quick succession).
const DEBOUNCE: Duration = Duration::from_millis(200);

fn log_result(trigger: &str, r: Result<Reloaded, super::GatewayStartError>) {
    match r {
        Ok(Reloaded::Applied(v)) => tracing::info!(trigger, config_version = v, "Reloaded"),
        Ok(Reloaded::Unchanged(v)) => {
            tracing::debug!(trigger, config_version = v, "Config unchanged")
        }
        Err(super::GatewayStartError::Config(errs)) => {
            for e in &errs.0 {
                tracing::error!(trigger, error = %e, "Reload refused: the running config stays in force");
            }
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "Reload failed: the running config stays in force")
        }
    }
}

/// Reload `gw` whenever its config file changes or a signal arrives on `hup` (SIGHUP;
/// install it before the gateway starts, so an early SIGHUP cannot kill the process), until
/// the gateway's shutdown begins. Spawn it.
pub async fn watch_config(gw: Gateway, mut hup: Option<tokio::signal::unix::Signal>) {
    let Some(path) = gw.config_path().map(PathBuf::from) else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<()>(16);
    // Watch the directory: editors and config managers replace files by rename.
    let dir =
        path.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|f| f.to_os_string());
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Changes only (our own reads of the file raise Access events), to the file or to a
        // `..`-prefixed entry (the symlink swap Kubernetes uses for mounted ConfigMaps).
        if let Ok(ev) = ev
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|f| Some(f.to_os_string()) == file_name || f.to_string_lossy().starts_with(".."))
            })
        {
            let _ = tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot watch the config file; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch the config file; reload with SIGHUP");
            None
        }
    };
    if watcher.is_some() {
        // A change made between the start (or the last apply) and the watch taking effect
        // raised no event: look once. An unchanged file costs a read and a parse, no apply.
        log_result("file", gw.reload().await);
    }
    let shutdown = gw.inner.shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                log_result("file", gw.reload().await);
            }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                log_result("SIGHUP", gw.reload().await);
            }
        }
    }
}
