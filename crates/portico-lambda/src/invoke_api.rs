//! The Lambda Invoke API (2015-03-31), so that the AWS CLI and SDKs work against portico with
//! `--endpoint-url`.
//!
//! - `POST /2015-03-31/functions/{name}/invocations`: `X-Amz-Invocation-Type` `RequestResponse`
//!   (200, the function's reply; `X-Amz-Function-Error: Unhandled` when it failed), `Event`
//!   (202; queued, run in the background and retried twice on failure, payload up to 1 MB)
//!   and `DryRun` (204).
//! - `GET /2015-03-31/functions/`: ListFunctions; `GET /2015-03-31/functions/{name}`:
//!   GetFunction.
//!
//! Errors are AWS's: a JSON body `{"Type": "User", "message": …}` and the exception's name in
//! `x-amzn-ErrorType`, which the SDKs read. Request signatures (SigV4) are accepted unchecked.
//! The function name may be a name, a full ARN or a partial ARN, as Lambda allows.

use crate::runtime::{MAX_SYNC_PAYLOAD_BYTES, Runtime};
use crate::spec::FunctionSpec;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use portico_invoke::{Invocation, InvokeError};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/2015-03-31/functions";

/// Serves the Invoke API for `runtime` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    limits: portico_accept::Limits,
    shutdown: CancellationToken,
) {
    let drained = portico_accept::serve(listener, &shutdown, limits, |stream, _| {
        let _ = stream.set_nodelay(true);
        let runtime = runtime.clone();
        let shutdown = shutdown.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(route(&runtime, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let served = portico_accept::serve_http1(&builder, stream, service, &shutdown).await;
            if let Err(error) = served {
                tracing::debug!(%error, "invoke API connection ended");
            }
        }
    })
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(cut_short = drained.cut_short, "invoke API drain timeout");
    }
}

type ApiResponse = Response<Full<Bytes>>;

async fn route(rt: &Runtime, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return unknown_operation();
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => list_functions(rt),
        (&Method::GET, [name]) => get_function(rt, &function_name(name)),
        (&Method::POST, [name, "invocations"]) => {
            let name = function_name(name);
            invoke(rt, &name, req).await
        }
        _ => unknown_operation(),
    }
}

/// The function name in a path segment: a name, `arn:aws:lambda:REGION:ACCOUNT:function:NAME`
/// or `ACCOUNT:function:NAME`, any of them with a `:QUALIFIER`.
fn function_name(segment: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let parts: Vec<&str> = decoded.split(':').collect();
    match parts.iter().position(|p| *p == "function") {
        Some(i) => parts.get(i + 1).copied().unwrap_or_default().to_owned(),
        None => parts.first().copied().unwrap_or_default().to_owned(),
    }
}

async fn invoke(rt: &Runtime, name: &str, req: Request<Incoming>) -> ApiResponse {
    let Some(spec) = rt.spec(name) else {
        return not_found(name, rt);
    };
    if let Some(qualifier) = query_param(&req, "Qualifier").filter(|q| q != "$LATEST") {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}:{qualifier}", spec.arn()),
        );
    }
    let invocation_type = header_str(&req, "x-amz-invocation-type")
        .unwrap_or("RequestResponse")
        .to_owned();
    let payload = match Limited::new(req.into_body(), MAX_SYNC_PAYLOAD_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return request_too_large(MAX_SYNC_PAYLOAD_BYTES);
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Could not read the request body",
            );
        }
    };
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &format!("Could not parse request body into json: {e}"),
        );
    }
    match invocation_type.as_str() {
        "RequestResponse" => request_response(rt, spec, payload).await,
        "DryRun" => executed(StatusCode::NO_CONTENT, Bytes::new(), None),
        "Event" => event(rt, spec, payload),
        other => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("Invalid InvocationType {other:?}: expected RequestResponse, Event or DryRun"),
        ),
    }
}

async fn request_response(rt: &Runtime, spec: &FunctionSpec, payload: Bytes) -> ApiResponse {
    let invocation = Invocation {
        function: spec.name.clone(),
        payload,
        trace_id: None,
    };
    match rt.invoke_function(invocation).await {
        Ok(out) => executed(
            StatusCode::OK,
            out.payload,
            out.function_error.map(|_| "Unhandled"),
        ),
        Err(error) => refused(rt, error),
    }
}

