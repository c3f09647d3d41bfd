//! The Elastic Load Balancing v2 actions on listeners and their rules, in the Query protocol:
//! `DescribeLoadBalancers` (to find the ARNs), `DescribeListeners`, `ModifyListener` (its
//! default action, port, and certificates among those portico's listeners have), `DescribeRules`, `CreateRule`, `ModifyRule`, `DeleteRule` and
//! `SetRulePriorities`, so that `aws elbv2 create-rule …` changes a running listener's rules.
//!
//! A change is an edit of the load balancer's `listeners` in the configuration, made through
//! the control plane: validated as the file is (its errors name the key paths), applied as a
//! reload (new requests take the new rules at once, requests in flight finish on the old),
//! kept. Listeners are named by ARNs made from their load balancer's name and their place in
//! the configuration; rules by an id kept with the rule (`id`, set when a rule is created
//! here), so that a rule's ARN stays when its priority changes.
//!
//! Conditions come in either of ELBv2's forms (`Values`, or `PathPatternConfig.Values` and
//! the like); one action per rule (`forward` to one group or weighted groups,
//! `fixed-response`, `redirect`).

use crate::elbv2::{Answer, Elbv2Error, Params};
use crate::xml::Xml;
use portico_alb::target_group::{arn_for, listener_arn, load_balancer_arn, rule_arn, rule_id};
use portico_config::{Action, Config, LbProtocol, RuleCondition};
use portico_control::{Control, Edit};
use std::sync::Arc;

/// The actions this module answers.
pub const ACTIONS: [&str; 8] = [
    "DescribeLoadBalancers",
    "DescribeListeners",
    "ModifyListener",
    "DescribeRules",
    "CreateRule",
    "ModifyRule",
    "DeleteRule",
    "SetRulePriorities",
];

/// Most rules a listener may have, as ALB allows (besides its default).
pub const MAX_RULES: usize = 100;

fn account() -> &'static str {
    portico_lambda::spec::ACCOUNT_ID
}

/// Load balancer `lb`'s listener `index`'s ARN.
fn listener(lb: &str, index: usize) -> String {
    listener_arn(crate::REGION, account(), lb, index)
}

/// Target group `name`'s ARN.
fn group_arn(name: &str) -> String {
    arn_for(crate::REGION, account(), name)
}

/// The rule id of `rule` of the listener `listener_arn`.
fn id_of(listener_arn: &str, rule: &portico_config::Rule) -> String {
    rule.id
        .clone()
        .unwrap_or_else(|| rule_id(listener_arn, rule.priority))
}

/// Carries out `action`: the HTTP status and the XML body.
pub(crate) async fn handle(
    control: Option<&Arc<Control>>,
    action: &str,
    params: &Params,
) -> (http::StatusCode, String) {
    let mut answer = Answer::new(action);
    let result = match control {
        None => Err(Elbv2Error::Internal("portico is starting".into())),
        Some(control) => carry_out(control, action, params, answer.xml()).await,
    };
    answer.finish(result)
}

