//! Lambda runtimes other than `provided`, run by their official clients: a Python function
//! through `awslambdaric`, shipped as a `.zip` deployment package, behind the load balancer
//! and through the Invoke API.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn pyapp_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/functions/pyapp"
    ))
}

/// Zips the files of `dir` into `zip` with Python's zipfile (stdlib).
fn zip_dir(dir: &Path, zip: &Path) {
    let script = "import os, sys, zipfile\n\
        src, dst = sys.argv[1], sys.argv[2]\n\
        with zipfile.ZipFile(dst, 'w', zipfile.ZIP_DEFLATED) as z:\n\
        \x20   for name in sorted(os.listdir(src)):\n\
        \x20       if name.endswith('.py'): z.write(os.path.join(src, name), name)\n";
    let status = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap(), zip.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Invokes `function` through the Invoke API with a client context, asking for the log's
/// tail: the reply, the function error header and the decoded tail.
fn invoke(api: &str, function: &str, payload: &Value) -> (Value, Option<String>, String) {
    let Tailed { reply, error, tail } = invoke_tailed(
        api,
        function,
        payload,
        &["X-Amz-Client-Context: eyJjdXN0b20iOnsidXNlciI6ImFkYSJ9fQ=="],
    );
    (reply, error, tail)
}

/// The first (cold) invocation of `function` with `{"n": 1}`: checks what Lambda's context
/// told the function, and returns its reply and log tail.
fn first_invocation(api: &str, function: &str, memory: &str, handler: &str) -> (Value, String) {
    let (reply, error, tail) = invoke(api, function, &json!({"n": 1}));
    assert_eq!(error, None, "{reply}");
    assert_eq!(reply["function_name"], function);
    assert_eq!(reply["memory_limit_in_mb"], memory);
    assert_eq!(
        reply["invoked_function_arn"],
        format!("arn:aws:lambda:us-east-1:000000000000:function:{function}")
    );
    assert_eq!(reply["remaining_ms_positive"], true);
    assert_eq!(reply["handler"], handler);
    assert_eq!(reply["cold"], true);
    (reply, tail)
}

#[test]
fn a_python_zip_package_runs_under_awslambdaric() {
    let scratch = Scratch::new("py");
    let zip = scratch.0.join("pyapp.zip");
    zip_dir(&pyapp_dir(), &zip);
    let config = format!(
        r#"
[load_balancers.web]
listeners = [{{ address = "127.0.0.1", port = 0, default_action = {{ type = "forward", target_group = "py" }} }}]

[target_groups.py]
target_type = "lambda"
function = "py"

[functions.py]
runtime = "python3.11"
code = "{zip}"
handler = "app.handler"
memory_size_mb = 512

[functions.broken]
runtime = "python3.11"
code = "{dir}"
handler = "broken.handler"

[functions.no_module]
runtime = "python3.11"
code = "{dir}"
handler = "nowhere.handler"

[invoke_api]
port = 0
"#,
        zip = zip.display(),
        dir = pyapp_dir().display(),
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();

    let (reply, tail) = first_invocation(&api, "py", "512", "app.handler");
    let id = reply["request_id"].as_str().unwrap();
    assert_eq!(reply["client_context"], json!({"user": "ada"}));
    assert_eq!(reply["helper"], "helper");
    assert_eq!(reply["event"], json!({"n": 1}));
    // The code runs from the unpacked package, at Lambda's path in the sandbox.
    assert_eq!(reply["task_root"], "/var/task");
    assert_eq!(reply["cwd"], "/var/task");
    // print() and logging both reach the log, framed by START/END/REPORT.
    assert!(
        tail.starts_with(&format!("START RequestId: {id} Version: $LATEST\n")),
        "{tail}"
    );
    assert!(tail.contains(&format!("handling {id}\n")), "{tail}");
    assert!(tail.contains("logged through logging"), "{tail}");
    assert!(tail.contains(&format!("END RequestId: {id}\n")), "{tail}");
    assert!(
        tail.contains(&format!("REPORT RequestId: {id}\t")),
        "{tail}"
    );
    assert!(tail.contains("\tInit Duration: "), "{tail}");

    // Warm: the same process answers.
    let (reply, _, tail) = invoke(&api, "py", &json!({"n": 2}));
    assert_eq!(reply["cold"], false);
    assert!(!tail.contains("Init Duration"), "{tail}");

    // A raised exception is the function's error, named by Python's type.
    let (reply, error, _) = invoke(&api, "py", &json!({"fail": "bad input"}));
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(reply["errorType"], "ValueError");
    assert_eq!(reply["errorMessage"], "bad input");
    assert!(reply["stackTrace"].is_array(), "{reply}");

    // The environment survives its handler's exception.
    let (reply, error, _) = invoke(&api, "py", &json!({"n": 3}));
    assert_eq!(error, None);
    assert_eq!(reply["cold"], false);

    // A module that fails at import is an init error, reported as the client reports it.
    let (reply, error, _) = invoke(&api, "broken", &json!({}));
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(reply["errorType"], "RuntimeError", "{reply}");
    assert_eq!(reply["errorMessage"], "broken at import", "{reply}");
    let (reply, error, _) = invoke(&api, "no_module", &json!({}));
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(reply["errorType"], "Runtime.ImportModuleError", "{reply}");

    // Behind the load balancer: an ALB event in, an ALB response out.
    let (_, lb) = &portico.load_balancers[0];
    let reply = curl(None, &[&format!("http://{lb}/orders?id=7")]);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("x-runtime"), Some("python"));
    let body = reply.json();
    assert_eq!(body["event"]["path"], "/orders");
    assert_eq!(body["event"]["queryStringParameters"], json!({"id": "7"}));
}

#[test]
fn a_broken_zip_package_stops_start_with_a_clear_error() {
    let scratch = Scratch::new("badzip");
    let zip = scratch.write("fn.zip", "this is not a zip archive");
    let config = format!(
        "[functions.f]\ncode = \"{}\"\n[invoke_api]\nport = 0\n",
        zip.display()
    );
    let file = scratch.write("portico.toml", &config);
    let out = Command::new(portico_bin())
        .args(["up", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("function f") && stderr.contains("is not a valid zip archive"),
        "{stderr}"
    );
}

#[test]
fn a_nodejs_function_runs_under_aws_lambda_ric() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("node is not on this machine: the nodejs runtime is not tested here");
        return;
    }
    let ric = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.test-deps/node/node_modules"
    ));
    assert!(
        ric.join(".bin/aws-lambda-ric").exists(),
        "aws-lambda-ric missing: scripts/test installs it"
    );
    // The code directory, as a user ships it: the handler and its node_modules.
    let scratch = Scratch::new("node");
    let code = scratch.0.join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/functions/nodeapp/index.js"
        ),
        code.join("index.js"),
    )
    .unwrap();
    std::os::unix::fs::symlink(ric.canonicalize().unwrap(), code.join("node_modules")).unwrap();
    let config = format!(
        r#"
[functions.node]
runtime = "nodejs20.x"
code = "{}"
handler = "index.handler"
memory_size_mb = 256

[invoke_api]
port = 0
"#,
        code.display()
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();

    let (reply, tail) = first_invocation(&api, "node", "256", "index.handler");
    let id = reply["request_id"].as_str().unwrap();
    assert!(tail.contains(&format!("\tINFO\thandling {id}\n")), "{tail}");

    let (reply, error, _) = invoke(&api, "node", &json!({"fail": "no"}));
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(reply["errorType"], "TypeError");
    assert_eq!(reply["errorMessage"], "no");

    let (reply, error, _) = invoke(&api, "node", &json!({"n": 2}));
    assert_eq!(error, None);
    assert_eq!(reply["cold"], false);
}

