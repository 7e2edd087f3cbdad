//! A small YAML tree with source positions, built from `saphyr-parser` events.
//!
//! We build our own tree (rather than deserialising with serde) so that the decoder can
//! report *every* error in a file, each with its line and column. The builder is bounded:
//! depth, node count and input size are capped, and aliases are refused outright, so a
//! hostile file (billion laughs, deep nesting) costs at most a few megabytes.

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Largest config file we read.
pub(crate) const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
const MAX_DEPTH: usize = 64;
const MAX_NODES: usize = 200_000;

/// A 1-based line and column in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub col: usize,
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) pos: Pos,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A scalar; `plain` is false when it was quoted or a block scalar.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// True for a plain `~`, `null`, `Null`, `NULL` or empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error at a position.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

fn pos_of(m: saphyr_parser::Marker) -> Pos {
    Pos { line: m.line().max(1), col: m.col() + 1 }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// Parse one YAML document into a [`Node`]. An empty document gives `None`.
pub(crate) fn parse(src: &str) -> Result<Option<Node>, SyntaxError> {
    if src.len() > MAX_INPUT_BYTES {
        return Err(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            message: format!("file is larger than {MAX_INPUT_BYTES} bytes"),
        });
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;

    for ev in Parser::new_from_str(src) {
        let (ev, span) =
            ev.map_err(|e| SyntaxError { pos: pos_of(e.marker().to_owned()), message: e.info().to_string() })?;
        let pos = pos_of(span.start);
        let done: Option<Node> = match ev {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError { pos, message: "only one YAML document is allowed".into() });
                }
                None
            }
            Event::Alias(_) => {
                return Err(SyntaxError {
                    pos,
                    message: "YAML aliases (*name) are not supported; write the value out".into(),
                });
            }
            Event::Scalar(value, style, _, _) => {
                Some(Node { pos, kind: Kind::Scalar { value: value.into_owned(), plain: style == ScalarStyle::Plain } })
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(pos, Vec::new()));
                None
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(pos, Vec::new(), None));
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, items)) => Some(Node { pos: p, kind: Kind::Seq(items) }),
                _ => {
                    return Err(SyntaxError { pos, message: "unbalanced sequence".into() });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(p, entries, None)) => Some(Node { pos: p, kind: Kind::Map(entries) }),
                _ => {
                    return Err(SyntaxError { pos, message: "unbalanced mapping".into() });
                }
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(SyntaxError { pos, message: format!("nesting deeper than {MAX_DEPTH} levels") });
        }
        let Some(node) = done else { continue };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(SyntaxError { pos, message: format!("more than {MAX_NODES} values") });
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    if !matches!(node.kind, Kind::Scalar { .. }) {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: "mapping keys must be plain strings".into(),
                        });
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a: 1\nb:\n  - x\n").expect("parse").expect("doc");
        let Kind::Map(entries) = &n.kind else { panic!("map") };
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let Kind::Seq(items) = &entries[1].1.kind else { panic!("seq") };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn aliases_are_refused() {
        let e = parse("a: &x [1]\nb: *x\n").expect_err("alias");
        assert_eq!(e.pos.line, 2);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let src = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&src).is_err());
    }

    #[test]
    fn empty_document_is_none() {
        assert!(parse("").expect("parse").is_none());
        assert!(parse("# only a comment\n").expect("parse").is_none());
    }
}
