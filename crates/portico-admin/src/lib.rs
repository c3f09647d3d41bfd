//! The admin API: how operators, the AWS CLI and the SDKs look at and change a running
//! portico.
//!
//! - `POST /` speaks AWS's Query protocol: the Elastic Load Balancing v2 target group
//!   actions in [`elbv2`] (`aws elbv2 describe-target-health --endpoint-url …`), the
//!   listener and rule actions in [`listener_rules`] (`aws elbv2 create-rule …`), those
//!   that make and change target groups in [`group_changes`]; with an
//!   `X-Amz-Target: GlobalAccelerator_V20180706.…` header, the JSON protocol of Global
//!   Accelerator's operations in [`globalaccelerator`] (`aws globalaccelerator
//!   update-endpoint-group --endpoint-url …`);
//! - `GET /status` is [`status`]: endpoint groups with health, RTT and share of
//!   connections, the node's hold on the static IPs (VRRP or BGP), and target health (what
//!   `portico status` prints);
//! - `GET /metrics` is Prometheus metrics (OpenMetrics text): gateway decisions, rate
//!   limits and usage plan quotas (see `portico_gateway::metrics`);
//! - `GET /ip-ranges.json` is the accelerator's static IPs in the shape of AWS's
//!   `ip-ranges.json` (what `portico ips` prints); 404 on a node without the accelerator;
//! - anything else is 404.
//!
//! Like the Invoke API it listens on loopback unless configured otherwise; with access keys
//! (required beyond loopback) every request must carry an AWS Signature Version 4 of one of
//! them (`elasticloadbalancing` scope; `globalaccelerator` for its operations), else 403 with the Query protocol's error
//! (`MissingAuthenticationToken`, `InvalidClientTokenId`, `SignatureDoesNotMatch`).

pub mod elbv2;
pub mod globalaccelerator;
pub mod group_changes;
pub mod listener_rules;
pub mod status;
mod xml;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use portico_alb::TargetGroup;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request body read: Query requests are small forms.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// What the admin API reaches into.
#[derive(Debug)]
pub struct Admin {
    /// The target groups and the gateway as they are now (a reload swaps them).
    pub balancers: Arc<ArcSwap<Balancers>>,
    /// The accelerator, when this node runs one.
    pub accelerator: Option<Arc<portico_edge::Accelerator>>,
    /// The daemon that holds or announces the static IPs, on a node of several.
    pub ha: Option<Arc<portico_ha::Ha>>,
    /// The descriptor budget client connections draw from.
    pub descriptors: Arc<portico_accept::Descriptors>,
    /// The per-client limit on the static IPs, when there is one.
    pub per_client: Option<Arc<portico_accept::PerClient>>,
    /// The keys whose signatures are accepted; none: requests are not checked.
    pub keys: portico_sigv4::AccessKeys,
    /// portico's own listening sockets (load balancers, APIs, static addresses), which
    /// `RegisterTargets` refuses as targets.
    pub own_listeners: Vec<std::net::SocketAddr>,
    /// How long a request's body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// The control plane, through which the Global Accelerator API changes the accelerator.
    pub control: Option<Arc<portico_control::Control>>,
}

/// What the load balancers run now.
#[derive(Debug)]
pub struct Balancers {
    /// The target groups, by name.
    pub target_groups: BTreeMap<String, TargetGroup>,
    /// The gateway, whose metrics `GET /metrics` serves.
    pub gateway: Arc<portico_gateway::Gateway>,
}

/// Serves the admin API on `listener` until `shutdown` fires, then drains. A connection
/// waits at most `idle_timeout` for a request head.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    (limits, idle_timeout): (portico_accept::Limits, std::time::Duration),
    shutdown: CancellationToken,
) {
    let drained = portico_accept::serve_http1(
        ("admin API", None),
        listener,
        &shutdown,
        (limits, idle_timeout),
        admin,
        |admin, req| async move { route(&admin, req).await },
    )
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(cut_short = drained.cut_short, "admin API drain timeout");
    }
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(
        admin.body_timeout,
        Limited::new(body, MAX_REQUEST_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("request body: {error} (limit {MAX_REQUEST_BYTES} bytes)\n"),
            );
        }
        Err(_) => {
            return respond(
                StatusCode::REQUEST_TIMEOUT,
                "text/plain",
                "the request body did not arrive in time\n".to_owned(),
            );
        }
    };
    // Global Accelerator's operations name themselves in a header (the JSON protocol).
    let ga_operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(globalaccelerator::TARGET_PREFIX))
        .map(str::to_owned);
    if !admin.keys.is_empty() {
        let signable = portico_sigv4::Signable::of(&parts, &body);
        let now = std::time::SystemTime::now();
        let service = match ga_operation {
            Some(_) => "globalaccelerator",
            None => "elasticloadbalancing",
        };
        if let Err(refusal) = portico_sigv4::verify(signable, &admin.keys, service, now) {
            if ga_operation.is_some() {
                let error = globalaccelerator::GaError {
                    status: 403,
                    kind: refusal.json_error_type(),
                    message: refusal.to_string(),
                };
                return respond(StatusCode::FORBIDDEN, JSON_1_1, error.document());
            }
            tracing::debug!(path = %parts.uri.path(), %refusal, "admin API: request refused");
            let xml = elbv2::error_document(refusal.query_code(), &refusal.to_string());
            return respond(StatusCode::FORBIDDEN, "text/xml", xml);
        }
    }
    let path = parts.uri.path();
    if parts.method == Method::GET && path == "/status" {
        let document = status::document(admin).to_string();
        return respond(StatusCode::OK, "application/json", document);
    }
    if parts.method == Method::GET && path == "/metrics" {
        return respond(
            StatusCode::OK,
            portico_gateway::metrics::CONTENT_TYPE,
            admin.balancers.load().gateway.encode_metrics(),
        );
    }
    if parts.method == Method::GET && path == "/ip-ranges.json" {
        if let Some(acc) = &admin.accelerator {
            return respond(
                StatusCode::OK,
                "application/json",
                acc.view().ip_ranges.to_json(),
            );
        }
    }
    if parts.method != Method::POST || path != "/" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        );
    }
    if let Some(operation) = ga_operation {
        let answer = globalaccelerator::handle(
            admin.control.as_ref(),
            admin.accelerator.as_ref(),
            &operation,
            &body,
        )
        .await;
        return match answer {
            Ok(document) => respond(StatusCode::OK, JSON_1_1, document.to_string()),
            Err(error) => respond(
                StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST),
                JSON_1_1,
                error.document(),
            ),
        };
    }
    let params = elbv2::Params::parse(&body);
    if let Some(action) = params
        .get("Action")
        .filter(|a| listener_rules::ACTIONS.contains(a))
    {
        let (status, xml) = listener_rules::handle(admin.control.as_ref(), action, &params).await;
        return respond(status, "text/xml", xml);
    }
    if let Some(action) = params
        .get("Action")
        .filter(|a| group_changes::ACTIONS.contains(a))
    {
        let (status, xml) = group_changes::handle(admin, action, &params).await;
        return respond(status, "text/xml", xml);
    }
    let (status, xml) = elbv2::handle(&admin.balancers.load().target_groups, &body);
    respond(status, "text/xml", xml)
}

/// The region portico's ARNs name.
pub(crate) const REGION: &str = "us-east-1";

/// The JSON protocol's content type.
const JSON_1_1: &str = "application/x-amz-json-1.1";

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
