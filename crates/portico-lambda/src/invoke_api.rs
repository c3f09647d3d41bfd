//! The Lambda Invoke API (2015-03-31), so that the AWS CLI and SDKs work against portico with
//! `--endpoint-url`.
//!
//! - `POST /2015-03-31/functions/{name}/invocations`: `X-Amz-Invocation-Type` `RequestResponse`
//!   (200, the function's reply; `X-Amz-Function-Error: Unhandled` when it failed), `Event`
//!   (202; queued, run in the background and retried twice on failure, payload up to 1 MB)
//!   and `DryRun` (204).
//!   `X-Amz-Log-Type: Tail` returns the end of the invocation's log in `X-Amz-Log-Result`;
//!   `X-Amz-Client-Context` (base64 JSON) reaches the function as its client context.
//! - `POST /2014-11-13/functions/{name}/invoke-async`: the deprecated InvokeAsync, `Event`
//!   with its 256 KB payload limit.
//! - `GET /2015-03-31/functions/`: ListFunctions; `GET /2015-03-31/functions/{name}`:
//!   GetFunction; `GET /2015-03-31/functions/{name}/configuration`: GetFunctionConfiguration
//!   (what the AWS CLI's `function-updated` waiter polls).
//! - `GET /2016-08-19/account-settings/`: GetAccountSettings, the runtime's limits.
//! - With a control plane ([`crate::admin::FunctionAdmin`]): `POST /2015-03-31/functions`
//!   (CreateFunction, 201), `PUT …/{name}/code` (UpdateFunctionCode), `PUT
//!   …/{name}/configuration` (UpdateFunctionConfiguration), `DELETE …/{name}`
//!   (DeleteFunction, 204), `PUT`/`DELETE /2017-10-31/functions/{name}/concurrency`
//!   (PutFunctionConcurrency, DeleteFunctionConcurrency) and `GET
//!   /2019-09-30/functions/{name}/concurrency` (GetFunctionConcurrency). One change at a
//!   time reads its body (up to [`MAX_CHANGE_BYTES`]: a 50 MB package, base64).
//! - `GET /portico/v1/functions/{name}/logs[?follow=true]`: portico's own route, the
//!   function's recent log as text, one `TIMESTAMP<TAB>LINE` per line; with `follow`, the
//!   response stays open and new lines are streamed (`portico logs`).
//!
//! Errors are AWS's: a JSON body `{"Type": "User", "message": …}` and the exception's name in
//! `x-amzn-ErrorType`, which the SDKs read. Request signatures (SigV4) are checked against the
//! API's access keys when it has any (403 `InvalidSignatureException`,
//! `UnrecognizedClientException`, `MissingAuthenticationTokenException` otherwise), and
//! ignored when it has none (on loopback only).
//! The function name may be a name, a full ARN or a partial ARN, each with a `:QUALIFIER`, or
//! the qualifier may come as `?Qualifier=`, as Lambda allows. A function here has one version,
//! `$LATEST`, and no alias: any other qualifier is `ResourceNotFoundException`.

use crate::admin::{FunctionAdmin, FunctionChange};
use crate::logs::{Followed, LogBook, LogLine};
use crate::runtime::{MAX_SYNC_PAYLOAD_BYTES, Runtime};
use crate::spec::{FunctionSpec, LATEST};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use portico_invoke::{Invocation, InvokeError, ThrottleReason};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/2015-03-31/functions";

/// GetAccountSettings' path.
const ACCOUNT_SETTINGS: &str = "/2016-08-19/account-settings";

/// Lambda's limit on a function's deployment package, zipped (50 MB, direct upload).
const CODE_SIZE_ZIPPED: u64 = 50 * 1024 * 1024;

/// Lambda's limit on a function's code and layers, unzipped (250 MB).
const CODE_SIZE_UNZIPPED: u64 = 250 * 1024 * 1024;

/// Lambda's default storage for all of an account's code (75 GB).
const TOTAL_CODE_SIZE: u64 = 75 * 1024 * 1024 * 1024;

/// The deprecated InvokeAsync operation's prefix.
const LEGACY_ASYNC_PREFIX: &str = "/2014-11-13/functions";

