//! The load balancer alone, forwarding to one HTTP backend, beside HAProxy (`mode http`) and
//! nginx (`proxy_pass` with upstream keep-alive), in one run.
//!
//! Per core: each proxy runs with one worker (portico: `TOKIO_WORKER_THREADS=1`, HAProxy:
//! `nbthread 1`, nginx: `worker_processes 1`) pinned to the last core with `taskset`; the
//! load generator and the backend are pinned to the other cores, so nothing else runs on
//! the proxy's. Measured, for each in turn:
//! - latency: one connection, requests back to back, p50 and p99;
//! - throughput: `concurrency` connections for `duration`, with p50 and p99 under load.
//!
//! Every proxy sends the target what ALB sends: `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Port` and a trace id with the time and random digits (`X-Amzn-Trace-Id`), so
//! that each does the same work per request.
//!
//! `--baseline BINARY` measures a second portico build (say, one from before a change) with
//! the same config beside the current one; `--rounds N` measures every system N times in
//! turn (each round starting with the next system, each measurement printed as it ends) and
//! keeps each one's median round, so a slow moment of the machine does not decide a ratio.
//! `--instructions N` counts instead what one request costs in user-space instructions under
//! callgrind (see `instructions`), which the machine's noise does not move.

use crate::instructions::Callgrind;
use crate::load::{self, Figures, Target};
use crate::servers::{CoreTime, Server, Setup, free_port};
use anyhow::Context;
use bytes::Bytes;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Options of `portico-bench lb`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests in each latency run.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// The portico binary.
    #[arg(long)]
    portico: Option<PathBuf>,
    /// Measure only these systems (`portico`, `baseline`, `haproxy`, `nginx`, or a gateway
    /// variant such as `portico+jwt`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of HAProxy and nginx, measure portico with each gateway feature on (CORS,
    /// rate limit, API key, body validation, JWT) beside portico without any.
    #[arg(long)]
    gateway: bool,
    /// Another portico binary (a build from before a change) measured as `baseline` with the
    /// same config, beside portico.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Measure every system this many times, in turn, and report each one's median round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    rounds: u32,
    /// Instead of timing, count each system's user-space instructions per request over
    /// this many requests on one connection, under callgrind (needs valgrind).
    #[arg(long, value_name = "REQUESTS", value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    instructions: Option<u64>,
}

/// A system measured.
struct Variant {
    /// Its name in the report: `portico`, `portico+FEATURE`, `baseline`, `haproxy`, `nginx`.
    name: &'static str,
    /// The listener's `gateway` table (portico only).
    gateway: String,
    /// More top-level TOML (portico only).
    extra: String,
    /// Request headers the feature needs.
    headers: Vec<(&'static str, String)>,
}

impl Variant {
    /// A system measured with its defaults.
    fn plain(name: &'static str) -> Self {
        Self::with(name, String::new(), String::new(), Vec::new())
    }

