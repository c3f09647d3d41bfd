//! Target groups of HTTP servers (`instance` and `ip` targets): choosing a target, health
//! checks, slow start, stickiness, draining, and proxying over pooled connections.
//!
//! Choosing, per request:
//! 1. targets being deregistered (draining) take no new requests;
//! 2. of the rest, the healthy ones; when none is healthy, all of them (ALB fails open);
//!    with no target at all the request gets 503;
//! 3. with stickiness on, the target named by the client's `AWSALB` cookie if it is among
//!    them;
//! 4. else by the algorithm: round robin (weighted by slow start's ramp while a target is in
//!    it) or least outstanding requests.
//!
//! Failures are ALB's: a refused or reset connection is 502, no response within the load
//! balancer's idle timeout is 504.

use crate::access_log::Outcome;
use crate::body::Body;
use crate::error::LbError;
use crate::forwarded::{self, Origin};
use crate::sticky;
use crate::target_group::stable_hash;
use crate::upstream::Upstream;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use portico_config::{Algorithm, HealthCheckSettings};
use portico_health::{HttpProbe, Status, Verdict};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::upstream::CONNECT_TIMEOUT;

/// One target: an HTTP server.
#[derive(Debug)]
pub struct Target {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its health.
    pub status: Arc<Status>,
    /// `address` as a `Host` header, for requests that came without one (HTTP/1.0).
    host: HeaderValue,
    /// Keep-alive connections to it.
    upstream: Arc<Upstream>,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    cookie: u64,
    checks: CancellationToken,
}

