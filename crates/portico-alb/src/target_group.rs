//! Target groups as the load balancer uses them at run time: a Lambda function, or a set of
//! HTTP servers.

use crate::http_target::HttpTargetGroup;
use std::sync::Arc;

/// A target group of either kind.
#[derive(Debug, Clone)]
pub enum TargetGroup {
    /// One Lambda function.
    Lambda(LambdaTargetGroup),
    /// HTTP servers (`instance` or `ip` targets).
    Http(Arc<HttpTargetGroup>),
}

impl TargetGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Lambda(tg) => &tg.name,
            Self::Http(tg) => tg.name(),
        }
    }

    /// The group's ARN.
    pub fn arn(&self) -> &str {
        match self {
            Self::Lambda(tg) => &tg.arn,
            Self::Http(tg) => tg.arn(),
        }
    }
}

/// A target group whose one target is a Lambda function.
#[derive(Debug, Clone)]
pub struct LambdaTargetGroup {
    /// The group's name.
    pub name: String,
    /// Its ARN, sent to the function as `requestContext.elb.targetGroupArn`.
    pub arn: String,
    /// The function to invoke.
    pub function: String,
    /// The function's ARN, the group's one target.
    pub function_arn: String,
    /// ALB's `lambda.multi_value_headers.enabled` attribute.
    pub multi_value_headers: bool,
    /// Health check settings (off unless configured, as ALB has it for Lambda).
    pub health_check: portico_config::HealthCheckSettings,
    /// The function's health while checks are on.
    pub health: Option<Arc<portico_health::Status>>,
}

/// ALB's ARN shape for a target group: `…:targetgroup/NAME/ID`, the id derived from the name
/// so that it is stable across restarts.
pub fn arn_for(region: &str, account: &str, name: &str) -> String {
    format!(
        "arn:aws:elasticloadbalancing:{region}:{account}:targetgroup/{name}/{:016x}",
        stable_hash(name.as_bytes())
    )
}

/// A load balancer's ARN: `…:loadbalancer/app/NAME/ID`, the id derived from the name.
pub fn load_balancer_arn(region: &str, account: &str, name: &str) -> String {
    format!(
        "arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/app/{name}/{:016x}",
        stable_hash(name.as_bytes())
    )
}

/// The ARN of load balancer `name`'s listener `index` (in the configuration's order).
pub fn listener_arn(region: &str, account: &str, name: &str, index: usize) -> String {
    let lb = load_balancer_arn(region, account, name);
    let id = stable_hash(format!("{lb}/{index}").as_bytes());
    format!(
        "{}/{id:016x}",
        lb.replacen(":loadbalancer/", ":listener/", 1)
    )
}

/// The ARN of a rule of the listener `listener` (an ARN), with rule id `id`.
pub fn rule_arn(listener: &str, id: &str) -> String {
    format!(
        "{}/{id}",
        listener.replacen(":listener/", ":listener-rule/", 1)
    )
}

/// The id of a rule the configuration gives none: made from its listener and priority.
pub fn rule_id(listener: &str, priority: u32) -> String {
    format!(
        "{:016x}",
        stable_hash(format!("{listener}/{priority}").as_bytes())
    )
}

/// FNV-1a: a stable 64-bit hash for ids and cookie values (not for secrets).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A target group's health check settings as the health engine takes them.
pub fn check_plan(
    settings: &portico_config::HealthCheckSettings,
) -> (portico_health::Schedule, portico_health::Thresholds) {
    (
        portico_health::Schedule {
            interval: settings.interval,
            timeout: settings.timeout,
        },
        portico_health::Thresholds {
            healthy: settings.healthy_threshold,
            unhealthy: settings.unhealthy_threshold,
        },
    )
}
