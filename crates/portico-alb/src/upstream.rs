//! Keep-alive HTTP/1.1 connections to one target, reused request after request.
//!
//! Each target keeps a short stack of idle connections (the most recently used on top, so
//! the warmest is reused and the coldest age out). A connection goes back on the stack when
//! its response body has ended; the next request waits for hyper to mark it ready, which
//! it is by then or a moment later. A connection whose response was cut off, or that the
//! target marked for closing, is dropped instead. hyper-util's pooled client does the same
//! job, but for every HTTP/1 request it looks the pool up in a hashed map behind a lock and
//! spawns a task that waits for the connection to become idle; on one core that
//! bookkeeping cost about 6 % of the load balancer's throughput (`scripts/bench lb`).
//!
//! A request written to a reused connection that the target had closed meanwhile (its
//! keep-alive timeout raced ours) never reached it: hyper hands it back, and it goes out
//! again on the next connection, as hyper-util's client retries it.
//!
//! Lifetimes: a connection's task ends when the connection closes, which happens once its
//! sender is dropped and nothing is in flight on it. Idle connections are dropped after
//! [`POOL_IDLE`], and all of them when `closed` fires (the target is deregistered or
//! portico shuts down); connections busy at that moment finish their response first.

use crate::body::Body;
use crate::error::LbError;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection to a target may take to open (ALB: 10 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection to a target is kept.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);

/// How long a connection handed back may take to become ready before another is used.
const READY_WAIT: Duration = Duration::from_millis(10);

/// Most idle connections kept per target; more are closed when their response ends.
const MAX_IDLE: usize = 1024;

