//! The Elastic Load Balancing v2 actions on target groups, in AWS's Query protocol, so that
//! `aws elbv2 … --endpoint-url` and the SDKs work against portico:
//!
//! - `DescribeTargetGroups` (all, or by `Names` / `TargetGroupArns`);
//! - `DescribeTargetHealth`, with ALB's states and reason codes;
//! - the checks of `RegisterTargets` and `DeregisterTargets` on `ip` and `instance` groups
//!   (a target's `Id` is its IP address; portico has no instances), which the control plane
//!   then makes as changes of the group's `targets` (`group_changes`). Deregistering drains:
//!   the target takes no new requests and is removed when its requests are done or the
//!   group's deregistration delay is over, and reads `draining` until then.
//!
//! Requests are form-encoded (`Action=…&Version=2015-12-01&…`, lists as
//! `Targets.member.N.Id`); answers are XML in the 2015-12-01 namespace, errors in the
//! Query protocol's `ErrorResponse` shape with ALB's error codes.

use crate::xml::Xml;
use http::StatusCode;
use portico_alb::TargetGroup;
use portico_alb::http_target::{HttpTargetGroup, Target};
use portico_config::TargetType;
use portico_health::{Failure, Status, Verdict};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The API version and XML namespace of Elastic Load Balancing v2.
pub const VERSION: &str = "2015-12-01";
pub(crate) const NAMESPACE: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";

/// Most targets one request may name.
pub const MAX_TARGETS_PER_REQUEST: usize = 1000;

/// An ELBv2 error, as the Query protocol reports it.
#[derive(Debug, thiserror::Error)]
pub enum Elbv2Error {
    /// No such target group.
    #[error("One or more target groups not found: {0}")]
    TargetGroupNotFound(String),
    /// A target that is not registered, or cannot be.
    #[error("{0}")]
    InvalidTarget(String),
    /// A parameter is missing or malformed.
    #[error("{0}")]
    Validation(String),
    /// An action this API does not have.
    #[error("The action {0} is not valid for this web service.")]
    InvalidAction(String),
    /// More targets than a group may have.
    #[error("You've reached the limit on the number of targets: a target group has at most {0}")]
    TooManyTargets(usize),
    /// No such listener.
    #[error("One or more listeners not found: {0}")]
    ListenerNotFound(String),
    /// No such load balancer.
    #[error("One or more load balancers not found: {0}")]
    LoadBalancerNotFound(String),
    /// No such rule.
    #[error("One or more rules not found: {0}")]
    RuleNotFound(String),
    /// No such certificate.
    #[error("Certificate '{0}' not found")]
    CertificateNotFound(String),
    /// The target group is in use by a listener or a rule.
    #[error("Target group '{0}' is currently in use by a listener or a rule")]
    ResourceInUse(String),
    /// A target group of the name exists.
    #[error("A target group with the same name '{0}' exists, but with different settings")]
    DuplicateTargetGroupName(String),
    /// Another rule of the listener has the priority.
    #[error("Priority '{0}' is currently in use")]
    PriorityInUse(u32),
    /// A default rule cannot be changed so.
    #[error("{0}")]
    OperationNotPermitted(String),
    /// The change is not a valid configuration (its key paths and what is wrong), or the
    /// node could not make it.
    #[error("{0}")]
    Refused(String),
    /// The change could not be made at all (portico is starting, or it could not be kept).
    #[error("{0}")]
    Internal(String),
}

impl Elbv2Error {
    /// ALB's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TargetGroupNotFound(_) => "TargetGroupNotFound",
            Self::InvalidTarget(_) => "InvalidTarget",
            Self::Validation(_) => "ValidationError",
            Self::InvalidAction(_) => "InvalidAction",
            Self::TooManyTargets(_) => "TooManyTargets",
            Self::ListenerNotFound(_) => "ListenerNotFound",
            Self::LoadBalancerNotFound(_) => "LoadBalancerNotFound",
            Self::RuleNotFound(_) => "RuleNotFound",
            Self::CertificateNotFound(_) => "CertificateNotFound",
            Self::ResourceInUse(_) => "ResourceInUse",
            Self::DuplicateTargetGroupName(_) => "DuplicateTargetGroupName",
            Self::PriorityInUse(_) => "PriorityInUse",
            Self::OperationNotPermitted(_) => "OperationNotPermitted",
            Self::Refused(_) => "ValidationError",
            Self::Internal(_) => "InternalFailure",
        }
    }
}

