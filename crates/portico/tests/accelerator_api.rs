//! The accelerator changed with `aws globalaccelerator`, as on AWS: its accelerator,
//! listeners and endpoint groups listed with stable ARNs, an endpoint group's weights moved
//! under a steady stream of connections through the static address (not one fails; the
//! change is seen within a second), Global Accelerator's errors, and the change kept across
//! a restart.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::load::Load;
use support::{Backend, Portico, Scratch, aws_json};

/// `aws globalaccelerator ARGS…` against the admin API: its JSON, or its error text.
fn ga(portico: &Portico, args: &[&str]) -> Result<Value, String> {
    aws_json(
        &format!("http://{}", portico.admin_api.unwrap()),
        "globalaccelerator",
        args,
    )
}

/// Which backend answered a response body (`backend.py` names itself first).
fn backend_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| body.to_owned(),
        |v| v["backend"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn endpoint_weights_move_with_the_aws_cli_under_load_and_stay_after_a_restart() {
    let (blue, green) = (Backend::start("blue", 0), Backend::start("green", 0));
    let config = format!(
        r#"
[accelerator]
name = "edge"
static_ips = ["127.0.0.1"]

[[accelerator.listeners]]
port = 0
[[accelerator.listeners.endpoint_groups]]
region = "local"
health_check_interval_seconds = 0.5
endpoints = [{{ address = "{blue}", weight = 255 }}, {{ address = "{green}", weight = 0 }}]

[invoke_api]
port = 0

[admin_api]
port = 0
"#,
        blue = blue.address(),
        green = green.address(),
    );
    let portico = Portico::start_here(Scratch::new("ga"), &config, &[]);
    let accelerators = ga(&portico, &["list-accelerators"]).unwrap();
    let accelerator = &accelerators["Accelerators"][0];
    assert_eq!(accelerator["Name"], "edge", "{accelerators}");
    assert_eq!(accelerator["IpSets"][0]["IpAddresses"][0], "127.0.0.1");
    let arn = accelerator["AcceleratorArn"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with("arn:aws:globalaccelerator::000000000000:accelerator/"),
        "{arn}"
    );
    assert_eq!(
        ga(
            &portico,
            &["describe-accelerator", "--accelerator-arn", &arn]
        )
        .unwrap()["Accelerator"]["AcceleratorArn"],
        arn.as_str()
    );
    let listeners = ga(&portico, &["list-listeners", "--accelerator-arn", &arn]).unwrap();
    let listener = listeners["Listeners"][0]["ListenerArn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(listeners["Listeners"][0]["Protocol"], "TCP");
    let groups = ga(
        &portico,
        &["list-endpoint-groups", "--listener-arn", &listener],
    )
    .unwrap();
    let group = &groups["EndpointGroups"][0];
    let group_arn = group["EndpointGroupArn"].as_str().unwrap().to_owned();
    assert_eq!(group["EndpointGroupRegion"], "local");
    assert_eq!(
        group["EndpointDescriptions"][0]["EndpointId"],
        blue.address().as_str()
    );
    assert_eq!(group["EndpointDescriptions"][0]["Weight"], 255);

    // Blue takes every connection; then green, by the CLI, under load.
    let address = portico.static_addresses[0];
    let mut load = Load::start(
        &[address],
        3,
        Duration::from_millis(10),
        "GET /hello HTTP/1.1\r\nHost: edge\r\n",
    );
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let endpoints = [
        format!("EndpointId={},Weight=0", blue.address()),
        format!("EndpointId={},Weight=255", green.address()),
    ];
    let mut args = vec![
        "update-endpoint-group",
        "--endpoint-group-arn",
        group_arn.as_str(),
        "--endpoint-configurations",
    ];
    args.extend(endpoints.iter().map(String::as_str));
    let updated = ga(&portico, &args).unwrap();
    let answered = Instant::now();
    assert_eq!(
        updated["EndpointGroup"]["EndpointDescriptions"][1]["Weight"], 255,
        "{updated}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    load.stop();
    let outcomes = load.outcomes();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let before: Vec<String> = outcomes
        .iter()
        .filter(|o| o.ended < asked)
        .filter_map(|o| o.body.as_deref())
        .map(backend_of)
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|b| b == "blue"),
        "{before:?}"
    );
    // New connections after the answer (the kept-alive ones stay where they were, as on
    // Global Accelerator) go to green within a second.
    let after: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.keep_alive && o.started >= answered + Duration::from_secs(1))
        .filter_map(|o| o.body.as_deref())
        .map(backend_of)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|b| b == "green"),
        "{after:?}"
    );
    let first_green = outcomes
        .iter()
        .filter(|o| {
            !o.keep_alive
                && o.started >= asked
                && o.body.as_deref().is_some_and(|b| backend_of(b) == "green")
        })
        .map(|o| o.ended)
        .min()
        .unwrap();
    // Timed from the API's answer, as `live_changes.rs` times every change: from the ask, the
    // AWS CLI's own start (about a second of Python) would be counted too.
    let visible = first_green.saturating_duration_since(answered);
    eprintln!(
        "weights moved: seen {} ms after the answer ({} ms after the ask)",
        visible.as_millis(),
        (first_green - asked).as_millis()
    );
    assert!(visible < Duration::from_secs(1));

    // Global Accelerator's errors; nothing changes. A body that is not JSON, and an
    // operation portico does not have, as an SDK could send them:
    let admin = format!("http://{}/", portico.admin_api.unwrap());
    for (operation, body, expected) in [
        ("UpdateEndpointGroup", "{not json", "SerializationException"),
        (
            "UpdateEndpointGroup",
            r#"{"EndpointGroupArn": 7}"#,
            "InvalidArgumentException",
        ),
        ("DeleteAccelerator", "{}", "UnknownOperationException"),
    ] {
        let target = format!("X-Amz-Target: GlobalAccelerator_V20180706.{operation}");
        let reply = support::curl(
            None,
            &["-s", "-X", "POST", "-H", &target, "-d", body, &admin],
        );
        assert_eq!(reply.status, 400, "{operation} {body}: {reply:?}");
        assert!(
            reply.body.contains(expected),
            "{operation} {body}: {reply:?}"
        );
    }
    let error = ga(
        &portico,
        &[
            "describe-endpoint-group",
            "--endpoint-group-arn",
            &format!("{listener}/endpoint-group/000000000000"),
        ],
    )
    .unwrap_err();
    assert!(error.contains("EndpointGroupNotFoundException"), "{error}");
    let error = ga(
        &portico,
        &[
            "update-endpoint-group",
            "--endpoint-group-arn",
            &group_arn,
            "--traffic-dial-percentage",
            "150",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("InvalidArgumentException") && error.contains("traffic_dial_percentage"),
        "{error}"
    );
    let error = ga(
        &portico,
        &[
            "describe-accelerator",
            "--accelerator-arn",
            "arn:aws:globalaccelerator::000000000000:accelerator/nope",
        ],
    )
    .unwrap_err();
    assert!(error.contains("AcceleratorNotFoundException"), "{error}");

    // Kept: after a restart, green still has the weight.
    let portico = portico.restart();
    let group = ga(
        &portico,
        &[
            "describe-endpoint-group",
            "--endpoint-group-arn",
            &group_arn,
        ],
    )
    .unwrap();
    assert_eq!(
        group["EndpointGroup"]["EndpointDescriptions"][0]["Weight"], 0,
        "{group}"
    );
    assert_eq!(
        group["EndpointGroup"]["EndpointDescriptions"][1]["Weight"],
        255
    );
}
