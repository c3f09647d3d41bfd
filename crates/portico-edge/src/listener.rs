//! Accepting on a static address and forwarding each connection to an endpoint.
//!
//! Bytes are copied both ways; when one side finishes sending, the other side's write half
//! is shut down and the copy goes on in the other direction (half-close), until both are
//! done. Shutdown: stop accepting, let open connections finish for the drain time, then cut
//! the rest.

use crate::endpoint::EndpointGroup;
use crate::selection::{Affinity, candidates};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the edge forwards to.
#[derive(Debug)]
pub struct Edge {
    /// Endpoint groups in order of preference.
    pub groups: Vec<EndpointGroup>,
    /// Client affinity of the listener.
    pub affinity: Affinity,
    /// Connection cap and drain time of each static address.
    pub limits: portico_accept::Limits,
}

/// Forwards connections accepted on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>, shutdown: CancellationToken) {
    let drained = portico_accept::serve(listener, &shutdown, edge.limits, |stream, client| {
        let edge = edge.clone();
        async move { forward(stream, client, &edge).await }
    })
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(
            cut_short = drained.cut_short,
            "edge drain timeout: open connections were cut"
        );
    }
}

async fn forward(mut inbound: TcpStream, client: SocketAddr, edge: &Edge) {
    let Ok(local) = inbound.local_addr() else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let Some(mut outbound) = connect(client, local, edge).await else {
        tracing::warn!(%client, %local, "no endpoint reachable; connection closed");
        return;
    };
    match tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        Ok((up, down)) => tracing::debug!(%client, up, down, "connection done"),
        Err(error) => tracing::debug!(%client, %error, "connection ended with an error"),
    }
}

/// Connects to the best reachable endpoint and sends the PROXY header if it wants one.
async fn connect(client: SocketAddr, local: SocketAddr, edge: &Edge) -> Option<TcpStream> {
    for endpoint in candidates(&edge.groups, client, edge.affinity) {
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(endpoint.address),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(endpoint = %endpoint.address, %error, "endpoint connect failed");
                continue;
            }
            Err(_) => continue,
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