    fn with(
        name: &'static str,
        gateway: String,
        extra: String,
        headers: Vec<(&'static str, String)>,
    ) -> Self {
        Self {
            name,
            gateway,
            extra,
            headers,
        }
    }
}

/// The gateway variants of `--gateway`.
fn gateway_variants(setup: &Setup) -> anyhow::Result<Vec<Variant>> {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/keys");
    let schema = setup.write(
        "schema.json",
        r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["order"],
           "properties":{"order":{"type":"object","required":["id","items"],
             "properties":{"id":{"type":"integer","minimum":1},"items":{"type":"array","items":{"type":"string"}},"note":{"type":"string"}}}}}"#,
    )?;
    let token = Command::new(&setup.portico)
        .args([
            "token",
            "--key",
            &format!("{keys}/private.pem"),
            "--kid",
            "example-1",
        ])
        .args([
            "--issuer",
            "https://bench",
            "--audience",
            "bench",
            "--scope",
            "orders:write",
        ])
        .args(["--expires-in", "86400"])
        .output()
        .context("portico token")?;
    anyhow::ensure!(token.status.success(), "portico token failed");
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let api_key = "bench-key-0123456789abcdef";
    Ok(vec![
        Variant::plain("portico"),
        Variant::with(
            "portico+cors",
            r#"gateway = { cors = { allow_origins = ["https://app.example"] } }"#.into(),
            String::new(),
            vec![("origin", "https://app.example".into())],
        ),
        Variant::with(
            "portico+rate-limit",
            "gateway = { rate_limit = { requests = 1000000000, period_seconds = 1 } }".into(),
            String::new(),
            Vec::new(),
        ),
        Variant::with(
            "portico+api-key",
            "gateway = { api_key_required = true }".into(),
            format!("[api_keys]\nkeys = [{{ value = \"{api_key}\" }}]\n"),
            vec![("x-api-key", api_key.into())],
        ),
        Variant::with(
            "portico+validate",
            format!(
                "gateway = {{ validate = {{ body_schema = \"{}\" }} }}",
                schema.display()
            ),
            String::new(),
            Vec::new(),
        ),
        Variant::with(
            "portico+jwt",
            r#"gateway = { jwt = { authorizer = "bench", scopes = ["orders:write"] } }"#.into(),
            format!(
                "[authorizers.bench]\nissuer = \"https://bench\"\naudiences = [\"bench\"]\njwks_file = \"{keys}/jwks.json\"\n"
            ),
            vec![("authorization", format!("Bearer {token}"))],
        ),
    ])
}

const BODY: &str = r#"{"order":{"id":42,"items":["a","b","c"],"note":"benchmark"}}"#;

struct Measured {
    name: &'static str,
    latency: Figures,
    loaded: Loaded,
}

/// The throughput run, and how long the proxy's core was busy during it.
struct Loaded {
    figures: Figures,
    core: CoreTime,
}

impl Loaded {
    /// Requests per second of the proxy core's busy time: the throughput one core gives when
    /// it does nothing else. This is the figure to compare when the load generator, not the
    /// proxy, is what runs out of CPU first (as on a machine with two cores).
    fn per_core(&self) -> f64 {
        self.figures.requests as f64 / self.core.busy().as_secs_f64().max(f64::EPSILON)
    }

    /// The share of the run the proxy's core was busy, in per cent.
    fn busy_percent(&self) -> f64 {
        self.core.busy().as_secs_f64() / self.figures.elapsed.as_secs_f64() * 100.0
    }