/// InvokeAsync's payload limit: 256 KB (Invoke's `Event` type takes up to 1 MB).
pub const MAX_LEGACY_ASYNC_PAYLOAD_BYTES: usize = 256 * 1024;

/// PutFunctionConcurrency's and DeleteFunctionConcurrency's prefix.
const CONCURRENCY_PREFIX: &str = "/2017-10-31/functions";

/// GetFunctionConcurrency's prefix.
const GET_CONCURRENCY_PREFIX: &str = "/2019-09-30/functions";

/// Largest body of a change (CreateFunction, UpdateFunctionCode): Lambda's 50 MB package,
/// base64-encoded, in its JSON request.
pub const MAX_CHANGE_BYTES: usize = 70 * 1024 * 1024;

/// portico's own routes, beside the AWS ones.
const PORTICO_PREFIX: &str = "/portico/v1/functions";

/// Largest `X-Amz-Client-Context`, base64-encoded: Lambda's 3,583 bytes.
const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

/// What every request needs.
struct Api {
    runtime: Arc<Runtime>,
    /// What carries out changes of functions, when there is a control plane.
    admin: Option<Arc<dyn FunctionAdmin>>,
    /// One change's body read at a time (they are large).
    changing: tokio::sync::Semaphore,
    /// The keys whose signatures are accepted; none: requests are not checked.
    keys: portico_sigv4::AccessKeys,
    /// How long a request's body may take.
    body_timeout: std::time::Duration,
    shutdown: CancellationToken,
}

/// A request's body: as it arrives, or read whole to check its signature.
type ReqBody = BoxBody<Bytes, std::io::Error>;

/// How long a connection may wait for a request head (and idle between requests), and a
/// request's body.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Head and idle.
    pub idle: std::time::Duration,
    /// Body.
    pub body: std::time::Duration,
}

/// Serves the Invoke API for `runtime` on `listener` until `shutdown` fires. With `keys`,
/// every request must be signed with one of them (AWS Signature Version 4). With `admin`,
/// the operations that change functions are served too.
pub async fn serve(
    listener: TcpListener,
    (runtime, admin): (Arc<Runtime>, Option<Arc<dyn FunctionAdmin>>),
    (limits, timeouts, keys): (portico_accept::Limits, Timeouts, portico_sigv4::AccessKeys),
    shutdown: CancellationToken,
) {
    let api = Arc::new(Api {
        runtime,
        admin,
        changing: tokio::sync::Semaphore::new(1),
        keys,
        body_timeout: timeouts.body,
        shutdown: shutdown.clone(),
    });
    let drained = portico_accept::serve_http1(
        ("invoke API", None),
        listener,
        &shutdown,
        (limits, timeouts.idle),
        api,
        |api, req| async move { route(&api, req).await },
    )
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(cut_short = drained.cut_short, "invoke API drain timeout");
    }
}

type ApiResponse = Response<BoxBody<Bytes, Infallible>>;

/// Whether `req` changes functions (its body may be large).
fn is_change(req: &Request<Incoming>) -> bool {
    let path = req.uri().path().trim_end_matches('/');
    let method = req.method();
    (path.starts_with(PREFIX) || path.starts_with(CONCURRENCY_PREFIX))
        && (method == Method::PUT
            || method == Method::DELETE
            || (method == Method::POST
                && (path == PREFIX || path.ends_with("/versions") || path.ends_with("/aliases"))))
}

