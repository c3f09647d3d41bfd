//! One node's part of a multi-node accelerator, resolved from the topology file, and the
//! checks of the host it is about to run on.

use portico_config::{Accelerator, BgpPeer, ConfigError, HaMode};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one edge node's daemon is configured from.
#[derive(Debug, Clone, PartialEq)]
pub struct HaSpec {
    /// The accelerator's name.
    pub accelerator: String,
    /// This node's name.
    pub node: String,
    /// This node's index in `nodes`.
    pub me: usize,
    /// Every node: name and address, in the file's order.
    pub nodes: Vec<(String, IpAddr)>,
    /// `vrrp` or `bgp`.
    pub mode: HaMode,
    /// The static IPs.
    pub static_ips: Vec<IpAddr>,
    /// VRRP: this node's interface on the shared segment.
    pub interface: String,
    /// VRRP: the id of the first static IP's instance.
    pub virtual_router_id: u8,
    /// VRRP: time between advertisements.
    pub advert_interval: Duration,
    /// VRRP: advertise to the other nodes' addresses instead of multicast.
    pub unicast: bool,
    /// VRRP: how long a node that comes back serves before it takes back its addresses.
    pub preempt_delay: Duration,
    /// BGP: the accelerator's AS number.
    pub asn: u32,
    /// BGP: this node's peers.
    pub peers: Vec<BgpPeer>,
    /// BGP: BFD to the peers.
    pub bfd: bool,
    /// BGP: BFD's interval.
    pub bfd_interval: Duration,
    /// BGP: packets of connections another node has go on to it (the `second_chance`
    /// module).
    pub second_chance: bool,
    /// The daemon's program.
    pub daemon: String,
    /// Where the daemon's configuration, sockets and state go.
    pub run_dir: PathBuf,
}

/// Where run directories go when the file names none.
const DEFAULT_RUN_ROOT: &str = "/run/portico";

/// Priorities a static IP's VRRP instance gives its nodes: the preferred node this, the
/// next one this less [`PRIORITY_STEP`], and so on.
const TOP_PRIORITY: u8 = 250;
/// The priority between one node and the next in a static IP's order of preference.
const PRIORITY_STEP: u8 = 10;

impl HaSpec {
    /// `node`'s part of `acc`; `None` when the accelerator has no `ha` or does not list
    /// `node`. Relative run directories are taken from `base`.
    pub fn new(acc: &Accelerator, node: &str, base: &Path) -> Option<Self> {
        let ha = acc.ha.as_ref()?;
        let me = acc.nodes.iter().position(|n| n.name == node)?;
        let this = &acc.nodes[me];
        let run_dir = match &ha.run_dir {
            Some(dir) => base.join(dir),
            None => Path::new(DEFAULT_RUN_ROOT).join(format!("{}-{node}", acc.name)),
        };
        Some(Self {
            accelerator: acc.name.clone(),
            node: node.to_owned(),
            me,
            nodes: acc
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.address))
                .collect(),
            mode: ha.mode,
            static_ips: acc.static_ips.clone(),
            interface: this
                .interface
                .clone()
                .or_else(|| ha.interface.clone())
                .unwrap_or_default(),
            virtual_router_id: ha.virtual_router_id,
            advert_interval: ha.advert_interval(),
            unicast: ha.unicast,
            preempt_delay: Duration::try_from_secs_f64(ha.preempt_delay_seconds)
                .unwrap_or_default(),
            asn: ha.asn.unwrap_or_default(),
            peers: this.peers.clone().unwrap_or_else(|| ha.peers.clone()),
            bfd: ha.bfd,
            bfd_interval: Duration::from_millis(u64::from(ha.bfd_interval_ms)),
            second_chance: ha.mode == HaMode::Bgp && ha.second_chance.unwrap_or(true),
            daemon: ha.daemon().to_owned(),
            run_dir,
        })
    }

    /// This node's address.
    pub fn address(&self) -> IpAddr {
        self.nodes[self.me].1
    }

    /// The node that prefers static IP `index`: the IPs go round the nodes in order, so
    /// that with as many IPs as nodes each node holds one.
    pub fn preferred_node(&self, index: usize) -> usize {
        index % self.nodes.len().max(1)
    }

    /// This node's VRRP priority for static IP `index`: highest on its preferred node, one
    /// step lower on each node after it.
    pub fn priority(&self, index: usize) -> u8 {
        let n = self.nodes.len().max(1);
        let rank = (self.me + n - self.preferred_node(index)) % n;
        let rank = u8::try_from(rank).unwrap_or(u8::MAX);
        TOP_PRIORITY
            .saturating_sub(rank.saturating_mul(PRIORITY_STEP))
            .max(1)
    }

    /// The name of the node at `address`, if it is one.
    pub fn node_at(&self, address: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, a)| *a == address)
            .map(|(n, _)| n.as_str())
    }

    /// What this host lacks to run the node: the daemon's program, the interface, the
    /// node's own address. Each error names the key of the file it is about.
    pub fn check_host(&self, acc: &Accelerator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let node_path = format!("accelerator.nodes[{}]", self.me);
        let package = match self.mode {
            HaMode::Vrrp => "keepalived",
            HaMode::Bgp => "bird2",
        };
        if find_program(&self.daemon).is_none() {
            errors.push(ConfigError::new(
                "accelerator.ha.daemon",
                format!(
                    "{:?} is not on this host (mode {:?} runs it: install Debian's {package})",
                    self.daemon,
                    self.mode.name()
                ),
            ));
        }
        if self.second_chance && find_program(crate::second_chance::NFT).is_none() {
            errors.push(ConfigError::new(
                "accelerator.ha.second_chance",
                "`nft` is not on this host: install Debian's nftables, or set second_chance = false",
            ));
        }
        if find_program(crate::daemon::SETPRIV).is_none() {
            errors.push(ConfigError::new(
                "accelerator.ha",
                "`setpriv` (util-linux) is not on this host: it ties the daemon's life to portico's",
            ));
        }
        if self.mode == HaMode::Vrrp {
            let key = if acc.nodes[self.me].interface.is_some() {
                format!("{node_path}.interface")
            } else {
                "accelerator.ha.interface".to_owned()
            };
            if !Path::new("/sys/class/net").join(&self.interface).exists() {
                errors.push(ConfigError::new(
                    key,
                    format!("this host has no interface {:?}", self.interface),
                ));
            }
        }
        if !is_local(self.address()) {
            errors.push(ConfigError::new(
                format!("{node_path}.address"),
                format!(
                    "{} is not an address of this host (is this node {:?}?)",
                    self.address(),
                    self.node
                ),
            ));
        }
        errors
    }
}

