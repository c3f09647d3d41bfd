//! The load balancer end to end: listener rules (every condition type), every action, and
//! instance/IP target groups with real HTTP backends (`functions/backend.py`), through a real
//! `portico up` and real curl.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

fn lb(portico: &Portico) -> SocketAddr {
    portico.load_balancers[0].1
}

fn fixed(priority: u32, conditions: &str, body: &str) -> String {
    format!(
        r#"
[[load_balancers.web.listeners.rules]]
priority = {priority}
conditions = [{conditions}]
action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "{body}" }}
"#
    )
}

#[test]
fn rules_route_by_every_condition_type_with_albs_matching() {
    let backend = Backend::start("default", 0);
    let mut config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
address = "0.0.0.0"
port = 0
default_action = {{ type = "forward", target_group = "servers" }}

[target_groups.servers]
target_type = "ip"
targets = ["{}"]
health_check = {{ interval_seconds = 0.2, timeout_seconds = 0.1 }}

[invoke_api]
enabled = false
"#,
        backend.address()
    );
    for (priority, conditions, body) in [
        (
            5,
            r#"{ field = "host-header", values = ["api.example.com", "*.api.example.org"] }"#,
            "host",
        ),
        (
            6,
            r#"{ field = "path-pattern", values = ["/docs/*", "/img/?.png"] }"#,
            "path",
        ),
        (
            7,
            r#"{ field = "http-header", name = "X-Env", values = ["canary"] }"#,
            "header",
        ),
        (
            8,
            r#"{ field = "http-request-method", values = ["DELETE"] }"#,
            "method",
        ),
        (
            9,
            r#"{ field = "query-string", values = [{ key = "version", value = "v?" }, { value = "debug" }] }"#,
            "query",
        ),
        (
            10,
            r#"{ field = "source-ip", values = ["127.0.0.6/32"] }"#,
            "source",
        ),
        (
            1,
            r#"{ field = "path-pattern", values = ["/both"] }, { field = "http-request-method", values = ["POST"] }"#,
            "both",
        ),
        // Two rules match /docs/first: the lower priority number wins.
        (
            2,
            r#"{ field = "path-pattern", values = ["/docs/first"] }"#,
            "first",
        ),
    ] {
        config.push_str(&fixed(priority, conditions, body));
    }
    let portico = Portico::start(&config);
    let port = lb(&portico).port();
    let base = format!("http://127.0.0.1:{port}");
    let hit = |source: Option<&str>, args: &[&str]| -> String {
        let r = curl(source, args);
        if r.headers_named("server")
            .iter()
            .any(|s| s.starts_with("BaseHTTP"))
        {
            return "default".to_owned();
        }
        assert_eq!(r.status, 200, "{args:?}: {r:?}");
        r.body
    };
    let url = |path: &str| format!("{base}{path}");
    // host-header: case-insensitive, port ignored, wildcards.
    assert_eq!(
        hit(None, &["-H", "Host: API.Example.com:8080", &url("/")]),
        "host"
    );
    assert_eq!(
        hit(None, &["-H", "Host: v1.api.example.org", &url("/")]),
        "host"
    );
    assert_eq!(
        hit(None, &["-H", "Host: example.com", &url("/")]),
        "default"
    );
    // path-pattern: case-sensitive, `*` and `?`, the query is not part of the path.
    assert_eq!(hit(None, &[&url("/docs/a/b?x=1")]), "path");
    assert_eq!(hit(None, &[&url("/img/a.png")]), "path");
    assert_eq!(hit(None, &[&url("/img/ab.png")]), "default");
    assert_eq!(hit(None, &[&url("/DOCS/a")]), "default");
    // Dot segments are resolved before rules match: `..` cannot walk out of a prefix
    // (curl resolves them itself unless told not to).
    assert_eq!(
        hit(None, &["--path-as-is", &url("/docs/../admin")]),
        "default"
    );
    assert_eq!(
        hit(None, &["--path-as-is", &url("/docs/%2e%2e/admin")]),
        "default"
    );
    assert_eq!(
        hit(None, &["--path-as-is", &url("/admin/../docs/a")]),
        "path"
    );
    // http-header: name and value case-insensitive.
    assert_eq!(hit(None, &["-H", "x-env: CANARY", &url("/")]), "header");
    assert_eq!(hit(None, &["-H", "x-env: prod", &url("/")]), "default");
    // http-request-method: case-sensitive.
    assert_eq!(hit(None, &["-X", "DELETE", &url("/")]), "method");
    assert_eq!(hit(None, &["-X", "delete", &url("/")]), "default");
    // query-string: key/value wildcards, case-insensitive; a pair without key.
    assert_eq!(hit(None, &[&url("/?a=1&Version=V2")]), "query");
    assert_eq!(hit(None, &[&url("/?flag=debug")]), "query");
    assert_eq!(hit(None, &[&url("/?version=v22")]), "default");
    // source-ip: the client's address.
    assert_eq!(hit(Some("127.0.0.6"), &[&url("/")]), "source");
    assert_eq!(hit(Some("127.0.0.5"), &[&url("/")]), "default");
    // Conditions AND'ed; priorities ordered.
    assert_eq!(hit(None, &["-X", "POST", &url("/both")]), "both");
    assert_eq!(hit(None, &[&url("/both")]), "default");
    assert_eq!(hit(None, &[&url("/docs/first")]), "first");
}

