//! Route match patterns: hosts (`api.example.com`, `*.example.com`) and paths (exact,
//! templates like `/v1/orders/{id}`, segment-wise prefixes).
//!
//! Patterns are parsed and checked here, at config load, so that a bad pattern is reported
//! with its line and column; the router only consumes the typed result.

/// A host to match, lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The host must equal this.
    Exact(String),
    /// `*.example.com`: the host must end with `.example.com` (stored with the leading dot)
    /// and have at least one more label in front.
    Suffix(String),
}

impl HostPattern {
    /// Parse `api.example.com` or `*.example.com`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(format!("invalid host `{s}`"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "invalid host `{s}`: use a DNS name like api.example.com or *.example.com (no port, no scheme)"
                ));
            }
        }
        Ok(if wild { HostPattern::Suffix(format!(".{name}")) } else { HostPattern::Exact(name.to_string()) })
    }

    /// Does `host` (already lower-cased, port removed) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
        }
    }

    /// How specific the pattern is: exact hosts outrank wildcards, longer wildcards outrank shorter.
    pub fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Suffix(s) => (1, s.len()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// A path to match, in normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `path: /v1/health`: the path must be exactly this.
    Exact(String),
    /// `path: /v1/orders/{id}`: same number of segments, literals equal.
    Template(Vec<Segment>),
    /// `prefix: /status`: `/status` itself and anything under `/status/`, segment-wise.
    /// Stored without a trailing slash; `/` is stored as the empty string and matches everything.
    Prefix(String),
}

fn valid_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

fn check_segments(s: &str, what: &str, allow_params: bool) -> Result<Vec<Segment>, String> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("{what} `{s}` must start with `/`"));
    };
    if s.contains('?') || s.contains('#') {
        return Err(format!("{what} `{s}` must not contain a query (`?`) or fragment (`#`)"));
    }
    let mut out = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    if rest.is_empty() {
        return Ok(out);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        if seg.is_empty() {
            if i + 1 == parts.len() {
                // a trailing slash is a real, empty last segment
                out.push(Segment::Literal(String::new()));
                continue;
            }
            return Err(format!(
                "{what} `{s}` contains `//`; paths are normalised before matching, so it could never match"
            ));
        }
        if *seg == "." || *seg == ".." {
            return Err(format!(
                "{what} `{s}` contains a dot-segment; paths are normalised before matching, so it could never match"
            ));
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            if !allow_params {
                return Err(format!("{what} `{s}`: a prefix cannot contain `{{param}}` segments; use `path`"));
            }
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!("{what} `{s}`: invalid parameter `{{{name}}}` (letters, digits and `_` only)"));
            }
            if names.contains(&name) {
                return Err(format!("{what} `{s}`: parameter `{{{name}}}` appears twice"));
            }
            names.push(name);
            out.push(Segment::Param(name.to_string()));
            continue;
        }
        if seg.contains('{') || seg.contains('}') {
            return Err(format!("{what} `{s}`: a parameter must be a whole segment, like `/orders/{{id}}`"));
        }
        if let Some(b) = seg.bytes().find(|b| !valid_pchar(*b)) {
            return Err(format!("{what} `{s}` contains the character {:?}, which is not allowed in a path", b as char));
        }
        let alone = format!("/{seg}");
        if crate::router::path::normalise(&alone).map(|n| n != alone).unwrap_or(true) {
            return Err(format!(
                "{what} `{s}` is not in normalised form (write unreserved characters unencoded and `%XX` in upper case)"
            ));
        }
        out.push(Segment::Literal((*seg).to_string()));
    }
    Ok(out)
}

impl PathPattern {
    /// Parse a `path:` value: exact unless it contains `{param}` segments.
    pub fn parse_path(s: &str) -> Result<Self, String> {
        let segs = check_segments(s, "path", true)?;
        if segs.iter().any(|x| matches!(x, Segment::Param(_))) {
            Ok(PathPattern::Template(segs))
        } else {
            Ok(PathPattern::Exact(s.to_string()))
        }
    }

