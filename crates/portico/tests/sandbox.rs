//! Execution environments in their sandboxes, with real functions (Python through
//! `awslambdaric`): what a function sees of the host, what it may not read or write, the
//! size of its `/tmp`, its memory, and what its layers give it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn function_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/functions/sandboxed"
    ))
}

/// A scratch directory outside `/tmp` (which every sandbox replaces with its own), so that
/// what is hidden there is hidden by the sandbox, not by `/tmp`.
fn scratch_outside_tmp(tag: &str) -> Scratch {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("portico-sandbox-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Invokes `function` with `payload`: the reply and the function error header.
fn invoke(api: &str, function: &str, payload: &Value) -> (Value, Option<String>) {
    let reply = curl(
        None,
        &[
            "-X",
            "POST",
            "--data-binary",
            &payload.to_string(),
            &format!("http://{api}/2015-03-31/functions/{function}/invocations"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    (
        reply.json(),
        reply.header("X-Amz-Function-Error").map(str::to_owned),
    )
}

/// A layer with a Python module and a shared library built here with the C compiler, zipped
/// as Lambda takes layers; and a directory layer with an older module, extracted first.
fn layers(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let older = scratch.0.join("older");
    std::fs::create_dir_all(older.join("python")).unwrap();
    std::fs::write(older.join("python/layered.py"), "VALUE = 'older'\n").unwrap();
    std::fs::create_dir_all(older.join("bin")).unwrap();
    let tool = older.join("bin/layered-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();

    let newer = scratch.0.join("newer");
    std::fs::create_dir_all(newer.join("python")).unwrap();
    std::fs::create_dir_all(newer.join("lib")).unwrap();
    std::fs::write(newer.join("python/layered.py"), "VALUE = 'newer'\n").unwrap();
    let source = scratch.write("layered.c", "int layered_answer(void) { return 42; }\n");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(newer.join("lib/liblayered.so"))
        .arg(&source)
        .status()
        .expect("a C compiler (gcc)");
    assert!(status.success());
    let zip = scratch.0.join("newer.zip");
    let script = "import os, sys, zipfile\n\
        src, dst = sys.argv[1], sys.argv[2]\n\
        with zipfile.ZipFile(dst, 'w', zipfile.ZIP_DEFLATED) as z:\n\
        \x20   for root, _, files in os.walk(src):\n\
        \x20       for f in files:\n\
        \x20           p = os.path.join(root, f)\n\
        \x20           z.write(p, os.path.relpath(p, src))\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&newer)
        .arg(&zip)
        .status()
        .unwrap();
    assert!(status.success());
    (older, zip)
}

#[test]
fn a_function_sees_lambda_s_layout_and_none_of_the_host_s_secrets() {
    let scratch = scratch_outside_tmp("layout");
    // A self-signed certificate for the HTTPS listener, its key beside the configuration.
    certificate(&scratch.0, "sandbox.test");
    let key = scratch.0.join("server.key");
    let (older, newer) = layers(&scratch);
    let config = format!(
        r#"
[load_balancers.web]
listeners = [{{ port = 0, protocol = "HTTPS", certificates = [{{ certificate = "server.crt", private_key = "server.key" }}], default_action = {{ type = "fixed-response", status_code = 200 }} }}]

[functions.probe]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
memory_size_mb = 1024
layers = ["{older}", "{newer}"]

[functions.small]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
memory_size_mb = 128

[invoke_api]
port = 0
"#,
        code = function_dir().display(),
        older = older.display(),
        newer = newer.display(),
    );
    // Keys and the configuration beside each other, as an operator keeps them.
    let portico = Portico::start_here(scratch, &config, &[]);
    let api = portico.invoke_api.unwrap().to_string();
    let config_file = portico.config_file.canonicalize().unwrap();

    let (layout, error) = invoke(&api, "probe", &json!({"probe": "layout"}));
    assert_eq!(error, None, "{layout}");
    // Lambda's user, paths and variables.
    assert_eq!(layout["uid"], 993, "{layout}");
    assert_eq!(layout["gid"], 990, "{layout}");
    assert_eq!(layout["cwd"], "/var/task");
    assert_eq!(layout["env"]["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(layout["env"]["LAMBDA_RUNTIME_DIR"], "/var/runtime");
    assert!(
        layout["executable"]
            .as_str()
            .unwrap()
            .starts_with("/var/lang/bin/"),
        "{layout}"
    );
    assert_eq!(layout["runtime_has_client"], true, "{layout}");
    assert!(
        layout["task"]
            .as_array()
            .unwrap()
            .contains(&json!("app.py")),
        "{layout}"
    );
    let path = layout["env"]["PATH"].as_str().unwrap();
    assert!(
        path.starts_with("/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin"),
        "{path}"
    );
    let library = layout["env"]["LD_LIBRARY_PATH"].as_str().unwrap();
    assert!(
        library.starts_with("/var/lang/lib:") && library.ends_with(":/opt/lib"),
        "{library}"
    );
    // Its own processes only, its own empty /tmp, and no way to gain privileges.
    let processes = layout["processes"].as_array().unwrap();
    assert!(processes.len() <= 3, "{layout}");
    assert_eq!(layout["tmp"], json!([]), "{layout}");
    assert_eq!(layout["no_new_privs"], true);

    // portico's configuration and keys read as empty; root's files are closed.
    let (read, _) = invoke(
        &api,
        "probe",
        &json!({"probe": "read", "paths": [config_file, key, "/etc/shadow", "/root/.bashrc", "/etc/hostname"]}),
    );
    assert_eq!(
        read[config_file.to_str().unwrap()],
        json!({"read": 0}),
        "{read}"
    );
    assert_eq!(read[key.to_str().unwrap()], json!({"read": 0}), "{read}");
    assert_eq!(read["/etc/shadow"], json!({"error": "EACCES"}), "{read}");
    assert_eq!(read["/root/.bashrc"], json!({"error": "EACCES"}), "{read}");
    // The rest of the host reads as it is.
    assert!(
        read["/etc/hostname"]["read"].as_u64().unwrap() > 0,
        "{read}"
    );

    // Its code and the host are read-only.
    let (written, _) = invoke(
        &api,
        "probe",
        &json!({"probe": "write", "paths": ["/var/task/app.py", "/var/task/new.py", "/usr/local/planted", "/opt/planted", "/tmp/fine"]}),
    );
    for path in [
        "/var/task/app.py",
        "/var/task/new.py",
        "/usr/local/planted",
        "/opt/planted",
    ] {
        assert_eq!(
            written[path],
            json!({"error": "EROFS"}),
            "{path}: {written}"
        );
    }
    assert_eq!(written["/tmp/fine"], json!({"written": true}));

    // /tmp holds Lambda's default 512 MB, and no more; on disk, as Lambda's: a 128 MB
    // function fills it without running out of memory.
    let (filled, error) = invoke(&api, "small", &json!({"probe": "fill_tmp"}));
    assert_eq!(error, None, "{filled}");
    assert_eq!(filled["error"], "ENOSPC", "{filled}");
    let mb = filled["written_mb"].as_u64().unwrap();
    assert!((500..=512).contains(&mb), "{filled}");

    // The layers, the later one over the earlier: its module, its library, and the
    // earlier one's tool.
    let (layered, error) = invoke(&api, "probe", &json!({"probe": "layers"}));
    assert_eq!(error, None, "{layered}");
    assert_eq!(layered["module"], "newer", "{layered}");
    assert_eq!(
        layered["module_file"], "/opt/python/layered.py",
        "{layered}"
    );
    assert_eq!(layered["library"], 42, "{layered}");
    assert_eq!(layered["tool"], true, "{layered}");

    // Memory is a hard limit: 128 MB cannot hold 300.
    let (reply, error) = invoke(&api, "small", &json!({"probe": "allocate", "mb": 300}));
    assert_eq!(error.as_deref(), Some("Unhandled"), "{reply}");
    assert_eq!(reply["errorType"], "Runtime.OutOfMemory", "{reply}");
    // And the function is fine after it.
    let (reply, error) = invoke(&api, "small", &json!({"probe": "allocate", "mb": 10}));
    assert_eq!(error, None, "{reply}");
}

/// Invokes `function` asking for the log's tail: the reply and the decoded tail, which must
/// be there.
fn invoke_with_tail(api: &str, function: &str, payload: &Value) -> (Value, String) {
    let Tailed { reply, tail, .. } = invoke_tailed(api, function, payload, &[]);
    assert!(!tail.is_empty(), "no log tail: {reply}");
    (reply, tail)
}

#[test]
fn json_logs_are_lambda_s_records_filtered_by_level() {
    let config = format!(
        r#"
[functions.json]
runtime = "python3.11"
code = "{code}"
handler = "app.handler"
logging_config = {{ log_format = "JSON", application_log_level = "WARN", system_log_level = "INFO" }}

[invoke_api]
port = 0
"#,
        code = function_dir().display(),
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();

    let (layout, _) = invoke_with_tail(&api, "json", &json!({"probe": "layout"}));
    assert_eq!(layout["env"]["AWS_LAMBDA_LOG_FORMAT"], "JSON", "{layout}");
    assert_eq!(layout["env"]["AWS_LAMBDA_LOG_LEVEL"], "WARN", "{layout}");

    let (reply, tail) = invoke_with_tail(&api, "json", &json!({"probe": "log"}));
    assert_eq!(reply, json!({"logged": true}));
    let records: Vec<Value> = tail
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let types: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(
        types,
        ["platform.start", "platform.runtimeDone", "platform.report"],
        "{tail}"
    );
    let report = records
        .iter()
        .find(|r| r["type"] == "platform.report")
        .unwrap();
    assert_eq!(report["record"]["status"], "success", "{report}");
    assert_eq!(report["record"]["metrics"]["memorySizeMB"], 128, "{report}");
    assert!(report["time"].as_str().unwrap().ends_with('Z'), "{report}");
    // The function's records below WARN are dropped; the rest, and plain lines, kept.
    assert!(
        !tail.contains("a DEBUG record") && !tail.contains("an INFO record"),
        "{tail}"
    );
    assert!(!tail.contains("a INFO record"), "{tail}");
    assert!(
        tail.contains("a WARN record") && tail.contains("a ERROR record"),
        "{tail}"
    );
    assert!(tail.contains("a plain line"), "{tail}");
}

#[test]
fn a_container_image_runs_as_lambda_runs_it() {
    let scratch = Scratch::new("image");
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/image/build.py");
    let out = Command::new(python())
        .arg(&build)
        .arg(echo_bin())
        .arg(&scratch.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = format!(
        r#"
[functions.layout]
image = "{layout}"

[functions.archive]
image = "{archive}"
image_config = {{ working_directory = "/var/runtime" }}

[functions.docker]
image = "{docker}"

[invoke_api]
port = 0
"#,
        layout = scratch.0.join("layout").display(),
        archive = scratch.0.join("image.tar").display(),
        docker = scratch.0.join("docker.tar").display(),
    );
    let portico = Portico::start(&config);
    let api = portico.invoke_api.unwrap().to_string();
    for (function, cwd) in [
        ("layout", "/var/task"),
        ("archive", "/var/runtime"),
        ("docker", "/var/task"),
    ] {
        let (reply, tail) = invoke_with_tail(&api, function, &json!({"from": "test"}));
        assert_eq!(reply["echo"], json!({"from": "test"}), "{reply}\n{tail}");
        assert_eq!(reply["function_name"], function);
        let logs = curl(
            None,
            &[&format!(
                "http://{api}/portico/v1/functions/{function}/logs"
            )],
        )
        .body;
        // The base images' entrypoint ran with the image's Cmd as the handler, its Env, its
        // WorkingDir (or image_config's), as Lambda's sandbox user.
        let expected =
            format!("entrypoint: handler=echo.handler image_var=from-image cwd={cwd} uid=993");
        assert!(logs.contains(&expected), "{logs}");
    }
}
