//! Request path normalisation, done once before routing.
//!
//! What the router matches is exactly what the upstream receives, so a path can never be
//! read one way by the gateway and another way by the backend. The rules:
//! * `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; every other escape
//!   is kept, with its hex in upper case. `%2F` therefore never becomes a separator.
//! * Dot-segments are removed (RFC 3986 §5.2.4) after that decoding, so `/%2e%2e/` is `/`;
//!   `..` at the root stays at the root.
//! * Empty segments (`//`) are collapsed; a trailing slash is kept.
//! * Refused with 400: a path not starting with `/`, bad `%` escapes, a backslash (raw or
//!   `%5C`), NUL and control characters, escapes that do not decode to valid UTF-8 (overlong
//!   forms like `%C0%AE`), dot-segments carrying parameters (`..;x`, read as `..` by some
//!   servers), segments made only of dots that include a look-alike (U+FF0E, U+2024,
//!   U+FE52), which some backends fold to `..`, slash and backslash look-alikes anywhere
//!   (U+FF0F, U+FF3C, U+2215, U+2044, U+29F8, U+FE68), and an encoded `/` that would make a
//!   dot-segment once a backend decodes it (`..%2F`, `%2F..`).

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid request path: {0}")]
pub struct PathError(pub &'static str);

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes allowed raw in a path segment (RFC 3986 `pchar` minus `%`, which is handled apart).
const fn raw_ok(b: u8) -> bool {
    unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise a request path (without its query). Already-normal paths are borrowed, so the
/// common case allocates nothing.
/// The loose form of a normalised path, as lenient backends may read it: each segment in
/// lower case, without `;parameters` and without trailing dots. `None` when it is the same
/// (the common case: nothing to allocate). A public route's request whose loose form
/// matches a protected route is refused, so `/Admin`, `/admin;x` or `/admin.` cannot reach
/// a case-insensitive, parameter-stripping or dot-trimming backend behind `/admin`'s `auth`.
pub fn loose_form(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let differs = b.iter().any(|c| c.is_ascii_uppercase() || *c == b';') || path.ends_with('.') || path.contains("./");
    if !differs {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        out.push('/');
        // `;` starts path parameters, also when escaped (some backends decode first).
        let cut = seg.find(';').into_iter().chain(seg.to_ascii_lowercase().find("%3b")).min().unwrap_or(seg.len());
        let seg = seg[..cut].trim_end_matches('.');
        out.extend(seg.chars().map(|c| c.to_ascii_lowercase()));
    }
    Some(out)
}

pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError("the path must start with `/`"));
    }
    let mut slow = false;
    let mut prev = 0u8;
    for &c in b {
        match c {
            b'/' => {
                if prev == b'/' {
                    slow = true;
                }
            }
            b'%' => slow = true,
            b'.' if prev == b'/' => slow = true,
            b'\\' => return Err(PathError("backslash in path")),
            c if raw_ok(c) => {}
            _ => return Err(PathError("a character that is not allowed in a path")),
        }
        prev = c;
    }
    if !slow {
        return Ok(Cow::Borrowed(path));
    }
    normalise_slow(path).map(Cow::Owned)
}