/// The form parameters of one request.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parameters given as pairs.
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    pub(crate) fn parse(body: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn require(&self, name: &str) -> Result<&str, Elbv2Error> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Elbv2Error::Validation(format!("{name} is required")))
    }

    /// `PREFIX.member.N[.FIELD]` values by N, in N's order.
    pub(crate) fn members(&self, prefix: &str, field: Option<&str>) -> BTreeMap<u32, &str> {
        let head = format!("{prefix}.member.");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&head)?;
                let index = match (rest.split_once('.'), field) {
                    (Some((n, f)), Some(want)) if f == want => n,
                    (None, None) => rest,
                    _ => return None,
                };
                Some((index.parse().ok()?, v.as_str()))
            })
            .collect()
    }

    /// `Targets.member.N.Id` and `.Port`, as addresses.
    fn targets(&self) -> Result<Vec<TargetRef>, Elbv2Error> {
        let ids = self.members("Targets", Some("Id"));
        let ports = self.members("Targets", Some("Port"));
        if ids.len() > MAX_TARGETS_PER_REQUEST {
            return Err(Elbv2Error::Validation(format!(
                "{} targets; at most {MAX_TARGETS_PER_REQUEST} per request",
                ids.len()
            )));
        }
        ids.iter()
            .map(|(n, id)| {
                let port = match ports.get(n) {
                    None => None,
                    Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                        Elbv2Error::Validation(format!("Port {p:?} is not in 1-65535"))
                    })?),
                };
                Ok(TargetRef {
                    id: (*id).to_owned(),
                    port,
                })
            })
            .collect()
    }
}

/// A target as a request names it.
struct TargetRef {
    id: String,
    port: Option<u16>,
}

impl TargetRef {
    /// The address of an `ip`/`instance` target; the port is required (portico's target
    /// groups have no default port).
    fn address(&self) -> Result<SocketAddr, Elbv2Error> {
        let ip: IpAddr = self.id.parse().map_err(|_| {
            Elbv2Error::Validation(format!(
                "The IP address '{}' is not a valid IPv4 or IPv6 address",
                self.id
            ))
        })?;
        let port = self.port.ok_or_else(|| {
            Elbv2Error::Validation(format!(
                "A port must be given for target '{}'; portico's target groups have no default port",
                self.id
            ))
        })?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Answers one Query request that reads target groups: the HTTP status and the XML body.
/// (Those that change them are the control plane's: see `group_changes`.)
pub fn handle(groups: &BTreeMap<String, TargetGroup>, body: &[u8]) -> (StatusCode, String) {
    let params = Params::parse(body);
    let action = params.get("Action").unwrap_or_default().to_owned();
    let mut answer = Answer::new(&action);
    let xml = answer.xml();
    let result = match action.as_str() {
        "DescribeTargetGroups" => describe_target_groups(groups, &params, xml),
        "DescribeTargetHealth" => describe_target_health(groups, &params, xml),
        _ => Err(Elbv2Error::InvalidAction(action.clone())),
    };
    answer.finish(result)
}

/// The answer to one action, being written: `<ActionResponse><ActionResult>…`.
pub(crate) struct Answer {
    action: String,
    xml: Xml,
}

impl Answer {
    /// The answer to `action`, its result element open.
    pub(crate) fn new(action: &str) -> Self {
        let mut xml = Xml::with_root(&format!("{action}Response"), NAMESPACE);
        xml.open(&format!("{action}Result"));
        Self {
            action: action.to_owned(),
            xml,
        }
    }

    /// Where the result is written.
    pub(crate) fn xml(&mut self) -> &mut Xml {
        &mut self.xml
    }

    /// The HTTP status and body: the result written, or the error document (400 for the
    /// caller's errors, 500 for portico's).
    pub(crate) fn finish(self, result: Result<(), Elbv2Error>) -> (StatusCode, String) {
        let Self { action, mut xml } = self;
        match result {
            Ok(()) => {
                xml.close(&format!("{action}Result"))
                    .open("ResponseMetadata")
                    .leaf("RequestId", uuid::Uuid::new_v4())
                    .close("ResponseMetadata");
                (StatusCode::OK, xml.finish(&format!("{action}Response")))
            }
            Err(error) => {
                tracing::debug!(%action, code = error.code(), %error, "elbv2 request refused");
                let status = match error {
                    Elbv2Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, error_document(error.code(), &error.to_string()))
            }
        }
    }
}

/// The Query protocol's error document: a sender's error with `code` and `message`.
pub fn error_document(code: &str, message: &str) -> String {
    let mut xml = Xml::with_root("ErrorResponse", NAMESPACE);
    xml.open("Error")
        .leaf("Type", "Sender")
        .leaf("Code", code)
        .leaf("Message", message)
        .close("Error")
        .leaf("RequestId", uuid::Uuid::new_v4().to_string());
    xml.finish("ErrorResponse")
}

fn by_arn<'a>(
    groups: &'a BTreeMap<String, TargetGroup>,
    arn: &str,
) -> Result<&'a TargetGroup, Elbv2Error> {
    groups
        .values()
        .find(|g| g.arn() == arn)
        .ok_or_else(|| Elbv2Error::TargetGroupNotFound(arn.to_owned()))
}