async fn carry_out(
    control: &Control,
    action: &str,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let config = control.config();
    match action {
        "DescribeLoadBalancers" => describe_load_balancers(&config, params, xml),
        "DescribeListeners" => describe_listeners(&config, params, xml),
        "ModifyListener" => {
            let arn = params.require("ListenerArn")?.to_owned();
            let (lb, index) = find_listener(&config, &arn)?;
            let default = params
                .get("DefaultActions.member.1.Type")
                .map(|_| action_table(&config, params, "DefaultActions"))
                .transpose()?;
            let port = params
                .get("Port")
                .map(|p| {
                    p.parse::<i64>()
                        .ok()
                        .filter(|p| (1..=65_535).contains(p))
                        .ok_or_else(|| {
                            Elbv2Error::Validation(format!("Port '{p}' is not in 1-65535"))
                        })
                })
                .transpose()?;
            // Certificates, by the ARNs portico gives the files of its listeners.
            let wanted: Vec<&str> = params
                .members("Certificates", Some("CertificateArn"))
                .into_values()
                .collect();
            let mut certificates = Vec::new();
            for arn in &wanted {
                let known = config
                    .load_balancers
                    .values()
                    .flat_map(|lb| &lb.listeners)
                    .flat_map(|l| &l.certificates)
                    .find(|c| certificate_arn(&c.certificate) == *arn)
                    .ok_or_else(|| Elbv2Error::CertificateNotFound((*arn).to_owned()))?;
                let mut table = toml::Table::new();
                table.insert("certificate".into(), known.certificate.clone().into());
                table.insert("private_key".into(), known.private_key.clone().into());
                certificates.push(toml::Value::Table(table));
            }
            let edit = edit_listener(control, &lb, index, |listener| {
                if let Some(default) = default {
                    listener.insert("default_action".into(), default.into());
                }
                if let Some(port) = port {
                    listener.insert("port".into(), port.into());
                }
                if !certificates.is_empty() {
                    listener.insert("certificates".into(), certificates.into());
                }
                Ok(())
            })
            .await?;
            let config = change(control, vec![edit]).await?;
            let arns = [("ListenerArns.member.1", arn.as_str())];
            describe_listeners(&config, &Params::from_pairs(&arns), xml)
        }
        "DescribeRules" => {
            let (lb, index) = match params.get("ListenerArn") {
                Some(arn) => find_listener(&config, arn)?,
                None => return describe_rules_by_arn(&config, params, xml),
            };
            let l = &config.load_balancers[&lb].listeners[index];
            xml.open("Rules");
            let arn = listener(&lb, index);
            let mut rules: Vec<&portico_config::Rule> = l.rules.iter().collect();
            rules.sort_by_key(|r| r.priority);
            for rule in rules {
                write_rule(xml, &arn, Some(rule), &rule.action, &rule.conditions);
            }
            write_rule(xml, &arn, None, &l.default_action, &[]);
            xml.close("Rules");
            Ok(())
        }
        "CreateRule" => {
            let arn = params.require("ListenerArn")?;
            let (lb, index) = find_listener(&config, arn)?;
            let priority = priority(params.require("Priority")?)?;
            let rules = &config.load_balancers[&lb].listeners[index].rules;
            if rules.iter().any(|r| r.priority == priority) {
                return Err(Elbv2Error::PriorityInUse(priority));
            }
            if rules.len() >= MAX_RULES {
                return Err(Elbv2Error::Validation(format!(
                    "A listener has at most {MAX_RULES} rules"
                )));
            }
            let id = format!("{:016x}", fastrand::u64(..));
            let mut rule = toml::Table::new();
            rule.insert("priority".into(), i64::from(priority).into());
            rule.insert("conditions".into(), conditions(params)?.into());
            rule.insert(
                "action".into(),
                action_table(&config, params, "Actions")?.into(),
            );
            rule.insert("id".into(), id.clone().into());
            let edit = edit_rules(control, &lb, index, |rules| {
                rules.push(toml::Value::Table(rule));
                Ok(())
            })
            .await?;
            let config = change(control, vec![edit]).await?;
            write_rules(xml, &config, (&lb, index), &[id])
        }
        "ModifyRule" => {
            let arn = params.require("RuleArn")?.to_owned();
            let (lb, index, id) = find_rule(&config, &arn)?;
            let new_conditions = params
                .get("Conditions.member.1.Field")
                .map(|_| conditions(params))
                .transpose()?;
            let new_action = params
                .get("Actions.member.1.Type")
                .map(|_| action_table(&config, params, "Actions"))
                .transpose()?;
            let listener_arn = listener(&lb, index);
            let edit = edit_rules(control, &lb, index, |rules| {
                let rule = find_rule_table(rules, &listener_arn, &id)?;
                // Its id, kept with it from now on.
                rule.insert("id".into(), id.clone().into());
                if let Some(c) = new_conditions {
                    rule.insert("conditions".into(), c.into());
                }
                if let Some(a) = new_action {
                    rule.insert("action".into(), a.into());
                }
                Ok(())
            })
            .await?;
            let config = change(control, vec![edit]).await?;
            write_rules(xml, &config, (&lb, index), &[id])
        }
        "DeleteRule" => {
            let arn = params.require("RuleArn")?.to_owned();
            let (lb, index, id) = find_rule(&config, &arn)?;
            let listener_arn = listener(&lb, index);
            let edit = edit_rules(control, &lb, index, |rules| {
                let before = rules.len();
                rules.retain(|r| !rule_is(r, &listener_arn, &id));
                if rules.len() == before {
                    return Err(Elbv2Error::RuleNotFound(arn.clone()));
                }
                Ok(())
            })
            .await?;
            change(control, vec![edit]).await?;
            Ok(())
        }
        "SetRulePriorities" => {
            let arns = params.members("RulePriorities", Some("RuleArn"));
            let priorities = params.members("RulePriorities", Some("Priority"));
            if arns.is_empty() {
                return Err(Elbv2Error::Validation("RulePriorities is required".into()));
            }
            // Every rule named is of one listener.
            let mut changes = Vec::new();
            let mut at: Option<(String, usize)> = None;
            for (n, arn) in &arns {
                let (lb, index, id) = find_rule(&config, arn)?;
                if at.as_ref().is_some_and(|(l, i)| (l, *i) != (&lb, index)) {
                    return Err(Elbv2Error::Validation(
                        "The rules must all be of one listener".into(),
                    ));
                }
                at = Some((lb, index));
                let p = priorities.get(n).ok_or_else(|| {
                    Elbv2Error::Validation(format!(
                        "RulePriorities.member.{n}.Priority is required"
                    ))
                })?;
                changes.push((id, priority(p)?));
            }
            let Some((lb, index)) = at else {
                return Err(Elbv2Error::Validation("RulePriorities is required".into()));
            };
            let listener_arn = listener(&lb, index);
            let edit = edit_rules(control, &lb, index, |rules| {
                for (id, priority) in &changes {
                    let rule = find_rule_table(rules, &listener_arn, id)?;
                    rule.insert("id".into(), id.clone().into());
                    rule.insert("priority".into(), i64::from(*priority).into());
                }
                // Two rules of one priority: ELBv2's own refusal.
                let mut seen = std::collections::HashSet::new();
                for rule in rules.iter() {
                    let p = rule
                        .get("priority")
                        .and_then(toml::Value::as_integer)
                        .unwrap_or(0);
                    if !seen.insert(p) {
                        return Err(Elbv2Error::PriorityInUse(u32::try_from(p).unwrap_or(0)));
                    }
                }
                Ok(())
            })
            .await?;
            let config = change(control, vec![edit]).await?;
            let ids: Vec<String> = changes.into_iter().map(|(id, _)| id).collect();
            write_rules(xml, &config, (&lb, index), &ids)
        }
        other => Err(Elbv2Error::InvalidAction(other.to_owned())),
    }
}

