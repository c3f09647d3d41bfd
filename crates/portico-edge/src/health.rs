//! TCP health checks of endpoints: healthy while connections to them open.
//!
//! A check runs every interval with a timeout of its own; `threshold` consecutive results
//! of the other kind are needed to change an endpoint's verdict, as Global Accelerator's
//! threshold count works.

use crate::endpoint::Endpoint;
use portico_health::{Schedule, TcpProbe, Thresholds};
use std::sync::Arc;
use std::time::Duration;
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

/// Checks `endpoint` until `shutdown` fires, with the health engine the load balancer
/// uses; Global Accelerator's one threshold count applies both ways.
pub async fn run(endpoint: Arc<Endpoint>, check: HealthCheck, shutdown: CancellationToken) {
    portico_health::run(
        TcpProbe {
            address: endpoint.address,
        },
        endpoint.status.clone(),
        Schedule {
            interval: check.interval,
            timeout: check.timeout,
        },
        Thresholds {
            healthy: check.threshold,
            unhealthy: check.threshold,
        },
        shutdown,
    )
    .await;
}
