//! A running listener's rules changed with `aws elbv2`, as on AWS: rules created, modified,
//! reordered and deleted under a steady stream of requests (not one fails; each change is
//! seen within a second; a rule's ARN stays when its priority changes), ELBv2's errors, and
//! the rules kept across a restart.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::time::{Duration, Instant};
use support::load::Load;
use support::{Backend, Portico, Scratch, aws_json, curl};

/// `aws elbv2 ARGS…` against the admin API: its JSON, or its error text.
fn elbv2(portico: &Portico, args: &[&str]) -> Result<serde_json::Value, String> {
    aws_json(
        &format!("http://{}", portico.admin_api.unwrap()),
        "elbv2",
        args,
    )
}

fn get(portico: &Portico, path: &str) -> String {
    curl(
        None,
        &[
            "-s",
            &format!("http://{}{path}", portico.load_balancers[0].1),
        ],
    )
    .body
}

/// Waits until `GET path` answers `body`, at most a second.
fn seen_within_a_second(portico: &Portico, path: &str, body: &str) {
    let started = Instant::now();
    while get(portico, path) != body {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: not {body:?} within a second"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "{path} -> {body:?}: seen after {} ms",
        started.elapsed().as_millis()
    );
}

#[test]
fn rules_change_with_the_aws_cli_under_load_and_stay_after_a_restart() {
    let backend = Backend::start("api", 0);
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "default" }}

[target_groups.api]
target_type = "ip"
targets = ["{backend}"]

[invoke_api]
port = 0

