//! The Lambda Runtime API (2018-06-01) served to one execution environment.
//!
//! Routes, as Lambda documents them:
//! - `GET  /2018-06-01/runtime/invocation/next` → the event, with the `Lambda-Runtime-*` headers;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` → 202;
//! - `POST /2018-06-01/runtime/invocation/{id}/error` → 202;
//! - `POST /2018-06-01/runtime/init/error` → 202.
//!
//! Errors are JSON `{"errorMessage", "errorType"}` documents: 400 for an unknown request id,
//! 403 (`InvalidStateTransition`) for an init error once init is over, 413 for a response
//! over the payload limit, 404/405 for anything else.

use crate::exchange::{Completion, Exchange, Outcome, State};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest response or error document a function may post: Lambda's 6 MB synchronous limit,
/// with the 100 bytes of slack its Runtime API allows (6 291 556, the Runtime Interface
/// Emulator's `MaxPayloadSize`).
pub(crate) const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024 + 100;

/// How far an oversized body is read, to count it for the error message, before the count
/// stops.
const COUNT_OVERSIZED_UP_TO: u64 = 4 * MAX_RESPONSE_BYTES as u64;

const PREFIX: &str = "/2018-06-01/runtime/";

/// Most Runtime API connections one environment may hold open at once.
const MAX_API_CONNECTIONS: usize = 16;

/// What the API needs besides the exchange.
pub(crate) struct ApiContext {
    pub(crate) exchange: Arc<Exchange>,
    /// The environment's extensions (the Extensions API).
    pub(crate) extensions: Arc<crate::extensions::Extensions>,
    /// What an extension's registration is told of the function.
    pub(crate) function: crate::extensions::FunctionInfo,
    /// The environment's telemetry (the Telemetry and Logs APIs).
    pub(crate) telemetry: Arc<crate::telemetry::Telemetry>,
}

/// The processes of one environment, the only ones its Runtime API serves.
pub(crate) struct Members {
    /// The environment's processes as started: its extensions and its runtime.
    pub(crate) pids: Arc<std::sync::Mutex<Vec<u32>>>,
    /// Its memory limit, whose cgroup (when it has one) holds the whole tree.
    pub(crate) memory: Option<Arc<crate::memory::MemoryLimit>>,
    /// Its sandbox's PID namespace, when it has one: every process in it is the
    /// environment's (what tells a process started a moment ago, before its pid is
    /// recorded, on a machine without cgroups).
    pub(crate) pid_namespace: Option<u64>,
}

impl Members {
    /// Whether the connection from `peer` to `local` is one of theirs.
    fn own(&self, peer: std::net::SocketAddr, local: std::net::SocketAddr) -> bool {
        let in_cgroup = self
            .memory
            .as_ref()
            .map(|m| m.members())
            .unwrap_or_default();
        if crate::peer::held_by(peer, local, &in_cgroup) {
            return true;
        }
        let started = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if started
            .into_iter()
            .any(|pid| crate::peer::held_by(peer, local, &crate::peer::process_tree(pid)))
        {
            return true;
        }
        self.pid_namespace.is_some_and(|namespace| {
            crate::peer::held_by(peer, local, &crate::peer::in_pid_namespace(namespace))
        })
    }
}

/// Serves the Runtime API on `listener` until `cancel` fires, to `members` only. Connection
/// tasks end with it.
pub(crate) async fn serve(
    listener: TcpListener,
    (ctx, members): (Arc<ApiContext>, Option<Members>),
    cancel: CancellationToken,
) {
    // A runtime needs a connection or two; the function is being stopped when `cancel`
    // fires, so its API calls have nothing to drain into.
    let limits = portico_accept::Limits {
        max_connections: MAX_API_CONNECTIONS,
        drain: Duration::ZERO,
    };
    let admit = members.map(|members| {
        let members = Arc::new(members);
        let admit: portico_accept::Admit = Arc::new(move |peer, local| members.own(peer, local));
        admit
    });
    portico_accept::serve_http1(
        ("runtime API", admit),
        listener,
        &cancel,
        (limits, portico_accept::API_HEAD_TIMEOUT),
        ctx,
        |ctx, req| async move { route(&ctx, req).await },
    )
    .await;
}

pub(crate) type ApiResponse = Response<Full<Bytes>>;

async fn route(ctx: &ApiContext, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(crate::extension_api::PREFIX) {
        return crate::extension_api::route(ctx, rest, req).await;
    }
    if path == crate::extension_api::TELEMETRY {
        return crate::extension_api::subscribe(ctx, crate::telemetry::Api::Telemetry, req).await;
    }
    if path == crate::extension_api::LOGS {
        return crate::extension_api::subscribe(ctx, crate::telemetry::Api::Logs, req).await;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(StatusCode::NOT_FOUND, "UnknownRoute", "no such route");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["invocation", "next"]) => next(ctx).await,
        (&Method::POST, ["invocation", id, "response"]) => {
            let id = (*id).to_owned();
            response(ctx, &id, req).await
        }
        (&Method::POST, ["invocation", id, "error"]) => {
            let id = (*id).to_owned();
            invocation_error(ctx, &id, req).await
        }
        (&Method::POST, ["init", "error"]) => init_error(ctx, req).await,
        (_, ["invocation", "next"])
        | (_, ["invocation", _, "response" | "error"])
        | (_, ["init", "error"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed on this route",
        ),
        _ => error(StatusCode::NOT_FOUND, "UnknownRoute", "no such route"),
    }
}

