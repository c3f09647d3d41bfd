//! The HTTP routes of the Extensions API (2020-01-01), served beside the Runtime API on the
//! environment's `AWS_LAMBDA_RUNTIME_API` address:
//! - `POST /2020-01-01/extension/register` (`Lambda-Extension-Name`, optional
//!   `Lambda-Extension-Accept-Feature: accountId`) → 200, `Lambda-Extension-Identifier`;
//! - `GET  /2020-01-01/extension/event/next` → the next `INVOKE` or `SHUTDOWN` event, with
//!   `Lambda-Extension-Event-Identifier`;
//! - `POST /2020-01-01/extension/init/error` and `…/exit/error`
//!   (`Lambda-Extension-Function-Error-Type`) → 202.
//!
//! - `PUT  /2022-07-01/telemetry` and `/2020-08-15/logs`: a Telemetry or Logs API
//!   subscription (see `telemetry`).
//!
//! Every route but `register` needs the `Lambda-Extension-Identifier` that `register`
//! returned: missing, malformed or unknown, it is refused with 403 and Lambda's error type.

use crate::extensions::{Failure, Refusal};
use crate::runtime_api::{ApiContext, ApiResponse, accepted, error, json, read_body};
use crate::telemetry::Api;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

/// The routes' common prefix.
pub(crate) const PREFIX: &str = "/2020-01-01/extension/";

/// The Telemetry API's route.
pub(crate) const TELEMETRY: &str = "/2022-07-01/telemetry";

/// The Logs API's route.
pub(crate) const LOGS: &str = "/2020-08-15/logs";

/// `PUT` of a Telemetry or Logs API subscription, by a registered extension.
pub(crate) async fn subscribe(ctx: &ApiContext, api: Api, req: Request<Incoming>) -> ApiResponse {
    if req.method() != Method::PUT {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed on this route",
        );
    }
    let id = match identifier(&req) {
        Ok(id) => id,
        Err(refusal) => return refused(&refusal),
    };
    let Some(name) = ctx.extensions.name_of(&id) else {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.UnknownExtensionIdentifier",
            &format!("Unknown extension {id}"),
        );
    };
    let Ok(body) = read_body(req).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "the request body could not be read",
        );
    };
    match ctx.telemetry.subscribe(&name, api, &body) {
        Ok(ok) => json(StatusCode::OK, ok),
        Err(refusal) => error(refusal.status, refusal.error_type, &refusal.message),
    }
}

/// Serves one Extensions API request (`rest` is the path after [`PREFIX`]).
pub(crate) async fn route(ctx: &ApiContext, rest: &str, req: Request<Incoming>) -> ApiResponse {
    match (req.method(), rest) {
        (&Method::POST, "register") => register(ctx, req).await,
        (&Method::GET, "event/next") => match identifier(&req) {
            Ok(id) => match ctx.extensions.next(&id).await {
                Ok(event) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(
                        "Lambda-Extension-Event-Identifier",
                        uuid::Uuid::new_v4().to_string(),
                    )
                    .body(Full::new(event))
                    .unwrap_or_else(|_| refused(&internal())),
                Err(refusal) => refused(&refusal),
            },
            Err(refusal) => refused(&refusal),
        },
        (&Method::POST, "init/error") => failed(ctx, req, Failure::Init).await,
        (&Method::POST, "exit/error") => failed(ctx, req, Failure::Exit).await,
        (_, "register" | "event/next" | "init/error" | "exit/error") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed on this route",
        ),
        _ => error(StatusCode::NOT_FOUND, "UnknownRoute", "no such route"),
    }
}

async fn register(ctx: &ApiContext, req: Request<Incoming>) -> ApiResponse {
    let name = header_text(&req, "Lambda-Extension-Name").unwrap_or_default();
    let feature = header_text(&req, "Lambda-Extension-Accept-Feature");
    let Ok(body) = read_body(req).await else {
        return error(
            StatusCode::FORBIDDEN,
            "InvalidRequestFormat",
            "the request body could not be read",
        );
    };
    match ctx
        .extensions
        .register(&name, &body, feature.as_deref(), &ctx.function)
    {
        Ok((id, document)) => {
            let mut response = json(StatusCode::OK, document);
            if let Ok(value) = http::HeaderValue::from_str(&id) {
                response
                    .headers_mut()
                    .insert("Lambda-Extension-Identifier", value);
            }
            response
        }
        Err(refusal) => refused(&refusal),
    }
}

async fn failed(ctx: &ApiContext, req: Request<Incoming>, failure: Failure) -> ApiResponse {
    let id = match identifier(&req) {
        Ok(id) => id,
        Err(refusal) => return refused(&refusal),
    };
    let Some(error_type) = header_text(&req, "Lambda-Extension-Function-Error-Type") else {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.MissingHeader",
            "Lambda-Extension-Function-Error-Type not found",
        );
    };
    // The error document is the extension's own; it is read, not kept.
    let _ = read_body(req).await;
    match ctx.extensions.failed(&id, failure, &error_type) {
        Ok(()) => accepted(),
        Err(refusal) => refused(&refusal),
    }
}

/// The caller's `Lambda-Extension-Identifier`, a UUID.
fn identifier(req: &Request<Incoming>) -> Result<String, Refusal> {
    let Some(id) = header_text(req, "Lambda-Extension-Identifier") else {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            error_type: "Extension.MissingExtensionIdentifier",
            message: "Missing Lambda-Extension-Identifier header".into(),
        });
    };
    match uuid::Uuid::parse_str(&id) {
        Ok(_) => Ok(id),
        Err(_) => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            error_type: "Extension.InvalidExtensionIdentifier",
            message: "Invalid Lambda-Extension-Identifier".into(),
        }),
    }
}

fn header_text(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn refused(refusal: &Refusal) -> ApiResponse {
    error(refusal.status, refusal.error_type, &refusal.message)
}

fn internal() -> Refusal {
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error_type: "InternalError",
        message: "the response could not be made".into(),
    }
}
