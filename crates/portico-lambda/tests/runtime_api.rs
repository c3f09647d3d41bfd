//! The Runtime API and the execution model, against a real function process (Python,
//! stdlib only) that probes the API from inside its environment.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use bytes::Bytes;
use portico_invoke::{Invocation, InvokeError, InvokeOutput, ThrottleReason};
use portico_lambda::{FunctionSpec, Runtime, RuntimeOptions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed by scripts/test");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn prober(name: &str, env: &[(&str, &str)], reserved: Option<usize>) -> FunctionSpec {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions"));
    FunctionSpec {
        name: name.into(),
        version: "$LATEST".into(),
        program: python(),
        args: vec![dir.join("prober.py").display().to_string()],
        task_root: dir,
        handler: "prober.handler".into(),
        runtime: "provided".into(),
        runtime_environment: Vec::new(),
        runtime_dir: PathBuf::from("/opt/portico-test-runtime"),
        lang_dir: None,
        opt_dir: None,
        ephemeral_storage_mb: 512,
        credentials: Some(portico_lambda::credentials::Credentials {
            access_key_id: "AKPROBE".into(),
            secret_access_key: "sprobe".into(),
            session_token: None,
        }),
        code: portico_lambda::package::Fingerprint::default(),
        last_modified: std::time::SystemTime::now(),
        memory_size_mb: 256,
        timeout: Duration::from_secs(5),
        init_timeout: Duration::from_secs(10),
        reserved_concurrency: reserved,
        max_concurrency: 1,
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        region: "eu-west-1".into(),
        logging: Default::default(),
        image: None,
    }
}

async fn invoke(rt: &Runtime, function: &str, event: Value) -> Result<InvokeOutput, InvokeError> {
    rt.invoke_function(Invocation {
        function: function.into(),
        payload: Bytes::from(event.to_string()),
        trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into()),
        client_context: Some(r#"{"custom":{"k":"v"}}"#.into()),
        cognito_identity: Some(
            r#"{"cognitoIdentityId":"id-1","cognitoIdentityPoolId":"pool-1"}"#.into(),
        ),
        tail_logs: true,
    })
    .await
}

/// An invocation of `function` that keeps its environment busy for a second, in a task.
fn sleep_one_second(
    rt: &Arc<Runtime>,
    function: &'static str,
) -> tokio::task::JoinHandle<Result<InvokeOutput, InvokeError>> {
    let rt = rt.clone();
    tokio::spawn(
        async move { invoke(&rt, function, json!({"action": "sleep", "seconds": 1})).await },
    )
}

fn json_of(out: &InvokeOutput) -> Value {
    serde_json::from_slice(&out.payload).unwrap()
}

