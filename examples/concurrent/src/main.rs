//! A function for Lambda Managed Instances, written with the official `lambda_runtime`
//! crate's `run_concurrent`: it runs `AWS_LAMBDA_MAX_CONCURRENCY` workers, each asking the
//! Runtime API for its own next invocation, so one execution environment serves that many
//! at once (one at a time when the variable is unset). An event `{"sleep_ms": N}` holds its
//! invocation N ms; the reply names the environment (a token drawn at start) and when the
//! invocation ran.

use lambda_runtime::{Error, LambdaEvent, run_concurrent, service_fn};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which environment answered: its start time, in ns.
fn environment() -> u128 {
    static STARTED: OnceLock<u128> = OnceLock::new();
    *STARTED.get_or_init(now_ns)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let started = now_ns();
    let sleep = event
        .payload
        .get("sleep_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(sleep)).await;
    Ok(json!({
        "environment": environment().to_string(),
        "request_id": event.context.request_id,
        "started_ns": started.to_string(),
        "ended_ns": now_ns().to_string(),
        "workers": std::env::var("AWS_LAMBDA_MAX_CONCURRENCY").ok(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    environment();
    run_concurrent(service_fn(handler)).await
}
