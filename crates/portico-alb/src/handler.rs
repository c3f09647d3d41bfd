//! One request through a listener: ALB's head limits, the rules, then the action.
//!
//! Every failure becomes ALB's status and error page here, through [`LbError`], and is
//! logged once with the side that caused it.

use crate::access_log::{AccessLog, LoggedBody, Outcome, Record};
use crate::body::Body;
use crate::desync::Verdict;
use crate::error::LbError;
use crate::forwarded::Origin;
use crate::lambda_target;
use crate::redirect::Original;
use crate::router::{Action, Router};
use crate::rules::{RequestView, strip_port};
use crate::sticky;
use crate::target_group::TargetGroup;
use crate::tls::Negotiated;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use portico_gateway::{Grant, Policy};
use portico_invoke::Invoker;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// ALB's limit on the request line (method, target, version): 16 KB.
pub const MAX_REQUEST_LINE_BYTES: usize = 16 * 1024;
/// ALB's limit on one header (name, `: `, value): 16 KB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// ALB's limit on all headers together: 64 KB.
pub const MAX_HEADERS_TOTAL_BYTES: usize = 64 * 1024;
/// Largest body a gateway policy reads to validate: 1 MB, Lambda targets' limit.
pub const MAX_VALIDATED_BODY_BYTES: usize = 1024 * 1024;

/// What every request of one listener shares.
pub struct Context {
    /// The listener's rules.
    pub router: Router,
    /// How functions are called.
    pub invoker: Arc<dyn Invoker>,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The listener's port, for redirects.
    pub port: u16,
    /// The same as an `X-Forwarded-Port` value.
    pub port_header: HeaderValue,
    /// How long an HTTP target may take to answer (the load balancer's idle timeout).
    pub target_timeout: Duration,
    /// The load balancer's id as access logs name it, `app/NAME/ID`.
    pub elb: Arc<str>,
    /// Where access log lines go, when enabled.
    pub access_log: Option<AccessLog>,
    /// How the forwarded headers are made (the load balancer's attributes).
    pub forwarding: crate::forwarded::Forwarding,
    /// What happens to HTTP/1 requests that are not RFC 7230 compliant.
    pub desync: portico_config::model::DesyncMitigationMode,
}

/// The connection a request came on.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client (from PROXY v2 when the listener reads it).
    pub client: SocketAddr,
    /// The connection's id in access logs, `TID_…`.
    pub trace_id: Arc<str>,
    /// What the TLS handshake settled, on HTTPS listeners.
    pub tls: Option<Negotiated>,
}

impl Connection {
    /// A connection from `client` with a fresh id.
    pub fn new(client: SocketAddr, tls: Option<Negotiated>) -> Self {
        Self {
            client,
            trace_id: format!("TID_{:032x}", fastrand::u128(..)).into(),
            tls,
        }
    }
}

