//! The Lambda Invoke API against real clients: the AWS CLI (v1, from PyPI) and boto3, invoking a function
//! written with the official `lambda_runtime` crate.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::{Value, json};
use std::process::{Command, Output};
use support::*;

fn config() -> String {
    format!(
        r#"
[functions.echo]
command = ["{}"]
memory_size_mb = 256
timeout_seconds = 5
environment = {{ STAGE = "test" }}

[functions.hello]
command = ["{}"]

[invoke_api]
port = 0
{}
"#,
        echo_bin().display(),
        hello_bin().display(),
        test_access_keys()
    )
}

/// An AWS client command, signed with the test key (which the API of `config()` requires).
fn aws(endpoint: &str, args: &[&str]) -> Output {
    aws_cli(endpoint, "lambda", args)
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "aws failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `aws lambda invoke` of the echo function: what the CLI printed, and what it wrote to `outfile`.
fn cli_invoke(endpoint: &str, payload: &str, outfile: &str) -> (Value, Value) {
    let out = aws(
        endpoint,
        &[
            "invoke",
            "--function-name",
            "echo",
            "--payload",
            payload,
            outfile,
        ],
    );
    let reply = serde_json::from_slice(&std::fs::read(outfile).unwrap()).unwrap();
    (stdout_json(&out), reply)
}

#[test]
fn aws_cli_invokes_lists_and_gets_functions() {
    let portico = Portico::start(&config());
    let endpoint = format!("http://{}", portico.invoke_api.unwrap());
    let scratch = Scratch::new("aws");
    let outfile = scratch.0.join("out.json");
    let outfile = outfile.to_str().unwrap();

    let (meta, reply) = cli_invoke(&endpoint, r#"{"hello":"world"}"#, outfile);
    assert_eq!(meta["StatusCode"], 200);
    assert_eq!(meta["ExecutedVersion"], "$LATEST");
    assert!(meta.get("FunctionError").is_none(), "{meta}");
    assert_eq!(reply["echo"], json!({"hello": "world"}));
    assert_eq!(reply["function_name"], "echo");
    assert_eq!(
        reply["function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo"
    );

    let (meta, reply) = cli_invoke(&endpoint, r#"{"fail":"boom"}"#, outfile);
    assert_eq!(meta["StatusCode"], 200);
    assert_eq!(meta["FunctionError"], "Unhandled");
    assert_eq!(reply["errorMessage"], "boom");

    let listed = stdout_json(&aws(&endpoint, &["list-functions"]));
    let names: Vec<&str> = listed["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "hello"]);

    let got = stdout_json(&aws(
        &endpoint,
        &["get-function", "--function-name", "echo"],
    ));
    let c = &got["Configuration"];
    assert_eq!(
        c["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo"
    );
    assert_eq!(
        (c["MemorySize"].as_u64(), c["Timeout"].as_u64()),
        (Some(256), Some(5))
    );
    assert_eq!(c["Environment"]["Variables"]["STAGE"], "test");

    // The log tail and the client context (base64 JSON on the wire, JSON for the function).
    let out = aws(
        &endpoint,
        &[
            "invoke",
            "--function-name",
            "echo",
            "--log-type",
            "Tail",
            "--client-context",
            "eyJjdXN0b20iOnsidXNlciI6ImFkYSJ9fQ==", // {"custom":{"user":"ada"}}
            outfile,
        ],
    );
    let meta = stdout_json(&out);
    let reply: Value = serde_json::from_slice(&std::fs::read(outfile).unwrap()).unwrap();
    assert_eq!(reply["client_context"], json!({"user": "ada"}));
    let id = reply["request_id"].as_str().unwrap();
    let log = base64_decode(meta["LogResult"].as_str().unwrap());
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], format!("START RequestId: {id} Version: $LATEST"));
    assert_eq!(lines[1], format!("echo: handling {id}"));
    assert_eq!(lines[2], format!("END RequestId: {id}"));
    assert!(lines[3].starts_with(&format!("REPORT RequestId: {id}\tDuration: ")));

    let out = aws(
        &endpoint,
        &[
            "invoke",
            "--function-name",
            "echo",
            "--client-context",
            "bm90IGpzb24=", // "not json"
            outfile,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("InvalidRequestContentException"),
        "{stderr}"
    );

    let out = aws(&endpoint, &["invoke", "--function-name", "nope", outfile]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ResourceNotFoundException") && stderr.contains("function:nope"),
        "{stderr}"
    );
}

/// Qualifiers, GetFunctionConfiguration (and the CLI's waiter on it), the configuration's
/// fields, GetAccountSettings, and a function switched off with reserved concurrency 0.
#[test]
fn aws_cli_qualifiers_configuration_account_settings_and_zero_concurrency() {
    let config = config().replace(
        "[invoke_api]",
        &format!(
            "[functions.off]\ncommand = [\"{}\"]\nreserved_concurrency = 0\n\n[functions.provided_al2023]\nruntime = \"provided.al2023\"\ncommand = [\"{}\"]\nreserved_concurrency = 3\n\n[runtime]\nmax_concurrency = 50\n\n[invoke_api]",
            echo_bin().display(),
            echo_bin().display()
        ),
    );
    let portico = Portico::start(&config);
    let endpoint = format!("http://{}", portico.invoke_api.unwrap());
    let scratch = Scratch::new("qualifiers");
    let outfile = scratch.0.join("out.json");
    let outfile = outfile.to_str().unwrap();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // $LATEST, in the name or as --qualifier, runs; anything else is not found, as on Lambda.
    for name in [
        "echo:$LATEST",
        "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST",
        "000000000000:function:echo",
    ] {
        let out = aws(&endpoint, &["invoke", "--function-name", name, outfile]);
        assert_eq!(stdout_json(&out)["StatusCode"], 200, "{name}");
    }
    for args in [
        vec!["--function-name", "echo:prod"],
        vec![
            "--function-name",
            "arn:aws:lambda:us-east-1:000000000000:function:echo:7",
        ],
        vec!["--function-name", "echo", "--qualifier", "prod"],
    ] {
        let mut all = vec!["invoke"];
        all.extend(&args);
        all.push(outfile);
        let out = aws(&endpoint, &all);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("ResourceNotFoundException")
                && stderr(&out).contains("function:echo:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = aws(
        &endpoint,
        &[
            "invoke",
            "--function-name",
            "echo:prod",
            "--qualifier",
            "dev",
            outfile,
        ],
    );
    assert!(
        stderr(&out).contains("InvalidParameterValueException"),
        "{}",
        stderr(&out)
    );
    let out = aws(
        &endpoint,
        &[
            "get-function",
            "--function-name",
            "echo",
            "--qualifier",
            "prod",
        ],
    );
    assert!(stderr(&out).contains("ResourceNotFoundException"));

    // GetFunctionConfiguration: every field the CLI shows for a zip function.
    let c = stdout_json(&aws(
        &endpoint,
        &["get-function-configuration", "--function-name", "echo"],
    ));
    for field in [
        "FunctionName",
        "FunctionArn",
        "Runtime",
        "Role",
        "Handler",
        "CodeSize",
        "Timeout",
        "MemorySize",
        "LastModified",
        "CodeSha256",
        "Version",
        "TracingConfig",
        "RevisionId",
        "State",
        "LastUpdateStatus",
        "PackageType",
        "Architectures",
        "EphemeralStorage",
        "LoggingConfig",
        "Environment",
    ] {
        assert!(c.get(field).is_some(), "{field} missing: {c}");
    }
    assert_eq!(
        c["Runtime"], "provided.al2023",
        "the default OS-only runtime"
    );
    assert_eq!(c["CodeSize"], std::fs::metadata(echo_bin()).unwrap().len());
    assert_eq!(c["CodeSha256"].as_str().unwrap().len(), 44, "{c}");
    assert_eq!(c["EphemeralStorage"]["Size"], 512);
    assert_eq!(c["LoggingConfig"]["LogGroup"], "/aws/lambda/echo");
    let modified = c["LastModified"].as_str().unwrap();
    assert!(
        modified.ends_with("+0000") && modified.len() == 28,
        "{modified}"
    );
    // The waiter the CLI runs after an update polls this operation until Successful.
    let out = aws(
        &endpoint,
        &["wait", "function-updated", "--function-name", "echo"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout_json(&aws(&endpoint, &["list-functions"]));
    let al2023 = listed["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["FunctionName"] == "provided_al2023")
        .unwrap();
    assert_eq!(al2023["Runtime"], "provided.al2023");
    let got = stdout_json(&aws(
        &endpoint,
        &["get-function", "--function-name", "provided_al2023"],
    ));
    assert_eq!(got["Concurrency"]["ReservedConcurrentExecutions"], 3);

    // GetAccountSettings: the runtime's limits.
    let settings = stdout_json(&aws(&endpoint, &["get-account-settings"]));
    assert_eq!(settings["AccountLimit"]["ConcurrentExecutions"], 50);
    assert_eq!(
        settings["AccountLimit"]["UnreservedConcurrentExecutions"],
        47
    );
    assert_eq!(settings["AccountLimit"]["CodeSizeUnzipped"], 262_144_000);
    assert_eq!(settings["AccountUsage"]["FunctionCount"], 4);

    // Reserved concurrency 0: the function is switched off; every invocation is throttled
    // (curl: the CLI would retry the throttle four times first).
    let reply = curl_signed(
        "lambda",
        &[
            "-X",
            "POST",
            "--data-binary",
            "{}",
            &format!("{endpoint}/2015-03-31/functions/off/invocations"),
        ],
    );
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(
        reply.header("x-amzn-ErrorType"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        reply.json()["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
}

fn base64_decode(text: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())",
            text,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn portico_invoke_and_logs_talk_to_a_running_portico() {
    let portico = Portico::start(&config());
    let endpoint = format!("http://{}", portico.invoke_api.unwrap());
    let cli = |args: &[&str]| {
        Command::new(portico_bin())
            .args(args)
            .args(["--endpoint", &endpoint])
            .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
            .output()
            .unwrap()
    };

    let out = cli(&["invoke", "echo", "--payload", r#"{"n":7}"#, "--tail"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["echo"], json!({"n": 7}));
    let id = reply["request_id"].as_str().unwrap().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("START RequestId: {id}")),
        "{stderr}"
    );

    let out = cli(&["invoke", "echo", "--payload", r#"{"fail":"nope"}"#]);
    assert_eq!(out.status.code(), Some(1));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["errorMessage"], "nope");

    let out = cli(&["invoke", "ghost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
    let out = cli(&["invoke", "echo", "--payload", "{not json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload must be JSON"));

    // The log so far: both invocations, each framed by START and REPORT.
    let out = cli(&["logs", "echo"]);
    assert!(out.status.success());
    let log = String::from_utf8(out.stdout).unwrap();
    assert_eq!(log.matches("\tSTART RequestId: ").count(), 2, "{log}");
    assert!(log.contains(&format!("\techo: handling {id}\n")), "{log}");
    assert_eq!(log.matches("\tREPORT RequestId: ").count(), 2, "{log}");

    // --follow: the recent lines at once, then new ones as they come.
    let mut follow = Command::new(portico_bin())
        .args(["logs", "echo", "--follow", "--endpoint", &endpoint])
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    let old: Vec<String> = (0..log.lines().count()).map(|_| next()).collect();
    assert_eq!(old.join("\n") + "\n", log);
    let out = cli(&["invoke", "echo", "--payload", r#"{"n":8}"#]);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id = reply["request_id"].as_str().unwrap().to_owned();
    assert!(next().ends_with(&format!("\tSTART RequestId: {new_id} Version: $LATEST")));
    assert!(next().ends_with(&format!("\techo: handling {new_id}")));
    let _ = follow.kill();
    let _ = follow.wait();

    let out = cli(&["logs", "ghost"]);
    assert!(!out.status.success());
}

#[test]
fn boto3_sees_aws_shaped_answers() {
    let portico = Portico::start(&config());
    let endpoint = format!("http://{}", portico.invoke_api.unwrap());
    let script = r#"
import json, sys, boto3, botocore
c = boto3.client("lambda", endpoint_url=sys.argv[1], config=botocore.config.Config(retries={"max_attempts": 1}))
out = {}
r = c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo", Payload=b'{"n": 1}')
out["arn_invoke"] = [r["StatusCode"], json.loads(r["Payload"].read())["echo"]]
out["dry_run"] = c.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"]
out["event"] = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"async": true}')["StatusCode"]
out["event_too_large"] = None
def code(**kw):
    try:
        c.invoke(**kw)
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]
out["bad_json"] = code(FunctionName="echo", Payload=b"{not json")
out["qualifier"] = code(FunctionName="echo", Qualifier="prod", Payload=b"{}")
out["missing"] = code(FunctionName="ghost", Payload=b"{}")
out["too_large"] = code(FunctionName="echo", Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"')
out["event_too_large"] = code(FunctionName="echo", InvocationType="Event", Payload=b'"' + b"x" * (1024 * 1024) + b'"')
out["event_under_1mb"] = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b'"' + b"x" * (300 * 1024) + b'"')["StatusCode"]
out["invoke_async"] = c.invoke_async(FunctionName="echo", InvokeArgs=b'{"legacy": true}')["Status"]
def async_code(**kw):
    try:
        c.invoke_async(**kw)
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]
out["invoke_async_too_large"] = async_code(FunctionName="echo", InvokeArgs=b'"' + b"x" * (256 * 1024) + b'"')
print(json.dumps(out))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &endpoint]);
    let out = aws_env(&mut cmd).output().unwrap();
    let seen = stdout_json(&out);
    assert_eq!(seen["arn_invoke"], json!([200, {"n": 1}]));
    assert_eq!(seen["dry_run"], 204);
    assert_eq!(seen["event"], 202);
    assert_eq!(
        seen["event_too_large"],
        json!([413, "RequestTooLargeException"])
    );
    assert_eq!(
        seen["bad_json"],
        json!([400, "InvalidRequestContentException"])
    );
    assert_eq!(seen["qualifier"], json!([404, "ResourceNotFoundException"]));
    assert_eq!(seen["missing"], json!([404, "ResourceNotFoundException"]));
    assert_eq!(seen["too_large"], json!([413, "RequestTooLargeException"]));
    // Invoke's Event type takes 1 MB; the deprecated InvokeAsync keeps its 256 KB.
    assert_eq!(seen["event_under_1mb"], 202);
    assert_eq!(seen["invoke_async"], 202);
    assert_eq!(
        seen["invoke_async_too_large"],
        json!([413, "RequestTooLargeException"])
    );
}

#[test]
fn parallel_invocations_run_up_to_the_limit_and_the_rest_are_throttled() {
    const LIMIT: usize = 5;
    const CALLS: usize = 12;
    let config = format!(
        r#"
[functions.sleepy]
runtime = "python3.11"
code = "{}"
handler = "app.handler"
reserved_concurrency = {LIMIT}
timeout_seconds = 10

[invoke_api]
port = 0
"#,
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions/pyapp")
    );
    let portico = Portico::start(&config);
    let endpoint = format!("http://{}", portico.invoke_api.unwrap());
    // All calls start together (a barrier), each sleeps 2 s once running.
    let script = r#"
import json, sys, threading, boto3, botocore
calls = int(sys.argv[2])
c = boto3.client("lambda", endpoint_url=sys.argv[1], config=botocore.config.Config(
    retries={"max_attempts": 1}, max_pool_connections=calls, read_timeout=30))
barrier = threading.Barrier(calls)
results = [None] * calls
def call(i):
    barrier.wait()
    try:
        r = c.invoke(FunctionName="sleepy", Payload=b'{"sleep": 2}')
        results[i] = {"status": r["StatusCode"], "reply": json.loads(r["Payload"].read())}
    except botocore.exceptions.ClientError as e:
        results[i] = {"status": e.response["ResponseMetadata"]["HTTPStatusCode"],
                      "code": e.response["Error"]["Code"],
                      "reason": e.response.get("Reason") or json.loads(e.response.get("Error", {}).get("Message", "null") or "null")}
threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &endpoint, &CALLS.to_string()]);
    let out = aws_env(&mut cmd).output().unwrap();
    let results = stdout_json(&out);
    let results = results.as_array().unwrap();
    let ran: Vec<&Value> = results.iter().filter(|r| r["status"] == 200).collect();
    let throttled: Vec<&Value> = results.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(ran.len(), LIMIT, "{results:?}");
    assert_eq!(throttled.len(), CALLS - LIMIT, "{results:?}");
    assert!(
        throttled
            .iter()
            .all(|r| r["code"] == "TooManyRequestsException"
                && r["reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded")
    );
    // The ones that ran did so at the same time, each in its own environment.
    let processes: std::collections::HashSet<&str> = ran
        .iter()
        .map(|r| r["reply"]["process"].as_str().unwrap())
        .collect();
    assert_eq!(processes.len(), LIMIT);
    let latest_start = ran
        .iter()
        .map(|r| r["reply"]["started"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let earliest_end = ran
        .iter()
        .map(|r| r["reply"]["ended"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(latest_start < earliest_end, "{results:?}");
}
