//! Turns the YAML tree into a [`Config`], collecting every error with its position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::model::*;
use super::pattern::{HostPattern, PathPattern};
use super::units::{parse_duration, parse_size};
use super::yaml::{Kind, Node, Pos};
use super::{ConfigError, ConfigErrors};

mod auth;
mod protection;
mod tls;

struct Decoder<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Decoder<'_> {
    fn err(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            pos,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// The entries of one mapping, with a record of which keys were read.
struct Fields<'n> {
    path: String,
    entries: &'n [(Node, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

fn key_str(n: &Node) -> &str {
    match &n.kind {
        Kind::Scalar { value, .. } => value,
        _ => "",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

impl<'n> Fields<'n> {
    fn new(d: &mut Decoder<'_>, node: &'n Node, path: &str) -> Option<Self> {
        match &node.kind {
            Kind::Map(entries) => {
                let mut seen: HashMap<&str, ()> = HashMap::new();
                for (k, _) in entries {
                    if seen.insert(key_str(k), ()).is_some() {
                        d.err(k.pos, &join(path, key_str(k)), "duplicate key");
                    }
                }
                Some(Fields { path: path.to_string(), entries, used: vec![false; entries.len()], known: Vec::new() })
            }
            _ => {
                d.err(node.pos, path, format!("expected a mapping, found {}", node.type_name()));
                None
            }
        }
    }

    /// The value under `key`, if present and not null.
    fn get(&mut self, key: &'static str) -> Option<(&'n Node, String)> {
        self.known.push(key);
        let i = self.entries.iter().position(|(k, _)| key_str(k) == key)?;
        self.used[i] = true;
        let v = &self.entries[i].1;
        if v.is_null() { None } else { Some((v, join(&self.path, key))) }
    }

    /// Parse `key` with `parse` into `slot`, if present (left as it is on an error).
    fn set<T>(
        &mut self,
        d: &mut Decoder<'_>,
        key: &'static str,
        parse: impl FnOnce(&mut Decoder<'_>, &Node, &str) -> Option<T>,
        slot: &mut T,
    ) {
        if let Some((n, p)) = self.get(key)
            && let Some(v) = parse(d, n, &p)
        {
            *slot = v;
        }
    }

    /// Refuse a key that names a capability this version does not have yet.
    fn unsupported(&mut self, d: &mut Decoder<'_>, key: &'static str, what: &str) {
        self.known.push(key);
        if let Some(i) = self.entries.iter().position(|(k, _)| key_str(k) == key) {
            self.used[i] = true;
            let k = &self.entries[i].0;
            d.err(k.pos, &join(&self.path, key), format!("{what} is not supported yet in this version of Portcullis"));
        }
    }

    /// Report every key that was never asked for.
    fn finish(self, d: &mut Decoder<'_>) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if !self.used[i] && !self.known.contains(&key_str(k)) {
                let mut known = self.known.clone();
                known.sort_unstable();
                known.dedup();
                d.err(
                    k.pos,
                    &join(&self.path, key_str(k)),
                    format!("unknown field `{}`; expected one of: {}", key_str(k), known.join(", ")),
                );
            }
        }
    }
}

fn scalar<'n>(d: &mut Decoder<'_>, node: &'n Node, path: &str) -> Option<&'n str> {
    match &node.kind {
        Kind::Scalar { value, .. } => Some(value),
        _ => {
            d.err(node.pos, path, format!("expected a value, found {}", node.type_name()));
            None
        }
    }
}

fn name(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<String> {
    let s = scalar(d, node, path)?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        d.err(node.pos, path, format!("invalid name `{s}`: 1-64 letters, digits, `-`, `_` or `.`"));
        return None;
    }
    Some(s.to_string())
}

/// The required `name` of a list item, checked for form and for uniqueness in its list.
fn unique_name(
    d: &mut Decoder<'_>,
    f: &mut Fields<'_>,
    item: &Node,
    item_path: &str,
    seen: &mut HashMap<String, ()>,
    kind: &str,
) -> Option<String> {
    let Some((n, p)) = f.get("name") else {
        d.err(item.pos, &join(item_path, "name"), "missing field `name`");
        return None;
    };
    let v = name(d, n, &p)?;
    if seen.insert(v.clone(), ()).is_some() {
        d.err(n.pos, &p, format!("duplicate {kind} name `{v}`"));
    }
    Some(v)
}

fn boolean(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<bool> {
    match scalar(d, node, path)? {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            d.err(node.pos, path, format!("expected true or false, found `{other}`"));
            None
        }
    }
}

fn duration(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<Duration> {
    let s = scalar(d, node, path)?;
    match parse_duration(s) {
        Ok(v) if v.is_zero() => {
            d.err(node.pos, path, "must be greater than zero");
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            d.err(node.pos, path, e);
            None
        }
    }
}

fn size(d: &mut Decoder<'_>, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let s = scalar(d, node, path)?;
    match parse_size(s) {
        Ok(v) if v < min || v > max => {
            d.err(node.pos, path, format!("must be between {min} and {max} bytes"));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            d.err(node.pos, path, e);
            None
        }
    }
}

fn integer(d: &mut Decoder<'_>, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    let s = scalar(d, node, path)?;
    match s.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            d.err(node.pos, path, format!("expected a whole number from {min} to {max}, found `{s}`"));
            None
        }
    }
}

fn seq<'n>(d: &mut Decoder<'_>, node: &'n Node, path: &str) -> &'n [Node] {
    match &node.kind {
        Kind::Seq(items) => items,
        _ => {
            d.err(node.pos, path, format!("expected a list, found {}", node.type_name()));
            &[]
        }
    }
}

/// Decode and validate a whole file. `file` is the name used in error messages.
pub(super) fn decode(file: &str, root: Option<&Node>) -> Result<Config, ConfigErrors> {
    let mut d = Decoder { file, errors: Vec::new() };
    let top = Pos { line: 1, col: 1 };
    let Some(root) = root else {
        d.err(top, "version", "the file is empty; it needs at least `version: 1`");
        return Err(ConfigErrors(d.errors));
    };
    let cfg = decode_root(&mut d, root);
    match cfg {
        Some(c) if d.errors.is_empty() => Ok(c),
        _ => {
            d.errors.sort_by_key(|e| (e.pos.line, e.pos.col));
            Err(ConfigErrors(d.errors))
        }
    }
}

fn decode_root(d: &mut Decoder<'_>, root: &Node) -> Option<Config> {
    let mut f = Fields::new(d, root, "")?;
    match f.get("version") {
        Some((n, p)) => {
            if let Some(v) = scalar(d, n, &p)
                && v != "1"
            {
                d.err(n.pos, &p, format!("unsupported version `{v}`; this Portcullis reads version 1"));
            }
        }
        None => d.err(root.pos, "version", "missing `version: 1`"),
    }
    let node = match f.get("node") {
        Some((n, p)) => decode_node(d, n, &p),
        None => Some(default_node()),
    };
    let listeners = match f.get("listeners") {
        Some((n, p)) => decode_listeners(d, n, &p),
        None => {
            d.err(root.pos, "listeners", "at least one listener is required");
            Vec::new()
        }
    };
    let upstreams = match f.get("upstreams") {
        Some((n, p)) => decode_upstreams(d, n, &p),
        None => Vec::new(),
    };
    let auth = match f.get("auth") {
        Some((n, p)) => auth::decode_auth(d, n, &p),
        None => AuthConfig::default(),
    };
    let consumers = match f.get("consumers") {
        Some((n, p)) => auth::decode_consumers(d, n, &p),
        None => Vec::new(),
    };
    let routes = match f.get("routes") {
        Some((n, p)) => {
            let has_store = node.as_ref().is_some_and(|n| n.store.is_some());
            let client_certs =
                listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.mode != ClientAuthMode::None));
            let listener_names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
            let cx = RouteContext {
                upstreams: &upstreams,
                auth: &auth,
                has_store,
                client_certs,
                listeners: &listener_names,
            };
            decode_routes(d, n, &p, &cx)
        }
        None => Vec::new(),
    };
    let admin = f.get("admin").and_then(|(n, p)| decode_admin(d, n, &p));
    let protection = f.get("protection").map(|(n, p)| protection::decode_protection(d, n, &p)).unwrap_or_default();
    let (access_log, tracing) =
        f.get("observability").and_then(|(n, p)| decode_observability(d, n, &p)).unwrap_or((None, None));
    let cluster = f.get("cluster").and_then(|(n, p)| protection::decode_cluster(d, n, &p));
    f.finish(d);
    if let Some((a, pos)) = &admin
        && listeners.iter().any(|l| l.bind == a.bind && a.bind.port() != 0)
    {
        d.err(*pos, "admin.bind", format!("address {} is bound by a listener", a.bind));
    }
    let admin = admin.map(|(a, _)| a);
    Some(Config {
        node: node?,
        listeners,
        upstreams: upstreams.into_iter().map(|(u, _)| u).collect(),
        routes,
        admin,
        access_log,
        auth,
        consumers,
        tracing,
        protection,
        cluster,
    })
}