fn http_group<'a>(
    groups: &'a BTreeMap<String, TargetGroup>,
    params: &Params,
) -> Result<&'a std::sync::Arc<HttpTargetGroup>, Elbv2Error> {
    match by_arn(groups, params.require("TargetGroupArn")?)? {
        TargetGroup::Http(group) => Ok(group),
        TargetGroup::Lambda(group) => Err(Elbv2Error::Validation(format!(
            "target group {} is a Lambda target group; its function comes from the config file",
            group.name
        ))),
    }
}

/// ALB's quota of targets in one target group.
pub const MAX_TARGETS_PER_GROUP: usize = 1000;

/// The targets `RegisterTargets` asks to add to its group, checked: the group's name and the
/// addresses.
pub(crate) fn registration(
    groups: &BTreeMap<String, TargetGroup>,
    own: &[SocketAddr],
    params: &Params,
) -> Result<(String, Vec<SocketAddr>), Elbv2Error> {
    let group = http_group(groups, params)?;
    let addresses = addresses(params)?;
    // Nor at portico itself: its load balancers (a loop), its APIs, its static IPs.
    if let Some(refused) = addresses.iter().find(|a| is_own(**a, own)) {
        return Err(Elbv2Error::InvalidTarget(format!(
            "The target {refused} is one of portico's own listeners and cannot be a target"
        )));
    }
    // Traffic may not be pointed at the host's link-local range, cloud metadata services
    // among it: a target there would let anyone who can register one reach them.
    if let Some(refused) = addresses.iter().find(|a| link_local(a.ip())) {
        return Err(Elbv2Error::InvalidTarget(format!(
            "The IP address {} is link-local (metadata services live there) and cannot be a target",
            refused.ip()
        )));
    }
    let mut known: std::collections::HashSet<SocketAddr> = group
        .targets()
        .iter()
        .filter(|t| !t.is_draining())
        .map(|t| t.address)
        .collect();
    known.extend(addresses.iter().copied());
    if known.len() > MAX_TARGETS_PER_GROUP {
        return Err(Elbv2Error::TooManyTargets(MAX_TARGETS_PER_GROUP));
    }
    Ok((group.name().to_owned(), addresses))
}

