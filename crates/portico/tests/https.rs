//! HTTPS and HTTP/2 listeners end to end: certificates made by the openssl CLI and chosen
//! by SNI, HTTP/2 by ALPN and by prior knowledge (h2c), the idle timeout on HTTP/2, access
//! log TLS fields, and bad certificates and bad handshakes. Real `portico up`, real curl.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is on the machine (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) in `dir`, and leaf certificates signed by it.
struct Pki<'a> {
    dir: &'a Path,
}

impl<'a> Pki<'a> {
    fn new(dir: &'a Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=portico test CA",
            ],
        );
        Self { dir }
    }

    /// `NAME.pem` and `NAME.key`, an `rsa` or `ec` key, valid for `dns` names.
    fn leaf(&self, name: &str, key: &str, dns: &[&str]) {
        let newkey = match key {
            "rsa" => vec!["-newkey", "rsa:2048"],
            _ => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        let (keyfile, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        std::fs::write(
            self.dir.join(&ext),
            format!("subjectAltName={}\n", sans.join(",")),
        )
        .unwrap();
        let subject = format!("/CN={name}");
        let mut args = vec!["req"];
        args.extend(&newkey);
        args.extend([
            "-nodes", "-keyout", &keyfile, "-out", &csr, "-subj", &subject,
        ]);
        openssl(self.dir, &args);
        openssl(
            self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn entry(&self, name: &str) -> String {
        format!(
            "{{ certificate = {:?}, private_key = {:?} }}",
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key"))
        )
    }
}

/// One request through curl: the reply, the HTTP version, and the subject CN of the
/// certificate the server presented (`None` over plain HTTP).
struct Seen {
    reply: Reply,
    version: String,
    subject: Option<String>,
}

fn request(args: &[&str]) -> Seen {
    let out = Command::new("curl")
        .args(["-sS", "-v", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl {args:?} failed: {stderr}");
    let subject = stderr
        .lines()
        .find_map(|l| l.trim_start_matches("* ").trim().strip_prefix("subject: "))
        .map(|s| s.trim_start_matches("CN=").to_owned());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    Seen {
        reply: parse_reply(&text),
        version,
        subject,
    }
}

fn config(pki: &Pki, http2: bool, extra: &str) -> String {
    format!(
        r#"
[load_balancers.web]
idle_timeout_seconds = 1
http2 = {http2}
{extra}
[[load_balancers.web.listeners]]
port = 0
protocol = "HTTPS"
certificates = [{}, {}, {}, {}, {}]
default_action = {{ type = "forward", target_group = "hello" }}

[[load_balancers.web.listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/moved"] }}]
action = {{ type = "redirect", path = "/new", status_code = "HTTP_301" }}

[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "plain" }}

{hello}

[invoke_api]
enabled = false
"#,
        pki.entry("default"),
        pki.entry("api"),
        pki.entry("wild"),
        pki.entry("both-rsa"),
        pki.entry("both-ec"),
        hello = hello_target_group()
    )
}

fn make_pki(scratch: &Scratch) -> Pki<'_> {
    let pki = Pki::new(&scratch.0);
    pki.leaf("default", "rsa", &["default.test"]);
    pki.leaf("api", "ec", &["api.example.com"]);
    pki.leaf("wild", "rsa", &["*.wild.example.com"]);
    pki.leaf("both-rsa", "rsa", &["both.example.com"]);
    pki.leaf("both-ec", "ec", &["both.example.com"]);
    pki
}

fn url_for(host: &str, lb: SocketAddr, path: &str) -> (String, String) {
    (
        format!("{host}:{}:127.0.0.1", lb.port()),
        format!("https://{host}:{}{path}", lb.port()),
    )
}

#[test]
fn certificates_are_chosen_by_sni_and_http2_is_negotiated_by_alpn() {
    let scratch = Scratch::new("tls");
    let pki = make_pki(&scratch);
    let logs = Scratch::new("tls-logs");
    let log_file = logs.0.join("access.log");
    let extra = format!(
        "access_logs = {{ enabled = true, destination = {:?} }}",
        log_file.display().to_string()
    );
    let mut portico = Portico::start(&config(&pki, true, &extra));
    let (https, http) = (portico.load_balancers[0].1, portico.load_balancers[1].1);
    let ca = pki.path("ca.pem");

    // SNI picks the certificate: an exact name, a wildcard, and among two certificates for
    // one name the ECDSA one even though the RSA one is listed first. curl verifies each
    // against the test CA.
    for (host, expected) in [
        ("api.example.com", "api"),
        ("x.wild.example.com", "wild"),
        ("both.example.com", "both-ec"),
    ] {
        let (resolve, url) = url_for(host, https, "/hello?k=v");
        let seen = request(&["--cacert", &ca, "--resolve", &resolve, &url]);
        assert_eq!(seen.subject.as_deref(), Some(expected), "{host}");
        assert_eq!(seen.reply.status, 200, "{host}: {}", seen.reply.body);
        assert_eq!(seen.version, "HTTP/2", "{host}: ALPN chose h2");
        let body = seen.reply.json();
        assert_eq!(body["x_forwarded_proto"], "https");
        assert_eq!(body["x_forwarded_port"], https.port().to_string());
        assert_eq!(body["path"], "/hello");
        assert_eq!(body["query"]["k"][0], "v");
    }
    // An unknown name and no SNI at all (an IP address) get the default certificate.
    let (resolve, url) = url_for("other.example.net", https, "/");
    let seen = request(&["-k", "--resolve", &resolve, &url]);
    assert_eq!(seen.subject.as_deref(), Some("default"));
    let seen = request(&["-k", &format!("https://{https}/")]);
    assert_eq!(seen.subject.as_deref(), Some("default"));

    // HTTP/1.1 over TLS when the client asks for it; redirects keep the https scheme.
    let (resolve, url) = url_for("api.example.com", https, "/moved?a=1");
    let seen = request(&["--http1.1", "--cacert", &ca, "--resolve", &resolve, &url]);
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.reply.status, 301);
    assert_eq!(
        seen.reply.header("location"),
        Some(format!("https://api.example.com:{}/new?a=1", https.port()).as_str())
    );

    // h2c with prior knowledge on the plain HTTP listener, and HTTP/1.1 beside it.
    let seen = request(&["--http2-prior-knowledge", &format!("http://{http}/")]);
    assert_eq!(
        (seen.version.as_str(), seen.reply.body.as_str()),
        ("HTTP/2", "plain")
    );
    let seen = request(&[&format!("http://{http}/")]);
    assert_eq!(
        (seen.version.as_str(), seen.reply.body.as_str()),
        ("HTTP/1.1", "plain")
    );

    portico.terminate();
    let text = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<Vec<String>> = text.lines().map(fields).collect();
    let h2 = lines
        .iter()
        .find(|f| f[0] == "h2" && f[18] == "api.example.com")
        .unwrap_or_else(|| panic!("no h2 line for api.example.com in {text}"));
    assert_eq!(h2.len(), 30, "{h2:?}");
    assert!(h2[12].starts_with("GET https://api.example.com:"), "{h2:?}");
    assert!(h2[12].ends_with("/hello?k=v HTTP/2.0"), "{h2:?}");
    assert_eq!(h2[15], "TLSv1.3");
    assert!(h2[14].starts_with("TLS_"), "OpenSSL cipher name: {h2:?}");
    assert_eq!(
        h2[19], "arn:aws:iam::000000000000:server-certificate/api",
        "{h2:?}"
    );
    let http1 = lines
        .iter()
        .find(|f| f[12].starts_with("GET https://api.example.com:") && f[12].ends_with("HTTP/1.1"))
        .unwrap_or_else(|| panic!("no HTTP/1.1 line in {text}"));
    assert_eq!(http1[0], "https");
    let no_sni = lines
        .iter()
        .find(|f| f[18] == "-")
        .unwrap_or_else(|| panic!("no line without SNI in {text}"));
    assert_eq!(
        no_sni[19],
        "arn:aws:iam::000000000000:server-certificate/default"
    );
}

#[test]
fn with_http2_off_only_http1_is_spoken() {
    let scratch = Scratch::new("tls-h1");
    let pki = Pki::new(&scratch.0);
    for (name, key, dns) in [
        ("default", "ec", "default.test"),
        ("api", "ec", "api.example.com"),
        ("wild", "ec", "*.wild.example.com"),
        ("both-rsa", "ec", "both.example.com"),
        ("both-ec", "ec", "both.example.com"),
    ] {
        pki.leaf(name, key, &[dns]);
    }
    let portico = Portico::start(&config(&pki, false, ""));
    let (https, http) = (portico.load_balancers[0].1, portico.load_balancers[1].1);
    let (resolve, url) = url_for("api.example.com", https, "/");
    let ca = pki.path("ca.pem");
    let seen = request(&["--http2", "--cacert", &ca, "--resolve", &resolve, &url]);
    assert_eq!(seen.version, "HTTP/1.1", "ALPN offers only http/1.1");
    assert_eq!(seen.reply.status, 200);
    // The HTTP/2 preface on the plain listener is not HTTP/1.1 either: refused, not served.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--http2-prior-knowledge"])
        .arg(format!("http://{http}/"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "h2c served with http2 = false");
    assert_eq!(request(&[&format!("http://{http}/")]).reply.status, 200);
}

/// Reads HTTP/2 frames until the server closes, acknowledging PINGs when `ack_pings`;
/// returns the frame types seen.
fn frames_until_closed(stream: &mut TcpStream, ack_pings: bool) -> Vec<u8> {
    const PING: u8 = 6;
    let mut types = Vec::new();
    let mut header = [0u8; 9];
    while stream.read_exact(&mut header).is_ok() {
        types.push(header[3]);
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; len];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        if ack_pings && header[3] == PING && header[4] & 1 == 0 {
            let mut ack = [0, 0, 8, PING, 1, 0, 0, 0, 0].to_vec();
            ack.extend_from_slice(&payload);
            let _ = stream.write_all(&ack);
        }
    }
    types
}

/// Opens an h2c connection to `addr` that sends its preface and SETTINGS, then nothing
/// else; returns the frame types the server sent and when it closed.
fn idle_h2c(addr: SocketAddr, ack_pings: bool) -> (Vec<u8>, Duration) {
    let mut h2 = TcpStream::connect(addr).unwrap();
    h2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let opened = Instant::now();
    let types = frames_until_closed(&mut h2, ack_pings);
    (types, opened.elapsed())
}

#[test]
fn idle_http2_connections_get_a_goaway_after_the_idle_timeout_and_bad_handshakes_harm_nobody() {
    let scratch = Scratch::new("tls-idle");
    let pki = Pki::new(&scratch.0);
    for name in ["default", "api", "wild", "both-rsa", "both-ec"] {
        pki.leaf(name, "ec", &["default.test"]);
    }
    let portico = Portico::start(&config(&pki, true, ""));
    let (https, http) = (portico.load_balancers[0].1, portico.load_balancers[1].1);

    // An h2c connection that sends its preface and SETTINGS, then nothing: the load balancer
    // sends GOAWAY (frame type 7) after the 1 s idle timeout and closes the connection once
    // the client has acknowledged it; a client that never does is cut a timeout later.
    const GOAWAY: u8 = 7;
    let (types, closed_after) = idle_h2c(http, true);
    assert!(types.contains(&GOAWAY), "no GOAWAY among frames {types:?}");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(1900),
        "closed after {closed_after:?}, idle timeout is 1 s"
    );
    let (types, closed_after) = idle_h2c(http, false);
    assert!(types.contains(&GOAWAY), "no GOAWAY among frames {types:?}");
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}: 1 s idle, then 1 s for the GOAWAY"
    );

    // Garbage instead of a ClientHello, and a client that stops mid-handshake: each costs
    // only its own connection.
    let mut garbage = TcpStream::connect(https).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = garbage.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plain HTTP served on the HTTPS listener"
    );
    let _stalled = TcpStream::connect(https).unwrap();
    let seen = request(&["-k", &format!("https://{https}/")]);
    assert_eq!(seen.reply.status, 200);
}

