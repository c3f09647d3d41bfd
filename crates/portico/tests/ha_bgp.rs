//! Static IPs announced by BGP from two edge nodes: real BIRD on each node and on a router
//! that spreads flows over them by ECMP, under a steady stream of requests.
//!
//! The client (this test, in its own namespace) reaches the static IPs through a router
//! host running BIRD 2 (`merge paths on`, `fib_multipath_hash_policy=1`). The router and
//! the two edge hosts (`portico up FILE --node edge-a|edge-b`, each running BIRD) and a
//! region host share one segment (a bridge), so cutting an edge's link leaves the router's
//! interface up and BFD is what notices. Both edges announce both static IPs; the router
//! holds two next hops for each.
//!
//! While new-connection and keep-alive requests run, edge-a goes through
//! `support::failover`'s cases: SIGTERM, SIGKILL, a cut link, and each time back. Each case
//! prints how many requests failed and how long each address went unanswered.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::failover::{self, Edges, wait_for};
use support::netns::{Namespaces, ip, sysctl};
use support::{Portico, Scratch, hello_bin};

const VIPS: [&str; 2] = ["10.82.1.1", "10.82.1.2"];

fn config() -> String {
    format!(
        r#"
[accelerator]
name = "anycast"
static_ips = ["{}", "{}"]
nodes = [
  {{ name = "edge-a", address = "10.82.10.2" }},
  {{ name = "edge-b", address = "10.82.10.3" }},
]
ha = {{ mode = "bgp", asn = 65001, peers = [{{ address = "10.82.10.1", asn = 65000 }}] }}
[[accelerator.listeners]]
port = 80
[[accelerator.endpoint_groups]]
region = "region"
health_check_interval_seconds = 0.2
threshold_count = 2
endpoints = [{{ load_balancer = "web" }}]

[load_balancers.web]
node = "region"
[[load_balancers.web.listeners]]
address = "10.82.10.4"
port = 9080
proxy_protocol_v2 = true
default_action = {{ type = "forward", target_group = "hello" }}

[target_groups.hello]
target_type = "lambda"
function = "hello"

[functions.hello]
command = ["{}"]

[admin_api]
address = "0.0.0.0"
port = 9002
{}
"#,
        VIPS[0],
        VIPS[1],
        hello_bin().display(),
        support::test_access_keys()
    )
}

/// The router's BIRD: a session to each edge with BFD, every path into the kernel.
const ROUTER_BIRD: &str = r#"
log stderr all;
router id 10.82.10.1;
protocol device { scan time 10; }
protocol kernel {
    ipv4 { import none; export all; };
    merge paths on;
}
protocol bfd {
    interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
template bgp edge {
    local 10.82.10.1 as 65000;
    bfd on;
    hold time 3;
    keepalive time 1;
    connect retry time 1;
    # BIRD's default waits a minute before a session that failed (BFD down) may restart.
    error wait time 1, 5;
    ipv4 { import all; export none; };
}
protocol bgp edge_a from edge { neighbor 10.82.10.2 as 65001; }
protocol bgp edge_b from edge { neighbor 10.82.10.3 as 65001; }
"#;

/// The router's BIRD, stopped on drop.
struct Router {
    child: Child,
    _scratch: Scratch,
}

impl Router {
    fn start(ns: &str) -> Self {
        let scratch = Scratch::new("router");
        let conf = scratch.write("bird.conf", ROUTER_BIRD);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(scratch.0.join("bird.ctl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            _scratch: scratch,
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn build() -> Namespaces {
    let mut hosts = Namespaces::new("pb");
    let switch = hosts.switch("s");
    let router = hosts.host("t");
    sysctl(&router, "net.ipv4.ip_forward=1");
    sysctl(&router, "net.ipv4.fib_multipath_hash_policy=1");
    hosts.link(
        (None, "cli", "10.82.9.1/24"),
        (Some(&router), "up0", "10.82.9.2/24"),
    );
    hosts.root_route("10.82.1.0/24", "10.82.9.2");
    // The edges' admin APIs, for status.
    hosts.root_route("10.82.10.0/24", "10.82.9.2");
    hosts.attach(&switch, "pt", Some(&router), "lan0", "10.82.10.1/24");
    for (host, address) in [
        ("a", "10.82.10.2/24"),
        ("b", "10.82.10.3/24"),
        ("r", "10.82.10.4/24"),
    ] {
        let ns = hosts.host(host);
        hosts.attach(&switch, &format!("p{host}"), Some(&ns), "lan0", address);
        if host != "r" {
            // Answers to clients go back through the router.
            ip(&["-n", &ns, "route", "add", "default", "via", "10.82.10.1"]);
        }
    }
    hosts
}

/// The next hops the router has for `vip`.
fn next_hops(router: &str, vip: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", router, "route", "show", vip])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn both(router: &str) -> bool {
    VIPS.iter()
        .all(|vip| next_hops(router, vip) == ["10.82.10.2", "10.82.10.3"])
}

fn only_b(router: &str) -> bool {
    VIPS.iter()
        .all(|vip| next_hops(router, vip) == ["10.82.10.3"])
}

/// The edge at `address`'s `ha` status.
fn ha_status(address: &str) -> serde_json::Value {
    support::admin_get_signed(&format!("{address}:9002"), "/status")["ha"].clone()
}

/// Sends one request on `conn` (kept alive) and reads its answer's head and body.
fn ask(conn: &mut TcpStream) -> std::io::Result<String> {
    conn.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\n\r\n")?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        text.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&text).into_owned();
        if let Some((head, body)) = s.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(s);
            }
        }
    }
}

/// The edge host (`a` or `b`) whose kernel has the connection from the client port `port`.
fn holder(hosts: &Namespaces, port: u16) -> &'static str {
    ["a", "b"]
        .into_iter()
        .find(|host| {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &hosts.ns(host),
                    "ss",
                    "-Htn",
                    "state",
                    "established",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("10.82.9.1:{port}"))
        })
        .expect("an edge has the connection")
}

