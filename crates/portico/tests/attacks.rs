//! Attacks on a whole node through `portico up`, each run while a normal client goes on
//! using it: the attack must fail, and the normal client must not notice. Every request
//! of the normal client must succeed; its latencies are printed (and bounded loosely, to
//! catch a node that queues it behind the attack; the figure that matters, p99 under
//! 100 ms, is the soak's to measure: `scripts/soak`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{Portico, curl, echo_bin, hello_target_group};

/// A client with one kept-alive HTTP/1.1 connection.
struct KeepAlive {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(to: SocketAddr) -> Self {
        let writer = TcpStream::connect(to).unwrap();
        writer.set_nodelay(true).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Self { writer, reader }
    }

    /// `GET path`: the status and how long it took.
    fn get(&mut self, path: &str) -> (u16, Duration) {
        let began = Instant::now();
        let request = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        self.writer.write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, began.elapsed())
    }
}

/// The 99th percentile of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// A connection from `from` to `to` that sends half a request head and stops there; `None`
/// when the node closed it at once (refused on accept) or it could not be opened.
fn half_sent(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket
        .bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .ok()?;
    socket
        .connect_timeout(&to.into(), Duration::from_secs(2))
        .ok()?;
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a.example\r\nX-Half: ")
        .ok()?;
    Some(stream)
}

fn open_files(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// portico's resident memory, in MB.
fn rss_mb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// A normal client's `n` requests on its kept-alive connection while an attack runs: each
/// must succeed; returns their p99 (printed, and bounded loosely: a node that queued the
/// client behind the attack would take seconds).
fn normal_requests_during(what: &str, client: &mut KeepAlive, n: usize) -> Duration {
    let latencies: Vec<Duration> = (0..n)
        .map(|i| {
            let (status, took) = client.get(&format!("/during/{i}"));
            assert_eq!(status, 200, "{what}: a normal request failed");
            took
        })
        .collect();
    let p99 = p99(latencies);
    eprintln!("normal client during {what}: p99 {p99:?}");
    assert!(p99 < Duration::from_secs(1), "{what}: {p99:?}");
    p99
}

/// The node's open-file limit in the attack below: small, so that the attack needs
/// hundreds of connections, not thousands.
const NOFILE: u32 = 512;

/// Half-sent requests from many addresses cannot use up the node's descriptors: past the
/// per-client limit and then past the budget, new connections are refused on accept, and
/// meanwhile an established client goes on being served, the Invoke and admin APIs
/// answer, and a function that never ran starts. (Without the budget, ~170 such
/// connections fill a table of 512 and all of these fail.)
#[test]
fn half_sent_requests_cannot_exhaust_the_nodes_descriptors() {
    let config = format!(
        r#"
[accelerator]
static_ips = ["127.0.0.1"]
[[accelerator.listeners]]
port = 0
[[accelerator.listeners.endpoint_groups]]
region = "local"
endpoints = [{{ load_balancer = "web" }}]

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "hello" }}

{}
[functions.echo]
command = ["{}"]

[invoke_api]
port = 0

[limits]
connections_per_client = 30
"#,
        hello_target_group(),
        echo_bin().display()
    );
    let portico = Portico::start_with_file_limit(&config, NOFILE);
    let edge = portico.static_addresses[0];
    let admin = portico.admin_api.unwrap();
    let status = || curl(None, &[&format!("http://{admin}/status")]).json();
    let budget = status()["limits"]["descriptors"]["budget"]
        .as_u64()
        .unwrap();
    assert_eq!(budget, u64::from(NOFILE) - 256, "the default reserve");

    let mut normal = KeepAlive::connect(edge);
    assert_eq!(normal.get("/before").0, 200);

    // One address opens as many as it may, and more.
    let mut held: Vec<TcpStream> = (0..40)
        .filter_map(|_| half_sent("127.0.1.1", edge))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let limits = status()["limits"].clone();
    assert_eq!(limits["per_client"]["refused"], 10, "{limits}");

    // Many addresses: the budget is spent, and the rest are refused.
    for client in 2..=20 {
        held.extend((0..30).filter_map(|_| half_sent(&format!("127.0.1.{client}"), edge)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let limits = status()["limits"].clone();
    assert!(
        limits["descriptors"]["refused"].as_u64().unwrap() > 0,
        "{limits}"
    );
    assert!(
        limits["descriptors"]["held"].as_u64().unwrap() <= budget,
        "{limits}"
    );

    // While it lasts: the established client, the APIs, a cold start.
    normal_requests_during("half-sent requests", &mut normal, 200);
    let invoked = curl(
        None,
        &[
            "-X",
            "POST",
            "--data",
            r#"{"cold":true}"#,
            &format!(
                "http://{}/2015-03-31/functions/echo/invocations",
                portico.invoke_api.unwrap()
            ),
        ],
    );
    assert_eq!(invoked.status, 200, "{invoked:?}");
    let files = open_files(portico.pid());
    assert!(files < NOFILE as usize, "{files} open files");
    assert!(rss_mb(portico.pid()) < 200, "{} MB", rss_mb(portico.pid()));

    // The attack ends; anyone may connect again.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(KeepAlive::connect(edge).get("/after").0, 200);
    let limits = status()["limits"].clone();
    assert!(
        limits["descriptors"]["held"].as_u64().unwrap() <= 2 * 3,
        "{limits}"
    );
}

/// A PROXY v2 header for a TCP/IPv4 connection from `client` to `to`.
fn proxy_header(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(client), SocketAddr::V4(to)) = (client, to) else {
        panic!("IPv4 only");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&to.ip().octets());
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&to.port().to_be_bytes());
    header
}