fn decode_observability(
    d: &mut Decoder<'_>,
    node: &Node,
    path: &str,
) -> Option<(Option<AccessLogConfig>, Option<TracingConfig>)> {
    let mut f = Fields::new(d, node, path)?;
    let mut out = None;
    if let Some((n, p)) = f.get("access_log")
        && let Some(mut af) = Fields::new(d, n, &p)
    {
        if let Some((n, p)) = af.get("format")
            && let Some(v) = scalar(d, n, &p)
            && v != "json"
        {
            d.err(n.pos, &p, format!("unknown access-log format `{v}`; expected json"));
        }
        let mut to = LogSink::Stdout;
        if let Some((n, p)) = af.get("to")
            && let Some(v) = scalar(d, n, &p)
        {
            to = match v {
                "stdout" => LogSink::Stdout,
                "stderr" => LogSink::Stderr,
                "" => {
                    d.err(n.pos, &p, "expected stdout, stderr or a file path");
                    LogSink::Stdout
                }
                path => LogSink::File(std::path::PathBuf::from(path)),
            };
        }
        af.finish(d);
        out = Some(AccessLogConfig { to });
    }
    let tracing = f.get("tracing").and_then(|(n, p)| decode_tracing(d, n, &p));
    f.finish(d);
    Some((out, tracing))
}