async fn next(ctx: &ApiContext) -> ApiResponse {
    let Some(pending) = ctx.exchange.next().await else {
        // The environment is being torn down. Lambda never answers `/next` with an error
        // (official runtimes panic on one); the call stays open until the process is ended.
        return std::future::pending().await;
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &pending.request_id)
        .header("Lambda-Runtime-Deadline-Ms", pending.deadline_ms)
        .header("Lambda-Runtime-Invoked-Function-Arn", &pending.invoked_arn);
    let optional = [
        ("Lambda-Runtime-Trace-Id", &pending.trace_id),
        ("Lambda-Runtime-Client-Context", &pending.client_context),
        ("Lambda-Runtime-Cognito-Identity", &pending.cognito_identity),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            builder = builder.header(name, value);
        }
    }
    ctx.exchange.start(pending.request_id, pending.reply);
    builder
        .body(Full::new(pending.payload))
        .unwrap_or_else(|_| internal())
}

async fn response(ctx: &ApiContext, id: &str, req: Request<Incoming>) -> ApiResponse {
    if !ctx.exchange.is_in_flight(id) {
        return invalid_request_id();
    }
    match read_body(req).await {
        Ok(body) => complete(ctx, id, Outcome::Response(body)),
        Err(BodyError::TooLarge { size }) => {
            // Lambda's words: the invocation's error names the size, the function's answer
            // does not.
            let message = format!(
                "Response payload size ({size} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
            );
            let body = error_document("Function.ResponseSizeTooLarge", &message);
            ctx.exchange.complete(
                id,
                Outcome::Error {
                    error_type: "Function.ResponseSizeTooLarge".into(),
                    body,
                },
            );
            too_large()
        }
        Err(BodyError::Broken) => bad_body(),
    }
}

async fn invocation_error(ctx: &ApiContext, id: &str, req: Request<Incoming>) -> ApiResponse {
    if !ctx.exchange.is_in_flight(id) {
        return invalid_request_id();
    }
    let header_type = error_type_header(&req);
    match read_body(req).await {
        Ok(body) => {
            let (error_type, body) = function_error(header_type, body);
            complete(ctx, id, Outcome::Error { error_type, body })
        }
        Err(BodyError::TooLarge { .. }) => too_large(),
        Err(BodyError::Broken) => bad_body(),
    }
}

async fn init_error(ctx: &ApiContext, req: Request<Incoming>) -> ApiResponse {
    if ctx.exchange.state() != State::Starting {
        // Lambda's answer to an init error after init: the state machine refuses it.
        return error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "State transition from Ready to InitError failed for runtime: init is over",
        );
    }
    let header_type = error_type_header(&req);
    let body = read_body(req).await.unwrap_or_default();
    let (error_type, body) = function_error(header_type, body);
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("errorMessage")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    ctx.exchange.set_state(State::InitFailed {
        error_type,
        message,
    });
    accepted()
}

fn complete(ctx: &ApiContext, id: &str, outcome: Outcome) -> ApiResponse {
    match ctx.exchange.complete(id, outcome) {
        Completion::Accepted => accepted(),
        Completion::UnknownRequest => invalid_request_id(),
    }
}

fn error_type_header(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error type and document of a failed invocation: the header wins, then the document's
/// own `errorType`; a body that is not a JSON object is wrapped into one.
fn function_error(header_type: Option<String>, body: Bytes) -> (String, Bytes) {
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let body_type = parsed
        .as_ref()
        .and_then(|v| v.get("errorType"))
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let error_type = header_type
        .or(body_type)
        .unwrap_or_else(|| "Runtime.Unknown".to_owned());
    match parsed {
        Some(serde_json::Value::Object(_)) => (error_type, body),
        _ => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let doc = error_document(&error_type, &text);
            (error_type, doc)
        }
    }
}

/// A Lambda error document, `{"errorMessage": …, "errorType": …}`.
pub(crate) fn error_document(error_type: &str, message: &str) -> Bytes {
    let doc = serde_json::json!({ "errorMessage": message, "errorType": error_type });
    Bytes::from(doc.to_string())
}

pub(crate) enum BodyError {
    /// Over [`MAX_RESPONSE_BYTES`]: `size` bytes (its `Content-Length`, else as many as were
    /// counted, up to [`COUNT_OVERSIZED_UP_TO`]).
    TooLarge {
        size: u64,
    },
    Broken,
}

pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // An oversized body is still read (and dropped), so that the function, still writing
    // it, gets the answer instead of a broken connection.
    let mut body = req.into_body();
    let mut kept = bytes::BytesMut::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size <= MAX_RESPONSE_BYTES as u64 {
            kept.extend_from_slice(&data);
        } else {
            // Over the limit: nothing more is kept, only counted.
            kept = bytes::BytesMut::new();
            if size >= COUNT_OVERSIZED_UP_TO {
                break;
            }
        }
    }
    if size > MAX_RESPONSE_BYTES as u64 {
        return Err(BodyError::TooLarge {
            size: declared.unwrap_or(size).max(size),
        });
    }
    Ok(kept.freeze())
}

/// The Runtime API's answer to a body over the limit.
fn too_large() -> ApiResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!("Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."),
    )
}

pub(crate) fn accepted() -> ApiResponse {
    json(
        StatusCode::ACCEPTED,
        Bytes::from_static(br#"{"status":"OK"}"#),
    )
}

fn invalid_request_id() -> ApiResponse {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "Invalid request ID: no invocation with this id is in progress",
    )
}

fn bad_body() -> ApiResponse {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "the request body could not be read",
    )
}

pub(crate) fn error(status: StatusCode, error_type: &str, message: &str) -> ApiResponse {
    json(status, error_document(error_type, message))
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> ApiResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap_or_else(|_| internal())
}

fn internal() -> ApiResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}
