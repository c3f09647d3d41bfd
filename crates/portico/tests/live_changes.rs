//! Everything changed while it serves, end to end: a steady stream of requests through the
//! static IP (edge → load balancer → function) while new function code is deployed ten
//! times, a weighted alias moves from 0 % to 100 % in steps, rules are added, modified and
//! deleted with `aws elbv2`, a certificate is rotated and the file is reloaded. Not one
//! request fails, and each change is seen within a second. The test prints what each
//! change cost: the time until the stream saw it, and the requests in flight at that
//! moment.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::load::{Load, Outcome};
use support::{Portico, Scratch, aws_json, certificate, package, presented, versioned_function};

fn config(greeting: &str) -> String {
    format!(
        r#"
[accelerator]
name = "edge"
static_ips = ["127.0.0.1"]
[[accelerator.listeners]]
port = 0
[[accelerator.listeners.endpoint_groups]]
region = "local"
endpoints = [{{ load_balancer = "web" }}]

[functions.greet]
runtime = "python3.11"
code = "code"
handler = "app.handler"
environment = {{ GREETING = "{greeting}" }}

[functions.greet.versions.1]
runtime = "python3.11"
code = "v1"
handler = "app.handler"

[functions.greet.aliases.live]
function_version = "1"

[target_groups.latest]
target_type = "lambda"
function = "greet"

[target_groups.live]
target_type = "lambda"
function = "greet:live"

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "latest" }}

[[load_balancers.web.listeners.rules]]
priority = 5
conditions = [{{ field = "path-pattern", values = ["/live"] }}]
action = {{ type = "forward", target_group = "live" }}

[[load_balancers.web.listeners]]
port = 0
protocol = "HTTPS"
certificates = [{{ certificate = "server.crt", private_key = "server.key" }}]
default_action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "tls" }}

[invoke_api]
port = 0

[admin_api]
port = 0
"#
    )
}

/// What one change cost.
struct Cost {
    name: String,
    /// From asking (the CLI started) to the answer: the API's time, the CLI's start included.
    answered: Duration,
    /// From the answer until the stream saw the change (zero when it saw it before).
    visible: Duration,
    in_flight: usize,
}