/// Moves to the configuration `edits` make: ELBv2's errors when it is refused.
pub(crate) async fn change(control: &Control, edits: Vec<Edit>) -> Result<Arc<Config>, Elbv2Error> {
    control.change(edits).await.map_err(|error| {
        if error.is_refusal() {
            Elbv2Error::Refused(error.reason())
        } else {
            Elbv2Error::Internal(error.reason())
        }
    })
}

/// The edit that sets load balancer `lb`'s listeners, listener `index`'s rules changed by
/// `change`.
async fn edit_rules(
    control: &Control,
    lb: &str,
    index: usize,
    change: impl FnOnce(&mut Vec<toml::Value>) -> Result<(), Elbv2Error>,
) -> Result<Edit, Elbv2Error> {
    edit_listener(control, lb, index, |listener| {
        let mut rules = listener
            .get("rules")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        change(&mut rules)?;
        listener.insert("rules".into(), rules.into());
        Ok(())
    })
    .await
}

/// The edit that sets load balancer `lb`'s listeners, listener `index`'s table changed by
/// `change` (the listeners are an array in the configuration: set whole).
async fn edit_listener(
    control: &Control,
    lb: &str,
    index: usize,
    change: impl FnOnce(&mut toml::Table) -> Result<(), Elbv2Error>,
) -> Result<Edit, Elbv2Error> {
    let table = control.table().await;
    let mut listeners = table
        .get("load_balancers")
        .and_then(|l| l.get(lb))
        .and_then(|l| l.get("listeners"))
        .and_then(toml::Value::as_array)
        .cloned()
        .ok_or_else(|| Elbv2Error::LoadBalancerNotFound(lb.to_owned()))?;
    let listener_table = listeners
        .get_mut(index)
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| Elbv2Error::ListenerNotFound(listener(lb, index)))?;
    change(listener_table)?;
    Ok(Edit::set(&["load_balancers", lb, "listeners"], listeners))
}