/// An idle connection and when it became idle.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The connections to one target.
pub(crate) struct Upstream {
    address: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Fired when the target goes away: idle connections close, busy ones after their
    /// response.
    closed: CancellationToken,
    /// Owns every connection's task and the expiry task.
    tasks: TaskTracker,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("address", &self.address)
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl Upstream {
    /// Connections to `address`, kept until `closed` fires; `tasks` owns their tasks and
    /// the one that closes idle connections after [`POOL_IDLE`].
    pub(crate) fn start(
        address: SocketAddr,
        closed: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let upstream = Arc::new(Self {
            address,
            idle: Mutex::new(Vec::new()),
            closed,
            tasks: tasks.clone(),
        });
        tasks.spawn(upstream.clone().expire());
        upstream
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one, and
    /// returns the response head; its body hands the connection back when it ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, LbError> {
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.returning(sender, response)),
                Err(mut error) => match error.take_message() {
                    // Never written to the target: safe to send again elsewhere.
                    Some(back) if reused => req = back,
                    _ => return Err(LbError::TargetFailed(source_chain(&error.into_error()))),
                },
            }
        }
    }

    /// The response with a body that gives `sender` back once it has ended.
    fn returning(
        self: &Arc<Self>,
        sender: SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let empty = body.is_end_stream();
        let mut body = Returning {
            body,
            back: Some((sender, self.clone())),
        };
        if empty {
            // Nothing will poll an empty body to its end (a 204, a HEAD reply).
            body.release();
        }
        Response::from_parts(parts, body.boxed())
    }

    /// The most recently idle connection that is still usable, once hyper has it ready.
    ///
    /// A connection handed back a moment ago is ready as soon as its task has run. One
    /// that stays busy longer is still sending a request body its target answered early
    /// (a 413 to an upload, say): waiting for it would make this request wait on that
    /// client, so after [`READY_WAIT`] it is left to finish and close, and the next one is
    /// tried.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let Idle { mut sender, since } = self.lock().pop()?;
            if sender.is_closed() || since.elapsed() >= POOL_IDLE {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    /// A new connection, driven by a task of its own until it closes.
    async fn connect(&self) -> Result<SendRequest<Body>, LbError> {
        let address = self.address;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(LbError::TargetConnect(format!("{address}: {error}")));
            }
            Err(_) => {
                return Err(LbError::TargetConnect(format!(
                    "{address}: no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LbError::TargetConnect(format!("{address}: {}", source_chain(&e))))?;
        self.tasks.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, %error, "target connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts a connection whose response has ended back on the stack, unless the target is
    /// gone, the connection is closing, or the stack is full.
    fn give_back(&self, sender: SendRequest<Body>) {
        if self.closed.is_cancelled() || sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for [`POOL_IDLE`] as time passes, and all idle ones when
    /// the target goes away.
    async fn expire(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POOL_IDLE / 4);
        loop {
            tokio::select! {
                _ = self.closed.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.drop_idle_for(POOL_IDLE);
        }
        self.lock().clear();
    }

    /// Closes the connections idle for `limit` or more, and those the target closed.
    fn drop_idle_for(&self, limit: Duration) {
        self.lock()
            .retain(|idle| idle.since.elapsed() < limit && !idle.sender.is_closed());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A target's response body that hands its connection back when it ends. Dropped before
/// its end (the client went away), it takes the connection with it, and hyper closes it.
struct Returning {
    body: Incoming,
    back: Option<(SendRequest<Body>, Arc<Upstream>)>,
}

impl Returning {
    fn release(&mut self) {
        if let Some((sender, upstream)) = self.back.take() {
            upstream.give_back(sender);
        }
    }
}

impl http_body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            // A broken body leaves the connection in no state to reuse.
            Some(Err(_)) => this.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An error and its sources, as one line.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test target treats a connection after each response.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Closes without saying so (its keep-alive timeout, in effect).
        SilentClose,
    }

    /// A target answering `200 ok` to every request; returns its address and how many
    /// connections it accepted.
    async fn target(after: After) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            head.clear();
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                            if let After::SilentClose = after {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    /// Connections to a new test target, and the target's count of accepted connections.
    async fn pool(after: After) -> (Arc<Upstream>, Arc<AtomicUsize>) {
        let (address, accepted) = target(after).await;
        let upstream = Upstream::start(address, CancellationToken::new(), &TaskTracker::new());
        (upstream, accepted)
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "target")
            .body(crate::body::full(bytes::Bytes::new()))
            .unwrap()
    }

    async fn get(upstream: &Arc<Upstream>) -> Result<String, LbError> {
        let response = upstream.send(request()).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_has_ended() {
        let (upstream, accepted) = pool(After::KeepAlive).await;
        for _ in 0..20 {
            assert_eq!(get(&upstream).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two at once need two connections; both are kept and reused afterwards.
        let (a, b) = tokio::join!(get(&upstream), get(&upstream));
        assert_eq!((a.unwrap(), b.unwrap()), ("ok".into(), "ok".into()));
        for _ in 0..5 {
            get(&upstream).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_is_replaced_without_failing_a_request() {
        let (upstream, accepted) = pool(After::SilentClose).await;
        for _ in 0..10 {
            assert_eq!(get(&upstream).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_with_it() {
        let (upstream, accepted) = pool(After::KeepAlive).await;
        drop(upstream.send(request()).await.unwrap());
        assert!(upstream.lock().is_empty());
        assert_eq!(get(&upstream).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A request body that never ends: a client uploading for ever.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_an_answered_upload_does_not_hold_up_the_next_request() {
        // The target answers as soon as it has the head, without reading the body.
        let (upstream, accepted) = pool(After::KeepAlive).await;
        let upload = Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header(http::header::HOST, "target")
            .body(Endless.boxed())
            .unwrap();
        let response = upstream.send(upload).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        // That connection is still busy with the upload; the next request must not wait
        // for it.
        let next = tokio::time::timeout(Duration::from_secs(2), get(&upstream))
            .await
            .expect("the next request went ahead on another connection");
        assert_eq!(next.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = unused.local_addr().unwrap();
        drop(unused);
        let tasks = TaskTracker::new();
        let upstream = Upstream::start(address, CancellationToken::new(), &tasks);
        match get(&upstream).await {
            Err(LbError::TargetConnect(reason)) => assert!(reason.contains(&address.to_string())),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn when_the_target_goes_away_idle_connections_close_and_every_task_ends() {
        let (address, _) = target(After::KeepAlive).await;
        let tasks = TaskTracker::new();
        let closed = CancellationToken::new();
        let upstream = Upstream::start(address, closed.clone(), &tasks);
        let (a, b) = tokio::join!(get(&upstream), get(&upstream));
        assert_eq!((a.unwrap(), b.unwrap()), ("ok".into(), "ok".into()));
        assert_eq!(upstream.lock().len(), 2);
        // A response in flight when the target goes away still ends, then its connection
        // closes instead of going back.
        let in_flight = upstream.send(request()).await.unwrap();
        closed.cancel();
        let body = in_flight.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("connection tasks end once their connections close");
        assert!(upstream.lock().is_empty());
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_pool_idle_time() {
        let (upstream, accepted) = pool(After::KeepAlive).await;
        get(&upstream).await.unwrap();
        upstream.drop_idle_for(POOL_IDLE);
        assert_eq!(upstream.lock().len(), 1, "not idle long enough");
        upstream.drop_idle_for(Duration::ZERO);
        assert!(upstream.lock().is_empty(), "expired");
        get(&upstream).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
