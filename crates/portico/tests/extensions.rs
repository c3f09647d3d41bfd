//! Lambda extensions in sandboxed environments: an external extension built with the official
//! `lambda-extension` crate and one written in Python, shipped in a layer's `extensions`
//! directory, through the Extensions API's whole life cycle: registration before the
//! runtime starts, `INVOKE` events and the work after the reply, `SHUTDOWN` when the
//! environment is retired, and an init error that fails the environment.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

fn function_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/functions/sandboxed"
    ))
}

/// A layer with both extensions in `extensions/` (only the Python one without `rust`).
fn extension_layer(scratch: &Scratch, rust: bool) -> PathBuf {
    let layer = scratch
        .0
        .join(if rust { "extensions" } else { "py-extension" });
    let dir = layer.join("extensions");
    std::fs::create_dir_all(&dir).unwrap();
    if rust {
        std::fs::copy(extension_bin(), dir.join("portico-demo-extension")).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/extensions/py-extension"),
        dir.join("py-extension"),
    )
    .unwrap();
    layer
}

/// Invokes `function` asking for the log's tail: the reply, the function error header and
/// the decoded tail.
fn invoke(api: &str, function: &str, payload: &Value) -> (Value, Option<String>, String) {
    let Tailed { reply, error, tail } = invoke_tailed(api, function, payload, &[]);
    (reply, error, tail)
}

