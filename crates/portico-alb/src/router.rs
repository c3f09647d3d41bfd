//! A listener's rules compiled for matching: the first rule, by priority, whose conditions
//! all hold picks the action; the default action answers the rest.

use crate::fixed_response::FixedResponse;
use crate::redirect::Redirect;
use crate::rules::{Conditions, RequestView};
use crate::sticky;
use crate::target_group::{TargetGroup, stable_hash};
use http::HeaderMap;
use portico_gateway::Policy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Why a listener's rules could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// An action names a target group that does not exist.
    #[error("no target group named {0:?}")]
    UnknownTargetGroup(String),
    /// A `gateway` table cannot be compiled.
    #[error(transparent)]
    Gateway(#[from] portico_gateway::GatewayError),
    /// A condition cannot be compiled.
    #[error("rule {priority}: {reason}")]
    BadCondition {
        /// The rule's priority.
        priority: u32,
        /// What is wrong.
        reason: String,
    },
}

/// A compiled action.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send to a target group chosen by weight.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    FixedResponse(FixedResponse),
}

impl Action {
    /// ALB's name for the action, as access logs write it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Forward(_) => "forward",
            Self::Redirect(_) => "redirect",
            Self::FixedResponse(_) => "fixed-response",
        }
    }
}

/// A `forward` to one or more weighted target groups.
#[derive(Debug, Clone)]
pub struct Forward {
    groups: Vec<WeightedGroup>,
    total_weight: u32,
    stickiness: Option<Duration>,
}

#[derive(Debug, Clone)]
struct WeightedGroup {
    group: TargetGroup,
    weight: u32,
    /// The group's `AWSALBTG` cookie value.
    cookie: u64,
}

/// The group a forward picked, and the group stickiness cookie to set, if any.
#[derive(Debug)]
pub struct Picked<'a> {
    /// Where the request goes.
    pub group: &'a TargetGroup,
    /// `AWSALBTG` value and duration when group stickiness is on.
    pub stick: Option<(u64, Duration)>,
}

impl Forward {
    /// A forward to `groups` (name, weight) with optional group stickiness.
    pub fn new(groups: Vec<(TargetGroup, u32)>, stickiness: Option<Duration>) -> Self {
        let groups: Vec<WeightedGroup> = groups
            .into_iter()
            .map(|(group, weight)| WeightedGroup {
                cookie: stable_hash(group.arn().as_bytes()),
                group,
                weight,
            })
            .collect();
        Self {
            total_weight: groups.iter().map(|g| g.weight).sum(),
            groups,
            stickiness,
        }
    }

    /// Picks the group for a request: the sticky one if the client has a valid cookie for a
    /// group still weighted above 0, else one at random by weight.
    pub fn pick(&self, headers: &HeaderMap) -> Option<Picked<'_>> {
        let chosen = self
            .stickiness
            .and_then(|_| sticky::GROUP.read(headers))
            .and_then(|value| {
                self.groups
                    .iter()
                    .find(|g| g.cookie == value && g.weight > 0)
            })
            .or_else(|| self.by_weight(fastrand::u32(0..self.total_weight.max(1))))?;
        Some(Picked {
            group: &chosen.group,
            stick: self.stickiness.map(|d| (chosen.cookie, d)),
        })
    }

    /// The group whose weight band holds `ticket` (0 ≤ ticket < total weight).
    fn by_weight(&self, mut ticket: u32) -> Option<&WeightedGroup> {
        for g in &self.groups {
            if ticket < g.weight {
                return Some(g);
            }
            ticket -= g.weight;
        }
        self.groups.iter().find(|g| g.weight > 0)
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    priority: u32,
    conditions: Conditions,
    action: Action,
    policy: Option<Arc<Policy>>,
}

/// A listener's rules and default action, with their gateway policies.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    default: Action,
    /// The listener's own policy, applied before any rule's.
    policy: Option<Arc<Policy>>,
    /// Whether any policy answers CORS preflights.
    cors: bool,
}

/// What routing chose for a request.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The matching rule's priority; 0 for the default action, as ALB logs it.
    pub priority: u32,
    /// What to do.
    pub action: &'a Action,
    /// The matching rule's gateway policy, if it has one.
    pub policy: Option<&'a Policy>,
}

/// Compiles a `gateway` table; the rule index is `None` for the listener's own.
pub type PolicyCompiler<'a> = dyn FnMut(
        &portico_config::Gateway,
        Option<usize>,
    ) -> Result<Option<Arc<Policy>>, portico_gateway::GatewayError>
    + 'a;

