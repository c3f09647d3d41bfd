//! Wiring the edge to `portico-ha` on a node of a multi-node accelerator: which node this
//! is, the host checks before anything is bound, the edge's verdict fed to the daemon, and
//! the wait for new connections to stop once the static IPs are given up.

use portico_config::{Config, ConfigError};
use portico_edge::Accelerator;
use portico_ha::{EdgeFuture, Ha, HaSpec, NodeHealth};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the edge's verdict is read.
const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// Longest wait for open connections to finish before the static IPs are given up: new
/// connections wait meanwhile (their SYNs are dropped and sent again after a second).
const QUIESCE: Duration = Duration::from_secs(1);

/// After the static IPs are given up, how long packets already on their way here (a client
/// that has not yet seen the new holder's ARP, a route not yet withdrawn) still find the
/// listeners.
const SETTLE: Duration = Duration::from_millis(200);

/// This node's part of a multi-node accelerator in `config` (this node's part of the file),
/// or the errors that keep this host from running it, each at its key. `None` when the
/// accelerator is not on several nodes or not on this one.
pub(crate) fn spec(
    config: &Config,
    node: Option<&str>,
    base: &Path,
) -> Result<Option<HaSpec>, Vec<ConfigError>> {
    let Some(acc) = config.accelerator.as_ref().filter(|a| a.ha.is_some()) else {
        return Ok(None);
    };
    let Some(node) = node else {
        let names: Vec<&str> = acc.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(vec![ConfigError::new(
            "accelerator.nodes",
            format!(
                "the accelerator runs on several nodes: start each with --node NAME (one of {})",
                names.join(", ")
            ),
        )]);
    };
    let Some(spec) = HaSpec::new(acc, node, base) else {
        return Ok(None);
    };
    let errors = spec.check_host(acc);
    if errors.is_empty() {
        Ok(Some(spec))
    } else {
        Err(errors)
    }
}

/// The edge's verdict, as the daemon is fed it.
fn verdict(accelerator: &Accelerator) -> NodeHealth {
    let (serving, reason) = accelerator.serving();
    NodeHealth { serving, reason }
}

/// Starts the daemon for `spec`, fed the edge's verdict every [`HEALTH_EVERY`] until
/// `shutdown`.
pub(crate) async fn start(
    spec: HaSpec,
    accelerator: &Arc<Accelerator>,
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
) -> Result<Arc<Ha>, portico_ha::HaError> {
    let (tx, rx) = watch::channel(verdict(accelerator));
    let ha = Ha::start(spec, rx, Arc::new(Edge(accelerator.clone()))).await?;
    let accelerator = accelerator.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_EVERY) => {}
            }
            let now = verdict(&accelerator);
            tx.send_if_modified(|current| {
                let changed = *current != now;
                *current = now;
                changed
            });
        }
    });
    Ok(ha)
}

/// The edge as the daemon's side sees it when this node hands one address over.
struct Edge(Arc<Accelerator>);

impl portico_ha::Edge for Edge {
    fn drain(&self, ip: IpAddr) -> EdgeFuture<'_> {
        Box::pin(async move {
            drain(&self.0, Some(ip)).await;
        })
    }

    fn resume(&self, ip: IpAddr) -> EdgeFuture<'_> {
        Box::pin(self.0.resume(ip))
    }
}

/// Stops new connections (to `ip`, or to every static IP) without refusing them, and waits
/// up to [`QUIESCE`] for the open ones to finish at their next request boundary. Returns
/// how many are still open.
async fn drain(accelerator: &Accelerator, ip: Option<IpAddr>) -> usize {
    let began = Instant::now();
    accelerator.quiesce(ip).await;
    while accelerator.open_connections(ip) > 0 && began.elapsed() < QUIESCE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    accelerator.open_connections(ip)
}

/// Hands this node's share over without losing a request: new connections are dropped
/// rather than refused (their clients send them again in a second), open ones finish at
/// their next request boundary (for up to [`QUIESCE`]), and only then are the static IPs
/// given up, so that no connection is open here when its packets start going to another
/// node, which would reset it. A client that connects meanwhile waits a second for its SYN
/// to be sent again, to the new holder.
pub(crate) async fn give_up(ha: &Ha, accelerator: &Accelerator) {
    let began = Instant::now();
    let unfinished = drain(accelerator, None).await;
    ha.release().await;
    tokio::time::sleep(SETTLE).await;
    tracing::info!(
        waited_ms = began.elapsed().as_millis() as u64,
        unfinished,
        "new connections stopped, open ones finished, static IPs given up: draining"
    );
}
