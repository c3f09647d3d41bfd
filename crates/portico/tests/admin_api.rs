//! The admin API through the real AWS CLI (`aws elbv2 … --endpoint-url`): target groups
//! described, targets deregistered (draining while a request is in flight) and registered
//! again, ALB's health states and reasons, Lambda target group health checks with the
//! documented event, and ALB's errors for bad requests.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::*;

fn elbv2(portico: &Portico, args: &[&str]) -> Output {
    let endpoint = format!("http://{}", portico.admin_api.unwrap());
    aws_cli(&endpoint, "elbv2", args)
}

/// Registers `address` with the group `arn` through the AWS CLI.
fn register(portico: &Portico, arn: &str, address: &str) {
    ok_json(&elbv2(
        portico,
        &[
            "register-targets",
            "--target-group-arn",
            arn,
            "--targets",
            &target_arg(address),
        ],
    ));
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "aws elbv2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn failed_with(out: &Output, code: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected {code}, got success");
    assert!(
        stderr.contains(&format!("({code})")),
        "expected {code}: {stderr}"
    );
    stderr
}

fn arn_of(portico: &Portico, name: &str) -> String {
    let groups = ok_json(&elbv2(
        portico,
        &["describe-target-groups", "--names", name],
    ));
    groups["TargetGroups"][0]["TargetGroupArn"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `(address, state, reason)` of every target `describe-target-health` reports.
fn health(portico: &Portico, arn: &str, targets: &[String]) -> Vec<(String, String, String)> {
    let mut args = vec!["describe-target-health", "--target-group-arn", arn];
    if !targets.is_empty() {
        args.push("--targets");
        args.extend(targets.iter().map(String::as_str));
    }
    let reply = ok_json(&elbv2(portico, &args));
    reply["TargetHealthDescriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let target = &d["Target"];
            let address = match target["Port"].as_u64() {
                Some(port) => format!("{}:{port}", target["Id"].as_str().unwrap()),
                None => target["Id"].as_str().unwrap().to_owned(),
            };
            let h = &d["TargetHealth"];
            (
                address,
                h["State"].as_str().unwrap().to_owned(),
                h["Reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn target_arg(address: &str) -> String {
    let (ip, port) = address.rsplit_once(':').unwrap();
    format!("Id={ip},Port={port}")
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backend_of(url: &str) -> String {
    curl(None, &[url])
        .header("x-backend")
        .unwrap_or_default()
        .to_owned()
}

/// A load balancer forwarding to the `ip` target group `servers` with `targets` and the
/// group settings in `settings` (TOML lines).
fn servers_config(targets: &[String], settings: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r#"
[load_balancers.web]
listeners = [{{ port = 0, default_action = {{ type = "forward", target_group = "servers" }} }}]

[target_groups.servers]
target_type = "ip"
targets = [{}]
{settings}

[invoke_api]
enabled = false
"#,
        targets.join(", ")
    )
}

#[test]
fn deregistered_targets_drain_and_registered_ones_come_back_through_the_aws_cli() {
    let a = Backend::start("a", 0);
    let b = Backend::start("b", 0);
    let config = servers_config(
        &[a.address(), b.address()],
        r#"deregistration_delay_seconds = 30
health_check = { path = "/health", interval_seconds = 0.2, timeout_seconds = 0.15, healthy_threshold = 2, unhealthy_threshold = 2, matcher = "200-299" }"#,
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let groups = ok_json(&elbv2(&portico, &["describe-target-groups"]));
    let group = &groups["TargetGroups"][0];
    assert_eq!(group["TargetGroupName"], "servers");
    assert_eq!(group["TargetType"], "ip");
    assert_eq!(group["Protocol"], "HTTP");
    assert_eq!(group["HealthCheckPath"], "/health");
    assert_eq!(group["HealthyThresholdCount"], 2);
    assert_eq!(group["Matcher"]["HttpCode"], "200-299");
    let arn = arn_of(&portico, "servers");
    assert!(
        arn.starts_with("arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/servers/")
    );

    wait_for(Duration::from_secs(10), "both healthy", || {
        health(&portico, &arn, &[])
            .iter()
            .all(|(_, state, _)| state == "healthy")
    });

    // A slow request on each target, then b is deregistered while its request is in flight.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("http://{lb}/slow");
            std::thread::spawn(move || backend_of(&url))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let deregistered = elbv2(
        &portico,
        &[
            "deregister-targets",
            "--target-group-arn",
            &arn,
            "--targets",
            &target_arg(&b.address()),
        ],
    );
    assert!(
        deregistered.status.success(),
        "{}",
        String::from_utf8_lossy(&deregistered.stderr)
    );
    let states = health(&portico, &arn, &[target_arg(&b.address())]);
    assert_eq!(
        states,
        [(
            b.address(),
            "draining".into(),
            "Target.DeregistrationInProgress".into()
        )]
    );
    // New requests go to a only; the request in flight on b finishes on b.
    for _ in 0..6 {
        assert_eq!(backend_of(&format!("http://{lb}/x")), "a");
    }
    let mut finished: Vec<String> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    finished.sort();
    assert_eq!(
        finished,
        ["a", "b"],
        "in-flight requests complete while draining"
    );
    // Done draining (nothing in flight): b is gone long before the 30 s delay.
    wait_for(Duration::from_secs(5), "b removed", || {
        health(&portico, &arn, &[]).len() == 1
    });
    assert_eq!(
        health(&portico, &arn, &[target_arg(&b.address())]),
        [(b.address(), "unused".into(), "Target.NotRegistered".into())]
    );

    // Registered again: initial until it passes a check, then it takes traffic again.
    register(&portico, &arn, &b.address());
    wait_for(Duration::from_secs(10), "b healthy again", || {
        health(&portico, &arn, &[target_arg(&b.address())])[0].1 == "healthy"
    });
    let seen: Vec<String> = (0..6)
        .map(|_| backend_of(&format!("http://{lb}/x")))
        .collect();
    assert!(seen.iter().any(|s| s == "b"), "{seen:?}");

    // ALB's errors.
    let missing = "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/nope/0";
    failed_with(
        &elbv2(
            &portico,
            &["describe-target-health", "--target-group-arn", missing],
        ),
        "TargetGroupNotFound",
    );
    failed_with(
        &elbv2(
            &portico,
            &[
                "deregister-targets",
                "--target-group-arn",
                &arn,
                "--targets",
                "Id=127.0.0.1,Port=1",
            ],
        ),
        "InvalidTarget",
    );
    failed_with(
        &elbv2(
            &portico,
            &[
                "register-targets",
                "--target-group-arn",
                &arn,
                "--targets",
                "Id=not-an-ip,Port=80",
            ],
        ),
        "ValidationError",
    );
    failed_with(
        &elbv2(&portico, &["describe-target-groups", "--names", "nope"]),
        "TargetGroupNotFound",
    );
}

#[test]
fn unhealthy_reasons_are_albs() {
    let a = Backend::start("a", 0);
    let config = servers_config(
        &[a.address(), "127.0.0.1:1".to_owned()],
        r#"health_check = { path = "/status/503", interval_seconds = 0.2, timeout_seconds = 0.15, healthy_threshold = 2, unhealthy_threshold = 2 }"#,
    );
    let portico = Portico::start(&config);
    let arn = arn_of(&portico, "servers");
    wait_for(Duration::from_secs(10), "both unhealthy", || {
        health(&portico, &arn, &[])
            .iter()
            .all(|(_, state, _)| state == "unhealthy")
    });
    let states = health(&portico, &arn, &[]);
    assert_eq!(states[0].2, "Target.ResponseCodeMismatch", "{states:?}");
    assert_eq!(states[1].2, "Target.FailedHealthChecks", "{states:?}");
    let reply = ok_json(&elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &arn],
    ));
    assert_eq!(
        reply["TargetHealthDescriptions"][0]["TargetHealth"]["Description"],
        "Health checks failed with these codes: [503]"
    );
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn lambda_target_groups_are_checked_with_albs_event_only_when_enabled() {
    let scratch = Scratch::new("lambda-health");
    let events = scratch.0.join("events.jsonl");
    let status = scratch.0.join("status");
    let code = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/pyapp");
    let config = format!(
        r#"
[load_balancers.web]
listeners = [{{ port = 0, default_action = {{ type = "forward", target_group = "checked" }} }}]

[target_groups.checked]
target_type = "lambda"
function = "health"
health_check = {{ enabled = true, path = "/ping", interval_seconds = 0.3, timeout_seconds = 0.25, healthy_threshold = 2, unhealthy_threshold = 2 }}

[target_groups.unchecked]
target_type = "lambda"
function = "health"

[functions.health]
runtime = "python3.11"
code = "{}"
handler = "health.handler"
environment = {{ EVENTS_FILE = "{}", STATUS_FILE = "{}" }}

# The function tells the test what it was sent through the test's files on the host, which
# a sandbox would not let it write.
[runtime]
sandbox = false

[invoke_api]
enabled = false
"#,
        code.display(),
        events.display(),
        status.display()
    );
    let portico = Portico::start(&config);
    let checked = arn_of(&portico, "checked");
    let unchecked = arn_of(&portico, "unchecked");
    let function_arn = "arn:aws:lambda:us-east-1:000000000000:function:health";

    wait_for(Duration::from_secs(15), "the function healthy", || {
        health(&portico, &checked, &[])[0].1 == "healthy"
    });
    assert_eq!(health(&portico, &checked, &[])[0].0, function_arn);
    assert_eq!(
        health(&portico, &unchecked, &[]),
        [(
            function_arn.to_owned(),
            "unavailable".into(),
            "Target.HealthCheckDisabled".into()
        )]
    );

    // The documented health check event.
    let event = read_events(&events).into_iter().next().unwrap();
    assert_eq!(event["httpMethod"], "GET");
    assert_eq!(event["path"], "/ping");
    assert_eq!(event["headers"]["user-agent"], "ELB-HealthChecker/2.0");
    assert_eq!(
        event["requestContext"]["elb"]["targetGroupArn"],
        checked.as_str()
    );
    assert_eq!(event["body"], "");
    assert_eq!(event["isBase64Encoded"], false);
    assert_eq!(event["queryStringParameters"], serde_json::json!({}));

    // A status the matcher does not take: unhealthy, with ALB's reason.
    std::fs::write(&status, "503").unwrap();
    wait_for(Duration::from_secs(15), "the function unhealthy", || {
        health(&portico, &checked, &[])[0].1 == "unhealthy"
    });
    assert_eq!(
        health(&portico, &checked, &[])[0].2,
        "Target.ResponseCodeMismatch"
    );
    // ALB still invokes the function of an unhealthy Lambda target group.
    let lb = portico.load_balancers[0].1;
    assert_eq!(curl(None, &[&format!("http://{lb}/real")]).status, 503);
    let real = read_events(&events);
    assert!(real.iter().any(|e| e["path"] == "/real"));
    assert!(
        real.iter()
            .filter(|e| e["path"] == "/real")
            .all(|e| e["headers"]["user-agent"] != "ELB-HealthChecker/2.0")
    );
}

/// How many of `n` requests (one curl, one kept-alive connection) each backend answered.
fn split(url: &str, n: usize) -> (usize, usize) {
    let urls: Vec<&str> = std::iter::repeat_n(url, n).collect();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-"])
        .args(&urls)
        .output()
        .unwrap();
    let heads = String::from_utf8_lossy(&out.stdout).to_lowercase();
    (
        heads.matches("x-backend: a").count(),
        heads.matches("x-backend: b").count(),
    )
}

#[test]
fn a_target_registered_into_slow_start_gets_a_small_share_at_first() {
    let a = Backend::start("a", 0);
    let b = Backend::start("b", 0);
    let config = servers_config(
        &[a.address()],
        r#"slow_start_seconds = 30
health_check = { path = "/health", interval_seconds = 0.2, timeout_seconds = 0.15 }"#,
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let arn = arn_of(&portico, "servers");
    wait_for(Duration::from_secs(10), "a healthy", || {
        health(&portico, &arn, &[])[0].1 == "healthy"
    });
    std::thread::sleep(Duration::from_secs(3));
    register(&portico, &arn, &b.address());
    // From registration on: b is checked once (0.2 s) and then ramps over 30 s, while a
    // is not in slow start (no other target was healthy when it became healthy). Over the
    // next second or two b weighs a few percent of a; round robin would split evenly.
    let (to_a, to_b) = split(&format!("http://{lb}/x"), 1000);
    eprintln!("slow start: a {to_a}, b {to_b} of 1000");
    assert_eq!(to_a + to_b, 1000);
    assert_eq!(
        health(&portico, &arn, &[target_arg(&b.address())])[0].1,
        "healthy"
    );
    assert!(
        to_b < 200,
        "b in slow start got {to_b} of 1000 (round robin would give 500)"
    );
}

#[test]
fn malformed_and_oversized_admin_requests_get_clear_errors() {
    let a = Backend::start("a", 0);
    let config = servers_config(&[a.address()], "")
        .replace(r#"target_type = "ip""#, r#"target_type = "instance""#);
    let portico = Portico::start(&config);
    let url = format!("http://{}/", portico.admin_api.unwrap());
    let groups = ok_json(&elbv2(&portico, &["describe-target-groups"]));
    assert_eq!(groups["TargetGroups"][0]["TargetType"], "instance");
    let post = |body: &str| curl(None, &["-X", "POST", "--data-binary", body, &url]);

    let unknown = post("Action=LaunchRockets&Version=2015-12-01");
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body.contains("<Code>InvalidAction</Code>"),
        "{}",
        unknown.body
    );
    let no_arn = post("Action=DescribeTargetHealth&Version=2015-12-01");
    assert_eq!(no_arn.status, 400);
    assert!(
        no_arn.body.contains("TargetGroupArn is required"),
        "{}",
        no_arn.body
    );
    let arn = arn_of(&portico, "servers");
    let bad_port = post(&format!(
        "Action=RegisterTargets&TargetGroupArn={arn}&Targets.member.1.Id=127.0.0.1&Targets.member.1.Port=0"
    ));
    assert_eq!(bad_port.status, 400);
    assert!(
        bad_port.body.contains("<Code>ValidationError</Code>"),
        "{}",
        bad_port.body
    );
    let no_port = post(&format!(
        "Action=RegisterTargets&TargetGroupArn={arn}&Targets.member.1.Id=127.0.0.1"
    ));
    assert!(
        no_port.body.contains("A port must be given"),
        "{}",
        no_port.body
    );
    let garbage = post("%%%&&&=\u{1}");
    assert_eq!(garbage.status, 400);
    // No target in the link-local range, where metadata services answer.
    for metadata in ["169.254.169.254", "fe80::1", "fd00:ec2::254"] {
        let refused = post(&format!(
            "Action=RegisterTargets&TargetGroupArn={arn}&Targets.member.1.Id={metadata}&Targets.member.1.Port=80"
        ));
        assert_eq!(refused.status, 400, "{metadata}");
        assert!(
            refused.body.contains("<Code>InvalidTarget</Code>"),
            "{}",
            refused.body
        );
    }
    // Nor at portico itself: its load balancer (a loop) or its admin API.
    let own = [portico.load_balancers[0].1, portico.admin_api.unwrap()];
    for address in own {
        let refused = post(&format!(
            "Action=RegisterTargets&TargetGroupArn={arn}&Targets.member.1.Id={}&Targets.member.1.Port={}",
            address.ip(),
            address.port()
        ));
        assert_eq!(refused.status, 400, "{address}");
        assert!(
            refused
                .body
                .contains("own listeners and cannot be a target"),
            "{}",
            refused.body
        );
    }
    // ALB's quota: 1 000 targets in a group (at most 200 a request, as ALB takes).
    let mut last = None;
    for batch in 0..6 {
        let members: Vec<String> = (0..200)
            .map(|i| {
                let n = batch * 200 + i + 1;
                format!(
                    "Targets.member.{}.Id=10.77.{}.{}&Targets.member.{}.Port=80",
                    i + 1,
                    n / 250,
                    n % 250 + 1,
                    i + 1
                )
            })
            .collect();
        last = Some(post(&format!(
            "Action=RegisterTargets&TargetGroupArn={arn}&{}",
            members.join("&")
        )));
    }
    let over = last.unwrap();
    assert_eq!(over.status, 400, "{}", over.body);
    assert!(
        over.body.contains("<Code>TooManyTargets</Code>"),
        "{}",
        over.body
    );

    let scratch = Scratch::new("admin-big");
    let big = scratch.write("big.txt", &"A".repeat(300 * 1024));
    let huge = curl(
        None,
        &[
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", big.display()),
            &url,
        ],
    );
    assert_eq!(huge.status, 413);
    assert_eq!(curl(None, &[&format!("{url}nope")]).status, 404);
    // Nothing refused changed the group: the one it had and 4 × 200 (a fifth batch would
    // have made 1 001).
    assert_eq!(health(&portico, &arn, &[]).len(), 801);
}