/// Answers one request; failures become ALB's error responses.
pub async fn handle(ctx: &Context, conn: &Connection, req: Request<Incoming>) -> Response<Body> {
    let received = Instant::now();
    // Kept for the log lines; both clones share the request's buffers.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let record = ctx
        .access_log
        .as_ref()
        // Boxed: a record is hundreds of bytes, which the request's future would otherwise
        // carry (and copy into place) on every request, with an access log or without.
        .map(|_| Box::new(record_of(ctx, conn, &req, received)));
    let mut outcome = Outcome {
        logged: record.is_some(),
        ..Outcome::default()
    };
    let mut cors = None;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let (verdict, classification) = crate::desync::classify(&req, ctx.desync);
    outcome.classification = classification;
    let mut req = req;
    let answer = match verdict {
        Verdict::Refuse => Err(LbError::BadRequest(format!(
            "desync mitigation: a {} request ({})",
            classification.map_or("-", |c| c.tier),
            classification.map_or("-", |c| c.reason)
        ))),
        Verdict::ForwardAndClose => {
            req.extensions_mut().insert(crate::desync::CloseAfter);
            respond(ctx, conn.client, req, &mut outcome, &mut cors).await
        }
        Verdict::Forward => respond(ctx, conn.client, req, &mut outcome, &mut cors).await,
    };
    let mut response = match answer {
        Ok(response) => response,
        Err(LbError::Gateway(rejection)) => {
            // Refusals are the gateway working, and can come by the thousand: counted in
            // metrics and access logs, logged only at debug level.
            tracing::debug!(client = %conn.client, %method, path = uri.path(), %rejection, "refused");
            crate::body::boxed(rejection.into_response())
        }
        Err(error) => {
            tracing::warn!(
                client = %conn.client, %method, path = uri.path(), status = error.status().as_u16(),
                reason = error.reason(), side = ?error.side(), %error,
                "request failed"
            );
            outcome.error_reason = Some(error.reason()).filter(|r| *r != "-");
            crate::body::boxed(error.into_response())
        }
    };
    if let Some(cors) = cors.and_then(Policy::cors) {
        cors.decorate(origin.as_ref(), response.headers_mut());
    }
    if verdict == Verdict::ForwardAndClose {
        // hyper closes the client's connection after a response that says so.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::debug!(
        client = %conn.client, %method, path = uri.path(), status = response.status().as_u16(),
        elapsed_ms = received.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    match (record, &ctx.access_log) {
        (Some(mut record), Some(log)) => {
            record.status = response.status().as_u16();
            record.outcome = outcome;
            let head = head_bytes(&response);
            response.map(|body| LoggedBody::new(body, head, *record, log.clone()).boxed())
        }
        _ => response,
    }
}

/// The request's part of its access log line.
fn record_of<B>(ctx: &Context, conn: &Connection, req: &Request<B>, received: Instant) -> Record {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map_or("-", strip_port);
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let version = match req.version() {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let body = content_length(req.headers()).unwrap_or(0);
    Record {
        // ALB's `h2` is HTTP/2 over TLS; h2c is logged as the listener's protocol.
        kind: match (&conn.tls, req.version()) {
            (Some(_), http::Version::HTTP_2) => "h2",
            _ => ctx.proto,
        },
        tls: conn.tls.clone(),
        elb: ctx.elb.clone(),
        client: conn.client,
        conn_trace_id: conn.trace_id.clone(),
        received,
        created: SystemTime::now(),
        request: format!(
            "{} {}://{host}:{}{target} {version}",
            req.method(),
            ctx.proto,
            ctx.port
        ),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "-".to_owned()),
        received_bytes: head_bytes_of(req.headers()) + target.len() as u64 + body + 16,
        outcome: Outcome::default(),
        status: 0,
    }
}

/// The declared `Content-Length`, if it is a number.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a request body in full: 413 when its declared length or its bytes are over
/// `limit`, 400 when it cannot be read.
pub(crate) async fn read_body<B>(
    headers: &http::HeaderMap,
    body: B,
    (limit, deadline): (usize, Duration),
) -> Result<bytes::Bytes, LbError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(LbError::RequestTooLarge { limit });
    }
    // A body that dribbles in holds its connection and its buffer: it gets the load
    // balancer's idle timeout in all, then a 408 as ALB's.
    let read = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(LbError::ClientTimeout { timeout: deadline });
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(LbError::RequestTooLarge { limit })
        }
        Err(e) => Err(LbError::BadBody(e.to_string())),
    }
}

