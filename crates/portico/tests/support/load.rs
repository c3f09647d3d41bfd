//! A steady stream of HTTP requests to the static IPs, for failover tests: threads that
//! open a new connection per request (alternating the addresses), and threads that keep
//! one connection per address alive and send on it. Every request is recorded with its
//! start, end and outcome, so that a test can ask, for any stretch of time, how many
//! requests failed and how long each address went unanswered. A request belongs to the
//! stretch it started in (one that hangs until its timeout is blamed on what caused it),
//! so stretches are read once the load has stopped.
//!
//! A keep-alive thread behaves as HTTP clients do (RFC 9112, section 9.3.1): when its
//! reused connection turns out closed before any byte of the response came, it sends the
//! (idempotent) request again on a new connection; that counts as one request. A response
//! cut short, a refused connection or a timeout is a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One request's record.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index of the address it went to.
    pub target: usize,
    /// When it started and ended.
    pub started: Instant,
    pub ended: Instant,
    /// On a kept-alive connection.
    pub keep_alive: bool,
    /// The error, if it failed.
    pub error: Option<String>,
    /// The response's body, when it was answered.
    pub body: Option<String>,
}

/// The running load.
pub struct Load {
    targets: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a stretch of the load saw.
#[derive(Debug)]
pub struct Report {
    /// Requests that ended in the stretch.
    pub requests: usize,
    /// Of those, on kept-alive connections.
    pub keep_alive: usize,
    /// Their errors, with the address and when the request started and ended.
    pub failed: Vec<(SocketAddr, String, Instant, Instant)>,
    /// Per address: the longest time between two answered requests (or from the start of
    /// the stretch to the first, or from the last to its end).
    pub unanswered: Vec<(SocketAddr, Duration)>,
    /// The slowest answered request: its address, when it started after the stretch began,
    /// and how long it took.
    pub slowest: Option<(SocketAddr, Duration, Duration)>,
}

impl Report {
    /// The longest time any address went unanswered.
    pub fn worst_gap(&self) -> Duration {
        self.unanswered
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} kept alive), {} failed; longest unanswered:",
            self.requests,
            self.keep_alive,
            self.failed.len()
        )?;
        for (address, gap) in &self.unanswered {
            write!(f, " {} {} ms", address.ip(), gap.as_millis())?;
        }
        if let Some((address, at, took)) = self.slowest {
            write!(
                f,
                "; slowest answer {} ms ({} at +{} ms)",
                took.as_millis(),
                address.ip(),
                at.as_millis()
            )?;
        }
        Ok(())
    }
}

impl Load {
    /// Starts `fresh` threads of new-connection requests (each pausing `pause` between
    /// requests) and one keep-alive thread per address, all sending `request`.
    pub fn start(
        targets: &[SocketAddr],
        fresh: usize,
        pause: Duration,
        request: &'static str,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for t in 0..fresh {
            let (targets, stop, log) = (targets.to_vec(), stop.clone(), log.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let target = i % targets.len();
                    let started = Instant::now();
                    let result = fresh_request(targets[target], request);
                    record(&log, target, started, false, result);
                    i += 1;
                    std::thread::sleep(pause);
                }
            }));
        }
        for (target, address) in targets.iter().copied().enumerate() {
            let (stop, log) = (stop.clone(), log.clone());
            threads.push(std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = keep_alive_request(&mut conn, address, request);
                    record(&log, target, started, true, result);
                    std::thread::sleep(pause * 2);
                }
            }));
        }
        Self {
            targets: targets.to_vec(),
            stop,
            log,
            threads,
        }
    }

    /// What the requests started between `from` and `to` saw; read it after [`Load::stop`]
    /// so that every one of them has ended.
    pub fn report(&self, from: Instant, to: Instant) -> Report {
        let log = self.log.lock().unwrap();
        let within: Vec<&Outcome> = log
            .iter()
            .filter(|o| o.started >= from && o.started < to)
            .collect();
        let unanswered = self
            .targets
            .iter()
            .enumerate()
            .map(|(t, address)| {
                let mut answered: Vec<Instant> = within
                    .iter()
                    .filter(|o| o.target == t && o.error.is_none())
                    .map(|o| o.ended)
                    .collect();
                answered.sort();
                let mut gap = Duration::ZERO;
                let mut last = from;
                for at in answered.iter().chain(std::iter::once(&to)) {
                    gap = gap.max(at.saturating_duration_since(last));
                    last = last.max(*at);
                }
                (*address, gap)
            })
            .collect();
        let slowest = within
            .iter()
            .filter(|o| o.error.is_none())
            .max_by_key(|o| o.ended - o.started)
            .map(|o| {
                (
                    self.targets[o.target],
                    o.started - from,
                    o.ended - o.started,
                )
            });
        Report {
            slowest,
            requests: within.len(),
            keep_alive: within.iter().filter(|o| o.keep_alive).count(),
            failed: within
                .iter()
                .filter_map(|o| {
                    o.error
                        .clone()
                        .map(|e| (self.targets[o.target], e, o.started, o.ended))
                })
                .collect(),
            unanswered,
        }
    }

    /// Every request recorded so far, in the order they ended.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.log.lock().unwrap().clone()
    }

    /// Stops every thread, once each has finished its request.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn record(
    log: &Mutex<Vec<Outcome>>,
    target: usize,
    started: Instant,
    keep_alive: bool,
    result: Result<String, String>,
) {
    let (body, error) = match result {
        Ok(body) => (Some(body), None),
        Err(error) => (None, Some(error)),
    };
    log.lock().unwrap().push(Outcome {
        target,
        started,
        ended: Instant::now(),
        keep_alive,
        error,
        body,
    });
}

