//! The gateway features end to end through a real `portico up`, real curl and a real HTTP
//! backend (`functions/backend.py`): JWT authorizers with tokens minted by `portico token`
//! from keys made for the test (and forged ones), a JWKS URL served by a real HTTP server
//! with key rotation, exact rate limits, API keys with quotas, request validation and CORS,
//! and the metrics that show them.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

#[path = "../../portico-gateway/tests/support/keys.rs"]
mod keys;
mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use support::*;

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "portico-test";

/// A listener with `rules` in front of `backend`, and the gateway resources in `extra`.
fn config(backend: &Backend, rules: &[(&str, &str)], extra: &str) -> String {
    let mut config = format!(
        r#"
{extra}

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "servers" }}

[target_groups.servers]
target_type = "ip"
targets = ["{}"]
# /health: the backend's /count leaves health checks out, so tests can count requests.
health_check = {{ path = "/health", interval_seconds = 0.2, timeout_seconds = 0.1 }}

[invoke_api]
enabled = false
"#,
        backend.address()
    );
    for (i, (path, gateway)) in rules.iter().enumerate() {
        config.push_str(&format!(
            r#"
[[load_balancers.web.listeners.rules]]
priority = {}
conditions = [{{ field = "path-pattern", values = ["{path}"] }}]
action = {{ type = "forward", target_group = "servers" }}
{gateway}
"#,
            i + 1
        ));
    }
    config
}

/// `portico token` with `args` after the key, issuer and audience.
fn mint(scratch: &Scratch, key: &keys::TestKey, kid: &str, args: &[&str]) -> String {
    let pem = scratch.write(
        &format!("{kid}.pem"),
        std::str::from_utf8(&key.pem).unwrap(),
    );
    let mut all = vec!["token", "--key", pem.to_str().unwrap(), "--kid", kid];
    all.extend([
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--subject",
        "user-7",
    ]);
    all.extend(args);
    portico_ok(&all).trim().to_owned()
}