/// Whether the rule table `rule` is the rule `id` of the listener `listener_arn`.
fn rule_is(rule: &toml::Value, listener_arn: &str, id: &str) -> bool {
    match rule.get("id").and_then(toml::Value::as_str) {
        Some(own) => own == id,
        None => rule
            .get("priority")
            .and_then(toml::Value::as_integer)
            .and_then(|p| u32::try_from(p).ok())
            .is_some_and(|p| rule_id(listener_arn, p) == id),
    }
}

fn find_rule_table<'a>(
    rules: &'a mut [toml::Value],
    listener_arn: &str,
    id: &str,
) -> Result<&'a mut toml::Table, Elbv2Error> {
    rules
        .iter_mut()
        .find(|r| rule_is(r, listener_arn, id))
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| Elbv2Error::RuleNotFound(rule_arn(listener_arn, id)))
}

/// The ARN portico gives the certificate in the file `certificate` (as the listener's TLS
/// facts name it).
fn certificate_arn(certificate: &str) -> String {
    let stem = std::path::Path::new(certificate)
        .file_stem()
        .map_or_else(|| "certificate".into(), |s| s.to_string_lossy());
    format!("arn:aws:iam::{}:server-certificate/{stem}", account())
}

/// The load balancer and listener index an ARN names.
fn find_listener(config: &Config, arn: &str) -> Result<(String, usize), Elbv2Error> {
    config
        .load_balancers
        .iter()
        .flat_map(|(name, lb)| (0..lb.listeners.len()).map(move |i| (name, i)))
        .find(|(name, i)| listener(name, *i) == arn)
        .map(|(name, i)| (name.clone(), i))
        .ok_or_else(|| Elbv2Error::ListenerNotFound(arn.to_owned()))
}

/// The load balancer, listener index and rule id a rule's ARN names (a default rule is
/// not one that can be changed so).
fn find_rule(config: &Config, arn: &str) -> Result<(String, usize, String), Elbv2Error> {
    let (listener_part, id) = arn
        .rsplit_once('/')
        .ok_or_else(|| Elbv2Error::RuleNotFound(arn.to_owned()))?;
    let listener_arn = listener_part.replacen(":listener-rule/", ":listener/", 1);
    let (lb, index) = find_listener(config, &listener_arn)
        .map_err(|_| Elbv2Error::RuleNotFound(arn.to_owned()))?;
    if id == "default" {
        return Err(Elbv2Error::OperationNotPermitted(
            "Default rule cannot be modified, deleted or moved".into(),
        ));
    }
    let exists = config.load_balancers[&lb].listeners[index]
        .rules
        .iter()
        .any(|r| id_of(&listener_arn, r) == id);
    if !exists {
        return Err(Elbv2Error::RuleNotFound(arn.to_owned()));
    }
    Ok((lb, index, id.to_owned()))
}

fn priority(text: &str) -> Result<u32, Elbv2Error> {
    text.parse::<u32>()
        .ok()
        .filter(|p| (1..=50_000).contains(p))
        .ok_or_else(|| {
            Elbv2Error::Validation(format!(
                "Priority '{text}' must be a number from 1 to 50000"
            ))
        })
}

