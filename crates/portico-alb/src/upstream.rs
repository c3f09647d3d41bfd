//! Keep-alive HTTP/1.1 connections to one target, reused request after request.
//!
//! Each target keeps a short stack of idle connections (the most recently used on top, so
//! the warmest is reused and the coldest age out). A connection goes back on the stack when
//! its response body has ended, if it can carry another request (see `portico-h1`); one
//! whose response was cut off, whose request was not sent in full (a target answering an
//! upload early), or that the target marked for closing, is closed instead.
//!
//! A connection the target closed while it sat idle is seen at checkout and dropped. A
//! request written to a reused connection that the target closed just then (its keep-alive
//! timeout racing ours) is sent again on the next connection when that is safe: nothing
//! came back, the request is still whole in its buffer, and it was not written at all or
//! its method is idempotent.
//!
//! Connections have no task: idle ones are sockets on the stack, busy ones belong to the
//! response body being read. Idle connections are dropped after [`POOL_IDLE`], and all of
//! them when `closed` fires (the target is deregistered or portico shuts down); connections
//! busy at that moment finish their response first.

use crate::body::{Body, BodyError};
use crate::error::LbError;
use http::{Request, Response};
use http_body_util::BodyExt;
use portico_h1::{Connection, Outgoing, Recycle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection to a target may take to open (ALB: 10 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection to a target is kept.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);

/// Most idle connections kept per target; more are closed when their response ends.
const MAX_IDLE: usize = 1024;

/// An idle connection and when it became idle.
struct Idle {
    conn: Connection,
    since: Instant,
}

/// The connections to one target.
pub(crate) struct Upstream {
    address: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Fired when the target goes away: idle connections close, busy ones after their
    /// response.
    closed: CancellationToken,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("address", &self.address)
            .field("idle", &self.lock().len())
            .finish()
    }
}

/// Hands connections whose response has ended back to their target's stack.
struct Home(Arc<Upstream>);

impl Recycle for Home {
    fn recycle(self, conn: Connection) {
        self.0.give_back(conn);
    }
}