fn event(rt: &Runtime, spec: &FunctionSpec, payload: Bytes) -> ApiResponse {
    let invocation = Invocation {
        function: spec.name.clone(),
        payload,
        trace_id: None,
    };
    match rt.invoke_event(invocation) {
        Ok(()) => executed(StatusCode::ACCEPTED, Bytes::new(), None),
        Err(error) => refused(rt, error),
    }
}

/// The answer to an invocation that did not run: AWS's exception for each refusal. A
/// function that could not start is a failed invocation, as Lambda reports it.
fn refused(rt: &Runtime, refusal: InvokeError) -> ApiResponse {
    match refusal {
        InvokeError::InitFailed {
            error_type,
            message,
            ..
        } => {
            let doc = json!({ "errorType": error_type, "errorMessage": message });
            executed(
                StatusCode::OK,
                Bytes::from(doc.to_string()),
                Some("Unhandled"),
            )
        }
        InvokeError::NotFound(name) => not_found(&name, rt),
        InvokeError::Throttled { .. } => throttled(),
        InvokeError::RequestTooLarge { limit, .. } => request_too_large(limit),
        InvokeError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            "The function runtime is shutting down",
        ),
    }
}

fn executed(status: StatusCode, body: Bytes, function_error: Option<&str>) -> ApiResponse {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Amz-Executed-Version", "$LATEST")
        .header("x-amzn-RequestId", uuid::Uuid::new_v4().to_string());
    if let Some(kind) = function_error {
        builder = builder.header("X-Amz-Function-Error", kind);
    }
    builder.body(Full::new(body)).unwrap_or_else(|_| internal())
}

fn list_functions(rt: &Runtime) -> ApiResponse {
    let mut functions: Vec<&FunctionSpec> = rt.functions().collect();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let configs: Vec<Value> = functions.into_iter().map(configuration).collect();
    ok_json(json!({ "Functions": configs }))
}

fn get_function(rt: &Runtime, name: &str) -> ApiResponse {
    match rt.spec(name) {
        Some(spec) => ok_json(json!({
            "Configuration": configuration(spec),
            "Code": { "RepositoryType": "S3", "Location": "" },
        })),
        None => not_found(name, rt),
    }
}

/// Lambda's `FunctionConfiguration` for `spec`.
fn configuration(spec: &FunctionSpec) -> Value {
    json!({
        "FunctionName": spec.name,
        "FunctionArn": spec.arn(),
        "Runtime": "provided",
        "Handler": spec.handler,
        "MemorySize": spec.memory_size_mb,
        "Timeout": spec.timeout.as_secs(),
        "Version": "$LATEST",
        "Environment": { "Variables": spec.environment },
        "PackageType": "Zip",
        "Architectures": [std::env::consts::ARCH.replace("aarch64", "arm64")],
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "Description": "",
        "CodeSize": 0,
    })
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn not_found(name: &str, rt: &Runtime) -> ApiResponse {
    let arn = rt.arn_for(name);
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("Function not found: {arn}"),
    )
}

fn throttled() -> ApiResponse {
    let body = json!({
        "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
        "Type": "User",
        "message": "Rate Exceeded.",
    });
    with_error_type(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequestsException",
        body,
    )
}

fn request_too_large(limit: usize) -> ApiResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestTooLargeException",
        &format!("Request must be smaller than {limit} bytes for the InvokeFunction operation"),
    )
}

fn unknown_operation() -> ApiResponse {
    error(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "Unknown operation",
    )
}

fn error(status: StatusCode, error_type: &str, message: &str) -> ApiResponse {
    with_error_type(
        status,
        error_type,
        json!({ "Type": "User", "message": message }),
    )
}

fn with_error_type(status: StatusCode, error_type: &str, body: Value) -> ApiResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-amzn-ErrorType", error_type)
        .header("x-amzn-RequestId", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| internal())
}

fn ok_json(body: Value) -> ApiResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| internal())
}

fn internal() -> ApiResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::function_name;

    #[test]
    fn names_arns_and_partial_arns() {
        assert_eq!(function_name("hello"), "hello");
        assert_eq!(function_name("hello:$LATEST"), "hello");
        assert_eq!(
            function_name("arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello"),
            "hello"
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:000000000000:function:hello:prod"),
            "hello"
        );
        assert_eq!(function_name("000000000000:function:hello"), "hello");
        assert_eq!(function_name(""), "");
    }
}
