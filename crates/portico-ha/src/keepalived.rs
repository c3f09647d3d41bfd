//! Mode `vrrp`: keepalived's configuration for one node, and what keepalived reports back.
//!
//! Each static IP is a VRRP instance of its own (VRRPv3, sub-second advertisements) whose
//! preferred node is another one for each IP, so that every node carries traffic while all
//! are up. Every instance starts as BACKUP and follows a track file that portico writes:
//! `health`, `0` while the node can serve, `1` when it cannot or is stopping. keepalived
//! watches it with inotify, so a verdict takes effect at once: a fault sends a priority-0
//! advertisement and the next node takes the address without waiting for the master-down
//! interval.
//!
//! A node that comes back does not preempt (`nopreempt`): taking an address from a node
//! that serves it would reset that node's open connections to it. The holder hands it back
//! instead, once it hears the preferred node present: it stops new connections to that
//! address, lets the open ones finish, and only then faults the address's instance through
//! a second track file of its own (`hold_N`), so that the preferred node, a backup with the
//! highest priority, takes it at once. Each node makes its presence known with an instance
//! of its own (`portico_node_K`), which it masters while it can serve and every other node
//! backs up: a node hears another one present when the master of that node's instance is
//! that node. VRRPv3 wants an address per instance; a presence instance's is a loopback
//! address (`127.254.0.ID` on `lo`), which reaches nothing.
//!
//! keepalived writes every state change of an instance to a FIFO
//! (`INSTANCE "portico_0" MASTER 250`), which portico reads, and its data dump gives the
//! master each backup hears.

use crate::spec::HaSpec;
use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The files of a keepalived node, in its run directory.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// The configuration portico writes.
    pub(crate) config: PathBuf,
    /// The track file of every instance: `0` serving, `1` not.
    pub(crate) health: PathBuf,
    /// Where the track files of the static IPs' hand-overs go (see [`Files::hold`]).
    dir: PathBuf,
    /// The FIFO keepalived writes state changes to.
    pub(crate) notify: PathBuf,
    /// keepalived's parent process id.
    pub(crate) pid: PathBuf,
    /// keepalived's VRRP process id.
    pub(crate) vrrp_pid: PathBuf,
}

impl Files {
    /// The files in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("keepalived.conf"),
            health: dir.join("health"),
            dir: dir.to_owned(),
            notify: dir.join("notify.fifo"),
            pid: dir.join("keepalived.pid"),
            vrrp_pid: dir.join("vrrp.pid"),
        }
    }

    /// The track file of static IP `index`'s instance: `0`, or `1` while this node hands
    /// the address over.
    pub(crate) fn hold(&self, index: usize) -> PathBuf {
        self.dir.join(format!("hold_{index}"))
    }

    /// keepalived's arguments: this configuration, VRRP only, in the foreground, logging
    /// to its standard error (which portico reads) rather than syslog.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--dont-fork", "--log-console", "--no-syslog", "--vrrp"]
            .map(String::from)
            .to_vec();
        for (flag, path) in [
            ("--use-file", &self.config),
            ("--pid", &self.pid),
            ("--vrrp_pid", &self.vrrp_pid),
        ] {
            args.push(format!("{flag}={}", path.display()));
        }
        args
    }
}

/// A VRRP instance portico configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instance {
    /// The instance of static IP `N`: `portico_N`.
    Address(usize),
    /// The presence of node `K`: `portico_node_K`.
    Node(usize),
}

impl Instance {
    /// Its name in keepalived's configuration.
    pub(crate) fn name(self) -> String {
        match self {
            Self::Address(index) => format!("portico_{index}"),
            Self::Node(index) => format!("portico_node_{index}"),
        }
    }

    /// The instance named `name`, if portico configures one so named.
    fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("portico_")?;
        match rest.strip_prefix("node_") {
            Some(node) => node.parse().ok().map(Self::Node),
            None => rest.parse().ok().map(Self::Address),
        }
    }
}

