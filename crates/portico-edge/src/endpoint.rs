//! Endpoint groups and endpoints as the edge uses them at run time.

use portico_health::{Status, Verdict};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One endpoint: where connections are forwarded.
#[derive(Debug)]
pub struct Endpoint {
    /// Its address.
    pub address: SocketAddr,
    /// Relative weight in its group, 0–255; 0 takes it out of service.
    pub weight: u8,
    /// Send a PROXY protocol v2 header first.
    pub proxy_protocol: bool,
    /// Its health and round-trip time, kept by the health engine.
    pub status: Arc<Status>,
    /// Connections forwarded to it so far.
    connections: AtomicU64,
}

impl Endpoint {
    /// A new endpoint, healthy until a health check says otherwise.
    pub fn new(address: SocketAddr, weight: u8, proxy_protocol: bool) -> Self {
        Self {
            address,
            weight,
            proxy_protocol,
            status: Arc::new(Status::new(Verdict::Healthy)),
            connections: AtomicU64::new(0),
        }
    }

    /// Connections forwarded to it so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts one more connection forwarded to it.
    pub fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the last health verdict was healthy.
    pub fn is_healthy(&self) -> bool {
        self.status.is_healthy()
    }

    /// Records a health verdict.
    pub fn set_healthy(&self, healthy: bool) {
        self.status.set(if healthy {
            Verdict::Healthy
        } else {
            Verdict::Unhealthy
        });
    }
}

/// The endpoints of one region.
#[derive(Debug, Clone)]
pub struct EndpointGroup {
    /// The region's name.
    pub region: String,
    /// Share of the connections offered to this group that it accepts, 0–100.
    pub traffic_dial_percentage: u8,
    /// Its endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl EndpointGroup {
    /// Endpoints that can take traffic: healthy and with a weight.
    pub fn available(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|e| e.weight > 0 && e.is_healthy())
    }

    /// The group's round-trip time from this edge: the lowest smoothed health-check RTT of
    /// its available endpoints. None before any has been measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.available().filter_map(|e| e.status.rtt()).min()
    }

    /// How far the group is, for ordering groups nearest first: its RTT in whole
    /// milliseconds, so that groups within the same millisecond do not swap places on noise;
    /// unmeasured groups last.
    pub fn nearness(&self) -> u128 {
        self.rtt().map_or(u128::MAX, |rtt| rtt.as_millis())
    }

    /// Connections forwarded to its endpoints so far.
    pub fn connections(&self) -> u64 {
        self.endpoints.iter().map(|e| e.connections()).sum()
    }
}
