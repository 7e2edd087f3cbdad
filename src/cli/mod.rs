//! The command line: `run`, `validate`, `explain`, `status`, `consumers`, `keys`, `bans`, `audit`,
//! `demo`.
//!
//! Exit codes: 0 success, 1 invalid input or refused, 2 usage error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::observe;
use crate::server::{Gateway, StartOptions, source_hash, watch_config};

mod audit;
mod bans;
mod explain;
mod identity;
mod status;

/// Runs once the gateway's listeners are bound (the demo starts its backends here).
pub(crate) type OnReady = Box<dyn FnOnce(&Gateway) + Send>;

/// Portcullis, a security-first integration gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the gateway with a config file.
    Run {
        /// Config file (YAML).
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Check a config file; print each error as FILE:LINE:COL: field.path: message.
    Validate {
        /// Config file (YAML).
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Show which route a request would take, and why the others did not match.
    Explain {
        /// Config file (YAML).
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Request method, like GET.
        method: String,
        /// Request URL: http://host/path?query, or just /path.
        url: String,
        /// A request header, 'Name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The listener the request arrives on (routes with `match.listeners` take only theirs;
        /// without it, any).
        #[arg(short = 'l', long = "listener")]
        listener: Option<String>,
    },
    /// One screen about a running node: config version, listeners, upstream health.
    /// The admin token is read from PORTCULLIS_ADMIN_TOKEN.
    Status {
        /// Admin API URL (default: the config's admin.bind, else http://127.0.0.1:9901).
        #[arg(long = "admin")]
        admin: Option<String>,
        /// Config file, to find the admin listener.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Print the JSON document instead.
        #[arg(long)]
        json: bool,
    },
    /// Manage consumers (identities that may call APIs) in the store the config names.
    Consumers {
        /// Config file naming the store (`node.store`).
        #[arg(short = 'c', long = "config", global = true, default_value = "portcullis.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        cmd: identity::ConsumersCmd,
    },
    /// Issue, list and revoke API keys in the store the config names.
    Keys {
        /// Config file naming the store (`node.store`).
        #[arg(short = 'c', long = "config", global = true, default_value = "portcullis.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        cmd: identity::KeysCmd,
    },
    /// List, add and lift bans: on a running node with --admin URL (token from
    /// PORTCULLIS_ADMIN_TOKEN), else in the store the config names.
    Bans {
        /// Config file naming the store (`node.store`).
        #[arg(short = 'c', long = "config", global = true, default_value = "portcullis.yaml")]
        config: PathBuf,
        /// Admin API URL of a running node (instead of the store).
        #[arg(long = "admin", global = true)]
        admin: Option<String>,
        #[command(subcommand)]
        cmd: bans::BansCmd,
    },
    /// Read the audit log (a hash chain in the store the config names).
    Audit {
        /// Config file naming the store (`node.store`).
        #[arg(short = 'c', long = "config", global = true, default_value = "portcullis.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Start the gateway on examples/quickstart.yaml with two built-in sample backends.
    Demo {
        /// Config file (defaults to examples/quickstart.yaml, or a built-in copy of it).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match cli.cmd {
        Cmd::Validate { config } => validate(&config),
        Cmd::Explain { config, method, url, headers, listener } => {
            explain::run(&config, &method, &url, &headers, listener.as_deref())
        }
        Cmd::Consumers { config, cmd } => identity::consumers(&config, cmd),
        Cmd::Keys { config, cmd } => identity::keys(&config, cmd),
        Cmd::Audit { config, cmd } => audit::run(&config, cmd),
        Cmd::Bans { config, admin, cmd } => bans::run(&config, admin.as_deref(), cmd),
        Cmd::Status { admin, config, json } => status::run(admin.as_deref(), config.as_deref(), json),
        Cmd::Run { config } => {
            observe::init_logging();
            match load_or_report(&config) {
                Some((cfg, hash)) => run(cfg, Some((config, hash)), None, admin_token_from_env()),
                None => ExitCode::from(1),
            }
        }
        Cmd::Demo { config } => {
            observe::init_logging();
            crate::demo::run(config)
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(_) => {
            eprintln!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

/// Read and validate a config file, printing every error; with the text's fingerprint.
pub(crate) fn load_or_report(path: &Path) -> Option<(Config, u64)> {
    let loaded = config::read(path).and_then(|text| {
        config::parse(&path.display().to_string(), &text).map(|c| {
            let h = source_hash(&text, &c);
            (c, h)
        })
    });
    match loaded {
        Ok(c) => Some(c),
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            None
        }
    }
}

/// The admin token from `PORTCULLIS_ADMIN_TOKEN`; a short one is refused (with a warning)
/// rather than guarded by.
pub(crate) fn admin_token_from_env() -> Option<String> {
    let t = std::env::var("PORTCULLIS_ADMIN_TOKEN").ok()?;
    let t = t.trim().to_string();
    if t.len() < crate::admin::MIN_TOKEN_LEN {
        tracing::warn!("PORTCULLIS_ADMIN_TOKEN is shorter than 16 characters: ignored, the admin API stays locked");
        return None;
    }
    Some(t)
}

/// Build the runtime the config asks for and serve until SIGTERM or SIGINT.
/// `on_ready` runs once the listeners are bound.
/// `source` is the config file and the fingerprint of the text `cfg` was parsed from.
/// `admin_token` opens the admin API.
pub(crate) fn run(
    cfg: Config,
    source: Option<(PathBuf, u64)>,
    on_ready: Option<OnReady>,
    admin_token: Option<String>,
) -> ExitCode {
    let workers = cfg.node.workers.map(|w| w.get());
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers
        && n > 1
    {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(serve(cfg, source, on_ready, admin_token))
}

async fn serve(
    cfg: Config,
    source: Option<(PathBuf, u64)>,
    on_ready: Option<OnReady>,
    admin_token: Option<String>,
) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal that arrives while we bind must not kill the process.
    let (mut term, mut int, hup) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                eprintln!("cannot install signal handlers");
                return ExitCode::from(1);
            }
        };
    let node = cfg.node.name.clone();
    let (path, hash) = match source {
        Some((p, h)) => (Some(p), h),
        None => (None, 0),
    };
    let options = StartOptions { admin_token };
    let gw = match Gateway::start_with(cfg, path, hash, options).await {
        Ok(gw) => gw,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start");
            return ExitCode::from(1);
        }
    };
    tokio::spawn(watch_config(gw.clone(), Some(hup)));
    tracing::info!(node = %node, config_version = gw.snapshot().version, "Portcullis started");
    if let Some(f) = on_ready {
        f(&gw);
    }
    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Read now: a reload may have changed it.
    let grace = gw.snapshot().config.node.shutdown_grace;
    tracing::info!(
        signal = sig,
        grace_ms = grace.as_millis() as u64,
        "Shutting down: no new connections, draining requests"
    );
    if gw.shutdown(grace).await {
        tracing::info!("Drained; bye");
    } else {
        tracing::warn!("Grace period over with requests still in flight; closing them");
    }
    ExitCode::SUCCESS
}
