//! The demo function: a Lambda function for ALB events, written with the official
//! `lambda_http` crate and nothing portico-specific.
//!
//! It answers with what it was asked (method, path, query, the caller's address from
//! `X-Forwarded-For`, the trace header) so that a reply proves the whole chain: static IP →
//! edge → load balancer → function. `GET /fail` makes it return an error, to show the 502.

use lambda_http::{Body, Error, Request, RequestExt, Response, run, service_fn};
use serde_json::json;
use std::collections::BTreeMap;

async fn handler(event: Request) -> Result<Response<Body>, Error> {
    if event.uri().path() == "/fail" {
        return Err("the demo function was asked to fail".into());
    }
    let header = |name: &str| {
        event
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in event.query_string_parameters().iter() {
        query
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    let client = header("x-forwarded-for");
    let client = client
        .rsplit(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let reply = json!({
        "message": "Hello from portico",
        "function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
        "method": event.method().as_str(),
        "path": event.uri().path(),
        "query": query,
        "client": client,
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_forwarded_port": header("x-forwarded-port"),
        "trace_id": header("x-amzn-trace-id"),
        "body": String::from_utf8_lossy(event.body().as_ref()),
        "jwt_claims": jwt_claims(&header("x-portico-jwt-claims")),
    });
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-demo-function", "hello")
        .body(Body::from(reply.to_string()))?;
    Ok(response)
}

/// The claims of the token portico's JWT authorizer verified, from the header it sets
/// (base64url JSON); `null` when the route has no authorizer.
fn jwt_claims(header: &str) -> serde_json::Value {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handler)).await
}
