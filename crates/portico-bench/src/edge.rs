//! The edge alone, forwarding TCP to one backend, beside HAProxy (`mode tcp`), in one run.
//!
//! The protocol is as thin as TCP allows, so the proxies are what is measured: a client
//! sends an 8-byte size, the backend (`portico-bench tcp-backend`) answers with that many
//! bytes, on keep-alive connections. Each proxy runs one worker pinned to the last core
//! (portico: `TOKIO_WORKER_THREADS=1`; HAProxy: `nbthread 1`, with `splice-auto`); the load
//! generator and the backend share the other cores. Measured for each, and for the backend
//! reached directly (the baseline for added latency):
//! - 1 KB responses: latency on one connection (p50, p99), then throughput and p99 with
//!   `concurrency` connections;
//! - 1 MB responses: throughput in MB/s with `concurrency` connections;
//! - idle connections: `idle` connections opened and held, and the proxy's resident memory
//!   before and after, per connection.

use crate::load::{self, Figures, median_by};
use crate::servers::{Setup, free_port};
use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Options of `portico-bench edge`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Connections for the throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Requests in each latency run.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Idle connections held for the memory measurement. Each costs the proxy two
    /// descriptors: keep `2 × idle` under the open-file limit (`ulimit -Hn`).
    #[arg(long, default_value_t = 9_000)]
    idle: usize,
    /// Times each system is measured, in turn (each round starting with the next system);
    /// each figure reported is the median of its rounds. Memory is measured in the first.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// The portico binary.
    #[arg(long)]
    portico: Option<PathBuf>,
}

/// Options of `portico-bench tcp-backend`.
#[derive(Debug, clap::Args)]
pub(crate) struct BackendOptions {
    /// The port on 127.0.0.1.
    #[arg(long)]
    port: u16,
}

const SMALL: u64 = 1024;
const LARGE: u64 = 1024 * 1024;