impl Target {
    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it is being deregistered.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Counts a request as outstanding on a target until dropped.
struct Outstanding(Arc<Target>);

impl Outstanding {
    fn new(target: Arc<Target>) -> Self {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(target)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a group behaves.
#[derive(Debug, Clone)]
pub struct HttpGroupSpec {
    /// The group's name.
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// `instance` or `ip` (both name targets by address in portico).
    pub target_type: portico_config::TargetType,
    /// The targets.
    pub targets: Vec<SocketAddr>,
    /// Round robin or least outstanding requests.
    pub algorithm: Algorithm,
    /// Ramp-up time of a newly healthy target (zero: off).
    pub slow_start: Duration,
    /// How long a deregistered target may finish its requests.
    pub deregistration_delay: Duration,
    /// `AWSALB` stickiness duration, if on.
    pub stickiness: Option<Duration>,
    /// Health checks.
    pub health: HealthCheckSettings,
}

/// A target group of HTTP servers.
#[derive(Debug)]
pub struct HttpTargetGroup {
    spec: HttpGroupSpec,
    targets: RwLock<Vec<Arc<Target>>>,
    next: AtomicUsize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl HttpTargetGroup {
    /// Builds the group and starts health checks for its targets; they stop with
    /// `shutdown`, and `tasks` tracks them.
    pub fn start(
        spec: HttpGroupSpec,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let group = Arc::new(Self {
            targets: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            spec,
        });
        for address in group.spec.targets.clone() {
            group.register(address);
        }
        group
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The group's ARN.
    pub fn arn(&self) -> &str {
        &self.spec.arn
    }

    /// How the group was set up.
    pub fn spec(&self) -> &HttpGroupSpec {
        &self.spec
    }

    /// The registered targets, draining ones included, in registration order.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.read_targets().clone()
    }

    /// Adds a target (if not there yet) and starts checking it. Without health checks it is
    /// healthy at once; with them it must pass one first.
    pub fn register(&self, address: SocketAddr) {
        let mut targets = self.write_targets();
        if targets
            .iter()
            .any(|t| t.address == address && !t.is_draining())
        {
            return;
        }
        let health = &self.spec.health;
        let verdict = if health.enabled {
            Verdict::Initial
        } else {
            Verdict::Healthy
        };
        let text = address.to_string();
        let checks = self.shutdown.child_token();
        let target = Arc::new(Target {
            address,
            status: Arc::new(Status::new(verdict)),
            // A socket address is always a valid header value.
            host: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            upstream: Upstream::start(address, checks.clone(), &self.tasks),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            cookie: stable_hash(text.as_bytes()),
            checks,
        });
        if health.enabled {
            let matcher = health.matcher.clone();
            let probe = HttpProbe {
                address: SocketAddr::new(address.ip(), health.port.unwrap_or(address.port())),
                path: health.path.clone(),
                accepts: move |status| matcher.accepts(status),
                tls: false,
                preface: Vec::new(),
            };
            let (schedule, thresholds) = crate::target_group::check_plan(health);
            self.tasks.spawn(portico_health::run(
                probe,
                target.status.clone(),
                schedule,
                thresholds,
                target.checks.clone(),
            ));
        }
        targets.push(target);
    }

    /// Starts draining a target: it takes no new requests, and is removed once its
    /// requests are done or the deregistration delay is over, whichever comes first.
    pub fn deregister(self: &Arc<Self>, address: SocketAddr) -> bool {
        let Some(target) = self
            .read_targets()
            .iter()
            .find(|t| t.address == address && !t.is_draining())
            .cloned()
        else {
            return false;
        };
        target.draining.store(true, Ordering::Relaxed);
        tracing::info!(group = self.name(), %address, "target draining");
        let group = self.clone();
        self.tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + group.spec.deregistration_delay;
            while target.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = group.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            target.checks.cancel();
            group
                .write_targets()
                .retain(|t| !Arc::ptr_eq(t, &target));
            tracing::info!(group = group.name(), %address, in_flight = target.in_flight(), "target deregistered");
        });
        true
    }

    fn read_targets(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Target>>> {
        self.targets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_targets(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Target>>> {
        self.targets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The target for a request whose `AWSALB` cookie held `sticky`.
    pub fn pick(&self, sticky: Option<u64>) -> Option<Arc<Target>> {
        let targets = self.read_targets();
        let live = || targets.iter().filter(|t| !t.is_draining());
        let any_healthy = live().any(|t| t.status.is_healthy());
        // ALB fails open: with no healthy target, every target is a candidate.
        let candidates = || live().filter(move |t| !any_healthy || t.status.is_healthy());
        let count = candidates().count();
        if count == 0 {
            return None;
        }
        if let Some(value) = sticky {
            if let Some(t) = candidates().find(|t| t.cookie == value) {
                return Some(t.clone());
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.spec.algorithm {
            Algorithm::LeastOutstandingRequests => candidates()
                .cycle()
                .skip(turn % count)
                .take(count)
                .min_by_key(|t| t.in_flight()),
            Algorithm::RoundRobin => match slow_start_ticket(candidates(), self.spec.slow_start) {
                Some(index) => candidates().nth(index),
                None => candidates().nth(turn % count),
            },
        };
        chosen.cloned()
    }

    /// Proxies `req` to a target, noting which one and when in `outcome`.
    pub async fn forward(
        &self,
        req: Request<Body>,
        origin: Origin<'_>,
        timeout: Duration,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, LbError> {
        let sticky = self
            .spec
            .stickiness
            .and_then(|_| sticky::TARGET.read(req.headers()));
        let target = self.pick(sticky).ok_or(LbError::NoTargets)?;
        outcome.target = Some(target.address);
        let (mut parts, body) = req.into_parts();
        // Origin form, as HTTP/1.1 sends it to a server.
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, target.host.clone());
        }
        strip_hop_by_hop(&mut parts.headers);
        forwarded::apply(&mut parts.headers, origin);
        if parts
            .extensions
            .get::<crate::desync::CloseAfter>()
            .is_some()
        {
            // An ambiguous request: the target's connection ends with it, as the client's.
            parts
                .headers
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        if outcome.logged {
            outcome.trace_id = parts.headers.get(forwarded::X_AMZN_TRACE_ID).cloned();
        }
        let request = Request::from_parts(parts, body);

        let outstanding = Outstanding::new(target.clone());
        outcome.mark_dispatched();
        let response = tokio::time::timeout(timeout, target.upstream.send(request)).await;
        drop(outstanding);
        let mut response = match response {
            Err(_) => return Err(LbError::TargetTimeout { timeout }),
            Ok(result) => result?,
        };
        outcome.mark_answered();
        outcome.target_status = Some(response.status().as_u16());
        strip_hop_by_hop(response.headers_mut());
        if let Some(duration) = self.spec.stickiness {
            for value in sticky::TARGET.set(target.cookie, duration) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        Ok(response)
    }
}

/// While some candidate is within its slow start, a weighted random pick: each candidate
/// weighs its share of the ramp (at least 1 %), others weigh 1. `None` when no candidate is
/// ramping, so plain round robin applies.
///
/// As ALB documents, a target is not put into slow start when no other target was healthy
/// as it became healthy: the candidate healthy the longest always weighs 1.
fn slow_start_ticket<'a>(
    candidates: impl Iterator<Item = &'a Arc<Target>> + Clone,
    slow_start: Duration,
) -> Option<usize> {
    if slow_start.is_zero() {
        return None;
    }
    let oldest = candidates
        .clone()
        .filter_map(|t| t.status.healthy_for())
        .max()?;
    let weight = |t: &Target| -> f64 {
        match t.status.healthy_for() {
            Some(d) if d < slow_start && d < oldest => {
                (d.as_secs_f64() / slow_start.as_secs_f64()).max(0.01)
            }
            _ => 1.0,
        }
    };
    if candidates.clone().all(|t| weight(t) >= 1.0) {
        return None;
    }
    let total: f64 = candidates.clone().map(|t| weight(t)).sum();
    let mut ticket = fastrand::f64() * total;
    for (i, t) in candidates.enumerate() {
        let w = weight(t);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), including
/// those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // `Connection` may not take what makes the message: the host it is for, its
        // framing, and the headers the load balancer sets.
        if !KEPT.contains(&name) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// End-to-end headers that a `Connection` header cannot make hop-by-hop.
const KEPT: [header::HeaderName; 6] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::HeaderName::from_static("x-forwarded-for"),
    header::HeaderName::from_static("x-forwarded-proto"),
    header::HeaderName::from_static("x-forwarded-port"),
    header::HeaderName::from_static("x-amzn-trace-id"),
];

/// The hop-by-hop headers RFC 9110 names, and two that old clients still send.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
];

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("trailer", "x-t"),
            ("x-kept", "yes"),
            ("host", "a"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn connection_cannot_strip_the_host_or_the_framing() {
        let mut h = headers(&[
            ("host", "shop.example.com"),
            ("content-length", "5"),
            ("x-forwarded-for", "198.51.100.7"),
            (
                "connection",
                "host, content-length, x-forwarded-for, x-secret",
            ),
            ("x-secret", "s"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["host"], "shop.example.com");
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = headers(&[("x-hop", "1"), ("host", "a"), ("content-length", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // Only a `Connection` header makes other names hop-by-hop.
        let mut h = headers(&[("keep-alive", "1"), ("x-hop", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-hop"]);
    }
}