fn decode_tracing(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<TracingConfig> {
    let mut f = Fields::new(d, node, path)?;
    let endpoint = match f.get("otlp") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| {
            let u = s.parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some_and(|a| !a.as_str().contains('@'))
            });
            let Some(u) = u else {
                d.err(n.pos, &p, format!("expected the collector's http:// or https:// URL, found `{s}`"));
                return None;
            };
            // A bare collector address gets the OTLP/HTTP traces path.
            if u.path() == "/" || u.path().is_empty() {
                format!("{}/v1/traces", s.trim_end_matches('/')).parse().ok()
            } else {
                Some(u)
            }
        }),
        None => {
            d.err(
                node.pos,
                &join(path, "otlp"),
                "missing field `otlp` (the collector's URL, like http://127.0.0.1:4318)",
            );
            None
        }
    };
    let mut sample = 1.0;
    if let Some((n, p)) = f.get("sample")
        && let Some(s) = scalar(d, n, &p)
    {
        match s.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => sample = v,
            _ => d.err(n.pos, &p, format!("expected a number from 0 to 1, found `{s}`")),
        }
    }
    let mut service = "portcullis".to_string();
    f.set(d, "service_name", name, &mut service);
    f.finish(d);
    Some(TracingConfig { endpoint: endpoint?, sample, service })
}

