//! The rules for an accelerator on several nodes: node names and addresses, and the VRRP or
//! BGP settings that the daemons will be given.

use super::Validator;
use crate::ha::{BgpPeer, HaMode, HighAvailability};
use crate::model::Accelerator;
use std::collections::HashSet;

/// VRRPv3's advertisement interval, in seconds: centiseconds up to 4095.
pub const ADVERT_INTERVAL_SECONDS: (f64, f64) = (0.01, 40.95);
/// keepalived's longest preemption delay, in seconds.
pub const MAX_PREEMPT_DELAY_SECONDS: f64 = 1000.0;
/// BFD intervals BIRD accepts that make sense on a network, in milliseconds.
pub const BFD_INTERVAL_MS: (u32, u32) = (10, 10_000);
/// Longest interface name Linux takes (IFNAMSIZ less the NUL).
const MAX_INTERFACE_CHARS: usize = 15;

impl Validator {
    /// Checks `nodes` and `ha` of the accelerator.
    pub(super) fn high_availability(&mut self, acc: &Accelerator) {
        if acc.node.is_some() && !acc.nodes.is_empty() {
            self.err(
                "accelerator.node",
                "set `node` (one host) or `nodes` (several), not both",
            );
        }
        let ha = match (&acc.ha, acc.nodes.is_empty()) {
            (None, true) => return,
            (None, false) => {
                return self.err(
                    "accelerator.ha",
                    "several nodes need `ha = { mode = \"vrrp\" }` or `{ mode = \"bgp\" }`: how the static IPs move between them",
                );
            }
            (Some(_), true) => {
                return self.err(
                    "accelerator.nodes",
                    "`ha` needs the nodes that share the static IPs",
                );
            }
            (Some(ha), false) => ha,
        };
        self.edge_nodes(acc, ha);
        match ha.mode {
            HaMode::Vrrp => self.vrrp(acc, ha),
            HaMode::Bgp => self.bgp(acc, ha),
        }
        if ha.daemon.as_deref().is_some_and(str::is_empty) {
            self.err("accelerator.ha.daemon", "must name a program");
        }
        if ha.run_dir.as_deref().is_some_and(str::is_empty) {
            self.err("accelerator.ha.run_dir", "must name a directory");
        }
    }

