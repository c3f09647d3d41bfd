//! One request to a Lambda target group: limits, event, invocation, reply.

use crate::error::LbError;
use crate::event::{AlbEvent, RequestParts};
use crate::forwarded::{self, Origin};
use crate::reply;
use crate::target_group::LambdaTargetGroup;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use portico_invoke::{Invocation, Invoker};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body a Lambda target accepts: 1 MB.
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// ALB's limit on the request line (method, target, version): 16 KB.
pub const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
/// ALB's limit on one header (name, `: `, value): 16 KB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// ALB's limit on all headers together: 64 KB.
pub const MAX_HEADERS_TOTAL_BYTES: usize = 64 * 1024;

/// What every request of one listener shares.
pub struct Context {
    /// Where requests go.
    pub target_group: LambdaTargetGroup,
    /// How functions are called.
    pub invoker: Arc<dyn Invoker>,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's port, for `X-Forwarded-Port`.
    pub port: u16,
}

/// Answers one request; failures become ALB's error responses.
pub async fn handle(
    ctx: &Context,
    client: IpAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match forward(ctx, client, req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(
                %client, %method, path, status = error.status().as_u16(),
                reason = error.reason(), side = ?error.side(), %error,
                "request failed"
            );
            error.into_response()
        }
    };
    tracing::debug!(
        %client, %method, path, status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn forward(
    ctx: &Context,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, LbError> {
    check_head(&req)?;
    if req.headers().contains_key(header::UPGRADE) {
        return Err(LbError::UpgradeRefused);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY_BYTES as u64) {
        return Err(LbError::RequestTooLarge {
            limit: MAX_REQUEST_BODY_BYTES,
        });
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(LbError::RequestTooLarge {
                limit: MAX_REQUEST_BODY_BYTES,
            });
        }
        Err(e) => return Err(LbError::BadBody(e.to_string())),
    };
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let origin = Origin {
        client,
        proto: ctx.proto,
        port: ctx.port,
    };
    let trace_id = forwarded::apply(&mut headers, origin);
    let request = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers,
        body: &body,
    };
    let tg = &ctx.target_group;
    let event = AlbEvent::new(&request, &tg.arn, tg.multi_value_headers).to_json();
    let output = ctx
        .invoker
        .invoke(Invocation {
            function: tg.function.clone(),
            payload: Bytes::from(event),
            trace_id: Some(trace_id),
            ..Invocation::default()
        })
        .await?;
    if let Some(failure) = output.function_error {
        return Err(LbError::FunctionFailed {
            error_type: failure.error_type,
        });
    }
    reply::into_response(&output.payload, tg.multi_value_headers)
}

/// ALB's limits on the request head: 414 for a long request line, 431 for a long header or
/// too many header bytes.
fn check_head<B>(req: &Request<B>) -> Result<(), LbError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1".len();
    if line > MAX_REQUEST_LINE_BYTES {
        return Err(LbError::UriTooLong {
            limit: MAX_REQUEST_LINE_BYTES,
        });
    }
    let mut total = 0;
    for (name, value) in req.headers() {
        let one = name.as_str().len() + 2 + value.len();
        if one > MAX_HEADER_BYTES {
            return Err(LbError::HeaderTooLarge {
                limit: MAX_HEADER_BYTES,
            });
        }
        total += one + 2;
    }
    if total > MAX_HEADERS_TOTAL_BYTES {
        return Err(LbError::HeaderTooLarge {
            limit: MAX_HEADERS_TOTAL_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, String)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.body(()).unwrap()
    }

    #[test]
    fn head_limits_are_albs() {
        assert!(check_head(&req("/ok", &[("a", "b".into())])).is_ok());
        let long_uri = format!("/{}", "a".repeat(MAX_REQUEST_LINE_BYTES));
        let e = check_head(&req(&long_uri, &[])).unwrap_err();
        assert_eq!(e.status(), 414);
        let e = check_head(&req("/", &[("x", "v".repeat(MAX_HEADER_BYTES))])).unwrap_err();
        assert_eq!(e.status(), 431);
        let many: Vec<_> = (0..5)
            .map(|i| (["a", "b", "c", "d", "e"][i], "v".repeat(15 * 1024)))
            .collect();
        let e = check_head(&req("/", &many)).unwrap_err();
        assert_eq!(e.status(), 431);
        let fits: Vec<_> = (0..4)
            .map(|i| (["a", "b", "c", "d"][i], "v".repeat(15 * 1024)))
            .collect();
        assert!(check_head(&req("/", &fits)).is_ok());
    }
}
