//! The Elastic Load Balancing v2 actions that make, change and delete target groups and
//! their targets: `RegisterTargets` and `DeregisterTargets` (a group's targets change in
//! place: its state is kept, the targets that leave drain; a Lambda group's one target is its
//! function), `CreateTargetGroup` (a group made empty; its targets, or its function, then
//! come with `RegisterTargets`: until then it answers 503, as ALB does), `ModifyTargetGroup`
//! (health checks), `ModifyTargetGroupAttributes` and `DescribeTargetGroupAttributes` (ALB's
//! attribute keys), `DeleteTargetGroup` (refused while a listener or rule forwards to it).
//!
//! Each is an edit of `target_groups.NAME` made through the control plane (validated as the
//! file is, applied as a reload, kept). A group whose settings change is made anew: its
//! health checks start again.

use crate::elbv2::{
    Answer, Elbv2Error, Params, deregistration, describe_target_groups, registration,
};
use crate::xml::Xml;
use crate::{Admin, listener_rules};
use portico_config::{Action, Config};
use portico_control::Edit;

/// The actions this module answers.
pub const ACTIONS: [&str; 7] = [
    "RegisterTargets",
    "DeregisterTargets",
    "CreateTargetGroup",
    "ModifyTargetGroup",
    "ModifyTargetGroupAttributes",
    "DescribeTargetGroupAttributes",
    "DeleteTargetGroup",
];

/// Carries out `action`: the HTTP status and the XML body.
pub(crate) async fn handle(
    admin: &Admin,
    action: &str,
    params: &Params,
) -> (http::StatusCode, String) {
    let mut answer = Answer::new(action);
    let result = match &admin.control {
        None => Err(Elbv2Error::Internal("portico is starting".into())),
        Some(control) => carry_out(admin, control, action, params, answer.xml()).await,
    };
    answer.finish(result)
}

async fn carry_out(
    admin: &Admin,
    control: &portico_control::Control,
    action: &str,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let config = control.config();
    match action {
        "RegisterTargets" | "DeregisterTargets"
            if params.get("TargetGroupArn").is_some_and(|arn| {
                listener_rules::group_name(&config, arn).is_ok_and(|name| {
                    config.target_groups[&name].target_type == portico_config::TargetType::Lambda
                })
            }) =>
        {
            let name = listener_rules::group_name(&config, params.require("TargetGroupArn")?)?;
            let edit = lambda_target(&config, &name, action, params)?;
            listener_rules::change(control, vec![edit]).await?;
            Ok(())
        }
        "RegisterTargets" | "DeregisterTargets" => {
            let (name, addresses) = {
                let balancers = admin.balancers.load();
                match action {
                    "RegisterTargets" => {
                        registration(&balancers.target_groups, &admin.own_listeners, params)?
                    }
                    _ => deregistration(&balancers.target_groups, params)?,
                }
            };
            let current = config
                .target_groups
                .get(&name)
                .map(|tg| tg.targets.clone())
                .unwrap_or_default();
            let next: Vec<std::net::SocketAddr> = match action {
                "RegisterTargets" => current
                    .iter()
                    .copied()
                    .chain(addresses.iter().copied().filter(|a| !current.contains(a)))
                    .collect(),
                _ => current
                    .into_iter()
                    .filter(|a| !addresses.contains(a))
                    .collect(),
            };
            let value: Vec<toml::Value> = next.iter().map(|a| a.to_string().into()).collect();
            listener_rules::change(
                control,
                vec![Edit::set(&["target_groups", &name, "targets"], value)],
            )
            .await?;
            Ok(())
        }
        "CreateTargetGroup" => {
            let name = params.require("Name")?.to_owned();
            let kind = params.get("TargetType").unwrap_or("instance");
            if config.target_groups.contains_key(&name) {
                return Err(Elbv2Error::DuplicateTargetGroupName(name));
            }
            let mut table = toml::Table::new();
            table.insert("target_type".into(), kind.into());
            let health = health_check(params)?;
            if !health.is_empty() {
                let health: toml::Table = health.into_iter().collect();
                table.insert("health_check".into(), health.into());
            }
            listener_rules::change(control, vec![Edit::set(&["target_groups", &name], table)])
                .await?;
            describe(admin, &name, xml)
        }
        "ModifyTargetGroup" => {
            let name = listener_rules::group_name(&config, params.require("TargetGroupArn")?)?;
            let edits: Vec<Edit> = health_check(params)?
                .into_iter()
                .map(|(key, value)| {
                    Edit::set(&["target_groups", &name, "health_check", &key], value)
                })
                .collect();
            if !edits.is_empty() {
                control
                    .change(edits)
                    .await
                    .map_err(|e| Elbv2Error::Refused(e.to_string()))?;
            }
            describe(admin, &name, xml)
        }
        "ModifyTargetGroupAttributes" => {
            let name = listener_rules::group_name(&config, params.require("TargetGroupArn")?)?;
            let keys = params.members("Attributes", Some("Key"));
            let values = params.members("Attributes", Some("Value"));
            let mut edits = Vec::new();
            for (n, key) in &keys {
                let value = values.get(n).copied().unwrap_or_default();
                edits.push(attribute_edit(&name, key, value, &config)?);
            }
            if !edits.is_empty() {
                control
                    .change(edits)
                    .await
                    .map_err(|e| Elbv2Error::Refused(e.to_string()))?;
            }
            attributes(&control.config(), &name, xml)
        }
        "DescribeTargetGroupAttributes" => {
            let name = listener_rules::group_name(&config, params.require("TargetGroupArn")?)?;
            attributes(&config, &name, xml)
        }
        "DeleteTargetGroup" => {
            let arn = params.require("TargetGroupArn")?;
            let name = listener_rules::group_name(&config, arn)?;
            let in_use = config
                .load_balancers
                .values()
                .flat_map(|lb| &lb.listeners)
                .flat_map(|l| {
                    std::iter::once(&l.default_action).chain(l.rules.iter().map(|r| &r.action))
                })
                .any(|a: &Action| a.forward_targets().iter().any(|(tg, _)| *tg == name));
            if in_use {
                return Err(Elbv2Error::ResourceInUse(arn.to_owned()));
            }
            listener_rules::change(control, vec![Edit::remove(&["target_groups", &name])]).await?;
            Ok(())
        }
        other => Err(Elbv2Error::InvalidAction(other.to_owned())),
    }
}