/// The rule conditions of a request, as the configuration's tables.
fn conditions(params: &Params) -> Result<Vec<toml::Value>, Elbv2Error> {
    let fields = params.members("Conditions", Some("Field"));
    if fields.is_empty() {
        return Err(Elbv2Error::Validation("Conditions is required".into()));
    }
    let mut out = Vec::new();
    for (n, field) in fields {
        let at = format!("Conditions.member.{n}");
        let list = |prefix: &str| -> Vec<toml::Value> {
            params
                .members(prefix, None)
                .into_values()
                .map(|v| toml::Value::from(v.to_owned()))
                .collect()
        };
        let legacy = list(&format!("{at}.Values"));
        let config = |name: &str| list(&format!("{at}.{name}.Values"));
        let mut table = toml::Table::new();
        table.insert("field".into(), field.into());
        let values = match field {
            "path-pattern" => [legacy, config("PathPatternConfig")].concat(),
            "host-header" => [legacy, config("HostHeaderConfig")].concat(),
            "http-request-method" => config("HttpRequestMethodConfig"),
            "source-ip" => config("SourceIpConfig"),
            "http-header" => {
                let name = params
                    .get(&format!("{at}.HttpHeaderConfig.HttpHeaderName"))
                    .ok_or_else(|| {
                        Elbv2Error::Validation(format!(
                            "{at}.HttpHeaderConfig.HttpHeaderName is required"
                        ))
                    })?;
                table.insert("name".into(), name.into());
                config("HttpHeaderConfig")
            }
            "query-string" => {
                let prefix = format!("{at}.QueryStringConfig.Values");
                let values = params.members(&prefix, Some("Value"));
                let keys = params.members(&prefix, Some("Key"));
                values
                    .iter()
                    .map(|(k, value)| {
                        let mut pair = toml::Table::new();
                        if let Some(key) = keys.get(k) {
                            pair.insert("key".into(), (*key).into());
                        }
                        pair.insert("value".into(), (*value).into());
                        toml::Value::Table(pair)
                    })
                    .collect()
            }
            other => {
                return Err(Elbv2Error::Validation(format!(
                    "Condition field '{other}' must be one of [http-header, http-request-method, host-header, path-pattern, query-string, source-ip]"
                )));
            }
        };
        table.insert("values".into(), values.into());
        out.push(toml::Value::Table(table));
    }
    Ok(out)
}

/// The target group name a target group ARN names, when it exists.
pub(crate) fn group_name(config: &Config, arn: &str) -> Result<String, Elbv2Error> {
    config
        .target_groups
        .keys()
        .find(|name| group_arn(name) == arn)
        .cloned()
        .ok_or_else(|| Elbv2Error::TargetGroupNotFound(arn.to_owned()))
}