/// `admin:`, with the position of its `bind` (for a clash with a listener).
fn decode_admin(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<(AdminConfig, Pos)> {
    let mut f = Fields::new(d, node, path)?;
    let mut bind = SocketAddr::from(([127, 0, 0, 1], 9901));
    let mut pos = node.pos;
    if let Some((n, p)) = f.get("bind")
        && let Some(s) = scalar(d, n, &p)
    {
        pos = n.pos;
        match s.parse::<SocketAddr>() {
            Ok(a) => bind = a,
            Err(_) => d.err(n.pos, &p, format!("invalid bind address `{s}`: expected IP:PORT like 127.0.0.1:9901")),
        }
    }
    let public_metrics = match f.get("public_metrics") {
        Some((n, p)) => boolean(d, n, &p).unwrap_or(false),
        None => false,
    };
    f.finish(d);
    Some((AdminConfig { bind, public_metrics }, pos))
}

fn default_node() -> NodeConfig {
    NodeConfig { name: "portcullis".into(), workers: None, shutdown_grace: Duration::from_secs(30), store: None }
}

fn decode_node(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<NodeConfig> {
    let mut out = default_node();
    let mut f = Fields::new(d, node, path)?;
    f.set(d, "name", name, &mut out.name);
    if let Some((n, p)) = f.get("workers")
        && let Some(v) = scalar(d, n, &p)
        && v != "auto"
    {
        match v.parse::<usize>().ok().filter(|x| (1..=1024).contains(x)).and_then(NonZeroUsize::new) {
            Some(w) => out.workers = Some(w),
            None => d.err(n.pos, &p, format!("expected `auto` or a number of threads from 1 to 1024, found `{v}`")),
        }
    }
    f.set(d, "shutdown_grace", duration, &mut out.shutdown_grace);
    out.store = f.get("store").and_then(|(n, p)| auth::decode_store(d, n, &p));
    f.finish(d);
    Some(out)
}

fn decode_listeners(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<ListenerConfig> {
    let mut out: Vec<ListenerConfig> = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    let mut binds: HashMap<SocketAddr, ()> = HashMap::new();
    let items = seq(d, node, path);
    if items.is_empty() && matches!(node.kind, Kind::Seq(_)) {
        d.err(node.pos, path, "at least one listener is required");
    }
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(mut f) = Fields::new(d, item, &ip) else {
            continue;
        };
        let lname = unique_name(d, &mut f, item, &ip, &mut names, "listener");
        let bind = match f.get("bind") {
            Some((n, p)) => scalar(d, n, &p).and_then(|s| match s.parse::<SocketAddr>() {
                Ok(a) => {
                    if a.port() != 0 && binds.insert(a, ()).is_some() {
                        d.err(n.pos, &p, format!("address {a} is bound by another listener"));
                    }
                    Some(a)
                }
                Err(_) => {
                    d.err(
                        n.pos,
                        &p,
                        format!("invalid bind address `{s}`: expected IP:PORT like 0.0.0.0:8080 or [::]:8080"),
                    );
                    None
                }
            }),
            None => {
                d.err(item.pos, &join(&ip, "bind"), "missing field `bind`");
                None
            }
        };
        let limits = match f.get("limits") {
            Some((n, p)) => decode_limits(d, n, &p),
            None => ListenerLimits::default(),
        };
        let tls = f.get("tls").and_then(|(n, p)| tls::decode_listener_tls(d, n, &p));
        f.finish(d);
        if let (Some(name), Some(bind)) = (lname, bind) {
            out.push(ListenerConfig { name, bind, limits, tls });
        }
    }
    out
}

fn decode_limits(d: &mut Decoder<'_>, node: &Node, path: &str) -> ListenerLimits {
    let mut l = ListenerLimits::default();
    let Some(mut f) = Fields::new(d, node, path) else {
        return l;
    };
    macro_rules! dur {
        ($key:literal, $field:ident) => {
            if let Some((n, p)) = f.get($key)
                && let Some(v) = duration(d, n, &p)
            {
                l.$field = v;
            }
        };
    }
    dur!("header_timeout", header_timeout);
    dur!("body_timeout", body_timeout);
    dur!("idle_timeout", idle_timeout);
    f.set(
        d,
        "max_header_bytes",
        |d, n, p| size(d, n, p, 1024, 1024 * 1024).map(|v| v as usize),
        &mut l.max_header_bytes,
    );
    f.set(d, "max_body_bytes", |d, n, p| size(d, n, p, 0, 1 << 40), &mut l.max_body_bytes);
    f.set(
        d,
        "max_connections_per_ip",
        |d, n, p| integer(d, n, p, 1, 1_000_000).map(|v| v as u32),
        &mut l.max_connections_per_ip,
    );
    f.set(d, "max_connections", |d, n, p| integer(d, n, p, 1, 1_000_000).map(|v| v as u32), &mut l.max_connections);
    f.finish(d);
    l
}

fn percent(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<u8> {
    let s = scalar(d, node, path)?;
    match s.strip_suffix('%').and_then(|n| n.trim().parse::<u8>().ok()).filter(|v| *v <= 100) {
        Some(v) => Some(v),
        None => {
            d.err(node.pos, path, format!("expected a percentage from 0% to 100%, found `{s}`"));
            None
        }
    }
}

/// A duration that may be zero (`0s` turns the feature off).
fn duration_or_zero(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<Duration> {
    let s = scalar(d, node, path)?;
    parse_duration(s).map_err(|e| d.err(node.pos, path, e)).ok()
}

fn decode_upstreams(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<(UpstreamConfig, Pos)> {
    let mut out = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(mut f) = Fields::new(d, item, &ip) else {
            continue;
        };
        let uname = unique_name(d, &mut f, item, &ip, &mut names, "upstream");
        let hash_on = f.get("hash_on").and_then(|(n, p)| decode_hash_on(d, n, &p));
        let mut balance = Balance::RoundRobin;
        let mut balance_pos = None;
        if let Some((n, p)) = f.get("balance") {
            balance_pos = Some((n.pos, p.clone()));
            match scalar(d, n, &p) {
                Some("round_robin") => balance = Balance::RoundRobin,
                Some("weighted") => balance = Balance::Weighted,
                Some("least_request") => balance = Balance::LeastRequest,
                Some("random") => balance = Balance::Random,
                Some("consistent_hash") => match &hash_on {
                    Some(h) => balance = Balance::ConsistentHash(h.clone()),
                    None => d.err(
                        n.pos,
                        &p,
                        "consistent_hash needs `hash_on` (header:NAME, cookie:NAME or ip) on the upstream",
                    ),
                },
                Some(other) => d.err(
                    n.pos,
                    &p,
                    format!(
                        "unknown balance `{other}`; expected round_robin, weighted, least_request, consistent_hash or random"
                    ),
                ),
                None => {}
            }
        }
        let hash_balance = matches!(balance, Balance::ConsistentHash(_))
            || f.entries.iter().any(|(k, v)| key_str(k) == "balance" && key_str(v) == "consistent_hash");
        if hash_on.is_some() && !hash_balance {
            let (pos, p) = balance_pos.unwrap_or((item.pos, join(&ip, "balance")));
            d.err(pos, &p, "`hash_on` is set, so `balance` must be `consistent_hash`");
        }
        let mut seen = HashMap::new();
        let targets = decode_targets(d, &mut f, item, &ip, "targets", true, &mut seen);
        let backup = decode_targets(d, &mut f, item, &ip, "backup", false, &mut seen);
        let (mut connect, mut response, mut idle) =
            (Duration::from_secs(2), Duration::from_secs(30), Duration::from_secs(300));
        if let Some((n, p)) = f.get("timeouts")
            && let Some(mut tf) = Fields::new(d, n, &p)
        {
            tf.set(d, "connect", duration, &mut connect);
            tf.set(d, "response", duration, &mut response);
            tf.set(d, "idle", duration, &mut idle);
            tf.finish(d);
        }
        let health = match f.get("health") {
            Some((n, p)) => decode_health(d, n, &p),
            None => HealthConfig {
                active: None,
                passive: PassiveHealth::default(),
                panic_threshold: 0,
                slow_start: Duration::ZERO,
            },
        };
        let retries = match f.get("retries") {
            Some((n, p)) => decode_retries(d, n, &p),
            None => RetryConfig::default(),
        };
        let mut limits = UpstreamLimits::default();
        if let Some((n, p)) = f.get("limits")
            && let Some(mut lf) = Fields::new(d, n, &p)
        {
            lf.set(
                d,
                "max_connections",
                |d, n, p| integer(d, n, p, 1, 1_000_000).map(|v| v as u32),
                &mut limits.max_connections,
            );
            lf.set(
                d,
                "max_pending",
                |d, n, p| integer(d, n, p, 0, 1_000_000).map(|v| v as u32),
                &mut limits.max_pending,
            );
            lf.finish(d);
        }
        let mut protocol = UpstreamProtocol::Http1;
        if let Some((n, p)) = f.get("protocol")
            && let Some(v) = scalar(d, n, &p)
        {
            protocol = match v {
                "http1" => UpstreamProtocol::Http1,
                "h2" => UpstreamProtocol::H2,
                "auto" => UpstreamProtocol::Auto,
                other => {
                    d.err(n.pos, &p, format!("unknown protocol `{other}`; expected http1, h2 or auto"));
                    UpstreamProtocol::Http1
                }
            };
        }
        let tls_block = f.get("tls").map(|(n, p)| (n.pos, tls::decode_upstream_tls(d, n, &p), p));
        let https: Vec<bool> = targets.iter().chain(&backup).map(|t| t.https).collect();
        let tls = match (https.first(), tls_block) {
            (Some(true), block) => Some(block.and_then(|(_, t, _)| t).unwrap_or_default()),
            (_, Some((pos, _, p))) => {
                d.err(pos, &p, "`tls` is for https:// targets; these are http://");
                None
            }
            (_, None) => None,
        };
        if https.iter().any(|h| *h != https[0]) {
            d.err(item.pos, &ip, "targets of one upstream are all http:// or all https://");
        }
        f.finish(d);
        // An upstream with a bad field is still recorded by name, so routes naming it do not
        // get a second, misleading error; the config is refused either way.
        if let Some(name) = uname {
            out.push((
                UpstreamConfig {
                    name,
                    balance,
                    targets,
                    backup,
                    health,
                    retries,
                    connect_timeout: connect,
                    response_timeout: response,
                    idle_timeout: idle,
                    limits,
                    protocol,
                    tls,
                },
                item.pos,
            ));
        }
    }
    out
}

fn decode_hash_on(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<HashOn> {
    let s = scalar(d, node, path)?;
    let bad = |d: &mut Decoder<'_>| {
        d.err(node.pos, path, format!("invalid hash_on `{s}`: expected header:NAME, cookie:NAME or ip"));
        None
    };
    if s == "ip" {
        return Some(HashOn::Ip);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return match HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(n) => Some(HashOn::Header(n)),
            Err(_) => bad(d),
        };
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        let c = c.trim();
        let token = !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        return if token { Some(HashOn::Cookie(c.to_string())) } else { bad(d) };
    }
    bad(d)
}

/// `targets` (required, at least one) or `backup` (optional) of an upstream. `seen` holds
/// the targets of the upstream so far: one target listed twice is refused (its weight says
/// how much traffic it gets).
fn decode_targets(
    d: &mut Decoder<'_>,
    f: &mut Fields<'_>,
    item: &Node,
    ip: &str,
    key: &'static str,
    required: bool,
    seen: &mut HashMap<http::uri::Authority, String>,
) -> Vec<TargetConfig> {
    let mut out: Vec<TargetConfig> = Vec::new();
    match f.get(key) {
        Some((n, p)) => {
            let items = seq(d, n, &p);
            if items.is_empty() && required && matches!(n.kind, Kind::Seq(_)) {
                d.err(n.pos, &p, "at least one target is required");
            }
            if items.len() > 1024 {
                d.err(n.pos, &p, "at most 1024 targets");
            }
            for (j, t) in items.iter().enumerate() {
                let tp = format!("{p}[{j}]");
                if let Some(target) = decode_target(d, t, &tp) {
                    if let Some(first) = seen.get(&target.authority) {
                        d.err(
                            t.pos,
                            &tp,
                            format!(
                                "{} is listed already as {first}; list a target once and give it a `weight`",
                                target.authority
                            ),
                        );
                        continue;
                    }
                    seen.insert(target.authority.clone(), tp.clone());
                    out.push(target);
                }
            }
        }
        None if required => d.err(item.pos, &join(ip, key), format!("missing field `{key}`")),
        None => {}
    }
    out
}

fn decode_health(d: &mut Decoder<'_>, node: &Node, path: &str) -> HealthConfig {
    let mut h = HealthConfig {
        active: None,
        passive: PassiveHealth::default(),
        panic_threshold: 0,
        slow_start: Duration::ZERO,
    };
    let Some(mut f) = Fields::new(d, node, path) else {
        return h;
    };
    if let Some((n, p)) = f.get("active") {
        h.active = decode_active(d, n, &p);
    }
    if let Some((n, p)) = f.get("passive")
        && let Some(mut pf) = Fields::new(d, n, &p)
    {
        pf.set(
            d,
            "consecutive_failures",
            |d, n, p| integer(d, n, p, 0, 10_000).map(|v| v as u32),
            &mut h.passive.consecutive_failures,
        );
        pf.set(d, "eject_for", duration, &mut h.passive.eject_for);
        let mut max_pos = None;
        if let Some((n, p)) = pf.get("max_eject_for")
            && let Some(v) = duration(d, n, &p)
        {
            h.passive.max_eject_for = v;
            max_pos = Some((n.pos, p));
        }
        if h.passive.max_eject_for < h.passive.eject_for {
            match max_pos {
                Some((pos, p)) => d.err(pos, &p, "must not be shorter than `eject_for`"),
                None => h.passive.max_eject_for = h.passive.eject_for,
            }
        }
        pf.set(d, "max_ejected", percent, &mut h.passive.max_ejected);
        pf.finish(d);
    }
    f.set(d, "panic_threshold", percent, &mut h.panic_threshold);
    f.set(d, "slow_start", duration_or_zero, &mut h.slow_start);
    f.finish(d);
    h
}

fn decode_active(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<ActiveHealth> {
    let mut f = Fields::new(d, node, path)?;
    let probe_path = match f.get("path") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| {
            let ok = s.starts_with('/') && s.len() <= 1024 && s.bytes().all(|b| b.is_ascii_graphic());
            match http::uri::PathAndQuery::try_from(s) {
                Ok(pq) if ok => Some(pq),
                _ => {
                    d.err(n.pos, &p, format!("invalid probe path `{s}`: expected an absolute path like /healthz"));
                    None
                }
            }
        }),
        None => {
            d.err(node.pos, &join(path, "path"), "missing field `path`");
            None
        }
    };
    let host = f.get("host").and_then(|(n, p)| {
        let s = scalar(d, n, &p)?;
        match HeaderValue::from_str(s) {
            Ok(v) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)) => Some(v),
            _ => {
                d.err(n.pos, &p, format!("invalid host `{s}`"));
                None
            }
        }
    });
    let mut a = ActiveHealth {
        path: probe_path.clone().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        host,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        healthy_after: 2,
        unhealthy_after: 3,
        statuses: vec![(200, 399)],
    };
    if let Some((n, p)) = f.get("interval")
        && let Some(v) = duration(d, n, &p)
    {
        if v < Duration::from_millis(50) {
            d.err(n.pos, &p, "must be at least 50ms");
        }
        a.interval = v;
    }
    f.set(d, "timeout", duration, &mut a.timeout);
    f.set(d, "healthy_after", |d, n, p| integer(d, n, p, 1, 1000).map(|v| v as u32), &mut a.healthy_after);
    f.set(d, "unhealthy_after", |d, n, p| integer(d, n, p, 1, 1000).map(|v| v as u32), &mut a.unhealthy_after);
    if let Some((n, p)) = f.get("statuses") {
        let mut ranges = Vec::new();
        for (i, item) in seq(d, n, &p).iter().enumerate() {
            let sp = format!("{p}[{i}]");
            let Some(s) = scalar(d, item, &sp) else { continue };
            match status_range(s) {
                Some(r) => ranges.push(r),
                None => d.err(
                    item.pos,
                    &sp,
                    format!("invalid status `{s}`: expected a code like 200 or a range like 200-399"),
                ),
            }
        }
        if ranges.is_empty() && matches!(n.kind, Kind::Seq(_)) {
            d.err(n.pos, &p, "at least one status or range is required");
        }
        if !ranges.is_empty() {
            a.statuses = ranges;
        }
    }
    f.finish(d);
    probe_path.map(|_| a)
}