async fn route(api: &Api, req: Request<Incoming>) -> ApiResponse {
    let change = is_change(&req);
    // One change at a time reads its (large) body; the others wait their turn.
    let _turn = match change {
        true => api.changing.acquire().await.ok(),
        false => None,
    };
    let limit = if change {
        MAX_CHANGE_BYTES
    } else {
        MAX_SYNC_PAYLOAD_BYTES
    };
    let req = match authenticate(&api.keys, req, limit, api.body_timeout).await {
        Ok(req) => req,
        Err(response) => return response,
    };
    if change {
        return change_function(api, req).await;
    }
    let rt = &*api.runtime;
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(PORTICO_PREFIX) {
        let follow = query_param(&req, "follow").is_some_and(|v| v == "true" || v == "1");
        return match (req.method(), rest.trim_start_matches('/').split_once('/')) {
            (&Method::GET, Some((name, "logs"))) => match rt.logs(&function_name(name).0) {
                Some(book) => logs(&book, follow, &api.shutdown),
                None => not_found(&function_name(name).0, rt),
            },
            _ => unknown_operation(),
        };
    }
    if let Some(rest) = path.strip_prefix(LEGACY_ASYNC_PREFIX) {
        return match (req.method(), rest.trim_matches('/').split_once('/')) {
            (&Method::POST, Some((name, "invoke-async"))) => {
                invoke_async(api, &function_name(name).0, req).await
            }
            _ => unknown_operation(),
        };
    }
    if let Some(rest) = path.strip_prefix(GET_CONCURRENCY_PREFIX) {
        return match (req.method(), rest.trim_matches('/').split_once('/')) {
            (&Method::GET, Some((name, "concurrency"))) => match find(rt, name, &req) {
                Ok(Found { spec, .. }) => ok_json(match spec.reserved_concurrency {
                    Some(n) => json!({ "ReservedConcurrentExecutions": n }),
                    None => json!({}),
                }),
                Err(response) => *response,
            },
            _ => unknown_operation(),
        };
    }
    if path.trim_end_matches('/') == ACCOUNT_SETTINGS {
        return match *req.method() {
            Method::GET => account_settings(rt),
            _ => unknown_operation(),
        };
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return unknown_operation();
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => list_functions(rt),
        (&Method::GET, [name]) => match find(rt, name, &req) {
            Ok(found) => get_function(&found.spec),
            Err(response) => *response,
        },
        (&Method::GET, [name, "configuration"]) => match find(rt, name, &req) {
            Ok(found) => ok_json(configuration(&found.spec)),
            Err(response) => *response,
        },
        (&Method::POST, [name, "invocations"]) => match find(rt, name, &req) {
            Ok(found) => invoke(api, &found, req).await,
            Err(response) => *response,
        },
        (&Method::GET, [name, "versions"]) => {
            let name = function_name(name).0;
            match rt.versions(&name) {
                versions if versions.is_empty() => not_found(&name, rt),
                versions => ok_json(json!({
                    "Versions": versions.iter().map(|v| configuration(v)).collect::<Vec<_>>(),
                })),
            }
        }
        (&Method::GET, [name, "aliases"]) => {
            let name = function_name(name).0;
            match rt.spec(&name) {
                Some(_) => ok_json(json!({
                    "Aliases": rt.aliases(&name).iter().map(alias_configuration).collect::<Vec<_>>(),
                })),
                None => not_found(&name, rt),
            }
        }
        (&Method::GET, [name, "aliases", alias]) => {
            let name = function_name(name).0;
            match rt.alias(&name, alias) {
                Some(found) => ok_json(alias_configuration(&found)),
                None if rt.spec(&name).is_none() => not_found(&name, rt),
                None => error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    &format!(
                        "Alias not found: {}",
                        rt.arn_for(&format!("{name}:{alias}"))
                    ),
                ),
            }
        }
        _ => unknown_operation(),
    }
}