[admin_api]
port = 0
"#,
        backend = backend.address()
    );
    let portico = Portico::start_here(Scratch::new("rules"), &config, &[]);
    let lbs = elbv2(&portico, &["describe-load-balancers", "--names", "web"]).unwrap();
    let lb = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let listeners = elbv2(
        &portico,
        &["describe-listeners", "--load-balancer-arn", &lb],
    )
    .unwrap();
    let listener = listeners["Listeners"][0]["ListenerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(listeners["Listeners"][0]["Protocol"], "HTTP");
    let groups = elbv2(&portico, &["describe-target-groups", "--names", "api"]).unwrap();
    let group = groups["TargetGroups"][0]["TargetGroupArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let rules = elbv2(&portico, &["describe-rules", "--listener-arn", &listener]).unwrap();
    assert_eq!(rules["Rules"].as_array().unwrap().len(), 1, "{rules}");
    assert_eq!(rules["Rules"][0]["IsDefault"], true);

    let mut load = Load::start(
        &[portico.load_balancers[0].1],
        2,
        Duration::from_millis(10),
        "GET /a HTTP/1.1\r\nHost: web\r\n",
    );
    std::thread::sleep(Duration::from_millis(300));

    // Created: a fixed response for /a, a forward for /b.
    let created = elbv2(&portico, &[
        "create-rule", "--listener-arn", &listener, "--priority", "10",
        "--conditions", "Field=path-pattern,Values=/a",
        "--actions", "Type=fixed-response,FixedResponseConfig={StatusCode=200,ContentType=text/plain,MessageBody=rule-a}",
    ]).unwrap();
    let rule_a = created["Rules"][0]["RuleArn"].as_str().unwrap().to_owned();
    assert!(rule_a.contains(":listener-rule/app/web/"), "{rule_a}");
    seen_within_a_second(&portico, "/a", "rule-a");
    let forward = format!("Type=forward,TargetGroupArn={group}");
    let created = elbv2(
        &portico,
        &[
            "create-rule",
            "--listener-arn",
            &listener,
            "--priority",
            "20",
            "--conditions",
            r#"[{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/b", "/a"]}}]"#,
            "--actions",
            &forward,
        ],
    )
    .unwrap();
    let rule_b = created["Rules"][0]["RuleArn"].as_str().unwrap().to_owned();
    assert!(get(&portico, "/b").contains("\"backend\": \"api\""));

    // Modified.
    elbv2(&portico, &[
        "modify-rule", "--rule-arn", &rule_a,
        "--actions", "Type=fixed-response,FixedResponseConfig={StatusCode=200,ContentType=text/plain,MessageBody=rule-a2}",
    ]).unwrap();
    seen_within_a_second(&portico, "/a", "rule-a2");

    // Reordered: /a now goes to the backend (rule b first); the ARNs stay.
    elbv2(
        &portico,
        &[
            "set-rule-priorities",
            "--rule-priorities",
            &format!("RuleArn={rule_a},Priority=30"),
            &format!("RuleArn={rule_b},Priority=5"),
        ],
    )
    .unwrap();
    let started = Instant::now();
    while !get(&portico, "/a").contains("\"backend\": \"api\"") {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "reordered rules not seen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rules = elbv2(&portico, &["describe-rules", "--listener-arn", &listener]).unwrap();
    let listed: Vec<(String, String)> = rules["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["RuleArn"].as_str().unwrap().to_owned(),
                r["Priority"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed[0], (rule_b.clone(), "5".to_owned()), "{rules}");
    assert_eq!(listed[1], (rule_a.clone(), "30".to_owned()));
    assert_eq!(listed[2].1, "default");

    // ELBv2's errors; none changes anything.
    let error = elbv2(
        &portico,
        &[
            "create-rule",
            "--listener-arn",
            &listener,
            "--priority",
            "5",
            "--conditions",
            "Field=path-pattern,Values=/c",
            "--actions",
            "Type=fixed-response,FixedResponseConfig={StatusCode=200}",
        ],
    )
    .unwrap_err();
    assert!(error.contains("PriorityInUse"), "{error}");
    let error = elbv2(
        &portico,
        &[
            "modify-rule",
            "--rule-arn",
            &format!("{rule_a}0"),
            "--actions",
            &forward,
        ],
    )
    .unwrap_err();
    assert!(error.contains("RuleNotFound"), "{error}");
    let error = elbv2(
        &portico,
        &[
            "create-rule",
            "--listener-arn",
            &listener,
            "--priority",
            "7",
            "--conditions",
            "Field=path-pattern,Values=/c",
            "--actions",
            &format!("Type=forward,TargetGroupArn={group}x"),
        ],
    )
    .unwrap_err();
    assert!(error.contains("TargetGroupNotFound"), "{error}");
    let error = elbv2(
        &portico,
        &[
            "create-rule",
            "--listener-arn",
            &listener,
            "--priority",
            "7",
            "--conditions",
            "Field=path-pattern,Values=/c",
            "--actions",
            "Type=fixed-response,FixedResponseConfig={StatusCode=99}",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("ValidationError") && error.contains("rules"),
        "{error}"
    );
    let default = listed[2].0.clone();
    let error = elbv2(&portico, &["delete-rule", "--rule-arn", &default]).unwrap_err();
    assert!(error.contains("OperationNotPermitted"), "{error}");

    // Deleted: /a back to what rule b and the default say.
    elbv2(&portico, &["delete-rule", "--rule-arn", &rule_b]).unwrap();
    seen_within_a_second(&portico, "/a", "rule-a2");
    load.stop();
    let outcomes = load.outcomes();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    eprintln!(
        "{} requests during the changes, {} failed",
        outcomes.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");

    // Kept across a restart, with their ARNs.
    let portico = portico.restart();
    assert_eq!(get(&portico, "/a"), "rule-a2");
    let rules = elbv2(&portico, &["describe-rules", "--rule-arns", &rule_a]).unwrap();
    assert_eq!(rules["Rules"][0]["Priority"], "30", "{rules}");
}

#[test]
fn target_groups_are_made_changed_and_deleted_and_a_listener_moved_to_one_with_the_aws_cli() {
    let backend = Backend::start("fresh", 0);
    let config = r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = { type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "default" }

[invoke_api]
port = 0

[admin_api]
port = 0
"#;
    let portico = Portico::start_here(Scratch::new("groups"), config, &[]);
    let lbs = elbv2(&portico, &["describe-load-balancers"]).unwrap();
    let lb = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let listeners = elbv2(
        &portico,
        &["describe-listeners", "--load-balancer-arn", &lb],
    )
    .unwrap();
    let listener = listeners["Listeners"][0]["ListenerArn"]
        .as_str()
        .unwrap()
        .to_owned();

    // Made, its target registered, and the listener's default action moved to it.
    let created = elbv2(
        &portico,
        &[
            "create-target-group",
            "--name",
            "fresh",
            "--target-type",
            "ip",
            "--protocol",
            "HTTP",
            "--port",
            "80",
            "--vpc-id",
            "vpc-0",
            "--health-check-path",
            "/health",
            "--health-check-interval-seconds",
            "5",
        ],
    )
    .unwrap();
    let group = created["TargetGroups"][0]["TargetGroupArn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        created["TargetGroups"][0]["TargetGroupName"], "fresh",
        "{created}"
    );
    let error = elbv2(
        &portico,
        &[
            "create-target-group",
            "--name",
            "fresh",
            "--target-type",
            "ip",
            "--protocol",
            "HTTP",
            "--port",
            "80",
            "--vpc-id",
            "vpc-0",
        ],
    )
    .unwrap_err();
    assert!(error.contains("DuplicateTargetGroupName"), "{error}");
    let target = format!("Id=127.0.0.1,Port={}", backend.port);
    elbv2(
        &portico,
        &[
            "register-targets",
            "--target-group-arn",
            &group,
            "--targets",
            &target,
        ],
    )
    .unwrap();
    let forward = format!("Type=forward,TargetGroupArn={group}");
    let modified = elbv2(
        &portico,
        &[
            "modify-listener",
            "--listener-arn",
            &listener,
            "--default-actions",
            &forward,
        ],
    )
    .unwrap();
    assert_eq!(
        modified["Listeners"][0]["DefaultActions"][0]["TargetGroupArn"],
        group.as_str(),
        "{modified}"
    );
    let started = Instant::now();
    while !get(&portico, "/").contains("\"backend\": \"fresh\"") {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new default action is not seen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Its attributes and health check changed: its registered target stays.
    let attributes = elbv2(
        &portico,
        &[
            "modify-target-group-attributes",
            "--target-group-arn",
            &group,
            "--attributes",
            "Key=deregistration_delay.timeout_seconds,Value=5",
            "Key=load_balancing.algorithm.type,Value=least_outstanding_requests",
        ],
    )
    .unwrap();
    let value = |key: &str| {
        attributes["Attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["Key"] == key)
            .unwrap()["Value"]
            .clone()
    };
    assert_eq!(
        value("deregistration_delay.timeout_seconds"),
        "5",
        "{attributes}"
    );
    assert_eq!(
        value("load_balancing.algorithm.type"),
        "least_outstanding_requests"
    );
    elbv2(
        &portico,
        &[
            "modify-target-group",
            "--target-group-arn",
            &group,
            "--health-check-path",
            "/count",
        ],
    )
    .unwrap();
    let health = elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &group],
    )
    .unwrap();
    assert_eq!(
        health["TargetHealthDescriptions"].as_array().unwrap().len(),
        1,
        "{health}"
    );
    assert!(get(&portico, "/").contains("\"backend\": \"fresh\""));
    let error = elbv2(
        &portico,
        &[
            "modify-target-group-attributes",
            "--target-group-arn",
            &group,
            "--attributes",
            "Key=no.such.attribute,Value=1",
        ],
    )
    .unwrap_err();
    assert!(error.contains("ValidationError"), "{error}");

    // Kept across a restart: the group, its registered target, the listener's action.
    let portico = portico.restart();
    let health = elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &group],
    )
    .unwrap();
    assert_eq!(
        health["TargetHealthDescriptions"][0]["Target"]["Port"], backend.port,
        "{health}"
    );
    assert!(get(&portico, "/").contains("\"backend\": \"fresh\""));
    // Deregistered: it drains, the group going on.
    elbv2(
        &portico,
        &[
            "deregister-targets",
            "--target-group-arn",
            &group,
            "--targets",
            &target,
        ],
    )
    .unwrap();
    let health = elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &group],
    )
    .unwrap();
    let state = &health["TargetHealthDescriptions"][0]["TargetHealth"]["State"];
    assert!(
        state == "draining"
            || health["TargetHealthDescriptions"]
                .as_array()
                .unwrap()
                .is_empty(),
        "{health}"
    );

    // In use, it cannot go; once the listener leaves it, it can.
    let error = elbv2(
        &portico,
        &["delete-target-group", "--target-group-arn", &group],
    )
    .unwrap_err();
    assert!(error.contains("ResourceInUse"), "{error}");
    elbv2(&portico, &["modify-listener", "--listener-arn", &listener, "--default-actions", "Type=fixed-response,FixedResponseConfig={StatusCode=200,ContentType=text/plain,MessageBody=back}"]).unwrap();
    assert_eq!(get(&portico, "/"), "back");
    elbv2(
        &portico,
        &["delete-target-group", "--target-group-arn", &group],
    )
    .unwrap();
    let error = elbv2(&portico, &["describe-target-groups", "--names", "fresh"]).unwrap_err();
    assert!(error.contains("TargetGroupNotFound"), "{error}");
}

#[test]
fn a_lambda_target_group_is_made_and_its_function_registered_with_the_aws_cli() {
    let scratch = Scratch::new("lambda-group");
    std::fs::create_dir_all(scratch.0.join("code")).unwrap();
    std::fs::write(
        scratch.0.join("code/app.py"),
        support::versioned_function("code-1"),
    )
    .unwrap();
    let config = r#"
[functions.greet]
runtime = "python3.11"
code = "code"
handler = "app.handler"

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = { type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "default" }

[invoke_api]
port = 0

[admin_api]
port = 0
"#;
    let portico = Portico::start_here(scratch, config, &[]);
    let created = elbv2(
        &portico,
        &[
            "create-target-group",
            "--name",
            "fn",
            "--target-type",
            "lambda",
        ],
    )
    .unwrap();
    let group = created["TargetGroups"][0]["TargetGroupArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let health = elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &group],
    )
    .unwrap();
    assert_eq!(
        health["TargetHealthDescriptions"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
        0,
        "{health}"
    );
    let lbs = elbv2(&portico, &["describe-load-balancers"]).unwrap();
    let lb = lbs["LoadBalancers"][0]["LoadBalancerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let listeners = elbv2(
        &portico,
        &["describe-listeners", "--load-balancer-arn", &lb],
    )
    .unwrap();
    let listener = listeners["Listeners"][0]["ListenerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    elbv2(
        &portico,
        &[
            "create-rule",
            "--listener-arn",
            &listener,
            "--priority",
            "1",
            "--conditions",
            "Field=path-pattern,Values=/fn",
            "--actions",
            &format!("Type=forward,TargetGroupArn={group}"),
        ],
    )
    .unwrap();
    // No function yet: ALB's 503.
    let reply = curl(
        None,
        &["-s", &format!("http://{}/fn", portico.load_balancers[0].1)],
    );
    assert_eq!(reply.status, 503, "{reply:?}");

    // Its function registered: it answers.
    let function = "Id=arn:aws:lambda:us-east-1:000000000000:function:greet";
    elbv2(
        &portico,
        &[
            "register-targets",
            "--target-group-arn",
            &group,
            "--targets",
            function,
        ],
    )
    .unwrap();
    assert!(get(&portico, "/fn").starts_with("code-1 "));
    let health = elbv2(
        &portico,
        &["describe-target-health", "--target-group-arn", &group],
    )
    .unwrap();
    assert!(
        health["TargetHealthDescriptions"][0]["Target"]["Id"]
            .as_str()
            .unwrap()
            .ends_with(":function:greet"),
        "{health}"
    );
    // One function per group; only functions portico has.
    let error = elbv2(
        &portico,
        &[
            "register-targets",
            "--target-group-arn",
            &group,
            "--targets",
            "Id=arn:aws:lambda:us-east-1:000000000000:function:other",
        ],
    )
    .unwrap_err();
    assert!(error.contains("TooManyTargets"), "{error}");
    let error = elbv2(
        &portico,
        &[
            "deregister-targets",
            "--target-group-arn",
            &group,
            "--targets",
            "Id=other",
        ],
    )
    .unwrap_err();
    assert!(error.contains("InvalidTarget"), "{error}");

    // Deregistered: no target again.
    elbv2(
        &portico,
        &[
            "deregister-targets",
            "--target-group-arn",
            &group,
            "--targets",
            function,
        ],
    )
    .unwrap();
    let reply = curl(
        None,
        &["-s", &format!("http://{}/fn", portico.load_balancers[0].1)],
    );
    assert_eq!(reply.status, 503, "{reply:?}");
}
