//! Many hosts: one edge and two regions, each a network namespace running
//! `portico up FILE --node NAME` from the same file. The client (this test, in the root
//! namespace) reaches the edge's static IPs over a veth pair; the edge reaches each region
//! over a link with its own one-way delay (near: 5 ms, far: 20 ms).
//!
//! The test kernel has no `sch_netem` (`tc qdisc add … netem` answers "Specified qdisc kind
//! is unknown"), so each region link is a user-space netem (`functions/netem.py`): two TUN
//! devices and a process moving packets between them after the delay, which can also cut
//! the link (drop everything both ways) and restore it.
//!
//! A steady stream of requests, each on a new connection to one of the two static IPs in
//! turn, runs through three phases: both regions up (all to the nearest), the near region
//! cut off (every request answered; the failover is counted, timed and reported), and the
//! near region back (traffic returns to it).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use support::netns::ip;
use support::{Portico, hello_bin};

/// Health checks every 200 ms, 3 in a row to change a verdict.
const INTERVAL: f64 = 0.2;
const THRESHOLD: u32 = 3;

/// The namespaces and links of one run; removed on drop.
struct Hosts {
    tag: String,
    links: Vec<Link>,
}

impl Hosts {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.tag)
    }

    fn build() -> Self {
        let tag = format!("pt{}", std::process::id() % 100_000);
        let hosts = Self {
            tag: tag.clone(),
            links: Vec::new(),
        };
        for host in ["e", "n", "f"] {
            let ns = hosts.ns(host);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (outer, inner) = (format!("{tag}c"), format!("{tag}x"));
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &hosts.ns("e")]);
        ip(&["addr", "add", "10.77.0.1/24", "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let edge = hosts.ns("e");
        ip(&["-n", &edge, "addr", "add", "10.77.0.2/24", "dev", &inner]);
        // The static IPs live on the edge host.
        ip(&["-n", &edge, "addr", "add", "10.77.1.1/32", "dev", &inner]);
        ip(&["-n", &edge, "addr", "add", "10.77.1.2/32", "dev", &inner]);
        ip(&["-n", &edge, "link", "set", &inner, "up"]);
        ip(&["route", "replace", "10.77.1.0/24", "via", "10.77.0.2"]);
        hosts
    }

    fn link(&mut self, region: &str, edge_ip: &str, region_ip: &str, delay_ms: u32) {
        self.links.push(Link::start(
            &self.ns("e"),
            edge_ip,
            &self.ns(region),
            region_ip,
            &format!("{}t{region}", self.tag),
            delay_ms,
        ));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for link in &mut self.links {
            let _ = link.child.kill();
            let _ = link.child.wait();
        }
        let _ = Command::new("ip")
            .args(["route", "del", "10.77.1.0/24"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}c", self.tag)])
            .output();
        for host in ["e", "n", "f"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .output();
        }
    }
}

/// A delayed link between the edge and a region.
struct Link {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Link {
    fn start(ns_a: &str, a: &str, ns_b: &str, b: &str, device: &str, delay_ms: u32) -> Self {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/netem.py");
        let mut child = Command::new(support::python())
            .arg(script)
            .args([ns_a, a, ns_b, b, device, &delay_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut link = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(link.reply(), "ready");
        link
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Sends a command and waits until the link has applied it.
    fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        assert_eq!(self.reply(), command);
    }
}

fn config() -> String {
    let hello = hello_bin();
    let hello = hello.display();
    let region = |name: &str, address: &str| {
        format!(
            r#"
[[accelerator.endpoint_groups]]
region = "{name}"
health_check_interval_seconds = {INTERVAL}
threshold_count = {THRESHOLD}
endpoints = [{{ load_balancer = "{name}" }}]

[load_balancers.{name}]
node = "{name}"
[[load_balancers.{name}.listeners]]
address = "{address}"
port = 9080
proxy_protocol_v2 = true
proxy_protocol_sources = ["10.78.0.0/16"]
default_action = {{ type = "forward", target_group = "{name}" }}

[target_groups.{name}]
target_type = "lambda"
function = "hello-{name}"

[functions.hello-{name}]
command = ["{hello}"]
"#
        )
    };
    format!(
        r#"
[accelerator]
name = "regions"
node = "edge"
static_ips = ["10.77.1.1", "10.77.1.2"]
[[accelerator.listeners]]
port = 80
{}
{}
[admin_api]
address = "0.0.0.0"
port = 9002
{}
"#,
        region("near", "10.78.1.2"),
        region("far", "10.78.2.2"),
        support::test_access_keys(),
    )
}

/// One request on a new connection: the function that answered and how long it took, or
/// the error.
fn request(to: SocketAddr) -> Result<(String, String, Duration), String> {
    let started = Instant::now();
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: regions\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let reply = support::parse_reply(&text);
    if reply.status != 200 {
        return Err(format!("status {}: {text}", reply.status));
    }
    let body = reply.json();
    Ok((
        body["function"].as_str().unwrap_or("?").to_owned(),
        body["client"].as_str().unwrap_or("?").to_owned(),
        started.elapsed(),
    ))
}

/// What a phase of the stream saw.
#[derive(Debug, Default)]
struct Tally {
    near: usize,
    far: usize,
    failed: Vec<String>,
    /// Requests answered by the far region, with when they started after the phase began.
    far_at: Vec<Duration>,
    /// When the last request that waited for the dead region (before failing over) started.
    last_slow: Option<Duration>,
}

/// Sends requests for `length`, alternating the static IPs, one at a time.
fn stream(length: Duration, slow: Duration) -> Tally {
    let ips: [SocketAddr; 2] = [
        "10.77.1.1:80".parse().unwrap(),
        "10.77.1.2:80".parse().unwrap(),
    ];
    let mut tally = Tally::default();
    let began = Instant::now();
    let mut i = 0;
    while began.elapsed() < length {
        let at = began.elapsed();
        match request(ips[i % 2]) {
            Ok((function, client, took)) => {
                assert_eq!(
                    client, "10.77.0.1",
                    "the function sees the client's address"
                );
                match function.as_str() {
                    "hello-near" => tally.near += 1,
                    "hello-far" => {
                        tally.far += 1;
                        tally.far_at.push(at);
                    }
                    other => panic!("answered by {other}"),
                }
                if took >= slow {
                    tally.last_slow = Some(at);
                }
            }
            Err(error) => tally.failed.push(error),
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    tally
}

fn status() -> serde_json::Value {
    support::admin_get_signed("10.77.0.2:9002", "/status")
}

fn group<'a>(doc: &'a serde_json::Value, region: &str) -> &'a serde_json::Value {
    doc["accelerator"]["listeners"][0]["endpoint_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["region"] == region)
        .unwrap()
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..300 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not reached within 15 s");
}

#[test]
fn the_edge_fails_over_to_the_next_nearest_region_and_back() {
    let mut hosts = Hosts::build();
    hosts.link("n", "10.78.1.1", "10.78.1.2", 5);
    hosts.link("f", "10.78.2.1", "10.78.2.2", 20);
    let config = config();
    let _near = Portico::start_in(&config, Some(&hosts.ns("n")), Some("near"));
    let _far = Portico::start_in(&config, Some(&hosts.ns("f")), Some("far"));
    let edge = Portico::start_in(&config, Some(&hosts.ns("e")), Some("edge"));
    assert_eq!(edge.static_addresses.len(), 2, "two static IPs");

    // Both regions measured: near ~10 ms, far ~40 ms round trip.
    wait_for("both regions healthy and measured", || {
        let doc = status();
        ["near", "far"]
            .iter()
            .all(|r| group(&doc, r)["healthy"] == true && group(&doc, r)["rtt_ms"].is_number())
    });
    let doc = status();
    let (near_rtt, far_rtt) = (
        group(&doc, "near")["rtt_ms"].as_f64().unwrap(),
        group(&doc, "far")["rtt_ms"].as_f64().unwrap(),
    );
    eprintln!("measured RTT: near {near_rtt:.1} ms, far {far_rtt:.1} ms");
    assert!(near_rtt < far_rtt, "near {near_rtt} ms, far {far_rtt} ms");

    // The edge's connect timeout for a dead region is the health check's timeout.
    let slow = Duration::from_secs_f64(INTERVAL);
    let steady = stream(Duration::from_secs(2), slow);
    assert!(steady.failed.is_empty(), "{:?}", steady.failed);
    assert_eq!(steady.far, 0, "all to the nearest region: {steady:?}");
    assert!(steady.near > 20, "{steady:?}");

    // Cut the near region off, between two requests.
    hosts.links[0].command("cut");
    let cut = stream(Duration::from_secs(4), slow);
    let window = Duration::from_secs_f64(INTERVAL * f64::from(THRESHOLD) + INTERVAL);
    let failover = cut.last_slow.unwrap_or_default();
    eprintln!(
        "near region cut: {} requests answered ({} by near before the cut took effect, {} failed over to far), {} failed; no request waited for the cut region once {:?} had passed (health-check window {:?})",
        cut.near + cut.far,
        cut.near,
        cut.far,
        cut.failed.len(),
        failover,
        window
    );
    assert!(
        cut.failed.is_empty(),
        "every request is answered: {:?}",
        cut.failed
    );
    assert_eq!(cut.near, 0, "nothing reached the cut region");
    assert!(cut.far > 20, "{cut:?}");
    // Scheduling slack on a loaded 2-core machine: 300 ms.
    assert!(
        failover <= window + Duration::from_millis(300),
        "failover took {failover:?}, window {window:?}"
    );
    let doc = status();
    assert_eq!(group(&doc, "near")["healthy"], false);
    assert!(group(&doc, "far")["connections"].as_u64().unwrap() >= cut.far as u64);

    // Bring it back: once its checks pass again, new connections return to it.
    hosts.links[0].command("restore");
    wait_for("near region healthy again", || {
        group(&status(), "near")["healthy"] == true
    });
    let back = stream(Duration::from_secs(2), slow);
    eprintln!("near region restored: {} near, {} far", back.near, back.far);
    assert!(back.failed.is_empty(), "{:?}", back.failed);
    assert_eq!(
        back.far, 0,
        "traffic returned to the nearest region: {back:?}"
    );
}
