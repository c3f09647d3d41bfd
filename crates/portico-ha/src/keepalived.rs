//! Mode `vrrp`: keepalived's configuration for one node, and what keepalived reports back.
//!
//! Each static IP is a VRRP instance of its own (VRRPv3, sub-second advertisements) whose
//! preferred node is another one for each IP, so that every node carries traffic while all
//! are up. Every instance starts as BACKUP and follows one track file that portico writes:
//! `0` while the node can serve, `1` when it cannot or is stopping. keepalived watches the
//! file with inotify, so a verdict takes effect at once: a fault sends a priority-0
//! advertisement and the next node takes the address without waiting for the master-down
//! interval. A node that comes back waits `preempt_delay` before taking back the addresses
//! it prefers. keepalived writes every state change of an instance to a FIFO
//! (`INSTANCE "portico_0" MASTER 250`), which portico reads for its status.

use crate::spec::HaSpec;
use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The files of a keepalived node, in its run directory.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// The configuration portico writes.
    pub(crate) config: PathBuf,
    /// The track file: `0` serving, `1` not.
    pub(crate) health: PathBuf,
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
            notify: dir.join("notify.fifo"),
            pid: dir.join("keepalived.pid"),
            vrrp_pid: dir.join("vrrp.pid"),
        }
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

/// The VRRP instance of static IP `index`.
pub(crate) fn instance_name(index: usize) -> String {
    format!("portico_{index}")
}

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
    let _ = writeln!(c, "track_file portico_health {{");
    let _ = writeln!(c, "    file \"{}\"", files.health.display());
    // Weight 0: any value but 0 is a fault.
    let _ = writeln!(c, "    weight 0");
    let _ = writeln!(c, "}}");
    for (index, ip) in spec.static_ips.iter().enumerate() {
        instance(&mut c, spec, index, *ip);
    }
    c
}

fn instance(c: &mut String, spec: &HaSpec, index: usize, ip: IpAddr) {
    let vrid = usize::from(spec.virtual_router_id) + index;
    let _ = writeln!(c, "\nvrrp_instance {} {{", instance_name(index));
    let _ = writeln!(c, "    state BACKUP");
    let _ = writeln!(c, "    interface {}", spec.interface);
    let _ = writeln!(c, "    virtual_router_id {vrid}");
    let _ = writeln!(c, "    priority {}", spec.priority(index));
    let _ = writeln!(
        c,
        "    advert_int {:.2}",
        spec.advert_interval.as_secs_f64()
    );
    let _ = writeln!(c, "    preempt_delay {}", spec.preempt_delay.as_secs_f64());
    let _ = writeln!(c, "    track_file {{\n        portico_health\n    }}");
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
    let prefix = crate::host_prefix(ip);
    let _ = writeln!(
        c,
        "    virtual_ipaddress {{\n        {ip}/{prefix} dev {}\n    }}",
        spec.interface
    );
    let _ = writeln!(c, "}}");
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
/// a static IP's instance: its state, and the master it hears when it is a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dumped {
    /// `MASTER`, `BACKUP`, `FAULT`…
    pub(crate) state: Option<String>,
    /// The source address of the master's advertisements, when a backup.
    pub(crate) master: Option<IpAddr>,
}

/// The file keepalived dumps its data to, in its `TMPDIR`.
pub(crate) const DUMP_FILE: &str = "keepalived.data";

/// Each static IP's instance in a data dump, by index.
pub(crate) fn parse_dump(text: &str, count: usize) -> Vec<Dumped> {
    let mut found = vec![Dumped::default(); count];
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(" = ") else {
            continue;
        };
        match key {
            "VRRP Instance" => {
                current = value
                    .strip_prefix("portico_")
                    .and_then(|i| i.parse().ok())
                    .filter(|i| *i < count);
            }
            "State" => {
                if let Some(i) = current {
                    found[i].state = Some(value.to_owned());
                }
            }
            "Master router" => {
                if let Some(i) = current {
                    found[i].master = value.parse().ok();
                }
            }
            _ => {}
        }
    }
    found
}

/// One line keepalived wrote to the notify FIFO: `INSTANCE "portico_0" MASTER 250` gives
/// static IP 0 and its state; other lines (groups, `DELETED` instances) give nothing.
pub(crate) fn parse_notify(line: &str) -> Option<(usize, VrrpState)> {
    let mut words = line.split_whitespace();
    if words.next()? != "INSTANCE" {
        return None;
    }
    let name = words.next()?.trim_matches('"');
    let index = name.strip_prefix("portico_")?.parse().ok()?;
    let state = match words.next()? {
        "MASTER" => VrrpState::Master,
        "BACKUP" => VrrpState::Backup,
        "FAULT" => VrrpState::Fault,
        "STOP" => VrrpState::Stop,
        _ => return None,
    };
    Some((index, state))
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
        assert_eq!(text.matches("portico_health\n").count(), 2, "{text}");
    }

    #[test]
    fn unicast_names_the_other_nodes() {
        let text = render(&spec(true), &Files::in_dir(Path::new("/r")));
        assert!(
            text.contains("unicast_src_ip 10.9.0.3\n    unicast_peer {\n        10.9.0.2\n    }"),
            "{text}"
        );
    }

    #[test]
    fn notify_lines_give_the_static_ip_and_its_state() {
        assert_eq!(
            parse_notify("INSTANCE \"portico_1\" MASTER 250"),
            Some((1, VrrpState::Master))
        );
        assert_eq!(
            parse_notify("INSTANCE \"portico_0\" FAULT 0"),
            Some((0, VrrpState::Fault))
        );
        for line in [
            "",
            "GROUP \"g\" MASTER",
            "INSTANCE \"other\" MASTER 1",
            "INSTANCE \"portico_x\" BACKUP 1",
            "INSTANCE \"portico_0\" DELETED",
            "INSTANCE",
        ] {
            assert_eq!(parse_notify(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_data_dump_gives_each_instances_state_and_master() {
        let text = "------< VRRP Topology >------\n VRRP Instance = portico_0\n   VRRP Version = 3\n   State = BACKUP\n   Master router = 10.9.0.2\n   Master priority = 250\n VRRP Instance = other\n   State = MASTER\n VRRP Instance = portico_1\n   State = MASTER\n VRRP Instance = portico_9\n   State = MASTER\n";
        let dumped = parse_dump(text, 2);
        assert_eq!(dumped[0].state.as_deref(), Some("BACKUP"));
        assert_eq!(dumped[0].master, Some("10.9.0.2".parse().unwrap()));
        assert_eq!(dumped[1].state.as_deref(), Some("MASTER"));
        assert_eq!(dumped[1].master, None);
        assert_eq!(parse_dump("", 2), vec![Dumped::default(); 2]);
        assert_eq!(
            parse_dump("garbage = = =\n State = x", 1),
            vec![Dumped::default()]
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