    /// Microseconds of the proxy core per request: user, system, softirq.
    fn per_request_us(&self) -> [f64; 3] {
        let requests = self.figures.requests.max(1) as f64;
        let core = &self.core;
        [core.user, core.system, core.softirq].map(|d| d.as_secs_f64() * 1e6 / requests)
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let setup = Setup::new("lb", options.portico.clone())?;
    let Setup {
        me,
        proxy_core,
        other_cores,
        ..
    } = &setup;

    let backend_port = free_port()?;
    let mut backend =
        Server::start(Command::new(me).args(["backend", "--port", &backend_port.to_string()]))?;
    backend
        .ready(&target(backend_port), Duration::from_secs(10))
        .await
        .context("the backend did not start")?;
    println!(
        "load balancer alone: POST of {} bytes to one HTTP backend; each proxy on one worker \
         pinned to core {proxy_core}, the load generator and backend to cores {}; {} \
         connections for throughput",
        BODY.len(),
        other_cores.as_deref().unwrap_or("(the same)"),
        options.concurrency
    );

    let mut systems: Vec<Variant> = if options.gateway {
        gateway_variants(&setup)?
    } else {
        ["portico", "haproxy", "nginx"]
            .into_iter()
            .map(Variant::plain)
            .collect()
    };
    if options.baseline.is_some() {
        systems.insert(1, Variant::plain("baseline"));
    }
    systems.retain(|v| options.only.is_empty() || options.only.iter().any(|o| o == v.name));
    if let Some(requests) = options.instructions {
        let mut counted = Vec::new();
        for variant in &systems {
            let per_request = count(&setup, &options, variant, backend_port, requests).await?;
            counted.push((variant.name, per_request));
        }
        drop(backend);
        report_instructions(&counted, requests);
        return Ok(());
    }
    let mut rounds: Vec<Vec<Measured>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 0..options.rounds as usize {
        if options.rounds > 1 {
            eprintln!("round {} of {}", round + 1, options.rounds);
        }
        for index in load::turns(round, systems.len()) {
            let measured = measure(&setup, &options, &systems[index], backend_port).await?;
            let [user, system, softirq] = measured.loaded.per_request_us();
            eprintln!(
                "  {}: {:.0} req/s, {:.0} req per core-second (core {:.0} % busy; µs/req user \
                 {user:.1}, system {system:.1}, softirq {softirq:.1}), p99 {:.0} µs ({} conn); \
                 p50 {:.0} µs, p99 {:.0} µs (1 conn)",
                measured.name,
                measured.loaded.figures.rps(),
                measured.loaded.per_core(),
                measured.loaded.busy_percent(),
                measured.loaded.figures.quantile_us(0.99),
                options.concurrency,
                measured.latency.quantile_us(0.5),
                measured.latency.quantile_us(0.99),
            );
            rounds[index].push(measured);
        }
    }
    drop(backend);
    let paired = paired_ratios(&rounds);
    let results: Vec<Measured> = rounds.into_iter().filter_map(median_round).collect();
    report(&results, &options);
    if !paired.is_empty() {
        println!(
            "\npaired by round (portico vs each, measured back to back in the same round, so \
             that the machine's slow drift cancels out): median [lowest, highest] of {} rounds",
            options.rounds
        );
        for line in paired {
            println!("  {line}");
        }
    }
    Ok(())
}

/// For every system beside portico: the ratio of portico's throughput per core and req/s to
/// its own, and of its p99 under load to portico's, round by round (both above 1 when portico is
/// better), as median, lowest and highest. Empty with fewer than two rounds.
fn paired_ratios(rounds: &[Vec<Measured>]) -> Vec<String> {
    let Some(ours) = rounds
        .iter()
        .find(|r| r.first().is_some_and(|m| m.name == "portico"))
    else {
        return Vec::new();
    };
    if ours.len() < 2 {
        return Vec::new();
    }
    let spread = |ratios: Vec<f64>| {
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let middle = load::median_by(ratios, |r| *r).unwrap_or(f64::NAN);
        format!("{middle:.2}x [{low:.2}, {high:.2}]")
    };
    rounds
        .iter()
        .filter_map(|theirs| {
            let name = theirs.first()?.name;
            if name == "portico" {
                return None;
            }
            let pairs = || ours.iter().zip(theirs);
            let per_core = pairs()
                .map(|(o, t)| o.loaded.per_core() / t.loaded.per_core())
                .collect();
            let rps = pairs()
                .map(|(o, t)| o.loaded.figures.rps() / t.loaded.figures.rps())
                .collect();
            let p99 = pairs()
                .map(|(o, t)| {
                    t.loaded.figures.quantile_us(0.99) / o.loaded.figures.quantile_us(0.99)
                })
                .collect();
            Some(format!(
                "vs {name:<18} throughput per core {}, req/s {}, p99 under load {} lower",
                spread(per_core),
                spread(rps),
                spread(p99)
            ))
        })
        .collect()
}

/// Starts one system, warms it up, and measures its latency and throughput.
async fn measure(
    setup: &Setup,
    options: &Options,
    variant: &Variant,
    backend_port: u16,
) -> anyhow::Result<Measured> {
    let name = variant.name;
    eprintln!("measuring {name} …");
    let pin = ["taskset", "-c", &setup.proxy_core].map(OsString::from);
    let ready = Duration::from_secs(20);
    let (server, target) = start(setup, options, variant, backend_port, &pin, ready).await?;
    // Warm up connection pools and caches.
    load::run(&target, options.concurrency, Duration::from_secs(2), None).await?;
    let latency = load::run(&target, 1, Duration::from_secs(600), Some(options.requests)).await?;
    let before = CoreTime::read(&setup.proxy_core)?;
    let figures = load::run(
        &target,
        options.concurrency,
        Duration::from_secs(options.duration),
        None,
    )
    .await?;
    let core = CoreTime::read(&setup.proxy_core)?.since(&before);
    let loaded = Loaded { figures, core };
    drop(server);
    Ok(Measured {
        name,
        latency,
        loaded,
    })
}

/// Starts `variant` on a free port after `prefix` and waits up to `ready` until it
/// answers; returns it and the request to send it.
async fn start(
    setup: &Setup,
    options: &Options,
    variant: &Variant,
    backend_port: u16,
    prefix: &[OsString],
    ready: Duration,
) -> anyhow::Result<(Server, Target)> {
    let name = variant.name;
    let port = free_port()?;
    let mut cmd = command(setup, options, variant, port, backend_port, prefix)?;
    let mut server = Server::start(&mut cmd).with_context(|| format!("starting {name}"))?;
    let target = Target {
        headers: variant.headers.clone(),
        ..target(port)
    };
    server
        .ready(&target, ready)
        .await
        .with_context(|| format!("{name} did not answer"))?;
    Ok((server, target))
}

/// The command that starts `variant` on `port`, after `prefix` (a pinning or a profiler).
fn command(
    setup: &Setup,
    options: &Options,
    variant: &Variant,
    port: u16,
    backend_port: u16,
    prefix: &[OsString],
) -> anyhow::Result<Command> {
    let (program, wrapper) = prefix.split_first().context("an empty command prefix")?;
    let mut cmd = Command::new(program);
    cmd.args(wrapper);
    match variant.name {
        "haproxy" => {
            let config = setup.write("haproxy.cfg", &haproxy_config(port, backend_port))?;
            cmd.args(["haproxy", "-db", "-f"]).arg(config);
        }
        "nginx" => {
            // Counted, nginx must be one process: its forked worker would share the counts file.
            let single = options.instructions.is_some();
            let config = setup.write(
                "nginx.conf",
                &nginx_config(port, backend_port, &setup.scratch, single),
            )?;
            cmd.args(["nginx", "-p"])
                .arg(&setup.scratch)
                .arg("-c")
                .arg(config);
        }
        name => {
            let binary = match (name, &options.baseline) {
                ("baseline", Some(baseline)) => baseline,
                _ => &setup.portico,
            };
            let config = setup.write(
                "portico.toml",
                &portico_config(port, backend_port, &variant.gateway, &variant.extra),
            )?;
            cmd.arg(binary)
                .arg("up")
                .arg(config)
                .env("TOKIO_WORKER_THREADS", "1")
                .env("RUST_LOG", "warn");
        }
    }
    Ok(cmd)
}

/// Runs `variant` under callgrind and returns its user-space instructions per request over
/// `requests` requests on one connection, after a warm-up that is not counted.
async fn count(
    setup: &Setup,
    options: &Options,
    variant: &Variant,
    backend_port: u16,
    requests: u64,
) -> anyhow::Result<f64> {
    let name = variant.name;
    eprintln!("counting {name} …");
    let callgrind = Callgrind::new(&setup.scratch, name);
    let ready = Duration::from_secs(120); // valgrind starts slowly
    let prefix = callgrind.prefix();
    let (server, target) = start(setup, options, variant, backend_port, &prefix, ready).await?;
    let forever = Duration::from_secs(3600);
    let warm = load::run(&target, 1, forever, Some(200)).await?;
    callgrind.zero(server.pid())?;
    let counted = load::run(&target, 1, forever, Some(requests as usize)).await?;
    let total = callgrind.dump(server.pid())?;
    let errors = warm.errors + counted.errors;
    anyhow::ensure!(
        errors == 0,
        "{name}: {errors} requests failed while counting"
    );
    Ok(total as f64 / counted.requests as f64)
}

fn report_instructions(counted: &[(&'static str, f64)], requests: u64) {
    println!();
    println!("{:<20} {:>22}", "system", "instructions/request");
    for (name, per_request) in counted {
        println!("{name:<20} {per_request:>22.0}");
    }
    if let Some((_, ours)) = counted.iter().find(|(name, _)| *name == "portico") {
        println!();
        for (name, theirs) in counted.iter().filter(|(name, _)| *name != "portico") {
            println!(
                "  {name:<20} {:>5.2}x portico's instructions per request ({:+.1} %)",
                theirs / ours,
                (theirs / ours - 1.0) * 100.0
            );
        }
    }
    println!(
        "\n(user space, every thread, counted by callgrind over {requests} requests on one \
         connection after 200 uncounted; kernel work not included)"
    );
}

/// One system's rounds folded into one: the latency run with the median p50 and the
/// throughput run with the median throughput per core.
fn median_round(rounds: Vec<Measured>) -> Option<Measured> {
    let name = rounds.first()?.name;
    let (latency, loaded): (Vec<Figures>, Vec<Loaded>) =
        rounds.into_iter().map(|m| (m.latency, m.loaded)).unzip();
    Some(Measured {
        name,
        latency: load::median_by(latency, |f| f.quantile_us(0.5))?,
        loaded: load::median_by(loaded, Loaded::per_core)?,
    })
}

fn target(port: u16) -> Target {
    Target {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: "/orders".to_owned(),
        body: Bytes::from_static(BODY.as_bytes()),
        headers: Vec::new(),
    }
}

fn portico_config(port: u16, backend: u16, gateway: &str, extra: &str) -> String {
    let gateway = if gateway.is_empty() {
        String::new()
    } else {
        format!(", {gateway}")
    };
    format!(
        r#"
{extra}
[load_balancers.bench]
listeners = [{{ port = {port}, default_action = {{ type = "forward", target_group = "backend" }}{gateway} }}]

[target_groups.backend]
target_type = "ip"
targets = ["127.0.0.1:{backend}"]

[invoke_api]
enabled = false
"#
    )
}

fn haproxy_config(port: u16, backend: u16) -> String {
    format!(
        r#"
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    option forwardfor
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Amzn-Trace-Id Root=1-%[date,hex]-%[rand,hex]%[rand,hex]%[rand,hex]
    default_backend backend
backend backend
    server b1 127.0.0.1:{backend}
"#
    )
}

fn nginx_config(port: u16, backend: u16, dir: &Path, single_process: bool) -> String {
    let master = if single_process { "off" } else { "on" };
    format!(
        r#"
daemon off;
master_process {master};
worker_processes 1;
pid {dir}/nginx.pid;
error_log /dev/null;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Amzn-Trace-Id "Root=1-$msec-$request_id";
        }}
    }}
}}
"#,
        dir = dir.display()
    )
}

