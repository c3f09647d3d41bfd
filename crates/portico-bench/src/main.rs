//! `portico-bench`: runs portico beside the systems it is compared with, in the same run,
//! on the same machine, with the same load generator, and prints the figures side by side
//! with their ratios. `scripts/bench` builds everything and calls it.
//!
//! Layout:
//! - `load`: the closed-loop HTTP load generator;
//! - `servers`: starting, readying and stopping the systems under test;
//! - `instructions`: user-space instructions per request, counted by callgrind;
//! - `invoke`: the function runtime against `cargo lambda watch`;
//! - `lb`: the load balancer against HAProxy and nginx, with `backend` as their target;
//! - `edge`: the accelerator's TCP forwarding against HAProxy in TCP mode, with its own
//!   `tcp-backend`;
//! - `soak`: a whole node under normal traffic and attacks for minutes, its resources
//!   reported as it goes.

mod backend;
mod edge;
mod instructions;
mod invoke;
mod lb;
mod load;
mod servers;
mod soak;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Benchmarks of portico against the systems it replaces.
#[derive(Debug, Parser)]
#[command(name = "portico-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Warm invoke latency, throughput and cold start of a `lambda_runtime` function through
    /// portico's Invoke API and through `cargo lambda watch`.
    Invoke(invoke::Options),
    /// Throughput and latency of the load balancer alone, forwarding to an HTTP backend,
    /// beside HAProxy and nginx.
    Lb(lb::Options),
    /// The HTTP backend of the `lb` benchmark (started by it).
    Backend(backend::Options),
    /// Throughput, added latency and memory per held connection of the edge alone (TCP),
    /// beside HAProxy in TCP mode.
    Edge(edge::Options),
    /// The TCP backend of the `edge` benchmark (started by it).
    TcpBackend(edge::BackendOptions),
    /// A node under normal traffic at half its capacity and under attack (slow clients,
    /// aborts, connection floods, queued events), its memory, descriptors and function
    /// processes reported as it goes.
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backend(options) => backend::run(options),
        Command::TcpBackend(options) => edge::backend(options),
        command => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async move {
                    match command {
                        Command::Invoke(options) => invoke::run(options).await,
                        Command::Lb(options) => lb::run(options).await,
                        Command::Edge(options) => edge::run(options).await,
                        Command::Soak(options) => soak::run(options).await,
                        Command::Backend(_) | Command::TcpBackend(_) => Ok(()),
                    }
                })
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portico-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root, for the default paths of built binaries.
fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