/// One request from `from` that first claims, in a PROXY v2 header, to come from
/// `claimed`: the answer, or what is left of it when the node closes the connection.
fn proxied_request(from: &str, to: SocketAddr, claimed: SocketAddr) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = proxy_header(claimed, to);
    request.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(&request);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A load balancer that reads PROXY v2 headers takes them only from its trusted sources:
/// anyone else who reaches its port cannot choose the client address that rules, rate
/// limits and the function see.
#[test]
fn proxy_headers_from_outside_the_trusted_sources_are_refused() {
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
proxy_protocol_v2 = true
proxy_protocol_sources = ["127.0.0.7/32"]
default_action = {{ type = "forward", target_group = "hello" }}

{}
[invoke_api]
enabled = false
"#,
        hello_target_group()
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let claimed: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    let trusted = proxied_request("127.0.0.7", lb, claimed);
    assert!(trusted.starts_with("HTTP/1.1 200 "), "{trusted}");
    assert!(
        trusted.contains("203.0.113.9"),
        "the function sees the claimed client"
    );
    let forged = proxied_request("127.0.0.8", lb, claimed);
    assert_eq!(forged, "", "closed without an answer");
    // The trusted source is still served.
    assert!(proxied_request("127.0.0.7", lb, claimed).starts_with("HTTP/1.1 200 "));
}

/// `aws SERVICE ARGS…` against `endpoint`, signed with `id` and `secret`.
fn aws_as(id: &str, secret: &str, endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-m", "awscli", "--endpoint-url", endpoint])
        .args(args);
    support::aws_env(&mut cmd)
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .output()
        .unwrap()
}

/// APIs with access keys answer only requests signed with one of them (AWS Signature
/// Version 4, as the AWS CLI, boto3, curl and portico's own commands sign): unsigned,
/// unknown-key and wrong-secret requests get AWS's 403s, and a function's environment (its
/// secrets) is not readable without a key.
#[test]
fn apis_with_access_keys_answer_only_signed_requests() {
    use support::{TEST_ACCESS_KEY_ID as ID, TEST_SECRET_ACCESS_KEY as SECRET};
    let keys = support::test_access_keys();
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "hello" }}

{}
environment = {{ DATABASE_PASSWORD = "hunter2" }}

[invoke_api]
port = 0
{keys}

