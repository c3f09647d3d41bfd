//! TCP health checks: an endpoint is healthy while connections to it succeed.
//!
//! A check runs every interval with a timeout of its own; `threshold` consecutive results
//! of the other kind are needed to change an endpoint's verdict, as Global Accelerator's
//! threshold count works.

use crate::endpoint::Endpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How an endpoint is checked.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive results needed to change the verdict.
    pub threshold: u32,
}

/// Checks `endpoint` until `shutdown` fires.
pub async fn run(endpoint: Arc<Endpoint>, check: HealthCheck, shutdown: CancellationToken) {
    let mut streak = 0u32;
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(check.timeout, TcpStream::connect(endpoint.address)).await,
            Ok(Ok(_))
        );
        if ok == endpoint.is_healthy() {
            streak = 0;
            continue;
        }
        streak += 1;
        if streak >= check.threshold {
            endpoint.set_healthy(ok);
            streak = 0;
            tracing::info!(endpoint = %endpoint.address, healthy = ok, "endpoint health changed");
        }
    }
}
