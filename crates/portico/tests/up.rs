//! End to end: a real `portico up`, real curl through each static IP, real function
//! processes (the `lambda_http` demo and a Python function speaking the Runtime API).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The source address tests send from: not the edge's own, so the function can only know it
/// through PROXY v2 and X-Forwarded-For.
const CLIENT_IP: &str = "127.0.0.5";

fn demo_config() -> String {
    format!(
        r#"
[accelerator]
static_ips = ["127.0.0.1", "127.0.0.2"]
listeners = [{{ port = 0 }}]
[[accelerator.endpoint_groups]]
region = "local"
endpoints = [{{ load_balancer = "web" }}]

[load_balancers.web]
listeners = [{{ port = 0, proxy_protocol_v2 = true, default_action = {{ type = "forward", target_group = "hello" }} }}]

{}

[invoke_api]
port = 0
"#,
        hello_target_group()
    )
}

#[test]
fn requests_through_each_static_ip_reach_the_function_with_the_callers_address() {
    let portico = Portico::start(&demo_config());
    assert_eq!(portico.static_addresses.len(), 2);
    let lb_port = portico.load_balancers[0].1.port();
    for addr in &portico.static_addresses {
        let url = format!("http://{addr}/hello/world?name=a&name=b&raw=%41%20");
        let r = curl(
            Some(CLIENT_IP),
            &[&url, "-H", "X-Forwarded-For: 198.51.100.7"],
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-demo-function"), Some("hello"));
        let body = r.json();
        assert_eq!(body["function"], "hello");
        assert_eq!(body["method"], "GET");
        assert_eq!(body["path"], "/hello/world");
        // Single-value mode: the last of a repeated key.
        assert_eq!(body["query"]["name"], serde_json::json!(["b"]));
        assert_eq!(
            body["client"], CLIENT_IP,
            "function must see the caller, not the edge"
        );
        assert_eq!(
            body["x_forwarded_for"],
            format!("198.51.100.7, {CLIENT_IP}")
        );
        assert_eq!(body["x_forwarded_proto"], "http");
        assert_eq!(body["x_forwarded_port"], lb_port.to_string());
        // The load balancer's trace, as the function's runtime client hands it over: the
        // invocation's X-Ray header, the load balancer's Root under a new Parent.
        let trace = body["trace_id"].as_str().unwrap();
        let root = trace.split(';').next().unwrap();
        assert!(
            root.starts_with("Root=1-") && root.len() == "Root=1-".len() + 8 + 1 + 24,
            "{trace}"
        );
        assert!(trace.contains(";Parent="), "{trace}");
    }
}

#[test]
fn one_worker_thread_serves_every_tier_on_the_main_thread() {
    // TOKIO_WORKER_THREADS=1 is the current-thread scheduler: the edge, the load balancer,
    // the function runtime and the APIs all share the main thread.
    let mut portico = Portico::start_with_env(&demo_config(), &[("TOKIO_WORKER_THREADS", "1")]);
    for addr in &portico.static_addresses {
        let r = curl(Some(CLIENT_IP), &[&format!("http://{addr}/hello?name=one")]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["client"], CLIENT_IP);
    }
    let invoke = portico.invoke_api.unwrap();
    let r = curl(
        None,
        &[
            "-X",
            "POST",
            "-d",
            "{}",
            &format!("http://{invoke}/2015-03-31/functions/hello/invocations"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(portico.terminate().success());
}

#[test]
fn a_bad_worker_thread_count_is_refused_before_anything_starts() {
    for bad in ["0", "many", ""] {
        let out = Command::new(portico_bin())
            .arg("up")
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS=") && stderr.contains("whole number of threads"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing may start: {bad:?}");
    }
}

#[test]
fn portico_status_shows_groups_with_health_rtt_and_share_of_connections() {
    let portico = Portico::start(&demo_config());
    for addr in &portico.static_addresses {
        assert_eq!(curl(None, &[&format!("http://{addr}/")]).status, 200);
    }
    let endpoint = format!("http://{}", portico.admin_api.unwrap());
    let status = |json: bool| {
        let mut args = vec!["status", "--endpoint", &endpoint];
        if json {
            args.push("--json");
        }
        portico_ok(&args)
    };
    let doc: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let acc = &doc["accelerator"];
    let addresses: Vec<String> = portico
        .static_addresses
        .iter()
        .map(|a| format!("tcp://{a}"))
        .collect();
    assert_eq!(acc["static_addresses"], serde_json::json!(addresses));
    assert_eq!(acc["listeners"][0]["protocol"], "tcp");
    let group = &acc["listeners"][0]["endpoint_groups"][0];
    assert_eq!(group["region"], "local");
    assert_eq!(group["healthy"], true);
    assert_eq!(group["connections"], 2);
    assert_eq!(group["share_of_connections"], 1.0);
    // The first TCP health check runs at start: its handshake time is the group's RTT.
    let rtt = group["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    assert_eq!(group["endpoints"][0]["health"], "healthy");
    assert_eq!(
        doc["target_groups"][0]["targets"][0]["health"],
        "unavailable"
    );
    let table = status(false);
    assert!(table.contains("endpoint group"), "{table}");
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("local ")
            && l.contains("healthy")
            && l.contains("100.0%")),
        "{table}"
    );
}

#[test]
fn a_function_error_is_albs_502() {
    let portico = Portico::start(&demo_config());
    let r = curl(
        Some(CLIENT_IP),
        &[&format!("http://{}/fail", portico.static_addresses[0])],
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.header("server"), Some("awselb/2.0"));
    assert!(r.body.contains("502 Bad Gateway"), "{}", r.body);
}

#[test]
fn the_load_balancer_refuses_connections_without_a_proxy_header() {
    let portico = Portico::start(&demo_config());
    let mut direct = TcpStream::connect(portico.load_balancers[0].1).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    direct
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = direct.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "spoofable: got {:?}",
        String::from_utf8_lossy(&buf)
    );
}

fn misbehave_config() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions/misbehave.py");
    format!(
        r#"
[load_balancers.bad]
listeners = [{{ port = 0, default_action = {{ type = "forward", target_group = "bad" }} }}]
[load_balancers.good]
listeners = [{{ port = 0, default_action = {{ type = "forward", target_group = "good" }} }}]

[target_groups.bad]
target_type = "lambda"
function = "misbehave"
[target_groups.good]
target_type = "lambda"
function = "hello"

[functions.misbehave]
command = ["{}", "{script}"]
timeout_seconds = 1
[functions.hello]
command = ["{}"]

[invoke_api]
enabled = false
"#,
        python(),
        hello_bin().display()
    )
}

