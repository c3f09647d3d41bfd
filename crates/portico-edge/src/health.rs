//! Health checks of endpoints: TCP, HTTP or HTTPS, with the health engine the load balancer
//! uses.
//!
//! A check runs every interval with a timeout of its own; `threshold` consecutive results
//! of the other kind are needed to change an endpoint's verdict, as Global Accelerator's
//! threshold count works. HTTP and HTTPS checks want a 200, as Global Accelerator's do. Each
//! check's duration feeds the endpoint's smoothed round-trip time, which orders groups
//! nearest first.

use portico_health::{HttpProbe, Schedule, Status, TcpProbe, Thresholds};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How an endpoint is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A TCP connection opens.
    Tcp,
    /// `GET path` answers 200.
    Http,
    /// `GET path` over TLS answers 200.
    Https,
}

/// How an endpoint group checks its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// What a check does.
    pub protocol: Protocol,
    /// Path of HTTP and HTTPS checks.
    pub path: String,
    /// Port checked instead of the traffic port.
    pub port: Option<u16>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive results needed to change the verdict.
    pub threshold: u32,
}

impl HealthCheck {
    /// A check of `protocol` every `interval`, with Global Accelerator's timeout: the
    /// interval, at most 5 s (the lower of the two, so checks never overlap).
    pub fn every(protocol: Protocol, interval: Duration, threshold: u32) -> Self {
        Self {
            protocol,
            path: "/".to_owned(),
            port: None,
            interval,
            timeout: interval.min(Duration::from_secs(5)),
            threshold,
        }
    }
}

/// Checks `address` until `shutdown` fires, recording verdicts and round-trip times in
/// `status`; Global Accelerator's one threshold count applies both ways. HTTP and HTTPS
/// checks toward an endpoint that takes PROXY protocol v2 (`proxy`) open with a `LOCAL`
/// header, as a load balancer requiring the header refuses anything else.
pub async fn run(
    address: SocketAddr,
    status: Arc<Status>,
    (check, proxy): (HealthCheck, bool),
    shutdown: CancellationToken,
) {
    let schedule = Schedule {
        interval: check.interval,
        timeout: check.timeout,
    };
    let thresholds = Thresholds {
        healthy: check.threshold,
        unhealthy: check.threshold,
    };
    match check.protocol {
        Protocol::Tcp => {
            portico_health::run(TcpProbe { address }, status, schedule, thresholds, shutdown).await
        }
        Protocol::Http | Protocol::Https => {
            let probe = HttpProbe {
                address,
                path: check.path.clone(),
                accepts: |status| status == 200,
                tls: check.protocol == Protocol::Https,
                preface: if proxy {
                    portico_proxy_protocol::local_header()
                } else {
                    Vec::new()
                },
            };
            portico_health::run(probe, status, schedule, thresholds, shutdown).await
        }
    }
}
