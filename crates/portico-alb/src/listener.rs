//! A load balancer listener: accepts connections, reads PROXY v2 when enabled (from its
//! trusted sources only: anyone else could choose the client address that rules, rate
//! limits and functions see), completes the TLS handshake on HTTPS listeners, serves
//! HTTP/1.1 and HTTP/2, closes idle connections after the idle timeout, and drains on
//! shutdown. A request head hyper cannot parse gets ALB's answer (`malformed`).
//!
//! The HTTP version: on HTTPS listeners ALPN decides (`h2` or `http/1.1`); on HTTP listeners
//! a connection that opens with the HTTP/2 preface is HTTP/2 (h2c with prior knowledge),
//! anything else HTTP/1.1. With the load balancer's `http2` off, only HTTP/1.1 is spoken.
//!
//! Shutdown sequence (with `portico_accept`): stop accepting → ask every connection to finish
//! its requests in progress (hyper's graceful shutdown; GOAWAY on HTTP/2) → wait up to the
//! drain timeout → cut the rest and report how many.

use crate::handler::{self, Connection, Context};
use crate::malformed::{self, Held};
use crate::router::Router;
use crate::tls::Certificates;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portico_invoke::Invoker;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// hyper's read buffer bound: a backstop against endless heads. It is approximate (hyper
/// checks it only between reads), so ALB's exact limits are enforced in `forward`, and this
/// is set above them so that those checks are the ones clients meet.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// Most requests in flight on one HTTP/2 connection, as ALB allows.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// How one listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// The load balancer's name, for logs.
    pub load_balancer: String,
    /// Require a PROXY protocol v2 header on every connection.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the networks whose connections may send the header; others
    /// are refused.
    pub proxy_sources: Vec<ipnet::IpNet>,
    /// How long a connection may stay open with no request in progress, and how long a
    /// request head may take.
    pub idle_timeout: Duration,
    /// Connection cap, and how long in-flight requests get to finish at shutdown.
    pub limits: portico_accept::Limits,
    /// What a connection must pass to be served (the descriptor budget).
    pub admission: portico_accept::Admission,
    /// The listener's rules and default action.
    pub router: Router,
    /// The load balancer's id as access logs name it, `app/NAME/ID`.
    pub elb: String,
    /// Where access log lines go, when enabled.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// HTTPS: the certificates. `None` is plain HTTP.
    pub tls: Option<Arc<Certificates>>,
    /// Accept HTTP/2 (ALPN `h2` on HTTPS, prior knowledge on HTTP).
    pub http2: bool,
    /// How the forwarded headers are made.
    pub forwarding: crate::forwarded::Forwarding,
    /// What happens to HTTP/1 requests that are not RFC 7230 compliant.
    pub desync: portico_config::model::DesyncMitigationMode,
}