/// `portico-bench tcp-backend`: answers each 8-byte size with that many bytes.
pub(crate) fn backend(options: BackendOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", options.port)).await?;
        let payload: &'static [u8] = Box::leak(vec![b'x'; LARGE as usize].into_boxed_slice());
        loop {
            let (mut stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut size = [0u8; 8];
                while stream.read_exact(&mut size).await.is_ok() {
                    let n = u64::from_le_bytes(size).min(LARGE) as usize;
                    if stream.write_all(&payload[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// A proxy (or the backend itself) under test.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn start(cmd: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Self { child: Some(child) })
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let Some(child) = &self.child else {
            bail!("no process");
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

struct Measured {
    name: &'static str,
    latency: Figures,
    small: Figures,
    large: Figures,
    /// KiB per held idle connection; None for the direct baseline.
    per_connection_kib: Option<f64>,
}

async fn exchange(stream: &mut TcpStream, size: u64, buf: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(&size.to_le_bytes()).await?;
    stream.read_exact(&mut buf[..size as usize]).await?;
    Ok(())
}

async fn ready(addr: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut buf = vec![0u8; SMALL as usize];
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if exchange(&mut s, SMALL, &mut buf).await.is_ok() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{addr} did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `concurrency` connections exchanging `size` bytes until `duration` or `requests`.
async fn load(
    addr: SocketAddr,
    size: u64,
    concurrency: usize,
    duration: Duration,
    requests: Option<usize>,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker = requests.map(|n| n.div_ceil(concurrency));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        workers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; size as usize];
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            while Instant::now() < deadline && per_worker.is_none_or(|n| latencies.len() < n) {
                let sent = Instant::now();
                match exchange(&mut stream, size, &mut buf).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => {
                        errors += 1;
                        stream = TcpStream::connect(addr).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    crate::load::collect(workers, started).await
}

/// Opens `n` connections through `addr`, each proven forwarded by one exchange, and holds
/// them; returns the proxy's RSS growth per connection in KiB.
async fn idle(addr: SocketAddr, n: usize, proxy: &Proc) -> anyhow::Result<f64> {
    let before = proxy.rss_kib()?;
    let mut held = Vec::with_capacity(n);
    let mut buf = [0u8; 1];
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        exchange(&mut s, 1, &mut buf)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = proxy.rss_kib()?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let setup = Setup::new("edge", options.portico.clone())?;
    let Setup {
        me,
        proxy_core,
        other_cores,
        ..
    } = &setup;
    let backend_port = free_port()?;
    let _backend =
        Proc::start(Command::new(me).args(["tcp-backend", "--port", &backend_port.to_string()]))?;
    ready(SocketAddr::from(([127, 0, 0, 1], backend_port)))
        .await
        .context("the backend")?;
    println!(
        "edge alone: TCP to one backend; each proxy on one worker pinned to core {proxy_core}, \
         the load generator and backend to cores {}; {} connections for throughput, {} idle \
         connections held",
        other_cores.as_deref().unwrap_or("(the same)"),
        options.concurrency,
        options.idle
    );
    let mut rounds: [Vec<Measured>; 3] = Default::default();
    for round in 0..options.rounds.max(1) as usize {
        if options.rounds > 1 {
            eprintln!("round {} of {}", round + 1, options.rounds);
        }
        for index in load::turns(round, SYSTEMS.len()) {
            let with_memory = round == 0;
            let measured = measure(SYSTEMS[index], &setup, backend_port, &options, with_memory);
            rounds[index].push(measured.await?);
        }
    }
    let results: Vec<Measured> = rounds.into_iter().filter_map(median_round).collect();
    report(&results, &options);
    Ok(())
}

/// What is compared, in the order measured.
const SYSTEMS: [&str; 3] = ["direct", "portico", "haproxy"];

/// Starts `name` (nothing for `direct`), measures it and stops it.
async fn measure(
    name: &'static str,
    setup: &Setup,
    backend_port: u16,
    options: &Options,
    with_memory: bool,
) -> anyhow::Result<Measured> {
    let backend_addr = SocketAddr::from(([127, 0, 0, 1], backend_port));
    let (addr, proxy) = match name {
        "direct" => (backend_addr, None),
        _ => {
            let port = free_port()?;
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &setup.proxy_core]);
            if name == "portico" {
                let config = setup.write("portico.toml", &portico_config(port, backend_port))?;
                cmd.arg(&setup.portico)
                    .arg("up")
                    .arg(config)
                    .env("TOKIO_WORKER_THREADS", "1")
                    .env("RUST_LOG", "warn");
            } else {
                let config = setup.write(
                    "haproxy.cfg",
                    &haproxy_config(port, backend_port, options.idle),
                )?;
                cmd.args(["haproxy", "-db", "-f"]).arg(config);
            }
            let proc = Proc::start(&mut cmd).with_context(|| format!("starting {name}"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            ready(addr).await.context(name)?;
            (addr, Some(proc))
        }
    };
    eprintln!("measuring {name} …");
    let duration = Duration::from_secs(options.duration);
    load(
        addr,
        SMALL,
        options.concurrency,
        Duration::from_secs(1),
        None,
    )
    .await?;
    let latency = load(
        addr,
        SMALL,
        1,
        Duration::from_secs(600),
        Some(options.requests),
    )
    .await?;
    let small = load(addr, SMALL, options.concurrency, duration, None).await?;
    let large = load(addr, LARGE, options.concurrency, duration, None).await?;
    let per_connection_kib = match &proxy {
        Some(p) if with_memory => Some(idle(addr, options.idle, p).await?),
        _ => None,
    };
    Ok(Measured {
        name,
        latency,
        small,
        large,
        per_connection_kib,
    })
}

/// One system's rounds folded into one: each figure the median of its rounds.
fn median_round(rounds: Vec<Measured>) -> Option<Measured> {
    let name = rounds.first()?.name;
    let per_connection_kib = rounds.iter().find_map(|m| m.per_connection_kib);
    let mut latency = Vec::new();
    let mut small = Vec::new();
    let mut large = Vec::new();
    for m in rounds {
        latency.push(m.latency);
        small.push(m.small);
        large.push(m.large);
    }
    Some(Measured {
        name,
        latency: median_by(latency, |f| f.quantile_us(0.5))?,
        small: median_by(small, Figures::rps)?,
        large: median_by(large, Figures::rps)?,
        per_connection_kib,
    })
}

fn portico_config(port: u16, backend: u16) -> String {
    format!(
        r#"
[accelerator]
static_ips = ["127.0.0.1"]
[[accelerator.listeners]]
port = {port}
[[accelerator.endpoint_groups]]
region = "local"
health_check_interval_seconds = 10
endpoints = [{{ address = "127.0.0.1:{backend}" }}]

# Every client of the bench is 127.0.0.1, and it holds thousands of idle connections: as
# HAProxy's maxconn is set for them, so are portico's limits.
[limits]
connections_per_client = 0
reserved_descriptors = 256

[invoke_api]
enabled = false
[admin_api]
enabled = false
"#
    )
}

fn haproxy_config(port: u16, backend: u16, idle: usize) -> String {
    // Two descriptors per connection plus the pipes: kept under the hard open-file limit.
    let maxconn = idle + 200;
    format!(
        r#"
global
    nbthread 1
    maxconn {maxconn}
    maxpipes 256
defaults
    mode tcp
    option splice-auto
    timeout connect 10s
    timeout client 340s
    timeout server 340s
frontend bench
    bind 127.0.0.1:{port}
    maxconn {maxconn}
    default_backend backend
backend backend
    server b1 127.0.0.1:{backend} check inter 10s
"#
    )
}

fn report(results: &[Measured], options: &Options) {
    let c = options.concurrency;
    println!();
    println!(
        "{:<8} {:>8} {:>8} {:>14} {:>12} {:>13} {:>9} {:>7}",
        "system",
        "p50 µs",
        "p99 µs",
        &format!("1KB req/s ({c})"),
        &format!("1KB p99 ({c})"),
        &format!("1MB MB/s ({c})"),
        "KiB/conn",
        "errors"
    );
    for m in results {
        println!(
            "{:<8} {:>8.0} {:>8.0} {:>14.0} {:>12.0} {:>13.0} {:>9} {:>7}",
            m.name,
            m.latency.quantile_us(0.5),
            m.latency.quantile_us(0.99),
            m.small.rps(),
            m.small.quantile_us(0.99),
            m.large.rps() * LARGE as f64 / 1e6,
            m.per_connection_kib
                .map_or_else(|| "-".to_owned(), |k| format!("{k:.1}")),
            m.latency.errors + m.small.errors + m.large.errors,
        );
    }
    let find = |n: &str| results.iter().find(|m| m.name == n);
    if let (Some(direct), Some(ours), Some(theirs)) =
        (find("direct"), find("portico"), find("haproxy"))
    {
        let added = |m: &Measured| m.latency.quantile_us(0.5) - direct.latency.quantile_us(0.5);
        println!();
        println!(
            "added p50 latency, 1 conn: portico {:.0} µs, haproxy {:.0} µs",
            added(ours),
            added(theirs)
        );
        println!("ratios (portico vs haproxy):");
        println!(
            "  1 KB throughput per core   {:>5.2}x",
            ours.small.rps() / theirs.small.rps()
        );
        println!(
            "  1 MB throughput per core   {:>5.2}x",
            ours.large.rps() / theirs.large.rps()
        );
        println!(
            "  1 KB p99 ({c} conn)          {:>5.2}x lower",
            theirs.small.quantile_us(0.99) / ours.small.quantile_us(0.99)
        );
        if let (Some(o), Some(t)) = (ours.per_connection_kib, theirs.per_connection_kib) {
            println!("  memory per idle connection {:>5.2}x lower", t / o);
        }
    }
    println!(
        "\n(latency: {} sequential 1 KB exchanges on one connection; throughput: {} s each)",
        options.requests, options.duration
    );
}