/// Opens an HTTP/1.1 connection to `addr`, sends `sent`, and returns what came back and how
/// long the load balancer kept the connection open.
fn held_open(addr: SocketAddr, sent: &[u8]) -> (String, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let opened = Instant::now();
    stream.write_all(sent).unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    (String::from_utf8_lossy(&buf).into_owned(), opened.elapsed())
}

#[test]
fn idle_http1_connections_and_request_heads_that_never_end_are_closed_at_the_idle_timeout() {
    let scratch = Scratch::new("h1-idle");
    let pki = make_pki(&scratch);
    let portico = Portico::start(&config(&pki, false, ""));
    let http = portico.load_balancers[1].1;
    // A head that never ends, from the first request or after an answered one: closed
    // once the connection has been without a request for the 1 s idle timeout.
    for sent in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (reply, open_for) = held_open(http, sent);
        assert!(
            open_for >= Duration::from_millis(900) && open_for < Duration::from_millis(2500),
            "closed after {open_for:?}, idle timeout is 1 s; sent {:?}",
            String::from_utf8_lossy(sent)
        );
        let answered = sent.windows(4).filter(|w| w == b"\r\n\r\n").count();
        assert_eq!(reply.matches("HTTP/1.1 200").count(), answered, "{reply}");
    }
}