/// `examples/rules.toml`, on free ports.
fn example_config() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rules.toml"
    ))
    .unwrap();
    text.replace("port = 9080", "port = 0")
        .replace("port = 9001", "port = 0")
        .replace("{portico_bin_dir}/hello", hello_bin().to_str().unwrap())
}

#[test]
fn the_rules_example_does_what_it_says() {
    let portico = Portico::start(&example_config());
    let base = format!("http://{}", lb(&portico));

    let r = curl(
        None,
        &["-H", "Host: api.example.com", &format!("{base}/anything")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["function"], "hello");

    let r = curl(None, &[&format!("{base}/static/app.css")]);
    assert_eq!((r.status, r.body.as_str()), (200, "static"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("server"), Some("awselb/2.0"));
    let r = curl(None, &["-X", "POST", &format!("{base}/static/app.css")]);
    assert_eq!(r.json()["function"], "hello", "the static rule is GET only");

    let r = curl(None, &[&format!("{base}/old/x?k=v")]);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://{}/new/old/x?k=v", lb(&portico))
    );

    // 200 requests on one connection: about 160 to hello, 40 to the canary.
    let urls: Vec<String> = (0..200).map(|_| format!("{base}/weighted")).collect();
    let mut args = vec!["-s", "-w", "\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(v["function"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let canary = counts.get("hello-canary").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    assert!(
        (15..=70).contains(&canary),
        "80/20 split expected: {counts:?}"
    );

    let r = curl(None, &[&format!("{base}/")]);
    assert_eq!(r.json()["function"], "hello");
}

#[test]
fn group_stickiness_keeps_a_client_on_its_target_group() {
    let (a, b) = (Backend::start("a", 0), Backend::start("b", 0));
    let portico = Portico::start(&format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_groups = [{{ name = "a", weight = 1 }}, {{ name = "b", weight = 1 }}], stickiness_duration_seconds = 3600 }}

[target_groups.a]
target_type = "ip"
targets = ["{}"]
[target_groups.b]
target_type = "ip"
targets = ["{}"]

[invoke_api]
enabled = false
"#,
        a.address(),
        b.address()
    ));
    let url = format!("http://{}/", lb(&portico));
    let first = curl(None, &[&url]);
    assert_eq!(first.status, 200, "{first:?}");
    let cookies = first.headers_named("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies[0].starts_with("AWSALBTG=") && cookies[0].contains("Expires="));
    assert!(
        cookies[1].starts_with("AWSALBTGCORS=") && cookies[1].ends_with("SameSite=None; Secure")
    );
    let cookie = cookies[0].split(';').next().unwrap();
    let group = first.header("x-backend").unwrap().to_owned();
    for _ in 0..20 {
        let r = curl(None, &["-H", &format!("Cookie: {cookie}"), &url]);
        assert_eq!(r.header("x-backend"), Some(group.as_str()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(curl(None, &[&url]).header("x-backend").unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "without the cookie both groups get traffic");
}

fn servers_config(targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r#"
[load_balancers.web]
idle_timeout_seconds = 1
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "servers" }}

[target_groups.servers]
target_type = "ip"
targets = [{}]
health_check = {{ path = "/health", interval_seconds = 0.2, timeout_seconds = 0.15, healthy_threshold = 2, unhealthy_threshold = 2 }}
{extra}

[invoke_api]
enabled = false
"#,
        targets.join(", ")
    )
}

