//! A load balancer listener: accepts connections, reads PROXY v2 when enabled, serves
//! HTTP/1.1, and drains on shutdown.
//!
//! Shutdown sequence (with `portico_accept`): stop accepting → ask every connection to finish
//! its current request (hyper's graceful shutdown) → wait up to the drain timeout → cut the
//! rest and report how many.

use crate::handler::{self, Connection, Context};
use crate::router::Router;
use hyper_util::rt::TokioTimer;
use portico_invoke::Invoker;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// hyper's read buffer bound: a backstop against endless heads. It is approximate (hyper
/// checks it only between reads), so ALB's exact limits are enforced in `forward`, and this
/// is set above them so that those checks are the ones clients meet.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// How one listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// The load balancer's name, for logs.
    pub load_balancer: String,
    /// Require a PROXY protocol v2 header on every connection.
    pub proxy_protocol: bool,
    /// How long an idle keep-alive connection, or a slow request head, may take.
    pub idle_timeout: Duration,
    /// Connection cap, and how long in-flight requests get to finish at shutdown.
    pub limits: portico_accept::Limits,
    /// The listener's rules and default action.
    pub router: Router,
    /// The load balancer's id as access logs name it, `app/NAME/ID`.
    pub elb: String,
    /// Where access log lines go, when enabled.
    pub access_log: Option<crate::access_log::AccessLog>,
}

/// How long a connection may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until `shutdown` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    spec: ListenerSpec,
    invoker: Arc<dyn Invoker>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let ctx = Arc::new(Context {
        router: spec.router.clone(),
        invoker,
        proto: "http",
        port: local.map_or(0, |a| a.port()),
        target_timeout: spec.idle_timeout,
        elb: spec.elb.as_str().into(),
        access_log: spec.access_log.clone(),
    });
    let spec = Arc::new(spec);
    let drained = portico_accept::serve(listener, &shutdown, spec.limits, |stream, peer| {
        connection(stream, peer, ctx.clone(), spec.clone(), shutdown.clone())
    })
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(
            load_balancer = spec.load_balancer,
            cut_short = drained.cut_short,
            "drain timeout: open connections were cut"
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    spec: Arc<ListenerSpec>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let client = if spec.proxy_protocol {
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
    serve_http(stream, client, ctx, spec, shutdown)
        .instrument(span)
        .await;
}

async fn serve_http(
    stream: TcpStream,
    client: SocketAddr,
    ctx: Arc<Context>,
    spec: Arc<ListenerSpec>,
    shutdown: CancellationToken,
) {
    let conn = Arc::new(Connection::new(client));
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handler::handle(&ctx, &conn, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(spec.idle_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    if let Err(error) = portico_accept::serve_http1(&builder, stream, service, &shutdown).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
