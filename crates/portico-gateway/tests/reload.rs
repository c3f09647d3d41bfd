//! A gateway that follows another (a configuration reloaded) keeps what clients spent: the
//! buckets of rate limits and the quota counts of usage plans that did not change, and its
//! metrics; a changed limit or quota starts afresh.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use http::HeaderMap;
use portico_gateway::{Gateway, Grant, Policy};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn config(requests: u32, quota: u64) -> portico_config::Config {
    portico_config::parse(&format!(
        r#"
[api_keys]
keys = [{{ name = "alice", value = "alice-key-0123456789", usage_plan = "basic" }}]

[usage_plans.basic]
quota = {{ limit = {quota}, period = "DAY" }}

[load_balancers.web]
[[load_balancers.web.listeners]]
port = 0
default_action = {{ type = "fixed-response", status_code = 200 }}
gateway = {{ api_key_required = true, rate_limit = {{ requests = {requests}, period_seconds = 60, burst = {requests} }} }}
"#
        ),
        "reload.toml",
    )
    .unwrap()
}

async fn gateway(
    config: &portico_config::Config,
    previous: Option<&Gateway>,
) -> (Arc<Gateway>, Arc<Policy>) {
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let gateway = Gateway::start(config, Path::new("."), (&tasks, &stop), previous)
        .await
        .unwrap();
    let spec = &config.load_balancers["web"].listeners[0].gateway;
    let policy = gateway
        .policy(
            spec,
            "load_balancers.web.listeners[0].gateway",
            Path::new("."),
        )
        .unwrap()
        .unwrap();
    (gateway, policy)
}

/// How many requests of alice's `policy` admits, of `tries`.
async fn admitted(policy: &Policy, tries: usize) -> usize {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", "alice-key-0123456789".parse().unwrap());
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mut n = 0;
    for _ in 0..tries {
        let mut grant = Grant::default();
        if policy
            .admit(&headers, None, client, &mut grant)
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn what_clients_spent_outlives_a_reload_of_the_same_limits() {
    let (first, policy) = gateway(&config(5, 8), None).await;
    assert_eq!(admitted(&policy, 3).await, 3);

    // Reloaded unchanged: the bucket has 2 left, the quota 5.
    let (second, policy) = gateway(&config(5, 8), Some(&first)).await;
    assert_eq!(admitted(&policy, 10).await, 2);
    assert!(second.encode_metrics().contains("admitted"), "metrics kept");

    // The rate limit changed: a new bucket; the quota (8 a day) is what is left of it.
    let (third, policy) = gateway(&config(100, 8), Some(&second)).await;
    assert_eq!(admitted(&policy, 10).await, 3, "8 a day, 5 spent");

    // The quota changed: counted afresh.
    let (_, policy) = gateway(&config(100, 20), Some(&third)).await;
    assert_eq!(admitted(&policy, 30).await, 20);
}