fn get(lb: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{lb}{path}");
    let mut args: Vec<String> = Vec::new();
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(None, &args)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn metrics(portico: &Portico) -> String {
    let url = format!("http://{}/metrics", portico.admin_api.unwrap());
    curl(None, &[&url]).body
}

/// The count of a metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

#[test]
fn jwt_authorizer_admits_real_tokens_and_refuses_forged_ones() {
    let backend = Backend::start("api", 0);
    let scratch = Scratch::new("gateway-jwt");
    let (rsa, ec, ed) = (
        keys::rsa("rsa-1"),
        keys::p256("ec-1"),
        keys::ed25519("ed-1"),
    );
    scratch.write("jwks.json", &keys::jwks(&[&rsa, &ec, &ed]));
    let extra = format!(
        "[authorizers.main]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = \"{}\"\n",
        scratch.0.join("jwks.json").display()
    );
    let portico = Portico::start(&config(
        &backend,
        &[(
            "/orders",
            r#"gateway.jwt = { authorizer = "main", scopes = ["orders:read"] }"#,
        )],
        &extra,
    ));
    let lb = portico.load_balancers[0].1;

    for (key, kid) in [(&rsa, "rsa-1"), (&ec, "ec-1"), (&ed, "ed-1")] {
        let token = mint(&scratch, key, kid, &["--scope", "orders:read"]);
        let r = get(lb, "/orders", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{kid}: {}", r.body);
        let claims = r.json()["headers"]["x-portico-jwt-claims"]
            .as_str()
            .unwrap()
            .to_owned();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["sub"], "user-7");
        assert_eq!(claims["iss"], ISSUER);
    }

    let refused = |token: &str, status: u16, why: &str| {
        let r = get(lb, "/orders", &[("authorization", &bearer(token))]);
        assert_eq!(r.status, status, "{why}: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains(why), "{why}: {challenge}");
        assert_eq!(
            r.json()["message"],
            if status == 401 {
                "Unauthorized"
            } else {
                "Forbidden"
            }
        );
    };
    let good = mint(&scratch, &ed, "ed-1", &["--scope", "orders:read"]);
    refused(
        &mint(&scratch, &ed, "ed-1", &["--scope", "orders:write"]),
        403,
        "insufficient_scope",
    );
    refused(
        &mint(
            &scratch,
            &ed,
            "ed-1",
            &["--scope", "orders:read", "--claim", "exp=1000"],
        ),
        401,
        "expired",
    );
    refused(
        &mint(
            &scratch,
            &ed,
            "ed-1",
            &["--scope", "orders:read", "--claim", "iss=https://evil.test"],
        ),
        401,
        "valid issuer",
    );
    refused(
        &mint(
            &scratch,
            &ed,
            "ed-1",
            &["--scope", "orders:read", "--claim", "aud=other"],
        ),
        401,
        "valid audience",
    );
    let stranger = keys::ed25519("ed-1");
    refused(
        &mint(&scratch, &stranger, "ed-1", &["--scope", "orders:read"]),
        401,
        "signature",
    );
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_payload = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "admin", "exp": 4_000_000_000u64, "scope": "orders:read"})
            .to_string(),
    );
    refused(&format!("{head}.{forged_payload}.{sig}"), 401, "signature");
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    refused(&format!("{none}.{forged_payload}."), 401, "algorithm");
    refused(&format!("{}x", "A".repeat(9000)), 401, "longer than");
    refused("not-a-token", 401, "malformed");

    let r = get(lb, "/orders", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer scope=\"orders:read\"")
    );

    // On a route without an authorizer, a client cannot pass its own claims along.
    let r = get(
        lb,
        "/open",
        &[("x-portico-jwt-claims", "eyJzdWIiOiJhZG1pbiJ9")],
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-portico-jwt-claims").is_none());

    let m = metrics(&portico);
    assert_eq!(
        metric(
            &m,
            "portico_gateway_requests_total{policy=\"load_balancers.web.listeners[0].rules[0].gateway\",outcome=\"admitted\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "portico_gateway_requests_total{policy=\"load_balancers.web.listeners[0].rules[0].gateway\",outcome=\"unauthorized\"}"
        ),
        9.0
    );
}

/// `python3 -m http.server` serving `dir`; returns the process and its port.
fn file_server(dir: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new(python())
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("http.server said {line:?}"));
    (child, port)
}

