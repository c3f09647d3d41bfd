//! The portico topology: one TOML file in, a validated typed model out.
//!
//! This crate knows nothing about sockets or processes. It turns text into a
//! [`Config`] or into a list of [`ConfigError`]s, every one of them naming the
//! key it is about (`functions.hello.timeout_seconds: 0 s is below the minimum
//! of 1 s`), so a user fixes a file in one pass instead of one error per run.
//!
//! Layout:
//! - [`model`]: the typed topology and its defaults (what each key means);
//! - [`routing`]: listener rules, conditions and actions;
//! - [`ha`]: the accelerator on several nodes, VRRP or BGP;
//! - [`gateway`]: JWT authorizers, API keys, usage plans, rate limits, validation, CORS;
//! - [`decode`]: TOML to model, collecting unknown keys and type errors with paths;
//! - [`validate`]: the rules the model must follow (ranges, names, references);
//! - [`error`]: the error types.

pub mod decode;
pub mod error;
pub mod gateway;
pub mod ha;
pub mod model;
pub mod routing;
pub mod validate;

pub use decode::{from_table, load_api_key_file, load_file, load_table, parse};
pub use error::{ConfigError, LoadError};
pub use gateway::*;
pub use ha::*;
pub use model::*;
pub use routing::*;