[admin_api]
port = 0
{keys}
"#,
        hello_target_group()
    );
    let portico = Portico::start(&config);
    let invoke = format!("http://{}", portico.invoke_api.unwrap());
    let admin = format!("http://{}", portico.admin_api.unwrap());

    // Signed by the AWS CLI with the key: served.
    let out = aws_as(
        ID,
        SECRET,
        &invoke,
        &["lambda", "get-function", "--function-name", "hello"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    let out = aws_as(ID, SECRET, &admin, &["elbv2", "describe-target-groups"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong secret, an unknown key: AWS's errors, and no secret leaks.
    for (id, secret, lambda_error, elbv2_error) in [
        (
            ID,
            "not-the-secret-at-all",
            "InvalidSignatureException",
            "SignatureDoesNotMatch",
        ),
        (
            "AKIAUNKNOWNKEY000001",
            SECRET,
            "UnrecognizedClientException",
            "InvalidClientTokenId",
        ),
    ] {
        let out = aws_as(
            id,
            secret,
            &invoke,
            &["lambda", "get-function", "--function-name", "hello"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(lambda_error),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
        let out = aws_as(id, secret, &admin, &["elbv2", "describe-target-groups"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(elbv2_error),
            "{stderr}"
        );
    }

    // Unsigned: 403, Missing Authentication Token.
    let unsigned = curl(None, &[&format!("{invoke}/2015-03-31/functions/hello")]);
    assert_eq!(unsigned.status, 403, "{unsigned:?}");
    assert_eq!(
        unsigned.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );
    assert!(!unsigned.body.contains("hunter2"));
    let unsigned = curl(None, &[&format!("{admin}/status")]);
    assert_eq!(unsigned.status, 403);
    assert!(
        unsigned.body.contains("MissingAuthenticationToken"),
        "{}",
        unsigned.body
    );
    let logs = curl(
        None,
        &[&format!("{invoke}/portico/v1/functions/hello/logs")],
    );
    assert_eq!(logs.status, 403);

    // curl's own SigV4, boto3, and portico's commands (with the key from the file).
    let signed = support::curl_signed(
        "lambda",
        &[
            "-X",
            "POST",
            "--data",
            r#"{"path":"/x"}"#,
            &format!("{invoke}/2015-03-31/functions/hello/invocations"),
        ],
    );
    assert_eq!(signed.status, 200, "{signed:?}");
    let boto3 = format!(
        "import boto3, json\n\
         c = boto3.client('lambda', endpoint_url='{invoke}')\n\
         r = c.invoke(FunctionName='hello', Payload=json.dumps({{'path': '/boto3'}}))\n\
         print(r['StatusCode'])"
    );
    let mut python = std::process::Command::new("python3");
    python.args(["-c", &boto3]);
    let out = support::aws_env(&mut python).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = portico.config_file.to_str().unwrap();
    let status = std::process::Command::new(support::portico_bin())
        .args(["status", "--endpoint", &admin, "--config", file])
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// The APIs' timeouts are the configured ones: a connection that never finishes its head is
/// closed, and a body that dribbles gets 408, each after its timeout; the API still serves.
#[test]
fn the_apis_timeouts_cut_stalled_heads_and_bodies() {
    let config = format!(
        r#"
{}
[invoke_api]
port = 0
idle_timeout_seconds = 1
body_timeout_seconds = 1

[admin_api]
port = 0
idle_timeout_seconds = 1
body_timeout_seconds = 1
"#,
        hello_target_group()
    );
    let portico = Portico::start(&config);
    for api in [portico.invoke_api.unwrap(), portico.admin_api.unwrap()] {
        let began = Instant::now();
        let mut head = TcpStream::connect(api).unwrap();
        head.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        head.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let mut rest = Vec::new();
        let _ = head.read_to_end(&mut rest);
        let waited = began.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{api}: closed after {waited:?}"
        );

        let mut body = TcpStream::connect(api).unwrap();
        body.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        body.write_all(
            b"POST /2015-03-31/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":",
        )
        .unwrap();
        let mut answer = String::new();
        let _ = body.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{api}: {answer}");
    }
    let ok = curl(
        None,
        &[&format!("http://{}/status", portico.admin_api.unwrap())],
    );
    assert_eq!(ok.status, 200);
}

/// Slow request bodies to a Lambda target hold a connection and its buffer no longer than the
/// idle timeout, each then answered 408, while a normal client is served and memory stays
/// small (before, 300 such bodies held 123 MB for as long as their clients liked).
#[test]
fn slow_bodies_are_cut_at_the_idle_timeout_while_others_are_served() {
    let config = format!(
        r#"
[load_balancers.web]
idle_timeout_seconds = 2
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "hello" }}

{}
[invoke_api]
enabled = false
"#,
        hello_target_group()
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let mut normal = KeepAlive::connect(lb);
    assert_eq!(normal.get("/before").0, 200);
    let before = rss_mb(portico.pid());
    // 200 bodies of 1 MB announced, 64 KB sent, the rest never.
    let chunk = vec![b'x'; 64 * 1024];
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(lb).unwrap();
            s.write_all(b"POST /slow HTTP/1.1\r\nHost: a.example\r\nContent-Type: text/plain\r\nContent-Length: 1048576\r\n\r\n")
                .unwrap();
            s.write_all(&chunk).unwrap();
            s
        })
        .collect();
    normal_requests_during("slow bodies", &mut normal, 100);
    let during = rss_mb(portico.pid());
    assert!(during < before + 100, "{before} MB → {during} MB");
    // Each is answered 408 once the idle timeout passes.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = vec![0u8; 64];
        let n = s.read(&mut answer).unwrap_or(0);
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
    assert_eq!(normal.get("/after").0, 200);
}

/// A flood of `Event` invocations and of requests whose clients go away cannot start more
/// function processes than the memory budget holds, nor stop the normal client's function.
#[test]
fn event_floods_and_aborted_requests_stay_within_the_memory_budget() {
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "hello" }}

{}
[invoke_api]
port = 0

[runtime]
memory_budget_mb = 512
"#,
        hello_target_group()
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let invoke = portico.invoke_api.unwrap();
    let mut normal = KeepAlive::connect(lb);
    assert_eq!(normal.get("/before").0, 200);
    // 150 Event invocations and 50 aborted requests, all at once.
    let attackers: Vec<_> = (0..150)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(invoke).unwrap();
                let body = format!(r#"{{"path":"/event/{i}"}}"#);
                let request = format!(
                    "POST /2015-03-31/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nX-Amz-Invocation-Type: Event\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(request.as_bytes()).unwrap();
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                answer
            })
        })
        .collect();
    for _ in 0..50 {
        let mut s = TcpStream::connect(lb).unwrap();
        s.write_all(b"GET /abort HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .unwrap();
    }
    normal_requests_during("an Event flood and aborted requests", &mut normal, 100);
    let mut most = Vec::new();
    let mut named = Vec::new();
    for _ in 0..20 {
        let now = support::function_processes_of(portico.pid());
        if now.len() > most.len() {
            named = now
                .iter()
                .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
                .collect();
            most = now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // 512 MB of 128 MB environments: 4.
    assert!(
        most.len() <= 4,
        "{} function processes: {named:?}",
        most.len()
    );
    for attacker in attackers {
        let answer = attacker.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 202 "), "{answer}");
    }
    assert!(rss_mb(portico.pid()) < 200);
}

/// An HTTP/2 client that opens streams and resets them before their answer (each would
/// start work that runs to its end) loses its connection past the limit of abandoned
/// requests; h2's own guard counts only streams reset before they were accepted. Other
/// clients are served.
#[test]
fn a_client_that_abandons_many_requests_loses_its_connection() {
    // A target that takes 3 s on `/slow`: each request is reset while it waits.
    let backend = support::Backend::start("slow", 0);
    let config = format!(
        r#"
[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "servers" }}

[target_groups.servers]
target_type = "ip"
targets = ["{}"]

[invoke_api]
enabled = false
"#,
        backend.address()
    );
    let portico = Portico::start(&config);
    let lb = portico.load_balancers[0].1;
    let mut normal = KeepAlive::connect(lb);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (reset, ended) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(lb).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut reset = 0;
        // Rounds of 100 streams: opened, given time to reach the target, then all reset.
        'rounds: for round in 0..3 {
            let mut streams = Vec::new();
            for i in 0..100 {
                let Ok(mut client) = client.clone().ready().await else {
                    break 'rounds;
                };
                let request = http::Request::get(format!("http://a.example/slow?{round}-{i}"))
                    .body(())
                    .unwrap();
                let Ok((response, stream)) = client.send_request(request, true) else {
                    break 'rounds;
                };
                streams.push((response, stream));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (_response, mut stream) in streams {
                stream.send_reset(h2::Reason::CANCEL);
                reset += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .is_ok();
        (reset, ended)
    });
    assert!(ended, "the connection was closed ({reset} streams reset)");
    assert!(
        reset <= 200,
        "closed within two rounds: {reset} streams reset"
    );
    let (status, _) = normal.get("/after");
    assert_eq!(status, 200, "another client is served");
}