fn head_bytes_of(headers: &http::HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// Size of a response head on the wire: status line, headers, blank line.
fn head_bytes<B>(response: &Response<B>) -> u64 {
    "HTTP/1.1 200 OK\r\n\r\n".len() as u64 + head_bytes_of(response.headers())
}

async fn respond<'c>(
    ctx: &'c Context,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    outcome: &mut Outcome,
    cors: &mut Option<&'c Policy>,
) -> Result<Response<Body>, LbError> {
    let client = peer.ip();
    let header_bytes = check_head(&req)?;
    if req.version() == http::Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    if !req.headers().contains_key(header::HOST) {
        // HTTP/2 carries the host as `:authority`; rules and targets see it as `Host`.
        if let Some(authority) = req.uri().authority() {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, value);
            }
        }
    }
    // Only the gateway says what a verified token holds.
    req.headers_mut().remove(portico_gateway::CLAIMS_HEADER);
    // Rules see the path with its dot segments resolved: `/ip/a/../../etc` is `/etc`, and
    // no `/ip/*` rule takes it.
    let routed_path = crate::rules::normalize_path(req.uri().path());
    let view = RequestView {
        method: req.method().as_str(),
        path: &routed_path,
        query: req.uri().query(),
        headers: req.headers(),
        source: client,
    };
    let listener_policy = ctx.router.policy();
    if ctx.router.has_cors() && portico_gateway::cors::is_preflight(req.method(), req.headers()) {
        if let Some(preflight) = answer_preflight(ctx, &view, outcome) {
            return Ok(preflight);
        }
    }
    let routed = ctx.router.route(&view);
    outcome.rule_priority = Some(routed.priority);
    outcome.action = Some(routed.action.name());
    *cors = ctx.router.cors_policy(&routed);
    let policies = [listener_policy, routed.policy];
    let req = if policies.iter().flatten().next().is_some() {
        admit(&policies, client, req, ctx.target_timeout).await?
    } else {
        req.map(crate::body::incoming)
    };
    let origin = Origin {
        client: peer,
        proto: ctx.proto,
        port: &ctx.port_header,
        port_number: ctx.port,
        header_bytes,
        forwarding: ctx.forwarding,
    };
    match routed.action {
        Action::FixedResponse(fixed) => Ok(fixed.respond()),
        Action::Redirect(redirect) => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(strip_port)
                .ok_or_else(|| LbError::BadRequest("no Host header to redirect with".into()))?;
            let response = redirect.respond(&Original {
                protocol: ctx.proto,
                host,
                port: ctx.port,
                path: req.uri().path(),
                query: req.uri().query().unwrap_or(""),
            });
            outcome.redirect_url = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            Ok(response)
        }
        Action::Forward(forward) => {
            let picked = forward.pick(req.headers()).ok_or(LbError::NoTargets)?;
            if outcome.logged {
                outcome.target_group_arn = Some(picked.group.arn().to_owned());
            }
            let mut response = match picked.group {
                TargetGroup::Lambda(tg) => {
                    lambda_target::forward(
                        tg,
                        (ctx.invoker.as_ref(), ctx.target_timeout),
                        origin,
                        req,
                        outcome,
                    )
                    .await?
                }
                TargetGroup::Http(tg) => {
                    tg.forward(req, origin, ctx.target_timeout, outcome).await?
                }
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

/// Answers a CORS preflight from the policy of the rule the real request would match (the
/// method asked about stands in for `OPTIONS`), else the listener's; `None` when neither
/// has CORS, and the preflight is routed like any request.
fn answer_preflight(
    ctx: &Context,
    view: &RequestView<'_>,
    outcome: &mut Outcome,
) -> Option<Response<Body>> {
    let method = portico_gateway::cors::requested_method(view.headers)?;
    let real = RequestView {
        method: method.as_str(),
        ..*view
    };
    let routed = ctx.router.route(&real);
    let policy = ctx.router.cors_policy(&routed)?;
    outcome.rule_priority = Some(routed.priority);
    policy.count_preflight();
    policy
        .cors()
        .map(|cors| crate::body::boxed(cors.preflight(view.headers)))
}

/// Runs the gateway policies (the listener's, then the rule's) on `req`: the head checks,
/// then, when a policy validates bodies, the body read in full (up to
/// [`MAX_VALIDATED_BODY_BYTES`]). A verified token's claims go to the target in
/// [`portico_gateway::CLAIMS_HEADER`] and, for Lambda targets, in the event.
async fn admit(
    policies: &[Option<&Policy>; 2],
    client: IpAddr,
    req: Request<Incoming>,
    deadline: Duration,
) -> Result<Request<Body>, LbError> {
    let mut grant = Grant::default();
    for policy in policies.iter().flatten() {
        policy
            .admit(req.headers(), req.uri().query(), client, &mut grant)
            .await?;
    }
    let (mut parts, body) = req.into_parts();
    let body = if policies.iter().flatten().any(|p| p.wants_body()) {
        let bytes = read_body(&parts.headers, body, (MAX_VALIDATED_BODY_BYTES, deadline)).await?;
        for policy in policies.iter().flatten().filter(|p| p.wants_body()) {
            policy.check_body(&bytes)?;
        }
        crate::body::full(bytes)
    } else {
        crate::body::incoming(body)
    };
    if let Some(jwt) = &grant.jwt {
        if let Ok(value) = HeaderValue::from_str(&jwt.claims_header()) {
            parts.headers.insert(portico_gateway::CLAIMS_HEADER, value);
        }
    }
    parts.extensions.insert(grant);
    Ok(Request::from_parts(parts, body))
}

/// HTTP/2 clients may split `Cookie` into one field per cookie; targets get them as one
/// header joined with `; `, as RFC 9113 §8.2.3 asks when passing them on as HTTP/1.1.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// One `Host`, and a well-formed one (RFC 9112 §3.2: a request with several, or an
/// HTTP/1.1 request with none, is a 400): rules match it, redirects copy it into
/// `Location`, targets read it; each must see the same one, and only a host.
fn check_host<B>(
    req: &Request<B>,
    host: Option<&HeaderValue>,
    hosts: usize,
) -> Result<(), LbError> {
    if hosts > 1 {
        return Err(LbError::BadRequest("more than one Host header".into()));
    }
    let Some(host) = host else {
        // HTTP/2 names the host in `:authority`; HTTP/1.0 may leave it out.
        if req.version() == http::Version::HTTP_11 && req.uri().authority().is_none() {
            return Err(LbError::BadRequest(
                "an HTTP/1.1 request without Host".into(),
            ));
        }
        return Ok(());
    };
    // uri-host [ ":" port ]: a name or address, no userinfo, path or spaces.
    let valid = !host.is_empty()
        && host.as_bytes().iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        });
    if !valid {
        return Err(LbError::BadRequest(format!(
            "Host {:?} is not a host",
            String::from_utf8_lossy(host.as_bytes())
        )));
    }
    Ok(())
}