/// The edit `RegisterTargets` or `DeregisterTargets` makes to the Lambda group `name`: its one
/// target is a function (`Id` its ARN, with a qualifier if any, or its name).
fn lambda_target(
    config: &Config,
    name: &str,
    action: &str,
    params: &Params,
) -> Result<Edit, Elbv2Error> {
    let ids = params.members("Targets", Some("Id"));
    if ids.len() != 1 {
        return Err(Elbv2Error::Validation(
            "A Lambda target group has one target: its function".into(),
        ));
    }
    let id = ids.values().next().copied().unwrap_or_default();
    let function = match id.split_once(":function:") {
        Some((_, rest)) => rest,
        None => id,
    };
    let current = config.target_groups[name].function.as_deref();
    if action == "DeregisterTargets" {
        if current != Some(function) {
            return Err(Elbv2Error::InvalidTarget(format!(
                "The following targets are not registered in target group '{name}': {id}"
            )));
        }
        return Ok(Edit::remove(&["target_groups", name, "function"]));
    }
    if current.is_some_and(|c| c != function) {
        return Err(Elbv2Error::TooManyTargets(1));
    }
    let base = function.split(':').next().unwrap_or_default();
    if !config.functions.contains_key(base) {
        return Err(Elbv2Error::InvalidTarget(format!(
            "The function '{id}' is not a function of this portico"
        )));
    }
    Ok(Edit::set(&["target_groups", name, "function"], function))
}

/// The group as `DescribeTargetGroups` shows it, once the change runs.
fn describe(admin: &Admin, name: &str, xml: &mut Xml) -> Result<(), Elbv2Error> {
    let balancers = admin.balancers.load();
    describe_target_groups(
        &balancers.target_groups,
        &Params::from_pairs(&[("Names.member.1", name)]),
        xml,
    )
}