    /// Parse a `prefix:` value.
    pub fn parse_prefix(s: &str) -> Result<Self, String> {
        let trimmed = s.trim_end_matches('/');
        check_segments(if trimmed.is_empty() { "/" } else { trimmed }, "prefix", false)?;
        Ok(PathPattern::Prefix(trimmed.to_string()))
    }

    /// Does the normalised `path` match?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => {
                path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathPattern::Template(segs) => {
                let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
                if path == "/" {
                    return segs.is_empty();
                }
                for seg in segs {
                    match (seg, parts.next()) {
                        (_, None) => return false,
                        (Segment::Literal(l), Some(p)) if l == p => {}
                        (Segment::Param(_), Some(p)) if !p.is_empty() => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }

    /// Specificity for ordering: exact > template > prefix; then longer / more literal first.
    pub fn rank(&self) -> (u8, usize, usize) {
        match self {
            PathPattern::Exact(p) => (3, p.len(), 0),
            PathPattern::Template(segs) => {
                let literals = segs.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
                (2, segs.len(), literals)
            }
            PathPattern::Prefix(p) => (1, p.matches('/').count(), p.len()),
        }
    }
}

impl PathPattern {
    /// The same pattern with its literal text in lower case (for the shadow check of
    /// protected routes).
    pub fn to_lowercase(&self) -> PathPattern {
        match self {
            PathPattern::Exact(p) => PathPattern::Exact(p.to_ascii_lowercase()),
            PathPattern::Prefix(p) => PathPattern::Prefix(p.to_ascii_lowercase()),
            PathPattern::Template(segs) => PathPattern::Template(
                segs.iter()
                    .map(|s| match s {
                        Segment::Literal(l) => Segment::Literal(l.to_ascii_lowercase()),
                        p @ Segment::Param(_) => p.clone(),
                    })
                    .collect(),
            ),
        }
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(p) => write!(f, "path {p}"),
            PathPattern::Prefix(p) => write!(f, "prefix {}", if p.is_empty() { "/" } else { p }),
            PathPattern::Template(segs) => {
                f.write_str("path ")?;
                if segs.is_empty() {
                    return f.write_str("/");
                }
                for s in segs {
                    match s {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::Param(n) => write!(f, "/{{{n}}}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let w = HostPattern::parse("*.Example.com").expect("wild");
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(HostPattern::parse("api.example.com:443").is_err());
        assert!(HostPattern::parse("http://x").is_err());
        assert!(HostPattern::parse("*").is_err());
    }

    #[test]
    fn templates() {
        let t = PathPattern::parse_path("/v1/orders/{id}").expect("template");
        assert!(t.matches("/v1/orders/42"));
        assert!(!t.matches("/v1/orders/"));
        assert!(!t.matches("/v1/orders/42/x"));
        assert!(!t.matches("/v1/orders"));
        assert!(t.matches("/v1/orders/a%2Fb"));
        assert!(PathPattern::parse_path("/v1/{id}/{id}").is_err());
        assert!(PathPattern::parse_path("/v1/x{id}").is_err());
        assert!(PathPattern::parse_path("v1").is_err());
        assert!(PathPattern::parse_path("/a//b").is_err());
        assert!(PathPattern::parse_path("/a/../b").is_err());
        assert!(PathPattern::parse_path("/a/%7e").is_err());
    }

    #[test]
    fn prefixes_are_segment_wise() {
        let p = PathPattern::parse_prefix("/status/").expect("prefix");
        assert!(p.matches("/status"));
        assert!(p.matches("/status/"));
        assert!(p.matches("/status/x/y"));
        assert!(!p.matches("/statusx"));
        assert!(!p.matches("/"));
        let root = PathPattern::parse_prefix("/").expect("root");
        assert!(root.matches("/"));
        assert!(root.matches("/anything"));
        assert!(PathPattern::parse_prefix("/a/{id}").is_err());
    }

    #[test]
    fn ranks_order_exact_template_prefix() {
        let e = PathPattern::parse_path("/a/b").expect("e").rank();
        let t = PathPattern::parse_path("/a/{x}").expect("t").rank();
        let p = PathPattern::parse_prefix("/a/b/c/d").expect("p").rank();
        assert!(e > t && t > p);
    }
}