#[test]
fn misbehaving_functions_get_502_and_their_neighbours_never_notice() {
    let portico = Portico::start(&misbehave_config());
    let addr = |name: &str| {
        portico
            .load_balancers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    let (bad, good) = (addr("bad"), addr("good"));
    let get = |path: &str| curl(None, &[&format!("http://{bad}{path}")]);
    let good_ok = || assert_eq!(curl(None, &[&format!("http://{good}/")]).status, 200);

    let first = get("/");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(get("/").body, first.body, "a warm environment is reused");

    for path in ["/garbage", "/raise", "/big", "/crash", "/slow"] {
        let r = get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert_eq!(r.header("server"), Some("awselb/2.0"), "{path}");
        good_ok();
    }
    let after = get("/");
    assert_eq!(after.status, 200);
    assert_ne!(
        after.body, first.body,
        "crashed and timed-out environments are replaced"
    );
}

#[test]
fn request_limits_answer_as_alb_does() {
    let portico = Portico::start(&misbehave_config());
    let bad = portico
        .load_balancers
        .iter()
        .find(|(n, _)| n == "bad")
        .unwrap()
        .1;
    let url = format!("http://{bad}/");
    let scratch = Scratch::new("body");
    let big = scratch.write("big", &"x".repeat(1024 * 1024 + 1));
    let r = curl(
        None,
        &["--data-binary", &format!("@{}", big.display()), &url],
    );
    assert_eq!(r.status, 413, "{r:?}");
    let r = curl(
        None,
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            &url,
        ],
    );
    assert_eq!(r.status, 400, "{r:?}");
    // Malformed HTTP gets a 400 from the parser and the process lives on.
    let mut raw = TcpStream::connect(bad).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // ALB's head limits: one header over 16 KB or all headers over 64 KB is 400 (ALB's
    // troubleshooting page; not 431), a request line over 16 KB is 414.
    let long_header = format!("x-big: {}", "a".repeat(17 * 1024));
    assert_eq!(curl(None, &["-H", &long_header, &url]).status, 400);
    let mut many = Vec::new();
    for i in 0..5 {
        many.push("-H".to_owned());
        many.push(format!("x-h{i}: {}", "a".repeat(15 * 1024)));
    }
    let mut args: Vec<&str> = many.iter().map(String::as_str).collect();
    args.push(&url);
    assert_eq!(curl(None, &args).status, 400);
    let long_url = format!("{url}?q={}", "a".repeat(17 * 1024));
    assert_eq!(curl(None, &[&long_url]).status, 414);
    assert_eq!(curl(None, &[&url]).status, 200);
}

