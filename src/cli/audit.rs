//! `portcullis audit verify` and `portcullis audit tail`: read the audit log's hash chain in
//! the store the config names.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::identity::{time, with_store};
use crate::store::audit::{to_hex, verify};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the whole chain; exit 1 and name the first bad record if it is broken.
    Verify {
        /// A record pinned earlier, `SEQ:HASH` (from `audit tail`): it must still be there with
        /// that hash, which catches a truncated or wholly rewritten chain.
        #[arg(long = "expect")]
        expect: Option<String>,
    },
    /// Print the newest records, oldest first, and the hash of the newest.
    Tail {
        /// How many.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: u32,
        /// Print JSON, one record a line.
        #[arg(long)]
        json: bool,
    },
}

/// `SEQ:HASH` → (seq, lower-case hash).
fn parse_pin(s: &str) -> Option<(i64, String)> {
    let (seq, hash) = s.split_once(':')?;
    let seq: i64 = seq.parse().ok().filter(|n| *n >= 1)?;
    let hash = hash.to_ascii_lowercase();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((seq, hash))
}

pub(crate) fn run(path: &Path, cmd: AuditCmd) -> ExitCode {
    // Reading the log never creates a store: a wrong path must not read as "0 records, intact".
    if let Ok(cfg) = crate::config::load(path)
        && let Some(crate::config::StoreUrl::Sqlite(db)) = &cfg.node.store
        && !db.exists()
    {
        eprintln!("no store at {} (node.store in {})", db.display(), path.display());
        return ExitCode::from(1);
    }
    match cmd {
        AuditCmd::Verify { expect } => {
            let pin = match expect.as_deref().map(parse_pin) {
                Some(Some(p)) => Some(p),
                Some(None) => {
                    eprintln!("--expect takes SEQ:HASH (a record number and its 64-hex-digit hash)");
                    return ExitCode::from(2);
                }
                None => None,
            };
            with_store(path, async move |s| {
                let n = match verify(&*s).await? {
                    Ok(n) => n,
                    Err(b) => {
                        println!("broken at record {}: {}", b.seq, b.why);
                        return Ok(ExitCode::from(1));
                    }
                };
                if let Some((seq, hash)) = &pin {
                    let seq = *seq;
                    let found = s.audit_after(seq - 1, 1).await?.into_iter().next().filter(|r| r.seq == seq);
                    match found {
                        None => {
                            println!("broken at record {seq}: the pinned record is gone (the log was truncated)");
                            return Ok(ExitCode::from(1));
                        }
                        Some(r) if to_hex(&r.hash) != *hash => {
                            println!(
                                "broken at record {seq}: its hash is not the pinned one (the chain was rewritten)"
                            );
                            return Ok(ExitCode::from(1));
                        }
                        Some(_) => {}
                    }
                }
                let pinned = if pin.is_some() { ", the pinned record matches" } else { "" };
                println!("ok: {n} records, the chain is intact{pinned}");
                Ok(ExitCode::SUCCESS)
            })
        }
        AuditCmd::Tail { n, json } => with_store(path, async move |s| {
            let list = s.audit_last(n.clamp(1, 100_000)).await?;
            for r in &list {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!(
                        "{:>6} {} {:<10} {:<18} {:<24} {}",
                        r.seq,
                        time(r.time_ms / 1000),
                        r.node,
                        r.kind,
                        r.actor,
                        r.detail
                    );
                }
            }
            if let (Some(last), false) = (list.last(), json) {
                eprintln!(
                    "newest: {}:{}   (pin it: audit verify --expect {}:{})",
                    last.seq,
                    to_hex(&last.hash),
                    last.seq,
                    to_hex(&last.hash)
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}
