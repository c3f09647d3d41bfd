//! Deploys through the Lambda API with the AWS CLI, as teams make them: new code and
//! configuration under a steady stream of requests through the load balancer (not one
//! fails, each change is seen within a second), functions created, limited and deleted,
//! Lambda's errors, and changes that outlive a restart and show in `portico export`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::load::Load;
use support::{Portico, Scratch, aws_json, curl, package, portico_bin, versioned_function};

const CONFIG: &str = r#"
[functions.greet]
runtime = "python3.11"
code = "code"
handler = "app.handler"
environment = { GREETING = "hello" }

[target_groups.greet]
target_type = "lambda"
function = "greet"

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = { type = "forward", target_group = "greet" }

[invoke_api]
port = 0

[admin_api]
port = 0
"#;

/// `aws lambda ARGS…`: its JSON output when it succeeded, else its error text.
fn lambda(portico: &Portico, args: &[&str]) -> Result<Value, String> {
    aws_json(
        &format!("http://{}", portico.invoke_api.unwrap()),
        "lambda",
        args,
    )
}

/// The load balancer's answer to `GET /`.
fn answer(portico: &Portico) -> String {
    curl(
        None,
        &["-s", &format!("http://{}/", portico.load_balancers[0].1)],
    )
    .body
}

/// Waits until the load balancer answers as `seen` says, at most a second.
fn seen_within_a_second(portico: &Portico, what: &str, seen: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let body = answer(portico);
        if seen(&body) {
            eprintln!("{what}: seen after {} ms", started.elapsed().as_millis());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: still {body:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn functions_are_deployed_with_the_aws_cli_under_load_and_the_changes_outlive_a_restart() {
    let scratch = Scratch::new("deploys");
    let dir = scratch.0.clone();
    std::fs::create_dir_all(dir.join("code")).unwrap();
    std::fs::write(dir.join("code/app.py"), versioned_function("code-1")).unwrap();
    let v2 = dir.join("v2.zip");
    package(&v2, "code-2");
    let portico = Portico::start_here(scratch, CONFIG, &[]);
    assert!(answer(&portico).starts_with("code-1 hello "));
    let lb = portico.load_balancers[0].1;
    let mut load = Load::start(
        &[lb],
        2,
        Duration::from_millis(15),
        "GET / HTTP/1.1\r\nHost: web\r\n",
    );
    std::thread::sleep(Duration::from_millis(300));

    // New code, as `sam deploy` or a CI job sends it.
    let zip = format!("fileb://{}", v2.display());
    let updated = lambda(
        &portico,
        &[
            "update-function-code",
            "--function-name",
            "greet",
            "--zip-file",
            &zip,
        ],
    )
    .unwrap();
    let sha = {
        use base64::Engine;
        let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&v2).unwrap());
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    };
    assert_eq!(updated["CodeSha256"], sha, "{updated}");
    assert_eq!(updated["LastUpdateStatus"], "Successful");
    assert_eq!(updated["State"], "Active");
    seen_within_a_second(&portico, "new code", |b| b.starts_with("code-2 hello "));
    // The CLI's waiter is satisfied.
    lambda(
        &portico,
        &["wait", "function-updated", "--function-name", "greet"],
    )
    .unwrap();

    // New configuration.
    let stale_revision = lambda(
        &portico,
        &["get-function-configuration", "--function-name", "greet"],
    )
    .unwrap()["RevisionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let updated = lambda(
        &portico,
        &[
            "update-function-configuration",
            "--function-name",
            "greet",
            "--memory-size",
            "256",
            "--environment",
            "Variables={GREETING=hola}",
        ],
    )
    .unwrap();
    assert_eq!(updated["MemorySize"], 256, "{updated}");
    assert_eq!(updated["Environment"]["Variables"]["GREETING"], "hola");
    seen_within_a_second(&portico, "new configuration", |b| {
        b.starts_with("code-2 hola ")
    });
    // A change made against a revision that is no longer the function's is refused.
    let stale = stale_revision.as_str();
    let error = lambda(
        &portico,
        &[
            "update-function-configuration",
            "--function-name",
            "greet",
            "--timeout",
            "9",
            "--revision-id",
            stale,
        ],
    )
    .unwrap_err();
    assert!(error.contains("PreconditionFailedException"), "{error}");
    let current = updated["RevisionId"].as_str().unwrap();
    assert_ne!(current, stale);
    let updated = lambda(
        &portico,
        &[
            "update-function-configuration",
            "--function-name",
            "greet",
            "--timeout",
            "9",
            "--revision-id",
            current,
        ],
    )
    .unwrap();
    assert_eq!(updated["Timeout"], 9, "{updated}");

    load.stop();
    let outcomes = load.outcomes();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    eprintln!(
        "{} requests during the deploys, {} failed",
        outcomes.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");

    // A new function, its concurrency reserved.
    let created = lambda(
        &portico,
        &[
            "create-function",
            "--function-name",
            "extra",
            "--runtime",
            "python3.11",
            "--handler",
            "app.handler",
            "--role",
            "arn:aws:iam::000000000000:role/extra",
            "--zip-file",
            &zip,
            "--timeout",
            "7",
        ],
    )
    .unwrap();
    assert_eq!(created["FunctionName"], "extra", "{created}");
    assert_eq!(created["Timeout"], 7);
    let out = dir.join("out.json");
    let invoked = lambda(
        &portico,
        &["invoke", "--function-name", "extra", out.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(invoked["StatusCode"], 200, "{invoked}");
    let reply: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        reply["body"].as_str().unwrap().starts_with("code-2 - "),
        "{reply}"
    );
    let limited = lambda(
        &portico,
        &[
            "put-function-concurrency",
            "--function-name",
            "extra",
            "--reserved-concurrent-executions",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(limited["ReservedConcurrentExecutions"], 5);
    let got = lambda(
        &portico,
        &["get-function-concurrency", "--function-name", "extra"],
    )
    .unwrap();
    assert_eq!(got["ReservedConcurrentExecutions"], 5);

    // Lambda's errors; none of them changes anything.
    let error = lambda(
        &portico,
        &[
            "update-function-code",
            "--function-name",
            "nope",
            "--zip-file",
            &zip,
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("ResourceNotFoundException") && error.contains("function:nope"),
        "{error}"
    );
    let error = lambda(
        &portico,
        &[
            "create-function",
            "--function-name",
            "extra",
            "--runtime",
            "python3.11",
            "--handler",
            "app.handler",
            "--role",
            "r",
            "--zip-file",
            &zip,
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("ResourceConflictException")
            && error.contains("Function already exist: extra"),
        "{error}"
    );
    let error = lambda(
        &portico,
        &[
            "update-function-configuration",
            "--function-name",
            "greet",
            "--memory-size",
            "20000",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("InvalidParameterValueException") && error.contains("memory_size_mb"),
        "{error}"
    );
    // (The CLI checks that a file is a zip itself: sent as an SDK would send any bytes.)
    let not_zip = curl(
        None,
        &[
            "-s",
            "-X",
            "PUT",
            "-d",
            r#"{"ZipFile": "cGxhaW4gdGV4dA=="}"#,
            &format!(
                "http://{}/2015-03-31/functions/greet/code",
                portico.invoke_api.unwrap()
            ),
        ],
    );
    assert_eq!(not_zip.status, 400, "{not_zip:?}");
    assert!(
        not_zip.body.contains("Could not unzip uploaded file"),
        "{not_zip:?}"
    );
    let error = lambda(
        &portico,
        &[
            "update-function-code",
            "--function-name",
            "greet",
            "--s3-bucket",
            "portico-local",
            "--s3-key",
            "/etc",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("relative to the configuration file"),
        "{error}"
    );
    assert!(answer(&portico).starts_with("code-2 hola "));

    // Code from a directory beside the configuration file.
    std::fs::create_dir_all(dir.join("build")).unwrap();
    std::fs::write(dir.join("build/app.py"), versioned_function("code-3")).unwrap();
    lambda(
        &portico,
        &[
            "update-function-code",
            "--function-name",
            "greet",
            "--s3-bucket",
            "portico-local",
            "--s3-key",
            "build",
        ],
    )
    .unwrap();
    seen_within_a_second(&portico, "code from a directory", |b| {
        b.starts_with("code-3 hola ")
    });

    // The changes outlive a restart, and `portico export` prints them with the file.
    let portico = portico.restart();
    assert!(answer(&portico).starts_with("code-3 hola "));
    let function = lambda(
        &portico,
        &["get-function-configuration", "--function-name", "greet"],
    )
    .unwrap();
    assert_eq!(function["MemorySize"], 256, "{function}");
    let got = lambda(
        &portico,
        &["get-function-concurrency", "--function-name", "extra"],
    )
    .unwrap();
    assert_eq!(got["ReservedConcurrentExecutions"], 5);
    let export = Command::new(portico_bin())
        .arg("export")
        .arg(&portico.config_file)
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let exported: toml::Table = String::from_utf8_lossy(&export.stdout).parse().unwrap();
    assert_eq!(
        exported["functions"]["greet"]["memory_size_mb"].as_integer(),
        Some(256)
    );
    assert_eq!(
        exported["functions"]["greet"]["code"].as_str(),
        Some("build")
    );
    assert_eq!(
        exported["functions"]["extra"]["reserved_concurrency"].as_integer(),
        Some(5)
    );

    // Deleted: gone, and gone after a restart too.
    // (The CLI shows DeleteFunction's status code, Lambda's 204.)
    let deleted = lambda(&portico, &["delete-function", "--function-name", "extra"]).unwrap();
    assert!(
        deleted.is_null() || deleted["StatusCode"] == 204,
        "{deleted}"
    );
    let error = lambda(&portico, &["get-function", "--function-name", "extra"]).unwrap_err();
    assert!(error.contains("ResourceNotFoundException"), "{error}");
    let portico = portico.restart();
    assert!(lambda(&portico, &["get-function", "--function-name", "extra"]).is_err());
    assert!(answer(&portico).starts_with("code-3 hola "));
}

const CANARY: &str = r#"
[functions.greet]
runtime = "python3.11"
code = "code"
handler = "app.handler"

[functions.greet.versions.1]
runtime = "python3.11"
code = "v1"
handler = "app.handler"

[functions.greet.aliases.live]
function_version = "1"

[target_groups.greet]
target_type = "lambda"
function = "greet:live"

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = { type = "forward", target_group = "greet" }

[invoke_api]
port = 0

[admin_api]
port = 0
"#;

#[test]
fn a_weighted_alias_moves_load_balancer_traffic_to_a_new_version_step_by_step() {
    let scratch = Scratch::new("canary");
    let dir = scratch.0.clone();
    for (code, version) in [("v1", "code-1"), ("code", "code-2")] {
        std::fs::create_dir_all(dir.join(code)).unwrap();
        std::fs::write(dir.join(code).join("app.py"), versioned_function(version)).unwrap();
    }
    let portico = Portico::start_here(scratch, CANARY, &[]);
    assert!(answer(&portico).starts_with("code-1 "));

    // $LATEST published as version 2 (its code copied: it stays when the directory changes);
    // publishing again with nothing changed answers with the same version.
    let published = lambda(&portico, &["publish-version", "--function-name", "greet"]).unwrap();
    assert_eq!(published["Version"], "2", "{published}");
    assert!(
        published["FunctionArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:greet:2")
    );
    let again = lambda(&portico, &["publish-version", "--function-name", "greet"]).unwrap();
    assert_eq!(again["Version"], "2");
    std::fs::write(dir.join("code/app.py"), versioned_function("code-3")).unwrap();
    let versions = lambda(
        &portico,
        &["list-versions-by-function", "--function-name", "greet"],
    )
    .unwrap();
    let listed: Vec<&str> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["$LATEST", "1", "2"]);

    // The canary: the alias's traffic shifts to version 2 in steps, under load.
    let lb = portico.load_balancers[0].1;
    let mut load = Load::start(
        &[lb],
        3,
        Duration::from_millis(5),
        "GET / HTTP/1.1\r\nHost: web\r\n",
    );
    let mut steps = Vec::new();
    for weight in ["0.0", "0.25", "0.5", "0.75"] {
        let routing = format!("AdditionalVersionWeights={{2={weight}}}");
        // Asked for, then answered: the alias is changed by the answer.
        let asked = Instant::now();
        let alias = lambda(
            &portico,
            &[
                "update-alias",
                "--function-name",
                "greet",
                "--name",
                "live",
                "--routing-config",
                &routing,
            ],
        )
        .unwrap();
        assert_eq!(alias["FunctionVersion"], "1", "{alias}");
        steps.push((weight.parse::<f64>().unwrap(), asked, Instant::now()));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let asked = Instant::now();
    let alias = lambda(
        &portico,
        &[
            "update-alias",
            "--function-name",
            "greet",
            "--name",
            "live",
            "--function-version",
            "2",
            "--routing-config",
            "AdditionalVersionWeights={}",
        ],
    )
    .unwrap();
    assert_eq!(alias["FunctionVersion"], "2", "{alias}");
    assert!(
        alias
            .get("RoutingConfig")
            .is_none_or(|r| r["AdditionalVersionWeights"]
                .as_object()
                .is_none_or(|w| w.is_empty())),
        "{alias}"
    );
    steps.push((1.0, asked, Instant::now()));
    std::thread::sleep(Duration::from_millis(1500));
    load.stop();

    let outcomes = load.outcomes();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    for (i, (weight, _, answered)) in steps.iter().enumerate() {
        // What started once the step was answered, until the next was asked for: the step's
        // weights only.
        let from = *answered;
        let to = steps
            .get(i + 1)
            .map_or(Instant::now(), |(_, next_asked, _)| *next_asked);
        let bodies: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.started >= from && o.started < to)
            .filter_map(|o| o.body.as_deref())
            .collect();
        let new = bodies.iter().filter(|b| b.starts_with("code-2 ")).count();
        let old = bodies.iter().filter(|b| b.starts_with("code-1 ")).count();
        assert_eq!(
            new + old,
            bodies.len(),
            "only the alias's versions answer: {bodies:?}"
        );
        let share = new as f64 / bodies.len().max(1) as f64;
        eprintln!(
            "weight {weight}: {} requests, {:.2} to version 2",
            bodies.len(),
            share
        );
        assert!(
            bodies.len() >= 10,
            "weight {weight}: {} requests",
            bodies.len()
        );
        assert!(
            (share - weight).abs() <= 0.15,
            "weight {weight}: share {share:.2}"
        );
    }

    // Lambda's errors for aliases and versions.
    let error = lambda(
        &portico,
        &[
            "create-alias",
            "--function-name",
            "greet",
            "--name",
            "live",
            "--function-version",
            "1",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("ResourceConflictException") && error.contains("Alias already exists"),
        "{error}"
    );
    let error = lambda(
        &portico,
        &["get-alias", "--function-name", "greet", "--name", "nope"],
    )
    .unwrap_err();
    assert!(
        error.contains("ResourceNotFoundException") && error.contains("Alias not found"),
        "{error}"
    );
    let error = lambda(
        &portico,
        &[
            "create-alias",
            "--function-name",
            "greet",
            "--name",
            "bad",
            "--function-version",
            "9",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("InvalidParameterValueException") && error.contains("no version \"9\""),
        "{error}"
    );
    let error = lambda(
        &portico,
        &[
            "delete-function",
            "--function-name",
            "greet",
            "--qualifier",
            "2",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("ResourceConflictException") && error.contains("live"),
        "{error}"
    );

    // A second alias, listed, invoked by its qualifier, deleted.
    lambda(
        &portico,
        &[
            "create-alias",
            "--function-name",
            "greet",
            "--name",
            "old",
            "--function-version",
            "1",
        ],
    )
    .unwrap();
    let aliases = lambda(&portico, &["list-aliases", "--function-name", "greet"]).unwrap();
    let names: Vec<&str> = aliases["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["live", "old"]);
    let out = dir.join("out.json");
    lambda(
        &portico,
        &[
            "invoke",
            "--function-name",
            "greet",
            "--qualifier",
            "old",
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    let reply: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(
        reply["body"].as_str().unwrap().starts_with("code-1 "),
        "{reply}"
    );
    lambda(
        &portico,
        &["delete-alias", "--function-name", "greet", "--name", "old"],
    )
    .unwrap();
    assert!(
        lambda(
            &portico,
            &["get-alias", "--function-name", "greet", "--name", "old"]
        )
        .is_err()
    );
    // The version no alias names can go.
    lambda(
        &portico,
        &[
            "delete-function",
            "--function-name",
            "greet",
            "--qualifier",
            "1",
        ],
    )
    .unwrap();
    let versions = lambda(
        &portico,
        &["list-versions-by-function", "--function-name", "greet"],
    )
    .unwrap();
    assert_eq!(
        versions["Versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
}

#[test]
fn change_requests_that_are_malformed_or_too_large_are_refused_and_change_nothing() {
    let scratch = Scratch::new("deploy-limits");
    let dir = scratch.0.clone();
    std::fs::create_dir_all(dir.join("code")).unwrap();
    std::fs::write(dir.join("code/app.py"), versioned_function("code-1")).unwrap();
    let portico = Portico::start_here(scratch, CONFIG, &[]);
    let api = portico.invoke_api.unwrap();
    let put = |body_file: &Path| {
        curl(
            None,
            &[
                "-s",
                "-H",
                "Expect:",
                "-X",
                "PUT",
                "--data-binary",
                &format!("@{}", body_file.display()),
                &format!("http://{api}/2015-03-31/functions/greet/code"),
            ],
        )
    };
    // A package over Lambda's 50 MB (zipped): its header is a zip's.
    let mut package = b"PK\x03\x04".to_vec();
    package.resize(51 * 1024 * 1024, 0);
    let body = dir.join("big.json");
    {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&package);
        std::fs::write(&body, format!(r#"{{"ZipFile": "{encoded}"}}"#)).unwrap();
    }
    let reply = put(&body);
    assert_eq!(reply.status, 413, "{:?}", reply.headers);
    assert!(
        reply.body.contains("RequestEntityTooLargeException")
            || reply.header("x-amzn-errortype") == Some("RequestEntityTooLargeException"),
        "{reply:?}"
    );
    // A body over what any change takes is not even read whole.
    let huge = dir.join("huge.json");
    std::fs::write(&huge, vec![b' '; 71 * 1024 * 1024]).unwrap();
    let reply = put(&huge);
    assert_eq!(reply.status, 413);
    // Not JSON; JSON of the wrong shape.
    let text = dir.join("text.json");
    std::fs::write(&text, "ZipFile=abc").unwrap();
    assert_eq!(put(&text).status, 400);
    std::fs::write(&text, r#"{"ZipFile": 42}"#).unwrap();
    let reply = put(&text);
    assert_eq!(reply.status, 400, "{reply:?}");
    // Nothing changed.
    assert!(answer(&portico).starts_with("code-1 "));
    assert!(!dir.join("portico.state/changes.json").exists());
}
