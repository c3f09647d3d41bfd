//! `portico-bench`: runs portico beside the systems it is compared with, in the same run,
//! on the same machine, with the same load generator, and prints the figures side by side
//! with their ratios. `scripts/bench` builds everything and calls it.
//!
//! Layout:
//! - `load`: the closed-loop HTTP load generator;
//! - `servers`: starting, readying and stopping the systems under test;
//! - `invoke`: the function runtime against `cargo lambda watch`.

mod invoke;
mod load;
mod servers;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Invoke(options) => invoke::run(options).await,
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
