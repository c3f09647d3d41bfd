//! TCP listeners: accepting on a static address and forwarding each connection to an
//! endpoint.
//!
//! The endpoint is chosen when the connection arrives, from the listener's current
//! [`Route`] (a reload swaps it; connections already open keep their endpoint). Endpoints
//! are tried best first; one that does not answer within the connect timeout is skipped
//! for the next, so a region that vanished between two health checks costs a connection
//! only that wait. Shutdown: stop accepting, ask open connections to finish (each relay
//! half-closes toward its endpoint, see [`crate::relay`]), let them for the drain time, then
//! cut the rest.

use crate::relay::{Finish, relay};
use crate::route::{Route, RouteCell};
use crate::selection::candidates;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the TCP listeners of one static IP share: the request to their connections to
/// finish, and how many are open. A node hands over one static IP at a time, so each has
/// its own.
#[derive(Debug, Default)]
pub struct Connections {
    /// The request the connections accepted now hold; a fired one is replaced by
    /// [`Connections::resume`], so that later connections run on.
    finish: Mutex<Finish>,
    open: AtomicUsize,
}

impl Connections {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Asks every open connection to finish gracefully.
    pub fn finish(&self) {
        self.current().fire();
    }

    /// Connections accepted from now on are not asked to finish.
    pub fn resume(&self) {
        let mut finish = self.finish.lock().unwrap_or_else(|e| e.into_inner());
        if finish.fired() {
            *finish = Finish::default();
        }
    }

    fn current(&self) -> Finish {
        self.finish
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counts a connection open while it lives, with the finish request it answers to.
struct Open {
    connections: Arc<Connections>,
    finish: Finish,
}

impl Open {
    fn new(connections: &Arc<Connections>) -> Self {
        connections.open.fetch_add(1, Ordering::Relaxed);
        Self {
            connections: connections.clone(),
            finish: connections.current(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Forwards connections accepted on `listener` that pass `admission` until `shutdown`
/// fires.
pub async fn serve(
    listener: TcpListener,
    route: RouteCell,
    (limits, admission): (portico_accept::Limits, portico_accept::Admission),
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) {
    let limits = (limits, &admission);
    let drained = portico_accept::serve(listener, &shutdown, limits, |stream, client| {
        forward(stream, client, route.current(), Open::new(&connections))
    })
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(
            cut_short = drained.cut_short,
            "edge drain timeout: open connections were cut"
        );
    }
}

async fn forward(mut inbound: TcpStream, client: SocketAddr, route: Arc<Route>, open: Open) {
    let Ok(local) = inbound.local_addr() else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let Some(mut outbound) = connect(client, local, &route).await else {
        tracing::warn!(%client, %local, "no endpoint reachable; connection closed");
        return;
    };
    match relay(
        &mut inbound,
        &mut outbound,
        route.idle_timeout,
        &open.finish,
    )
    .await
    {
        Ok(done) if done.idle => tracing::debug!(%client, "idle timeout: connection closed"),
        Ok(done) => tracing::debug!(%client, up = done.up, down = done.down, "connection done"),
        Err(error) => tracing::debug!(%client, %error, "connection ended with an error"),
    }
}

/// Connects to the best reachable endpoint and sends the PROXY header if it wants one.
async fn connect(client: SocketAddr, local: SocketAddr, route: &Route) -> Option<TcpStream> {
    for (endpoint, address) in candidates(&route.groups, client, local.port(), route.affinity) {
        let stream =
            match tokio::time::timeout(route.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(endpoint = %address, %error, "endpoint connect failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(endpoint = %address, "endpoint connect timed out");
                    continue;
                }
            };
        let mut stream = stream;
        let _ = stream.set_nodelay(true);
        if endpoint.proxy_protocol && !send_proxy_header(&mut stream, client, local).await {
            continue;
        }
        endpoint.count_connection();
        return Some(stream);
    }
    None
}

async fn send_proxy_header(stream: &mut TcpStream, client: SocketAddr, local: SocketAddr) -> bool {
    let Ok(header) = portico_proxy_protocol::encode_header(client, local) else {
        return false;
    };
    stream.write_all(&header).await.is_ok()
}

/// The connect timeout for endpoints checked every `interval`: the health check's own
/// timeout, so a dead endpoint costs no more than a check does; at least 100 ms.
pub fn connect_timeout(check_timeout: Duration) -> Duration {
    check_timeout.max(Duration::from_millis(100))
}