impl Router {
    /// Compiles a listener's configuration against the load balancer's target groups;
    /// `policies` compiles its `gateway` tables.
    pub fn compile(
        listener: &portico_config::LbListener,
        groups: &BTreeMap<String, TargetGroup>,
        policies: &mut PolicyCompiler<'_>,
    ) -> Result<Self, RouteError> {
        let mut rules = listener
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Rule {
                    policy: policies(&r.gateway, Some(i))?,
                    priority: r.priority,
                    conditions: Conditions::compile(&r.conditions).map_err(|reason| {
                        RouteError::BadCondition {
                            priority: r.priority,
                            reason,
                        }
                    })?,
                    action: compile_action(&r.action, groups)?,
                })
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        rules.sort_by_key(|r| r.priority);
        let policy = policies(&listener.gateway, None)?;
        let cors = policy
            .iter()
            .chain(rules.iter().filter_map(|r| r.policy.as_ref()))
            .any(|p| p.cors().is_some());
        Ok(Self {
            rules,
            default: compile_action(&listener.default_action, groups)?,
            policy,
            cors,
        })
    }

    /// A router without gateway policies.
    pub fn without_policies(
        listener: &portico_config::LbListener,
        groups: &BTreeMap<String, TargetGroup>,
    ) -> Result<Self, RouteError> {
        Self::compile(listener, groups, &mut |_, _| Ok(None))
    }

    /// What the first rule, by priority, whose conditions hold says, or the default action.
    pub fn route(&self, request: &RequestView<'_>) -> Routed<'_> {
        self.rules
            .iter()
            .find(|r| r.conditions.match_all(request))
            .map_or(
                Routed {
                    priority: 0,
                    action: &self.default,
                    policy: None,
                },
                |r| Routed {
                    priority: r.priority,
                    action: &r.action,
                    policy: r.policy.as_deref(),
                },
            )
    }

    /// The listener's own policy.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_deref()
    }

    /// The policy whose CORS settings apply to a routed request: its rule's, else the
    /// listener's.
    pub fn cors_policy<'a>(&'a self, routed: &Routed<'a>) -> Option<&'a Policy> {
        let with_cors = |p: &&Policy| p.cors().is_some();
        routed
            .policy
            .filter(with_cors)
            .or(self.policy().filter(with_cors))
    }

    /// Whether any policy of the listener answers CORS preflights.
    pub fn has_cors(&self) -> bool {
        self.cors
    }
}

fn compile_action(
    action: &portico_config::Action,
    groups: &BTreeMap<String, TargetGroup>,
) -> Result<Action, RouteError> {
    Ok(match action {
        portico_config::Action::Forward {
            stickiness_duration_seconds,
            ..
        } => {
            let weighted = action
                .forward_targets()
                .into_iter()
                .map(|(name, weight)| {
                    groups
                        .get(name)
                        .cloned()
                        .map(|g| (g, weight))
                        .ok_or_else(|| RouteError::UnknownTargetGroup(name.to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Action::Forward(Forward::new(
                weighted,
                stickiness_duration_seconds.map(|s| Duration::from_secs(u64::from(s))),
            ))
        }
        portico_config::Action::Redirect(r) => Action::Redirect(Redirect::compile(r)),
        portico_config::Action::FixedResponse(f) => {
            Action::FixedResponse(FixedResponse::compile(f))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target_group::LambdaTargetGroup;

    fn lambda(name: &str) -> TargetGroup {
        TargetGroup::Lambda(LambdaTargetGroup {
            name: name.into(),
            arn: crate::target_group::arn_for("r", "1", name),
            function: name.into(),
            function_arn: name.into(),
            multi_value_headers: false,
            health_check: portico_config::HealthCheck::default()
                .resolve(portico_config::TargetType::Lambda),
            health: None,
        })
    }

    #[test]
    fn weights_split_traffic_and_zero_gets_nothing() {
        let f = Forward::new(
            vec![(lambda("a"), 80), (lambda("b"), 20), (lambda("c"), 0)],
            None,
        );
        let mut counts = BTreeMap::new();
        for ticket in 0..100 {
            let g = f.by_weight(ticket).unwrap();
            *counts.entry(g.group.name().to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("a"), Some(&80));
        assert_eq!(counts.get("b"), Some(&20));
        assert_eq!(counts.get("c"), None);
    }

    #[test]
    fn group_stickiness_follows_the_cookie_while_the_group_has_weight() {
        let f = Forward::new(
            vec![(lambda("a"), 1), (lambda("b"), 1), (lambda("c"), 0)],
            Some(Duration::from_secs(60)),
        );
        let cookie_of = |name: &str| stable_hash(lambda(name).arn().as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("AWSALBTG={:016x}", cookie_of("b")).parse().unwrap(),
        );
        for _ in 0..50 {
            let picked = f.pick(&headers).unwrap();
            assert_eq!(picked.group.name(), "b");
            assert_eq!(
                picked.stick,
                Some((cookie_of("b"), Duration::from_secs(60)))
            );
        }
        headers.insert(
            http::header::COOKIE,
            format!("AWSALBTG={:016x}", cookie_of("c")).parse().unwrap(),
        );
        for _ in 0..50 {
            assert_ne!(f.pick(&headers).unwrap().group.name(), "c");
        }
    }
}