/// The request id of the tail's `START` line.
fn started_request(tail: &str) -> String {
    tail.lines()
        .find_map(|l| l.strip_prefix("START RequestId: "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no START line: {tail}"))
        .to_owned()
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The (first) REPORT line's duration, in ms.
fn reported_duration(tail: &str) -> f64 {
    let report = tail
        .lines()
        .find(|l| l.contains("REPORT RequestId"))
        .unwrap();
    let after = report.split("Duration: ").nth(1).unwrap();
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn extensions_see_every_invocation_and_the_shutdown() {
    let scratch = Scratch::new("extensions");
    let layer = extension_layer(&scratch, true);
    // Environments share the host's network: an extension listening on a fixed port runs
    // in one environment of a function at a time. `lingering` has two at once.
    let py_layer = extension_layer(&scratch, false);
    let config = format!(
        r#"
[functions.observed]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
layers = ["{layer}"]
environment = {{ DEMO_TELEMETRY_PORT = "{observed_port}" }}

[functions.refused]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
layers = ["{layer}"]
environment = {{ FAIL_INIT = "1", DEMO_TELEMETRY_PORT = "{refused_port}" }}

[functions.lingering]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
layers = ["{py_layer}"]
environment = {{ EXTENSION_DELAY_MS = "2000" }}

[functions.internal]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
environment = {{ INTERNAL_EXTENSION = "1" }}

[runtime]
environment_idle_timeout_seconds = 2

[invoke_api]
port = 0
"#,
        code = function_dir().display(),
        layer = layer.display(),
        // Functions share the host's network: each extension's telemetry listener has a
        // port of its own.
        observed_port = free_port(),
        refused_port = free_port(),
        py_layer = py_layer.display(),
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();

    let (reply, error, tail) = invoke(&api, "observed", &json!({"probe": "layout"}));
    assert_eq!(error, None, "{reply}\n{tail}");
    // Both saw the invocation and finished their work on it before it ended.
    let id = started_request(&tail);
    let end = tail.find("END RequestId").unwrap();
    for line in [
        format!("demo-extension: INVOKE {id}"),
        format!("demo-extension: done with {id}"),
        format!("py-extension: INVOKE {id}"),
    ] {
        let at = tail
            .find(&line)
            .unwrap_or_else(|| panic!("{line} missing:\n{tail}"));
        assert!(at < end, "{line} after END:\n{tail}");
    }
    // The environment was busy until the slower extension was done.
    assert!(reported_duration(&tail) >= 300.0, "{tail}");

    // Warm: the same extensions, the next event.
    let (_, error, tail) = invoke(&api, "observed", &json!({"probe": "layout"}));
    assert_eq!(error, None);
    assert!(!tail.contains("Init Duration"), "{tail}");
    assert!(tail.contains("py-extension: INVOKE"), "{tail}");

    // The Telemetry API delivered the demo extension the platform events of the init and
    // of the invocation, and the function's own lines, in Lambda's schema (the crate
    // parses them).
    let logs_url = format!("http://{api}/portico/v1/functions/observed/logs");
    let delivered = [
        "demo-extension: telemetry platform.initStart Init".to_owned(),
        "demo-extension: telemetry platform.extension py-extension [\"INVOKE\", \"SHUTDOWN\"]"
            .to_owned(),
        "demo-extension: telemetry platform.initReport".to_owned(),
        format!("demo-extension: telemetry platform.start {id}"),
        format!("demo-extension: telemetry function probing layout for {id}"),
        format!("demo-extension: telemetry platform.runtimeDone {id} Success"),
        format!("demo-extension: telemetry platform.report {id} 128 MB billed"),
    ];
    let mut log = String::new();
    for _ in 0..100 {
        log = curl(None, &[&logs_url]).body;
        if delivered.iter().all(|line| log.contains(line.as_str())) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for line in &delivered {
        assert!(log.contains(line.as_str()), "{line} missing:\n{log}");
    }

    // Retired after its idle time: both are told, and exit.
    for _ in 0..100 {
        log = curl(None, &[&logs_url]).body;
        if log.contains("py-extension: SHUTDOWN") && log.contains("demo-extension: SHUTDOWN") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log.contains("py-extension: SHUTDOWN spindown"), "{log}");
    // It had registered (in the init phase, before the runtime started).
    let registered = log
        .find("py-extension: registered for observed (app.handler)")
        .unwrap();
    assert!(registered < log.find("START RequestId").unwrap(), "{log}");
    assert!(log.contains("demo-extension: SHUTDOWN spindown"), "{log}");

    // The caller does not wait for the extensions: the response comes as soon as the
    // runtime answers, while the environment stays busy (its REPORT counts the extension's
    // two seconds).
    let url = format!("http://{api}/2015-03-31/functions/lingering/invocations");
    let body = json!({"probe": "layout"}).to_string();
    curl(None, &["-X", "POST", "--data-binary", &body, &url]); // the cold start
    let asked = std::time::Instant::now();
    let reply = curl(None, &["-X", "POST", "--data-binary", &body, &url]);
    let answered = asked.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        answered < Duration::from_millis(1500),
        "waited for the extension: {answered:?}"
    );
    let logs_url = format!("http://{api}/portico/v1/functions/lingering/logs");
    let mut durations = Vec::new();
    for _ in 0..100 {
        let log = curl(None, &[&logs_url]).body;
        durations = log
            .lines()
            .filter(|l| l.contains("REPORT RequestId"))
            .map(reported_duration)
            .collect();
        if durations.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(durations.len(), 2, "{durations:?}");
    assert!(durations[1] >= 2000.0, "{durations:?}");

    // An internal extension, registered from the runtime's own process, follows the
    // invocations too.
    let (_, error, tail) = invoke(&api, "internal", &json!({"probe": "layout"}));
    assert_eq!(error, None, "{tail}");
    let id = started_request(&tail);
    let seen = tail.find(&format!("internal-ext: INVOKE {id}"));
    assert!(
        seen.is_some_and(|at| at < tail.find("END RequestId").unwrap()),
        "{tail}"
    );

    // An extension's init error fails the environment's init, with Lambda's error type.
    let (reply, error, _) = invoke(&api, "refused", &json!({"probe": "layout"}));
    assert_eq!(error.as_deref(), Some("Unhandled"), "{reply}");
    assert_eq!(reply["errorType"], "Extension.InitError", "{reply}");
}
