//! UDP listeners: datagrams grouped into flows by client address, each flow forwarded to
//! one endpoint.
//!
//! The first datagram from a client address opens a flow: an endpoint is chosen as for a
//! TCP connection, and a socket connected to it carries the client's datagrams there and
//! the endpoint's answers back, sent from the static address the client used. A flow with no
//! datagram either way for the idle timeout (Global Accelerator: 30 s) is closed; the
//! client's next datagram opens a new one. A flow whose endpoint has turned unhealthy moves
//! to a healthy one with its next datagram. The flow table is bounded: beyond
//! [`MAX_FLOWS`] datagrams of new clients are dropped and counted; so are those of a new
//! flow that the admission refuses (each flow's socket is one descriptor from the
//! process's budget, and counts against its client's limit).

use crate::endpoint::Endpoint;
use crate::route::RouteCell;
use crate::selection::candidates;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most flows one listening socket keeps.
pub const MAX_FLOWS: usize = 65_536;

/// The largest UDP payload.
const DATAGRAM: usize = 65_535;

/// One client's flow.
#[derive(Debug)]
struct Flow {
    socket: Arc<UdpSocket>,
    endpoint: Arc<Endpoint>,
    /// Milliseconds after the listener started of the last datagram either way.
    last: AtomicU64,
    closed: AtomicBool,
    stop: CancellationToken,
    /// Its descriptor and its place in its client's limit, given back when it ends.
    _admitted: portico_accept::Admitted,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Forwards datagrams received on `socket` until `shutdown` fires; a new flow must pass
/// `admission`.
pub async fn serve(
    socket: UdpSocket,
    (route, admission): (RouteCell, portico_accept::Admission),
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let started = Instant::now();
    let flows: Flows = Arc::default();
    let mut dropped = 0u64;
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(error) => {
                    // ICMP errors of earlier sends surface here; the socket still works.
                    tracing::debug!(%local, %error, "udp receive error");
                    continue;
                }
            },
        };
        let at = (&route, &admission);
        let Some(flow) = flow_for(client, local, at, &socket, &flows, started, &shutdown).await
        else {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!(%local, %client, dropped, "udp datagram dropped: no flow");
            }
            continue;
        };
        touch(&flow.last, started);
        if let Err(error) = flow.socket.send(&buf[..n]).await {
            tracing::debug!(%client, endpoint = ?flow.socket.peer_addr().ok(), %error, "udp send to endpoint failed");
        }
    }
    let flows = std::mem::take(&mut *lock(&flows));
    for flow in flows.values() {
        flow.stop.cancel();
    }
}

fn touch(last: &AtomicU64, started: Instant) {
    let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    last.fetch_max(now, Ordering::Relaxed);
}

fn lock(flows: &Flows) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
    flows.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client's open flow, or a new one; `None` when no endpoint can take it or the table
/// is full.
async fn flow_for(
    client: SocketAddr,
    local: SocketAddr,
    (route, admission): (&RouteCell, &portico_accept::Admission),
    listener: &Arc<UdpSocket>,
    flows: &Flows,
    started: Instant,
    shutdown: &CancellationToken,
) -> Option<Arc<Flow>> {
    let existing = lock(flows).get(&client).cloned();
    if let Some(flow) = existing {
        let open = !flow.closed.load(Ordering::Relaxed);
        // The route is read only for a flow that may have to move: not per datagram.
        let can_move = !flow.endpoint.is_healthy()
            && route
                .current()
                .groups
                .iter()
                .any(|g| g.available().next().is_some());
        if open && !can_move {
            return Some(flow);
        }
        flow.stop.cancel();
    }
    if lock(flows).len() >= MAX_FLOWS {
        return None;
    }
    let mut admitted = Some(admission.admit(client.ip()).ok()?);
    let route = route.current();
    for (endpoint, address) in candidates(&route.groups, client, local.port(), route.affinity) {
        let unspecified: IpAddr = match address {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let Ok(socket) = UdpSocket::bind((unspecified, 0)).await else {
            continue;
        };
        if socket.connect(address).await.is_err() {
            continue;
        }
        endpoint.count_connection();
        let admitted = admitted.take()?;
        let flow = Arc::new(Flow {
            socket: Arc::new(socket),
            endpoint,
            last: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stop: shutdown.child_token(),
            _admitted: admitted,
        });
        touch(&flow.last, started);
        lock(flows).insert(client, flow.clone());
        tokio::spawn(answers(
            flow.clone(),
            client,
            listener.clone(),
            flows.clone(),
            started,
            route.idle_timeout,
        ));
        return Some(flow);
    }
    None
}

/// Sends the endpoint's datagrams back to `client` until the flow is idle or stopped.
async fn answers(
    flow: Arc<Flow>,
    client: SocketAddr,
    listener: Arc<UdpSocket>,
    flows: Flows,
    started: Instant,
    idle: std::time::Duration,
) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let last = started + std::time::Duration::from_millis(flow.last.load(Ordering::Relaxed));
        if last.elapsed() >= idle {
            tracing::debug!(%client, "udp flow idle: closed");
            break;
        }
        tokio::select! {
            () = flow.stop.cancelled() => break,
            () = tokio::time::sleep_until(last + idle) => continue,
            received = flow.socket.recv(&mut buf) => match received {
                Ok(n) => {
                    touch(&flow.last, started);
                    let _ = listener.send_to(&buf[..n], client).await;
                }
                // An ICMP "port unreachable" from the endpoint: it may come back.
                Err(error) => tracing::debug!(%client, %error, "udp receive from endpoint failed"),
            },
        }
    }
    flow.closed.store(true, Ordering::Relaxed);
    let mut table = lock(&flows);
    if table.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
        table.remove(&client);
    }
}
