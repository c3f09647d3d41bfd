//! One request through a listener: ALB's head limits, the rules, then the action.
//!
//! Every failure becomes ALB's status and error page here, through [`LbError`], and is
//! logged once with the side that caused it.

use crate::body::Body;
use crate::error::LbError;
use crate::forwarded::Origin;
use crate::lambda_target;
use crate::redirect::Original;
use crate::router::{Action, Router};
use crate::rules::{RequestView, strip_port};
use crate::sticky;
use crate::target_group::TargetGroup;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use portico_invoke::Invoker;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// ALB's limit on the request line (method, target, version): 16 KB.
pub const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
/// ALB's limit on one header (name, `: `, value): 16 KB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// ALB's limit on all headers together: 64 KB.
pub const MAX_HEADERS_TOTAL_BYTES: usize = 64 * 1024;

/// What every request of one listener shares.
pub struct Context {
    /// The listener's rules.
    pub router: Router,
    /// How functions are called.
    pub invoker: Arc<dyn Invoker>,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's port, for `X-Forwarded-Port` and redirects.
    pub port: u16,
    /// How long an HTTP target may take to answer (the load balancer's idle timeout).
    pub target_timeout: Duration,
}

/// Answers one request; failures become ALB's error responses.
pub async fn handle(ctx: &Context, client: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match respond(ctx, client, req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(
                %client, %method, path, status = error.status().as_u16(),
                reason = error.reason(), side = ?error.side(), %error,
                "request failed"
            );
            crate::body::boxed(error.into_response())
        }
    };
    tracing::debug!(
        %client, %method, path, status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn respond(
    ctx: &Context,
    client: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, LbError> {
    check_head(&req)?;
    if !req.headers().contains_key(header::HOST) {
        // HTTP/2 carries the host as `:authority`; rules and targets see it as `Host`.
        if let Some(authority) = req.uri().authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, value);
            }
        }
    }
    let view = RequestView {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        source: client,
    };
    let origin = Origin {
        client,
        proto: ctx.proto,
        port: ctx.port,
    };
    match ctx.router.route(&view) {
        Action::FixedResponse(fixed) => Ok(fixed.respond()),
        Action::Redirect(redirect) => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(strip_port)
                .ok_or_else(|| LbError::BadRequest("no Host header to redirect with".into()))?;
            Ok(redirect.respond(&Original {
                protocol: ctx.proto,
                host,
                port: ctx.port,
                path: req.uri().path(),
                query: req.uri().query().unwrap_or(""),
            }))
        }
        Action::Forward(forward) => {
            let picked = forward.pick(req.headers()).ok_or(LbError::NoTargets)?;
            let mut response = match picked.group {
                TargetGroup::Lambda(tg) => {
                    lambda_target::forward(tg, ctx.invoker.as_ref(), origin, req).await?
                }
                TargetGroup::Http(tg) => tg.forward(req, origin, ctx.target_timeout).await?.0,
            };
            if let Some((value, duration)) = picked.stick {
                for cookie in sticky::GROUP.set(value, duration) {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
            }
            Ok(response)
        }
    }
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
