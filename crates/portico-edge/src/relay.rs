//! Copying a forwarded TCP connection both ways, zero-copy, with an idle timeout.
//!
//! Each direction starts a burst with one `recv` into a pooled buffer and one `send`: the
//! cheapest path for request-sized messages (and a short read clears the socket's readiness,
//! so no third call is needed to learn it is drained). A read that fills the buffer marks a
//! bulk transfer, and the rest of the burst moves with `splice(2)`: socket → pipe → socket,
//! so payload never enters user space (HAProxy's `splice-auto` makes the same choice).
//! Buffers and pipes are held only while data is in flight and go back to shared pools
//! between bursts, so an idle connection costs its two sockets and its small state. When one
//! side finishes sending, the other side's write half is shut down and the copy goes on in
//! the other direction (half-close) until both are done. If neither direction moves a byte
//! for the idle timeout, both sockets are closed, as Global Accelerator closes idle
//! connections.
//!
//! The relay is one hand-written future polling both directions: a held connection is a few
//! hundred bytes of state, and a message costs its two system calls and no clock read.
//!
//! A relay can be asked to finish ([`Finish`]): the client's direction then sends what has
//! arrived (and, on a connection that has sent nothing yet, its first bytes) and shuts the
//! endpoint's write half, as if the client had half-closed. An HTTP server takes that as "no more requests": it finishes the
//! response in progress, if any, and closes, so a connection ends at a request boundary
//! instead of being cut. Like the accept loop's drain cut, one shared flag says when to look,
//! so the relay polls the token only when it fired. The
//! idle timeout is kept in eighths: a timer ticks every `idle / 8`, and a connection is
//! closed at the ninth tick after its last byte (the first of them partial): between `idle`
//! and `9/8 × idle` after it.

use rustix::pipe::{PipeFlags, SpliceFlags};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The request to every relay that holds it to finish gracefully (see the module
/// documentation).
#[derive(Debug, Clone, Default)]
pub struct Finish {
    token: CancellationToken,
    /// Set before `token` fires: relays look at it on each wake-up instead of polling the
    /// token, which takes a lock.
    finishing: Arc<AtomicBool>,
}

impl Finish {
    /// Asks every relay holding this to finish.
    pub fn fire(&self) {
        self.finishing.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        self.finishing.load(Ordering::Acquire)
    }
}

/// The most bytes one `splice` call moves; also the pipe size asked for.
const CHUNK: usize = 256 * 1024;

/// The buffer of the copy path; a read that fills it switches the burst to `splice`.
const BUFFER: usize = 16 * 1024;

/// A tick is `idle / IDLE_TICKS`; more quiet ticks in a row than this make a connection idle.
const IDLE_TICKS: u32 = 8;

/// Things kept for reuse between bursts: at most `max`, beyond that dropped.
struct Pool<T> {
    items: Mutex<Vec<T>>,
    max: usize,
}

impl<T> Pool<T> {
    const fn new(max: usize) -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            max,
        }
    }

    fn take(&self) -> Option<T> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() < self.max {
            items.push(item);
        }
    }
}

/// A pipe: read end, write end. Only empty pipes are pooled.
type Pipe = (OwnedFd, OwnedFd);

static BUFFERS: Pool<Vec<u8>> = Pool::new(256);
static PIPES: Pool<Pipe> = Pool::new(256);

fn take_buffer() -> Vec<u8> {
    BUFFERS.take().unwrap_or_else(|| vec![0; BUFFER])
}

/// An empty pipe: from the pool, or new.
fn take_pipe() -> io::Result<Pipe> {
    if let Some(pipe) = PIPES.take() {
        return Ok(pipe);
    }
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // A bigger pipe moves more per call; the default (64 KiB) is fine if refused.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, CHUNK);
    Ok((r, w))
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the client to the endpoint.
    pub up: u64,
    /// Bytes from the endpoint to the client.
    pub down: u64,
    /// Closed by the idle timeout.
    pub idle: bool,
}