/// Whether `target` reaches one of the sockets `own`: the same address and port, or the
/// port of a socket bound to every address, at a loopback or unspecified address.
fn is_own(target: SocketAddr, own: &[SocketAddr]) -> bool {
    let ip = target.ip().to_canonical();
    own.iter().any(|o| {
        o.port() == target.port()
            && (o.ip().to_canonical() == ip
                || (o.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
    })
}

/// `169.254.0.0/16` and `fe80::/10`, and the EC2 metadata service's IPv6 address.
fn link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// The targets `DeregisterTargets` asks to remove from its group, checked (each is
/// registered and not draining): the group's name and the addresses.
pub(crate) fn deregistration(
    groups: &BTreeMap<String, TargetGroup>,
    params: &Params,
) -> Result<(String, Vec<SocketAddr>), Elbv2Error> {
    let group = http_group(groups, params)?;
    let addresses = addresses(params)?;
    let live: Vec<SocketAddr> = group
        .targets()
        .iter()
        .filter(|t| !t.is_draining())
        .map(|t| t.address)
        .collect();
    let missing: Vec<String> = addresses
        .iter()
        .filter(|a| !live.contains(a))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Elbv2Error::InvalidTarget(format!(
            "The following targets are not registered in target group '{}': {}",
            group.name(),
            missing.join(", ")
        )));
    }
    Ok((group.name().to_owned(), addresses))
}

/// The targets a request names, as addresses; at least one.
fn addresses(params: &Params) -> Result<Vec<SocketAddr>, Elbv2Error> {
    let targets = params.targets()?;
    if targets.is_empty() {
        return Err(Elbv2Error::Validation("Targets is required".into()));
    }
    targets.iter().map(TargetRef::address).collect()
}

pub(crate) fn describe_target_groups(
    groups: &BTreeMap<String, TargetGroup>,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let names = params.members("Names", None);
    let arns = params.members("TargetGroupArns", None);
    let mut chosen: Vec<&TargetGroup> = Vec::new();
    for name in names.values() {
        chosen.push(
            groups
                .get(*name)
                .ok_or_else(|| Elbv2Error::TargetGroupNotFound((*name).to_owned()))?,
        );
    }
    for arn in arns.values() {
        chosen.push(by_arn(groups, arn)?);
    }
    if names.is_empty() && arns.is_empty() {
        chosen = groups.values().collect();
    }
    xml.open("TargetGroups");
    for group in chosen {
        xml.open("member")
            .leaf("TargetGroupArn", group.arn())
            .leaf("TargetGroupName", group.name());
        let (settings, target_type) = match group {
            TargetGroup::Lambda(g) => (&g.health_check, TargetType::Lambda.name()),
            TargetGroup::Http(g) => {
                let spec = g.spec();
                xml.leaf("Protocol", "HTTP")
                    .leaf("ProtocolVersion", "HTTP1")
                    .leaf("IpAddressType", "ipv4");
                (&spec.health, spec.target_type.name())
            }
        };
        let whole_seconds = |d: std::time::Duration| d.as_secs_f64().ceil().max(1.0) as u64;
        xml.leaf("HealthCheckEnabled", settings.enabled)
            .leaf("HealthCheckPath", &settings.path)
            .leaf(
                "HealthCheckIntervalSeconds",
                whole_seconds(settings.interval),
            )
            .leaf("HealthCheckTimeoutSeconds", whole_seconds(settings.timeout))
            .leaf("HealthyThresholdCount", settings.healthy_threshold)
            .leaf("UnhealthyThresholdCount", settings.unhealthy_threshold)
            .open("Matcher")
            .leaf("HttpCode", &settings.matcher)
            .close("Matcher")
            .leaf("TargetType", target_type);
        if let TargetGroup::Http(_) = group {
            xml.leaf("HealthCheckProtocol", "HTTP").leaf(
                "HealthCheckPort",
                settings
                    .port
                    .map_or_else(|| "traffic-port".to_owned(), |p| p.to_string()),
            );
        }
        xml.close("member");
    }
    xml.close("TargetGroups");
    Ok(())
}

