//! The accept loop every portico listener shares.
//!
//! Accept errors (out of file descriptors and the like) back off instead of spinning or
//! ending the loop. Each connection runs in a tracked task, and at most `max_connections`
//! run at once: at the cap the loop stops accepting, so new connections wait in the kernel's
//! backlog until one finishes (backpressure instead of unbounded memory). When `shutdown` fires the
//! listener closes, open connections get `drain` to finish on their own (each handler sees
//! the same `shutdown` token and can finish gracefully), and whatever is still open after
//! that is cut. When this function returns, no connection task of the listener is left.
//!
//! [`serve_connection`] is the other half for HTTP listeners: one connection served by hyper
//! until it ends, finishing its requests in progress gracefully when shutdown begins.
//! [`Dormant`] keeps what waits beside a connection's I/O (its shutdown, its timers) from
//! being polled on every one of the connection's wake-ups.

mod admission;
mod dormant;
mod occasional;

pub use admission::{
    Admission, Admitted, ClientSlot, Descriptors, PerClient, Refusal, Taken, default_reserve,
};
pub use dormant::Dormant;
pub use occasional::Occasional;

use hyper_util::server::graceful::GracefulConnection;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Drives one HTTP connection (HTTP/1, HTTP/2 or auto-detected, as built by hyper or
/// hyper-util) until it ends. When `shutdown` fires, the connection finishes the requests in
/// progress and closes: HTTP/1 after the current response, HTTP/2 with a GOAWAY.
pub async fn serve_connection<C>(conn: C, shutdown: &CancellationToken) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        // Polled when it fires, not on every wake-up of the connection (it takes a lock).
        _ = Dormant::new(shutdown.cancelled()) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The error type hyper's bounds ask for.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Decides, from the client's address and the listener's, whether a connection is served
/// (it may read `/proc`: it runs off the async threads).
pub type Admit = Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// How long portico's own APIs wait for a request head, and on an idle keep-alive
/// connection for the next one: ALB's default idle timeout.
pub const API_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves HTTP/1.1 on `listener` until `shutdown` fires, then drains as [`serve`] does:
/// every request goes to `handle` with the shared `state`. `name` says whose connections
/// these are in logs. For portico's own small APIs (Invoke, Runtime, admin). A connection
/// that does not send a whole request head within `head_timeout`, counted from the end of
/// the previous response on a kept-alive one, is closed: no connection is held for ever.
pub async fn serve_http1<T, H, Fut, B>(
    (name, admit): (&'static str, Option<Admit>),
    listener: TcpListener,
    shutdown: &CancellationToken,
    (limits, head_timeout): (Limits, Duration),
    state: Arc<T>,
    handle: H,
) -> Drained
where
    T: Send + Sync + 'static,
    H: Fn(Arc<T>, http::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve(listener, shutdown, (limits, &Admission::default()), |stream, peer| {
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let shutdown = shutdown.clone();
        let admit = admit.clone();
        async move {
            if let Some(admit) = admit {
                let local = stream.local_addr();
                let admitted = match local {
                    Ok(local) => tokio::task::spawn_blocking(move || admit(peer, local))
                        .await
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if !admitted {
                    tracing::warn!(%peer, "{name}: connection refused: not from whom it serves");
                    return;
                }
            }
            let service = hyper::service::service_fn(move |req| {
                let response = handle(state.clone(), req);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = serve_connection(conn, &shutdown).await {
                tracing::debug!(%error, "{name} connection ended");
            }
        }
    })
    .await
}

/// Pause after a failed accept, so that a full file table does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often failed accepts are logged, at most.
const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often refused connections are logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What happened at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the drain deadline, and cut.
    pub cut_short: usize,
}

/// How a listener accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections handled at once.
    pub max_connections: usize,
    /// How long open connections get to finish after shutdown before they are cut.
    pub drain: Duration,
}

/// Runs `handle` for every connection accepted on `listener` until `shutdown` fires, then
/// drains for at most `limits.drain` and cuts the rest. A connection that `admission`
/// refuses is closed as soon as it is accepted.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    (limits, admission): (Limits, &Admission),
    mut handle: F,
) -> Drained
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    let mut failures = Occasional::new(ACCEPT_FAILURE_LOG_EVERY);
    let mut refusals = Occasional::new(REFUSAL_LOG_EVERY);
    let cut = Cut::default();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        // The semaphore is never closed, so this always holds a permit.
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match admission.admit(peer.ip()) {
                Ok(admitted) => {
                    connections.spawn(Connection {
                        handler: handle(stream, peer),
                        cut: cut.token.clone().cancelled_owned(),
                        cutting: cut.cutting.clone(),
                        watching: false,
                        _slot: slot,
                        _admitted: admitted,
                    });
                }
                Err(refusal) => {
                    drop(stream);
                    if let Some(refused) = refusals.note() {
                        tracing::warn!(
                            client = %peer.ip(),
                            refused,
                            "connections refused: {refusal} (said once per {}s)",
                            REFUSAL_LOG_EVERY.as_secs()
                        );
                    }
                }
            },
            Err(error) => {
                // Out of descriptors, this fails ten times a second until one frees: said
                // once per interval, with how many times.
                if let Some(failures) = failures.note() {
                    tracing::warn!(%error, failures, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    connections.close();
    let mut cut_short = 0;
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        cut_short = connections.len();
        cut.fire();
        connections.wait().await;
    }
    Drained { cut_short }
}

/// The end of a listener's drain, told to every connection still open.
#[derive(Default)]
struct Cut {
    token: CancellationToken,
    /// Set before `token` fires. Connections look at it on each wake-up instead of polling
    /// the token, which takes a lock.
    cutting: Arc<AtomicBool>,
}

impl Cut {
    fn fire(&self) {
        self.cutting.store(true, Ordering::Release);
        self.token.cancel();
    }
}

pin_project_lite::pin_project! {
    /// One connection's task: its handler, cut short when the drain is over, holding the
    /// connection's slot until it ends. A struct rather than an `async` block, so that the
    /// handler's future is stored once: an `async` block keeps the future it captured
    /// beside the copy it polls, which doubled what each held connection costs.
    struct Connection<F> {
        #[pin]
        handler: F,
        // Polled once to register this task's waker, then again only once `cutting` is set
        // (the token's notification wakes the task; the flag says why).
        #[pin]
        cut: tokio_util::sync::WaitForCancellationFutureOwned,
        cutting: Arc<AtomicBool>,
        watching: bool,
        _slot: tokio::sync::OwnedSemaphorePermit,
        _admitted: Admitted,
    }
}

impl<F: Future<Output = ()>> Future for Connection<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.handler.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !*this.watching || this.cutting.load(Ordering::Acquire) {
            *this.watching = true;
            return this.cut.poll(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max_connections: usize, drain_ms: u64) -> Limits {
        Limits {
            max_connections,
            drain: Duration::from_millis(drain_ms),
        }
    }

    /// [`serve`] on a loopback port with `handle`: its address, the shutdown that stops it,
    /// and what its drain reports.
    async fn start<F, Fut>(
        limits: Limits,
        handle: F,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Drained>,
    )
    where
        F: FnMut(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                serve(listener, &shutdown, (limits, &Admission::default()), handle).await
            })
        };
        (addr, shutdown, server)
    }

    #[tokio::test]
    async fn an_api_connection_that_stalls_or_idles_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                serve_http1(
                    ("test API", None),
                    listener,
                    &shutdown,
                    (limits(8, 100), Duration::from_millis(300)),
                    Arc::new(()),
                    |_, _req| async {
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                            b"ok",
                        )))
                    },
                )
                .await
            })
        };
        let closed_within = |mut stream: TcpStream| async move {
            let began = std::time::Instant::now();
            let mut buf = vec![0u8; 1024];
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return (began.elapsed(), seen),
                    Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                    Err(_) => panic!("still open after 3 s"),
                }
            }
        };
        // Half a request head, then nothing: closed.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (took, _) = closed_within(slow).await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        // A kept-alive connection that goes quiet after its answer: closed too.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (took, seen) = closed_within(idle).await;
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
        assert!(took < Duration::from_secs(2), "{took:?}");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn serves_until_shutdown_then_refuses() {
        let (addr, shutdown, server) = start(limits(100, 1000), |mut s, _| async move {
            let _ = s.write_all(b"hi").await;
        })
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Drained { cut_short: 0 });
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_woken_many_times_is_still_cut_at_the_drain_deadline() {
        let (addr, shutdown, server) = start(limits(100, 50), |mut s, _| async move {
            // Echoes forever: every message wakes the task again.
            let mut buf = [0u8; 16];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 4];
        for _ in 0..20 {
            client.write_all(b"ping").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Drained { cut_short: 1 });
        assert_eq!(client.read(&mut buf).await.unwrap(), 0, "the cut closed it");
    }

    #[tokio::test]
    async fn connections_that_outlive_the_drain_are_cut() {
        let (addr, shutdown, server) =
            start(limits(100, 50), |_, _| std::future::pending::<()>()).await;
        let _held = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Drained { cut_short: 1 });
    }

    #[tokio::test]
    async fn at_the_cap_new_connections_wait_for_a_free_slot() {
        // Greets, then holds the connection until the client closes it.
        let (addr, shutdown, _server) = start(limits(1, 50), |mut s, _| async move {
            let _ = s.write_all(b"hi").await;
            let _ = s.read(&mut [0; 1]).await;
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 2];
        first.read_exact(&mut buf).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let waited =
            tokio::time::timeout(Duration::from_millis(200), second.read_exact(&mut buf)).await;
        assert!(waited.is_err(), "second connection served beyond the cap");
        drop(first);
        second.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        shutdown.cancel();
    }
}