#[test]
fn relative_code_paths_and_what_a_function_gets_of_its_environment() {
    // The layout the README shows: code directories beside the file, named relatively, and
    // `portico up portico.toml` run from that directory.
    let scratch = Scratch::new("relative");
    let py = scratch.0.join("pyapp");
    std::fs::create_dir_all(&py).unwrap();
    for entry in std::fs::read_dir(pyapp_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, py.join(path.file_name().unwrap())).unwrap();
        }
    }
    let bootstrap = scratch.0.join("fn");
    std::fs::create_dir_all(&bootstrap).unwrap();
    std::fs::copy(hello_bin(), bootstrap.join("bootstrap")).unwrap();
    let config = r#"
[functions.py]
runtime = "python3.11"
code = "pyapp"
handler = "app.handler"

[functions.without_credentials]
runtime = "python3.11"
code = "./pyapp"
handler = "app.handler"
aws_credentials = false

[functions.provided]
code = "fn"

[invoke_api]
port = 0
"#;
    let portico = Portico::start_here(
        scratch,
        config,
        &[
            ("AWS_ACCESS_KEY_ID", "AKPORTICO"),
            ("AWS_SECRET_ACCESS_KEY", "sportico"),
            ("AWS_SESSION_TOKEN", "tportico"),
            ("PORTICO_TEST_SECRET", "must not leak"),
        ],
    );
    let api = portico.invoke_api.unwrap().to_string();

    let (reply, _) = first_invocation(&api, "py", "128", "app.handler");
    // The relative directory, at Lambda's path in the sandbox.
    let task_root = reply["task_root"].as_str().unwrap();
    assert_eq!(task_root, "/var/task", "{reply}");
    assert_eq!(reply["cwd"], task_root);
    assert!(
        reply["files"]
            .as_array()
            .unwrap()
            .contains(&json!("app.py")),
        "{reply}"
    );
    // Lambda's quota, not portico's own limit.
    assert_eq!(reply["open_files_limit"], json!([1024, 1024]));
    let env = &reply["env"];
    assert_eq!(env["PYTHONPATH"], task_root, "{env}");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.11", "{env}");
    // The runtime's own directory (Lambda's /var/runtime): where awslambdaric is.
    assert_eq!(env["LAMBDA_RUNTIME_DIR"], "/var/runtime", "{env}");
    assert_eq!(reply["runtime_has_client"], true, "{reply}");
    // The credentials of the user running portico, as `sam local` hands them over; nothing
    // else of portico's environment.
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKPORTICO", "{env}");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "sportico", "{env}");
    assert_eq!(env["AWS_SESSION_TOKEN"], "tportico", "{env}");
    assert!(env.get("PORTICO_TEST_SECRET").is_none(), "{env}");
    // An X-Ray header for every invocation, a new trace when the caller sent none; the
    // runtime client hands it over in _X_AMZN_TRACE_ID.
    let trace = env["_X_AMZN_TRACE_ID"].as_str().unwrap();
    assert!(
        trace.starts_with("Root=1-") && trace.contains(";Parent=") && trace.ends_with(";Sampled=0"),
        "{trace}"
    );

    let (reply, error, _) = invoke(&api, "without_credentials", &json!({}));
    assert_eq!(error, None, "{reply}");
    assert!(reply["env"].get("AWS_ACCESS_KEY_ID").is_none(), "{reply}");
    assert!(
        reply["env"].get("AWS_SECRET_ACCESS_KEY").is_none(),
        "{reply}"
    );

    // A `provided` function whose code is a relative directory starts (and answers the
    // load balancer's event it expects).
    let event = json!({
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/t/1"}},
        "httpMethod": "GET",
        "path": "/",
        "queryStringParameters": {},
        "headers": {},
        "body": "",
        "isBase64Encoded": false
    })
    .to_string();
    let reply = curl(
        None,
        &[
            "-X",
            "POST",
            "--data-binary",
            &event,
            &format!("http://{api}/2015-03-31/functions/provided/invocations"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("X-Amz-Function-Error"), None, "{}", reply.body);
}

/// Invokes `function` with `payload` from `n` threads at once: each reply's status and body.
fn invoke_at_once(api: &str, function: &str, payload: &Value, n: usize) -> Vec<(u16, Value)> {
    let url = format!("http://{api}/2015-03-31/functions/{function}/invocations");
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (url, body) = (url.clone(), payload.to_string());
            std::thread::spawn(move || {
                let reply = curl(None, &["-X", "POST", "--data-binary", &body, &url]);
                (
                    reply.status,
                    serde_json::from_str(&reply.body).unwrap_or(Value::Null),
                )
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn one_environment_takes_several_invocations_with_max_concurrency_per_environment() {
    let config = format!(
        r#"
[functions.four]
command = ["{bin}"]
max_concurrency_per_environment = 4
reserved_concurrency = 4

[functions.two]
command = ["{bin}"]
max_concurrency_per_environment = 2

[invoke_api]
port = 0
"#,
        bin = concurrent_bin().display()
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();

    // Four at once: one environment, its four workers (lambda_runtime's run_concurrent
    // read AWS_LAMBDA_MAX_CONCURRENCY) each on one, all at the same time.
    let replies = invoke_at_once(&api, "four", &json!({"sleep_ms": 1500}), 4);
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    let environments: std::collections::HashSet<&str> = replies
        .iter()
        .map(|(_, r)| r["environment"].as_str().unwrap())
        .collect();
    assert_eq!(environments.len(), 1, "{replies:?}");
    assert!(
        replies.iter().all(|(_, r)| r["workers"] == "4"),
        "{replies:?}"
    );
    let ns = |r: &Value, key: &str| r[key].as_str().unwrap().parse::<u128>().unwrap();
    let latest_start = replies
        .iter()
        .map(|(_, r)| ns(r, "started_ns"))
        .max()
        .unwrap();
    let earliest_end = replies
        .iter()
        .map(|(_, r)| ns(r, "ended_ns"))
        .min()
        .unwrap();
    assert!(
        latest_start < earliest_end,
        "they ran at the same time: {replies:?}"
    );

    // The function's concurrency still counts invocations: a fifth at once is throttled.
    let replies = invoke_at_once(&api, "four", &json!({"sleep_ms": 1500}), 5);
    let throttled = replies.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(throttled, 1, "{replies:?}");

    // Two per environment: four at once take two environments.
    let replies = invoke_at_once(&api, "two", &json!({"sleep_ms": 1500}), 4);
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    let mut per_environment = std::collections::HashMap::new();
    for (_, r) in &replies {
        *per_environment
            .entry(r["environment"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_environment.len(), 2, "{replies:?}");
    assert!(per_environment.values().all(|n| *n == 2), "{replies:?}");
}
