//! The accelerator through `portico up`: IPv4 and IPv6 static IPs, port ranges, UDP flows,
//! HTTP health checks toward a load balancer that requires PROXY v2, `ip-ranges.json`
//! (admin API, `portico ips`, the webhook), and SIGHUP reloads that keep the static
//! addresses that stay.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use support::{Portico, curl, hello_bin, hello_target_group, portico_bin, portico_ok};

/// Two free TCP ports in a row (and free for UDP), found by binding.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(a) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = a.local_addr().unwrap().port();
        if port < 65_000
            && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
            && TcpListener::bind(("::1", port + 1)).is_ok()
        {
            return port;
        }
    }
    panic!("no two free ports in a row");
}

/// A UDP endpoint answering each datagram with `echo:` and the datagram.
fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    address
}

fn lb_and_function() -> String {
    format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
proxy_protocol_v2 = true
default_action = {{ type = "forward", target_group = "hello" }}

{}

[invoke_api]
port = 0
"#,
        hello_target_group()
    )
}

fn admin_get(portico: &Portico, path: &str) -> serde_json::Value {
    let r = curl(
        None,
        &[&format!("http://{}{path}", portico.admin_api.unwrap())],
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn ipv6_static_ips_port_ranges_udp_flows_and_http_health_checks() {
    let port = free_port_pair();
    let echo = udp_echo();
    let config = format!(
        r#"
[accelerator]
static_ips = ["127.0.0.1", "::1"]

[[accelerator.listeners]]
port_ranges = [{{ from_port = {port}, to_port = {next} }}]
[[accelerator.listeners.endpoint_groups]]
region = "local"
health_check_protocol = "HTTP"
health_check_path = "/hello"
health_check_interval_seconds = 0.2
endpoints = [{{ load_balancer = "web" }}]

[[accelerator.listeners]]
protocol = "udp"
port = 0
idle_timeout_seconds = 5
[[accelerator.listeners.endpoint_groups]]
region = "local"
endpoints = [{{ address = "{echo}" }}]
{lb}"#,
        next = port + 1,
        lb = lb_and_function()
    );
    let portico = Portico::start(&config);
    for at in [
        format!("http://127.0.0.1:{port}/hello"),
        format!("http://[::1]:{}/hello", port + 1),
    ] {
        let r = curl(None, &[&at]);
        assert_eq!(r.status, 200, "{at}: {r:?}");
        let client = r.json()["client"].as_str().unwrap().to_owned();
        assert!(
            client == "127.0.0.1" || client == "::1",
            "the function sees the client: {client}"
        );
    }
    // The HTTP check reaches the load balancer through its PROXY v2 requirement: a round
    // trip is recorded only for a check that passed.
    let mut status = admin_get(&portico, "/status");
    for _ in 0..100 {
        let endpoint = &status["accelerator"]["listeners"][0]["endpoint_groups"][0]["endpoints"][0];
        if endpoint["rtt_ms"].is_number() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        status = admin_get(&portico, "/status");
    }
    let acc = &status["accelerator"];
    let addresses: Vec<&str> = acc["static_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        addresses.contains(&format!("tcp://[::1]:{}", port + 1).as_str()),
        "{addresses:?}"
    );
    assert_eq!(
        acc["listeners"][0]["ports"],
        serde_json::json!([port, port + 1])
    );
    let endpoint = &acc["listeners"][0]["endpoint_groups"][0]["endpoints"][0];
    assert_eq!(endpoint["health"], "healthy", "{endpoint}");
    assert!(endpoint["rtt_ms"].is_number(), "{endpoint}");

    let udp_port = acc["listeners"][1]["ports"][0].as_u64().unwrap() as u16;
    for ip in ["127.0.0.1", "::1"] {
        let client = UdpSocket::bind((ip, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.connect((ip, udp_port)).unwrap();
        for i in 0..3 {
            client.send(format!("{ip}#{i}").as_bytes()).unwrap();
            let mut buf = [0u8; 2048];
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("echo:{ip}#{i}").as_bytes());
        }
    }
    let udp = &admin_get(&portico, "/status")["accelerator"]["listeners"][1];
    assert_eq!(udp["protocol"], "udp");
    assert_eq!(
        udp["endpoint_groups"][0]["connections"], 2,
        "one flow per client address: {udp}"
    );
}

/// Receives webhook POSTs and passes their bodies on.
fn webhook() -> (SocketAddr, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (_, body) = read_message(&stream);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap());
        }
    });
    (address, rx)
}

fn prefixes(doc: &serde_json::Value) -> Vec<String> {
    doc["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ip_prefix"].as_str().unwrap().to_owned())
        .collect()
}

/// One HTTP/1.1 request on an open connection; the status line.
fn keep_alive_request(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\n\r\n")
        .unwrap();
    read_message(stream).0
}

/// Reads one HTTP/1.1 message with a `Content-Length` body: its first line and its body.
fn read_message(stream: &TcpStream) -> (String, Vec<u8>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let mut length = 0;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        line.clear();
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (first.trim().to_owned(), body)
}