/// How long a connection may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often connections refused for an untrusted PROXY source are logged, at most.
const UNTRUSTED_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's settings as configured now, with what is made of them: replaced whole
/// when they change ([`Listening::update`]).
struct Generation {
    ctx: Arc<Context>,
    spec: ListenerSpec,
    /// Detects HTTP/2 by its preface (only HTTP/1 when HTTP/2 is off).
    auto: auto::Builder<TokioExecutor>,
    /// For connections whose version ALPN settled.
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Generation {
    fn new(spec: ListenerSpec, invoker: Arc<dyn Invoker>, port: u16) -> Self {
        let ctx = Arc::new(Context {
            router: spec.router.clone(),
            invoker,
            proto: if spec.tls.is_some() { "https" } else { "http" },
            port,
            port_header: http::HeaderValue::from(port),
            target_timeout: spec.idle_timeout,
            elb: spec.elb.as_str().into(),
            access_log: spec.access_log.clone(),
            forwarding: spec.forwarding,
            desync: spec.desync,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The connection's idle watchdog (`serve_http`) already closes a connection whose
            // next request head has not come whole within the idle timeout; hyper's own
            // timer would be reset on every request for nothing.
            .header_read_timeout(None)
            // A response's head and body copied into one buffer and written with one
            // send(2), as HAProxy and nginx write: fewer instructions than hyper's queue of
            // buffers for writev(2), and a shorter path in the kernel. Paired rounds against
            // the writev build: 1.06x throughput per core, user time lower in 8 of 10 pairs.
            .writev(false)
            // A client (or the edge, when its node stops) that shuts its write half after a
            // request still gets the response; an idle connection that reads its end closes.
            .half_close(true)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        Self {
            ctx,
            auto: if spec.http2 {
                builder.clone()
            } else {
                builder.clone().http1_only()
            },
            http1: builder.clone().http1_only(),
            http2: builder.http2_only(),
            spec,
        }
    }
}

/// What every connection of a listener shares.
struct Listener {
    /// The settings now: a connection takes those of its accept (PROXY, TLS, versions,
    /// idle timeout), a request those of its arrival (rules, actions, logs).
    current: ArcSwap<Generation>,
    invoker: Arc<dyn Invoker>,
    port: u16,
    /// Connections refused for sending PROXY headers from elsewhere, said once per interval.
    untrusted: std::sync::Mutex<portico_accept::Occasional>,
}

/// A listener being served: changes its settings while it serves.
#[derive(Clone)]
pub struct Listening(Arc<Listener>);

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("port", &self.0.port)
            .finish_non_exhaustive()
    }
}

impl Listening {
    /// Serves with `spec` from now on: connections accepted from now on take its
    /// connection settings (PROXY protocol, certificates, HTTP/2, idle timeout), and every
    /// request that arrives from now on, on any connection, its rules and actions; requests
    /// in progress finish as they began. The socket, its connection limits and admission
    /// stay those it was served with.
    pub fn update(&self, spec: ListenerSpec) {
        let listener = &self.0;
        listener.current.store(Arc::new(Generation::new(
            spec,
            listener.invoker.clone(),
            listener.port,
        )));
    }
}

/// Serves `listener` until `shutdown` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    spec: ListenerSpec,
    invoker: Arc<dyn Invoker>,
    shutdown: CancellationToken,
) {
    listen(listener, spec, invoker, shutdown).1.await;
}

/// Serves `listener`, as [`serve`], with a handle that changes its settings while it serves.
pub fn listen(
    listener: TcpListener,
    spec: ListenerSpec,
    invoker: Arc<dyn Invoker>,
    shutdown: CancellationToken,
) -> (Listening, impl Future<Output = ()> + Send + 'static) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let (limits, admission, load_balancer) = (
        spec.limits,
        spec.admission.clone(),
        spec.load_balancer.clone(),
    );
    let shared = Arc::new(Listener {
        current: ArcSwap::from_pointee(Generation::new(spec, invoker.clone(), port)),
        invoker,
        port,
        untrusted: std::sync::Mutex::new(portico_accept::Occasional::new(UNTRUSTED_LOG_EVERY)),
    });
    let handle = Listening(shared.clone());
    let served = async move {
        let drained =
            portico_accept::serve(listener, &shutdown, (limits, &admission), |stream, peer| {
                connection(stream, peer, shared.clone(), shutdown.clone())
            })
            .await;
        if drained.cut_short > 0 {
            tracing::warn!(
                load_balancer,
                cut_short = drained.cut_short,
                "drain timeout: open connections were cut"
            );
        }
    };
    (handle, served)
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let generation = listener.current.load_full();
    let client = if generation.spec.proxy_protocol {
        let source = peer.ip().to_canonical();
        if !generation
            .spec
            .proxy_sources
            .iter()
            .any(|n| n.contains(&source))
        {
            let said = listener
                .untrusted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note();
            if let Some(refused) = said {
                tracing::warn!(
                    %peer,
                    refused,
                    "connections refused: PROXY headers are taken only from proxy_protocol_sources"
                );
            }
            return;
        }
        match portico_proxy_protocol::read_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
            Ok(Some(client)) => client,
            Ok(None) => peer,
            // A peer that closes before sending anything is a TCP health check, not an attack.
            Err(error @ portico_proxy_protocol::ProxyHeaderError::Io(_)) => {
                tracing::debug!(%peer, %error, "connection closed before a PROXY header");
                return;
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "connection refused: PROXY protocol v2 required");
                return;
            }
        }
    } else {
        peer
    };
    let span = tracing::debug_span!("connection", %client, %peer);
    let Some(certificates) = &generation.spec.tls else {
        let conn = Connection::new(client, None);
        serve_http(stream, &generation, conn, &listener, shutdown)
            .instrument(span)
            .await;
        return;
    };
    let (stream, negotiated) =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, certificates.accept(stream)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => {
                tracing::debug!(%client, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "TLS handshake timed out");
                return;
            }
        };
    let conn = Connection::new(client, Some(negotiated));
    serve_http(stream, &generation, conn, &listener, shutdown)
        .instrument(span)
        .await;
}