    fn edge_nodes(&mut self, acc: &Accelerator, ha: &HighAvailability) {
        let (mut names, mut addresses) = (HashSet::new(), HashSet::new());
        for (i, node) in acc.nodes.iter().enumerate() {
            let np = format!("accelerator.nodes[{i}]");
            let valid_name = !node.name.is_empty()
                && node.name.len() <= 64
                && node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                self.err(
                    format!("{np}.name"),
                    "a node name is 1-64 letters, digits, `-` or `_`",
                );
            }
            if !names.insert(node.name.as_str()) {
                self.err(
                    format!("{np}.name"),
                    format!("node {:?} is listed twice", node.name),
                );
            }
            let address = node.address;
            if address.is_unspecified() || address.is_multicast() {
                self.err(
                    format!("{np}.address"),
                    format!("{address} is not an address a node can have"),
                );
            } else if acc.static_ips.contains(&address) {
                self.err(
                    format!("{np}.address"),
                    format!(
                        "{address} is a static IP; a node needs an address of its own, which stays with it"
                    ),
                );
            } else if !addresses.insert(address) {
                self.err(
                    format!("{np}.address"),
                    format!("{address} is the address of another node"),
                );
            }
            if node.interface.is_some() && ha.mode != HaMode::Vrrp {
                self.err(format!("{np}.interface"), "is for mode \"vrrp\"");
            }
            if node.peers.is_some() && ha.mode != HaMode::Bgp {
                self.err(format!("{np}.peers"), "is for mode \"bgp\"");
            }
        }
    }

    fn vrrp(&mut self, acc: &Accelerator, ha: &HighAvailability) {
        for (i, node) in acc.nodes.iter().enumerate() {
            if node.address.is_ipv6() {
                self.err(
                    format!("accelerator.nodes[{i}].address"),
                    "mode \"vrrp\" needs the node's IPv4 address on the segment: nodes make their presence known to each other with VRRP over IPv4",
                );
            }
            match (&node.interface, &ha.interface) {
                (Some(name), _) => self.interface(&format!("accelerator.nodes[{i}].interface"), name),
                (None, Some(_)) => {}
                (None, None) => self.err(
                    format!("accelerator.nodes[{i}].interface"),
                    "VRRP needs the interface on the shared segment: set it here or as ha.interface",
                ),
            }
        }
        if let Some(name) = &ha.interface {
            self.interface("accelerator.ha.interface", name);
        }
        // Each static IP's instance, then each node's presence instance.
        let last = (usize::from(ha.virtual_router_id) + acc.static_ips.len() + acc.nodes.len())
            .saturating_sub(1);
        if ha.virtual_router_id == 0 || last > 255 {
            self.err(
                "accelerator.ha.virtual_router_id",
                format!(
                    "static IP i takes id {id} + i and node j id {id} + {} + j; with {} static IPs and {} nodes the ids must stay within 1-255",
                    acc.static_ips.len(),
                    acc.static_ips.len(),
                    acc.nodes.len(),
                    id = ha.virtual_router_id,
                ),
            );
        }
        let (min, max) = ADVERT_INTERVAL_SECONDS;
        let interval = ha.advert_interval_seconds;
        if !(min..=max).contains(&interval) {
            self.err(
                "accelerator.ha.advert_interval_seconds",
                format!("{interval} s is outside VRRPv3's {min}-{max} s"),
            );
        }
        let delay = ha.preempt_delay_seconds;
        if !(0.0..=MAX_PREEMPT_DELAY_SECONDS).contains(&delay) {
            self.err(
                "accelerator.ha.preempt_delay_seconds",
                format!("{delay} s is outside 0-{MAX_PREEMPT_DELAY_SECONDS} s"),
            );
        }
        if ha.unicast {
            for (s, ip) in acc.static_ips.iter().enumerate() {
                if acc
                    .nodes
                    .iter()
                    .any(|n| n.address.is_ipv4() != ip.is_ipv4())
                {
                    self.err(
                        format!("accelerator.static_ips[{s}]"),
                        format!(
                            "unicast VRRP for {ip} needs every node's address in the same family"
                        ),
                    );
                }
            }
        }
        for (key, set) in [
            ("asn", ha.asn.is_some()),
            ("peers", !ha.peers.is_empty()),
            ("second_chance", ha.second_chance.is_some()),
        ] {
            if set {
                self.err(format!("accelerator.ha.{key}"), "is for mode \"bgp\"");
            }
        }
    }

    fn interface(&mut self, path: &str, name: &str) {
        let valid = !name.is_empty()
            && name.len() <= MAX_INTERFACE_CHARS
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != ':' && c != '"');
        if !valid {
            self.err(
                path,
                format!("{name:?} is not an interface name (1-{MAX_INTERFACE_CHARS} characters, no `/`, `:` or spaces)"),
            );
        }
    }

    fn bgp(&mut self, acc: &Accelerator, ha: &HighAvailability) {
        match ha.asn {
            None => self.err(
                "accelerator.ha.asn",
                "BGP needs this accelerator's AS number",
            ),
            Some(asn) => self.asn("accelerator.ha.asn", asn),
        }
        self.peers("accelerator.ha.peers", &ha.peers, acc);
        for (i, node) in acc.nodes.iter().enumerate() {
            match &node.peers {
                Some(peers) => {
                    let path = format!("accelerator.nodes[{i}].peers");
                    if peers.is_empty() {
                        self.err(path, "at least one peer is required");
                    } else {
                        self.peers(&path, peers, acc);
                    }
                }
                None if ha.peers.is_empty() => self.err(
                    format!("accelerator.nodes[{i}].peers"),
                    "BGP needs a peer to announce to: set peers here or as ha.peers",
                ),
                None => {}
            }
        }
        let (min, max) = BFD_INTERVAL_MS;
        if !(min..=max).contains(&ha.bfd_interval_ms) {
            self.err(
                "accelerator.ha.bfd_interval_ms",
                format!("{} ms is outside {min}-{max} ms", ha.bfd_interval_ms),
            );
        }
        if ha.interface.is_some() {
            self.err("accelerator.ha.interface", "is for mode \"vrrp\"");
        }
        if ha.unicast {
            self.err("accelerator.ha.unicast", "is for mode \"vrrp\"");
        }
    }

    fn peers(&mut self, path: &str, peers: &[BgpPeer], acc: &Accelerator) {
        let mut seen = HashSet::new();
        for (p, peer) in peers.iter().enumerate() {
            let pp = format!("{path}[{p}]");
            let address = peer.address;
            if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
                self.err(
                    format!("{pp}.address"),
                    format!("{address} is not a peer's address"),
                );
            } else if acc.static_ips.contains(&address)
                || acc.nodes.iter().any(|n| n.address == address)
            {
                self.err(
                    format!("{pp}.address"),
                    format!("{address} is a static IP or a node's own address, not a peer's"),
                );
            } else if !seen.insert(address) {
                self.err(
                    format!("{pp}.address"),
                    format!("{address} is listed twice"),
                );
            }
            self.asn(&format!("{pp}.asn"), peer.asn);
        }
    }

    /// AS numbers 0, 23456 (`AS_TRANS`) and 4294967295 are reserved (RFC 7607, 6793, 7300).
    fn asn(&mut self, path: &str, asn: u32) {
        if matches!(asn, 0 | 23_456 | u32::MAX) {
            self.err(path, format!("{asn} is a reserved AS number"));
        }
    }
}
