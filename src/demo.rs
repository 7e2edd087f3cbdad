//! `portcullis demo`: the gateway on `examples/quickstart.yaml` plus built-in sample
//! backends (real HTTP servers in this process) on the loopback targets the file names.
//!
//! Each sample backend answers every request with JSON describing what it received, so
//! you can see the gateway's work: the normalised path, the forwarding headers, the request
//! id, and the headers that were stripped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::{self, Config};

/// The quick-start config, built in so the demo works from any directory.
const QUICKSTART: &str = include_str!("../examples/quickstart.yaml");
const QUICKSTART_PATH: &str = "examples/quickstart.yaml";

/// Run the demo until Ctrl-C.
pub fn run(path: Option<PathBuf>) -> ExitCode {
    let path = path.or_else(|| Some(PathBuf::from(QUICKSTART_PATH)).filter(|p| p.exists()));
    let (cfg, path) = match path {
        Some(p) => match super::cli::load_or_report(&p) {
            Some((c, hash)) => (c, Some((p, hash))),
            None => return ExitCode::from(1),
        },
        None => match config::parse("(built-in quickstart.yaml)", QUICKSTART) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
    };
    let token = demo_token();
    let shown_token = token.clone();
    let key = match demo_key(&cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cannot prepare the demo's API key: {e}");
            return ExitCode::from(1);
        }
    };
    let backends = backend_addrs(&cfg);
    let mut bound = Vec::new();
    for (i, addr) in backends.iter().enumerate() {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                bound.push((format!("backend-{}", (b'a' + i as u8) as char), l));
            }
            Err(e) => {
                eprintln!("cannot start the sample backend on {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let on_ready = Box::new(move |gw: &crate::server::Gateway| {
        for (name, l) in bound {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(serve_backend(l, name));
                }
                Err(e) => eprintln!("sample backend failed: {e}"),
            }
        }
        print_instructions(gw, &shown_token, key.as_deref());
    });
    super::cli::run(cfg, path, Some(on_ready), Some(token))
}

/// The admin token for this demo: `PORTCULLIS_ADMIN_TOKEN` if set, else a fresh random one.
fn demo_token() -> String {
    if let Some(t) = super::cli::admin_token_from_env() {
        return t;
    }
    let mut bytes = [0u8; 16];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)) {
        Ok(()) => crate::hex::encode(&bytes),
        // Loopback-only demo: a weaker token is acceptable if the OS source is missing.
        Err(_) => (0..32).map(|_| fastrand::alphanumeric()).collect(),
    }
}

/// With a store in the config: make sure consumer `demo-app` exists and issue it a fresh key
/// (shown in the instructions, like `portcullis keys issue demo-app` would).
fn demo_key(cfg: &Config) -> Result<Option<String>, String> {
    let Some(url) = &cfg.node.store else { return Ok(None) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = crate::store::open(url).await.map_err(|e| e.to_string())?;
        let result = async {
            match store.add_consumer("demo-app", &["demo".to_string()]).await {
                Ok(_) | Err(crate::store::StoreError::Exists(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            let k = crate::auth::apikey::generate().map_err(|_| "no randomness available".to_string())?;
            let rec = crate::store::KeyRecord {
                id: k.id.clone(),
                consumer: "demo-app".into(),
                digest: k.digest,
                created: crate::store::now(),
                revoked: None,
            };
            store.add_key(&rec).await.map_err(|e| e.to_string())?;
            Ok(Some(k.key))
        }
        .await;
        store.close().await;
        result
    })
}

fn backend_addrs(cfg: &Config) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for u in &cfg.upstreams {
        for t in u.targets.iter().chain(&u.backup) {
            let host = t.authority.host();
            let host = if host == "localhost" { "127.0.0.1" } else { host };
            if let Ok(ip) = host.parse::<std::net::IpAddr>()
                && ip.is_loopback()
            {
                let a = SocketAddr::new(ip, t.authority.port_u16().unwrap_or(80));
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn print_instructions(gw: &crate::server::Gateway, token: &str, key: Option<&str>) {
    let Some((_, addr)) = gw.local_addrs().into_iter().next() else {
        return;
    };
    let base = format!("http://{addr}");
    // However the demo was started (cargo run, an installed binary), show a command that works.
    let exe = std::env::args().next().unwrap_or_else(|| "portcullis".into());
    let admin = gw.admin_addr().map(|a| format!(" --admin http://{a}")).unwrap_or_default();
    let key = key.unwrap_or("KEY");
    eprintln!(
        "\nPortcullis demo is running. Try, in another terminal:\n\n  \
         curl -s {base}/catalogue/items                 # round robin over two backends: run it twice\n  \
         curl -s {base}/orders/42                       # 401 problem+json: this route needs an API key\n  \
         curl -s -H 'x-api-key: {key}' {base}/orders/42   # the backend sees x-consumer-id: demo-app\n  \
         curl -s -X DELETE {base}/orders/42             # 404 problem+json: the route allows GET only\n  \
         curl -s --path-as-is -H 'x-api-key: {key}' '{base}/catalogue/../orders/7'   # normalised before routing: /orders/7\n  \
         curl -s -H 'Connection: x-secret' -H 'x-secret: 1' {base}/catalogue/h   # hop-by-hop header stripped\n  \
         {exe} explain -c examples/quickstart.yaml DELETE {base}/orders/42\n  \
         PORTCULLIS_ADMIN_TOKEN={token} {exe} status{admin}   # upstream health\n  \
         {exe} keys list -c examples/quickstart.yaml   # the demo's key: issued at start, stored hashed\n\n\
         Edit examples/quickstart.yaml and save: the gateway reloads it. Ctrl-C stops.\n"
    );
}

/// A sample backend: answers every request with JSON describing it.
pub async fn serve_backend(listener: tokio::net::TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| describe(name.clone(), req));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn describe(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Sample backends read at most 1 MiB of body; they only report its size.
    let limited = http_body_util::Limited::new(body, 1 << 20);
    let body_len = limited.collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let doc = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_len,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    let mut res = Response::new(Full::new(Bytes::from(text)));
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(res)
}
