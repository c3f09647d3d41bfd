//! Endpoint groups and endpoints as the edge uses them at run time.

use portico_health::Status;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where an endpoint receives traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Always this address (a load balancer's listener, or `IP:PORT` in the file).
    Fixed(SocketAddr),
    /// This IP, on the port the connection arrived on after port overrides, as Global
    /// Accelerator sends it.
    Host(IpAddr),
}

impl Target {
    /// The address for traffic meant for `port` on the endpoint.
    pub fn address(self, port: u16) -> SocketAddr {
        match self {
            Self::Fixed(address) => address,
            Self::Host(ip) => SocketAddr::new(ip, port),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(address) => address.fmt(f),
            Self::Host(ip) => ip.fmt(f),
        }
    }
}

/// One endpoint: where connections are forwarded.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it receives traffic.
    pub target: Target,
    /// Relative weight in its group, 0–255; 0 takes it out of service.
    pub weight: u8,
    /// Send a PROXY protocol v2 header first.
    pub proxy_protocol: bool,
    /// Its health and round-trip time, kept by the health engine.
    pub status: Arc<Status>,
    /// Connections forwarded to it so far (kept across reloads).
    connections: Arc<AtomicU64>,
}

impl Endpoint {
    /// An endpoint whose health is `status` and whose forwarded connections are counted in
    /// `connections`.
    pub fn new(
        target: Target,
        weight: u8,
        proxy_protocol: bool,
        status: Arc<Status>,
        connections: Arc<AtomicU64>,
    ) -> Self {
        Self {
            target,
            weight,
            proxy_protocol,
            status,
            connections,
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
}

/// The endpoints of one region.
#[derive(Debug, Clone)]
pub struct EndpointGroup {
    /// The region's name.
    pub region: String,
    /// Share of the connections offered to this group that it accepts, 0–100.
    pub traffic_dial_percentage: u8,
    /// Listener port → endpoint port.
    pub port_overrides: BTreeMap<u16, u16>,
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

    /// The endpoint port for traffic that arrived on `listener_port`.
    pub fn endpoint_port(&self, listener_port: u16) -> u16 {
        self.port_overrides
            .get(&listener_port)
            .copied()
            .unwrap_or(listener_port)
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