fn report(results: &[Measured], options: &Options) {
    let c = options.concurrency;
    println!();
    println!(
        "{:<20} {:>9} {:>9} {:>12} {:>10} {:>11} {:>11} {:>11} {:>7}",
        "system",
        "p50 µs",
        "p99 µs",
        &format!("req/s ({c})"),
        "core busy",
        "req/core-s",
        &format!("p50 µs ({c})"),
        &format!("p99 µs ({c})"),
        "errors"
    );
    for m in results {
        let loaded = &m.loaded.figures;
        println!(
            "{:<20} {:>9.0} {:>9.0} {:>12.0} {:>9.0}% {:>11.0} {:>11.0} {:>11.0} {:>7}",
            m.name,
            m.latency.quantile_us(0.5),
            m.latency.quantile_us(0.99),
            loaded.rps(),
            m.loaded.busy_percent(),
            m.loaded.per_core(),
            loaded.quantile_us(0.5),
            loaded.quantile_us(0.99),
            m.latency.errors + loaded.errors,
        );
    }
    if let Some(ours) = results.iter().find(|m| m.name == "portico") {
        let features: Vec<_> = results
            .iter()
            .filter(|m| m.name.starts_with("portico+"))
            .collect();
        if !features.is_empty() {
            println!();
            println!("cost of each gateway feature (vs portico without one):");
        }
        for f in &features {
            let ratio = f.loaded.per_core() / ours.loaded.per_core();
            println!(
                "  {:<20} throughput per core {:>5.2}x ({:+.1} %), p50 1 conn {:+.0} µs",
                f.name,
                ratio,
                (ratio - 1.0) * 100.0,
                f.latency.quantile_us(0.5) - ours.latency.quantile_us(0.5),
            );
        }
        for theirs in results
            .iter()
            .filter(|m| m.name != "portico" && !m.name.starts_with("portico+"))
        {
            println!();
            println!("ratios (portico vs {}):", theirs.name);
            println!(
                "  throughput per core ({c} conn)  {:>5.2}x",
                ours.loaded.per_core() / theirs.loaded.per_core()
            );
            println!(
                "  req/s ({c} conn)                {:>5.2}x",
                ours.loaded.figures.rps() / theirs.loaded.figures.rps()
            );
            println!(
                "  p50 latency, 1 conn           {:>5.2}x lower",
                theirs.latency.quantile_us(0.5) / ours.latency.quantile_us(0.5)
            );
            println!(
                "  p99 latency, 1 conn           {:>5.2}x lower",
                theirs.latency.quantile_us(0.99) / ours.latency.quantile_us(0.99)
            );
            println!(
                "  p99 latency, {c} conn          {:>5.2}x lower",
                theirs.loaded.figures.quantile_us(0.99) / ours.loaded.figures.quantile_us(0.99)
            );
        }
    }
    println!(
        "\n(latency: {} sequential requests on one connection; throughput: {} s; throughput \
         per core: requests per second of the proxy core's busy time, user, system and \
         softirq, from /proc/stat)",
        options.requests, options.duration
    );
}