/// Whether `ip` is an address of this host: only then can a socket bind it without
/// `IP_FREEBIND`.
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `program` as the daemon would be started: a path, or a name found on `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn accelerator(text: &str) -> Accelerator {
        portico_config::parse(text, "test")
            .unwrap()
            .accelerator
            .unwrap()
    }

    const TWO: &str = r#"
[accelerator]
static_ips = ["10.9.0.101", "10.9.0.102"]
listeners = [{ port = 80 }]
nodes = [{ name = "a", address = "10.9.0.2" }, { name = "b", address = "10.9.0.3", interface = "eth1" }]
ha = { mode = "vrrp", interface = "eth0" }
[[accelerator.endpoint_groups]]
region = "r"
endpoints = [{ address = "10.9.1.1:80" }]
"#;

    #[test]
    fn each_static_ip_prefers_another_node() {
        let acc = accelerator(TWO);
        let a = HaSpec::new(&acc, "a", Path::new(".")).unwrap();
        let b = HaSpec::new(&acc, "b", Path::new(".")).unwrap();
        assert_eq!((a.priority(0), a.priority(1)), (250, 240));
        assert_eq!((b.priority(0), b.priority(1)), (240, 250));
        assert_eq!(a.interface, "eth0");
        assert_eq!(b.interface, "eth1", "a node's own interface wins");
        assert_eq!(a.run_dir, Path::new("/run/portico/portico-a"));
        assert!(HaSpec::new(&acc, "c", Path::new(".")).is_none());
    }

    #[test]
    fn a_missing_daemon_and_interface_are_named_by_their_keys() {
        let mut acc = accelerator(TWO);
        if let Some(ha) = acc.ha.as_mut() {
            ha.daemon = Some("/nonexistent/keepalived".to_owned());
            ha.interface = Some("nosuchif0".to_owned());
        }
        let spec = HaSpec::new(&acc, "a", Path::new(".")).unwrap();
        let errors: Vec<String> = spec
            .check_host(&acc)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("accelerator.ha.daemon:")
                    && e.contains("install Debian's keepalived")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("accelerator.ha.interface:") && e.contains("nosuchif0")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("accelerator.nodes[0].address:")),
            "10.9.0.2 is not on the test host: {errors:?}"
        );
    }
}
