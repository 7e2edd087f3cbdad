//! The compiled route table.

use std::cmp::Reverse;
use std::collections::HashMap as StdHashMap;

/// FNV hashing for the lookup maps: keys are short and come from the config (requests only
/// look up, never insert, so hostile input cannot grow a chain), and SipHash cost more than
/// the rest of a lookup.
type HashMap<K, V> = StdHashMap<K, V, fnv::FnvBuildHasher>;

use http::{HeaderMap, Method};

use crate::config::RouteConfig;
use crate::config::pattern::{HostPattern, PathPattern, Segment};

/// The parts of a request that routing looks at. `host` is lower-case without port;
/// `path` is normalised.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Lower-case host without port, if any.
    pub host: Option<&'a str>,
    /// Normalised path.
    pub path: &'a str,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The listener it came on (`None`: any, as `explain` asks without one).
    pub listener: Option<&'a str>,
}

/// Routes that share a host scope, ordered by precedence, with exact paths indexed.
#[derive(Debug, Default)]
struct Bucket {
    exact: HashMap<String, Vec<u32>>,
    /// Template and prefix routes whose first segment is a literal, by that segment, each
    /// list in precedence order: a request only looks at the routes of its own first segment.
    by_first: HashMap<String, Vec<u32>>,
    /// Template and prefix routes that can match any first segment (`prefix: /`,
    /// `/{tenant}/...`), in precedence order.
    any_first: Vec<u32>,
    /// The best (lowest) rank among the template and prefix routes: an exact match ranked
    /// above it needs no further look.
    best_other: u32,
}

/// The literal first segment of a template or prefix, if it has one.
fn first_literal(p: &PathPattern) -> Option<&str> {
    match p {
        PathPattern::Exact(_) => None,
        PathPattern::Prefix(p) => p.strip_prefix('/').map(|rest| rest.split('/').next().unwrap_or(rest)),
        PathPattern::Template(segs) => match segs.first() {
            Some(Segment::Literal(l)) => Some(l.as_str()),
            _ => None,
        },
    }
}

/// The first segment of a (normalised) request path.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or(rest)
}

/// A compiled, immutable route table.
#[derive(Debug)]
pub struct Table {
    routes: Vec<RouteConfig>,
    /// Precedence order of all routes (indices into `routes`).
    order: Vec<u32>,
    /// Position of each route in `order`.
    rank: Vec<u32>,
    exact_hosts: HashMap<String, Bucket>,
    /// `(suffix, bucket)`, longest suffix first.
    suffix_hosts: Vec<(String, Bucket)>,
    any_host: Bucket,
}

fn precedence(r: &RouteConfig) -> impl Ord {
    let host = r.host.as_ref().map(HostPattern::rank).unwrap_or((0, 0));
    (Reverse(host), Reverse(r.path.rank()), Reverse(!r.methods.is_empty()), Reverse(r.headers.len()))
}

impl Table {
    /// Compile the routes of a config.
    pub fn new(routes: &[RouteConfig]) -> Table {
        let mut order: Vec<u32> = (0..routes.len() as u32).collect();
        order.sort_by_key(|&i| precedence(&routes[i as usize])); // stable: file order breaks ties
        let mut rank = vec![0u32; routes.len()];
        for (pos, &i) in order.iter().enumerate() {
            rank[i as usize] = pos as u32;
        }
        let rank_of = &rank;

        let build = |scope: &dyn Fn(&RouteConfig) -> bool| {
            let mut b = Bucket { best_other: u32::MAX, ..Bucket::default() };
            for &i in &order {
                let r = &routes[i as usize];
                if !scope(r) {
                    continue;
                }
                match (&r.path, first_literal(&r.path)) {
                    (PathPattern::Exact(p), _) => b.exact.entry(p.clone()).or_default().push(i),
                    (_, Some(first)) => b.by_first.entry(first.to_string()).or_default().push(i),
                    (_, None) => b.any_first.push(i),
                }
                if !matches!(r.path, PathPattern::Exact(_)) && b.best_other == u32::MAX {
                    b.best_other = rank_of[i as usize]; // `order` is walked best first
                }
            }
            b
        };

        let mut exact_hosts = HashMap::default();
        let mut suffixes: Vec<String> = Vec::new();
        for r in routes {
            match &r.host {
                Some(HostPattern::Exact(h)) => {
                    let h = h.clone();
                    if let std::collections::hash_map::Entry::Vacant(e) = exact_hosts.entry(h.clone()) {
                        e.insert(build(&|x: &RouteConfig| x.host.as_ref().is_none_or(|p| p.matches(&h))));
                    }
                }
                Some(HostPattern::Suffix(s)) if !suffixes.contains(s) => suffixes.push(s.clone()),
                _ => {}
            }
        }
        suffixes.sort_by_key(|s| Reverse(s.len()));
        let suffix_hosts = suffixes
            .into_iter()
            .map(|s| {
                // a host matching this suffix also matches every shorter suffix that `s` ends with
                let bucket = build(&|x: &RouteConfig| match &x.host {
                    None => true,
                    Some(HostPattern::Suffix(o)) => s.ends_with(o.as_str()),
                    Some(HostPattern::Exact(_)) => false,
                });
                (s, bucket)
            })
            .collect();
        let any_host = build(&|x: &RouteConfig| x.host.is_none());
        Table { routes: routes.to_vec(), order, rank, exact_hosts, suffix_hosts, any_host }
    }