#[test]
fn jwks_url_is_fetched_and_a_rotated_key_is_picked_up() {
    let backend = Backend::start("api", 0);
    let scratch = Scratch::new("gateway-jwks-url");
    let (old, new) = (keys::p256("old"), keys::rsa("new"));
    scratch.write("jwks.json", &keys::jwks(&[&old]));
    let (mut server, port) = file_server(&scratch.0);
    let extra = format!(
        "[authorizers.idp]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_url = \"http://127.0.0.1:{port}/jwks.json\"\n"
    );
    let portico = Portico::start(&config(
        &backend,
        &[("/me", r#"gateway.jwt = { authorizer = "idp" }"#)],
        &extra,
    ));
    let lb = portico.load_balancers[0].1;
    let r = get(
        lb,
        "/me",
        &[("authorization", &mint(&scratch, &old, "old", &[]))],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // The provider rotates: a token under the new kid makes portico fetch the set again.
    scratch.write("jwks.json", &keys::jwks(&[&new]));
    let r = get(
        lb,
        "/me",
        &[("authorization", &bearer(&mint(&scratch, &new, "new", &[])))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The old key is gone from the set now.
    let r = get(
        lb,
        "/me",
        &[("authorization", &bearer(&mint(&scratch, &old, "old", &[])))],
    );
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().contains("kid"));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn rate_limits_refuse_exactly_the_excess_and_quotas_count_per_key() {
    let backend = Backend::start("api", 0);
    let extra = r#"
[usage_plans.small]
quota = { limit = 3, period = "DAY" }

[api_keys]
keys = [
  { name = "alice", value = "alice-key-0123456789abcdef", usage_plan = "small" },
  { name = "bob", value = "bob-key-0123456789abcdef00" },
  { name = "eve", value = "eve-key-0123456789abcdef00", enabled = false },
]
"#;
    let portico = Portico::start(&config(
        &backend,
        &[
            (
                "/limited",
                "gateway.rate_limit = { requests = 10, period_seconds = 3600 }",
            ),
            (
                "/keyed",
                "gateway.api_key_required = true\ngateway.rate_limit = { requests = 4, period_seconds = 3600, key = \"api-key\" }",
            ),
        ],
        extra,
    ));
    let lb = portico.load_balancers[0].1;

    // N + k requests in a burst: exactly k refused, each with Retry-After.
    let (n, k) = (10, 7);
    let statuses: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n + k)
            .map(|_| s.spawn(|| get(lb, "/limited", &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&Reply> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        refused.len(),
        k,
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(statuses.iter().filter(|r| r.status == 200).count(), n);
    for r in &refused {
        assert_eq!(r.json()["message"], "Too Many Requests");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=360).contains(&wait), "{wait}");
    }

    // API keys: missing, unknown and disabled keys are 403; alice has 3 a day.
    for key in [
        None,
        Some("nope-0123456789abcdefgh"),
        Some("eve-key-0123456789abcdef00"),
    ] {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let r = get(lb, "/keyed", &headers);
        assert_eq!(r.status, 403, "{key:?}");
        assert_eq!(r.json()["message"], "Forbidden");
    }
    let alice = [("x-api-key", "alice-key-0123456789abcdef")];
    for _ in 0..3 {
        assert_eq!(get(lb, "/keyed", &alice).status, 200);
    }
    let r = get(lb, "/keyed", &alice);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["message"], "Limit Exceeded");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() <= 86_400);
    // Bob has no plan, only the per-key rate limit of 4.
    let bob = [("x-api-key", "bob-key-0123456789abcdef00")];
    let codes: Vec<u16> = (0..6).map(|_| get(lb, "/keyed", &bob).status).collect();
    assert_eq!(codes, [200, 200, 200, 200, 429, 429]);

    let m = metrics(&portico);
    let limited = "load_balancers.web.listeners[0].rules[0].gateway";
    assert_eq!(
        metric(
            &m,
            &format!(
                "portico_gateway_requests_total{{policy=\"{limited}\",outcome=\"throttled\"}}"
            )
        ),
        k as f64
    );
    assert_eq!(
        metric(
            &m,
            &format!("portico_rate_limit_burst{{policy=\"{limited}\",key=\"source-ip\"}}")
        ),
        10.0
    );
    assert_eq!(metric(&m, "portico_usage_plan_quota{plan=\"small\"}"), 3.0);
    assert_eq!(
        metric(
            &m,
            "portico_usage_plan_used{plan=\"small\",api_key=\"alice\"}"
        ),
        3.0
    );
}

#[test]
fn validation_and_cors_answer_before_the_target_is_called() {
    let backend = Backend::start("api", 0);
    let scratch = Scratch::new("gateway-validate");
    let schema = scratch.write(
        "order.json",
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["sku", "quantity"],
  "properties": {
    "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$" },
    "quantity": { "type": "integer", "minimum": 1 }
  },
  "additionalProperties": false
}"#,
    );
    let validate = format!(
        "gateway.validate = {{ required_headers = [\"x-request-id\"], required_query_parameters = [\"v\"], body_schema = \"{}\" }}",
        schema.display()
    );
    let cors = r#"gateway.cors = { allow_origins = ["https://app.test"], allow_methods = ["GET", "POST"], allow_headers = ["content-type"], expose_headers = ["x-backend"], max_age_seconds = 300, allow_credentials = true }"#;
    let portico = Portico::start(&config(
        &backend,
        &[("/orders", &validate), ("/cors", cors)],
        "",
    ));
    let lb = portico.load_balancers[0].1;
    let post = |body: &str, query: &str, headers: &[&str]| {
        let url = format!("http://{lb}/orders{query}");
        let mut args = vec![
            "-X",
            "POST",
            "--data-binary",
            body,
            "-H",
            "content-type: application/json",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(None, &args)
    };
    let count = || -> u64 {
        curl(None, &[&format!("http://{}/count", backend.address())])
            .body
            .trim()
            .parse()
            .unwrap()
    };
    let id = ["x-request-id: 1"];

    let r = post(r#"{"sku":"ABC-1234","quantity":2}"#, "?v=1", &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body"], 31);
    let before = count();

    let r = post(r#"{"sku":"ABC-1234","quantity":2}"#, "", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "Missing required request parameters: [x-request-id, v]"
    );
    assert_eq!(r.header("x-amzn-errortype"), Some("BadRequestException"));
    let r = post(r#"{"sku":"abc","quantity":0,"extra":1}"#, "?v=1", &id);
    assert_eq!(r.status, 400);
    let message = r.json()["message"].as_str().unwrap().to_owned();
    for field in ["/sku", "/quantity", "extra"] {
        assert!(message.contains(field), "{message}");
    }
    let r = post(r#"{"sku": "ABC-1234", "quantity": "#, "?v=1", &id);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("not JSON"));
    let big = format!(
        r#"{{"sku":"ABC-1234","quantity":1,"pad":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let body_file = scratch.write("big.json", &big);
    let r = post(&format!("@{}", body_file.display()), "?v=1", &id);
    assert_eq!(r.status, 413);
    assert_eq!(count(), before, "an invalid request reached the target");

    // CORS: the preflight is answered by portico; real responses carry portico's headers.
    let url = format!("http://{lb}/cors");
    let r = curl(
        None,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.test",
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: Content-Type",
            &url,
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    let r = curl(
        None,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://evil.test",
            "-H",
            "Access-Control-Request-Method: POST",
            &url,
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = curl(None, &["-H", "Origin: https://app.test", &url]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("x-backend"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(
        count(),
        before + 1,
        "only the real CORS request reached the target"
    );
}

/// `examples/gateway.toml`, on free ports, its files found where the example keeps them.
fn example_config() -> String {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let text = std::fs::read_to_string(format!("{examples}/gateway.toml")).unwrap();
    text.replace("port = 9090", "port = 0")
        .replace("port = 9091", "port = 0")
        .replace("port = 9092", "port = 0")
        .replace("\"keys/", &format!("\"{examples}/keys/"))
        .replace("\"schemas/", &format!("\"{examples}/schemas/"))
        .replace("{portico_bin_dir}/hello", hello_bin().to_str().unwrap())
}

#[test]
fn the_gateway_example_does_what_it_says() {
    let portico = Portico::start(&example_config());
    let lb = portico.load_balancers[0].1;
    let url = |path: &str| format!("http://{lb}{path}");

    assert_eq!(curl(None, &[&url("/public")]).status, 200);
    assert_eq!(curl(None, &[&url("/private")]).status, 401);
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/keys/private.pem"
    );
    let token = portico_ok(&[
        "token",
        "--key",
        key,
        "--kid",
        "example-1",
        "--issuer",
        "https://auth.portico.example",
        "--audience",
        "portico-example",
        "--scope",
        "orders:read",
        "--subject",
        "reader",
    ]);
    let r = get(lb, "/private", &[("authorization", &bearer(token.trim()))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["jwt_claims"]["sub"], "reader");

    let codes: Vec<u16> = (0..7)
        .map(|_| curl(None, &[&url("/limited")]).status)
        .collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429]);

    let order = |body: &str| curl(None, &["-X", "POST", "-d", body, &url("/orders")]);
    assert_eq!(order(r#"{"sku":"ABC-1234","quantity":2}"#).status, 200);
    let r = order(r#"{"sku":"abc","quantity":0}"#);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("/sku") && r.body.contains("/quantity"),
        "{}",
        r.body
    );

    let partner = |key: &str| get(lb, "/partner", &[("x-api-key", key)]).status;
    assert_eq!(partner("example-partner-a-key-0001"), 200);
    assert_eq!(
        partner("example-partner-b-key-0002"),
        403,
        "partner-b is disabled"
    );

    let r = curl(
        None,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://app.portico.example",
            "-H",
            "Access-Control-Request-Method: POST",
            &url("/orders"),
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.portico.example")
    );
    assert!(
        metrics(&portico)
            .contains("portico_usage_plan_used{plan=\"partners\",api_key=\"partner-a\"} 1")
    );
}