/// A connection the router moves to the other edge (as its hash does when a node joins)
/// goes on: that edge has no socket for it and passes its packets on to the edge that has
/// it, which answers (second chance). Without it, the other edge would reset it.
fn moved_connection_goes_on(hosts: &Namespaces) {
    let router = hosts.ns("t");
    let mut conn = TcpStream::connect(format!("{}:80", VIPS[0])).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(ask(&mut conn).unwrap().starts_with("HTTP/1.1 200"));
    let owner = holder(hosts, conn.local_addr().unwrap().port());
    let (owner_address, other) = if owner == "a" {
        ("10.82.10.2", "10.82.10.3")
    } else {
        ("10.82.10.3", "10.82.10.2")
    };
    let other_status = ha_status(other);
    assert_eq!(
        other_status["second_chance"]["enabled"], true,
        "{other_status}"
    );
    assert_eq!(
        other_status["second_chance"]["live"],
        serde_json::json!(["edge-a", "edge-b"]),
        "{other_status}"
    );
    // The router sends this client's packets to the other edge only.
    ip(&[
        "-n", &router, "route", "add", VIPS[0], "via", other, "table", "77",
    ]);
    ip(&[
        "-n",
        &router,
        "rule",
        "add",
        "to",
        VIPS[0],
        "from",
        "10.82.9.1",
        "lookup",
        "77",
        "pref",
        "100",
    ]);
    let answer = ask(&mut conn);
    ip(&["-n", &router, "rule", "del", "pref", "100"]);
    ip(&["-n", &router, "route", "flush", "table", "77"]);
    let answer = answer.expect("the moved connection is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!("a connection of the edge at {owner_address} moved to {other}: still answered");
    // And a new connection sent to the other edge is its own.
    drop(conn);
}

#[test]
fn anycast_static_ips_survive_a_node_stopping_dying_and_losing_its_link() {
    let hosts = build();
    let router = hosts.ns("t");
    let _bird = Router::start(&router);
    let config = config();
    let _region = Portico::start_in(&config, Some(&hosts.ns("r")), Some("region"));
    let a = Portico::start_in(&config, Some(&hosts.ns("a")), Some("edge-a"));
    let b = Portico::start_in(&config, Some(&hosts.ns("b")), Some("edge-b"));
    let took = wait_for(
        "the router has both edges as next hops",
        Duration::from_secs(20),
        || both(&router),
    );
    eprintln!(
        "both edges announced after {took:?}: {:?}",
        next_hops(&router, VIPS[0])
    );
    let status = ha_status("10.82.10.2");
    assert_eq!(status["mode"], "bgp");
    assert_eq!(status["static_ips"][0]["announced_here"], true, "{status}");
    wait_for(
        "edge-a sees its session established",
        Duration::from_secs(5),
        || {
            ha_status("10.82.10.2")["peers"][0]["info"]
                .as_str()
                .is_some_and(|i| i.starts_with("Established"))
        },
    );

    let text = support::portico_ok(&["status", "--endpoint", "http://10.82.10.2:9002"]);
    eprintln!("{text}");
    assert!(
        text.contains("high availability bgp  node edge-a (10.82.10.2)  bird running"),
        "{text}"
    );
    assert!(
        text.contains("peer 10.82.10.1 AS65000 up Established"),
        "{text}"
    );
    wait_for(
        "edge-a passes stray packets on to edge-b",
        Duration::from_secs(5),
        || ha_status("10.82.10.2")["second_chance"]["next"] == "edge-b",
    );
    let text = support::portico_ok(&["status", "--endpoint", "http://10.82.10.2:9002"]);
    assert!(
        text.contains("second chance: live nodes edge-a, edge-b; stray packets go on to edge-b"),
        "{text}"
    );
    // Each node hears, over iBGP with the other edge nodes, who announces each address.
    wait_for(
        "edge-a names both announcers",
        Duration::from_secs(10),
        || {
            ha_status("10.82.10.2")["static_ips"][0]["announced_by"]
                == serde_json::json!(["edge-a", "edge-b"])
        },
    );
    let text = support::portico_ok(&["status", "--endpoint", "http://10.82.10.2:9002"]);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("10.82.1.1")
            && l.contains("yes")
            && l.ends_with("edge-a, edge-b")),
        "{text}"
    );

    moved_connection_goes_on(&hosts);

    let targets: Vec<SocketAddr> = VIPS
        .iter()
        .map(|ip| format!("{ip}:80").parse().unwrap())
        .collect();
    let without_a = config.replace("  { name = \"edge-a\", address = \"10.82.10.2\" },\n", "");
    assert_ne!(without_a, config);
    let edges = Edges {
        config: &config,
        config_without_a: &without_a,
        namespace: &hosts.ns("a"),
        daemon: ("bird", "/run/portico/anycast-edge-a"),
        moved_away: &|| only_b(&router),
        settled: &|| both(&router),
        // The link's routes went with it.
        after_relink: &|| {
            ip(&[
                "-n",
                &hosts.ns("a"),
                "route",
                "replace",
                "default",
                "via",
                "10.82.10.1",
            ])
        },
    };
    failover::run(&targets, &edges, a);
    drop(b);
}
