//! Test support: start a real `portico up` with a config, talk to it with real curl.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod failover;
pub mod load;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Lambda target group `hello` in front of the demo function `hello`, as TOML.
pub fn hello_target_group() -> String {
    format!(
        "[target_groups.hello]\ntarget_type = \"lambda\"\nfunction = \"hello\"\n\n\
         [functions.hello]\ncommand = [\"{}\"]\n",
        hello_bin().display()
    )
}

/// Runs the portico CLI with `args`, asserts that it succeeded (showing its stderr if not),
/// and returns what it printed.
pub fn portico_ok(args: &[&str]) -> String {
    let out = Command::new(portico_bin())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "portico {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The portico binary under test.
pub fn portico_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portico"))
}

/// A binary of the workspace's, built beside portico by the test command.
fn built_bin(name: &str) -> PathBuf {
    let path = portico_bin().with_file_name(name);
    assert!(
        path.exists(),
        "{} missing: run scripts/test (it builds every binary first)",
        path.display()
    );
    path
}

/// The demo function.
pub fn hello_bin() -> PathBuf {
    built_bin("hello")
}

/// The `lambda_runtime` echo function.
pub fn echo_bin() -> PathBuf {
    built_bin("echo")
}

/// The Managed Instances demo function: `lambda_runtime`'s concurrent workers.
pub fn concurrent_bin() -> PathBuf {
    built_bin("concurrent")
}

/// The demo extension, written with the official `lambda-extension` crate.
pub fn extension_bin() -> PathBuf {
    built_bin("portico-demo-extension")
}

/// The real python3 executable (not a shim that needs the caller's environment).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed by scripts/test");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A Python function answering the load balancer with its code's version, its `GREETING`
/// and which environment answered (`VERSION GREETING ID`); `?sleep=S` holds the request S
/// seconds.
pub fn versioned_function(version: &str) -> String {
    format!(
        r#"import os, time, uuid
VERSION = "{version}"
PROCESS = uuid.uuid4().hex[:8]

def handler(event, context):
    query = event.get("queryStringParameters") or {{}}
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    body = " ".join([VERSION, os.environ.get("GREETING", "-"), PROCESS])
    return {{"statusCode": 200, "headers": {{"content-type": "text/plain"}}, "body": body}}
"#
    )
}

/// A zip of the function at `version`, written to `path`.
pub fn package(path: &Path, version: &str) {
    let code = path.with_extension("py");
    std::fs::write(&code, versioned_function(version)).unwrap();
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z: z.write(sys.argv[2], 'app.py')",
        ])
        .arg(path)
        .arg(&code)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A self-signed certificate for `name`, written over `server.crt` and `server.key` in `dir`.
pub fn certificate(dir: &Path, name: &str) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .args(["-keyout", "server.key.new", "-out", "server.crt.new"])
        .current_dir(dir)
        .output()
        .expect("openssl is on the machine (Debian's openssl package)");
    assert!(out.status.success(), "{out:?}");
    for file in ["server.key", "server.crt"] {
        std::fs::rename(dir.join(format!("{file}.new")), dir.join(file)).unwrap();
    }
}