#[test]
fn bad_certificates_stop_portico_up_with_a_clear_error() {
    let scratch = Scratch::new("tls-bad");
    let pki = Pki::new(&scratch.0);
    pki.leaf("good", "ec", &["good.test"]);
    pki.leaf("other", "ec", &["other.test"]);
    std::fs::write(
        scratch.0.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n",
    )
    .unwrap();
    std::fs::write(scratch.0.join("empty.pem"), "no pem here\n").unwrap();
    std::fs::write(scratch.0.join("huge.pem"), vec![b'A'; 2 << 20]).unwrap();
    let cases = [
        ("missing.pem", "good.key", "missing.pem: No such file"),
        ("garbage.pem", "good.key", "malformed PEM"),
        ("empty.pem", "good.key", "no CERTIFICATE block"),
        ("good.pem", "empty.pem", "no PRIVATE KEY block"),
        ("good.pem", "other.key", "not usable with"),
        ("huge.pem", "good.key", "over the 1048576-byte limit"),
    ];
    for (certificate, key, expected) in cases {
        let config = format!(
            r#"
[load_balancers.web]
listeners = [{{ port = 0, protocol = "HTTPS", certificates = [{{ certificate = {:?}, private_key = {:?} }}], default_action = {{ type = "fixed-response", status_code = 200 }} }}]
[invoke_api]
enabled = false
[admin_api]
enabled = false
"#,
            pki.path(certificate),
            pki.path(key)
        );
        let file = scratch.write("bad.toml", &config);
        let out = Command::new(portico_bin())
            .args(["up", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{certificate}/{key} started");
        assert!(
            stderr.contains("load_balancers.web.listeners[0].certificates")
                && stderr.contains(expected),
            "{certificate}/{key}: expected {expected:?} in: {stderr}"
        );
    }
}

#[test]
fn the_edge_checks_an_https_load_balancer_with_https_health_checks() {
    let scratch = Scratch::new("tls-edge");
    let pki = make_pki(&scratch);
    let group = |path: &str| {
        format!(
            r#"
[[accelerator.listeners]]
port = 0
[[accelerator.listeners.endpoint_groups]]
region = "tls"
health_check_protocol = "HTTPS"
health_check_path = "{path}"
health_check_interval_seconds = 0.1
endpoints = [{{ load_balancer = "web" }}]
"#
        )
    };
    let accelerator = format!(
        "[accelerator]\nstatic_ips = [\"127.0.0.1\"]\n{}{}",
        group("/hello"),
        // A redirect is not a 200: this listener's endpoint turns unhealthy.
        group("/moved")
    );
    let portico = Portico::start(&format!("{}\n{accelerator}", config(&pki, true, "")));
    let admin = portico.admin_api.unwrap();
    let endpoint = |listener: usize| {
        let status = request(&[&format!("http://{admin}/status")]).reply.json();
        status["accelerator"]["listeners"][listener]["endpoint_groups"][0]["endpoints"][0].clone()
    };
    let mut passed = false;
    for _ in 0..100 {
        if endpoint(0)["rtt_ms"].is_number() && endpoint(1)["health"] == "unhealthy" {
            passed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(passed, "{} / {}", endpoint(0), endpoint(1));
    assert_eq!(endpoint(0)["health"], "healthy");
    // TLS passes through the edge untouched: the client verifies the load balancer's
    // certificate through the static address.
    let edge = portico.static_addresses[0];
    let (resolve, url) = url_for("api.example.com", edge, "/hello");
    let seen = request(&["--cacert", &pki.path("ca.pem"), "--resolve", &resolve, &url]);
    assert_eq!(seen.reply.status, 200);
}