/// The action of a request (ELBv2's `Actions` or `DefaultActions`, named by `list`: one of
/// them), as the configuration's table.
fn action_table(config: &Config, params: &Params, list: &str) -> Result<toml::Table, Elbv2Error> {
    let types = params.members(list, Some("Type"));
    if types.len() != 1 {
        return Err(Elbv2Error::Validation(
            "One action per rule: forward, fixed-response or redirect".into(),
        ));
    }
    let at = &format!("{list}.member.1");
    let get = |key: &str| params.get(&format!("{at}.{key}"));
    let mut table = toml::Table::new();
    let kind = types.values().next().copied().unwrap_or_default();
    table.insert("type".into(), kind.into());
    match kind {
        "forward" => {
            let weighted = params.members(
                &format!("{at}.ForwardConfig.TargetGroups"),
                Some("TargetGroupArn"),
            );
            if let Some(arn) = get("TargetGroupArn") {
                table.insert("target_group".into(), group_name(config, arn)?.into());
            } else if !weighted.is_empty() {
                let weights =
                    params.members(&format!("{at}.ForwardConfig.TargetGroups"), Some("Weight"));
                let groups = weighted
                    .iter()
                    .map(|(n, arn)| {
                        let mut group = toml::Table::new();
                        group.insert("name".into(), group_name(config, arn)?.into());
                        let weight = weights.get(n).map_or(Ok(1), |w| {
                            w.parse::<i64>().map_err(|_| {
                                Elbv2Error::Validation(format!("Weight '{w}' is not a number"))
                            })
                        })?;
                        group.insert("weight".into(), weight.into());
                        Ok(toml::Value::Table(group))
                    })
                    .collect::<Result<Vec<_>, Elbv2Error>>()?;
                table.insert("target_groups".into(), groups.into());
                let sticky =
                    get("ForwardConfig.TargetGroupStickinessConfig.Enabled") == Some("true");
                if sticky {
                    let seconds = get("ForwardConfig.TargetGroupStickinessConfig.DurationSeconds")
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(3600);
                    table.insert("stickiness_duration_seconds".into(), seconds.into());
                }
            } else {
                return Err(Elbv2Error::Validation(
                    "A forward action needs TargetGroupArn or ForwardConfig.TargetGroups".into(),
                ));
            }
        }
        "fixed-response" => {
            let status = get("FixedResponseConfig.StatusCode").ok_or_else(|| {
                Elbv2Error::Validation("FixedResponseConfig.StatusCode is required".into())
            })?;
            let status: i64 = status.parse().map_err(|_| {
                Elbv2Error::Validation(format!("StatusCode '{status}' is not a number"))
            })?;
            table.insert("status_code".into(), status.into());
            if let Some(content_type) = get("FixedResponseConfig.ContentType") {
                table.insert("content_type".into(), content_type.into());
            }
            if let Some(body) = get("FixedResponseConfig.MessageBody") {
                table.insert("message_body".into(), body.into());
            }
        }
        "redirect" => {
            let status = get("RedirectConfig.StatusCode").ok_or_else(|| {
                Elbv2Error::Validation("RedirectConfig.StatusCode is required".into())
            })?;
            table.insert("status_code".into(), status.into());
            for (from, to) in [
                ("Protocol", "protocol"),
                ("Host", "host"),
                ("Port", "port"),
                ("Path", "path"),
                ("Query", "query"),
            ] {
                if let Some(value) = get(&format!("RedirectConfig.{from}")) {
                    table.insert(to.into(), value.into());
                }
            }
        }
        other => {
            return Err(Elbv2Error::Validation(format!(
                "Action type '{other}' must be one of [forward, fixed-response, redirect]"
            )));
        }
    }
    Ok(table)
}

fn describe_load_balancers(
    config: &Config,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let names: Vec<&str> = params.members("Names", None).into_values().collect();
    let arns: Vec<&str> = params
        .members("LoadBalancerArns", None)
        .into_values()
        .collect();
    let wanted = |name: &str, arn: &str| {
        (names.is_empty() && arns.is_empty()) || names.contains(&name) || arns.contains(&arn)
    };
    let found: Vec<(&String, String)> = config
        .load_balancers
        .keys()
        .map(|name| (name, load_balancer_arn(crate::REGION, account(), name)))
        .filter(|(name, arn)| wanted(name, arn))
        .collect();
    if let Some(missing) = names
        .iter()
        .find(|n| !found.iter().any(|(name, _)| name.as_str() == **n))
    {
        return Err(Elbv2Error::LoadBalancerNotFound((*missing).to_owned()));
    }
    if let Some(missing) = arns
        .iter()
        .find(|a| !found.iter().any(|(_, arn)| arn == *a))
    {
        return Err(Elbv2Error::LoadBalancerNotFound((*missing).to_owned()));
    }
    xml.open("LoadBalancers");
    for (name, arn) in found {
        xml.open("member")
            .leaf("LoadBalancerArn", &arn)
            .leaf("LoadBalancerName", name)
            .leaf(
                "DNSName",
                format!("{name}.{}.elb.portico.internal", crate::REGION),
            )
            .leaf("Type", "application")
            .leaf("Scheme", "internet-facing")
            .leaf("IpAddressType", "ipv4")
            .open("State")
            .leaf("Code", "active")
            .close("State")
            .close("member");
    }
    xml.close("LoadBalancers");
    Ok(())
}