/// A target's health in ALB's terms: state, and for any state but `healthy` a reason code
/// and description.
struct Health {
    state: &'static str,
    reason: Option<(&'static str, String)>,
}

impl Health {
    fn of(status: Option<&Status>, draining: bool) -> Self {
        let with = |state, code, text: &str| Self {
            state,
            reason: Some((code, text.to_owned())),
        };
        if draining {
            return with(
                "draining",
                "Target.DeregistrationInProgress",
                "Target deregistration is in progress",
            );
        }
        let Some(status) = status else {
            return with(
                "unavailable",
                "Target.HealthCheckDisabled",
                "Health checks are disabled",
            );
        };
        match status.verdict() {
            Verdict::Healthy => Self {
                state: "healthy",
                reason: None,
            },
            Verdict::Initial => with(
                "initial",
                "Elb.InitialHealthChecking",
                "Initial health checks in progress",
            ),
            Verdict::Unhealthy => match status.last_failure() {
                Some(Failure::Timeout(_)) => {
                    with("unhealthy", "Target.Timeout", "Request timed out")
                }
                Some(Failure::Status(code)) => with(
                    "unhealthy",
                    "Target.ResponseCodeMismatch",
                    &format!("Health checks failed with these codes: [{code}]"),
                ),
                _ => with(
                    "unhealthy",
                    "Target.FailedHealthChecks",
                    "Health checks failed",
                ),
            },
        }
    }

    fn write(&self, xml: &mut Xml) {
        xml.open("TargetHealth").leaf("State", self.state);
        if let Some((code, text)) = &self.reason {
            xml.leaf("Reason", code).leaf("Description", text);
        }
        xml.close("TargetHealth");
    }
}

fn describe_target_health(
    groups: &BTreeMap<String, TargetGroup>,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let group = by_arn(groups, params.require("TargetGroupArn")?)?;
    let asked = params.targets()?;
    xml.open("TargetHealthDescriptions");
    match group {
        // A Lambda group whose function is not registered yet has no target.
        TargetGroup::Lambda(g) if g.function.is_empty() => {}
        TargetGroup::Lambda(g) => {
            xml.open("member")
                .open("Target")
                .leaf("Id", &g.function_arn)
                .close("Target");
            Health::of(g.health.as_deref(), false).write(xml);
            xml.close("member");
        }
        TargetGroup::Http(g) => {
            let targets = g.targets();
            let health_port = g.spec().health.port;
            let enabled = g.spec().health.enabled;
            let describe = |xml: &mut Xml, address: SocketAddr, target: Option<&Target>| {
                xml.open("member")
                    .open("Target")
                    .leaf("Id", address.ip())
                    .leaf("Port", address.port())
                    .close("Target")
                    .leaf("HealthCheckPort", health_port.unwrap_or(address.port()));
                let health = match target {
                    Some(t) => Health::of(enabled.then_some(&*t.status), t.is_draining()),
                    None => Health {
                        state: "unused",
                        reason: Some((
                            "Target.NotRegistered",
                            "Target is not registered to the target group".to_owned(),
                        )),
                    },
                };
                health.write(xml);
                xml.close("member");
            };
            if asked.is_empty() {
                for t in &targets {
                    describe(xml, t.address, Some(t));
                }
            } else {
                for target in &asked {
                    let address = target.address()?;
                    let found = targets
                        .iter()
                        .filter(|t| t.address == address)
                        .min_by_key(|t| t.is_draining());
                    describe(xml, address, found.map(|t| &**t));
                }
            }
        }
    }
    xml.close("TargetHealthDescriptions");
    Ok(())
}

#[cfg(test)]
mod fuzz {
    /// Any Query request body, against no target groups: an answer (or, for what would
    /// change targets, a refusal), never a panic.
    #[test]
    fn fuzz_elbv2_query() {
        let groups = std::collections::BTreeMap::new();
        let own = ["127.0.0.1:9002".parse().expect("an address")];
        portico_fuzz::check!("elbv2_query", |data: &[u8]| {
            let (_, xml) = super::handle(&groups, data);
            assert!(xml.starts_with("<"));
            let params = super::Params::parse(data);
            assert!(super::registration(&groups, &own, &params).is_err());
            assert!(super::deregistration(&groups, &params).is_err());
        });
    }
}
