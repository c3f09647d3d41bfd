//! SIGHUP moves every section to the file in place, under a steady stream of requests:
//! function code and configuration, rules, listeners, certificates. Not one request fails;
//! each change is visible within a second; requests in flight finish on what they began
//! with; an invalid file changes nothing.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::load::Load;
use support::{
    Portico, Scratch, certificate, curl, presented, versioned_function as function_code,
};

/// What the configuration file says, step by step.
#[derive(Clone)]
struct State {
    greeting: &'static str,
    rule_body: &'static str,
    /// A second rule, `/extra`.
    extra_rule: bool,
    /// A second HTTP listener, on this port.
    extra_listener: Option<u16>,
    /// A rule forwarding to a target group that does not exist (an invalid file).
    broken: bool,
}

fn config(state: &State) -> String {
    let extra_rule = if state.extra_rule {
        r#"
[[load_balancers.web.listeners.rules]]
priority = 20
conditions = [{ field = "path-pattern", values = ["/extra"] }]
action = { type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "extra" }
"#
    } else {
        ""
    };
    let broken = if state.broken {
        r#"
[[load_balancers.web.listeners.rules]]
priority = 30
conditions = [{ field = "path-pattern", values = ["/broken"] }]
action = { type = "forward", target_group = "no-such-group" }
"#
    } else {
        ""
    };
    let extra_listener = match state.extra_listener {
        Some(port) => format!(
            r#"
[[load_balancers.web.listeners]]
port = {port}
default_action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "second listener" }}
"#
        ),
        None => String::new(),
    };
    format!(
        r#"
[functions.greet]
runtime = "python3.11"
code = "code"
handler = "app.handler"
environment = {{ GREETING = "{greeting}" }}

[functions.steady]
runtime = "python3.11"
code = "steady"
handler = "app.handler"

[target_groups.greet]
target_type = "lambda"
function = "greet"

[target_groups.steady]
target_type = "lambda"
function = "steady"

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "forward", target_group = "greet" }}

[[load_balancers.web.listeners.rules]]
priority = 10
conditions = [{{ field = "path-pattern", values = ["/rule"] }}]
action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "{rule_body}" }}

[[load_balancers.web.listeners.rules]]
priority = 15
conditions = [{{ field = "path-pattern", values = ["/steady"] }}]
action = {{ type = "forward", target_group = "steady" }}
{extra_rule}{broken}
[[load_balancers.web.listeners]]
port = 0
protocol = "HTTPS"
certificates = [{{ certificate = "server.crt", private_key = "server.key" }}]
default_action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "tls" }}
{extra_listener}
[invoke_api]
port = 0

[admin_api]
port = 0
"#,
        greeting = state.greeting,
        rule_body = state.rule_body,
    )
}

/// A port free now, for a listener the file will add.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on `address` (a new connection).
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let reply = curl(None, &["-s", &format!("http://{address}{path}")]);
    (reply.status, reply.body)
}

/// Waits until `condition` holds, at most `limit`; how long it took.
fn visible_within(what: &str, limit: Duration, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "{what}: not visible within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Writes `state`'s file and sends SIGHUP; when it was sent.
fn change(portico: &Portico, state: &State) -> Instant {
    std::fs::write(&portico.config_file, config(state)).unwrap();
    let at = Instant::now();
    portico.reload();
    at
}

/// What a change cost: how long until the load saw it, and how many of its requests were
/// in flight when it was made.
fn cost(load: &Load, name: &str, at: Instant, seen: impl Fn(&str) -> bool) -> Duration {
    let (outcomes, first) = loop {
        let outcomes = load.outcomes();
        let first = outcomes
            .iter()
            .filter(|o| o.started >= at && o.body.as_deref().is_some_and(&seen))
            .map(|o| o.ended)
            .min();
        match first {
            Some(first) => break (outcomes, first),
            None if at.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => panic!("{name}: the load never saw it"),
        }
    };
    let in_flight = outcomes
        .iter()
        .filter(|o| o.started <= at && o.ended >= at)
        .count();
    let visible = first - at;
    eprintln!(
        "{name}: visible to the load after {} ms, {in_flight} request(s) in flight at the change",
        visible.as_millis()
    );
    assert!(visible < Duration::from_secs(1), "{name}: {visible:?}");
    // Once seen, never unseen: a request that started after it saw it too.
    let stale: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.started > first && !o.body.as_deref().is_some_and(&seen))
        .filter_map(|o| o.body.as_deref())
        .collect();
    assert!(
        stale.is_empty(),
        "{name}: old answers after the new one: {stale:?}"
    );
    visible
}