fn backend_of(url: &str) -> (u16, Option<String>) {
    let r = curl(None, &[url]);
    (r.status, r.header("x-backend").map(str::to_owned))
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn http_targets_round_robin_and_a_killed_target_is_taken_out_and_brought_back() {
    let a = Backend::start("a", 0);
    let mut b = Backend::start("b", 0);
    let b_port = b.port;
    let portico = Portico::start(&servers_config(&[a.address(), b.address()], ""));
    let url = format!("http://{}/x", lb(&portico));
    // Both must pass a first check before round robin is even.
    std::thread::sleep(Duration::from_millis(600));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let (status, backend) = backend_of(&url);
        assert_eq!(status, 200);
        *counts.entry(backend.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");

    b.kill();
    let mut failed = 0;
    let took = wait_until(Duration::from_secs(5), || {
        let window: Vec<_> = (0..6).map(|_| backend_of(&url)).collect();
        failed += window.iter().filter(|(s, _)| *s == 502).count();
        window
            .iter()
            .all(|(s, b)| *s == 200 && b.as_deref() == Some("a"))
    });
    eprintln!("target taken out after {took:?}; {failed} requests got 502 meanwhile");
    for _ in 0..20 {
        assert_eq!(backend_of(&url), (200, Some("a".to_owned())));
    }

    let _b = Backend::start("b", b_port);
    let took = wait_until(Duration::from_secs(5), || {
        (0..4).any(|_| backend_of(&url).1.as_deref() == Some("b"))
    });
    eprintln!("target back after {took:?}");
}

#[test]
fn least_outstanding_requests_avoids_a_busy_target() {
    let (a, b) = (Backend::start("a", 0), Backend::start("b", 0));
    let mut config = servers_config(
        &[a.address(), b.address()],
        r#"load_balancing_algorithm = "least_outstanding_requests""#,
    );
    config = config.replace("idle_timeout_seconds = 1", "idle_timeout_seconds = 10");
    let portico = Portico::start(&config);
    let base = format!("http://{}", lb(&portico));
    std::thread::sleep(Duration::from_millis(600));
    let slow_url = format!("{base}/slow");
    let slow = std::thread::spawn(move || backend_of(&slow_url));
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(backend_of(&format!("{base}/fast")).1.unwrap());
    }
    let (status, busy) = slow.join().unwrap();
    assert_eq!(status, 200);
    let busy = busy.unwrap();
    assert!(
        seen.iter().all(|s| *s != busy),
        "fast requests went around the busy target {busy}: {seen:?}"
    );
}

#[test]
fn target_stickiness_sets_and_follows_the_awsalb_cookie() {
    let (a, b) = (Backend::start("a", 0), Backend::start("b", 0));
    let portico = Portico::start(&servers_config(
        &[a.address(), b.address()],
        "stickiness_duration_seconds = 60",
    ));
    let url = format!("http://{}/", lb(&portico));
    std::thread::sleep(Duration::from_millis(600));
    let first = curl(None, &[&url]);
    let cookies = first.headers_named("set-cookie");
    assert!(cookies[0].starts_with("AWSALB="), "{cookies:?}");
    assert!(cookies[1].starts_with("AWSALBCORS="), "{cookies:?}");
    let cookie = cookies[0].split(';').next().unwrap();
    let target = first.header("x-backend").unwrap();
    for _ in 0..10 {
        let r = curl(None, &["-H", &format!("Cookie: {cookie}"), &url]);
        assert_eq!(r.header("x-backend"), Some(target));
    }
}

#[test]
fn http_targets_get_albs_headers_and_errors_are_502_503_504() {
    let a = Backend::start("a", 0);
    let portico = Portico::start(&servers_config(&[a.address()], ""));
    let base = format!("http://{}", lb(&portico));
    std::thread::sleep(Duration::from_millis(400));
    let r = curl(
        Some("127.0.0.5"),
        &[
            "-H",
            "Host: shop.example.com",
            "-H",
            "X-Forwarded-For: 198.51.100.7",
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: secret",
            "--data-binary",
            "hello",
            &format!("{base}/orders?id=7&id=8"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/orders?id=7&id=8");
    assert_eq!(seen["body"], 5);
    let h = &seen["headers"];
    // ALB's default: a listener on a port other than 80 appends it to a Host without one.
    assert_eq!(
        h["host"],
        format!("shop.example.com:{}", lb(&portico).port())
    );
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 127.0.0.5");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-port"], lb(&portico).port().to_string());
    assert!(
        h["x-amzn-trace-id"]
            .as_str()
            .unwrap()
            .starts_with("Root=1-")
    );
    assert!(
        h.get("x-hop").is_none(),
        "hop-by-hop headers are not forwarded: {h}"
    );

    // No answer within the idle timeout (1 s): 504.
    let r = curl(None, &[&format!("{base}/slow")]);
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("server"), Some("awselb/2.0"));
}

#[test]
fn the_load_balancers_header_attributes_do_what_albs_do() {
    let a = Backend::start("a", 0);
    let seen = |attributes: &str, extra_headers: &[&str]| {
        let config = servers_config(&[a.address()], "").replace(
            "idle_timeout_seconds = 1\n",
            &format!("idle_timeout_seconds = 1\n{attributes}\n"),
        );
        let portico = Portico::start(&config);
        std::thread::sleep(Duration::from_millis(400));
        let url = format!("http://{}/x", lb(&portico));
        let mut args = vec![
            "-H",
            "Host: shop.example.com",
            "-H",
            "X-Forwarded-For: 198.51.100.7",
        ];
        for h in extra_headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let r = curl(Some("127.0.0.5"), &args);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["headers"].clone()
    };
    // The Host as sent (which `Connection` cannot strip); the client's port after its
    // address.
    let h = seen(
        "preserve_host_header = true\nxff_client_port = true",
        &["Connection: keep-alive, host"],
    );
    assert_eq!(h["host"], "shop.example.com");
    let xff = h["x-forwarded-for"].as_str().unwrap();
    let (before, port) = xff.rsplit_once(':').unwrap();
    assert_eq!(before, "198.51.100.7, 127.0.0.5");
    assert!(port.parse::<u16>().is_ok(), "{xff}");
    // X-Forwarded-For as sent, or gone.
    let h = seen("xff_header_processing_mode = \"preserve\"", &[]);
    assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    let h = seen("xff_header_processing_mode = \"remove\"", &[]);
    assert!(h.get("x-forwarded-for").is_none(), "{h}");
    // Over 7 KB of headers: the trace header is a new Root, whatever was sent.
    let big = format!("X-Big: {}", "v".repeat(7 * 1024));
    let h = seen(
        "",
        &[
            "X-Amzn-Trace-Id: Root=1-67891233-abcdef012345678912345678",
            &big,
        ],
    );
    let trace = h["x-amzn-trace-id"].as_str().unwrap();
    assert!(
        trace.starts_with("Root=1-") && !trace.contains("67891233"),
        "{trace}"
    );
}

#[test]
fn empty_groups_are_503_and_dead_groups_fail_open_to_502() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "empty" }}
[[load_balancers.web.listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/dead"] }}]
action = {{ type = "forward", target_group = "dead" }}

[target_groups.empty]
target_type = "ip"
[target_groups.dead]
target_type = "ip"
targets = ["{dead}"]
health_check = {{ interval_seconds = 0.2, timeout_seconds = 0.1 }}

[invoke_api]
enabled = false
"#
    );
    let portico = Portico::start(&config);
    let base = format!("http://{}", lb(&portico));
    let empty = curl(None, &[&format!("{base}/")]);
    assert_eq!(empty.status, 503);
    // ALB's page, in ALB's words.
    assert!(
        empty
            .body
            .contains("<h1>503 Service Temporarily Unavailable</h1>"),
        "{}",
        empty.body
    );
    std::thread::sleep(Duration::from_millis(800));
    // Every target unhealthy: ALB routes to them anyway, and the refused connection is 502.
    let r = curl(None, &[&format!("{base}/dead")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("server"), Some("awselb/2.0"));
}

#[test]
fn access_logs_are_written_in_albs_format() {
    let a = Backend::start("a", 0);
    let logs = Scratch::new("access");
    let log_file = logs.0.join("access.log");
    let mut config = servers_config(&[a.address()], "");
    config = config.replace(
        "idle_timeout_seconds = 1",
        &format!(
            "idle_timeout_seconds = 1\naccess_logs = {{ enabled = true, destination = {:?} }}",
            log_file.display().to_string()
        ),
    );
    config.push_str(&fixed(
        3,
        r#"{ field = "path-pattern", values = ["/fixed"] }"#,
        "fixed",
    ));
    config.push_str(
        r#"
[[load_balancers.web.listeners.rules]]
priority = 4
conditions = [{ field = "path-pattern", values = ["/moved"] }]
action = { type = "redirect", path = "/new", status_code = "HTTP_302" }
"#,
    );
    let mut portico = Portico::start(&config);
    let lb = lb(&portico);
    std::thread::sleep(Duration::from_millis(400));
    let base = format!("http://{lb}");
    assert_eq!(
        curl(
            Some("127.0.0.5"),
            &["-A", "tester/1.0", &format!("{base}/x?q=1")]
        )
        .status,
        200
    );
    assert_eq!(curl(None, &[&format!("{base}/fixed")]).status, 200);
    assert_eq!(curl(None, &[&format!("{base}/moved")]).status, 302);
    portico.terminate();

    let text = std::fs::read_to_string(&log_file).unwrap();
    // Another test running beside this one may still health-check a backend it stopped, on
    // an ephemeral port this load balancer then bound: its checks are logged here too.
    let lines: Vec<Vec<String>> = text
        .lines()
        .map(fields)
        .filter(|f| {
            f.get(13)
                .is_none_or(|agent| agent != "ELB-HealthChecker/2.0")
        })
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for f in &lines {
        assert_eq!(f.len(), 30, "ALB's 30 fields: {f:?}");
        assert_eq!(f[0], "http");
        assert!(f[1].ends_with('Z') && f[1].contains('T'), "{f:?}");
        assert!(f[2].starts_with("app/web/"), "{f:?}");
        assert!(f[29].starts_with("TID_"), "{f:?}");
    }
    let forward = &lines[0];
    assert!(forward[3].starts_with("127.0.0.5:"), "{forward:?}");
    assert_eq!(forward[4], a.address());
    assert_eq!((forward[8].as_str(), forward[9].as_str()), ("200", "200"));
    assert!(forward[5].parse::<f64>().unwrap() >= 0.0);
    assert!(forward[6].parse::<f64>().unwrap() >= 0.0);
    assert!(forward[11].parse::<u64>().unwrap() > 0, "sent bytes");
    assert_eq!(
        forward[12],
        format!("GET http://127.0.0.1:{}/x?q=1 HTTP/1.1", lb.port())
    );
    assert_eq!(forward[13], "tester/1.0");
    assert!(forward[16].contains(":targetgroup/servers/"), "{forward:?}");
    assert!(forward[17].starts_with("Root=1-"), "{forward:?}");
    assert_eq!(forward[20], "0", "default action");
    assert_eq!(forward[22], "forward");
    assert_eq!(forward[25], a.address());

    let fixed = &lines[1];
    assert_eq!((fixed[4].as_str(), fixed[9].as_str()), ("-", "-"));
    assert_eq!(fixed[5], "-1", "never sent to a target");
    assert_eq!(fixed[20], "3");
    assert_eq!(fixed[22], "fixed-response");

    let moved = &lines[2];
    assert_eq!(moved[8], "302");
    assert_eq!(moved[22], "redirect");
    assert_eq!(moved[23], format!("http://127.0.0.1:{}/new", lb.port()));
}

/// A load balancer (with `attributes`) whose one listener forwards to the demo function.
fn hello_config(attributes: &str) -> String {
    format!(
        r#"
[load_balancers.web]
{attributes}
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "hello" }}

[target_groups.hello]
target_type = "lambda"
function = "hello"

[functions.hello]
command = ["{}"]

[invoke_api]
enabled = false
"#,
        hello_bin().display()
    )
}