/// The priority of a node's presence instance on the node itself; the others back it up
/// below [`PRESENCE_BACKUP`].
const PRESENCE_OWNER: u8 = 250;
/// The highest priority of another node's presence instance.
const PRESENCE_BACKUP: u8 = 100;

/// keepalived's configuration for `spec`'s node.
pub(crate) fn render(spec: &HaSpec, files: &Files) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by portico for node {:?} of accelerator {:?}; rewritten at every start.",
        spec.node, spec.accelerator
    );
    let _ = writeln!(c, "global_defs {{");
    let _ = writeln!(c, "    router_id {}", spec.node);
    let _ = writeln!(c, "    vrrp_version 3");
    let _ = writeln!(c, "    vrrp_notify_fifo \"{}\"", files.notify.display());
    // The new master's gratuitous ARPs (unsolicited NAs) go out at once, three 20 ms
    // apart, again after a second, and every two seconds while it holds the address, so
    // that a neighbour that missed or ignored one (a cache entry changed under a second
    // ago is not replaced) moves to it soon.
    let _ = writeln!(c, "    vrrp_garp_master_delay 1");
    let _ = writeln!(c, "    vrrp_garp_master_repeat 3");
    let _ = writeln!(c, "    vrrp_garp_interval 0.02");
    let _ = writeln!(c, "    vrrp_gna_interval 0.02");
    let _ = writeln!(c, "    vrrp_garp_master_refresh 2");
    // Sub-second advertisements must not wait for a busy CPU: a master whose VRRP process
    // is not scheduled for three intervals loses its address to a backup.
    let _ = writeln!(c, "    vrrp_rt_priority 50");
    let _ = writeln!(c, "    vrrp_no_swap");
    let _ = writeln!(c, "}}\n");
    track_file(&mut c, "portico_health", &files.health);
    for index in 0..spec.static_ips.len() {
        track_file(&mut c, &format!("portico_hold_{index}"), &files.hold(index));
    }
    for (index, ip) in spec.static_ips.iter().enumerate() {
        let vrid = usize::from(spec.virtual_router_id) + index;
        head(
            &mut c,
            spec,
            Instance::Address(index),
            vrid,
            spec.priority(index),
        );
        let _ = writeln!(
            c,
            "    advert_int {:.2}",
            spec.advert_interval.as_secs_f64()
        );
        // Addresses move back by hand-over (see the module documentation).
        let _ = writeln!(c, "    nopreempt");
        let _ = writeln!(
            c,
            "    track_file {{\n        portico_health\n        portico_hold_{index}\n    }}"
        );
        let prefix = crate::host_prefix(*ip);
        let _ = writeln!(
            c,
            "    virtual_ipaddress {{\n        {ip}/{prefix} dev {}\n    }}",
            spec.interface
        );
        let _ = writeln!(c, "}}");
    }
    for node in 0..spec.nodes.len() {
        let vrid = usize::from(spec.virtual_router_id) + spec.static_ips.len() + node;
        let n = spec.nodes.len();
        let priority = if node == spec.me {
            PRESENCE_OWNER
        } else {
            // Below the owner, each node one less in the order after it.
            let rank = (spec.me + n - node) % n;
            PRESENCE_BACKUP
                .saturating_sub(u8::try_from(rank).unwrap_or(u8::MAX))
                .max(1)
        };
        head(&mut c, spec, Instance::Node(node), vrid, priority);
        let _ = writeln!(
            c,
            "    advert_int {:.2}",
            spec.advert_interval.as_secs_f64()
        );
        let _ = writeln!(c, "    track_file {{\n        portico_health\n    }}");
        let _ = writeln!(
            c,
            "    virtual_ipaddress {{\n        127.254.0.{vrid}/32 dev lo\n    }}"
        );
        let _ = writeln!(c, "}}");
    }
    c
}