/// Serves HTTP on `io`, with the versions and idle timeout of `generation` (the settings at
/// its accept) and, for each request, the rules of `listener`'s settings at its arrival.
async fn serve_http<I>(
    io: I,
    generation: &Generation,
    conn: Connection,
    listener: &Arc<Listener>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = match conn.tls.as_ref().map(|t| t.h2) {
        None => &generation.auto,
        Some(true) => &generation.http2,
        Some(false) => &generation.http1,
    };
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::new());
    let close = shutdown.child_token();
    let resets = Arc::new(Resets::new(close.clone()));
    let service = {
        let listener = listener.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let ctx = listener.current.load().ctx.clone();
            let conn = conn.clone();
            let busy = activity.begin();
            let unanswered = Unanswered(Some(resets.clone()));
            async move {
                let response = handler::handle(&ctx, &conn, req).await;
                unanswered.answered();
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let parking = malformed::Parking::default();
    let served = portico_accept::serve_connection(
        builder.serve_connection(TokioIo::new(Held::new(io, parking.clone())), service),
        &close,
    );
    let idle_timeout = generation.spec.idle_timeout;
    // After the idle timeout, a graceful close; a peer that does not take part in it (an
    // HTTP/2 client that never acknowledges the GOAWAY's PING) is cut one more timeout later.
    // Polled when its timers fire, not on every wake-up of the connection.
    let watchdog = portico_accept::Dormant::new(async {
        activity.idle(idle_timeout).await;
        tracing::debug!("idle timeout: closing the connection");
        close.cancel();
        tokio::time::sleep(idle_timeout).await;
    });
    tokio::select! {
        result = served => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
                let parked = parking.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(io) = parked {
                    malformed::answer(io, malformed::status_for(error.as_ref())).await;
                }
            }
        }
        () = watchdog => {}
    }
}

/// Most requests a connection's client may abandon (an HTTP/2 stream reset, a closed
/// connection) in [`RESET_WINDOW`]; past it the connection is closed. h2's own rapid-reset
/// guard counts only streams reset before they were accepted; an abandoned invocation runs
/// to its end (as on Lambda), so resetting accepted streams would otherwise start work for
/// free.
pub const MAX_RESETS: u32 = 100;

/// The window [`MAX_RESETS`] is counted over.
const RESET_WINDOW: Duration = Duration::from_secs(10);

/// The requests a connection's client abandoned lately.
struct Resets {
    started: Instant,
    /// Milliseconds from `started` at which the current window began.
    window_ms: AtomicU64,
    count: std::sync::atomic::AtomicU32,
    close: CancellationToken,
}

impl Resets {
    fn new(close: CancellationToken) -> Self {
        Self {
            started: Instant::now(),
            window_ms: AtomicU64::new(0),
            count: std::sync::atomic::AtomicU32::new(0),
            close,
        }
    }

    /// Counts one abandoned request; closes the connection past the limit.
    fn count(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let window = self.window_ms.load(Ordering::Relaxed);
        if now.saturating_sub(window) > RESET_WINDOW.as_millis() as u64 {
            self.window_ms.store(now, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == MAX_RESETS + 1 {
            tracing::warn!(
                limit = MAX_RESETS,
                "connection closed: its client abandoned too many requests"
            );
            self.close.cancel();
        }
    }
}

/// Counts its request as abandoned when dropped before its answer.
struct Unanswered(Option<Arc<Resets>>);

impl Unanswered {
    /// The request got its answer: nothing to count.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(resets) = self.0.take() {
            resets.count();
        }
    }
}

/// Requests in progress on a connection and when the last one ended, so that a connection
/// with nothing in progress for the idle timeout is closed, as ALB closes it.
struct Activity {
    start: Instant,
    in_progress: AtomicUsize,
    /// Milliseconds from `start` to the end of the last request.
    last_ms: AtomicU64,
}

/// Marks a request in progress until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.start.elapsed().as_millis() as u64;
        activity.last_ms.store(now, Ordering::Relaxed);
        activity.in_progress.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_progress: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_progress.fetch_add(1, Ordering::Acquire);
        Busy(self.clone())
    }

    /// Returns once nothing has been in progress for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.in_progress.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                let idle_for = self.start.elapsed().saturating_sub(last);
                match timeout.checked_sub(idle_for) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
