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
    Verify,
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
        AuditCmd::Verify => with_store(path, async move |s| match verify(&*s).await? {
            Ok(n) => {
                println!("ok: {n} records, the chain is intact");
                Ok(ExitCode::SUCCESS)
            }
            Err(b) => {
                println!("broken at record {}: {}", b.seq, b.why);
                Ok(ExitCode::from(1))
            }
        }),
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
                eprintln!("newest hash: {}", to_hex(&last.hash));
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}