/// A track file whose value but 0 is a fault (weight 0).
fn track_file(c: &mut String, name: &str, path: &Path) {
    let _ = writeln!(
        c,
        "track_file {name} {{\n    file \"{}\"\n    weight 0\n}}",
        path.display()
    );
}

/// The opening lines of an instance, down to its peers.
fn head(c: &mut String, spec: &HaSpec, instance: Instance, vrid: usize, priority: u8) {
    let _ = writeln!(c, "\nvrrp_instance {} {{", instance.name());
    let _ = writeln!(c, "    state BACKUP");
    let _ = writeln!(c, "    interface {}", spec.interface);
    let _ = writeln!(c, "    virtual_router_id {vrid}");
    let _ = writeln!(c, "    priority {priority}");
    if spec.unicast {
        let _ = writeln!(c, "    unicast_src_ip {}", spec.address());
        let _ = writeln!(c, "    unicast_peer {{");
        for (i, (_, address)) in spec.nodes.iter().enumerate() {
            if i != spec.me {
                let _ = writeln!(c, "        {address}");
            }
        }
        let _ = writeln!(c, "    }}");
    }
}

/// The state of a VRRP instance, as keepalived names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    /// Holds the address.
    Master,
    /// Ready to take the address over.
    Backup,
    /// Cannot hold the address (portico not serving, interface down).
    Fault,
    /// keepalived is stopping the instance.
    Stop,
}

impl VrrpState {
    /// keepalived's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Master => "MASTER",
            Self::Backup => "BACKUP",
            Self::Fault => "FAULT",
            Self::Stop => "STOP",
        }
    }
}

/// What keepalived's data dump (SIGUSR1, written to `$TMPDIR/keepalived.data`) says of
/// one instance: its state, and the master it hears when it is a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dumped {
    /// `MASTER`, `BACKUP`, `FAULT`…
    pub(crate) state: Option<String>,
    /// The source address of the master's advertisements, when a backup.
    pub(crate) master: Option<IpAddr>,
}

/// A data dump: each static IP's instance and each node's presence instance, by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dump {
    /// The static IPs' instances.
    pub(crate) addresses: Vec<Dumped>,
    /// The nodes' presence instances.
    pub(crate) nodes: Vec<Dumped>,
}

impl Dump {
    /// Whether node `index`, at `address`, masters its presence instance as this node
    /// hears it: it is up, can serve, and its advertisements reach this node.
    pub(crate) fn present(&self, index: usize, address: IpAddr) -> bool {
        self.nodes
            .get(index)
            .is_some_and(|d| d.state.as_deref() == Some("BACKUP") && d.master == Some(address))
    }
}

/// The file keepalived dumps its data to, in its `TMPDIR`.
pub(crate) const DUMP_FILE: &str = "keepalived.data";

/// The instances of `addresses` static IPs and `nodes` nodes in a data dump.
pub(crate) fn parse_dump(text: &str, addresses: usize, nodes: usize) -> Dump {
    let mut dump = Dump {
        addresses: vec![Dumped::default(); addresses],
        nodes: vec![Dumped::default(); nodes],
    };
    let mut current: Option<&mut Dumped> = None;
    for line in text.lines() {
        // An instance's fields are indented under it; a section (`------< Interfaces
        // >------`) or any entry at the instance's own depth ends it.
        if line.starts_with("------<") || (line.starts_with(' ') && !line.starts_with("  ")) {
            current = None;
        }
        let Some((key, value)) = line.trim().split_once(" = ") else {
            continue;
        };
        match key {
            "VRRP Instance" => {
                current = match Instance::parse(value) {
                    Some(Instance::Address(i)) => dump.addresses.get_mut(i),
                    Some(Instance::Node(i)) => dump.nodes.get_mut(i),
                    None => None,
                };
            }
            "State" => {
                if let Some(instance) = current.as_deref_mut() {
                    instance.state = Some(value.to_owned());
                }
            }
            "Master router" => {
                if let Some(instance) = current.as_deref_mut() {
                    instance.master = value.parse().ok();
                }
            }
            _ => {}
        }
    }
    dump
}

