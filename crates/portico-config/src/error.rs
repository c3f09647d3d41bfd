//! Errors from loading a configuration: one [`ConfigError`] per problem, each with its key path.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, `functions.hello.timeout_seconds` or `accelerator.listeners[0].port`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub reason: String,
}

impl ConfigError {
    /// An error at `path` for `reason`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{origin} is not valid TOML: {message}")]
    Syntax {
        /// Where the text came from (a file path, or `embedded default`).
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The TOML is well-formed but describes an invalid topology.
    #[error("{origin} has {} error(s):\n{}", errors.len(), ErrorList(errors))]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// Every problem found, in file order where possible.
        errors: Vec<ConfigError>,
    },
}

struct ErrorList<'a>(&'a [ConfigError]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}
