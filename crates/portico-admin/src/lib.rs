//! The admin API: how operators, the AWS CLI and the SDKs look at and change a running
//! portico.
//!
//! - `POST /` speaks AWS's Query protocol: the Elastic Load Balancing v2 target group
//!   actions in [`elbv2`] (`aws elbv2 describe-target-health --endpoint-url …`);
//! - `GET /status` is [`status`]: endpoint groups with health, RTT and share of
//!   connections, the node's hold on the static IPs (VRRP or BGP), and target health (what
//!   `portico status` prints);
//! - `GET /metrics` is Prometheus metrics (OpenMetrics text): gateway decisions, rate
//!   limits and usage plan quotas (see `portico_gateway::metrics`);
//! - `GET /ip-ranges.json` is the accelerator's static IPs in the shape of AWS's
//!   `ip-ranges.json` (what `portico ips` prints); 404 on a node without the accelerator;
//! - anything else is 404.
//!
//! Like the Invoke API it has no authentication of its own and listens on loopback unless
//! configured otherwise; AWS signatures are accepted and not checked.

pub mod elbv2;
pub mod status;
mod xml;

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
    /// The target groups, by name.
    pub target_groups: BTreeMap<String, TargetGroup>,
    /// The accelerator, when this node runs one.
    pub accelerator: Option<Arc<portico_edge::Accelerator>>,
    /// The daemon that holds or announces the static IPs, on a node of several.
    pub ha: Option<Arc<portico_ha::Ha>>,
    /// The gateway, whose metrics `GET /metrics` serves.
    pub gateway: Arc<portico_gateway::Gateway>,
    /// The descriptor budget client connections draw from.
    pub descriptors: Arc<portico_accept::Descriptors>,
    /// The per-client limit on the static IPs, when there is one.
    pub per_client: Option<Arc<portico_accept::PerClient>>,
}

/// Serves the admin API on `listener` until `shutdown` fires, then drains.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: portico_accept::Limits,
    shutdown: CancellationToken,
) {
    let drained = portico_accept::serve_http1(
        ("admin API", None),
        listener,
        &shutdown,
        (limits, portico_accept::API_HEAD_TIMEOUT),
        admin,
        |admin, req| async move { route(&admin, req).await },
    )
    .await;
    if drained.cut_short > 0 {
        tracing::warn!(cut_short = drained.cut_short, "admin API drain timeout");
    }
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET && req.uri().path() == "/status" {
        let document = status::document(admin).to_string();
        return respond(StatusCode::OK, "application/json", document);
    }
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        return respond(
            StatusCode::OK,
            portico_gateway::metrics::CONTENT_TYPE,
            admin.gateway.encode_metrics(),
        );
    }
    if req.method() == Method::GET && req.uri().path() == "/ip-ranges.json" {
        if let Some(acc) = &admin.accelerator {
            return respond(
                StatusCode::OK,
                "application/json",
                acc.view().ip_ranges.to_json(),
            );
        }
    }
    if req.method() != Method::POST || req.uri().path() != "/" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("request body: {error} (limit {MAX_REQUEST_BYTES} bytes)\n"),
            );
        }
    };
    let (status, xml) = elbv2::handle(&admin.target_groups, &body);
    respond(status, "text/xml", xml)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