/// Copies `client` ↔ `endpoint` until both directions finish, one fails, or nothing moves
/// for `idle`; when `finish` fires, the client's direction ends (see the module
/// documentation).
pub async fn relay(
    client: &mut TcpStream,
    endpoint: &mut TcpStream,
    idle: Duration,
    finish: &Finish,
) -> io::Result<Relayed> {
    let (client_r, client_w) = client.split();
    let (endpoint_r, endpoint_w) = endpoint.split();
    let tick = (idle / IDLE_TICKS).max(Duration::from_millis(1));
    let mut up = Pump::new(client_r, endpoint_w);
    up.finishing = finish.fired();
    Relay {
        up,
        down: Pump::new(endpoint_r, client_w),
        tick,
        timer: Box::pin(tokio::time::sleep(tick)),
        quiet_ticks: 0,
        finish: finish.token.clone().cancelled_owned(),
        finishing: finish.finishing.clone(),
        watching: false,
    }
    .await
}

pin_project_lite::pin_project! {
    /// Both directions of one connection and its idle clock.
    struct Relay<'a> {
        up: Pump<'a>,
        down: Pump<'a>,
        tick: Duration,
        // Fires every `tick`; boxed so that the relay can be moved and polled by `&mut`.
        timer: Pin<Box<Sleep>>,
        // Ticks since a byte last moved (the first of them partial).
        quiet_ticks: u32,
        // Polled once to register this task's waker, then again only once `finishing` is
        // set.
        #[pin]
        finish: WaitForCancellationFutureOwned,
        finishing: Arc<AtomicBool>,
        watching: bool,
    }
}

impl Future for Relay<'_> {
    type Output = io::Result<Relayed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !this.up.finishing && (!*this.watching || this.finishing.load(Ordering::Acquire)) {
            *this.watching = true;
            if this.finish.poll(cx).is_ready() {
                this.up.finishing = true;
            }
        }
        let up = this.up.poll(cx)?;
        let down = this.down.poll(cx)?;
        if let (Poll::Ready(up), Poll::Ready(down)) = (up, down) {
            return Poll::Ready(Ok(Relayed {
                up,
                down,
                idle: false,
            }));
        }
        if this.up.moved || this.down.moved {
            this.up.moved = false;
            this.down.moved = false;
            *this.quiet_ticks = 0;
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            *this.quiet_ticks += 1;
            if *this.quiet_ticks > IDLE_TICKS {
                return Poll::Ready(Ok(Relayed {
                    up: 0,
                    down: 0,
                    idle: true,
                }));
            }
            let next = Instant::now() + *this.tick;
            this.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// One direction: bytes `from` → `to` until `from` ends, then `to`'s write half shut down.
struct Pump<'a> {
    from: ReadHalf<'a>,
    to: WriteHalf<'a>,
    state: Stage,
    /// Bytes delivered so far.
    total: u64,
    /// Whether a byte moved since the relay last looked.
    moved: bool,
    /// Take no more from `from`: once what is held is sent, shut `to`'s write half.
    finishing: bool,
}

/// Where a [`Pump`] is.
enum Stage {
    /// Waiting for something to read; holds nothing.
    Idle,
    /// Sending `buffer[sent..len]`, read in one `recv`.
    Sending {
        buffer: Vec<u8>,
        sent: usize,
        len: usize,
    },
    /// A bulk burst: `pending` bytes in `pipe` still to splice out.
    Splicing { pipe: Pipe, pending: usize },
    /// `from` ended: shutting down `to`'s write half.
    Closing,
    /// Finished.
    Done,
}

impl<'a> Pump<'a> {
    fn new(from: ReadHalf<'a>, to: WriteHalf<'a>) -> Self {
        Self {
            from,
            to,
            state: Stage::Idle,
            total: 0,
            moved: false,
            finishing: false,
        }
    }

