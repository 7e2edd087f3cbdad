//! `portcullis status`: one screen about a running node, from its admin API.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the admin API is: `--admin`, else the config's `admin.bind`, else the default.
fn admin_url(admin: Option<&str>, config: Option<&Path>) -> Result<String, String> {
    if let Some(a) = admin {
        return Ok(a.trim_end_matches('/').to_string());
    }
    if let Some(path) = config {
        let cfg = crate::config::load(path).map_err(|e| e.to_string())?;
        let a = cfg.admin.ok_or_else(|| format!("{}: the config has no `admin` listener", path.display()))?;
        if a.bind.port() == 0 {
            return Err(format!("{}: admin.bind has port 0 (any free port): give --admin URL", path.display()));
        }
        let host = if a.bind.ip().is_unspecified() {
            if a.bind.is_ipv6() { "[::1]".to_string() } else { "127.0.0.1".to_string() }
        } else if a.bind.is_ipv6() {
            format!("[{}]", a.bind.ip())
        } else {
            a.bind.ip().to_string()
        };
        return Ok(format!("http://{host}:{}", a.bind.port()));
    }
    Ok("http://127.0.0.1:9901".into())
}

/// One call to the admin API at `base` (`--admin`, else the config's): the status and the
/// body parsed as JSON (null if it is not), or a message to print. The token comes from
/// `PORTCULLIS_ADMIN_TOKEN`.
pub(crate) fn call(
    admin: Option<&str>,
    config: Option<&Path>,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(http::StatusCode, Value), String> {
    let base = admin_url(admin, config)?;
    let token = std::env::var("PORTCULLIS_ADMIN_TOKEN").ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let url = format!("{base}{path}");
    let (status, bytes) = rt
        .block_on(async {
            let client: Client<_, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build(hyper_util::client::legacy::connect::HttpConnector::new());
            let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
            let mut req = http::Request::builder().method(method).uri(&url);
            if !payload.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let mut req = req.body(Full::new(payload)).map_err(|e| e.to_string())?;
            if let Some(t) = &token {
                let v = http::HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "PORTCULLIS_ADMIN_TOKEN is not a valid header value".to_string())?;
                req.headers_mut().insert(http::header::AUTHORIZATION, v);
            }
            let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .map_err(|_| format!("{url}: no answer within 10s"))?
                .map_err(|e| format!("{url}: {e}"))?;
            let status = res.status();
            let body = res.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
            Ok::<_, String>((status, body))
        })
        .map_err(|e| format!("cannot reach the admin API: {e}"))?;
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_client_error() || status.is_server_error() {
        let detail = doc.get("detail").and_then(Value::as_str).unwrap_or("");
        let mut msg = format!("{url}: {status} {detail}");
        if status == http::StatusCode::UNAUTHORIZED && token.is_none() {
            msg.push_str("\nset PORTCULLIS_ADMIN_TOKEN to the node's admin token");
        }
        return Err(msg);
    }
    Ok((status, doc))
}

/// Fetch `/api/v1/status` and print it (as it came with `json`).
pub(crate) fn run(admin: Option<&str>, config: Option<&Path>, json: bool) -> ExitCode {
    let doc = match call(admin, config, http::Method::GET, "/api/v1/status", None) {
        Ok((_, doc)) => doc,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render(&doc));
    }
    ExitCode::SUCCESS
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The status document as a screen of text.
pub(crate) fn render(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} · Portcullis {} · config version {} · up {}",
        s(doc, "node"),
        s(doc, "version"),
        n(doc, "config_version"),
        uptime(n(doc, "uptime_seconds"))
    );
    let empty = Vec::new();
    let _ = writeln!(out, "\nlisteners");
    for l in doc.get("listeners").and_then(Value::as_array).unwrap_or(&empty) {
        let _ = writeln!(out, "  {:<20} {}", s(l, "name"), s(l, "address"));
    }
    let _ = writeln!(out, "\nupstreams");
    for u in doc.get("upstreams").and_then(Value::as_array).unwrap_or(&empty) {
        let targets = u.get("targets").and_then(Value::as_array).unwrap_or(&empty);
        let _ = writeln!(
            out,
            "  {:<20} {} · serving {} · {}/{} healthy · {} in flight, {} waiting",
            s(u, "name"),
            s(u, "balance"),
            s(u, "serving"),
            n(u, "healthy"),
            targets.len(),
            n(u, "in_flight"),
            n(u, "pending")
        );
        for t in targets {
            let role = if t.get("backup").and_then(Value::as_bool) == Some(true) { "backup " } else { "" };
            let mut line = format!("    {:<28} {role}{:<9} since {}", s(t, "url"), s(t, "state"), s(t, "since"));
            if let Some(until) = t.get("ejected_until").and_then(Value::as_str) {
                let _ = write!(line, " until {until}");
            }
            if let Some(reason) = t.get("reason").and_then(Value::as_str) {
                let _ = write!(line, " — {reason}");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}
