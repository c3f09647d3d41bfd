//! `portico`: serverless functions behind static IPs, in one binary.
//!
//! This file only parses arguments, sets up logging and hands over to a command; the tiers
//! live in their own crates (`portico-edge`, `portico-alb`, `portico-lambda`).
//!
//! Layout:
//! - `topology`: the validated config turned into what each tier runs;
//! - `up`: `portico up`: binding, wiring the tiers together, and the shutdown sequence;
//! - `banner`: what `portico up` prints at start (static addresses and routes);
//! - `ha`: a node of a multi-node accelerator: host checks, health fed to keepalived or
//!   BIRD, giving the static IPs up before draining;
//! - `signals`: SIGINT/SIGTERM as a future;
//! - `scheduler`: the tokio scheduler and its thread count (`TOKIO_WORKER_THREADS`);
//! - `client`: `portico invoke`, `portico logs` and `portico status`, talking to a running
//!   portico.

mod balancers;
mod banner;
mod client;
mod ha;
mod scheduler;
mod signals;
mod topology;
mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a configuration that cannot be used: sysexits' `EX_USAGE`, returned before
/// any port is bound.
const EXIT_BAD_CONFIG: u8 = 64;

/// Serverless functions behind static IPs: edge, load balancer and Lambda runtime in one binary.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the topology in FILE (or the embedded demo) until SIGINT or SIGTERM.
    ///
    /// SIGHUP re-reads FILE and moves everything to it in place (changes made through the
    /// APIs stay laid over it): listeners keep their sockets, functions drain.
    Up {
        /// The topology file; without it, the embedded demo topology runs.
        file: Option<PathBuf>,
        /// Run only this node's part of the topology (the accelerator and load balancers
        /// with `node = "NAME"`, and whatever has no node).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Print the topology a node started from FILE runs: FILE with the changes made through
    /// the APIs (kept beside it, in NAME.state/) laid over it, as TOML.
    Export {
        /// The topology file.
        file: PathBuf,
    },
    /// Check FILE and print every error, each with its key path.
    Validate {
        /// The topology file.
        file: PathBuf,
        /// Also check that this host can run node NAME's part (for an accelerator on
        /// several nodes: the daemon's program, the interface, the node's address).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Invoke FUNCTION on a running portico and print its reply.
    Invoke {
        /// The function's name or ARN.
        function: String,
        /// The event, as JSON. Default `{}`.
        #[arg(long)]
        payload: Option<String>,
        /// Also print the end of the invocation's log (up to 4 KB) to stderr.
        #[arg(long)]
        tail: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show a running portico's endpoint groups (health, measured RTT, share of new
    /// connections) and target health, from its admin API.
    Status {
        /// Print the admin API's JSON as it is.
        #[arg(long)]
        json: bool,
        /// The admin API's URL, e.g. `http://127.0.0.1:9002`.
        #[arg(long)]
        endpoint: Option<String>,
        /// The topology file the running portico was started with (for its `[admin_api]`);
        /// default: the embedded demo.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a running accelerator's static IPs in the shape of AWS's `ip-ranges.json`,
    /// from its admin API.
    Ips {
        /// The admin API's URL, e.g. `http://127.0.0.1:9002`.
        #[arg(long)]
        endpoint: Option<String>,
        /// The topology file the running portico was started with (for its `[admin_api]`);
        /// default: the embedded demo.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print FUNCTION's recent log lines from a running portico.
    Logs {
        /// The function's name.
        function: String,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print a JWT signed with KEY, to call routes behind a JWT authorizer while testing.
    ///
    /// The algorithm follows the key: RS256 for RSA, ES256 for P-256, EdDSA for Ed25519.
    Token {
        /// The private key, in PEM (PKCS#8, or PKCS#1/SEC1).
        #[arg(long)]
        key: PathBuf,
        /// The `kid` header: which key of the authorizer's JWKS verifies it.
        #[arg(long)]
        kid: Option<String>,
        /// The `iss` claim.
        #[arg(long)]
        issuer: String,
        /// The `aud` claim.
        #[arg(long)]
        audience: String,
        /// The `sub` claim.
        #[arg(long, default_value = "test-user")]
        subject: String,
        /// A scope for the `scope` claim; repeat for more.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600)]
        expires_in: u64,
        /// Another claim, `NAME=VALUE`; VALUE is read as JSON when it is JSON, else as text.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
    },
}

/// Which running portico a client command talks to.
#[derive(Debug, clap::Args)]
struct Target {
    /// The Invoke API's URL, e.g. `http://127.0.0.1:9001`.
    #[arg(long)]
    endpoint: Option<String>,
    /// The topology file the running portico was started with (for its `[invoke_api]`);
    /// default: the embedded demo.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Target {
    fn api(&self) -> anyhow::Result<client::Endpoint> {
        client::endpoint(
            client::Api::Invoke,
            self.endpoint.as_deref(),
            self.config.as_deref(),
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { file, node } => match portico_config::load_file(&file) {
            Ok(config) => {
                let base = topology::base_dir(&file);
                let checked = match node.as_deref() {
                    Some(node) => check_node(&config, Some(node), &base).map(|_| ()),
                    None => Ok(()),
                };
                if let Err(errors) = checked {
                    for error in errors {
                        eprintln!("{error}");
                    }
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Export { file } => {
            match portico_control::export(&file, &portico_control::DirStore::beside(&file)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Up { file, node } => {
            // The file with the changes made through the APIs over it.
            let (store, base_dir): (Box<dyn portico_control::Store>, PathBuf) = match &file {
                Some(path) => (
                    Box::new(portico_control::DirStore::beside(path)),
                    topology::base_dir(path),
                ),
                None => (
                    Box::new(portico_control::MemoryStore::new(
                        &portico_lambda::package::default_cache_dir().join("packages"),
                    )),
                    PathBuf::from("."),
                ),
            };
            let (control, config) = match portico_control::Control::open(
                file.as_deref(),
                topology::DEFAULT_CONFIG,
                store,
            ) {
                Ok(opened) => opened,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            // A node of several needs its daemon, interface and address on this host:
            // said before anything is bound.
            let ha = match check_node(&config, node.as_deref(), &base_dir) {
                Ok(ha) => ha,
                Err(errors) => {
                    for error in errors {
                        eprintln!("{error}");
                    }
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            run_async(up::run(
                config,
                up::Options {
                    file,
                    base: base_dir,
                    node,
                    ha,
                    control: std::sync::Arc::new(control),
                },
            ))
        }
        Command::Invoke {
            function,
            payload,
            tail,
            target,
        } => run_async(async move {
            let invoked =
                client::invoke(&target.api()?, &function, payload.as_deref(), tail).await?;
            if invoked.function_failed {
                anyhow::bail!("the invocation failed");
            }
            Ok(())
        }),
        Command::Logs {
            function,
            follow,
            target,
        } => run_async(async move { client::logs(&target.api()?, &function, follow).await }),
        Command::Status {
            json,
            endpoint,
            config,
        } => run_async(async move {
            let api = client::endpoint(client::Api::Admin, endpoint.as_deref(), config.as_deref())?;
            client::status(&api, json).await
        }),
        Command::Token {
            key,
            kid,
            issuer,
            audience,
            subject,
            scopes,
            expires_in,
            claims,
        } => {
            let claims = portico_gateway::token::Claims {
                issuer,
                audience,
                subject,
                scopes,
                lifetime_seconds: expires_in,
                extra: claims
                    .iter()
                    .map(|c| {
                        let (name, value) = c.split_once('=').unwrap_or((c, ""));
                        let value = serde_json::from_str(value)
                            .unwrap_or_else(|_| serde_json::Value::from(value));
                        (name.to_owned(), value)
                    })
                    .collect(),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let minted = std::fs::read(&key)
                .map_err(|e| format!("{}: {e}", key.display()))
                .and_then(|pem| {
                    portico_gateway::token::mint(&pem, None, kid.as_deref(), &claims, now)
                        .map_err(|e| format!("{}: {e}", key.display()))
                });
            match minted {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("portico: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ips { endpoint, config } => run_async(async move {
            let api = client::endpoint(client::Api::Admin, endpoint.as_deref(), config.as_deref())?;
            client::ips(&api).await
        }),
    }
}

/// Whether this host can run `node`'s part of `config`: the node is in the file, and a
/// node of a multi-node accelerator has its daemon, interface and address here (its part
/// is returned).
fn check_node(
    config: &portico_config::Config,
    node: Option<&str>,
    base: &std::path::Path,
) -> Result<Option<portico_ha::HaSpec>, Vec<portico_config::ConfigError>> {
    if let Some(node) = node {
        let nodes = config.nodes();
        if !nodes.contains(node) {
            return Err(vec![portico_config::ConfigError::new(
                "",
                format!(
                    "--node {node:?}: the file names no such node (its nodes: {})",
                    nodes.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )]);
        }
    }
    let mine = topology::for_node(config.clone(), node);
    ha::spec(&mine, node, base)
}

/// Runs `work` on the tokio runtime `TOKIO_WORKER_THREADS` asks for (see `scheduler`); an
/// error is printed and fails the process.
fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let variable = std::env::var_os(scheduler::VARIABLE).map(|v| v.to_string_lossy().into_owned());
    let threads = match scheduler::threads(variable.as_deref()) {
        Ok(threads) => threads,
        Err(error) => {
            eprintln!("portico: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match scheduler::builder(threads).build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portico: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
}

/// Whether logs are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