#[test]
fn every_section_changes_in_place_under_load_and_an_invalid_file_changes_nothing() {
    let scratch = Scratch::new("reload");
    let dir = scratch.0.clone();
    for code in ["code", "steady"] {
        std::fs::create_dir_all(dir.join(code)).unwrap();
        std::fs::write(dir.join(code).join("app.py"), function_code("code-1")).unwrap();
    }
    certificate(&dir, "first.test");
    let mut state = State {
        greeting: "hello",
        rule_body: "rule-1",
        extra_rule: false,
        extra_listener: None,
        broken: false,
    };
    let portico = Portico::start_here(scratch, &config(&state), &[]);
    let http = portico.load_balancers[0].1;
    let https = portico.load_balancers[1].1;
    assert_eq!(
        get(http, "/").1.split(' ').take(2).collect::<Vec<_>>(),
        ["code-1", "hello"]
    );
    let steady = get(http, "/steady").1;
    assert_eq!(presented(https), "CN = first.test");

    // The steady stream: the function and a rule, kept-alive and new connections.
    let mut to_function = Load::start(
        &[http],
        2,
        Duration::from_millis(15),
        "GET / HTTP/1.1\r\nHost: web\r\n",
    );
    let mut to_rule = Load::start(
        &[http],
        1,
        Duration::from_millis(15),
        "GET /rule HTTP/1.1\r\nHost: web\r\n",
    );
    std::thread::sleep(Duration::from_millis(300));

    // An invocation in flight when the code changes finishes on the old code.
    let slow = std::thread::spawn(move || get(http, "/?sleep=2"));
    std::thread::sleep(Duration::from_millis(300));

    // 1. New code (the directory's files changed in place).
    std::fs::write(dir.join("code").join("app.py"), function_code("code-2")).unwrap();
    let at = change(&portico, &state);
    visible_within("new code", Duration::from_secs(1), || {
        get(http, "/").1.starts_with("code-2 ")
    });
    cost(&to_function, "new function code", at, |b| {
        b.starts_with("code-2 ")
    });
    let (status, body) = slow.join().unwrap();
    assert_eq!(
        (status, body.split(' ').next()),
        (200, Some("code-1")),
        "{body}"
    );

    // 2. New configuration of the function.
    state.greeting = "bonjour";
    let at = change(&portico, &state);
    visible_within("new environment variable", Duration::from_secs(1), || {
        get(http, "/").1.starts_with("code-2 bonjour ")
    });
    cost(&to_function, "new function configuration", at, |b| {
        b.starts_with("code-2 bonjour ")
    });

    // 3. A rule modified, then one added, then removed.
    state.rule_body = "rule-2";
    let at = change(&portico, &state);
    visible_within("modified rule", Duration::from_secs(1), || {
        get(http, "/rule").1 == "rule-2"
    });
    cost(&to_rule, "modified rule", at, |b| b == "rule-2");
    state.extra_rule = true;
    change(&portico, &state);
    visible_within("added rule", Duration::from_secs(1), || {
        get(http, "/extra").1 == "extra"
    });
    state.extra_rule = false;
    change(&portico, &state);
    visible_within("removed rule", Duration::from_secs(1), || {
        get(http, "/extra").1.starts_with("code-2 ")
    });

    // 4. A certificate rotated: the same file names, new contents.
    certificate(&dir, "second.test");
    change(&portico, &state);
    visible_within("rotated certificate", Duration::from_secs(1), || {
        presented(https) == "CN = second.test"
    });

    // 5. A listener added, then removed (the others keep their sockets).
    let port = free_port();
    state.extra_listener = Some(port);
    change(&portico, &state);
    let second: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    visible_within("added listener", Duration::from_secs(1), || {
        get(second, "/").1 == "second listener"
    });
    state.extra_listener = None;
    change(&portico, &state);
    visible_within("removed listener", Duration::from_secs(1), || {
        std::net::TcpStream::connect(second).is_err()
    });

    // 6. An invalid file changes nothing.
    let mut broken = state.clone();
    broken.broken = true;
    broken.rule_body = "never";
    change(&portico, &broken);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(http, "/rule").1, "rule-2");
    assert_eq!(presented(https), "CN = second.test");

    // The function no change touched kept its environment.
    assert_eq!(get(http, "/steady").1, steady);

    to_function.stop();
    to_rule.stop();
    for (name, load) in [("function", &to_function), ("rule", &to_rule)] {
        let outcomes = load.outcomes();
        let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
        eprintln!(
            "{name}: {} requests, {} failed",
            outcomes.len(),
            failed.len()
        );
        assert!(failed.is_empty(), "{name}: {failed:?}");
        assert!(outcomes.len() > 50, "{name}: {} requests", outcomes.len());
    }
}
