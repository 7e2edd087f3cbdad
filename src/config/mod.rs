//! Configuration: reading the YAML users write, checking all of it, and producing the typed
//! [`Config`] the gateway runs on.
//!
//! Owns: the file format (`version: 1`), units, match patterns, defaults, and the error
//! format `FILE:LINE:COL: path.to.field: message`. The same [`load`] backs
//! `portcullis validate`, start-up and every reload, so what validates is what runs.

mod decode;
mod model;
pub mod pattern;
pub mod units;
mod yaml;

pub use model::*;
pub use yaml::Pos;

use std::fmt;
use std::path::Path;

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given.
    pub file: String,
    /// Line and column (1-based).
    pub pos: Pos,
    /// Dotted path of the field, like `routes[0].match.path`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file, self.pos.line, self.pos.col, self.path, self.message)
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parse and validate config text. `file` names it in errors.
pub fn parse(file: &str, src: &str) -> Result<Config, ConfigErrors> {
    // The YAML parser is third-party code fed hostile input: a panic in it must refuse this
    // file, not take down a running gateway's reload.
    let parsed = std::panic::catch_unwind(|| yaml::parse(src)).unwrap_or_else(|_| {
        Err(yaml::SyntaxError { pos: Pos { line: 1, col: 1 }, message: "the YAML parser failed on this input".into() })
    });
    let root = parsed.map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            pos: e.pos,
            path: "(yaml)".into(),
            message: e.message,
        }])
    })?;
    decode::decode(file, root.as_ref())
}

/// Read a config file's text (bounded in size), with errors in the config error format.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    let file = path.display().to_string();
    let read_err = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            pos: Pos { line: 1, col: 1 },
            path: "(file)".into(),
            message,
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(format!("cannot read: {e}")))?;
    if meta.len() > yaml::MAX_INPUT_BYTES as u64 {
        return Err(read_err(format!("file is larger than {} bytes", yaml::MAX_INPUT_BYTES)));
    }
    std::fs::read_to_string(path).map_err(|e| read_err(format!("cannot read: {e}")))
}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    parse(&path.display().to_string(), &read(path)?)
}

#[cfg(test)]
mod tests;