/// The subject of the certificate a new TLS handshake with `address` is shown.
pub fn presented(address: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{certs}"])
        .arg(format!("https://{address}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("portico-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `portico up`, stopped with SIGTERM on drop.
pub struct Portico {
    pub child: Child,
    pub static_addresses: Vec<SocketAddr>,
    pub load_balancers: Vec<(String, SocketAddr)>,
    pub invoke_api: Option<SocketAddr>,
    pub admin_api: Option<SocketAddr>,
    /// The file it runs (rewrite it and send SIGHUP to reload).
    pub config_file: PathBuf,
    /// How it was started, to start it again.
    launched: (bool, Vec<(String, String)>),
    scratch: Option<Scratch>,
}

impl Portico {
    /// Starts `portico up` on `config` and waits for its banner. The child is owned (and so
    /// terminated on drop) before anything can fail, so a failed start never leaves a
    /// process holding the test runner's output open.
    pub fn start(config: &str) -> Self {
        Self::start_in(config, None, None)
    }

    /// Starts `portico up` inside the network namespace `netns` (when given) as `node`.
    pub fn start_in(config: &str, netns: Option<&str>, node: Option<&str>) -> Self {
        Self::launch(config, netns, node, &[])
    }

    /// Starts `portico up` on `config` with these environment variables set.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(config, None, None, env)
    }

    /// Starts `portico up` on `config` with an open-file limit (soft and hard) of `nofile`.
    pub fn start_with_file_limit(config: &str, nofile: u32) -> Self {
        let limit = format!("--nofile={nofile}:{nofile}");
        Self::launch_from(
            Scratch::new("up"),
            config,
            (None, None),
            &[("PORTICO_TEST_PRLIMIT", limit.as_str())],
            false,
        )
    }

    /// Starts `portico up portico.toml` in `scratch`, a relative path as a user types it,
    /// with these environment variables set.
    pub fn start_here(scratch: Scratch, config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch_from(scratch, config, (None, None), env, true)
    }

    fn launch(config: &str, netns: Option<&str>, node: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::launch_from(Scratch::new("up"), config, (netns, node), env, false)
    }

    fn launch_from(
        scratch: Scratch,
        config: &str,
        (netns, node): (Option<&str>, Option<&str>),
        env: &[(&str, &str)],
        relative: bool,
    ) -> Self {
        // The admin API's default port would clash between tests running at once.
        let config = if config.contains("[admin_api]") {
            config.to_owned()
        } else {
            format!("{config}\n[admin_api]\nport = 0\n")
        };
        let file = scratch.write("portico.toml", &config);
        let prlimit = env.iter().find(|(k, _)| *k == "PORTICO_TEST_PRLIMIT");
        let mut command = match (netns, prlimit) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(portico_bin());
                c
            }
            (None, Some((_, limit))) => {
                let mut c = Command::new("prlimit");
                c.arg(limit).arg(portico_bin());
                c
            }
            (None, None) => Command::new(portico_bin()),
        };
        if relative {
            command.current_dir(&scratch.0).args(["up", "portico.toml"]);
        } else {
            command.args(["up", file.to_str().unwrap()]);
        }
        if let Some(node) = node {
            command.args(["--node", node]);
        }
        let child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut portico = Self {
            child,
            static_addresses: Vec::new(),
            load_balancers: Vec::new(),
            invoke_api: None,
            admin_api: None,
            config_file: file.clone(),
            launched: (
                relative,
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            scratch: Some(scratch),
        };
        let stdout = portico.child.stdout.take().unwrap();
        let mut in_routes = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["static", "address", addr, ..] => {
                    portico.static_addresses.push(addr.parse().unwrap())
                }
                ["load", "balancer", name, url] => portico.load_balancers.push((
                    name.to_string(),
                    url.split_once("://").unwrap().1.parse().unwrap(),
                )),
                ["invoke", "api", url] => {
                    portico.invoke_api = Some(url.trim_start_matches("http://").parse().unwrap())
                }
                ["admin", "api", url] => {
                    portico.admin_api = Some(url.trim_start_matches("http://").parse().unwrap())
                }
                ["routes"] => in_routes = true,
                [] if in_routes => break,
                _ => {}
            }
        }
        assert!(in_routes, "portico did not print its banner");
        portico
    }

    /// Stops it (SIGTERM) and starts it again in the same directory, on its file as it is
    /// now.
    pub fn restart(mut self) -> Self {
        let status = self.terminate();
        assert!(status.success(), "{status:?}");
        let config = std::fs::read_to_string(&self.config_file).unwrap();
        let scratch = self.scratch.take().unwrap();
        let (relative, env) = self.launched.clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::launch_from(scratch, &config, (None, None), &env, relative)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGHUP: reload the file.
    pub fn reload(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        wait_bounded(&mut self.child, Duration::from_secs(20))
            .expect("portico did not exit within 20 s of SIGTERM")
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl -i` with `args`; `source` sets the local address the request comes from.
pub fn curl(source: Option<&str>, args: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "20"]);
    if let Some(ip) = source {
        cmd.args(["--interface", ip]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&String::from_utf8_lossy(&out.stdout))
}

/// A response as `curl -i` printed it.
pub fn parse_reply(text: &str) -> Reply {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// What a direct invocation asking for the log's tail got: the reply, the function error
/// header, and the decoded tail (empty when the reply had none).
pub struct Tailed {
    pub reply: serde_json::Value,
    pub error: Option<String>,
    pub tail: String,
}

/// Invokes `function` through the Invoke API at `api` with `payload` and `X-Amz-Log-Type:
/// Tail` (and `headers`, curl's `-H` values); the call must answer 200.
pub fn invoke_tailed(
    api: &str,
    function: &str,
    payload: &serde_json::Value,
    headers: &[&str],
) -> Tailed {
    let body = payload.to_string();
    let url = format!("http://{api}/2015-03-31/functions/{function}/invocations");
    let mut args = vec!["-X", "POST", "-H", "X-Amz-Log-Type: Tail"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.extend(["--data-binary", &body, &url]);
    let reply = curl(None, &args);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let tail = reply
        .header("X-Amz-Log-Result")
        .map(|b64| {
            let out = Command::new(python())
                .args([
                    "-c",
                    "import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())",
                    b64,
                ])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
        .unwrap_or_default();
    Tailed {
        reply: reply.json(),
        error: reply.header("X-Amz-Function-Error").map(str::to_owned),
        tail,
    }
}

/// Pids of the processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(pid)
        {
            found.push(child);
        }
    }
    found
}

/// The function processes among `pid`'s children: not the inits of their sandboxes, nor
/// the processes of environments made ahead, waiting to run.
pub fn function_processes_of(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|child| !is_portico_helper(*child))
        .collect()
}

/// Whether `pid` is a sandbox's init or a prepared process (named so by portico), or a
/// process just forked by the thread that enters sandboxes (named after it until it runs
/// its program).
pub fn is_portico_helper(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| {
        matches!(
            c.trim(),
            "portico-sandbox" | "portico-spare" | "sandbox-spawner"
        )
    })
}

pub fn is_alive(pid: i32) -> bool {
    // A zombie has been reaped by nobody; count it as alive (not cleaned up).
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A plain HTTP server (`tests/functions/backend.py`) for instance/IP target groups; killed
/// on drop.
pub struct Backend {
    pub child: Child,
    pub port: u16,
}

impl Backend {
    /// Starts a backend named `name` on `port` (0: any free port).
    pub fn start(name: &str, port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/functions/backend.py");
        let mut child = Command::new(python())
            .args([script, name, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("backend {name} did not start: {line:?}")
        });
        Self { child, port }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Reply {
    /// Every value of a header, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Splits an access log line into fields the way ALB's documentation parses them: spaces
/// separate, double quotes group (with `\"` inside).
pub fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut field = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => field.extend(chars.next()),
                    '"' => break,
                    c => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
    }
    out
}

/// The access key tests sign with: `[…_api] access_keys = [TEST_ACCESS_KEY]` makes an API
/// require it.
pub const TEST_ACCESS_KEY_ID: &str = "AKIAPORTICOTESTKEY01";
/// Its secret.
pub const TEST_SECRET_ACCESS_KEY: &str = "portico-test-secret-0123456789";

/// `access_keys = [ … ]` with the test key, for an `[invoke_api]` or `[admin_api]` section.
pub fn test_access_keys() -> String {
    format!(
        r#"access_keys = [{{ access_key_id = "{TEST_ACCESS_KEY_ID}", secret_access_key = "{TEST_SECRET_ACCESS_KEY}" }}]"#
    )
}

/// curl with `args`, its request signed with the test key for `service` by curl itself
/// (`--aws-sigv4`).
pub fn curl_signed(service: &str, args: &[&str]) -> Reply {
    let user = format!("{TEST_ACCESS_KEY_ID}:{TEST_SECRET_ACCESS_KEY}");
    let scope = format!("aws:amz:us-east-1:{service}");
    let mut all = vec!["--aws-sigv4", scope.as_str(), "--user", user.as_str()];
    all.extend_from_slice(args);
    curl(None, &all)
}

/// GETs `path` from the admin API at `address`, signed with the test key: the JSON of a
/// 200.
pub fn admin_get_signed(address: &str, path: &str) -> serde_json::Value {
    let r = curl_signed(
        "elasticloadbalancing",
        &[&format!("http://{address}{path}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// Credentials and region for the AWS CLI and boto3 (the test key), with no files or
/// metadata lookups.
pub fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
}

/// `aws SERVICE ARGS…` against `endpoint`: its JSON output when it succeeded (null when it
/// printed nothing), else its error text.
pub fn aws_json(endpoint: &str, service: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = aws_cli(endpoint, service, args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// `aws SERVICE ARGS…` (awscli from PyPI) against `endpoint`, signing with the test key
/// (which an API without access keys does not check).
pub fn aws_cli(endpoint: &str, service: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "awscli", "--endpoint-url", endpoint, service])
        .args(args);
    aws_env(&mut cmd)
        .output()
        .expect("awscli is installed by scripts/test")
}
