//! Hosts for multi-host tests: network namespaces joined by veth pairs, and one L2 segment
//! (a bridge in a namespace of its own) that hosts attach to. Everything is removed on
//! drop; names carry the test process's id so that runs do not collide.

use std::process::Command;

/// Runs `ip` with `args`, asserting that it succeeded.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` with `args`, ignoring failure (clean-up).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Runs `sysctl -w setting` inside `ns`.
pub fn sysctl(ns: &str, setting: &str) {
    ip(&["netns", "exec", ns, "sysctl", "-q", "-w", setting]);
}

/// A set of namespaces, all named `TAG` + a short host name; deleted on drop with every
/// link and route they were given.
pub struct Namespaces {
    pub tag: String,
    hosts: Vec<String>,
    root_links: Vec<String>,
    root_routes: Vec<String>,
}

impl Namespaces {
    /// An empty set whose names start with `prefix` and this process's id.
    pub fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{prefix}{}", std::process::id() % 100_000),
            hosts: Vec::new(),
            root_links: Vec::new(),
            root_routes: Vec::new(),
        }
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.tag)
    }

    /// Makes the namespace of `host` with its loopback up.
    pub fn host(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        ip_quiet(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.hosts.push(ns.clone());
        ns
    }

    /// A veth pair between `a` and `b` (namespaces, or `None` for this test's own), named
    /// `name_a` and `name_b` on each side, with `addr_a` and `addr_b` (CIDR), both up.
    pub fn link(
        &mut self,
        (a, name_a, addr_a): (Option<&str>, &str, &str),
        (b, name_b, addr_b): (Option<&str>, &str, &str),
    ) {
        let (tmp_a, tmp_b) = (
            format!("{}{}", self.tag, short(name_a)),
            format!("{}{}", self.tag, short(name_b)),
        );
        ip_quiet(&["link", "del", &tmp_a]);
        ip(&[
            "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
        ]);
        for (ns, tmp, name, addr) in [(a, &tmp_a, name_a, addr_a), (b, &tmp_b, name_b, addr_b)] {
            match ns {
                Some(ns) => {
                    ip(&["link", "set", tmp, "netns", ns]);
                    ip(&["-n", ns, "link", "set", tmp, "name", name]);
                    if !addr.is_empty() {
                        ip(&["-n", ns, "addr", "add", addr, "dev", name]);
                    }
                    ip(&["-n", ns, "link", "set", name, "up"]);
                }
                None => {
                    // In the test's own namespace the link keeps its unique name.
                    if !addr.is_empty() {
                        ip(&["addr", "add", addr, "dev", tmp]);
                    }
                    ip(&["link", "set", tmp, "up"]);
                    self.root_links.push(tmp.clone());
                }
            }
        }
    }

    /// The name `link` gave `name` in the test's own namespace.
    pub fn root_name(&self, name: &str) -> String {
        format!("{}{}", self.tag, short(name))
    }

    /// A route in the test's own namespace, removed on drop.
    pub fn root_route(&mut self, prefix: &str, via: &str) {
        ip(&["route", "replace", prefix, "via", via]);
        self.root_routes.push(prefix.to_owned());
    }

    /// A bridge named `br0` in the namespace of `host` (made here), with hosts attached by
    /// [`Namespaces::attach`]: one L2 segment.
    pub fn switch(&mut self, host: &str) -> String {
        let ns = self.host(host);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        ns
    }

    /// Attaches `host` (a namespace, or `None` for the test's own) to the bridge of
    /// `switch`: its side is `iface` with `addr`; the switch's side is named after `port`.
    pub fn attach(
        &mut self,
        switch: &str,
        port: &str,
        host: Option<&str>,
        iface: &str,
        addr: &str,
    ) {
        self.link((Some(switch), port, ""), (host, iface, addr));
        ip(&["-n", switch, "link", "set", port, "master", "br0"]);
    }
}

/// Interface names are at most 15 bytes; the tag takes up to 7.
fn short(name: &str) -> &str {
    &name[..name.len().min(8)]
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for route in &self.root_routes {
            ip_quiet(&["route", "del", route]);
        }
        for link in &self.root_links {
            ip_quiet(&["link", "del", link]);
        }
        for ns in &self.hosts {
            ip_quiet(&["netns", "del", ns]);
        }
    }
}