fn status_range(s: &str) -> Option<(u16, u16)> {
    let code = |x: &str| x.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
    match s.split_once('-') {
        Some((a, b)) => Some((code(a)?, code(b)?)).filter(|(a, b)| a <= b),
        None => code(s).map(|c| (c, c)),
    }
}

fn decode_retries(d: &mut Decoder<'_>, node: &Node, path: &str) -> RetryConfig {
    let mut r = RetryConfig::default();
    let Some(mut f) = Fields::new(d, node, path) else {
        return r;
    };
    f.set(d, "attempts", |d, n, p| integer(d, n, p, 1, 10).map(|v| v as u32), &mut r.attempts);
    if let Some((n, p)) = f.get("on") {
        r.on_connect_failure = false;
        r.on_reset = false;
        for (i, item) in seq(d, n, &p).iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match scalar(d, item, &ip) {
                Some("connect_failure") => r.on_connect_failure = true,
                Some("reset") => r.on_reset = true,
                Some("timeout") => r.on_timeout = true,
                Some(s) => match s.parse::<u16>() {
                    Ok(c) if (400..=599).contains(&c) => {
                        if !r.on_statuses.contains(&c) {
                            r.on_statuses.push(c);
                        }
                    }
                    _ => d.err(
                        item.pos,
                        &ip,
                        format!("unknown retry condition `{s}`: expected connect_failure, reset, timeout or a status from 400 to 599"),
                    ),
                },
                None => {}
            }
        }
    }
    f.set(d, "budget", percent, &mut r.budget);
    f.set(d, "max_body", |d, n, p| size(d, n, p, 0, 16 * 1024 * 1024), &mut r.max_body);
    f.finish(d);
    r
}

