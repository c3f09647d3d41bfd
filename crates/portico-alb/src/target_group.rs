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
