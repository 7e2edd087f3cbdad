//! `portcullis explain`: route a made-up request through the compiled table and say why.

use std::path::Path;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::router::path::normalise;
use crate::router::{HostError, RequestView, Table, request_authority, route_host};

pub(super) fn run(config: &Path, method: &str, url: &str, headers: &[String], listener: Option<&str>) -> ExitCode {
    let Some((cfg, _)) = super::load_or_report(config) else {
        return ExitCode::from(1);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        eprintln!("invalid method `{method}`");
        return ExitCode::from(2);
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("invalid URL `{url}`");
        return ExitCode::from(2);
    };
    let mut map = HeaderMap::new();
    for h in headers {
        let Some((n, v)) = h.split_once(':') else {
            eprintln!("invalid header `{h}`: expected 'Name: value'");
            return ExitCode::from(2);
        };
        match (HeaderName::from_bytes(n.trim().as_bytes()), HeaderValue::from_str(v.trim())) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => {
                eprintln!("invalid header `{h}`");
                return ExitCode::from(2);
            }
        }
    }
    // The same host rules as the gateway: the URL's authority wins over a Host header.
    let mut req = http::Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = map.clone();
    let (parts, ()) = req.into_parts();
    let authority = match request_authority(&parts) {
        Ok(a) => a,
        Err(HostError("missing Host header")) => None,
        Err(e) => {
            println!("request: {method} {url}");
            println!("refused before routing (400): {e}");
            return ExitCode::from(1);
        }
    };
    let host = route_host(authority.as_ref()).map(|h| h.into_owned());
    let path = match normalise(uri.path()) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            println!("request: {method} {url}");
            println!("refused before routing (400): {e}");
            return ExitCode::from(1);
        }
    };
    println!("request: {method} host={} path={path}", host.as_deref().unwrap_or("(none)"));
    if path != uri.path() {
        println!("  (path normalised from {})", uri.path());
    }
    let table = Table::new(&cfg.routes);
    let e =
        table.explain(&RequestView { host: host.as_deref(), path: &path, method: &method, headers: &map, listener });
    let code = match &e.chosen {
        Some(name) => {
            let r = table.routes().iter().find(|r| &r.name == name);
            let up = r.map(|r| cfg.upstreams[r.upstream].name.as_str()).unwrap_or("?");
            println!("route: {name} -> upstream {up}");
            ExitCode::SUCCESS
        }
        None => {
            println!("route: none (the gateway answers 404)");
            ExitCode::from(1)
        }
    };
    if !e.misses.is_empty() {
        println!("other routes, in precedence order:");
        for m in &e.misses {
            println!("  {}:", m.route);
            for r in &m.reasons {
                println!("    - {r}");
            }
        }
    }
    code
}