/// One line keepalived wrote to the notify FIFO: `INSTANCE "portico_0" MASTER 250` gives
/// the instance and its state; other lines (groups, `DELETED` instances) give nothing.
pub(crate) fn parse_notify(line: &str) -> Option<(Instance, VrrpState)> {
    let mut words = line.split_whitespace();
    if words.next()? != "INSTANCE" {
        return None;
    }
    let instance = Instance::parse(words.next()?.trim_matches('"'))?;
    let state = match words.next()? {
        "MASTER" => VrrpState::Master,
        "BACKUP" => VrrpState::Backup,
        "FAULT" => VrrpState::Fault,
        "STOP" => VrrpState::Stop,
        _ => return None,
    };
    Some((instance, state))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(unicast: bool) -> HaSpec {
        // Unicast VRRP needs node addresses of each static IP's family.
        let ips = if unicast {
            r#"["10.9.0.101"]"#
        } else {
            r#"["10.9.0.101", "2001:db8::101"]"#
        };
        let text = format!(
            r#"
[accelerator]
name = "acc"
static_ips = {ips}
listeners = [{{ port = 80 }}]
nodes = [{{ name = "a", address = "10.9.0.2" }}, {{ name = "b", address = "10.9.0.3" }}]
ha = {{ mode = "vrrp", interface = "lan0", advert_interval_seconds = 0.25, unicast = {unicast} }}
[[accelerator.endpoint_groups]]
region = "r"
endpoints = [{{ address = "10.9.1.1:80" }}]
"#
        );
        let acc = portico_config::parse(&text, "test")
            .map_err(|e| e.to_string())
            .unwrap()
            .accelerator
            .unwrap();
        HaSpec::new(&acc, "b", Path::new("/base")).unwrap()
    }

    #[test]
    fn every_static_ip_is_an_instance_that_follows_portico_health() {
        let spec = spec(false);
        let files = Files::in_dir(Path::new("/run/p"));
        let text = render(&spec, &files);
        assert!(text.contains("vrrp_version 3"), "{text}");
        assert!(
            text.contains("vrrp_notify_fifo \"/run/p/notify.fifo\""),
            "{text}"
        );
        assert!(
            text.contains("file \"/run/p/health\"\n    weight 0"),
            "{text}"
        );
        // IP 0 prefers node a (b backs it up); IP 1 prefers b.
        assert!(
            text.contains(
                "vrrp_instance portico_0 {\n    state BACKUP\n    interface lan0\n    virtual_router_id 51\n    priority 240\n    advert_int 0.25\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("virtual_router_id 52\n    priority 250"),
            "{text}"
        );
        assert!(text.contains("10.9.0.101/32 dev lan0"), "{text}");
        assert!(text.contains("2001:db8::101/128 dev lan0"), "{text}");
        assert!(!text.contains("unicast"), "{text}");
        assert!(!text.contains("preempt_delay"), "{text}");
        // Addresses come back by hand-over, each with a track file of its own.
        assert_eq!(text.matches("    nopreempt\n").count(), 2, "{text}");
        assert!(
            text.contains(
                "track_file portico_hold_1 {\n    file \"/run/p/hold_1\"\n    weight 0\n}"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "    track_file {\n        portico_health\n        portico_hold_0\n    }"
            ),
            "{text}"
        );
        // Each node's presence: b masters its own (id 51 + 2 + 1), backs up a's.
        assert!(
            text.contains("vrrp_instance portico_node_1 {\n    state BACKUP\n    interface lan0\n    virtual_router_id 54\n    priority 250\n    advert_int 0.25\n    track_file {\n        portico_health\n    }\n    virtual_ipaddress {\n        127.254.0.54/32 dev lo\n    }\n}"),
            "{text}"
        );
        assert!(
            text.contains("vrrp_instance portico_node_0 {\n    state BACKUP\n    interface lan0\n    virtual_router_id 53\n    priority 99\n"),
            "{text}"
        );
        assert_eq!(text.matches("vrrp_instance").count(), 4, "{text}");
    }

    #[test]
    fn unicast_names_the_other_nodes() {
        let text = render(&spec(true), &Files::in_dir(Path::new("/r")));
        // Every instance, presence ones too.
        assert_eq!(
            text.matches("unicast_src_ip 10.9.0.3\n    unicast_peer {\n        10.9.0.2\n    }")
                .count(),
            3,
            "{text}"
        );
    }

    #[test]
    fn notify_lines_give_the_static_ip_and_its_state() {
        assert_eq!(
            parse_notify("INSTANCE \"portico_1\" MASTER 250"),
            Some((Instance::Address(1), VrrpState::Master))
        );
        assert_eq!(
            parse_notify("INSTANCE \"portico_0\" FAULT 0"),
            Some((Instance::Address(0), VrrpState::Fault))
        );
        assert_eq!(
            parse_notify("INSTANCE \"portico_node_2\" BACKUP 99"),
            Some((Instance::Node(2), VrrpState::Backup))
        );
        for line in [
            "",
            "GROUP \"g\" MASTER",
            "INSTANCE \"other\" MASTER 1",
            "INSTANCE \"portico_x\" BACKUP 1",
            "INSTANCE \"portico_node_\" BACKUP 1",
            "INSTANCE \"portico_0\" DELETED",
            "INSTANCE",
        ] {
            assert_eq!(parse_notify(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_data_dump_gives_each_instances_state_and_master() {
        let text = "------< VRRP Topology >------\n VRRP Instance = portico_0\n   VRRP Version = 3\n   State = BACKUP\n   Master router = 10.9.0.2\n   Master priority = 250\n VRRP Instance = other\n   State = MASTER\n VRRP Instance = portico_1\n   State = MASTER\n VRRP Instance = portico_9\n   State = MASTER\n VRRP Instance = portico_node_0\n   State = BACKUP\n   Master router = 10.9.0.2\n VRRP Instance = portico_node_1\n   State = MASTER\n------< Interfaces >------\n Name = lan0\n   State = UP, RUNNING\n";
        let dump = parse_dump(text, 2, 2);
        assert_eq!(dump.addresses[0].state.as_deref(), Some("BACKUP"));
        assert_eq!(dump.addresses[0].master, Some("10.9.0.2".parse().unwrap()));
        assert_eq!(dump.addresses[1].state.as_deref(), Some("MASTER"));
        assert_eq!(dump.addresses[1].master, None);
        // Node 0 is heard at its own address; node 1 is this one.
        assert!(dump.present(0, "10.9.0.2".parse().unwrap()));
        assert!(!dump.present(0, "10.9.0.3".parse().unwrap()));
        assert!(!dump.present(1, "10.9.0.3".parse().unwrap()));
        // The interfaces' states after the instances are theirs, not the last instance's.
        assert_eq!(dump.nodes[1].state.as_deref(), Some("MASTER"));
        assert!(!dump.present(5, "10.9.0.3".parse().unwrap()));
        let empty = parse_dump("", 2, 1);
        assert_eq!(empty.addresses, vec![Dumped::default(); 2]);
        assert_eq!(empty.nodes, vec![Dumped::default(); 1]);
        assert_eq!(
            parse_dump("garbage = = =\n State = x", 1, 0),
            Dump {
                addresses: vec![Dumped::default()],
                nodes: Vec::new(),
            }
        );
    }

    #[test]
    fn arguments_keep_keepalived_in_the_foreground_on_its_own_files() {
        let args = Files::in_dir(Path::new("/r")).args();
        assert!(args.contains(&"--dont-fork".to_owned()));
        assert!(args.contains(&"--use-file=/r/keepalived.conf".to_owned()));
        assert!(args.contains(&"--vrrp_pid=/r/vrrp.pid".to_owned()));
    }
}
