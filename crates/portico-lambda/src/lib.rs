//! The function runtime: runs unmodified Lambda functions through the Lambda Runtime API.
//!
//! A function is any program that speaks the Runtime API (a `bootstrap` built with
//! `lambda_runtime`, Python with `awslambdaric`, …). Each execution environment is one child
//! process with a Runtime API endpoint of its own on loopback; it handles one invocation at a
//! time and is reused for the next. A [`Runtime`] owns a pool of environments per function and
//! implements [`portico_invoke::Invoker`].
//!
//! Layout:
//! - [`spec`]: what the runtime needs to know about a function;
//! - [`runtime`]: the set of functions, limits and shutdown (the `Invoker`);
//! - `pool`: warm environments of one function, created on demand up to its concurrency;
//! - `environment`: one execution environment: its process, its state, one invocation at a time;
//! - [`isolation`]: its sandbox (Lambda's paths, `portico-sandbox`), or none;
//! - `exchange`: the hand-off of an invocation between the invoker and the Runtime API;
//! - `runtime_api`: the HTTP routes of the 2018-06-01 Runtime API;
//! - `extensions`, `extension_api`: the Extensions API (2020-01-01): extensions registered
//!   with an environment, their events, and its routes;
//! - `telemetry`: the Telemetry API (2022-07-01) and the Logs API (2020-08-15): subscriptions
//!   and the delivery of platform events and log lines to them;
//! - [`invoke_api`]: the Lambda Invoke API (2015-03-31) for the AWS CLI and SDKs;
//! - [`launch`]: how a function of each runtime (`provided`, `python3.N`, `nodejsN.x`) starts;
//! - [`package`]: `.zip` deployment packages, unpacked once into a content-keyed cache;
//! - [`layers`]: a function's layers merged in order into what a sandbox shows at `/opt`;
//! - [`image`]: container image functions, unpacked once into a root filesystem;
//! - `memory`: the memory limit of an environment (cgroup v2, else a watchdog and an rlimit);
//! - `process`: spawning, signalling and reaping the function's process group;
//! - [`logs`]: capturing function output, Lambda's START/END/REPORT lines, each function's
//!   recent log and its followers.

pub mod admin;
pub mod credentials;
mod environment;
mod exchange;
mod extension_api;
mod extensions;
pub mod image;
pub mod invoke_api;
pub mod isolation;
pub mod launch;
pub mod layers;
pub mod logs;
mod memory;
pub mod package;
mod peer;
mod pool;
mod process;
pub mod runtime;
mod runtime_api;
pub mod spec;
mod telemetry;
mod xray;

pub use isolation::Isolation;
pub use logs::{LogBook, LogLine};
pub use runtime::{Runtime, RuntimeOptions};
pub use spec::FunctionSpec;
