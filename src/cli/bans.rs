//! `portcullis bans list | add | unban`: automated and manual blocks in force.
//!
//! With `--admin URL` the command talks to a running node (the change is immediate); with
//! `-c FILE` it works on the store the config names, whether or not a node runs (a running
//! node sees the change within a second). Either way the change is recorded in the audit log.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::protect::bans::{REPEAT_MEMORY_MS, Subject};
use crate::store::BanRecord;

#[derive(Debug, Subcommand)]
pub(crate) enum BansCmd {
    /// List the bans in force, longest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ban a client IP or a consumer for a time.
    Add {
        /// `ip:ADDRESS`, an address, or `consumer:NAME`.
        key: String,
        /// How long, like 15m, 2h or 7d.
        #[arg(long = "for")]
        len: String,
        /// Why (kept with the ban and in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban (and forget the key's earlier offences).
    Unban {
        /// `ip:ADDRESS`, an address, or `consumer:NAME`.
        key: String,
    },
}

fn print_list(list: &[BanRecord], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    println!("{:<44} {:<24} {:>10} {:>8}  REASON", "KEY", "UNTIL", "LEFT", "OFFENCES");
    let now = crate::clock::unix_ms();
    for b in list {
        let until = crate::observe::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(b.until_ms.max(0) as u64));
        let left = format!("{}s", ((b.until_ms - now).max(0) as u64).div_ceil(1000));
        println!("{:<44} {:<24} {:>10} {:>8}  {}", b.key, until, left, b.offences, b.reason);
    }
    if list.is_empty() {
        eprintln!("no bans in force");
    }
}

fn key_of(key: &str) -> Result<String, ExitCode> {
    match Subject::parse(key) {
        Some(s) => Ok(s.to_string()),
        None => {
            eprintln!(
                "`{key}` is not a ban key: expected ip:ADDRESS, ip:NETWORK/LEN, an address or network, or consumer:NAME"
            );
            Err(ExitCode::from(1))
        }
    }
}

/// Run a `bans` command online (`admin`) or on the store of `config`.
pub(crate) fn run(config: &Path, admin: Option<&str>, cmd: BansCmd) -> ExitCode {
    match admin {
        Some(url) => online(url, cmd),
        None => offline(config, cmd),
    }
}

fn online(url: &str, cmd: BansCmd) -> ExitCode {
    use http::Method;
    let result = match &cmd {
        BansCmd::List { .. } => super::status::call(Some(url), None, Method::GET, "/api/v1/bans", None),
        BansCmd::Add { key, len, reason } => {
            let body = serde_json::json!({ "key": key, "for": len, "reason": reason });
            super::status::call(Some(url), None, Method::POST, "/api/v1/bans", Some(body))
        }
        BansCmd::Unban { key } => match key_of(key) {
            Ok(k) => {
                let path = format!("/api/v1/bans/{}", percent(&k));
                super::status::call(Some(url), None, Method::DELETE, &path, None)
            }
            Err(code) => return code,
        },
    };
    let doc = match result {
        Ok((_, doc)) => doc,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match cmd {
        BansCmd::List { json } => {
            let list: Vec<BanRecord> = serde_json::from_value(doc).unwrap_or_default();
            print_list(&list, json);
        }
        BansCmd::Add { .. } => {
            let key = doc.get("key").and_then(Value::as_str).unwrap_or("?");
            eprintln!("{key} banned");
        }
        BansCmd::Unban { key } => eprintln!("ban of {key} lifted"),
    }
    ExitCode::SUCCESS
}

/// Percent-encode a ban key for a URL path (IPv6 colons and any byte of a name are safe).
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn offline(config: &Path, cmd: BansCmd) -> ExitCode {
    match cmd {
        BansCmd::List { json } => super::identity::with_store(config, async move |s| {
            let (list, _) = s.bans(crate::clock::unix_ms()).await?;
            print_list(&list, json);
            Ok(ExitCode::SUCCESS)
        }),
        BansCmd::Add { key, len, reason } => {
            let key = match key_of(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let Some(len) = crate::protect::bans::operator_ban_length(&len) else {
                eprintln!("--for must be a duration like 15m, 2h or 7d (at most 365d)");
                return ExitCode::from(1);
            };
            let reason = crate::protect::bans::operator_reason(reason);
            super::identity::with_store(config, async move |s| {
                let now = crate::clock::unix_ms();
                let (known, _) = s.bans(now - REPEAT_MEMORY_MS).await?;
                let offences = known.iter().find(|b| b.key == key).map_or(1, |b| b.offences.saturating_add(1));
                let rec = BanRecord {
                    key: key.clone(),
                    reason,
                    created_ms: now,
                    until_ms: now + i64::try_from(len.as_millis()).unwrap_or(i64::MAX / 2),
                    offences,
                };
                s.put_ban(&rec, now - REPEAT_MEMORY_MS).await?;
                let detail = serde_json::json!({
                    "key": rec.key, "reason": rec.reason, "until_ms": rec.until_ms, "offences": rec.offences,
                });
                super::identity::audit(&*s, "ban", detail).await?;
                eprintln!("{key} banned for {}s", len.as_secs());
                Ok(ExitCode::SUCCESS)
            })
        }
        BansCmd::Unban { key } => {
            let key = match key_of(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            super::identity::with_store(config, async move |s| {
                let (removed, _) = s.remove_ban(&key).await?;
                if !removed {
                    eprintln!("{key} is not banned");
                    return Ok(ExitCode::from(1));
                }
                super::identity::audit(&*s, "unban", serde_json::json!({ "key": key, "was_banned": true })).await?;
                eprintln!("ban of {key} lifted");
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}