#[test]
fn sigterm_stops_every_function_process() {
    let mut portico = Portico::start(&misbehave_config());
    for (_, addr) in portico.load_balancers.clone() {
        assert_eq!(curl(None, &[&format!("http://{addr}/")]).status, 200);
    }
    let children = children_of(portico.pid());
    let functions = function_processes_of(portico.pid());
    assert_eq!(
        functions.len(),
        2,
        "one environment per function: {children:?}"
    );
    // And the init of each one's sandbox (and, once made, the environments made ahead
    // for the next cold starts).
    assert!(children.len() >= 4, "{children:?}");
    let status = portico.terminate();
    assert!(status.success(), "{status:?}");
    for pid in children {
        assert!(!is_alive(pid), "function process {pid} outlived portico");
    }
}

#[test]
fn validate_prints_every_error_with_its_key_path() {
    let scratch = Scratch::new("validate");
    let bad = scratch.write(
        "bad.toml",
        r#"
colour = "blue"
[load_balancers.web]
listeners = [{ port = 9080, default_action = { type = "forward", target_group = "nope" } }]
[functions.hello]
command = ["/bin/true"]
timeout_seconds = 0
memory_size_mb = 64
"#,
    );
    let out = Command::new(portico_bin())
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "colour: unknown key",
        "functions.hello.timeout_seconds: 0 s is below the minimum of 1 s",
        "functions.hello.memory_size_mb: 64 MB is below the minimum of 128 MB",
        "load_balancers.web.listeners[0].default_action.target_group: no target group named \"nope\"",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    // `up` refuses the same file before binding anything.
    let out = Command::new(portico_bin())
        .args(["up", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let good = scratch.write("good.toml", &demo_config());
    portico_ok(&["validate", good.to_str().unwrap()]);
}

#[test]
fn a_node_whose_host_lacks_the_daemon_interface_or_address_is_refused_with_their_keys() {
    let scratch = Scratch::new("ha-host");
    let file = scratch.write(
        "ha.toml",
        r#"
[accelerator]
static_ips = ["198.51.100.10", "198.51.100.11"]
nodes = [{ name = "edge-a", address = "198.51.100.2" }, { name = "edge-b", address = "198.51.100.3" }]
ha = { mode = "vrrp", interface = "nosuchif0", daemon = "/nonexistent/keepalived" }
listeners = [{ port = 80 }]
endpoint_groups = [{ region = "r", endpoints = [{ address = "198.51.100.100:80" }] }]
"#,
    );
    let file = file.to_str().unwrap();
    // The file itself is valid; the host is not fit to run edge-a.
    portico_ok(&["validate", file]);
    for args in [
        vec!["validate", file, "--node", "edge-a"],
        vec!["up", file, "--node", "edge-a"],
    ] {
        let out = Command::new(portico_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in [
            "accelerator.ha.daemon: \"/nonexistent/keepalived\" is not on this host (mode \"vrrp\" runs it: install Debian's keepalived)",
            "accelerator.ha.interface: this host has no interface \"nosuchif0\"",
            "accelerator.nodes[0].address: 198.51.100.2 is not an address of this host",
        ] {
            assert!(
                stderr.contains(line),
                "{args:?}: missing {line:?} in:\n{stderr}"
            );
        }
    }
    // Without --node, a multi-node accelerator does not fall back to one host.
    let out = Command::new(portico_bin())
        .args(["up", file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("accelerator.nodes: the accelerator runs on several nodes: start each with --node NAME (one of edge-a, edge-b)"),
        "{stderr}"
    );
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_escapes() {
    let scratch = Scratch::new("colour");
    let file = scratch.write(
        "quiet.toml",
        "[functions.x]\ncommand = [\"/bin/true\"]\n[invoke_api]\nport = 0\n[admin_api]\nport = 0\n",
    );
    // `up` logs while it starts and stops; its stderr here is a pipe.
    let child = Command::new(portico_bin())
        .args(["up", file.to_str().unwrap()])
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no ANSI escapes in a pipe: {stderr:?}"
    );
}
