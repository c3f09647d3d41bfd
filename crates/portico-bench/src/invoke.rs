//! The function runtime against `cargo lambda watch`: the same `lambda_runtime` function
//! (`examples/echo`, release build), invoked through each one's Lambda Invoke API.
//!
//! Measured, for each system in turn:
//! - warm latency: one connection, requests back to back, p50 and p99;
//! - throughput: `concurrency` connections for `duration`, and portico's scaling from one
//!   connection to `concurrency`;
//! - cold start: from spawning the server to the first successful response, median of
//!   `cold_runs` starts;
//! - for portico, a new execution environment's cold start, with the server up for a second:
//!   the first invocation's latency and Lambda's own figure for it, the REPORT line's `Init
//!   Duration` (from the start of the environment to its runtime's first `/next`), median
//!   of `cold_runs`.

use crate::load::{self, Figures, Target};
use crate::servers::{Server, free_port};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Options of `portico-bench invoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Connections for the throughput run; default: the number of cores.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests in each warm-latency run.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Server starts measured for the cold start.
    #[arg(long, default_value_t = 5)]
    cold_runs: usize,
    /// The portico binary.
    #[arg(long)]
    portico: Option<PathBuf>,
    /// The function binary portico runs.
    #[arg(long)]
    function: Option<PathBuf>,
    /// Measure only this system (`portico` or `cargo-lambda`), without ratios.
    #[arg(long)]
    only: Option<String>,
}

const PAYLOAD: &str = r#"{"order":{"id":42,"items":["a","b","c"],"note":"benchmark"}}"#;
const FUNCTION: &str = "echo";

/// One system under test: how to start it and where it answers.
struct System {
    name: &'static str,
    command: Box<dyn Fn(u16) -> Command>,
    /// Answers `X-Amz-Invocation-Type: DryRun` (204, the function not run).
    dry_run: bool,
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = options.concurrency.unwrap_or(cores);
    let portico = options
        .portico
        .clone()
        .unwrap_or_else(|| root.join("target/release/portico"));
    let function = options
        .function
        .clone()
        .unwrap_or_else(|| root.join("target/release/echo"));
    let scratch = std::env::temp_dir().join(format!("portico-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    let config_dir = scratch.clone();
    let systems = [
        System {
            name: "portico",
            command: Box::new(move |port| {
                let config = config_dir.join(format!("portico-{port}.toml"));
                let text = format!(
                    "[functions.{FUNCTION}]\ncommand = [\"{}\"]\nmemory_size_mb = 1024\n\
                     [invoke_api]\nport = {port}\n",
                    function.display()
                );
                // A write failure shows as the server never answering.
                let _ = std::fs::write(&config, text);
                let mut cmd = Command::new(&portico);
                cmd.arg("up").arg(config).env("RUST_LOG", "warn");
                cmd
            }),
            dry_run: true,
        },
        System {
            name: "cargo-lambda",
            command: Box::new(move |port| {
                let mut cmd = Command::new("cargo");
                cmd.args([
                    "lambda",
                    "watch",
                    "--release",
                    "--ignore-changes",
                    "--quiet",
                ])
                .args(["-p", FUNCTION, "-A", "127.0.0.1", "-P", &port.to_string()])
                .args(["--concurrency", &concurrency.to_string()])
                .current_dir(&root)
                .env("RUST_LOG", "warn");
                cmd
            }),
            dry_run: false,
        },
    ];

    println!(
        "function runtime: {FUNCTION} (lambda_runtime, release) through the Lambda Invoke API; \
         {cores} cores, {concurrency} connections for throughput"
    );
    let mut results = Vec::new();
    for system in &systems {
        if options
            .only
            .as_deref()
            .is_some_and(|only| only != system.name)
        {
            continue;
        }
        eprintln!("measuring {} …", system.name);
        results.push(measure(system, &options, concurrency).await?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    report(&results, &options, concurrency);
    Ok(())
}

struct Measured {
    name: &'static str,
    warm: Figures,
    single: Figures,
    loaded: Figures,
    cold: Duration,
    /// Sequential `DryRun` calls: the Invoke API's round trip without the function.
    hop: Option<Figures>,
    /// A new environment's first invocation: its latency and the reported Init Duration
    /// (medians), where the system reports it.
    environment: Option<(Duration, f64)>,
}

fn target(port: u16) -> Target {
    Target {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: format!("/2015-03-31/functions/{FUNCTION}/invocations"),
        body: Bytes::from_static(PAYLOAD.as_bytes()),
        headers: Vec::new(),
    }
}

async fn measure(
    system: &System,
    options: &Options,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    // Cold starts: a fresh server each time.
    let mut colds = Vec::new();
    for _ in 0..options.cold_runs.max(1) {
        let port = free_port()?;
        let mut server = Server::start(&mut (system.command)(port))?;
        colds.push(
            server
                .ready(&target(port), Duration::from_secs(300))
                .await?,
        );
    }
    colds.sort_unstable();
    let cold = colds[colds.len() / 2];
    let environment = if system.dry_run {
        let mut firsts = Vec::new();
        for _ in 0..options.cold_runs.max(1) {
            let port = free_port()?;
            let mut server = Server::start(&mut (system.command)(port))?;
            // Up, without an environment yet: a DryRun does not run the function.
            let mut dry = target(port);
            dry.headers
                .push(("x-amz-invocation-type", "DryRun".to_owned()));
            server.ready(&dry, Duration::from_secs(300)).await?;
            // A server up for a moment, as one is when its first request comes: what it
            // makes ahead of a cold start (its spare environments) is made.
            tokio::time::sleep(Duration::from_secs(1)).await;
            firsts.push(first_invocation(&target(port)).await?);
        }
        let mut latencies: Vec<Duration> = firsts.iter().map(|f| f.0).collect();
        let mut inits: Vec<f64> = firsts.iter().map(|f| f.1).collect();
        latencies.sort_unstable();
        inits.sort_by(f64::total_cmp);
        Some((latencies[latencies.len() / 2], inits[inits.len() / 2]))
    } else {
        None
    };

    let port = free_port()?;
    let mut server = Server::start(&mut (system.command)(port))?;
    let target = target(port);
    server.ready(&target, Duration::from_secs(300)).await?;
    // Warm every environment the throughput run will use.
    load::run(&target, concurrency, Duration::from_secs(2), None).await?;
    let warm = load::run(&target, 1, Duration::from_secs(600), Some(options.requests)).await?;
    let duration = Duration::from_secs(options.duration);
    let single = load::run(&target, 1, duration, None).await?;
    let loaded = load::run(&target, concurrency, duration, None).await?;
    let hop = if system.dry_run {
        let mut dry = target.clone();
        dry.headers
            .push(("x-amz-invocation-type", "DryRun".to_owned()));
        Some(load::run(&dry, 1, Duration::from_secs(600), Some(options.requests)).await?)
    } else {
        None
    };
    drop(server);
    Ok(Measured {
        name: system.name,
        warm,
        single,
        loaded,
        cold,
        hop,
        environment,
    })
}

/// One invocation on a fresh connection, its log's tail asked for: how long it took, and
/// the `Init Duration` of its REPORT line (ms).
async fn first_invocation(target: &Target) -> anyhow::Result<(Duration, f64)> {
    use base64::Engine as _;
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(target.addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, target.addr.to_string())
        .header("x-amz-log-type", "Tail")
        .body(http_body_util::Full::new(target.body.clone()))?;
    let started = std::time::Instant::now();
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    body.collect().await?;
    let took = started.elapsed();
    anyhow::ensure!(
        parts.status.is_success(),
        "first invocation: {}",
        parts.status
    );
    let tail = parts
        .headers
        .get("x-amz-log-result")
        .and_then(|v| v.to_str().ok())
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let init = tail
        .split("Init Duration: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no Init Duration in the first invocation's log: {tail}"))?;
    Ok((took, init))
}

fn report(results: &[Measured], options: &Options, concurrency: usize) {
    println!();
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>12} {:>8} {:>12}",
        "system",
        "p50 µs",
        "p99 µs",
        "req/s (1)",
        &format!("req/s ({concurrency})"),
        "errors",
        "cold ms"
    );
    for m in results {
        println!(
            "{:<14} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>8} {:>12.1}",
            m.name,
            m.warm.quantile_us(0.5),
            m.warm.quantile_us(0.99),
            m.single.rps(),
            m.loaded.rps(),
            m.warm.errors + m.single.errors + m.loaded.errors,
            m.cold.as_secs_f64() * 1000.0,
        );
    }
    for m in results {
        if let Some((latency, init)) = m.environment {
            println!(
                "{}: a new execution environment's first invocation {:.2} ms, Init Duration {:.2} ms (medians)",
                m.name,
                latency.as_secs_f64() * 1000.0,
                init,
            );
        }
    }
    for m in results {
        if let Some(hop) = &m.hop {
            println!(
                "{}: DryRun (the Invoke API round trip, no function) p50 {:.0} µs, p99 {:.0} µs; \
                 the rest of the warm p50, {:.0} µs, is the exchange with the function",
                m.name,
                hop.quantile_us(0.5),
                hop.quantile_us(0.99),
                m.warm.quantile_us(0.5) - hop.quantile_us(0.5),
            );
        }
    }
    if let [ours, theirs] = results {
        println!();
        println!("ratios ({} vs {}):", ours.name, theirs.name);
        println!(
            "  warm p50 latency    {:>6.2}x lower",
            theirs.warm.quantile_us(0.5) / ours.warm.quantile_us(0.5)
        );
        println!(
            "  warm p99 latency    {:>6.2}x lower",
            theirs.warm.quantile_us(0.99) / ours.warm.quantile_us(0.99)
        );
        println!(
            "  throughput ({concurrency} conn) {:>6.2}x higher",
            ours.loaded.rps() / theirs.loaded.rps()
        );
        println!(
            "  cold start          {:>6.2}x faster",
            theirs.cold.as_secs_f64() / ours.cold.as_secs_f64()
        );
        println!(
            "  portico scaling 1 -> {concurrency} connections: {:.2}x",
            ours.loaded.rps() / ours.single.rps()
        );
    }
    println!(
        "\n(warm: {} sequential requests; throughput: {} s per run; cold: median of {} starts)",
        options.requests, options.duration, options.cold_runs
    );
}