fn normalise_slow(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    // Byte offsets in `out` where each kept segment starts (at its leading '/').
    let mut starts: Vec<usize> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    let raw_segments: Vec<&str> = path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in raw_segments.iter().enumerate() {
        let seg_start = out.len();
        out.push('/');
        decoded.clear();
        let sb = seg.as_bytes();
        let mut j = 0;
        while j < sb.len() {
            let c = sb[j];
            if c == b'%' {
                let (Some(h), Some(l)) = (sb.get(j + 1).and_then(|x| hex(*x)), sb.get(j + 2).and_then(|x| hex(*x)))
                else {
                    return Err(PathError("bad percent-escape"));
                };
                let v = h << 4 | l;
                if v < 0x20 || v == 0x7f {
                    return Err(PathError("encoded control character in path"));
                }
                if v == b'\\' {
                    return Err(PathError("encoded backslash in path"));
                }
                decoded.push(v);
                if unreserved(v) {
                    out.push(v as char);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(HEX[(v >> 4) as usize] as char);
                    out.push(HEX[(v & 15) as usize] as char);
                }
                j += 3;
            } else if raw_ok(c) {
                decoded.push(c);
                out.push(c as char);
                j += 1;
            } else if c == b'\\' {
                return Err(PathError("backslash in path"));
            } else {
                return Err(PathError("a character that is not allowed in a path"));
            }
        }
        let text = std::str::from_utf8(&decoded).map_err(|_| PathError("escapes that are not valid UTF-8"))?;
        let kept = &out[seg_start + 1..];
        let dot_part = kept.split(';').next().unwrap_or("");
        let is_dot = kept == "." || kept == "..";
        if !is_dot && (dot_part == "." || dot_part == "..") {
            return Err(PathError("a dot-segment with parameters"));
        }
        if !text.is_ascii() {
            if text.chars().all(|ch| matches!(ch, '.' | '\u{FF0E}' | '\u{2024}' | '\u{FE52}')) {
                return Err(PathError("a segment of look-alike dots"));
            }
            if text
                .chars()
                .any(|ch| matches!(ch, '\u{FF0F}' | '\u{FF3C}' | '\u{2215}' | '\u{2044}' | '\u{29F8}' | '\u{FE68}'))
            {
                return Err(PathError("a slash look-alike"));
            }
        }
        if text.contains('/') && text.split('/').any(|p| p == "." || p == "..") {
            return Err(PathError("an encoded slash next to a dot-segment"));
        }
        if kept == "." {
            out.truncate(seg_start);
            trailing_slash = i == last;
        } else if kept == ".." {
            out.truncate(seg_start);
            if let Some(s) = starts.pop() {
                out.truncate(s);
            }
            trailing_slash = i == last;
        } else if kept.is_empty() {
            out.truncate(seg_start);
            trailing_slash = i == last;
        } else {
            starts.push(seg_start);
            trailing_slash = false;
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_forms() {
        assert_eq!(loose_form("/admin/users"), None);
        assert_eq!(loose_form("/Admin/Users").as_deref(), Some("/admin/users"));
        assert_eq!(loose_form("/admin;jsessionid=1/users").as_deref(), Some("/admin/users"));
        assert_eq!(loose_form("/admin./users").as_deref(), Some("/admin/users"));
        assert_eq!(loose_form("/admin..").as_deref(), Some("/admin"));
        assert_eq!(loose_form("/admin%3Bx/users").as_deref(), Some("/admin/users"));
        assert_eq!(loose_form("/a/").as_deref(), None);
        assert_eq!(loose_form("/").as_deref(), None);
    }

    fn n(p: &str) -> Result<String, PathError> {
        normalise(p).map(|c| c.into_owned())
    }

    #[test]
    fn table() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a//b", "/a/b"),
            ("//a///b//", "/a/b/"),
            ("/%2e%2e/", "/"),
            ("/%2E%2e/secret", "/secret"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/%7euser", "/~user"),
            ("/%41%42", "/AB"),
            ("/%252e%252e/x", "/%252e%252e/x"),
            ("/a/.hidden", "/a/.hidden"),
            ("/a/...", "/a/..."),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a;b=c", "/a;b=c"),
            ("/a%2Fb%2Fc", "/a%2Fb%2Fc"),
        ];
        for (input, want) in ok {
            assert_eq!(n(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            "",
            "a",
            "/a\\b",
            "/a%5Cb",
            "/a%5cb",
            "/%00",
            "/%0a",
            "/%zz",
            "/%4",
            "/..;/admin",
            "/.;x",
            "/%C0%AE%C0%AE/x",
            "/%EF%BC%8E%EF%BC%8E/admin",
            "/\u{7f}",
            "/a b",
            "/a\"b",
        ];
        for input in bad {
            assert!(n(input).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalise("/v1/orders/42"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalise("/a/.b"), Ok(Cow::Owned(_))));
    }

    /// Random paths built from the troublesome pieces: whatever comes out must be normal,
    /// stable, and unable to climb (no dot-segments, no `//`, no raw backslash).
    #[test]
    fn random_paths_come_out_normal() {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "%25",
            "a",
            "b",
            "~",
            "%7e",
            ";",
            "..;",
            "%00",
            "%c0%ae",
            "%ef%bc%8e",
            "%e2%88%95",
            "%",
            "%4",
            "\\",
            " ",
            "?",
            "@",
            ":",
            "-",
            "_",
            "%41",
        ];
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..rng.usize(0..10) {
                p.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            let Ok(out) = normalise(&p) else { continue };
            assert!(out.starts_with('/'), "{p:?} -> {out:?}");
            assert!(!out.contains("//"), "{p:?} -> {out:?}");
            assert!(!out.contains('\\'), "{p:?} -> {out:?}");
            for seg in out.split('/') {
                assert!(seg != "." && seg != "..", "{p:?} -> {out:?}");
            }
            assert_eq!(normalise(&out).as_deref(), Ok(&*out), "not stable: {p:?}");
        }
    }

    #[test]
    fn idempotent() {
        for p in ["/a/../b/./c//d/", "/%2e/%7E/%2f", "/x/%2E%2E/y%2F"] {
            let once = n(p).expect("once");
            assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }
}