fn connect(address: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&address, REQUEST_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// One request on a new connection, closed after the response. The response is read as
/// curl reads it: up to the end of its `Content-Length` body, not to the connection's end.
fn fresh_request(address: SocketAddr, request: &str) -> Result<String, String> {
    let mut s = connect(address)?;
    s.write_all(format!("{request}Connection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    if reader
        .read_line(&mut status)
        .map_err(|e| format!("read: {e}"))?
        == 0
    {
        return Err("answer: (nothing)".into());
    }
    read_rest(&mut reader, &status)
}

/// A kept-alive connection and its reader.
struct Conn {
    reader: BufReader<TcpStream>,
}

/// Why a response did not come on a connection.
enum Failure {
    /// Closed or reset before the first byte: a reused connection may be retried.
    BeforeResponse(String),
    /// Anything else.
    Other(String),
}

/// One request on the kept-alive connection (made if there is none), retried once on a
/// new connection when a reused one was closed before the response began.
fn keep_alive_request(
    conn: &mut Option<Conn>,
    address: SocketAddr,
    request: &str,
) -> Result<String, String> {
    let reused = conn.is_some();
    match exchange(conn, address, request) {
        Ok(body) => Ok(body),
        Err(Failure::BeforeResponse(error)) if reused => {
            *conn = None;
            exchange(conn, address, request).map_err(|f| match f {
                Failure::BeforeResponse(e) | Failure::Other(e) => format!("{e} (after {error})"),
            })
        }
        Err(Failure::BeforeResponse(e) | Failure::Other(e)) => {
            *conn = None;
            Err(e)
        }
    }
}

fn exchange(
    conn: &mut Option<Conn>,
    address: SocketAddr,
    request: &str,
) -> Result<String, Failure> {
    if conn.is_none() {
        let s = connect(address).map_err(Failure::Other)?;
        *conn = Some(Conn {
            reader: BufReader::new(s),
        });
    }
    let c = conn.as_mut().unwrap();
    c.reader
        .get_mut()
        .write_all(format!("{request}\r\n").as_bytes())
        .map_err(|e| Failure::BeforeResponse(format!("send: {e}")))?;
    let mut status = String::new();
    match c.reader.read_line(&mut status) {
        Ok(0) => return Err(Failure::BeforeResponse("closed".into())),
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut =>
        {
            return Err(Failure::BeforeResponse(format!("read: {e}")));
        }
        Err(e) => return Err(Failure::Other(format!("read: {e}"))),
        Ok(_) => {}
    }
    let result = read_rest(&mut c.reader, &status);
    if result.is_err() {
        *conn = None;
    }
    result.map_err(Failure::Other)
}

/// The rest of a response whose status line is `status`: headers, then a body of its
/// `Content-Length`, returned.
fn read_rest(reader: &mut BufReader<TcpStream>, status: &str) -> Result<String, String> {
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("head: {e}"))?
            == 0
        {
            return Err("closed in the head".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {}", status.trim()));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// What must hold for a stretch of the load.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Every request answered.
    NoFailure,
    /// No address unanswered for longer than this; requests caught by the failure may fail.
    RestoredWithin(Duration),
}

/// A named stretch of the load and what must hold for it.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    pub from: Instant,
    pub to: Instant,
    pub expect: Expect,
}

/// How long before a failure strikes a request may have begun and still be its casualty
/// (one in flight then, waiting on the node that died or lost its link).
const CASUALTY_SLACK: Duration = Duration::from_secs(1);

impl Load {
    /// Prints what each phase saw (each test output line starts with `HA` and the phase),
    /// and returns what did not hold. Call after [`Load::stop`].
    pub fn check(&self, phases: &[Phase]) -> Vec<String> {
        let mut broken = Vec::new();
        for (i, phase) in phases.iter().enumerate() {
            let report = self.report(phase.from, phase.to);
            // A request begun just before the next phase's failure struck (a kill, a cut
            // link) and still in flight then is that failure's casualty, judged there.
            let next_tolerates = phases
                .get(i + 1)
                .is_some_and(|next| matches!(next.expect, Expect::RestoredWithin(_)));
            let casualty = |started: Instant, ended: Instant| {
                next_tolerates && ended > phase.to && started + CASUALTY_SLACK >= phase.to
            };
            let failed_here = report
                .failed
                .iter()
                .filter(|(_, _, started, ended)| !casualty(*started, *ended))
                .count();
            eprintln!("\nHA {}: {report}", phase.name);
            for (address, error, started, ended) in report.failed.iter().take(5) {
                eprintln!(
                    "HA   failed: {address}: {error} (started at +{} ms, took {} ms)",
                    started.duration_since(phase.from).as_millis(),
                    ended.duration_since(*started).as_millis()
                );
            }
            let gap = report.worst_gap();
            let problem = match phase.expect {
                Expect::NoFailure if failed_here > 0 => Some("requests failed".to_owned()),
                Expect::RestoredWithin(limit) if gap > limit => {
                    Some(format!("unanswered for {gap:?}, over {limit:?}"))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                broken.push(format!("{}: {problem}: {report}", phase.name));
            }
        }
        broken
    }
}