#[test]
fn reloads_keep_static_addresses_publish_ip_ranges_and_call_the_webhook() {
    let (hook, posted) = webhook();
    let accelerator = |ips: &str| {
        format!(
            r#"
[accelerator]
static_ips = [{ips}]
ip_ranges_webhook = "http://{hook}/ip-ranges"
[[accelerator.listeners]]
port = 0
[[accelerator.endpoint_groups]]
region = "local"
endpoints = [{{ load_balancer = "web" }}]
[admin_api]
port = 0
{}"#,
            lb_and_function()
        )
    };
    let portico = Portico::start(&accelerator(r#""127.0.0.1""#));
    let first = posted.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(prefixes(&first), ["127.0.0.1/32"]);
    assert_eq!(first["prefixes"][0]["service"], "GLOBALACCELERATOR");
    assert_eq!(admin_get(&portico, "/ip-ranges.json"), first);
    let endpoint = format!("http://{}", portico.admin_api.unwrap());
    let printed: serde_json::Value =
        serde_json::from_str(&portico_ok(&["ips", "--endpoint", &endpoint])).unwrap();
    assert_eq!(printed, first);

    let kept = portico.static_addresses[0];
    let mut open = TcpStream::connect(kept).unwrap();
    assert_eq!(keep_alive_request(&mut open), "HTTP/1.1 200 OK");

    // Add a static IP: the one that stays keeps its socket and its open connection.
    std::fs::write(
        &portico.config_file,
        accelerator(r#""127.0.0.1", "127.0.0.2""#),
    )
    .unwrap();
    portico.reload();
    let second = posted.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(prefixes(&second), ["127.0.0.1/32", "127.0.0.2/32"]);
    assert!(
        second["syncToken"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= first["syncToken"].as_str().unwrap().parse::<u64>().unwrap()
    );
    assert_eq!(
        keep_alive_request(&mut open),
        "HTTP/1.1 200 OK",
        "still open"
    );
    let added = SocketAddr::new("127.0.0.2".parse().unwrap(), kept.port());
    assert_eq!(curl(None, &[&format!("http://{added}/hello")]).status, 200);

    // A broken file is refused as a whole: nothing changes, nobody is called.
    std::fs::write(
        &portico.config_file,
        "[accelerator]\nstatic_ips = [\"nope\"]\n",
    )
    .unwrap();
    portico.reload();
    // And a file whose new address cannot be bound changes nothing either.
    std::fs::write(
        &portico.config_file,
        accelerator(r#""127.0.0.1", "127.0.0.2", "192.0.2.1""#),
    )
    .unwrap();
    portico.reload();
    std::thread::sleep(Duration::from_millis(500));
    assert!(posted.try_recv().is_err(), "no change, no webhook");
    assert_eq!(
        prefixes(&admin_get(&portico, "/ip-ranges.json")),
        ["127.0.0.1/32", "127.0.0.2/32"]
    );
    assert_eq!(keep_alive_request(&mut open), "HTTP/1.1 200 OK");
    assert_eq!(curl(None, &[&format!("http://{added}/hello")]).status, 200);
}

#[test]
fn up_refuses_a_node_the_file_does_not_name() {
    let scratch = support::Scratch::new("node");
    let file = scratch.write(
        "p.toml",
        &lb_and_function().replace(
            "[load_balancers.web]",
            "[load_balancers.web]\nnode = \"r1\"",
        ),
    );
    let out = Command::new(portico_bin())
        .args(["up", file.to_str().unwrap(), "--node", "mars"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--node \"mars\"") && stderr.contains("r1"),
        "{stderr}"
    );
}

/// `examples/regions.toml`, on free ports.
fn regions_example() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/regions.toml"
    ))
    .unwrap();
    format!(
        "{}\n[invoke_api]\nport = 0\n",
        text.replace("port = 8080", "port = 0")
            .replace("port = 9080", "port = 0")
            .replace("{portico_bin_dir}/hello", hello_bin().to_str().unwrap())
    )
}

#[test]
fn the_regions_example_spreads_by_dial_and_weight() {
    let portico = Portico::start(&regions_example());
    assert_eq!(portico.static_addresses.len(), 2);
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    const N: u32 = 300;
    for i in 0..N {
        let at = portico.static_addresses[i as usize % 2];
        let r = curl(None, &[&format!("http://{at}/")]);
        assert_eq!(r.status, 200, "{r:?}");
        *counts
            .entry(r.json()["function"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let share = |f: &str| f64::from(counts.get(f).copied().unwrap_or(0)) / f64::from(N);
    // Expected: eu 80 % x 200/255 = 63 %, canary 80 % x 55/255 = 17 %, us 20 %.
    assert!((0.50..0.76).contains(&share("hello-eu")), "{counts:?}");
    assert!(
        (0.08..0.28).contains(&share("hello-eu-canary")),
        "{counts:?}"
    );
    assert!((0.10..0.31).contains(&share("hello-us")), "{counts:?}");
    let status = admin_get(&portico, "/status");
    let groups = &status["accelerator"]["listeners"][0]["endpoint_groups"];
    assert_eq!(groups[0]["region"], "eu-west-1", "nearest first");
    let shares: f64 = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["share_of_connections"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);
    assert!(
        groups[1]["rtt_ms"].is_number(),
        "HTTP checks of us-east-1 pass: {groups}"
    );
}