fn decode_target(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<TargetConfig> {
    let mut f = Fields::new(d, node, path)?;
    let target = match f.get("url") {
        Some((n, p)) => {
            let s = scalar(d, n, &p)?;
            match parse_target_url(s) {
                Ok(a) => Some(a),
                Err(e) => {
                    d.err(n.pos, &p, e);
                    None
                }
            }
        }
        None => {
            d.err(node.pos, &join(path, "url"), "missing field `url`");
            None
        }
    };
    let mut weight = 1;
    f.set(d, "weight", |d, n, p| integer(d, n, p, 1, 1000).map(|v| v as u32), &mut weight);
    f.finish(d);
    let (authority, https) = target?;
    Some(TargetConfig { authority, weight, https })
}

/// A target URL: its `host:port` (the scheme's default port when none is given) and whether
/// it is `https`.
fn parse_target_url(s: &str) -> Result<(http::uri::Authority, bool), String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("invalid URL `{s}`"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("invalid URL `{s}`: expected http://HOST:PORT or https://HOST:PORT")),
    };
    let auth = uri.authority().ok_or_else(|| format!("invalid URL `{s}`: no host"))?.clone();
    if auth.as_str().contains('@') {
        return Err(format!("invalid URL `{s}`: credentials in URLs are not allowed"));
    }
    if auth.host().is_empty() {
        return Err(format!("invalid URL `{s}`: no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("invalid URL `{s}`: a target is scheme://host:port, without a path or query"));
    }
    if auth.port_u16().is_none() {
        let port = if https { 443 } else { 80 };
        let auth = format!("{}:{port}", auth.host()).parse().map_err(|_| format!("invalid URL `{s}`"))?;
        return Ok((auth, https));
    }
    Ok((auth, https))
}

const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

/// What routes are checked against: the rest of the config.
struct RouteContext<'a> {
    upstreams: &'a [(UpstreamConfig, Pos)],
    auth: &'a AuthConfig,
    /// `node.store` is set (quotas need it).
    has_store: bool,
    /// Some listener asks for client certificates (`mtls` needs it).
    client_certs: bool,
    listeners: &'a [String],
}