    /// The routes, in config order.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    fn bucket(&self, host: Option<&str>) -> &Bucket {
        let Some(host) = host else {
            return &self.any_host;
        };
        if let Some(b) = self.exact_hosts.get(host) {
            return b;
        }
        for (sfx, b) in &self.suffix_hosts {
            if host.len() > sfx.len() && host.ends_with(sfx.as_str()) {
                return b;
            }
        }
        &self.any_host
    }

    fn rest_matches(r: &RouteConfig, req: &RequestView<'_>) -> bool {
        (r.methods.is_empty() || r.methods.contains(req.method))
            && (r.listeners.is_empty() || req.listener.is_none_or(|l| r.listeners.iter().any(|x| x == l)))
            && r.headers.iter().all(|(n, v)| req.headers.get_all(n).iter().any(|x| x == v))
    }

    /// The index (into [`Table::routes`]) of the route this request takes.
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        let b = self.bucket(req.host);
        // Exact paths are indexed; the best of them still competes on precedence with the
        // templates and prefixes (a host-specific prefix outranks an any-host exact path).
        let exact = b
            .exact
            .get(req.path)
            .and_then(|c| c.iter().copied().find(|&i| Self::rest_matches(&self.routes[i as usize], req)));
        if let Some(e) = exact
            && self.rank[e as usize] < b.best_other
        {
            return Some(e as usize);
        }
        // Merge the two precedence-ordered candidate lists.
        let own: &[u32] = b.by_first.get(first_segment(req.path)).map_or(&[], Vec::as_slice);
        let (mut a, mut z) = (own.iter().peekable(), b.any_first.iter().peekable());
        loop {
            let i = match (a.peek(), z.peek()) {
                (Some(&&x), Some(&&y)) if self.rank[x as usize] < self.rank[y as usize] => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => z.next(),
                (Some(_), None) => a.next(),
                (None, None) => None,
            };
            let Some(&i) = i else { break };
            if let Some(e) = exact
                && self.rank[i as usize] > self.rank[e as usize]
            {
                break;
            }
            let r = &self.routes[i as usize];
            if r.path.matches(req.path) && Self::rest_matches(r, req) {
                return Some(i as usize);
            }
        }
        exact.map(|i| i as usize)
    }

    /// Which route matches and, for every route that did not, why not.
    pub fn explain(&self, req: &RequestView<'_>) -> Explanation {
        let chosen = self.find(req);
        let mut misses = Vec::new();
        for &i in &self.order {
            let i = i as usize;
            if Some(i) == chosen {
                continue;
            }
            let r = &self.routes[i];
            let mut reasons = Vec::new();
            if let Some(h) = &r.host
                && !req.host.is_some_and(|x| h.matches(x))
            {
                reasons.push(format!("host: wants {h}, got {}", req.host.unwrap_or("(none)")));
            }
            if !r.path.matches(req.path) {
                reasons.push(format!("path: wants {}, got {}", r.path, req.path));
            }
            if !r.listeners.is_empty()
                && let Some(l) = req.listener
                && !r.listeners.iter().any(|x| x == l)
            {
                reasons.push(format!("listener: wants {}, got {l}", r.listeners.join("|")));
            }
            if !r.methods.is_empty() && !r.methods.contains(req.method) {
                let m: Vec<&str> = r.methods.iter().map(Method::as_str).collect();
                reasons.push(format!("method: wants {}, got {}", m.join("|"), req.method));
            }
            for (n, v) in &r.headers {
                if !req.headers.get_all(n).iter().any(|x| x == v) {
                    let got = req.headers.get(n).map(|x| String::from_utf8_lossy(x.as_bytes()).into_owned());
                    reasons.push(format!(
                        "header: wants {n}: {}, got {}",
                        String::from_utf8_lossy(v.as_bytes()),
                        got.as_deref().unwrap_or("(absent)")
                    ));
                }
            }
            if reasons.is_empty() {
                reasons.push(format!(
                    "matches too, but `{}` takes precedence",
                    chosen.map(|c| self.routes[c].name.as_str()).unwrap_or("?")
                ));
            }
            misses.push(Miss { route: r.name.clone(), reasons });
        }
        Explanation { chosen: chosen.map(|i| self.routes[i].name.clone()), misses }
    }
}

