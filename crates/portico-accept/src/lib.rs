//! The accept loop every portico listener shares.
//!
//! Accept errors (out of file descriptors and the like) back off instead of spinning or
//! ending the loop. Each connection runs in a tracked task. When `shutdown` fires the
//! listener closes, open connections get `drain` to finish on their own (each handler sees
//! the same `shutdown` token and can finish gracefully), and whatever is still open after
//! that is cut. When this function returns, no connection task of the listener is left.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after a failed accept, so that a full file table does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What happened at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the drain deadline, and cut.
    pub cut_short: usize,
}

/// Runs `handle` for every connection accepted on `listener` until `shutdown` fires, then
/// drains for at most `drain` and cuts the rest.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    drain: Duration,
    mut handle: F,
) -> Drained
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let connection = handle(stream, peer);
                let cut = cut.clone();
                connections.spawn(async move {
                    tokio::select! {
                        _ = connection => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    connections.close();
    let mut cut_short = 0;
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        cut_short = connections.len();
        cut.cancel();
        connections.wait().await;
    }
    Drained { cut_short }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn serves_until_shutdown_then_refuses() {
        let (listener, addr) = bound().await;
        let shutdown = CancellationToken::new();
        let server = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                serve(
                    listener,
                    &shutdown,
                    Duration::from_secs(1),
                    |mut s, _| async move {
                        let _ = s.write_all(b"hi").await;
                    },
                )
                .await
            })
        };
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Drained { cut_short: 0 });
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn connections_that_outlive_the_drain_are_cut() {
        let (listener, addr) = bound().await;
        let shutdown = CancellationToken::new();
        let server = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                serve(listener, &shutdown, Duration::from_millis(50), |_, _| {
                    std::future::pending::<()>()
                })
                .await
            })
        };
        let _held = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Drained { cut_short: 1 });
    }
}