    /// Moves what can be moved now; `Ready` with the total once the direction is done.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        loop {
            match &mut self.state {
                Stage::Idle => {
                    // Finishing: what has arrived is still sent, then the direction ends.
                    // A connection that has sent nothing yet is let send its first bytes.
                    let finish_now = self.finishing && self.total > 0;
                    // No buffer is taken until there is something to read.
                    if !finish_now {
                        ready!(self.from.as_ref().poll_read_ready(cx))?;
                    }
                    let mut buffer = take_buffer();
                    let mut read = ReadBuf::new(&mut buffer);
                    // A short read clears the readiness: the next wait is a real one.
                    match Pin::new(&mut self.from).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) => {
                            let len = read.filled().len();
                            if len == 0 {
                                BUFFERS.give_back(buffer);
                                self.state = Stage::Closing;
                            } else {
                                self.state = Stage::Sending {
                                    buffer,
                                    sent: 0,
                                    len,
                                };
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            BUFFERS.give_back(buffer);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            BUFFERS.give_back(buffer);
                            if finish_now {
                                self.state = Stage::Closing;
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Stage::Sending { buffer, sent, len } => {
                    while *sent < *len {
                        match ready!(Pin::new(&mut self.to).poll_write(cx, &buffer[*sent..*len])) {
                            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            Ok(n) => *sent += n,
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    }
                    let len = *len;
                    if let Stage::Sending { buffer, .. } =
                        std::mem::replace(&mut self.state, Stage::Idle)
                    {
                        BUFFERS.give_back(buffer);
                    }
                    self.total += len as u64;
                    self.moved = true;
                    if len == BUFFER {
                        self.state = Stage::Splicing {
                            pipe: take_pipe()?,
                            pending: 0,
                        };
                    }
                }
                Stage::Splicing { pipe, pending } => {
                    let (pipe_r, pipe_w) = (&pipe.0, &pipe.1);
                    if *pending > 0 {
                        // A pipe with data left in it is dropped (closed), never pooled.
                        let to = self.to.as_ref();
                        ready!(to.poll_write_ready(cx))?;
                        let left = *pending;
                        match to.try_io(Interest::WRITABLE, || splice(pipe_r, to, left)) {
                            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            Ok(n) => {
                                *pending -= n;
                                self.total += n as u64;
                                self.moved = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                        continue;
                    }
                    // The pipe is empty: the burst goes on while `from` has more now. The
                    // end of the stream is left for the next read to see.
                    let from = self.from.as_ref();
                    match from.try_io(Interest::READABLE, || splice(from, pipe_w, CHUNK)) {
                        Ok(n) if n > 0 => *pending = n,
                        Ok(_) => self.end_burst(),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.end_burst(),
                        Err(e) => {
                            self.end_burst();
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Stage::Closing => {
                    // The peer may already be gone; its own direction reports that.
                    let _ = ready!(Pin::new(&mut self.to).poll_shutdown(cx));
                    self.state = Stage::Done;
                }
                Stage::Done => return Poll::Ready(Ok(self.total)),
            }
        }
    }

    /// Ends a bulk burst with its pipe empty: the pipe goes back to the pool.
    fn end_burst(&mut self) {
        if let Stage::Splicing { pipe, .. } = std::mem::replace(&mut self.state, Stage::Idle) {
            PIPES.give_back(pipe);
        }
    }
}

/// One non-blocking `splice` of at most `len` bytes.
fn splice(
    from: impl std::os::fd::AsFd,
    to: impl std::os::fd::AsFd,
    len: usize,
) -> io::Result<usize> {
    rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        (accepted.unwrap().0, connected.unwrap())
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (client_outer, client_inner) = pair().await;
        let (endpoint_inner, endpoint_outer) = pair().await;
        let (mut client_inner, mut endpoint_inner) = (client_inner, endpoint_inner);
        let relay = tokio::spawn(async move {
            relay(
                &mut client_inner,
                &mut endpoint_inner,
                Duration::from_secs(10),
                &Finish::default(),
            )
            .await
        });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut cr, mut cw) = client_outer.into_split();
        let (mut er, mut ew) = endpoint_outer.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&sent).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        er.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, payload, "upstream bytes arrive in order, then EOF");
        ew.write_all(b"reply after the client finished")
            .await
            .unwrap();
        ew.shutdown().await.unwrap();
        let mut reply = Vec::new();
        cr.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after the client finished");
        let done = relay.await.unwrap().unwrap();
        assert_eq!((done.up, done.down, done.idle), (3_000_000, 31, false));
    }

    #[tokio::test]
    async fn traffic_keeps_a_connection_open_and_it_closes_one_idle_timeout_after() {
        let (mut client_outer, mut client_inner) = pair().await;
        let (mut endpoint_inner, mut endpoint_outer) = pair().await;
        let idle = Duration::from_millis(400);
        let relay = tokio::spawn(async move {
            let done = relay(
                &mut client_inner,
                &mut endpoint_inner,
                idle,
                &Finish::default(),
            )
            .await;
            (done, Instant::now())
        });
        // Traffic every 150 ms for 1.2 s (three idle timeouts) keeps it open.
        let mut byte = [0u8; 1];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client_outer.write_all(b"x").await.unwrap();
            endpoint_outer.read_exact(&mut byte).await.unwrap();
        }
        assert!(!relay.is_finished(), "open while traffic flows");
        let last = Instant::now();
        let (done, closed) = relay.await.unwrap();
        assert!(done.unwrap().idle);
        let quiet = closed - last;
        assert!(
            quiet >= idle && quiet < idle * 9 / 8 + Duration::from_millis(200),
            "closed {quiet:?} after the last byte, idle timeout {idle:?}"
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let (client_outer, mut client_inner) = pair().await;
        let (mut endpoint_inner, _endpoint_outer) = pair().await;
        let done = relay(
            &mut client_inner,
            &mut endpoint_inner,
            Duration::from_millis(200),
            &Finish::default(),
        )
        .await
        .unwrap();
        assert!(done.idle);
        drop((client_inner, endpoint_inner));
        let mut buf = [0u8; 1];
        let mut client_outer = client_outer;
        assert_eq!(client_outer.read(&mut buf).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn finishing_half_closes_toward_the_endpoint_and_the_reply_still_comes_back() {
        let (mut client_outer, mut client_inner) = pair().await;
        let (mut endpoint_inner, mut endpoint_outer) = pair().await;
        let finish = Finish::default();
        let first = {
            let finish = finish.clone();
            tokio::spawn(async move {
                relay(
                    &mut client_inner,
                    &mut endpoint_inner,
                    Duration::from_secs(10),
                    &finish,
                )
                .await
            })
        };
        client_outer.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        endpoint_outer.read_exact(&mut got).await.unwrap();
        finish.fire();
        // The endpoint reads the end of the client's side, answers, and closes.
        let mut rest = Vec::new();
        endpoint_outer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        endpoint_outer.write_all(b"response").await.unwrap();
        endpoint_outer.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_outer.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"response");
        let done = first.await.unwrap().unwrap();
        assert_eq!((done.up, done.down, done.idle), (7, 8, false));
        // A relay started after the finish ends the client's side at once.
        let (_client_outer, mut client_inner) = pair().await;
        let (mut endpoint_inner, mut endpoint_outer) = pair().await;
        let late = tokio::spawn(async move {
            relay(
                &mut client_inner,
                &mut endpoint_inner,
                Duration::from_secs(10),
                &finish,
            )
            .await
        });
        let mut rest = Vec::new();
        endpoint_outer.read_to_end(&mut rest).await.unwrap();
        endpoint_outer.shutdown().await.unwrap();
        assert_eq!(late.await.unwrap().unwrap().up, 0);
    }
}
