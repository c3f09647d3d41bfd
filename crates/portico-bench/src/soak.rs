//! The soak: a whole node (edge → load balancer → a Lambda function, and the Invoke API)
//! under normal traffic at half its measured capacity, for minutes, while hostile clients
//! hold half-sent requests, abort requests in flight, flood it with connections and queue
//! `Event` invocations. Every report interval it prints portico's memory (RSS), open
//! descriptors, function processes, the normal traffic's requests, errors and latency, and
//! what the attackers got; at the end, how each of those moved after the first interval:
//! nothing may grow without bound.

use crate::load::{self, Target};
use crate::servers::{Server, Setup, free_port};
use anyhow::Context;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// What the soak runs.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// How long the mixed run lasts, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seconds between two reports.
    #[arg(long, default_value_t = 30)]
    report_every: u64,
    /// Half-sent requests held open at any time.
    #[arg(long, default_value_t = 300)]
    slow_clients: usize,
    /// The portico binary (default: target/release/portico).
    #[arg(long)]
    portico: Option<std::path::PathBuf>,
}

/// Counters the attackers and the normal clients keep.
#[derive(Default)]
struct Counters {
    normal_ok: AtomicU64,
    normal_errors: AtomicU64,
    slow_opened: AtomicU64,
    aborted: AtomicU64,
    flood_connections: AtomicU64,
    events: AtomicU64,
    events_refused: AtomicU64,
    /// Normal latencies of the current interval, in microseconds.
    latencies: std::sync::Mutex<Vec<u64>>,
}

/// One report's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    functions: usize,
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let setup = Setup::new("soak", options.portico.clone())?;
    let hello = crate::workspace_root().join("target/release/hello");
    anyhow::ensure!(
        hello.exists(),
        "{} missing: scripts/soak builds it",
        hello.display()
    );
    let (edge_port, lb_port, invoke_port) = (free_port()?, free_port()?, free_port()?);
    let config = setup.write(
        "soak.toml",
        &format!(
            r#"
[accelerator]
static_ips = ["127.0.0.1"]
[[accelerator.listeners]]
port = {edge_port}
[[accelerator.endpoint_groups]]
region = "local"
endpoints = [{{ load_balancer = "web" }}]

[load_balancers.web]
idle_timeout_seconds = 10
[[load_balancers.web.listeners]]
port = {lb_port}
proxy_protocol_v2 = true
default_action = {{ type = "forward", target_group = "hello" }}

[target_groups.hello]
target_type = "lambda"
function = "hello"

[functions.hello]
command = ["{}"]

[invoke_api]
port = {invoke_port}
[admin_api]
enabled = false
"#,
            hello.display()
        ),
    )?;
    let mut portico = Server::start(
        std::process::Command::new(&setup.portico)
            .arg("up")
            .arg(&config)
            .env("RUST_LOG", "error"),
    )?;
    let edge: SocketAddr = ([127, 0, 0, 1], edge_port).into();
    let invoke: SocketAddr = ([127, 0, 0, 1], invoke_port).into();
    let target = Target {
        addr: edge,
        path: "/soak".into(),
        body: Bytes::new(),
        headers: Vec::new(),
    };
    portico.ready(&target, Duration::from_secs(30)).await?;
    let pid = portico.pid();

    // Capacity: closed-loop, 8 connections, 5 s.
    let capacity = load::run(&target, 8, Duration::from_secs(5), None).await?;
    let rate = (capacity.rps() / 2.0).max(10.0);
    println!(
        "capacity {:.0} req/s (p99 {:.2} ms); normal traffic at {rate:.0} req/s for {} s",
        capacity.rps(),
        capacity.quantile_us(0.99) / 1000.0,
        options.seconds
    );

    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    // Normal clients: 8, paced to the rate in all.
    for _ in 0..8 {
        tasks.push(tokio::spawn(normal(
            target.clone(),
            Duration::from_secs_f64(8.0 / rate),
            deadline,
            counters.clone(),
        )));
    }
    tasks.push(tokio::spawn(slow_clients(
        edge,
        options.slow_clients,
        deadline,
        counters.clone(),
    )));
    tasks.push(tokio::spawn(aborts(edge, deadline, counters.clone())));
    tasks.push(tokio::spawn(floods(edge, deadline, counters.clone())));
    tasks.push(tokio::spawn(events(invoke, deadline, counters.clone())));

    println!(
        "{:>6} {:>9} {:>6} {:>5} {:>9} {:>7} {:>9} {:>9} {:>6} {:>7} {:>8} {:>7}",
        "time",
        "rss KiB",
        "fds",
        "fns",
        "normal",
        "errors",
        "p50 ms",
        "p99 ms",
        "slow",
        "aborts",
        "floods",
        "events"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let wait = Duration::from_secs(options.report_every).min(deadline - Instant::now());
        tokio::time::sleep(wait).await;
        let sample = sample(pid)?;
        let mut latencies = std::mem::take(&mut *lock(&counters.latencies));
        latencies.sort_unstable();
        let quantile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        let c = &counters;
        println!(
            "{:>5}s {:>9} {:>6} {:>5} {:>9} {:>7} {:>9.2} {:>9.2} {:>6} {:>7} {:>8} {:>7}",
            started.elapsed().as_secs(),
            sample.rss_kib,
            sample.fds,
            sample.functions,
            c.normal_ok.load(Ordering::Relaxed),
            c.normal_errors.load(Ordering::Relaxed),
            quantile(0.5),
            quantile(0.99),
            c.slow_opened.load(Ordering::Relaxed),
            c.aborted.load(Ordering::Relaxed),
            c.flood_connections.load(Ordering::Relaxed),
            c.events.load(Ordering::Relaxed),
        );
        samples.push(sample);
    }
    for task in tasks {
        task.abort();
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Ok(());
    };
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    println!(
        "after the first interval: RSS {} → {} KiB (peak {}), descriptors {} → {} (peak {}), function processes {} → {}; normal errors {}; Event invocations refused {}",
        first.rss_kib,
        last.rss_kib,
        peak(|s| s.rss_kib),
        first.fds,
        last.fds,
        peak(|s| s.fds as u64),
        first.functions,
        last.functions,
        counters.normal_errors.load(Ordering::Relaxed),
        counters.events_refused.load(Ordering::Relaxed),
    );
    Ok(())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// portico's RSS, open descriptors and child processes (its functions).
fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("portico ended")?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let me = pid.to_string();
    let functions = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                == Some(me.as_str())
        })
        .count();
    Ok(Sample {
        rss_kib,
        fds,
        functions,
    })
}

/// A normal client: a request every `every`, each on a new connection (as most clients of
/// a Lambda-backed API come).
async fn normal(target: Target, every: Duration, deadline: Instant, counters: Arc<Counters>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        ticks.tick().await;
        let sent = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), load::once(&target)).await {
            Ok(Ok(())) => {
                counters.normal_ok.fetch_add(1, Ordering::Relaxed);
                lock(&counters.latencies).push(sent.elapsed().as_micros() as u64);
            }
            _ => {
                counters.normal_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A connection from `from` (a loopback address) to `to`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// `count` half-sent requests held from many addresses, each replaced when the node
/// closes it (its idle timeout).
async fn slow_clients(to: SocketAddr, count: usize, deadline: Instant, counters: Arc<Counters>) {
    let mut held = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while Instant::now() < deadline {
        while held.len() < count {
            n += 1;
            let from = [127, 0, 2, (n % 200) as u8 + 1];
            let counters = counters.clone();
            held.spawn(async move {
                let Ok(mut stream) = connect_from(from, to).await else {
                    return;
                };
                counters.slow_opened.fetch_add(1, Ordering::Relaxed);
                let _ = stream
                    .write_all(b"GET /slow HTTP/1.1\r\nHost: soak.example\r\nX-Slow: ")
                    .await;
                let mut buf = [0u8; 1024];
                // Held until the node closes it.
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
        tokio::select! {
            _ = held.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Requests whose client goes away before the answer, 20 a second.
async fn aborts(to: SocketAddr, deadline: Instant, counters: Arc<Counters>) {
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(to).await {
            let _ = stream
                .write_all(b"GET /abort HTTP/1.1\r\nHost: soak.example\r\n\r\n")
                .await;
            drop(stream);
            counters.aborted.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bursts of 100 connections opened and closed at once, every 200 ms, from many addresses.
async fn floods(to: SocketAddr, deadline: Instant, counters: Arc<Counters>) {
    let mut round = 0u8;
    while Instant::now() < deadline {
        round = round.wrapping_add(1);
        let mut burst = Vec::with_capacity(100);
        for i in 0..100u8 {
            if let Ok(connected) =
                connect_from([127, 0, 3, round.wrapping_add(i) % 250 + 1], to).await
            {
                burst.push(connected);
            }
        }
        counters
            .flood_connections
            .fetch_add(burst.len() as u64, Ordering::Relaxed);
        drop(burst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Event` invocations through the Invoke API, 20 a second.
async fn events(invoke: SocketAddr, deadline: Instant, counters: Arc<Counters>) {
    let target = Target {
        addr: invoke,
        path: "/2015-03-31/functions/hello/invocations".into(),
        body: Bytes::from_static(br#"{"path":"/event","httpMethod":"GET"}"#),
        headers: vec![("x-amz-invocation-type", "Event".into())],
    };
    while Instant::now() < deadline {
        match load::once(&target).await {
            Ok(()) => counters.events.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.events_refused.fetch_add(1, Ordering::Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