/// The result of [`Table::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Name of the route taken, if any.
    pub chosen: Option<String>,
    /// Every other route, in precedence order, with why it was not taken.
    pub misses: Vec<Miss>,
}

/// One route that was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// Route name.
    pub route: String,
    /// One line per failed condition.
    pub reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn route(name: &str, host: Option<&str>, path: &str, methods: &[&str], headers: &[(&str, &str)]) -> RouteConfig {
        let pattern = match path.strip_prefix("prefix:") {
            Some(p) => PathPattern::parse_prefix(p),
            None => PathPattern::parse_path(path),
        }
        .expect("pattern");
        RouteConfig {
            name: name.into(),
            host: host.map(|h| HostPattern::parse(h).expect("host")),
            path: pattern,
            methods: methods.iter().map(|m| Method::from_bytes(m.as_bytes()).expect("method")).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).expect("n"), HeaderValue::from_str(v).expect("v")))
                .collect(),
            listeners: Vec::new(),
            upstream: 0,
            auth: Vec::new(),
            allow: Vec::new(),
            rate_limit: None,
            quota: None,
            retry_non_idempotent: false,
        }
    }

    fn find(t: &Table, host: Option<&str>, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(HeaderName::from_bytes(n.as_bytes()).expect("n"), HeaderValue::from_str(v).expect("v"));
        }
        let m = Method::from_bytes(method.as_bytes()).expect("m");
        t.find(&RequestView { host, path, method: &m, headers: &h, listener: None }).map(|i| t.routes()[i].name.clone())
    }

    #[test]
    fn precedence_table() {
        let t = Table::new(&[
            route("catch-all", None, "prefix:/", &[], &[]),
            route("api-prefix", None, "prefix:/api", &[], &[]),
            route("api-v1-prefix", None, "prefix:/api/v1", &[], &[]),
            route("order-tpl", None, "/api/v1/orders/{id}", &[], &[]),
            route("order-new", None, "/api/v1/orders/new", &[], &[]),
            route("order-post", None, "/api/v1/orders/{id}", &["POST"], &[]),
            route("canary", None, "prefix:/api", &[], &[("x-canary", "1")]),
            route("host-exact", Some("api.example.com"), "prefix:/", &[], &[]),
            route("host-wild", Some("*.example.com"), "prefix:/", &[], &[]),
            route("host-wild-deep", Some("*.eu.example.com"), "prefix:/", &[], &[]),
        ]);
        type Case<'a> = (Option<&'a str>, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (None, "GET", "/", &[], "catch-all"),
            (None, "GET", "/apix", &[], "catch-all"),
            (None, "GET", "/api", &[], "api-prefix"),
            (None, "GET", "/api/x", &[("x-canary", "1")], "canary"),
            (None, "GET", "/api/v1/x", &[], "api-v1-prefix"),
            (None, "GET", "/api/v1/orders/7", &[], "order-tpl"),
            (None, "POST", "/api/v1/orders/7", &[], "order-post"),
            (None, "POST", "/api/v1/orders/new", &[], "order-new"),
            (Some("api.example.com"), "GET", "/api/v1/orders/7", &[], "host-exact"),
            (Some("www.example.com"), "GET", "/x", &[], "host-wild"),
            (Some("a.eu.example.com"), "GET", "/x", &[], "host-wild-deep"),
            (Some("other.org"), "GET", "/api", &[], "api-prefix"),
        ];
        for (host, m, p, h, want) in cases {
            assert_eq!(find(&t, *host, m, p, h).as_deref(), Some(*want), "{host:?} {m} {p} {h:?}");
        }
    }

    /// The indexed lookup must agree with the plain definition: the first route in
    /// precedence order whose host, path, methods and headers all match.
    #[test]
    fn index_agrees_with_a_linear_scan() {
        let hosts = [None, Some("api.example.com"), Some("*.example.com"), Some("*.eu.example.com")];
        let paths = [
            "/",
            "prefix:/",
            "prefix:/a",
            "prefix:/a/b",
            "/a",
            "/a/b",
            "/a/{x}",
            "/{t}/b",
            "/{t}/{u}",
            "prefix:/b",
            "/b/{x}/c",
        ];
        let methods: [&[&str]; 2] = [&[], &["GET"]];
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..40 {
            let mut routes = Vec::new();
            for i in 0..12 {
                let host = hosts[rng.usize(..hosts.len())];
                let path = paths[rng.usize(..paths.len())];
                let m = methods[rng.usize(..methods.len())];
                routes.push(route(&format!("r{round}-{i}"), host, path, m, &[]));
            }
            let t = Table::new(&routes);
            for host in
                [None, Some("api.example.com"), Some("x.example.com"), Some("y.eu.example.com"), Some("other.org")]
            {
                for path in ["/", "/a", "/a/", "/a/b", "/a/c", "/a/b/c", "/b", "/b/q/c", "/c", "/c/b", "/z/b"] {
                    for method in ["GET", "POST"] {
                        let m = Method::from_bytes(method.as_bytes()).expect("m");
                        let h = HeaderMap::new();
                        let req = RequestView { host, path, method: &m, headers: &h, listener: None };
                        let linear = t.order.iter().map(|&i| i as usize).find(|&i| {
                            let r = &t.routes[i];
                            r.host.as_ref().is_none_or(|p| host.is_some_and(|x| p.matches(x)))
                                && r.path.matches(path)
                                && Table::rest_matches(r, &req)
                        });
                        assert_eq!(t.find(&req), linear, "round {round}: {host:?} {method} {path}");
                    }
                }
            }
        }
    }

    #[test]
    fn methods_and_headers_filter() {
        let t =
            Table::new(&[route("get", None, "/x", &["GET"], &[]), route("hdr", None, "/y", &[], &[("x-env", "prod")])]);
        assert_eq!(find(&t, None, "DELETE", "/x", &[]), None);
        assert_eq!(find(&t, None, "GET", "/y", &[("x-env", "dev")]), None);
        assert_eq!(find(&t, None, "GET", "/y", &[("x-env", "prod")]).as_deref(), Some("hdr"));
    }

    #[test]
    fn explain_names_each_failed_condition() {
        let t = Table::new(&[
            route("a", Some("api.example.com"), "/v1/orders/{id}", &["GET"], &[]),
            route("b", None, "prefix:/status", &[], &[("x-env", "prod")]),
        ]);
        let h = HeaderMap::new();
        let e = t.explain(&RequestView {
            host: Some("other.org"),
            path: "/v1/orders/1",
            method: &Method::DELETE,
            headers: &h,
            listener: None,
        });
        assert_eq!(e.chosen, None);
        assert_eq!(e.misses[0].route, "a");
        assert_eq!(e.misses[0].reasons.len(), 2, "{:?}", e.misses[0]);
        assert!(e.misses[0].reasons[0].starts_with("host:"));
        assert!(e.misses[0].reasons[1].starts_with("method:"));
        assert!(e.misses[1].reasons[0].starts_with("path:"));
        assert!(e.misses[1].reasons[1].starts_with("header:"));
    }
}
