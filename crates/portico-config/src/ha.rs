//! High availability of the static IPs: the accelerator on several nodes, with the addresses
//! moved by VRRP (keepalived) or announced by BGP (BIRD).
//!
//! ```toml
//! [accelerator]
//! static_ips = ["192.0.2.10", "192.0.2.11"]
//! nodes = [
//!   { name = "edge-a", address = "192.0.2.2" },
//!   { name = "edge-b", address = "192.0.2.3" },
//! ]
//! ha = { mode = "vrrp", interface = "eth0" }
//! ```
//!
//! The file says what the network needs; `portico-ha` turns it into each node's daemon
//! configuration.

use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// One host of a multi-node accelerator (`accelerator.nodes`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EdgeNode {
    /// The node's name, as `portico up FILE --node NAME` gives it.
    pub name: String,
    /// The address the node uses on the network: VRRP's source and unicast peer address,
    /// BGP's router id and session source.
    pub address: IpAddr,
    /// VRRP: the interface on the shared segment. Default: `ha.interface`.
    #[serde(default)]
    pub interface: Option<String>,
    /// BGP: this node's peers. Default: `ha.peers`.
    #[serde(default)]
    pub peers: Option<Vec<BgpPeer>>,
}

/// How the static IPs move between nodes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HaMode {
    /// One segment: each static IP is a VRRP instance (keepalived), held by one node at a
    /// time, each IP preferring another node.
    Vrrp,
    /// Behind a router: every healthy node announces every static IP (BIRD), the router
    /// spreads flows over them by ECMP.
    Bgp,
}

impl HaMode {
    /// Its name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vrrp => "vrrp",
            Self::Bgp => "bgp",
        }
    }
}

/// A BGP neighbour of an edge node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    /// Its address (directly connected).
    pub address: IpAddr,
    /// Its AS number.
    pub asn: u32,
}

/// `accelerator.ha`: the engine that keeps the static IPs reachable.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HighAvailability {
    /// `vrrp` or `bgp`.
    pub mode: HaMode,
    /// VRRP: the interface on the shared segment, for nodes that do not name their own.
    #[serde(default)]
    pub interface: Option<String>,
    /// VRRP: the virtual router id of the first static IP; the next ones count up from it.
    /// Default 51.
    #[serde(default = "default_virtual_router_id")]
    pub virtual_router_id: u8,
    /// VRRP: seconds between advertisements (VRRPv3, 0.01–40). A master is taken as gone
    /// after three missed ones. Default 0.2.
    #[serde(default = "default_advert_interval")]
    pub advert_interval_seconds: f64,
    /// VRRP: advertise to the other nodes' addresses instead of the VRRP multicast group,
    /// for networks that filter multicast. Default false.
    #[serde(default)]
    pub unicast: bool,
    /// VRRP: seconds a node that comes back must be heard, serving, before the node that
    /// holds the static IP it prefers hands the address back. Default 2.
    #[serde(default = "default_preempt_delay")]
    pub preempt_delay_seconds: f64,
    /// BGP: this accelerator's AS number.
    #[serde(default)]
    pub asn: Option<u32>,
    /// BGP: the peers of nodes that do not name their own.
    #[serde(default)]
    pub peers: Vec<BgpPeer>,
    /// BGP: Bidirectional Forwarding Detection to the peers, so that a dead node's routes
    /// go within a second. Default true.
    #[serde(default = "default_true")]
    pub bfd: bool,
    /// BGP: BFD's transmit and receive interval in milliseconds (a peer is down after
    /// three missed). Default 100.
    #[serde(default = "default_bfd_interval")]
    pub bfd_interval_ms: u32,
    /// BGP: a packet of a TCP connection this node does not have (the router's hash moved
    /// it here when a node joined) goes on to the other edge nodes, one after the other,
    /// instead of being reset, so that a node that comes back takes no open connection from
    /// another. Needs nftables, and the edge nodes on one segment. Default true.
    #[serde(default)]
    pub second_chance: Option<bool>,
    /// The daemon's program: `keepalived` or `bird`, found on `PATH`, by default.
    #[serde(default)]
    pub daemon: Option<String>,
    /// Where the daemon's configuration, sockets and state go. Default
    /// `/run/portico/ACCELERATOR-NODE`.
    #[serde(default)]
    pub run_dir: Option<String>,
}

impl HighAvailability {
    /// Time between VRRP advertisements.
    pub fn advert_interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.advert_interval_seconds).unwrap_or(Duration::MAX)
    }

    /// The daemon's program.
    pub fn daemon(&self) -> &str {
        self.daemon.as_deref().unwrap_or(match self.mode {
            HaMode::Vrrp => "keepalived",
            HaMode::Bgp => "bird",
        })
    }
}

fn default_virtual_router_id() -> u8 {
    51
}
fn default_advert_interval() -> f64 {
    0.2
}
fn default_preempt_delay() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_bfd_interval() -> u32 {
    100
}