#[tokio::test]
async fn runtime_api_headers_environment_and_misuse() {
    let spec = prober("probe", &[("MY_SETTING", "on")], None);
    let arn = spec.arn();
    let rt = Runtime::new(vec![spec], RuntimeOptions::default());

    let out = invoke(&rt, "probe", json!({"action": "probe"}))
        .await
        .unwrap();
    assert!(out.function_error.is_none(), "{out:?}");
    let reply = json_of(&out);
    let h = &reply["headers"];
    assert_eq!(h["lambda-runtime-aws-request-id"], out.request_id);
    assert_eq!(h["lambda-runtime-invoked-function-arn"], arn);
    // The caller's trace, continued under a new segment.
    let trace = h["lambda-runtime-trace-id"].as_str().unwrap();
    assert!(
        trace.starts_with("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=")
            && trace.ends_with(";Sampled=1"),
        "{trace}"
    );
    assert_eq!(
        h["lambda-runtime-client-context"],
        r#"{"custom":{"k":"v"}}"#
    );
    assert_eq!(
        h["lambda-runtime-cognito-identity"],
        r#"{"cognitoIdentityId":"id-1","cognitoIdentityPoolId":"pool-1"}"#
    );
    let deadline: u64 = h["lambda-runtime-deadline-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        deadline > now && deadline <= now + 5_000,
        "deadline {deadline} vs now {now}"
    );
    let env = &reply["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "probe");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/probe");
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert_eq!(env["_HANDLER"], "prober.handler");
    assert_eq!(env["TZ"], ":UTC");
    assert!(
        env["AWS_LAMBDA_LOG_STREAM_NAME"]
            .as_str()
            .unwrap()
            .contains("/[$LATEST]")
    );
    assert!(
        env["LAMBDA_TASK_ROOT"]
            .as_str()
            .unwrap()
            .ends_with("tests/functions")
    );
    // The runtime's directory is its own, not the task root; an OS-only runtime has no
    // AWS_EXECUTION_ENV; the credentials handed over are there, and no session token.
    assert_eq!(env["LAMBDA_RUNTIME_DIR"], "/opt/portico-test-runtime");
    assert!(env.get("AWS_EXECUTION_ENV").is_none(), "{env}");
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKPROBE");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "sprobe");
    assert!(env.get("AWS_SESSION_TOKEN").is_none(), "{env}");

    // The oversized response is refused with 413 and fails that invocation only.
    let big = invoke(&rt, "probe", json!({"action": "big"}))
        .await
        .unwrap();
    assert_eq!(
        big.function_error.as_ref().unwrap().error_type,
        "Function.ResponseSizeTooLarge"
    );
    // In Lambda's words: the size posted, and the Runtime API's limit (6 MB and 100 bytes).
    assert_eq!(
        json_of(&big)["errorMessage"],
        "Response payload size (7340032 bytes) exceeded maximum allowed payload size (6291556 bytes)."
    );
    // A non-JSON error document is wrapped, its type taken from the header.
    let odd = invoke(&rt, "probe", json!({"action": "?"})).await.unwrap();
    assert_eq!(
        odd.function_error.as_ref().unwrap().error_type,
        "Probe.Unknown"
    );
    assert_eq!(json_of(&odd)["errorMessage"], "not json at all");

    let report = json_of(
        &invoke(&rt, "probe", json!({"action": "report"}))
            .await
            .unwrap(),
    );
    let seen = &report["seen"];
    assert_eq!(seen["unknown_id"], json!([400, "InvalidRequestID"]));
    assert_eq!(seen["unknown_route"], json!([404, "UnknownRoute"]));
    assert_eq!(seen["wrong_method"], json!([405, "MethodNotAllowed"]));
    // Init is over: an init error now is refused, and the environment carries on.
    assert_eq!(
        seen["late_init_error"],
        json!([403, "InvalidStateTransition"])
    );
    assert_eq!(seen["first_response"], 202);
    assert_eq!(seen["second_response"], json!([400, "InvalidRequestID"]));
    assert_eq!(
        seen["big_response"],
        json!([
            413,
            "RequestEntityTooLarge",
            "Exceeded maximum allowed payload size (6291556 bytes)."
        ])
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn init_error_is_reported_like_lambda() {
    let rt = Runtime::new(
        vec![prober("broken", &[("PROBE_INIT_ERROR", "1")], None)],
        RuntimeOptions::default(),
    );
    let err = invoke(&rt, "broken", json!({})).await.unwrap_err();
    let InvokeError::InitFailed {
        error_type,
        message,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(error_type, "InitBroke");
    assert_eq!(message, "no config");
    rt.shutdown().await;
}

/// The texts of `function`'s log so far.
fn log_texts(rt: &Runtime, function: &str) -> Vec<String> {
    rt.logs(function)
        .unwrap()
        .recent()
        .iter()
        .map(|l| l.text.clone())
        .collect()
}

#[tokio::test]
async fn an_init_past_the_init_limit_is_tried_again_with_the_function_timeout() {
    // Init takes 1.5 s; the init limit is 1 s (Lambda's is 10 s), the function's timeout 5 s.
    let mut spec = prober("slow_init", &[("PROBE_INIT_SLEEP", "1.5")], None);
    spec.init_timeout = Duration::from_secs(1);
    let rt = Runtime::new(vec![spec], RuntimeOptions::default());
    let out = invoke(&rt, "slow_init", json!({"action": "report"}))
        .await
        .unwrap();
    assert!(out.function_error.is_none(), "{out:?}");
    let log = log_texts(&rt, "slow_init");
    let starts: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("INIT_START "))
        .collect();
    assert_eq!(starts.len(), 2, "{log:#?}");
    assert!(
        starts[0].starts_with("INIT_START Runtime Version: provided:al1.v1\tRuntime Version ARN: arn:aws:lambda:eu-west-1::runtime:"),
        "{log:#?}"
    );
    let report = log
        .iter()
        .find(|l| l.starts_with("INIT_REPORT "))
        .expect("an INIT_REPORT line for the timed-out init");
    assert!(
        report.starts_with("INIT_REPORT Init Duration: 10")
            && report.ends_with(" ms\tPhase: init\tStatus: timeout"),
        "{report}"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn failed_invocations_end_their_report_with_a_status() {
    let mut spec = prober("short", &[], None);
    spec.timeout = Duration::from_secs(1);
    let rt = Runtime::new(vec![spec], RuntimeOptions::default());
    let out = invoke(&rt, "short", json!({"action": "sleep", "seconds": 3}))
        .await
        .unwrap();
    assert_eq!(out.function_error.unwrap().error_type, "Sandbox.Timedout");
    let log = log_texts(&rt, "short");
    let timed_out = log
        .iter()
        .find(|l| l.contains("Task timed out after"))
        .unwrap();
    // `<time> <request id> Task timed out after 1.00 seconds`.
    let words: Vec<&str> = timed_out.split(' ').collect();
    assert!(words[0].ends_with('Z'), "{timed_out}");
    assert_eq!(words[1], out.request_id, "{timed_out}");
    assert!(timed_out.ends_with(" seconds"), "{timed_out}");
    let report = log.iter().find(|l| l.starts_with("REPORT ")).unwrap();
    assert!(report.ends_with("\tStatus: timeout"), "{report}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_caller_that_goes_away_does_not_end_the_invocation_or_its_environment() {
    let rt = Runtime::new(vec![prober("steady", &[], None)], RuntimeOptions::default());
    let pid = |out: InvokeOutput| json_of(&out)["pid"].clone();
    let first = pid(invoke(&rt, "steady", json!({"action": "report"}))
        .await
        .unwrap());
    // The caller gives up after 100 ms of a 500 ms invocation (its future is dropped).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        invoke(&rt, "steady", json!({"action": "sleep", "seconds": 0.5})),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The invocation ran to its end, and the same environment serves the next one.
    let log = log_texts(&rt, "steady");
    assert_eq!(
        log.iter().filter(|l| l.starts_with("END ")).count(),
        2,
        "{log:#?}"
    );
    let again = pid(invoke(&rt, "steady", json!({"action": "report"}))
        .await
        .unwrap());
    assert_eq!(again, first, "no cold start after a caller went away");
    rt.shutdown().await;
}

#[tokio::test]
async fn only_the_environments_own_processes_reach_its_runtime_api() {
    let rt = Runtime::new(
        vec![prober("guarded", &[], None)],
        RuntimeOptions::default(),
    );
    let out = invoke(&rt, "guarded", json!({"action": "probe"}))
        .await
        .unwrap();
    let api = json_of(&out)["env"]["AWS_LAMBDA_RUNTIME_API"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another process (this test's, which is not the function's) asks for the next
    // invocation, as a local attacker would: the connection is closed unanswered.
    let taken = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&api).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // A request the API answers at once when it serves a connection (an unknown
        // request id is a 400): nothing comes back but the connection's end.
        let _ = stream.write_all(
            b"POST /2018-06-01/runtime/invocation/forged/response HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        );
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            // Closed (or reset, with the request unread) at once.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("not closed at once: {e}"),
        }
        answer
    })
    .await
    .unwrap();
    assert!(taken.is_empty(), "{}", String::from_utf8_lossy(&taken));
    // The function goes on, its own connection served.
    let out = invoke(&rt, "guarded", json!({"action": "report"}))
        .await
        .unwrap();
    assert!(out.function_error.is_none(), "{out:?}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_process_that_left_the_process_group_goes_with_its_environment() {
    let rt = Runtime::new(
        vec![prober("orphans", &[], None)],
        RuntimeOptions::default(),
    );
    let out = invoke(&rt, "orphans", json!({"action": "orphan"}))
        .await
        .unwrap();
    assert!(out.function_error.is_none(), "{out:?}");
    let pid = json_of(&out)["orphan"].as_u64().unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
    };
    assert!(alive(), "the function's setsid child runs");
    rt.shutdown().await;
    let began = std::time::Instant::now();
    while alive() && began.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only a memory cgroup knows the whole tree; without one, the process group is all
    // portico can end.
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        assert!(!alive(), "process {pid} outlived its environment");
    } else {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

#[tokio::test]
async fn a_missing_program_is_an_init_failure() {
    let mut spec = prober("ghost", &[], None);
    spec.program = PathBuf::from("/nonexistent/bootstrap");
    let rt = Runtime::new(vec![spec], RuntimeOptions::default());
    let err = invoke(&rt, "ghost", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, InvokeError::InitFailed { error_type, .. } if error_type == "Runtime.InvalidEntrypoint"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_functions_and_oversized_payloads_are_refused_before_running() {
    let rt = Runtime::new(vec![prober("p", &[], None)], RuntimeOptions::default());
    let err = invoke(&rt, "nope", json!({})).await.unwrap_err();
    assert_eq!(err, InvokeError::NotFound("nope".into()));
    let huge = rt
        .invoke_function(Invocation {
            function: "p".into(),
            payload: Bytes::from(vec![b'x'; 6 * 1024 * 1024 + 1]),
            ..Invocation::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(huge, InvokeError::RequestTooLarge { .. }),
        "{huge:?}"
    );
}

#[tokio::test]
async fn reserved_concurrency_throttles_the_excess() {
    let rt = Arc::new(Runtime::new(
        vec![prober("one", &[], Some(1))],
        RuntimeOptions::default(),
    ));
    let slow = sleep_one_second(&rt, "one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = invoke(&rt, "one", json!({"action": "report"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Throttled {
                limit: 1,
                reason: ThrottleReason::ReservedConcurrency,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(slow.await.unwrap().unwrap().function_error.is_none());
    // The slot is free again.
    assert!(
        invoke(&rt, "one", json!({"action": "report"}))
            .await
            .is_ok()
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn the_global_limit_throttles_across_functions_and_names_the_limit() {
    let rt = Arc::new(Runtime::new(
        vec![prober("a", &[], None), prober("b", &[], None)],
        RuntimeOptions {
            max_concurrency: 1,
            ..RuntimeOptions::default()
        },
    ));
    let slow = sleep_one_second(&rt, "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = invoke(&rt, "b", json!({"action": "report"}))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        InvokeError::Throttled {
            function: "b".into(),
            limit: 1,
            reason: ThrottleReason::AccountConcurrency,
        }
    );
    assert!(slow.await.unwrap().is_ok());
    rt.shutdown().await;
}

/// Processes of `function` now (the prober runs as `python3 prober.py`; tests run at once,
/// so the function is told by its environment).
fn probers(function: &str) -> usize {
    let me = std::process::id().to_string();
    let named = format!("AWS_LAMBDA_FUNCTION_NAME={function}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1));
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            ppid == Some(me.as_str())
                && String::from_utf8_lossy(&cmdline).contains("prober.py")
                && environ.split(|b| *b == 0).any(|v| v == named.as_bytes())
        })
        .count()
}

/// Environments hold their memory size from the node's budget, busy or warm: when it is
/// held by busy ones the next is throttled; when warm ones hold it, the one unused the
/// longest (of any function) is stopped to make room.
#[tokio::test]
async fn the_memory_budget_bounds_environments_and_warm_ones_make_room() {
    // Room for two environments of 256 MB.
    let rt = Arc::new(Runtime::new(
        vec![prober("a", &[], None), prober("b", &[], None)],
        RuntimeOptions {
            memory_budget_mb: 600,
            ..RuntimeOptions::default()
        },
    ));
    let busy = [sleep_one_second(&rt, "a"), sleep_one_second(&rt, "a")];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = invoke(&rt, "b", json!({"action": "report"}))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        InvokeError::Throttled {
            function: "b".into(),
            limit: 600,
            reason: ThrottleReason::Memory,
        }
    );
    for each in busy {
        assert!(each.await.unwrap().is_ok());
    }
    assert_eq!(rt.warm_environments(), 2);
    assert_eq!(rt.memory_mb(), (600, 512));
    // b needs room: a's warm environment unused the longest goes.
    let out = invoke(&rt, "b", json!({"action": "report"})).await.unwrap();
    assert!(out.function_error.is_none());
    assert_eq!(rt.warm_environments(), 2);
    assert_eq!(rt.memory_mb(), (600, 512));
    assert!(probers("a") + probers("b") <= 2);
    rt.shutdown().await;
}

/// Lambda's unreserved model: functions without reserved concurrency share the account's
/// concurrency less the reservations, so a reservation is always there for its function.
#[tokio::test]
async fn reservations_are_kept_from_the_functions_without_one() {
    let rt = Arc::new(Runtime::new(
        vec![
            prober("reserved", &[], Some(1)),
            prober("shared", &[], None),
        ],
        RuntimeOptions {
            max_concurrency: 2,
            ..RuntimeOptions::default()
        },
    ));
    assert_eq!(rt.unreserved_concurrency(), 1);
    let slow = sleep_one_second(&rt, "shared");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = invoke(&rt, "shared", json!({"action": "report"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Throttled {
                limit: 1,
                reason: ThrottleReason::AccountConcurrency,
                ..
            }
        ),
        "{err:?}"
    );
    // The reservation was kept for its function.
    assert!(
        invoke(&rt, "reserved", json!({"action": "report"}))
            .await
            .is_ok()
    );
    assert!(slow.await.unwrap().is_ok());
    rt.shutdown().await;
}

/// A burst of `Event` invocations runs through the pool as capacity frees, in order,
/// without starting more environments than the budget holds, and every one runs once.
#[tokio::test]
async fn a_burst_of_events_runs_within_the_budget_and_every_event_runs() {
    let dir = std::env::temp_dir().join(format!("portico-burst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = Arc::new(Runtime::new(
        vec![prober("burst", &[], None)],
        RuntimeOptions {
            memory_budget_mb: 600,
            throttle_backoff: (Duration::from_millis(20), Duration::from_millis(100)),
            ..RuntimeOptions::default()
        },
    ));
    let logs: Vec<_> = (0..12).map(|i| dir.join(format!("event-{i}"))).collect();
    for log in &logs {
        rt.invoke_event(Invocation {
            function: "burst".into(),
            payload: Bytes::from(
                json!({"action": "flaky", "log": log, "fails": 0, "hold": 0.1}).to_string(),
            ),
            ..Invocation::default()
        })
        .unwrap();
    }
    let mut most = 0;
    let began = std::time::Instant::now();
    while logs.iter().any(|l| attempts(l) == 0) {
        most = most.max(probers("burst"));
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "events still waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= 2, "{most} function processes at once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(logs.iter().all(|l| attempts(l) == 1));
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn idle_environments_are_retired_and_the_next_call_starts_a_new_one() {
    let options = RuntimeOptions {
        idle_timeout: Duration::from_millis(500),
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(vec![prober("idle", &[], None)], options);
    let pid = |out: &InvokeOutput| json_of(out)["pid"].as_i64().unwrap();
    let first = pid(&invoke(&rt, "idle", json!({"action": "report"}))
        .await
        .unwrap());
    // Warm reuse while it is used.
    assert_eq!(
        pid(&invoke(&rt, "idle", json!({"action": "report"}))
            .await
            .unwrap()),
        first
    );
    // Left alone, the process is stopped (polled: readiness, not timing).
    let mut gone = false;
    for _ in 0..500 {
        if !std::path::Path::new(&format!("/proc/{first}")).exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "idle environment {first} was not retired");
    let second = pid(&invoke(&rt, "idle", json!({"action": "report"}))
        .await
        .unwrap());
    assert_ne!(second, first);
    rt.shutdown().await;
}

/// Lines in `path`, or 0 while it does not exist.
fn attempts(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn wait_for_attempts(path: &std::path::Path, n: usize) {
    for _ in 0..500 {
        if attempts(path) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} attempts never happened (saw {})", n, attempts(path));
}

#[tokio::test]
async fn event_invocations_are_retried_twice_then_dropped() {
    let options = RuntimeOptions {
        async_retry_delays: vec![Duration::from_millis(50), Duration::from_millis(50)],
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(vec![prober("flaky", &[], None)], options);
    let dir = std::env::temp_dir().join(format!("portico-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event = |log: &std::path::Path, fails: u32| Invocation {
        function: "flaky".into(),
        payload: Bytes::from(json!({"action": "flaky", "log": log, "fails": fails}).to_string()),
        ..Invocation::default()
    };

    // Fails twice, succeeds on the last retry.
    let recovers = dir.join("recovers");
    rt.invoke_event(event(&recovers, 2)).unwrap();
    wait_for_attempts(&recovers, 3).await;

    // Never succeeds: three attempts in all, then dropped.
    let hopeless = dir.join("hopeless");
    rt.invoke_event(event(&hopeless, 100)).unwrap();
    wait_for_attempts(&hopeless, 3).await;
    // Well past the retry delays, nothing more happened to either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((attempts(&recovers), attempts(&hopeless)), (3, 3));

    let too_big = Invocation {
        function: "flaky".into(),
        payload: Bytes::from(vec![b' '; 1024 * 1024 + 1]),
        ..Invocation::default()
    };
    assert!(matches!(
        rt.invoke_event(too_big),
        Err(InvokeError::RequestTooLarge {
            limit: 1_048_576,
            ..
        })
    ));
    let ghost = Invocation {
        function: "ghost".into(),
        payload: Bytes::from_static(b"{}"),
        ..Invocation::default()
    };
    assert_eq!(
        rt.invoke_event(ghost),
        Err(InvokeError::NotFound("ghost".into()))
    );
    rt.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_full_event_queue_refuses_and_names_its_limit() {
    let options = RuntimeOptions {
        max_queued_events: 1,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(vec![prober("queued", &[], None)], options);
    let sleep = || Invocation {
        function: "queued".into(),
        payload: Bytes::from(json!({"action": "sleep", "seconds": 1}).to_string()),
        ..Invocation::default()
    };
    rt.invoke_event(sleep()).unwrap();
    let err = rt.invoke_event(sleep()).unwrap_err();
    assert_eq!(
        err,
        InvokeError::Throttled {
            function: "queued".into(),
            limit: 1,
            reason: ThrottleReason::EventQueue,
        }
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn the_event_queue_is_bounded_by_bytes_too() {
    let options = RuntimeOptions {
        max_queued_event_bytes: 300 * 1024,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::new(vec![prober("heavy", &[], None)], options);
    // A 200 KB payload the function sleeps on.
    let heavy = || Invocation {
        function: "heavy".into(),
        payload: Bytes::from(
            json!({"action": "sleep", "seconds": 1, "pad": "x".repeat(200 * 1024)}).to_string(),
        ),
        ..Invocation::default()
    };
    rt.invoke_event(heavy()).unwrap();
    // Two would hold 400 KB: the second is refused, naming the byte limit.
    let err = rt.invoke_event(heavy()).unwrap_err();
    assert_eq!(
        err,
        InvokeError::Throttled {
            function: "heavy".into(),
            limit: 300 * 1024,
            reason: ThrottleReason::EventQueue,
        }
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn output_of_both_streams_is_framed_by_start_and_end_and_tailed() {
    let rt = Runtime::new(vec![prober("chat", &[], None)], RuntimeOptions::default());
    for _ in 0..3 {
        let out = invoke(&rt, "chat", json!({"action": "chatter", "lines": 6}))
            .await
            .unwrap();
        assert!(out.function_error.is_none(), "{out:?}");
        let id = &out.request_id;
        let tail = out.log_tail.unwrap();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines[0], format!("START RequestId: {id} Version: $LATEST"));
        for i in 0..6 {
            assert_eq!(lines[1 + i], format!("line {i} of {id}"), "{tail}");
        }
        assert_eq!(lines[7], "no line break");
        assert_eq!(lines[8], format!("END RequestId: {id}"));
        assert!(lines[9].starts_with(&format!("REPORT RequestId: {id}\tDuration: ")));
        assert_eq!(lines.len(), 10, "{tail}");
    }

    let book = rt.logs("chat").unwrap();
    let recent = book.recent();
    // The environment's INIT_START, then three invocations of ten lines each, all tagged
    // with their request id.
    assert_eq!(recent.len(), 31);
    assert!(recent[0].text.starts_with("INIT_START Runtime Version: "));
    assert!(recent[0].request_id.is_none());
    assert!(recent[1..].iter().all(|l| l.request_id.is_some()));
    assert!(recent.windows(2).all(|w| w[0].seq + 1 == w[1].seq));

    // Without Tail, nothing comes back.
    let out = rt
        .invoke_function(Invocation {
            function: "chat".into(),
            payload: Bytes::from(json!({"action": "chatter"}).to_string()),
            ..Invocation::default()
        })
        .await
        .unwrap();
    assert_eq!(out.log_tail, None);
    rt.shutdown().await;
}

#[tokio::test]
async fn the_log_tail_is_the_last_4_kb() {
    let rt = Runtime::new(vec![prober("chat", &[], None)], RuntimeOptions::default());
    let out = invoke(&rt, "chat", json!({"action": "chatter", "lines": 500}))
        .await
        .unwrap();
    let tail = out.log_tail.unwrap();
    assert!(tail.len() <= 4096 && tail.len() > 3900, "{}", tail.len());
    assert!(tail.contains("line 499 of"));
    assert!(
        tail.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("REPORT")
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_function_over_its_memory_size_is_killed_and_reported_as_out_of_memory() {
    let mut spec = prober("hog", &[], None);
    spec.memory_size_mb = 128;
    let rt = Runtime::new(vec![spec], RuntimeOptions::default());

    // Within the limit: fine, and the REPORT's peak says so.
    let out = invoke(&rt, "hog", json!({"action": "hog", "mb": 32}))
        .await
        .unwrap();
    assert!(out.function_error.is_none(), "{out:?}");
    let first_pid = json_of(
        &invoke(&rt, "hog", json!({"action": "report"}))
            .await
            .unwrap(),
    )["pid"]
        .clone();

    // Held over the limit: killed mid-invocation.
    let out = invoke(&rt, "hog", json!({"action": "hog", "mb": 200, "hold": 5}))
        .await
        .unwrap();
    let failure = out.function_error.clone().unwrap();
    assert_eq!(failure.error_type, "Runtime.OutOfMemory");
    let doc = json_of(&out);
    assert_eq!(doc["errorType"], "Runtime.OutOfMemory");
    assert_eq!(
        doc["errorMessage"],
        format!(
            "RequestId: {} Error: Runtime exited with error: signal: killed",
            out.request_id
        )
    );
    let tail = out.log_tail.unwrap();
    let report = tail.lines().find(|l| l.starts_with("REPORT")).unwrap();
    let used: u64 = report
        .split("Max Memory Used: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    // At the size (a cgroup lets it no further, as on Lambda) or over it (the watchdog).
    assert!(used >= 128, "{report}");
    assert!(report.contains("Memory Size: 128 MB"), "{report}");
    assert!(
        report.ends_with("\tStatus: error\tError Type: Runtime.OutOfMemory"),
        "{report}"
    );

    // Over only for a moment, replying before the next sample: the peak still shows it.
    let out = invoke(&rt, "hog", json!({"action": "hog", "mb": 200, "hold": 0}))
        .await
        .unwrap();
    assert_eq!(
        out.function_error.map(|e| e.error_type).as_deref(),
        Some("Runtime.OutOfMemory")
    );

    // The environment was replaced; the function goes on.
    let report = json_of(
        &invoke(&rt, "hog", json!({"action": "report"}))
            .await
            .unwrap(),
    );
    assert_ne!(report["pid"], first_pid);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_throttled_event_waits_for_capacity_without_using_its_retries() {
    let dir = std::env::temp_dir().join(format!("portico-throttled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("attempts");
    let rt = Arc::new(Runtime::new(
        vec![prober("busy", &[], Some(1))],
        RuntimeOptions {
            // No retries for failures: only the throttle backoff can bring it through.
            async_retry_delays: vec![],
            throttle_backoff: (Duration::from_millis(50), Duration::from_millis(200)),
            ..RuntimeOptions::default()
        },
    ));
    // The one environment is busy for a second.
    let busy = sleep_one_second(&rt, "busy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.invoke_event(Invocation {
        function: "busy".into(),
        payload: Bytes::from(json!({"action": "flaky", "log": log, "fails": 0}).to_string()),
        ..Invocation::default()
    })
    .unwrap();
    assert!(busy.await.unwrap().is_ok());
    // Throttled at first, then run exactly once when the environment is free.
    wait_for_attempts(&log, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts(&log), 1);
    rt.shutdown().await;

    // An event still throttled at its maximum age is dropped.
    let rt = Runtime::new(
        vec![prober("busy", &[], Some(1))],
        RuntimeOptions {
            max_event_age: Duration::from_millis(300),
            throttle_backoff: (Duration::from_millis(50), Duration::from_millis(50)),
            ..RuntimeOptions::default()
        },
    );
    let rt = Arc::new(rt);
    let busy = sleep_one_second(&rt, "busy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = dir.join("late");
    rt.invoke_event(Invocation {
        function: "busy".into(),
        payload: Bytes::from(json!({"action": "flaky", "log": late, "fails": 0}).to_string()),
        ..Invocation::default()
    })
    .unwrap();
    assert!(busy.await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts(&late), 0);
    rt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether process `pid` is gone (or a zombie no one waits for).
fn gone(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_function_gets_new_environments_and_its_old_ones_finish_their_work() {
    let rt = Arc::new(Runtime::new(
        vec![
            prober("live", &[("VERSION", "1")], None),
            prober("same", &[], None),
            prober("gone", &[], None),
        ],
        RuntimeOptions::default(),
    ));
    let report = |function: &'static str| {
        let rt = rt.clone();
        async move {
            let out = invoke(&rt, function, json!({"action": "report"}))
                .await
                .unwrap();
            json_of(&out)["pid"].as_u64().unwrap()
        }
    };
    let old_pid = report("live").await;
    let same_pid = report("same").await;
    let gone_pid = report("gone").await;
    // An invocation in flight on the old environment when the change comes.
    let busy = {
        let rt = rt.clone();
        tokio::spawn(
            async move { invoke(&rt, "live", json!({"action": "sleep", "seconds": 3})).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut changed = prober("live", &[("VERSION", "2")], None);
    changed.memory_size_mb = 512;
    let applied = rt
        .apply(
            vec![changed, prober("same", &[], None), prober("new", &[], None)],
            Vec::new(),
        )
        .await;
    assert_eq!(
        applied,
        portico_lambda::runtime::Applied {
            added: vec!["new".into()],
            replaced: vec!["live".into()],
            removed: vec!["gone".into()],
        }
    );
    // New invocations see the new state at once: a new environment, the new settings.
    let out = invoke(&rt, "live", json!({"action": "probe"}))
        .await
        .unwrap();
    let env = &json_of(&out)["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "512", "{env}");
    assert_ne!(report("live").await, old_pid);
    assert_eq!(rt.spec("live").unwrap().memory_size_mb, 512);
    // An unchanged function keeps its warm environment.
    assert_eq!(report("same").await, same_pid);
    // A removed function is not found; its idle environment is stopped now.
    assert!(matches!(
        invoke(&rt, "gone", json!({"action": "report"})).await,
        Err(InvokeError::NotFound(_))
    ));
    report("new").await;
    assert!(
        !busy.is_finished() && !gone(old_pid),
        "the busy environment is not cut"
    );

    // The invocation in flight finished on the old environment, which is then stopped.
    let slept = busy.await.unwrap().unwrap();
    assert!(slept.function_error.is_none(), "{slept:?}");
    assert_eq!(&slept.payload[..], b"\"slept\"");
    let mut stopped = false;
    for _ in 0..100 {
        if gone(old_pid) && gone(gone_pid) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped, "the old environments are stopped");
    assert_eq!(rt.warm_environments(), 3, "live, same and new");

    // Applying the same functions again changes nothing.
    let again = rt
        .apply(
            vec![
                {
                    let mut c = prober("live", &[("VERSION", "2")], None);
                    c.memory_size_mb = 512;
                    c
                },
                prober("same", &[], None),
                prober("new", &[], None),
            ],
            Vec::new(),
        )
        .await;
    assert!(again.is_empty(), "{again:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_weighted_aliases_route_invocations() {
    let version = |n: &str, tag: &str| {
        let mut spec = prober("f", &[("TAG", tag)], Some(4));
        spec.version = n.into();
        spec
    };
    let rt = Runtime::new(
        vec![
            version("$LATEST", "latest"),
            version("1", "one"),
            version("2", "two"),
        ],
        RuntimeOptions::default(),
    );
    rt.set_aliases(vec![portico_lambda::spec::AliasSpec {
        function: "f".into(),
        name: "live".into(),
        version: "1".into(),
        additional: Some(("2".into(), 0.5)),
        description: String::new(),
        region: "eu-west-1".into(),
    }]);
    let probe = |function: &'static str| {
        let rt = &rt;
        async move {
            let out = invoke(rt, function, json!({"action": "probe"}))
                .await
                .unwrap();
            json_of(&out)
        }
    };
    // Each version is its own environment, with its own version in its variables.
    let latest = probe("f").await;
    assert_eq!(
        latest["env"]["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST",
        "{latest}"
    );
    let one = probe("f:1").await;
    assert_eq!(one["env"]["AWS_LAMBDA_FUNCTION_VERSION"], "1");
    assert_eq!(
        one["headers"]["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:eu-west-1:000000000000:function:f:1"
    );
    assert_eq!(
        probe("f:$LATEST").await["env"]["AWS_LAMBDA_FUNCTION_VERSION"],
        "$LATEST"
    );
    // The alias shares its invocations between its two versions, by weight; the function is
    // invoked by the alias's ARN.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let reply = probe("f:live").await;
        assert_eq!(
            reply["headers"]["lambda-runtime-invoked-function-arn"],
            "arn:aws:lambda:eu-west-1:000000000000:function:f:live"
        );
        let version = reply["env"]["AWS_LAMBDA_FUNCTION_VERSION"]
            .as_str()
            .unwrap()
            .to_owned();
        *seen.entry(version).or_default() += 1;
    }
    let (one, two) = (
        seen.get("1").copied().unwrap_or(0),
        seen.get("2").copied().unwrap_or(0),
    );
    assert_eq!(one + two, 200, "{seen:?}");
    assert!((60..=140).contains(&two), "half to version 2: {seen:?}");
    // Lookups: an alias shows its own version; what does not exist is not found.
    assert_eq!(rt.spec("f:live").unwrap().version, "1");
    assert_eq!(
        rt.versions("f")
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["$LATEST", "1", "2"]
    );
    assert_eq!(rt.functions().len(), 1);
    for missing in ["f:3", "f:nope", "g"] {
        assert!(
            matches!(
                invoke(&rt, missing, json!({})).await,
                Err(InvokeError::NotFound(_))
            ),
            "{missing}"
        );
    }
    // The function's reserved concurrency (4) is shared by its versions.
    assert_eq!(rt.unreserved_concurrency(), 1000 - 4);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reservation_changes_the_limit_in_place_and_keeps_the_environments_warm() {
    let rt = Runtime::new(vec![prober("r", &[], Some(2))], RuntimeOptions::default());
    let pid = |out: InvokeOutput| json_of(&out)["pid"].as_u64().unwrap();
    let before = pid(invoke(&rt, "r", json!({"action": "report"})).await.unwrap());
    assert_eq!(rt.unreserved_concurrency(), 1000 - 2);

    let applied = rt.apply(vec![prober("r", &[], Some(5))], Vec::new()).await;
    assert!(applied.is_empty(), "{applied:?}");
    assert_eq!(rt.spec("r").unwrap().reserved_concurrency, Some(5));
    assert_eq!(rt.unreserved_concurrency(), 1000 - 5);
    // The same environment answers.
    assert_eq!(
        pid(invoke(&rt, "r", json!({"action": "report"})).await.unwrap()),
        before
    );

    // The new limit holds: five at once, the sixth throttled.
    let rt = Arc::new(rt);
    let busy: Vec<_> = (0..5).map(|_| sleep_one_second(&rt, "r")).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        invoke(&rt, "r", json!({"action": "report"})).await,
        Err(InvokeError::Throttled {
            limit: 5,
            reason: ThrottleReason::ReservedConcurrency,
            ..
        })
    ));
    for task in busy {
        assert!(task.await.unwrap().is_ok());
    }
    rt.shutdown().await;
}