fn describe_listeners(config: &Config, params: &Params, xml: &mut Xml) -> Result<(), Elbv2Error> {
    let wanted: Vec<&str> = params.members("ListenerArns", None).into_values().collect();
    let lb_arn = params.get("LoadBalancerArn");
    if wanted.is_empty() && lb_arn.is_none() {
        return Err(Elbv2Error::Validation(
            "LoadBalancerArn or ListenerArns is required".into(),
        ));
    }
    let mut found = Vec::new();
    for (name, lb) in &config.load_balancers {
        let arn = load_balancer_arn(crate::REGION, account(), name);
        for (i, l) in lb.listeners.iter().enumerate() {
            let listener_arn = listener(name, i);
            if lb_arn == Some(arn.as_str()) || wanted.contains(&listener_arn.as_str()) {
                found.push((arn.clone(), listener_arn, l));
            }
        }
    }
    if let Some(arn) = lb_arn.filter(|_| found.is_empty()) {
        if !config
            .load_balancers
            .keys()
            .any(|n| load_balancer_arn(crate::REGION, account(), n) == arn)
        {
            return Err(Elbv2Error::LoadBalancerNotFound(arn.to_owned()));
        }
    }
    if let Some(missing) = wanted
        .iter()
        .find(|w| !found.iter().any(|(_, arn, _)| arn == *w))
    {
        return Err(Elbv2Error::ListenerNotFound((*missing).to_owned()));
    }
    xml.open("Listeners");
    for (lb_arn, listener_arn, l) in found {
        xml.open("member")
            .leaf("ListenerArn", &listener_arn)
            .leaf("LoadBalancerArn", &lb_arn)
            .leaf("Port", l.port.0)
            .leaf(
                "Protocol",
                match l.protocol {
                    LbProtocol::Http => "HTTP",
                    LbProtocol::Https => "HTTPS",
                },
            );
        if l.protocol == LbProtocol::Https {
            xml.leaf("SslPolicy", "ELBSecurityPolicy-TLS13-1-2-2021-06")
                .open("Certificates");
            for c in &l.certificates {
                xml.open("member")
                    .leaf("CertificateArn", certificate_arn(&c.certificate))
                    .close("member");
            }
            xml.close("Certificates");
        }
        xml.open("DefaultActions");
        write_action(xml, &l.default_action);
        xml.close("DefaultActions").close("member");
    }
    xml.close("Listeners");
    Ok(())
}

/// `DescribeRules` by `RuleArns`.
fn describe_rules_by_arn(
    config: &Config,
    params: &Params,
    xml: &mut Xml,
) -> Result<(), Elbv2Error> {
    let wanted: Vec<&str> = params.members("RuleArns", None).into_values().collect();
    if wanted.is_empty() {
        return Err(Elbv2Error::Validation(
            "ListenerArn or RuleArns is required".into(),
        ));
    }
    xml.open("Rules");
    for arn in wanted {
        let (lb, index, id) = find_rule(config, arn)?;
        write_rule_of(xml, config, (&lb, index), &id);
    }
    xml.close("Rules");
    Ok(())
}

/// `<Rules>` with the rules `ids` of load balancer `lb`'s listener `index`.
fn write_rules(
    xml: &mut Xml,
    config: &Config,
    at: (&str, usize),
    ids: &[String],
) -> Result<(), Elbv2Error> {
    xml.open("Rules");
    for id in ids {
        write_rule_of(xml, config, at, id);
    }
    xml.close("Rules");
    Ok(())
}

/// The rule `id` of load balancer `lb`'s listener `index`, if it is there.
fn write_rule_of(xml: &mut Xml, config: &Config, (lb, index): (&str, usize), id: &str) {
    let listener_arn = listener(lb, index);
    let rules = &config.load_balancers[lb].listeners[index].rules;
    if let Some(rule) = rules.iter().find(|r| id_of(&listener_arn, r) == id) {
        write_rule(
            xml,
            &listener_arn,
            Some(rule),
            &rule.action,
            &rule.conditions,
        );
    }
}

