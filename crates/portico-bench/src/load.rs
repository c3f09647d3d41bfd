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

/// Sends one request on a fresh connection; `Ok` only for a 200.
pub(crate) async fn once(target: &Target) -> anyhow::Result<()> {
    let mut conn = Connection::open(target.addr).await?;
    conn.send(target).await
}

/// Runs `concurrency` workers until `requests` were sent in all, or `duration` is over.
pub(crate) async fn run(
    target: &Target,
    concurrency: usize,
    duration: Duration,
    requests: Option<usize>,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker = requests.map(|n| n.div_ceil(concurrency));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut conn = Connection::open(target.addr).await?;
            while Instant::now() < deadline && per_worker.is_none_or(|n| latencies.len() < n) {
                let sent = Instant::now();
                match conn.send(&target).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => {
                        errors += 1;
                        conn = Connection::open(target.addr).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    collect(workers, started).await
}

/// One load worker's latencies and errors.
pub(crate) type Worker = tokio::task::JoinHandle<anyhow::Result<(Vec<Duration>, usize)>>;

/// Waits for every worker of a run that began at `started` and sums up their figures.
pub(crate) async fn collect(workers: Vec<Worker>, started: Instant) -> anyhow::Result<Figures> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut l, e) = worker.await??;
        latencies.append(&mut l);
        errors += e;
    }
    Ok(Figures::new(latencies, errors, started.elapsed()))
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
        if status != http::StatusCode::OK {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        if body.windows(9).any(|w| w == b"errorType") {
            bail!("function error: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