/// A `Transfer-Encoding` value's first coding other than `chunked` and `identity`.
fn unsupported_coding(value: &HeaderValue) -> Option<String> {
    let text = String::from_utf8_lossy(value.as_bytes());
    text.split(',')
        .map(str::trim)
        .find(|coding| {
            !coding.eq_ignore_ascii_case("chunked") && !coding.eq_ignore_ascii_case("identity")
        })
        .map(str::to_owned)
}

/// The longest method Elastic Load Balancing takes.
pub const MAX_METHOD_BYTES: usize = 127;

/// Most addresses ALB takes in a request's `X-Forwarded-For`.
pub const MAX_FORWARDED_FOR: usize = 30;

/// What ALB refuses in a request head: 414 for a long request line, 400 for a long header
/// or too many header bytes, 405 for `TRACE`, `CONNECT` and methods over 127 characters, 463 for an `X-Forwarded-For` of more than 30
/// addresses, 501 for a transfer coding other than `chunked` or `identity`. Returns the
/// header block's size in bytes, which the forwarded headers need too.
fn check_head<B>(req: &Request<B>) -> Result<usize, LbError> {
    // TRACE, as ALB documents; CONNECT, which would make the load balancer a tunnel; and a
    // method over 127 characters, as Elastic Load Balancing documents for its Classic
    // load balancers.
    let method = req.method();
    if method == http::Method::TRACE
        || method == http::Method::CONNECT
        || method.as_str().len() > MAX_METHOD_BYTES
    {
        return Err(LbError::MethodNotAllowed);
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1".len();
    if line > MAX_REQUEST_LINE_BYTES {
        return Err(LbError::UriTooLong {
            limit: MAX_REQUEST_LINE_BYTES,
        });
    }
    // One pass over the headers for every check that reads them: this runs per request.
    let (mut total, mut hosts, mut host, mut forwarded) = (0, 0, None, 0);
    for (name, value) in req.headers() {
        let one = name.as_str().len() + 2 + value.len();
        if one > MAX_HEADER_BYTES {
            return Err(LbError::HeaderTooLarge {
                limit: MAX_HEADER_BYTES,
            });
        }
        total += one + 2;
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if name == crate::forwarded::X_FORWARDED_FOR {
            forwarded += value.as_bytes().split(|b| *b == b',').count();
        } else if name == header::TRANSFER_ENCODING {
            if let Some(coding) = unsupported_coding(value) {
                return Err(LbError::UnsupportedTransferEncoding(coding));
            }
        }
    }
    if total > MAX_HEADERS_TOTAL_BYTES {
        return Err(LbError::HeaderTooLarge {
            limit: MAX_HEADERS_TOTAL_BYTES,
        });
    }
    check_host(req, host, hosts)?;
    if forwarded > MAX_FORWARDED_FOR {
        return Err(LbError::TooManyForwardedFor {
            count: forwarded,
            limit: MAX_FORWARDED_FOR,
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 request with `headers` (and a `Host` when they have none).
    fn req(uri: &str, headers: &[(&str, String)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "shop.example.com");
        }
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.body(()).unwrap()
    }

    #[test]
    fn split_http2_cookies_are_joined() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut headers);
        assert_eq!(headers[header::COOKIE], "a=1");
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn head_limits_are_albs() {
        assert!(check_head(&req("/ok", &[("a", "b".into())])).is_ok());
        let long_uri = format!("/{}", "a".repeat(MAX_REQUEST_LINE_BYTES));
        let e = check_head(&req(&long_uri, &[])).unwrap_err();
        assert_eq!(e.status(), 414);
        let e = check_head(&req("/", &[("x", "v".repeat(MAX_HEADER_BYTES))])).unwrap_err();
        assert_eq!(e.status(), 400);
        let many: Vec<_> = (0..5)
            .map(|i| (["a", "b", "c", "d", "e"][i], "v".repeat(15 * 1024)))
            .collect();
        let e = check_head(&req("/", &many)).unwrap_err();
        assert_eq!(e.status(), 400);
        let fits: Vec<_> = (0..4)
            .map(|i| (["a", "b", "c", "d"][i], "v".repeat(15 * 1024)))
            .collect();
        assert!(check_head(&req("/", &fits)).is_ok());
    }

    #[test]
    fn one_well_formed_host_or_a_400() {
        assert!(check_head(&req("/", &[("host", "shop.example.com:8080".into())])).is_ok());
        assert!(check_head(&req("/", &[("host", "[2001:db8::1]:80".into())])).is_ok());
        let two = req(
            "/",
            &[
                ("host", "good.example".into()),
                ("host", "evil.example".into()),
            ],
        );
        assert_eq!(check_head(&two).unwrap_err().status(), 400);
        for bad in ["good.example@evil.example", "a b", "a/b", "a\\b", ""] {
            let e = check_head(&req("/", &[("host", bad.into())])).unwrap_err();
            assert_eq!(e.status(), 400, "{bad:?}");
        }
        let none = Request::builder()
            .version(http::Version::HTTP_11)
            .uri("/")
            .body(())
            .unwrap();
        assert_eq!(check_head(&none).unwrap_err().status(), 400);
        let old = Request::builder()
            .version(http::Version::HTTP_10)
            .uri("/")
            .body(())
            .unwrap();
        assert!(check_head(&old).is_ok());
    }

    #[test]
    fn methods_forwarded_for_and_transfer_codings_alb_refuses() {
        let trace = Request::builder()
            .method(http::Method::TRACE)
            .header("host", "shop.example.com")
            .uri("/")
            .body(())
            .unwrap();
        assert_eq!(check_head(&trace).unwrap_err().status(), 405);
        let addresses = |n: usize| {
            (1..=n)
                .map(|i| format!("10.0.0.{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert!(check_head(&req("/", &[("x-forwarded-for", addresses(30))])).is_ok());
        let e = check_head(&req("/", &[("x-forwarded-for", addresses(31))])).unwrap_err();
        assert_eq!(e.status().as_u16(), 463);
        assert!(check_head(&req("/", &[("transfer-encoding", "chunked".into())])).is_ok());
        let e =
            check_head(&req("/", &[("transfer-encoding", "gzip, chunked".into())])).unwrap_err();
        assert_eq!(e.status(), 501);
    }
}