/// The function name and qualifier in a path segment: a name,
/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME` or `ACCOUNT:function:NAME`, any of them with
/// a `:QUALIFIER`.
fn function_name(segment: &str) -> (String, Option<String>) {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    crate::spec::split_function_name(&decoded)
}

/// The function a request names in `segment` (and `?Qualifier=`), or Lambda's answer when
/// there is none: a qualifier other than `$LATEST` names a version or alias that does not
/// exist here.
fn find(rt: &Runtime, segment: &str, req: &Request<ReqBody>) -> Result<Found, Box<ApiResponse>> {
    let (name, derived) = function_name(segment);
    let Some(latest) = rt.spec(&name) else {
        return Err(Box::new(not_found(&name, rt)));
    };
    let given = query_param(req, "Qualifier");
    if let (Some(derived), Some(given)) = (&derived, &given) {
        if derived != given {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                "The derived qualifier from the function name does not match the specified qualifier.",
            )));
        }
    }
    match derived.or(given).filter(|q| q != LATEST) {
        Some(qualifier) => rt
            .spec(&format!("{name}:{qualifier}"))
            .map(|spec| Found {
                spec,
                invoked: format!("{name}:{qualifier}"),
            })
            .ok_or_else(|| {
                Box::new(error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    &format!("Function not found: {}:{qualifier}", latest.arn()),
                ))
            }),
        None => Ok(Found {
            spec: latest,
            invoked: name,
        }),
    }
}

/// The function a request names: the version it runs (an alias's own), and how it was
/// named (`NAME`, `NAME:VERSION`, `NAME:ALIAS`: an alias's invocations are weighted).
struct Found {
    spec: Arc<FunctionSpec>,
    invoked: String,
}

async fn invoke(api: &Api, found: &Found, req: Request<ReqBody>) -> ApiResponse {
    let rt = &*api.runtime;
    let invocation_type = header_str(&req, "x-amz-invocation-type")
        .unwrap_or("RequestResponse")
        .to_owned();
    let tail_logs = match header_str(&req, "x-amz-log-type").unwrap_or("None") {
        "None" => false,
        "Tail" => true,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("Invalid LogType {other:?}: expected None or Tail"),
            );
        }
    };
    let client_context = match header_str(&req, "x-amz-client-context").map(client_context) {
        None => None,
        Some(Ok(json)) => Some(json),
        Some(Err(message)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &message,
            );
        }
    };
    // The caller's trace, which the function's invocation continues.
    let trace_id = header_str(&req, "x-amzn-trace-id").map(str::to_owned);
    let payload = match read_payload(req, MAX_SYNC_PAYLOAD_BYTES, api.body_timeout).await {
        Ok(payload) => payload,
        Err(response) => return response,
    };
    let invocation = Invocation {
        function: found.invoked.clone(),
        payload,
        trace_id,
        // Lambda passes the client context and the log tail for synchronous invocations only.
        client_context: client_context.filter(|_| invocation_type == "RequestResponse"),
        tail_logs: tail_logs && invocation_type == "RequestResponse",
        ..Invocation::default()
    };
    match invocation_type.as_str() {
        "RequestResponse" => request_response(rt, invocation).await,
        "DryRun" => executed(StatusCode::NO_CONTENT, Bytes::new(), None),
        "Event" => event(rt, invocation),
        other => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("Invalid InvocationType {other:?}: expected RequestResponse, Event or DryRun"),
        ),
    }
}

/// The deprecated InvokeAsync: an `Event` invocation with a 256 KB payload limit, answered
/// `202 {"Status": 202}`.
async fn invoke_async(api: &Api, name: &str, req: Request<ReqBody>) -> ApiResponse {
    let rt = &*api.runtime;
    let Some(spec) = rt.spec(name) else {
        return not_found(name, rt);
    };
    let payload = match read_payload(req, MAX_LEGACY_ASYNC_PAYLOAD_BYTES, api.body_timeout).await {
        Ok(payload) => payload,
        Err(response) => return response,
    };
    let invocation = Invocation {
        function: spec.name.clone(),
        payload,
        ..Invocation::default()
    };
    match rt.invoke_event(invocation) {
        Ok(()) => Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(Bytes::from_static(br#"{"Status":202}"#)))
            .unwrap_or_else(|_| internal()),
        Err(error) => refused(rt, error),
    }
}

/// The request's whole body, read within `limit` bytes and `deadline`, or the error answer.
async fn read_body(
    body: ReqBody,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiResponse> {
    let read = tokio::time::timeout(deadline, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            &format!(
                "The request body did not arrive within {} s",
                deadline.as_secs()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(request_too_large(limit)),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not read the request body",
        )),
    }
}

/// With access keys, the request is read whole (within the largest payload an operation
/// takes) and its signature checked before it is routed; a refusal is Lambda's 403.
async fn authenticate(
    keys: &portico_sigv4::AccessKeys,
    req: Request<Incoming>,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Request<ReqBody>, ApiResponse> {
    if keys.is_empty() {
        return Ok(req.map(|body| body.map_err(io_error).boxed()));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(body.map_err(io_error).boxed(), limit, deadline).await?;
    let signable = portico_sigv4::Signable::of(&parts, &body);
    if let Err(refusal) = portico_sigv4::verify(signable, keys, "lambda", SystemTime::now()) {
        tracing::debug!(path = %parts.uri.path(), %refusal, "invoke API: request refused");
        return Err(error(
            StatusCode::FORBIDDEN,
            refusal.json_error_type(),
            &refusal.to_string(),
        ));
    }
    let body = Full::new(body).map_err(|never| match never {}).boxed();
    Ok(Request::from_parts(parts, body))
}

fn io_error(error: hyper::Error) -> std::io::Error {
    std::io::Error::other(error)
}

/// The request body as a JSON payload (`{}` when empty), or the error answer: over `limit`,
/// unreadable or not JSON.
async fn read_payload(
    req: Request<ReqBody>,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiResponse> {
    let payload = read_body(req.into_body(), limit, deadline).await?;
    let payload = if payload.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &format!("Could not parse request body into json: {e}"),
        ));
    }
    Ok(payload)
}

/// The JSON text of an `X-Amz-Client-Context` header (base64-encoded JSON), compacted so
/// that it fits in a header again.
fn client_context(encoded: &str) -> Result<String, String> {
    if encoded.len() > MAX_CLIENT_CONTEXT_BYTES {
        return Err(format!(
            "Client context must be at most {MAX_CLIENT_CONTEXT_BYTES} bytes, base64-encoded"
        ));
    }
    let invalid = || "Client context must be a valid Base64-encoded JSON object.".to_owned();
    let decoded = BASE64.decode(encoded.trim()).map_err(|_| invalid())?;
    match serde_json::from_slice::<Value>(&decoded) {
        Ok(value @ Value::Object(_)) => Ok(value.to_string()),
        _ => Err(invalid()),
    }
}

async fn request_response(rt: &Runtime, invocation: Invocation) -> ApiResponse {
    match rt.invoke_function(invocation).await {
        Ok(out) => {
            let mut response = executed(
                StatusCode::OK,
                out.payload,
                out.function_error.map(|_| "Unhandled"),
            );
            if let Some(tail) = out.log_tail {
                if let Ok(value) = http::HeaderValue::try_from(BASE64.encode(tail)) {
                    response.headers_mut().insert("X-Amz-Log-Result", value);
                }
            }
            response
        }
        Err(error) => refused(rt, error),
    }
}

fn event(rt: &Runtime, invocation: Invocation) -> ApiResponse {
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
        InvokeError::Throttled { reason, .. } => throttled(reason),
        InvokeError::RequestTooLarge { limit, .. } => request_too_large(limit),
        InvokeError::ShuttingDown => with_error_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            json!({ "Type": "Service", "message": "The function runtime is shutting down" }),
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
    builder.body(full(body)).unwrap_or_else(|_| internal())
}

/// A function's log as text; with `follow`, new lines are streamed until the client goes
/// away or the server shuts down.
fn logs(book: &Arc<LogBook>, follow: bool, shutdown: &CancellationToken) -> ApiResponse {
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    // Subscribed before the snapshot is taken, so that no line falls in between.
    let mut live = book.follow();
    let recent = book.recent();
    let mut text = String::new();
    for line in &recent {
        text.push_str(&log_text(line));
    }
    if !follow {
        return builder
            .body(full(Bytes::from(text)))
            .unwrap_or_else(|_| internal());
    }
    let mut seen = recent.last().map_or(0, |l| l.seq);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
    let shutdown = shutdown.clone();
    let function = book.function().to_owned();
    tokio::spawn(async move {
        if tx.send_data(Bytes::from(text)).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = live.recv() => next,
            };
            let chunk = match next {
                Some(Followed::Line(line)) if line.seq <= seen => continue,
                Some(Followed::Line(line)) => {
                    seen = line.seq;
                    log_text(&line)
                }
                Some(Followed::Skipped(missed)) => {
                    format!(
                        "[portico] {missed} lines of {function} were skipped: reading too slowly\n"
                    )
                }
                None => return,
            };
            if tx.send_data(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    builder.body(body.boxed()).unwrap_or_else(|_| internal())
}

/// `2026-11-25T10:00:00.123Z<TAB>text<LF>`.
fn log_text(line: &LogLine) -> String {
    format!("{}\t{}\n", crate::process::rfc3339(line.at), line.text)
}

fn full(body: Bytes) -> BoxBody<Bytes, Infallible> {
    Full::new(body).boxed()
}

/// A change of functions: read, handed to the control plane, answered with the function as
/// it then runs.
async fn change_function(api: &Api, req: Request<ReqBody>) -> ApiResponse {
    let Some(admin) = &api.admin else {
        return unknown_operation();
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let qualifier = query_param(&req, "Qualifier");
    let (concurrency, rest) = match path.strip_prefix(CONCURRENCY_PREFIX) {
        Some(rest) if !path.starts_with(PREFIX) => (true, rest),
        _ => (false, path.strip_prefix(PREFIX).unwrap_or_default()),
    };
    let segments: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .map(|s| function_name(s).0)
        .collect();
    let body = match read_payload(req, MAX_CHANGE_BYTES, api.body_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let owned = |s: &str| s.to_owned();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (change, answer) = match (concurrency, &method, segments.as_slice()) {
        (false, &Method::POST, [""]) => (FunctionChange::Create(request), Answer::Created),
        (false, &Method::PUT, [name, "code"]) => (
            FunctionChange::UpdateCode {
                name: (*name).to_owned(),
                request,
            },
            Answer::Configuration,
        ),
        (false, &Method::PUT, [name, "configuration"]) => (
            FunctionChange::UpdateConfiguration {
                name: (*name).to_owned(),
                request,
            },
            Answer::Configuration,
        ),
        (false, &Method::DELETE, [name]) => (
            FunctionChange::Delete {
                name: owned(name),
                qualifier: qualifier.filter(|q| q != LATEST),
            },
            Answer::Empty,
        ),
        (false, &Method::POST, [name, "versions"]) => (
            FunctionChange::PublishVersion {
                name: owned(name),
                request,
            },
            Answer::Created,
        ),
        (false, &Method::POST, [name, "aliases"]) => (
            FunctionChange::CreateAlias {
                name: owned(name),
                request,
            },
            Answer::Alias(StatusCode::CREATED),
        ),
        (false, &Method::PUT, [name, "aliases", alias]) => (
            FunctionChange::UpdateAlias {
                name: owned(name),
                alias: owned(alias),
                request,
            },
            Answer::Alias(StatusCode::OK),
        ),
        (false, &Method::DELETE, [name, "aliases", alias]) => (
            FunctionChange::DeleteAlias {
                name: owned(name),
                alias: owned(alias),
            },
            Answer::Empty,
        ),
        (true, &Method::PUT, [name, "concurrency"]) => (
            FunctionChange::PutConcurrency {
                name: (*name).to_owned(),
                request,
            },
            Answer::Concurrency,
        ),
        (true, &Method::DELETE, [name, "concurrency"]) => (
            FunctionChange::DeleteConcurrency {
                name: (*name).to_owned(),
            },
            Answer::Empty,
        ),
        _ => return unknown_operation(),
    };
    if let Err(refused) = revision_holds(&api.runtime, &change) {
        return *refused;
    }
    // The function (or version, or alias) changed: `NAME` or `NAME:QUALIFIER`.
    let name = match admin.change(change).await {
        Ok(name) => name,
        Err(refused) => {
            return error(
                StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST),
                &refused.error_type,
                &refused.message,
            );
        }
    };
    let spec = api.runtime.spec(&name);
    match (answer, spec) {
        (Answer::Alias(status), _) => {
            let alias = name
                .split_once(':')
                .and_then(|(function, alias)| api.runtime.alias(function, alias));
            match alias {
                Some(alias) => {
                    let mut response = ok_json(alias_configuration(&alias));
                    *response.status_mut() = status;
                    response
                }
                None => not_found(&name, &api.runtime),
            }
        }
        (Answer::Empty, _) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| internal()),
        (Answer::Concurrency, Some(spec)) => ok_json(json!({
            "ReservedConcurrentExecutions": spec.reserved_concurrency.unwrap_or(0),
        })),
        (Answer::Created, Some(spec)) => {
            let mut response = ok_json(configuration(&spec));
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        (Answer::Configuration, Some(spec)) => ok_json(configuration(&spec)),
        (_, None) => not_found(&name, &api.runtime),
    }
}

/// A change that names the `RevisionId` it was made against is refused when the function
/// (or alias) changed since, as Lambda refuses it.
fn revision_holds(rt: &Runtime, change: &FunctionChange) -> Result<(), Box<ApiResponse>> {
    let (current, given) = match change {
        FunctionChange::UpdateCode { name, request }
        | FunctionChange::UpdateConfiguration { name, request }
        | FunctionChange::PublishVersion { name, request } => (
            rt.spec(name).map(|spec| revision_id(&spec)),
            request.get("RevisionId"),
        ),
        FunctionChange::UpdateAlias {
            name,
            alias,
            request,
        } => (
            rt.alias(name, alias).and_then(|a| {
                alias_configuration(&a)["RevisionId"]
                    .as_str()
                    .map(str::to_owned)
            }),
            request.get("RevisionId"),
        ),
        _ => return Ok(()),
    };
    match (current, given.and_then(Value::as_str)) {
        (Some(current), Some(given)) if current != given => Err(Box::new(error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        ))),
        _ => Ok(()),
    }
}

/// How a change is answered.
enum Answer {
    /// 201 and the new function's configuration.
    Created,
    /// 200 and the function's configuration.
    Configuration,
    /// 200 and its reserved concurrency.
    Concurrency,
    /// This status and the alias's configuration.
    Alias(StatusCode),
    /// 204.
    Empty,
}

fn list_functions(rt: &Runtime) -> ApiResponse {
    let mut functions = rt.functions();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let configs: Vec<Value> = functions.iter().map(|f| configuration(f)).collect();
    ok_json(json!({ "Functions": configs }))
}

fn get_function(spec: &FunctionSpec) -> ApiResponse {
    let mut doc = json!({
        "Configuration": configuration(spec),
        "Code": { "RepositoryType": "S3", "Location": "" },
    });
    if let Some(n) = spec.reserved_concurrency {
        doc["Concurrency"] = json!({ "ReservedConcurrentExecutions": n });
    }
    ok_json(doc)
}

/// Lambda's `FunctionConfiguration` for `spec`. Fields Lambda leaves out when unset (layers,
/// VPC, dead-letter queue, KMS key, file systems, image config) are left out.
fn configuration(spec: &FunctionSpec) -> Value {
    let mut config = json!({
        "FunctionName": spec.name,
        "FunctionArn": spec.arn(),
        "Runtime": spec.runtime,
        "Role": format!(
            "arn:aws:iam::{}:role/service-role/{}-role",
            crate::spec::ACCOUNT_ID,
            spec.name
        ),
        "Handler": spec.handler,
        "CodeSize": spec.code.size,
        "Description": "",
        "Timeout": spec.timeout.as_secs(),
        "MemorySize": spec.memory_size_mb,
        "LastModified": last_modified(spec.last_modified),
        "CodeSha256": spec.code.sha256,
        "Version": spec.version,
        "TracingConfig": { "Mode": "PassThrough" },
        "RevisionId": revision_id(spec),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [std::env::consts::ARCH.replace("aarch64", "arm64")],
        "EphemeralStorage": { "Size": spec.ephemeral_storage_mb },
        "SnapStart": { "ApplyOn": "None", "OptimizationStatus": "Off" },
        "LoggingConfig": {
            "LogFormat": if spec.logging.json { "JSON" } else { "Text" },
            "LogGroup": format!("/aws/lambda/{}", spec.name),
        },
    });
    if spec.logging.json {
        // Lambda shows the levels of JSON logs only.
        let level = |l: Option<crate::spec::Level>| l.map(|l| format!("{l:?}").to_uppercase());
        config["LoggingConfig"]["ApplicationLogLevel"] =
            json!(level(spec.logging.application_level).unwrap_or_else(|| "INFO".into()));
        config["LoggingConfig"]["SystemLogLevel"] =
            json!(level(spec.logging.system_level).unwrap_or_else(|| "INFO".into()));
    }
    // Lambda leaves `Environment` out when a function has no variables.
    if !spec.environment.is_empty() {
        config["Environment"] = json!({ "Variables": spec.environment });
    }
    config
}

/// Lambda's `AliasConfiguration`.
fn alias_configuration(alias: &crate::spec::AliasSpec) -> Value {
    let mut config = json!({
        "AliasArn": alias.arn(),
        "Name": alias.name,
        "FunctionVersion": alias.version,
        "Description": alias.description,
        "RevisionId": uuid_of(&[
            alias.function.as_bytes(),
            alias.name.as_bytes(),
            alias.version.as_bytes(),
            format!("{:?}", alias.additional).as_bytes(),
            alias.description.as_bytes(),
        ]),
    });
    if let Some((version, weight)) = &alias.additional {
        config["RoutingConfig"] = json!({ "AdditionalVersionWeights": { version: weight } });
    }
    config
}

/// A UUID-shaped digest of `parts`: a revision id that changes when they do.
fn uuid_of(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Lambda's `LastModified`: `2026-12-03T10:00:00.000+0000`.
fn last_modified(time: std::time::SystemTime) -> String {
    let text = crate::process::rfc3339(time);
    format!("{}+0000", text.trim_end_matches('Z'))
}

/// A revision id that changes when the function does: a UUID-shaped digest of its code and
/// configuration.
fn revision_id(spec: &FunctionSpec) -> String {
    let numbers = [
        spec.memory_size_mb.to_string(),
        spec.timeout.as_secs().to_string(),
    ];
    let variables: Vec<String> = spec
        .environment
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut parts: Vec<&[u8]> = vec![
        spec.code.sha256.as_bytes(),
        spec.runtime.as_bytes(),
        spec.handler.as_bytes(),
        spec.version.as_bytes(),
    ];
    parts.extend(numbers.iter().chain(&variables).map(|p| p.as_bytes()));
    uuid_of(&parts)
}

/// GetAccountSettings: the runtime's concurrency and Lambda's code-size limits.
fn account_settings(rt: &Runtime) -> ApiResponse {
    let total = rt.max_concurrency();
    let code: u64 = rt.functions().iter().map(|f| f.code.size).sum();
    ok_json(json!({
        "AccountLimit": {
            "TotalCodeSize": TOTAL_CODE_SIZE,
            "CodeSizeUnzipped": CODE_SIZE_UNZIPPED,
            "CodeSizeZipped": CODE_SIZE_ZIPPED,
            "ConcurrentExecutions": total,
            "UnreservedConcurrentExecutions": rt.unreserved_concurrency(),
        },
        "AccountUsage": {
            "TotalCodeSize": code,
            "FunctionCount": rt.functions().len(),
        },
    }))
}

fn query_param(req: &Request<ReqBody>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn header_str<'a>(req: &'a Request<ReqBody>, name: &str) -> Option<&'a str> {
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

fn throttled(reason: ThrottleReason) -> ApiResponse {
    let body = json!({
        "Reason": reason.aws_reason(),
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
        .body(full(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| internal())
}

fn ok_json(body: Value) -> ApiResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| internal())
}

fn internal() -> ApiResponse {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::function_name;

    fn named(name: &str, qualifier: Option<&str>) -> (String, Option<String>) {
        (name.to_owned(), qualifier.map(str::to_owned))
    }

    #[test]
    fn names_arns_and_partial_arns_with_their_qualifiers() {
        assert_eq!(function_name("hello"), named("hello", None));
        assert_eq!(
            function_name("hello:$LATEST"),
            named("hello", Some("$LATEST"))
        );
        assert_eq!(function_name("hello:prod"), named("hello", Some("prod")));
        assert_eq!(
            function_name("arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello"),
            named("hello", None)
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:000000000000:function:hello:prod"),
            named("hello", Some("prod"))
        );
        assert_eq!(
            function_name("000000000000:function:hello"),
            named("hello", None)
        );
        assert_eq!(
            function_name("000000000000:function:hello:7"),
            named("hello", Some("7"))
        );
        assert_eq!(function_name(""), named("", None));
    }
}
