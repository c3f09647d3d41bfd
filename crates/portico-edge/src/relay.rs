//! Copying a forwarded TCP connection both ways, zero-copy, with an idle timeout.
//!
//! Each direction starts a burst with one `recv` into a pooled buffer and one `send`: the
//! cheapest path for request-sized messages (and a short read clears the socket's readiness,
//! so no third call is needed to learn it is drained). A read that fills the buffer marks a
//! bulk transfer, and the rest of the burst moves with `splice(2)`: socket → pipe → socket,
//! so payload never enters user space (HAProxy's `splice-auto` makes the same choice).
//! Buffers and pipes are held only while data is in flight and go back to shared pools
//! between bursts, so an idle connection costs its two sockets and nothing more. When one side finishes
//! sending, the other side's write half is shut down and the copy goes on in the other
//! direction (half-close) until both are done. If neither direction moves a byte for the
//! idle timeout, both sockets are closed, as Global Accelerator closes idle connections.

use rustix::pipe::{PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

/// The most bytes one `splice` call moves; also the pipe size asked for.
const CHUNK: usize = 256 * 1024;

/// The buffer of the copy path; a read that fills it switches the burst to `splice`.
const BUFFER: usize = 16 * 1024;

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
/// for `idle`.
pub async fn relay(
    client: &mut TcpStream,
    endpoint: &mut TcpStream,
    idle: Duration,
) -> io::Result<Relayed> {
    let started = Instant::now();
    let activity = AtomicU64::new(0);
    let (client_r, client_w) = client.split();
    let (endpoint_r, endpoint_w) = endpoint.split();
    let both = async {
        tokio::try_join!(
            pump(client_r, endpoint_w, &activity, started),
            pump(endpoint_r, client_w, &activity, started)
        )
    };
    tokio::select! {
        done = both => {
            let (up, down) = done?;
            Ok(Relayed { up, down, idle: false })
        }
        () = idle_watch(&activity, started, idle) => Ok(Relayed { up: 0, down: 0, idle: true }),
    }
}

/// Returns once no direction has moved a byte for `idle`.
async fn idle_watch(activity: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        if last.elapsed() >= idle {
            return;
        }
        tokio::time::sleep_until(last + idle).await;
    }
}

fn touch(activity: &AtomicU64, started: Instant) {
    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    activity.fetch_max(now, Ordering::Relaxed);
}

/// Moves bytes `from` → `to` until `from` ends, then shuts down `to`'s write half.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    activity: &AtomicU64,
    started: Instant,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        from.as_ref().readable().await?;
        let mut buffer = take_buffer();
        // A short read clears the readiness: the next wait is a real one.
        let read = from.read(&mut buffer).await;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                BUFFERS.give_back(buffer);
                return Err(e);
            }
        };
        if n == 0 {
            BUFFERS.give_back(buffer);
            break;
        }
        let sent = to.write_all(&buffer[..n]).await;
        BUFFERS.give_back(buffer);
        sent?;
        total += n as u64;
        if n == BUFFER {
            // Boxed: only bulk bursts pay for its state, idle connections do not.
            total += Box::pin(splice_burst(from.as_ref(), to.as_ref())).await?;
        }
        touch(activity, started);
    }
    // The peer may already be gone; its own direction reports that.
    let _ = to.shutdown().await;
    Ok(total)
}

/// Splices `from` → `to` until `from` has nothing more to read now; returns the bytes moved.
/// The end of the stream is left for the next read to see.
async fn splice_burst(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = take_pipe()?;
    let mut total = 0u64;
    loop {
        let moved = from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(
                from,
                None,
                &pipe_w,
                None,
                CHUNK,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )
            .map_err(io::Error::from)
        });
        let n = match moved {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                PIPES.give_back((pipe_r, pipe_w));
                return Err(e);
            }
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let sent = to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(
                    &pipe_r,
                    None,
                    to,
                    None,
                    left,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
                .map_err(io::Error::from)
            });
            match sent {
                // A pipe with data left in it is dropped (closed), never pooled.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
    PIPES.give_back((pipe_r, pipe_w));
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    async fn idle_connections_are_closed() {
        let (client_outer, mut client_inner) = pair().await;
        let (mut endpoint_inner, _endpoint_outer) = pair().await;
        let done = relay(
            &mut client_inner,
            &mut endpoint_inner,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(done.idle);
        drop((client_inner, endpoint_inner));
        let mut buf = [0u8; 1];
        let mut client_outer = client_outer;
        assert_eq!(client_outer.read(&mut buf).await.unwrap(), 0, "closed");
    }
}
