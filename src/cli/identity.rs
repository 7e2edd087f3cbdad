//! `portcullis consumers …` and `portcullis keys …`: work on the store the config names,
//! whether or not a node is running (a running node sees the change within a second).
//!
//! Only a new key goes to stdout (so `KEY=$(portcullis keys issue app1 -c gw.yaml)` works);
//! everything else a person reads goes to stderr unless it is the listing asked for.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use crate::auth::apikey;
use crate::config::{self, StoreUrl};
use crate::store::{KeyRecord, Store, StoreError};

#[derive(Debug, Subcommand)]
pub(crate) enum ConsumersCmd {
    /// Add a consumer.
    Add {
        /// Its name: 1-64 letters, digits, `-`, `_` or `.`.
        name: String,
        /// A group it belongs to (repeatable).
        #[arg(short = 'g', long = "group")]
        groups: Vec<String>,
    },
    /// List consumers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a consumer and all its keys.
    Remove {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Issue a new API key for a consumer; the key is printed once, on stdout.
    Issue {
        /// The consumer.
        consumer: String,
    },
    /// List keys (ids, never the keys), of one consumer or all.
    List {
        /// Only this consumer's.
        consumer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (running nodes refuse it within a second).
    Revoke {
        /// The key id (the 12 hex digits after `pcl_`), or the whole key.
        id: String,
    },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Open the store the config at `path` names, then run `f` on it.
pub(crate) fn with_store<F>(path: &Path, f: F) -> ExitCode
where
    F: AsyncFnOnce(Arc<dyn Store>) -> Result<ExitCode, StoreError>,
{
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            return ExitCode::from(1);
        }
    };
    let Some(url) = cfg.node.store else {
        eprintln!("{}: the config names no store; add `node: {{ store: \"sqlite://portcullis.db\" }}`", path.display());
        return ExitCode::from(1);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let store = match crate::store::open(&url).await {
            Ok(s) => s,
            Err(e) => {
                let StoreUrl::Sqlite(p) = &url;
                eprintln!("cannot open the store {}: {e}", p.display());
                return ExitCode::from(1);
            }
        };
        let result = f(store.clone()).await;
        store.close().await;
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Append a record of what this command changed to the audit log.
/// A failure here leaves the change made but unrecorded: said on stderr, and the command
/// still succeeds (a key already issued must not be lost).
pub(crate) async fn audit(s: &dyn Store, kind: &str, detail: serde_json::Value) -> Result<(), StoreError> {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    // Under sudo, who asked matters as much as whose account ran it.
    let user = match std::env::var("SUDO_USER") {
        Ok(by) if by != user => format!("{user}(sudo:{by})"),
        _ => user,
    };
    let e = crate::store::audit::AuditEvent {
        time_ms: crate::clock::unix_ms(),
        node: "cli".into(),
        kind: kind.into(),
        actor: format!("cli:{user}"),
        detail: detail.to_string(),
    };
    if let Err(err) = s.append_audit(&e).await {
        eprintln!("warning: the change is made but could not be recorded in the audit log: {err}");
    }
    Ok(())
}

pub(crate) fn time(secs: i64) -> String {
    crate::observe::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}

pub(crate) fn consumers(path: &Path, cmd: ConsumersCmd) -> ExitCode {
    match cmd {
        ConsumersCmd::Add { name, groups } => {
            if let Some(bad) = std::iter::once(&name).chain(&groups).find(|s| !valid_name(s)) {
                eprintln!("invalid name `{bad}`: 1-64 letters, digits, `-`, `_` or `.`");
                return ExitCode::from(1);
            }
            with_store(path, async move |s| {
                s.add_consumer(&name, &groups).await?;
                audit(&*s, "consumer_added", serde_json::json!({ "consumer": name, "groups": groups })).await?;
                eprintln!("consumer `{name}` added");
                Ok(ExitCode::SUCCESS)
            })
        }
        ConsumersCmd::List { json } => with_store(path, async move |s| {
            let list = s.consumers().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                println!("{:<32} {:<24} GROUPS", "NAME", "ADDED");
                for c in list {
                    println!("{:<32} {:<24} {}", c.name, time(c.created), c.groups.join(","));
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        ConsumersCmd::Remove { name } => with_store(path, async move |s| {
            if s.remove_consumer(&name).await? {
                audit(&*s, "consumer_removed", serde_json::json!({ "consumer": name })).await?;
                eprintln!("consumer `{name}` and its keys removed");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no consumer `{name}`");
                Ok(ExitCode::from(1))
            }
        }),
    }
}

pub(crate) fn keys(path: &Path, cmd: KeysCmd) -> ExitCode {
    match cmd {
        KeysCmd::Issue { consumer } => with_store(path, async move |s| {
            let new = apikey::generate().map_err(|_| StoreError::Corrupt("no randomness available".into()))?;
            let rec = KeyRecord {
                id: new.id.clone(),
                consumer: consumer.clone(),
                digest: new.digest,
                created: crate::store::now(),
                revoked: None,
            };
            s.add_key(&rec).await?;
            println!("{}", new.key);
            audit(&*s, "key_issued", serde_json::json!({ "consumer": consumer, "key_id": new.id })).await?;
            eprintln!("key {} issued to `{consumer}`; it is shown only this once", new.id);
            Ok(ExitCode::SUCCESS)
        }),
        KeysCmd::List { consumer, json } => with_store(path, async move |s| {
            let list = s.keys(consumer.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                println!("{:<14} {:<32} {:<24} REVOKED", "ID", "CONSUMER", "ISSUED");
                for k in list {
                    let revoked = k.revoked.map_or_else(|| "-".to_string(), time);
                    println!("{:<14} {:<32} {:<24} {}", k.id, k.consumer, time(k.created), revoked);
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        KeysCmd::Revoke { id } => {
            // A whole key may be pasted: revoke by its id, without echoing it.
            let id = apikey::parse_id(id.as_bytes()).map(str::to_string).unwrap_or(id);
            if !apikey::valid_id(&id) {
                eprintln!("`{id}` is not a key id (12 hex digits)");
                return ExitCode::from(1);
            }
            with_store(path, async move |s| {
                if s.revoke_key(&id).await? {
                    audit(&*s, "key_revoked", serde_json::json!({ "key_id": id })).await?;
                    eprintln!("key {id} revoked");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no active key {id}");
                    Ok(ExitCode::from(1))
                }
            })
        }
    }
}