/// What ALB refuses before any target sees the request, and what it refuses to send a Lambda
/// target, with the status codes ALB documents.
#[test]
fn requests_alb_refuses_get_albs_status_codes() {
    let portico = Portico::start(&hello_config(""));
    let url = format!("http://{}/x", lb(&portico));
    let ok = curl(None, &[&url]);
    assert_eq!(ok.status, 200, "{ok:?}");
    // TRACE, CONNECT and a method over 127 characters: 405.
    assert_eq!(curl(None, &["-X", "TRACE", &url]).status, 405);
    let connect = raw_request(
        lb(&portico),
        "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    );
    assert!(connect.starts_with("HTTP/1.1 405 "), "{connect}");
    assert_eq!(curl(None, &["-X", &"M".repeat(128), &url]).status, 405);
    assert_eq!(curl(None, &["-X", &"M".repeat(127), &url]).status, 200);
    // More than 30 addresses in X-Forwarded-For: 463.
    let addresses = |n: usize| {
        (1..=n)
            .map(|i| format!("198.51.100.{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let xff = |n: usize| format!("X-Forwarded-For: {}", addresses(n));
    assert_eq!(curl(None, &["-H", &xff(30), &url]).status, 200);
    assert_eq!(curl(None, &["-H", &xff(31), &url]).status, 463);
    // One Host, and a host: rules, redirects and targets must all see the same one (curl
    // sends one Host however many it is given: the raw request sends two).
    let raw = |request: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(lb(&portico)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let two =
        raw("GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n");
    assert!(two.starts_with("HTTP/1.1 400 "), "{two}");
    assert_eq!(
        curl(None, &["-H", "Host: good.example@evil.example", &url]).status,
        400
    );
    assert_eq!(curl(None, &["-H", "Host:", &url]).status, 400);
    // A header over 16 K: 400, not 431.
    let big = format!("X-Big: {}", "v".repeat(17 * 1024));
    assert_eq!(curl(None, &["-H", &big, &url]).status, 400);
    // A transfer coding ALB does not support: 501.
    let r = curl(
        None,
        &[
            "-H",
            "Transfer-Encoding: gzip, chunked",
            "--data-binary",
            "x",
            &url,
        ],
    );
    assert_eq!(r.status, 501, "{r:?}");
    // A lone unsupported coding, which hyper refuses before portico sees the request: ALB's
    // 501 page all the same, and the connection closes after it.
    let gzip = raw(
        "POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    assert!(
        gzip.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
        "{gzip}"
    );
    assert!(gzip.contains("Server: awselb/2.0\r\n"), "{gzip}");
    assert!(
        gzip.ends_with("<center><h1>501 Not Implemented</h1></center>\r\n</body>\r\n</html>\r\n"),
        "{gzip}"
    );
    // A head hyper cannot parse at all: ALB's 400 page, not an empty 400.
    let broken = raw("GET /x HTTP/1.1\r\nHost: a.example\r\nBad Header\r\n\r\n");
    assert!(
        broken.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{broken}"
    );
    assert!(
        broken.contains("<title>400 Bad Request</title>"),
        "{broken}"
    );
    // A header that is not UTF-8 cannot go into a Lambda event: LambdaBadRequest.
    use std::os::unix::ffi::OsStrExt;
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(std::ffi::OsStr::from_bytes(b"X-Bin: a\xffb"))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    // The function is fine for the next request.
    assert_eq!(curl(None, &[&url]).status, 200);
}

/// Sends `request` on a new connection: what the load balancer answered, within 1.5 s.
fn raw_request(lb: SocketAddr, request: &str) -> String {
    exchange_raw(lb, request).0
}

/// Sends `request` on a new connection and reads until the load balancer closes it (or
/// nothing more comes for 1.5 s): everything it answered, and whether it closed.
fn exchange_raw(lb: SocketAddr, request: &str) -> (String, bool) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(lb).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// ALB's desync mitigation modes with AWS's own classifier: `defensive` (the default)
/// refuses a severe request and closes the connection after an ambiguous one, `strictest`
/// refuses anything not compliant, `monitor` forwards everything; the access log carries
/// the classification and its reason.
#[test]
fn desync_mitigation_modes_treat_requests_as_alb_does() {
    let scratch = Scratch::new("desync");
    let log = scratch.0.join("access.log");
    let severe = "POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
    let ambiguous = "GET /x HTTP/1.1\r\nHost: a.example\r\nTransfer_Encoding: chunked\r\n\r\n";
    let acceptable = "GET /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n";
    {
        let portico = Portico::start(&hello_config(&format!(
            "access_logs = {{ enabled = true, destination = {:?} }}",
            log.display()
        )));
        let lb = lb(&portico);
        let (answer, _) = exchange_raw(lb, severe);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let (answer, closed) = exchange_raw(lb, ambiguous);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{answer}"
        );
        assert!(closed, "the connection closes after an ambiguous request");
        let (answer, closed) = exchange_raw(lb, acceptable);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(!closed, "an acceptable request keeps its connection");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<String>> = text.lines().map(fields).collect();
    let classified: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|f| (f[8].as_str(), f[27].as_str(), f[28].as_str()))
        .collect();
    assert_eq!(
        classified,
        [
            ("400", "Severe", "MultipleTransferEncodingChunked"),
            ("200", "Ambiguous", "SuspiciousHeader"),
            ("200", "Acceptable", "GetHeadZeroContentLength"),
        ],
        "{text}"
    );

    let strictest = Portico::start(&hello_config("desync_mitigation_mode = \"strictest\""));
    let (answer, _) = exchange_raw(lb(&strictest), acceptable);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    drop(strictest);
    let monitor = Portico::start(&hello_config("desync_mitigation_mode = \"monitor\""));
    let (answer, _) = exchange_raw(
        lb(&monitor),
        &severe.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

/// A response shaped like hyper's automatic reply to a malformed head (a 4xx with no body),
/// which the listener holds back until it knows which it is, reaches the client whole and
/// in order, and the connection serves the next request.
#[test]
fn an_empty_4xx_response_is_not_mistaken_for_a_malformed_request() {
    let config = hello_config("")
        + r#"
[[load_balancers.web.listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/empty"] }]
action = { type = "fixed-response", status_code = 404 }
"#;
    let portico = Portico::start(&config);
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(lb(&portico)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let head = |reader: &mut BufReader<std::net::TcpStream>| {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                return lines;
            }
            lines.push(line.trim_end().to_ascii_lowercase());
        }
    };
    stream
        .write_all(b"GET /empty HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .unwrap();
    let first = head(&mut reader);
    assert_eq!(first[0], "http/1.1 404 not found", "{first:?}");
    assert!(first.contains(&"content-length: 0".to_owned()), "{first:?}");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let second = head(&mut reader);
    assert_eq!(second[0], "http/1.1 200 ok", "{second:?}");
    let mut body = String::new();
    reader.read_to_string(&mut body).unwrap();
    assert!(!body.is_empty());
}

/// A body that dribbles in holds its connection and its buffer for the load balancer's idle
/// timeout at most, then gets ALB's 408; the function never sees it.
#[test]
fn a_slow_body_gets_a_408_after_the_idle_timeout() {
    let portico = Portico::start(&hello_config("idle_timeout_seconds = 1"));
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(lb(&portico)).unwrap();
    stream
        .write_all(b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let began = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
}