impl Upstream {
    /// Connections to `address`, kept until `closed` fires; `tasks` owns the task that
    /// closes idle connections after [`POOL_IDLE`].
    pub(crate) fn start(
        address: SocketAddr,
        closed: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let upstream = Arc::new(Self {
            address,
            idle: Mutex::new(Vec::new()),
            closed,
        });
        tasks.spawn(upstream.clone().expire());
        upstream
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one, and
    /// returns the response head; its body hands the connection back when it ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<Body>, LbError> {
        let (parts, body) = req.into_parts();
        let mut request = Outgoing::new(parts, body);
        loop {
            let (conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let failure = match conn.send(request, Home(self.clone())).await {
                Ok(response) => return Ok(response.map(target_body)),
                Err(failure) => failure,
            };
            let error = if reused {
                match failure.into_retry() {
                    Ok(again) => {
                        request = again;
                        continue;
                    }
                    Err(error) => error,
                }
            } else {
                failure.error
            };
            return Err(LbError::TargetFailed(source_chain(&error)));
        }
    }

    /// The most recently idle connection that the target has not closed.
    fn checkout(&self) -> Option<Connection> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if since.elapsed() < POOL_IDLE && !conn.is_stale() {
                return Some(conn);
            }
        }
    }

    /// A new connection.
    async fn connect(&self) -> Result<Connection, LbError> {
        let address = self.address;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(LbError::TargetConnect(format!("{address}: {error}")));
            }
            Err(_) => {
                return Err(LbError::TargetConnectTimeout {
                    target: address,
                    timeout: CONNECT_TIMEOUT,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection::new(stream))
    }

    /// Puts a connection whose response has ended back on the stack, unless the target is
    /// gone or the stack is full.
    fn give_back(&self, conn: Connection) {
        if self.closed.is_cancelled() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
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
            .retain_mut(|idle| idle.since.elapsed() < limit && !idle.conn.is_stale());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A target's response body as a [`Body`].
fn target_body(body: portico_h1::ResponseBody<Body, Home>) -> Body {
    body.map_err(BodyError::Target).boxed()
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
    use http_body::Frame;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
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
        type Error = BodyError;

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

    /// What the scripted target does with a request.
    enum Reply {
        /// Writes these bytes and reads the next request.
        Answer(Vec<u8>),
        /// Writes these bytes and closes the connection.
        AnswerAndClose(Vec<u8>),
        /// Closes the connection unanswered.
        Drop,
    }

    fn answer(bytes: &[u8]) -> Reply {
        Reply::Answer(bytes.to_vec())
    }

    /// A target that answers each request it reads with `reply(index)`, where `index`
    /// counts requests over all connections. Returns its address and the requests it read
    /// (head and body, as they came on the wire).
    async fn scripted(reply: fn(usize) -> Reply) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut wire = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Some(length) = whole_request(&wire) {
                            let request: Vec<u8> = wire.drain(..length).collect();
                            let index = {
                                let mut log = log.lock().unwrap();
                                log.push(request.clone());
                                log.len() - 1
                            };
                            let (bytes, close) = match reply(index) {
                                Reply::Answer(bytes) => (bytes, false),
                                Reply::AnswerAndClose(bytes) => (bytes, true),
                                Reply::Drop => return,
                            };
                            if stream.write_all(&bytes).await.is_err() || close {
                                return;
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => wire.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (address, seen)
    }

    /// The length of the whole request at the front of `wire` (head and a
    /// `Content-Length` or chunked body), if it is all there.
    fn whole_request(wire: &[u8]) -> Option<usize> {
        let head_end = wire.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&wire[..head_end]).to_ascii_lowercase();
        if head.contains("transfer-encoding: chunked") {
            let end = wire[head_end..]
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")?;
            return Some(head_end + end + 5);
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        (wire.len() >= head_end + length).then_some(head_end + length)
    }

    fn upstream_to(address: SocketAddr) -> Arc<Upstream> {
        Upstream::start(address, CancellationToken::new(), &TaskTracker::new())
    }

    fn with_method(method: http::Method, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/p?q=1")
            .header(http::header::HOST, "target")
            .body(body)
            .unwrap()
    }

    async fn text(response: Response<Body>) -> Result<String, BodyError> {
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_chunked_response_is_decoded_and_its_connection_reused() {
        let (address, seen) = scripted(|_| {
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-t: 1\r\n\r\n")
        })
        .await;
        let upstream = upstream_to(address);
        for _ in 0..3 {
            let response = upstream.send(request()).await.unwrap();
            assert_eq!(text(response).await.unwrap(), "abcde");
        }
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(
            upstream.lock().len(),
            1,
            "one connection, back on the stack"
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_goes_chunked_and_a_known_one_with_its_length() {
        let (address, seen) =
            scripted(|_| answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        let upstream = upstream_to(address);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = Channel(rx).boxed();
        let sending = tokio::spawn(async move {
            for piece in ["hel", "lo"] {
                tx.send(bytes::Bytes::from(piece)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let response = upstream
            .send(with_method(http::Method::POST, stream))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sending.await.unwrap();
        let sized = crate::body::full(bytes::Bytes::from_static(b"hello"));
        upstream
            .send(with_method(http::Method::PUT, sized))
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        let chunked = String::from_utf8_lossy(&seen[0]);
        assert!(chunked.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{chunked}");
        assert!(
            chunked.contains("transfer-encoding: chunked\r\n"),
            "{chunked}"
        );
        assert!(
            chunked.ends_with("\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
            "{chunked}"
        );
        let sized = String::from_utf8_lossy(&seen[1]);
        assert!(
            sized.contains("content-length: 5\r\n") && sized.ends_with("\r\n\r\nhello"),
            "{sized}"
        );
    }

    /// A request body of unknown length, sent piece by piece over a channel.
    struct Channel(tokio::sync::mpsc::Receiver<bytes::Bytes>);

    impl http_body::Body for Channel {
        type Data = bytes::Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|piece| piece.map(|p| Ok(Frame::data(p))))
        }
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length_says() {
        let (address, seen) =
            scripted(|_| answer(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")).await;
        let upstream = upstream_to(address);
        let empty = || crate::body::full(bytes::Bytes::new());
        let response = upstream
            .send(with_method(http::Method::HEAD, empty()))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "42");
        assert_eq!(text(response).await.unwrap(), "");
        upstream
            .send(with_method(http::Method::HEAD, empty()))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(upstream.lock().len(), 1, "the connection was reused");
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_response_head_is_a_target_failure() {
        let (address, _) = scripted(|index| match index {
            0 => answer(b"HTTP/1.1 OK\r\n\r\n"),
            _ => Reply::Answer(
                format!(
                    "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                    "a".repeat(40 * 1024)
                )
                .into_bytes(),
            ),
        })
        .await;
        let upstream = upstream_to(address);
        for expected in ["malformed response head", "larger than 32768 bytes"] {
            match upstream.send(request()).await {
                Err(LbError::TargetFailed(reason)) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("expected a target failure, got {other:?}"),
            }
        }
        assert!(upstream.lock().is_empty());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_not_reused() {
        let (address, seen) = scripted(|index| match index {
            0 => answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            _ => answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        })
        .await;
        let upstream = upstream_to(address);
        let response = upstream.send(request()).await.unwrap();
        // The target keeps the connection open; a read timeout stands in for the
        // client giving up, and the connection goes with the response.
        let cut = tokio::time::timeout(Duration::from_millis(200), text(response)).await;
        assert!(cut.is_err(), "the body never ends");
        assert!(upstream.lock().is_empty());
        assert_eq!(get(&upstream).await.unwrap(), "ok");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_target_closing_in_the_middle_of_a_body_fails_the_body() {
        let (address, _) = scripted(|_| {
            Reply::AnswerAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
        })
        .await;
        let upstream = upstream_to(address);
        let response = upstream.send(request()).await.unwrap();
        let error = text(response).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("in the middle of its response body"),
            "{error}"
        );
        assert!(upstream.lock().is_empty());
    }

    #[tokio::test]
    async fn a_request_the_target_dropped_is_sent_again_only_when_that_is_safe() {
        // Every request but the first is read and dropped with its connection, unanswered:
        // a target whose keep-alive timeout fired just as the request came.
        let (address, seen) = scripted(|index| match index {
            0 | 2 => answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            _ => Reply::Drop,
        })
        .await;
        let upstream = upstream_to(address);
        assert_eq!(get(&upstream).await.unwrap(), "ok");
        // A GET on the reused connection is dropped (request 1), then sent again on a new
        // one (request 2).
        assert_eq!(get(&upstream).await.unwrap(), "ok");
        assert_eq!(seen.lock().unwrap().len(), 3);
        // A POST on the reused connection is dropped (request 3): it may have been acted
        // on, so it is not sent twice.
        let post = with_method(
            http::Method::POST,
            crate::body::full(bytes::Bytes::from_static(b"x")),
        );
        match upstream.send(post).await {
            Err(LbError::TargetFailed(reason)) => assert!(reason.contains("closed"), "{reason}"),
            other => panic!("expected a target failure, got {other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 4);
    }
}