fn decode_routes(d: &mut Decoder<'_>, node: &Node, path: &str, cx: &RouteContext<'_>) -> Vec<RouteConfig> {
    let RouteContext { upstreams, auth: auth_config, has_store, client_certs, listeners: listener_names } = *cx;
    let mut out = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(mut f) = Fields::new(d, item, &ip) else {
            continue;
        };
        let rname = unique_name(d, &mut f, item, &ip, &mut names, "route");
        let matched = match f.get("match") {
            Some((n, p)) => decode_match(d, n, &p, listener_names),
            None => {
                d.err(item.pos, &join(&ip, "match"), "missing field `match`");
                None
            }
        };
        let upstream = match f.get("upstream") {
            Some((n, p)) => scalar(d, n, &p).and_then(|s| {
                let idx = upstreams.iter().position(|(u, _)| u.name == s);
                if idx.is_none() {
                    d.err(n.pos, &p, format!("unknown upstream `{s}`"));
                }
                idx
            }),
            None => {
                d.err(item.pos, &join(&ip, "upstream"), "missing field `upstream`");
                None
            }
        };
        let public = match f.get("public") {
            Some((n, p)) => boolean(d, n, &p),
            None => Some(false),
        };
        let public_pos = item.pos;
        let retry_non_idempotent = match f.get("retry_non_idempotent") {
            Some((n, p)) => boolean(d, n, &p).unwrap_or(false),
            None => false,
        };
        let auth = f.get("auth").map(|(n, p)| (auth::decode_route_auth(d, n, &p, auth_config, client_certs), n.pos));
        let allow = f.get("allow").map(|(n, p)| (auth::decode_allow(d, n, &p), n.pos));
        let rate_limit = f.get("rate_limit").and_then(|(n, p)| decode_rate_limit(d, n, &p));
        if let Some(rl) = &rate_limit
            && rl.key == RateKey::Consumer
            && auth.is_none()
        {
            d.err(item.pos, &join(&ip, "rate_limit.key"), "`key: consumer` needs a route with `auth`");
        }
        let quota = f.get("quota").and_then(|(n, p)| protection::decode_quota(d, n, &p).map(|q| (q, n.pos, p)));
        if let Some((q, pos, p)) = &quota {
            if q.key == RateKey::Consumer && auth.is_none() {
                d.err(*pos, &join(p, "key"), "`key: consumer` needs a route with `auth`");
            }
            if !has_store {
                d.err(*pos, p, "quotas are kept in the store: set `node.store` (like sqlite://portcullis.db)");
            }
        }
        f.unsupported(d, "contract", "contract validation (`contract`)");
        f.unsupported(d, "version", "API versions (`version`)");
        f.finish(d);
        match (public, &auth) {
            (Some(false), None) => d.err(
                public_pos,
                &join(&ip, "auth"),
                "a route must authenticate its callers: give `auth: [api_key | jwt | mtls, ...]`, or say `public: true`",
            ),
            (Some(true), Some((_, pos))) => {
                d.err(*pos, &join(&ip, "auth"), "a `public: true` route takes no `auth`; remove one of them")
            }
            _ => {}
        }
        if public == Some(true)
            && let Some((rules, pos)) = &allow
            && rules.iter().any(|r| {
                !r.consumers.is_empty() || !r.groups.is_empty() || !r.scopes.is_empty() || !r.claims.is_empty()
            })
        {
            d.err(*pos, &join(&ip, "allow"), "a public route has no caller identity; only `ips` rules apply to it");
        }
        if let (Some(name), Some((host, path, methods, headers, listeners)), Some(upstream)) =
            (rname, matched, upstream)
        {
            out.push(RouteConfig {
                name,
                host,
                path,
                methods,
                headers,
                listeners,
                upstream,
                auth: if public == Some(true) { Vec::new() } else { auth.map(|(a, _)| a).unwrap_or_default() },
                allow: allow.map(|(a, _)| a).unwrap_or_default(),
                rate_limit,
                quota: quota.map(|(q, ..)| q),
                retry_non_idempotent,
            });
        }
    }
    out
}

fn decode_rate_limit(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<RateLimitConfig> {
    let mut f = Fields::new(d, node, path)?;
    let key = match f.get("key") {
        Some((n, p)) => rate_key(d, n, &p),
        None => Some(RateKey::Ip),
    };
    let per_second = match f.get("rate") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| {
            let parsed = s.split_once('/').and_then(|(q, w)| {
                let q: f64 = q.trim().parse().ok().filter(|q: &f64| *q > 0.0 && q.is_finite())?;
                let secs = match w.trim() {
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    _ => return None,
                };
                Some(q / secs)
            });
            if parsed.is_none() {
                d.err(n.pos, &p, format!("expected a rate like 100/s, 600/m or 1000/h, found `{s}`"));
            }
            parsed
        }),
        None => {
            d.err(node.pos, &join(path, "rate"), "missing field `rate` (like 100/s)");
            None
        }
    };
    let mut burst = None;
    if let Some((n, p)) = f.get("burst") {
        burst = integer(d, n, &p, 1, 1_000_000);
    }
    let mut max_keys = 100_000;
    if let Some((n, p)) = f.get("max_keys")
        && let Some(v) = integer(d, n, &p, 16, 10_000_000)
    {
        max_keys = v as usize;
    }
    f.finish(d);
    let per_second = per_second?;
    // Default burst: one second's worth (at least 1).
    let burst = burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u64);
    Some(RateLimitConfig { key: key?, per_second, burst, max_keys })
}

