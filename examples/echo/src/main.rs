//! A function for direct invocations (the Invoke API, `aws lambda invoke`), written with the
//! official `lambda_runtime` crate: it echoes its event with what Lambda told it about the
//! invocation. An event `{"fail": "message"}` makes it return an error instead. It writes one
//! log line per invocation.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    println!("echo: handling {}", context.request_id);
    if let Some(message) = payload.get("fail").and_then(Value::as_str) {
        return Err(message.to_owned().into());
    }
    Ok(json!({
        "echo": payload,
        "request_id": context.request_id,
        "function_arn": context.invoked_function_arn,
        "function_name": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        "client_context": context.client_context.map(|c| c.custom),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handler)).await
}