/// The health check settings of a request, as `health_check`'s keys.
fn health_check(params: &Params) -> Result<Vec<(String, toml::Value)>, Elbv2Error> {
    let mut out: Vec<(String, toml::Value)> = Vec::new();
    let number = |key: &str| -> Result<Option<f64>, Elbv2Error> {
        params
            .get(key)
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| Elbv2Error::Validation(format!("{key} '{v}' is not a number")))
            })
            .transpose()
    };
    if let Some(enabled) = params.get("HealthCheckEnabled") {
        out.push(("enabled".into(), (enabled == "true").into()));
    }
    if let Some(path) = params.get("HealthCheckPath") {
        out.push(("path".into(), path.into()));
    }
    match params.get("HealthCheckPort") {
        None | Some("traffic-port") => {}
        Some(port) => {
            let port = port.parse::<i64>().map_err(|_| {
                Elbv2Error::Validation(format!("HealthCheckPort '{port}' is not a port"))
            })?;
            out.push(("port".into(), port.into()));
        }
    }
    if let Some(n) = number("HealthCheckIntervalSeconds")? {
        out.push(("interval_seconds".into(), n.into()));
    }
    if let Some(n) = number("HealthCheckTimeoutSeconds")? {
        out.push(("timeout_seconds".into(), n.into()));
    }
    if let Some(n) = number("HealthyThresholdCount")? {
        out.push(("healthy_threshold".into(), (n as i64).into()));
    }
    if let Some(n) = number("UnhealthyThresholdCount")? {
        out.push(("unhealthy_threshold".into(), (n as i64).into()));
    }
    if let Some(codes) = params.get("Matcher.HttpCode") {
        out.push(("matcher".into(), codes.into()));
    }
    Ok(out)
}

/// The edit ALB's attribute `key` = `value` makes to group `name`.
fn attribute_edit(name: &str, key: &str, value: &str, config: &Config) -> Result<Edit, Elbv2Error> {
    let number = || {
        value.parse::<i64>().map_err(|_| {
            Elbv2Error::Validation(format!("Attribute '{key}': '{value}' is not a number"))
        })
    };
    let at = |field: &'static str| ["target_groups", name, field];
    Ok(match key {
        "deregistration_delay.timeout_seconds" => {
            Edit::set(&at("deregistration_delay_seconds"), number()?)
        }
        "slow_start.duration_seconds" => Edit::set(&at("slow_start_seconds"), number()?),
        "load_balancing.algorithm.type" => Edit::set(&at("load_balancing_algorithm"), value),
        "lambda.multi_value_headers.enabled" => {
            Edit::set(&at("multi_value_headers_enabled"), value == "true")
        }
        "stickiness.enabled" if value == "false" => {
            Edit::remove(&at("stickiness_duration_seconds"))
        }
        "stickiness.enabled" => {
            // On with ALB's default duration, unless one is set already.
            let current = config.target_groups[name].stickiness_duration_seconds;
            Edit::set(
                &at("stickiness_duration_seconds"),
                i64::from(current.unwrap_or(86_400)),
            )
        }
        "stickiness.lb_cookie.duration_seconds" => {
            Edit::set(&at("stickiness_duration_seconds"), number()?)
        }
        "stickiness.type" if value == "lb_cookie" => {
            let current = config.target_groups[name].stickiness_duration_seconds;
            Edit::set(
                &at("stickiness_duration_seconds"),
                i64::from(current.unwrap_or(86_400)),
            )
        }
        other => {
            return Err(Elbv2Error::Validation(format!(
                "Attribute '{other}' is not one portico's target groups have"
            )));
        }
    })
}

/// `DescribeTargetGroupAttributes`' answer for group `name`.
fn attributes(config: &Config, name: &str, xml: &mut Xml) -> Result<(), Elbv2Error> {
    let tg = config
        .target_groups
        .get(name)
        .ok_or_else(|| Elbv2Error::TargetGroupNotFound(name.to_owned()))?;
    let algorithm = match tg.load_balancing_algorithm {
        portico_config::Algorithm::RoundRobin => "round_robin",
        portico_config::Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
    };
    let pairs = [
        (
            "deregistration_delay.timeout_seconds",
            tg.deregistration_delay_seconds.to_string(),
        ),
        (
            "slow_start.duration_seconds",
            tg.slow_start_seconds.to_string(),
        ),
        ("load_balancing.algorithm.type", algorithm.to_owned()),
        (
            "stickiness.enabled",
            tg.stickiness_duration_seconds.is_some().to_string(),
        ),
        ("stickiness.type", "lb_cookie".to_owned()),
        (
            "stickiness.lb_cookie.duration_seconds",
            tg.stickiness_duration_seconds.unwrap_or(86_400).to_string(),
        ),
        (
            "lambda.multi_value_headers.enabled",
            tg.multi_value_headers_enabled.to_string(),
        ),
    ];
    xml.open("Attributes");
    for (key, value) in pairs {
        xml.open("member")
            .leaf("Key", key)
            .leaf("Value", value)
            .close("member");
    }
    xml.close("Attributes");
    Ok(())
}