/// `key: consumer | ip | header:NAME` of a rate limit or quota.
fn rate_key(d: &mut Decoder<'_>, n: &Node, p: &str) -> Option<RateKey> {
    scalar(d, n, p).and_then(|s| match s {
        "consumer" => Some(RateKey::Consumer),
        "ip" => Some(RateKey::Ip),
        h if h.starts_with("header:") => match HeaderName::from_bytes(&h.as_bytes()["header:".len()..]) {
            Ok(name) => Some(RateKey::Header(name)),
            Err(_) => {
                d.err(n.pos, p, format!("invalid header name in `{h}`"));
                None
            }
        },
        other => {
            d.err(n.pos, p, format!("unknown key `{other}`; expected consumer, ip or header:NAME"));
            None
        }
    })
}

/// A list of addresses or CIDR networks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
fn nets(d: &mut Decoder<'_>, node: &Node, path: &str) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, item) in seq(d, node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(s) = scalar(d, item, &ip) else { continue };
        let net = s.parse::<ipnet::IpNet>().or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            // An IPv4-mapped IPv6 network is the IPv4 network (clients are seen as IPv4).
            Ok(ipnet::IpNet::V6(n)) if n.prefix_len() >= 96 && n.addr().to_ipv4_mapped().is_some() => {
                let v4 = n.addr().to_ipv4_mapped().and_then(|a| ipnet::Ipv4Net::new(a, n.prefix_len() - 96).ok());
                out.extend(v4.map(|n| ipnet::IpNet::V4(n.trunc())));
            }
            Ok(net) => out.push(net.trunc()),
            Err(_) => d.err(item.pos, &ip, format!("expected an address or CIDR like 10.0.0.0/8, found `{s}`")),
        }
    }
    out
}

type Match = (Option<HostPattern>, PathPattern, Vec<Method>, Vec<(HeaderName, HeaderValue)>, Vec<String>);

fn decode_match(d: &mut Decoder<'_>, node: &Node, path: &str, listener_names: &[String]) -> Option<Match> {
    let mut f = Fields::new(d, node, path)?;
    let mut ok = true;
    let host = f.get("host").and_then(|(n, p)| {
        let s = scalar(d, n, &p)?;
        HostPattern::parse(s).map_err(|e| d.err(n.pos, &p, e)).ok().or_else(|| {
            ok = false;
            None
        })
    });
    let exact = f.get("path");
    let prefix = f.get("prefix");
    let pattern = match (exact, prefix) {
        (Some((n, p)), None) => {
            scalar(d, n, &p).and_then(|s| PathPattern::parse_path(s).map_err(|e| d.err(n.pos, &p, e)).ok())
        }
        (None, Some((n, p))) => {
            scalar(d, n, &p).and_then(|s| PathPattern::parse_prefix(s).map_err(|e| d.err(n.pos, &p, e)).ok())
        }
        (Some(_), Some((n, p))) => {
            d.err(n.pos, &p, "give either `path` or `prefix`, not both");
            None
        }
        (None, None) => {
            d.err(node.pos, path, "a match needs `path` (exact or template) or `prefix`");
            None
        }
    };
    let mut methods = Vec::new();
    if let Some((n, p)) = f.get("methods") {
        for (i, m) in seq(d, n, &p).iter().enumerate() {
            let mp = format!("{p}[{i}]");
            let Some(s) = scalar(d, m, &mp) else { continue };
            if !KNOWN_METHODS.contains(&s) {
                d.err(
                    m.pos,
                    &mp,
                    format!("unknown method `{s}`; methods are upper case: {}", KNOWN_METHODS.join(", ")),
                );
                ok = false;
                continue;
            }
            if let Ok(method) = Method::from_bytes(s.as_bytes())
                && !methods.contains(&method)
            {
                methods.push(method);
            }
        }
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            methods.push(Method::HEAD);
        }
    }
    let mut headers = Vec::new();
    if let Some((n, p)) = f.get("headers")
        && let Some(mut hf) = Fields::new(d, n, &p)
    {
        for (k, v) in hf.entries {
            let key = key_str(k);
            let hp = join(&p, key);
            let Ok(hn) = HeaderName::from_bytes(key.as_bytes()) else {
                d.err(k.pos, &hp, format!("invalid header name `{key}`"));
                ok = false;
                continue;
            };
            let Some(val) = scalar(d, v, &hp) else {
                continue;
            };
            match HeaderValue::from_str(val) {
                Ok(hv) => headers.push((hn, hv)),
                Err(_) => {
                    d.err(v.pos, &hp, "invalid header value");
                    ok = false;
                }
            }
        }
        hf.used.iter_mut().for_each(|u| *u = true);
        hf.finish(d);
    }
    let mut listeners = Vec::new();
    if let Some((n, p)) = f.get("listeners") {
        let items = seq(d, n, &p);
        if items.is_empty() && matches!(n.kind, Kind::Seq(_)) {
            d.err(n.pos, &p, "name at least one listener, or leave `listeners` out to take all");
        }
        for (i, item) in items.iter().enumerate() {
            let lp = format!("{p}[{i}]");
            let Some(l) = scalar(d, item, &lp) else { continue };
            if !listener_names.iter().any(|x| x == l) {
                d.err(item.pos, &lp, format!("unknown listener `{l}`"));
                ok = false;
            } else if !listeners.iter().any(|x| x == l) {
                listeners.push(l.to_string());
            }
        }
    }
    f.finish(d);
    if !ok {
        return None;
    }
    Some((host, pattern?, methods, headers, listeners))
}