/// One rule (`None`: the listener's default one) as ELBv2 describes it.
fn write_rule(
    xml: &mut Xml,
    listener_arn: &str,
    rule: Option<&portico_config::Rule>,
    action: &Action,
    conditions: &[RuleCondition],
) {
    let (arn, priority) = match rule {
        Some(rule) => (
            rule_arn(listener_arn, &id_of(listener_arn, rule)),
            rule.priority.to_string(),
        ),
        None => (rule_arn(listener_arn, "default"), "default".to_owned()),
    };
    xml.open("member")
        .leaf("RuleArn", arn)
        .leaf("Priority", priority)
        .open("Conditions");
    for c in conditions {
        xml.open("member").leaf("Field", c.field());
        let values = |xml: &mut Xml, values: Vec<String>| {
            xml.open("Values");
            for v in values {
                xml.leaf("member", v);
            }
            xml.close("Values");
        };
        match c {
            RuleCondition::PathPattern { values: v } => {
                values(xml, v.clone());
                xml.open("PathPatternConfig");
                values(xml, v.clone());
                xml.close("PathPatternConfig");
            }
            RuleCondition::HostHeader { values: v } => {
                values(xml, v.clone());
                xml.open("HostHeaderConfig");
                values(xml, v.clone());
                xml.close("HostHeaderConfig");
            }
            RuleCondition::HttpHeader { name, values: v } => {
                xml.open("HttpHeaderConfig").leaf("HttpHeaderName", name);
                values(xml, v.clone());
                xml.close("HttpHeaderConfig");
            }
            RuleCondition::HttpRequestMethod { values: v } => {
                xml.open("HttpRequestMethodConfig");
                values(xml, v.clone());
                xml.close("HttpRequestMethodConfig");
            }
            RuleCondition::SourceIp { values: v } => {
                xml.open("SourceIpConfig");
                values(xml, v.iter().map(ToString::to_string).collect());
                xml.close("SourceIpConfig");
            }
            RuleCondition::QueryString { values: v } => {
                xml.open("QueryStringConfig").open("Values");
                for pair in v {
                    xml.open("member");
                    if let Some(key) = &pair.key {
                        xml.leaf("Key", key);
                    }
                    xml.leaf("Value", &pair.value).close("member");
                }
                xml.close("Values").close("QueryStringConfig");
            }
        }
        xml.close("member");
    }
    xml.close("Conditions").open("Actions");
    write_action(xml, action);
    xml.close("Actions")
        .leaf("IsDefault", rule.is_none())
        .close("member");
}

/// One action as ELBv2 describes it.
fn write_action(xml: &mut Xml, action: &Action) {
    xml.open("member");
    match action {
        Action::Forward {
            target_group,
            target_groups,
            stickiness_duration_seconds,
        } => {
            xml.leaf("Type", "forward");
            if let Some(group) = target_group {
                xml.leaf("TargetGroupArn", group_arn(group));
            }
            xml.open("ForwardConfig").open("TargetGroups");
            let groups: Vec<(String, u32)> = match target_group {
                Some(group) => vec![(group.clone(), 1)],
                None => target_groups
                    .iter()
                    .map(|g| (g.name.clone(), g.weight))
                    .collect(),
            };
            for (name, weight) in groups {
                xml.open("member")
                    .leaf("TargetGroupArn", group_arn(&name))
                    .leaf("Weight", weight)
                    .close("member");
            }
            xml.close("TargetGroups")
                .open("TargetGroupStickinessConfig")
                .leaf("Enabled", stickiness_duration_seconds.is_some());
            if let Some(seconds) = stickiness_duration_seconds {
                xml.leaf("DurationSeconds", seconds);
            }
            xml.close("TargetGroupStickinessConfig")
                .close("ForwardConfig");
        }
        Action::FixedResponse(f) => {
            xml.leaf("Type", "fixed-response")
                .open("FixedResponseConfig")
                .leaf("StatusCode", f.status_code);
            if let Some(content_type) = &f.content_type {
                xml.leaf("ContentType", content_type);
            }
            if let Some(body) = &f.message_body {
                xml.leaf("MessageBody", body);
            }
            xml.close("FixedResponseConfig");
        }
        Action::Redirect(r) => {
            xml.leaf("Type", "redirect")
                .open("RedirectConfig")
                .leaf("Protocol", &r.protocol)
                .leaf("Port", &r.port)
                .leaf("Host", &r.host)
                .leaf("Path", &r.path)
                .leaf("Query", &r.query)
                .leaf("StatusCode", format!("HTTP_{}", r.status_code.code()))
                .close("RedirectConfig");
        }
    }
    xml.leaf("Order", 1).close("member");
}
