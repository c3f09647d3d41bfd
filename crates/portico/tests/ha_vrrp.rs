//! Static IPs on two edge nodes with VRRP: `examples/ha.toml` as it is, real keepalived on
//! each node, under a steady stream of requests.
//!
//! One L2 segment (a bridge in a namespace of its own) joins the client (this test, in its
//! own namespace), two edge hosts (`edge-a`, `edge-b`, each `portico up FILE --node …`
//! running keepalived) and a region host (a load balancer and the demo function). The two
//! static IPs are on the segment's subnet; the client reaches whichever node holds each by
//! ARP. `edge-a` prefers the first IP, `edge-b` the second, so both carry traffic.
//!
//! While new-connection and keep-alive requests run against both IPs, edge-a (the holder
//! of the first) goes through `support::failover`'s cases: SIGTERM, SIGKILL, a cut link, and
//! each time back. Each case prints how many requests failed and how long each address went
//! unanswered.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use support::Portico;
use support::failover::{self, Edges, wait_for};
use support::netns::Namespaces;

const VIPS: [&str; 2] = ["10.81.0.101", "10.81.0.102"];

/// `examples/ha.toml`, as it is.
fn config() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ha.toml");
    std::fs::read_to_string(path).unwrap()
}

/// The segment and its hosts.
fn build() -> Namespaces {
    let mut hosts = Namespaces::new("pv");
    let switch = hosts.switch("s");
    hosts.attach(&switch, "pc", None, "cli", "10.81.0.1/24");
    for (host, address) in [
        ("a", "10.81.0.2/24"),
        ("b", "10.81.0.3/24"),
        ("r", "10.81.0.4/24"),
    ] {
        let ns = hosts.host(host);
        hosts.attach(&switch, &format!("p{host}"), Some(&ns), "lan0", address);
    }
    hosts
}

/// The edge node in namespace `ns`'s view of its VRRP instances: each static IP's state.
fn vrrp_states(ns: &str) -> Option<Vec<String>> {
    vrrp_field(ns, "state")
}

/// The `ha` status of the edge in namespace `ns`, from its admin API on that host's
/// loopback.
fn ha_status(ns: &str) -> Option<serde_json::Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "2"])
        .arg("http://127.0.0.1:9002/status")
        .output()
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(doc["ha"].clone())
}

/// Each static IP's `field` in the `ha` status of the edge in namespace `ns`.
fn vrrp_field(ns: &str, field: &str) -> Option<Vec<String>> {
    let doc = ha_status(ns)?;
    Some(
        doc["static_ips"]
            .as_array()?
            .iter()
            .map(|ip| ip[field].as_str().unwrap_or("none").to_owned())
            .collect(),
    )
}

/// Both nodes up, each holding the static IP it prefers.
fn settled(hosts: &Namespaces) -> bool {
    vrrp_states(&hosts.ns("a")).is_some_and(|s| s == ["MASTER", "BACKUP"])
        && vrrp_states(&hosts.ns("b")).is_some_and(|s| s == ["BACKUP", "MASTER"])
}

/// edge-b holds both static IPs.
fn b_holds_both(hosts: &Namespaces) -> bool {
    vrrp_states(&hosts.ns("b")).is_some_and(|s| s == ["MASTER", "MASTER"])
}

#[test]
fn static_ips_survive_a_node_stopping_dying_and_losing_its_link() {
    let hosts = build();
    let config = config();
    let _region = Portico::start_in(&config, Some(&hosts.ns("r")), Some("region"));
    let a = Portico::start_in(&config, Some(&hosts.ns("a")), Some("edge-a"));
    let _b = Portico::start_in(&config, Some(&hosts.ns("b")), Some("edge-b"));
    assert_eq!(
        a.static_addresses.len(),
        2,
        "every node binds every static IP"
    );
    let took = wait_for(
        "each node holds its static IP",
        Duration::from_secs(20),
        || settled(&hosts),
    );
    eprintln!("both nodes up: each holds its preferred static IP after {took:?}");
    // Each node knows who holds the other address: keepalived's own view of its peer.
    wait_for(
        "each node names the holder of each address",
        Duration::from_secs(5),
        || {
            ["a", "b"].iter().all(|n| {
                vrrp_field(&hosts.ns(n), "held_by").is_some_and(|h| h == ["edge-a", "edge-b"])
            })
        },
    );
    // Each hears the other present (its presence instance), which hand-backs wait for.
    wait_for(
        "each node hears the other present",
        Duration::from_secs(5),
        || {
            ["a", "b"]
                .iter()
                .all(|n| ha_status(&hosts.ns(n)).is_some_and(|s| s["peers"][0]["present"] == true))
        },
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &hosts.ns("b")])
        .arg(support::portico_bin())
        .args(["status", "--endpoint", "http://127.0.0.1:9002"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        text.contains("high availability vrrp  node edge-b (10.81.0.3)  keepalived running"),
        "{text}"
    );
    let line = |ip: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(ip))
            .unwrap_or("")
            .to_owned()
    };
    let first = line("10.81.0.101");
    assert!(
        first.contains("BACKUP") && first.contains("edge-a"),
        "{text}"
    );
    let second = line("10.81.0.102");
    assert!(
        second.contains("MASTER") && second.contains("edge-b"),
        "{text}"
    );
    assert!(
        text.contains("health: serving (2 static addresses bound; healthy endpoints in region)"),
        "{text}"
    );
    assert!(
        text.contains("peer node edge-a 10.81.0.2 present"),
        "{text}"
    );

    let targets: Vec<SocketAddr> = VIPS
        .iter()
        .map(|ip| format!("{ip}:80").parse().unwrap())
        .collect();
    let without_a = config.replace("  { name = \"edge-a\", address = \"10.81.0.2\" },\n", "");
    assert_ne!(without_a, config);
    let edges = Edges {
        config: &config,
        config_without_a: &without_a,
        namespace: &hosts.ns("a"),
        daemon: ("keepalived", "/run/portico/ha-edge-a"),
        moved_away: &|| b_holds_both(&hosts),
        settled: &|| settled(&hosts),
        after_relink: &|| {},
    };
    failover::run(&targets, &edges, a);
}
