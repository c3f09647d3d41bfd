//! A closed-loop HTTP load generator: `concurrency` workers, each with its own keep-alive
//! connection, sending the same request back to back and timing every one.

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// One request, sent again and again.
#[derive(Clone)]
pub(crate) struct Target {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// Path and query.
    pub(crate) path: String,
    /// POST body.
    pub(crate) body: Bytes,
    /// More request headers.
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
    /// Sorted latencies of the successful requests.
    latencies: Vec<Duration>,
}

impl Figures {
    /// Figures from the latencies of successful requests (any order).
    pub(crate) fn new(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        Self {
            requests: latencies.len(),
            errors,
            elapsed,
            latencies,
        }
    }

    /// Successful requests per second.
    pub(crate) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1e6
    }
}

/// The order `systems` systems are measured in during round `round` (from 0): each round
/// starts with the next one, so that none is always measured first (right after the
/// backend has rested) or last.
pub(crate) fn turns(round: usize, systems: usize) -> impl Iterator<Item = usize> {
    (0..systems).map(move |turn| (round + turn) % systems)
}

/// The run whose `key` is the median of `runs` (the upper one of an even count).
pub(crate) fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle)
}

/// Sends one request on a fresh connection; `Ok` only for a 200 (or a 204).
pub(crate) async fn once(target: &Target) -> anyhow::Result<()> {
    let mut conn = Connection::open(target.addr).await?;
    conn.send(target).await
}

/// Runs `concurrency` workers until `requests` were sent in all, or `duration` is over.
///
/// The workers are spread over one thread per core this process may run on (at most one
/// per worker), each with a current-thread runtime that drives its connections and their
/// requests: no request waits for a wake-up from another thread, so the generator adds as
/// little as it can to every system's latency (wrk's model: an event loop per thread).
pub(crate) async fn run(
    target: &Target,
    concurrency: usize,
    duration: Duration,
    requests: Option<usize>,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker = requests.map(|n| n.div_ceil(concurrency));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = concurrency.clamp(1, cores);
    let mut loops = Vec::new();
    for t in 0..threads {
        // Workers t, t + threads, t + 2 × threads, … run on thread t.
        let workers = (concurrency + threads - 1 - t) / threads;
        let target = target.clone();
        loops.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let workers: Vec<Worker> = (0..workers)
                    .map(|_| tokio::spawn(worker(target.clone(), deadline, per_worker)))
                    .collect();
                gather(workers).await
            })
        }));
    }
    let gathered = tokio::task::spawn_blocking(move || {
        loops
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("load thread panicked")))
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let (latencies, errors) = merge(gathered)?;
    Ok(Figures::new(latencies, errors, started.elapsed()))
}

/// One worker: its own keep-alive connection, requests back to back until `deadline` or
/// until it sent `requests`; a failed request is counted and the connection opened again.
async fn worker(
    target: Target,
    deadline: Instant,
    requests: Option<usize>,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    let mut conn = Connection::open(target.addr).await?;
    while Instant::now() < deadline && requests.is_none_or(|n| latencies.len() < n) {
        let sent = Instant::now();
        match conn.send(&target).await {
            Ok(()) => latencies.push(sent.elapsed()),
            Err(_) => {
                errors += 1;
                conn = Connection::open(target.addr).await?;
            }
        }
    }
    Ok((latencies, errors))
}

/// One load worker's latencies and errors.
pub(crate) type Worker = tokio::task::JoinHandle<anyhow::Result<(Vec<Duration>, usize)>>;

/// Waits for every worker of a run that began at `started` and sums up their figures.
pub(crate) async fn collect(workers: Vec<Worker>, started: Instant) -> anyhow::Result<Figures> {
    let (latencies, errors) = gather(workers).await?;
    Ok(Figures::new(latencies, errors, started.elapsed()))
}

/// Every worker's latencies, together, and the sum of their errors.
async fn gather(workers: Vec<Worker>) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut parts = Vec::with_capacity(workers.len());
    for worker in workers {
        parts.push(worker.await?);
    }
    merge(parts)
}

/// Latencies and errors of several workers or threads as one; the first failure wins.
fn merge(
    parts: impl IntoIterator<Item = anyhow::Result<(Vec<Duration>, usize)>>,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for part in parts {
        let (mut l, e) = part?;
        latencies.append(&mut l);
        errors += e;
    }
    Ok((latencies, errors))
}

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    async fn send(&mut self, target: &Target) -> anyhow::Result<()> {
        self.sender.ready().await?;
        let mut request = Request::post(target.path.as_str())
            .header(http::header::HOST, target.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in &target.headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.body(Full::new(target.body.clone()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        if body.windows(9).any(|w| w == b"errorType") {
            bail!("function error: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
