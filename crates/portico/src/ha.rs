//! Wiring the edge to `portico-ha` on a node of a multi-node accelerator: which node this
//! is, the host checks before anything is bound, the edge's verdict fed to the daemon, and
//! the wait for new connections to stop once the static IPs are given up.

use portico_config::{Config, ConfigError};
use portico_edge::Accelerator;
use portico_ha::{Ha, HaSpec, NodeHealth};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the edge's verdict is read.
const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// How long without a new connection counts as "new connections stopped arriving" after
/// the static IPs are given up.
const QUIET: Duration = Duration::from_millis(500);

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

/// Starts the daemon for `spec`, fed the edge's verdict every [`HEALTH_EVERY`] until
/// `shutdown`.
pub(crate) async fn start(
    spec: HaSpec,
    accelerator: &Arc<Accelerator>,
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
) -> Result<Arc<Ha>, portico_ha::HaError> {
    let verdict = || {
        let (serving, reason) = accelerator.serving();
        NodeHealth { serving, reason }
    };
    let (tx, rx) = watch::channel(verdict());
    let ha = Ha::start(spec, rx).await?;
    let accelerator = accelerator.clone();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_EVERY) => {}
            }
            let (serving, reason) = accelerator.serving();
            tx.send_if_modified(|current| {
                let changed = current.serving != serving || current.reason != reason;
                *current = NodeHealth { serving, reason };
                changed
            });
        }
    });
    Ok(ha)
}

/// Gives the static IPs up, then waits until new connections stop arriving (none for
/// [`QUIET`]) or `limit` passes: clients still on their way here (an ARP cache, a route
/// not yet withdrawn) are served rather than refused.
pub(crate) async fn give_up(ha: &Ha, accelerator: &Accelerator, limit: Duration) {
    let began = Instant::now();
    ha.release().await;
    let mut last = accelerator.connections();
    let mut quiet_since = Instant::now();
    while began.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = accelerator.connections();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            break;
        }
    }
    tracing::info!(
        waited_ms = began.elapsed().as_millis() as u64,
        "static IPs given up and new connections stopped: draining"
    );
}