/// When `load` first answered as `seen` with a request that started after `asked`, and how
/// many of its requests were in flight when the change was answered (`answered`); waits
/// (at most 2 s) for it.
fn cost(
    load: &Load,
    name: &str,
    (asked, answered): (Instant, Instant),
    seen: impl Fn(&str) -> bool,
) -> Cost {
    loop {
        let outcomes = load.outcomes();
        let first = outcomes
            .iter()
            .filter(|o| o.started >= asked && o.body.as_deref().is_some_and(&seen))
            .map(|o| o.ended)
            .min();
        if let Some(first) = first {
            let in_flight = outcomes
                .iter()
                .filter(|o| o.started <= answered && o.ended >= answered)
                .count();
            let visible = first.saturating_duration_since(answered);
            assert!(
                visible < Duration::from_secs(1),
                "{name}: seen {visible:?} after the answer"
            );
            return Cost {
                name: name.to_owned(),
                answered: answered - asked,
                visible,
                in_flight,
            };
        }
        assert!(
            answered.elapsed() < Duration::from_secs(2),
            "{name}: never seen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes.iter().filter_map(|o| o.error.clone()).collect()
}

#[test]
fn everything_changes_under_a_steady_stream_through_the_static_ip_and_not_one_request_fails() {
    let scratch = Scratch::new("live");
    let dir = scratch.0.clone();
    for (code, version) in [("code", "code-1"), ("v1", "v1")] {
        std::fs::create_dir_all(dir.join(code)).unwrap();
        std::fs::write(dir.join(code).join("app.py"), versioned_function(version)).unwrap();
    }
    certificate(&dir, "first.test");
    let portico = Portico::start_here(scratch, &config("hello"), &[]);
    let static_ip: SocketAddr = portico.static_addresses[0];
    let https = portico.load_balancers[1].1;
    // When the last API call was answered.
    let answered = std::cell::Cell::new(Instant::now());
    let call = |api: Option<SocketAddr>, service: &str, args: &[&str]| {
        let out = aws_json(&format!("http://{}", api.unwrap()), service, args);
        answered.set(Instant::now());
        out
    };
    let lambda = |args: &[&str]| call(portico.invoke_api, "lambda", args);
    let elbv2 = |args: &[&str]| call(portico.admin_api, "elbv2", args);
    // The streams: the function's $LATEST, the alias, and a path the rules change.
    let request = |path: &str| -> &'static str {
        Box::leak(format!("GET {path} HTTP/1.1\r\nHost: web\r\n").into_boxed_str())
    };
    let mut latest = Load::start(&[static_ip], 2, Duration::from_millis(10), request("/"));
    let mut live = Load::start(&[static_ip], 2, Duration::from_millis(10), request("/live"));
    let mut ruled = Load::start(&[static_ip], 1, Duration::from_millis(10), request("/rule"));
    std::thread::sleep(Duration::from_millis(500));
    let mut costs = Vec::new();

    // Ten deploys of new code.
    for n in 2..=11 {
        let version = format!("code-{n}");
        let zip = dir.join(format!("{version}.zip"));
        package(&zip, &version);
        let asked = Instant::now();
        lambda(&[
            "update-function-code",
            "--function-name",
            "greet",
            "--zip-file",
            &format!("fileb://{}", zip.display()),
        ])
        .unwrap();
        let prefix = format!("{version} ");
        costs.push(cost(
            &latest,
            &format!("deploy {version}"),
            (asked, answered.get()),
            |b| b.starts_with(&prefix),
        ));
    }

    // The alias moves to a new version, in steps.
    let published = lambda(&["publish-version", "--function-name", "greet"]).unwrap();
    assert_eq!(published["Version"], "2", "{published}");
    for weight in ["0.25", "0.5", "0.75"] {
        let asked = Instant::now();
        lambda(&[
            "update-alias",
            "--function-name",
            "greet",
            "--name",
            "live",
            "--routing-config",
            &format!("AdditionalVersionWeights={{2={weight}}}"),
        ])
        .unwrap();
        costs.push(cost(
            &live,
            &format!("alias at {weight}"),
            (asked, answered.get()),
            |b| b.starts_with("code-11 "),
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    let asked = Instant::now();
    lambda(&[
        "update-alias",
        "--function-name",
        "greet",
        "--name",
        "live",
        "--function-version",
        "2",
        "--routing-config",
        "AdditionalVersionWeights={}",
    ])
    .unwrap();
    costs.push(cost(&live, "alias at 1.0", (asked, answered.get()), |b| {
        b.starts_with("code-11 ")
    }));
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<String> = live
        .outcomes()
        .iter()
        .filter(|o| o.started > answered.get())
        .filter_map(|o| o.body.clone())
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|b| b.starts_with("code-11 ")),
        "{after:?}"
    );

    // Rules: added, modified, deleted.
    let lbs = elbv2(&["describe-load-balancers", "--names", "web"]).unwrap();
    let lb = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let listeners = elbv2(&["describe-listeners", "--load-balancer-arn", &lb]).unwrap();
    let listener = listeners["Listeners"][0]["ListenerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let fixed = |body: &str| {
        format!(
            "Type=fixed-response,FixedResponseConfig={{StatusCode=200,ContentType=text/plain,MessageBody={body}}}"
        )
    };
    let asked = Instant::now();
    let created = elbv2(&[
        "create-rule",
        "--listener-arn",
        &listener,
        "--priority",
        "10",
        "--conditions",
        "Field=path-pattern,Values=/rule",
        "--actions",
        &fixed("rule-1"),
    ])
    .unwrap();
    let rule = created["Rules"][0]["RuleArn"].as_str().unwrap().to_owned();
    costs.push(cost(&ruled, "rule added", (asked, answered.get()), |b| {
        b == "rule-1"
    }));
    let asked = Instant::now();
    elbv2(&[
        "modify-rule",
        "--rule-arn",
        &rule,
        "--actions",
        &fixed("rule-2"),
    ])
    .unwrap();
    costs.push(cost(
        &ruled,
        "rule modified",
        (asked, answered.get()),
        |b| b == "rule-2",
    ));
    let asked = Instant::now();
    elbv2(&["delete-rule", "--rule-arn", &rule]).unwrap();
    costs.push(cost(&ruled, "rule deleted", (asked, answered.get()), |b| {
        b.starts_with("code-11 ")
    }));

    // The file reloaded (a new greeting) with the certificate rotated: the changes made
    // through the APIs stay over it.
    certificate(&dir, "second.test");
    std::fs::write(&portico.config_file, config("bonjour")).unwrap();
    let asked = Instant::now();
    portico.reload();
    answered.set(asked);
    costs.push(cost(
        &latest,
        "file reloaded",
        (asked, answered.get()),
        |b| b.starts_with("code-11 bonjour "),
    ));
    let started = Instant::now();
    while presented(https) != "CN = second.test" {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the rotated certificate is not presented"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    costs.push(Cost {
        name: "certificate rotated".into(),
        answered: Duration::ZERO,
        visible: started.elapsed(),
        in_flight: 0,
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        live.outcomes()
            .last()
            .unwrap()
            .body
            .as_deref()
            .unwrap()
            .starts_with("code-11 ")
    );

    for load in [&mut latest, &mut live, &mut ruled] {
        load.stop();
    }
    eprintln!(
        "{:<24} {:>12} {:>12} {:>12}",
        "change", "answered ms", "visible ms", "in flight"
    );
    for c in &costs {
        eprintln!(
            "{:<24} {:>12} {:>12} {:>12}",
            c.name,
            c.answered.as_millis(),
            c.visible.as_millis(),
            c.in_flight
        );
    }
    let mut total = 0;
    for (name, load) in [("/", &latest), ("/live", &live), ("/rule", &ruled)] {
        let outcomes = load.outcomes();
        total += outcomes.len();
        let failed = failures(&outcomes);
        assert!(failed.is_empty(), "{name}: {failed:?}");
    }
    eprintln!("{total} requests through the static IP, none failed");
}
