//! The rules for listener rules, actions and target groups, with ALB's limits.

use super::Validator;
use crate::model::{Algorithm, Config, HealthCheck, LbListener, Matcher, TargetGroup, TargetType};
use crate::routing::{
    Action, FIXED_RESPONSE_CONTENT_TYPES, FixedResponse, Redirect, RuleCondition,
};
use std::collections::HashSet;

/// ALB's rule priorities.
pub const PRIORITIES: (u32, u32) = (1, 50_000);
/// Condition values per rule (ALB quota, not adjustable).
pub const VALUES_PER_RULE: usize = 5;
/// Values ("match evaluations") in one condition.
pub const VALUES_PER_CONDITION: usize = 3;
/// Wildcards per rule (ALB quota, not adjustable).
pub const WILDCARDS_PER_RULE: usize = 5;
/// Longest condition value.
pub const VALUE_CHARS: usize = 128;
/// Longest `http-header` name.
pub const HEADER_NAME_CHARS: usize = 40;
/// Target groups in one weighted `forward`.
pub const GROUPS_PER_FORWARD: usize = 5;
/// Largest weight of a target group in a `forward`.
pub const MAX_GROUP_WEIGHT: u32 = 999;
/// Longest stickiness, in seconds: 7 days.
pub const MAX_STICKINESS_SECONDS: u32 = 604_800;
/// Longest `fixed-response` body, in characters.
pub const FIXED_BODY_CHARS: usize = 1024;

impl Validator {
    /// Checks the rules of one listener.
    pub(super) fn rules(&mut self, path: &str, listener: &LbListener, config: &Config) {
        let mut priorities = HashSet::new();
        for (r, rule) in listener.rules.iter().enumerate() {
            let rp = format!("{path}.rules[{r}]");
            self.range(format!("{rp}.priority"), rule.priority, PRIORITIES, "");
            if !priorities.insert(rule.priority) {
                self.err(
                    format!("{rp}.priority"),
                    format!(
                        "priority {} is used by another rule of this listener",
                        rule.priority
                    ),
                );
            }
            self.conditions(&rp, &rule.conditions);
            let https = listener.protocol == crate::model::LbProtocol::Https;
            self.action(&format!("{rp}.action"), &rule.action, config, https);
            self.gateway(&rp, &rule.gateway, Some(&listener.gateway), config);
        }
    }

    fn conditions(&mut self, rp: &str, conditions: &[RuleCondition]) {
        if conditions.is_empty() {
            self.err(
                format!("{rp}.conditions"),
                "a rule needs at least one condition",
            );
        }
        let mut once = HashSet::new();
        let (mut values, mut wildcards) = (0, 0);
        for (c, condition) in conditions.iter().enumerate() {
            let cp = format!("{rp}.conditions[{c}]");
            let field = condition.field();
            let single = !matches!(
                condition,
                RuleCondition::HttpHeader { .. } | RuleCondition::QueryString { .. }
            );
            if single && !once.insert(field) {
                self.err(&cp, format!("a rule may have one {field} condition"));
            }
            // The texts limited in length and counted for wildcards, and the value count.
            let (texts, count): (Vec<&str>, usize) = match condition {
                RuleCondition::HostHeader { values }
                | RuleCondition::PathPattern { values }
                | RuleCondition::HttpRequestMethod { values } => {
                    (values.iter().map(String::as_str).collect(), values.len())
                }
                RuleCondition::HttpHeader { name, values } => {
                    let token = name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if name.is_empty() || name.len() > HEADER_NAME_CHARS || !token {
                        self.err(
                            format!("{cp}.name"),
                            format!("a header name is 1-{HEADER_NAME_CHARS} token characters"),
                        );
                    }
                    (values.iter().map(String::as_str).collect(), values.len())
                }
                RuleCondition::QueryString { values } => (
                    values
                        .iter()
                        .flat_map(|q| q.key.iter().map(String::as_str).chain([q.value.as_str()]))
                        .collect(),
                    values.len(),
                ),
                RuleCondition::SourceIp { values } => (Vec::new(), values.len()),
            };
            if count == 0 {
                self.err(format!("{cp}.values"), "at least one value is required");
            }
            if count > VALUES_PER_CONDITION {
                self.err(
                    format!("{cp}.values"),
                    format!("{count} values: a condition has at most {VALUES_PER_CONDITION}"),
                );
            }
            values += count;
            for (v, text) in texts.iter().enumerate() {
                if text.chars().count() > VALUE_CHARS {
                    self.err(
                        format!("{cp}.values[{v}]"),
                        format!("a value is at most {VALUE_CHARS} characters"),
                    );
                }
            }
            match condition {
                RuleCondition::HttpRequestMethod { values } => {
                    for (v, m) in values.iter().enumerate() {
                        let ok = !m.is_empty()
                            && m.len() <= 40
                            && m.bytes()
                                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
                        if !ok {
                            self.err(
                                format!("{cp}.values[{v}]"),
                                "a method is 1-40 of A-Z, `-` or `_` (methods are case-sensitive)",
                            );
                        }
                    }
                }
                RuleCondition::HostHeader { values } => {
                    for (v, host) in values.iter().enumerate() {
                        // ALB: a `.`, and only letters after the last one.
                        let tld_ok = host.rsplit_once('.').is_some_and(|(_, tld)| {
                            !tld.is_empty() && tld.chars().all(|c| c.is_ascii_alphabetic())
                        });
                        if !tld_ok {
                            self.err(
                                format!("{cp}.values[{v}]"),
                                "a host name has a `.` and only letters after the last one",
                            );
                        }
                    }
                }
                RuleCondition::HttpHeader { name, .. } if name.eq_ignore_ascii_case("host") => {
                    self.err(
                        format!("{cp}.name"),
                        "an http-header condition cannot test Host: use a host-header condition",
                    );
                }
                RuleCondition::PathPattern { values } => {
                    for (v, p) in values.iter().enumerate() {
                        if !p.starts_with('/') && !p.starts_with('*') {
                            self.err(
                                format!("{cp}.values[{v}]"),
                                "a path pattern starts with `/`",
                            );
                        }
                    }
                }
                _ => {}
            }
            wildcards += texts.iter().map(|t| wildcard_count(t)).sum::<usize>();
        }
        if values > VALUES_PER_RULE {
            self.err(
                format!("{rp}.conditions"),
                format!("{values} values: a rule has at most {VALUES_PER_RULE}"),
            );
        }
        if wildcards > WILDCARDS_PER_RULE {
            self.err(
                format!("{rp}.conditions"),
                format!("{wildcards} wildcards: a rule has at most {WILDCARDS_PER_RULE}"),
            );
        }
    }

    /// Checks one action (a rule's or a listener's default) of a listener that is HTTPS or
    /// not.
    pub(super) fn action(&mut self, ap: &str, action: &Action, config: &Config, https: bool) {
        match action {
            Action::Forward {
                target_group,
                target_groups,
                stickiness_duration_seconds,
            } => {
                match (target_group, target_groups.len()) {
                    (Some(tg), 0) => self.reference(
                        format!("{ap}.target_group"),
                        "target group",
                        tg,
                        &config.target_groups,
                    ),
                    (None, 1..=GROUPS_PER_FORWARD) => {
                        let mut seen = HashSet::new();
                        for (i, w) in target_groups.iter().enumerate() {
                            let wp = format!("{ap}.target_groups[{i}]");
                            self.reference(
                                format!("{wp}.name"),
                                "target group",
                                &w.name,
                                &config.target_groups,
                            );
                            if !seen.insert(&w.name) {
                                self.err(&wp, format!("{:?} is listed twice", w.name));
                            }
                            if w.weight > MAX_GROUP_WEIGHT {
                                self.err(
                                    format!("{wp}.weight"),
                                    format!("{} is over {MAX_GROUP_WEIGHT}", w.weight),
                                );
                            }
                        }
                        if target_groups.iter().all(|w| w.weight == 0) {
                            self.err(
                                format!("{ap}.target_groups"),
                                "at least one weight must be above 0",
                            );
                        }
                    }
                    (None, 0) | (Some(_), _) => {
                        self.err(ap, "set exactly one of `target_group` or `target_groups`")
                    }
                    (None, n) => self.err(
                        format!("{ap}.target_groups"),
                        format!("{n} groups: a forward has at most {GROUPS_PER_FORWARD}"),
                    ),
                }
                if let Some(secs) = stickiness_duration_seconds {
                    self.range(
                        format!("{ap}.stickiness_duration_seconds"),
                        *secs,
                        (1, MAX_STICKINESS_SECONDS),
                        "s",
                    );
                }
            }
            Action::Redirect(r) => self.redirect(ap, r, https),
            Action::FixedResponse(f) => self.fixed_response(ap, f),
        }
    }

    fn redirect(&mut self, ap: &str, r: &Redirect, https: bool) {
        if r.is_identity() {
            self.err(
                ap,
                "this redirect sends a request to its own URL; change at least one of protocol, host, port or path",
            );
        } else if r.keeps_the_address() {
            // ALB: "You must modify at least one of the following components: protocol,
            // port, hostname or path"; the query alone is not enough.
            self.err(
                ap,
                "a redirect changes at least one of protocol, host, port or path; the query alone is not enough",
            );
        }
        if https && r.protocol == "HTTP" {
            self.err(
                format!("{ap}.protocol"),
                "an HTTPS listener cannot redirect to HTTP",
            );
        }
        // Where ALB allows each placeholder: the host only #{host}; the path #{host},
        // #{path} and #{port}; the query any of them.
        for (key, value, allowed) in [
            ("host", &r.host, &["host"][..]),
            ("path", &r.path, &["host", "path", "port"][..]),
            (
                "query",
                &r.query,
                &["protocol", "host", "port", "path", "query"][..],
            ),
        ] {
            for name in placeholders(value) {
                if !allowed.contains(&name) {
                    self.err(
                        format!("{ap}.{key}"),
                        format!(
                            "#{{{name}}} is not allowed here (the {key} takes {})",
                            allowed
                                .iter()
                                .map(|a| format!("#{{{a}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
        }
        if !matches!(r.protocol.as_str(), "HTTP" | "HTTPS" | "#{protocol}") {
            self.err(format!("{ap}.protocol"), "is HTTP, HTTPS or #{protocol}");
        }
        let port_ok = r.port == "#{port}" || r.port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            self.err(format!("{ap}.port"), "is 1-65535 or #{port}");
        }
        if r.host.is_empty() {
            self.err(format!("{ap}.host"), "must not be empty");
        }
        if !r.path.starts_with('/') {
            self.err(format!("{ap}.path"), "must start with `/`");
        }
        if r.query.starts_with('?') {
            self.err(format!("{ap}.query"), "is written without the leading `?`");
        }
        for (key, value) in [("host", &r.host), ("path", &r.path), ("query", &r.query)] {
            if value.chars().count() > VALUE_CHARS {
                self.err(
                    format!("{ap}.{key}"),
                    format!("is at most {VALUE_CHARS} characters"),
                );
            }
        }
    }

    fn fixed_response(&mut self, ap: &str, f: &FixedResponse) {
        if !matches!(f.status_code, 200..=299 | 400..=599) {
            self.err(
                format!("{ap}.status_code"),
                format!("{} is not a 2XX, 4XX or 5XX status", f.status_code),
            );
        }
        if let Some(ct) = &f.content_type {
            if !FIXED_RESPONSE_CONTENT_TYPES.contains(&ct.as_str()) {
                self.err(
                    format!("{ap}.content_type"),
                    format!("is one of {}", FIXED_RESPONSE_CONTENT_TYPES.join(", ")),
                );
            }
        }
        if let Some(body) = &f.message_body {
            let n = body.chars().count();
            if n > FIXED_BODY_CHARS {
                self.err(
                    format!("{ap}.message_body"),
                    format!("{n} characters is over the limit of {FIXED_BODY_CHARS}"),
                );
            }
        }
    }

    /// Checks a target group's type-specific settings.
    pub(super) fn target_group_settings(&mut self, path: &str, tg: &TargetGroup, config: &Config) {
        match tg.target_type {
            TargetType::Lambda => {
                // `NAME`, or `NAME:QUALIFIER` (a version or an alias). None: made empty, as
                // ALB makes one (`create-target-group`), its function registered afterwards;
                // until then it answers 503.
                if let Some(f) = &tg.function {
                    match f.split_once(':') {
                        None => self.reference(
                            format!("{path}.function"),
                            "function",
                            f,
                            &config.functions,
                        ),
                        Some((name, qualifier)) => match config.functions.get(name) {
                            Some(function) if function.has_qualifier(qualifier) => {}
                            Some(_) => self.err(
                                format!("{path}.function"),
                                format!("function {name} has no version or alias {qualifier:?}"),
                            ),
                            None => self.reference(
                                format!("{path}.function"),
                                "function",
                                name,
                                &config.functions,
                            ),
                        },
                    }
                }
                if !tg.targets.is_empty() {
                    self.err(
                        format!("{path}.targets"),
                        "a lambda target group has its function as its one target",
                    );
                }
                if tg.stickiness_duration_seconds.is_some() {
                    self.err(
                        format!("{path}.stickiness_duration_seconds"),
                        "stickiness is not available for lambda target groups",
                    );
                }
                if tg.slow_start_seconds != 0 {
                    self.err(
                        format!("{path}.slow_start_seconds"),
                        "slow start is not available for lambda target groups",
                    );
                }
            }
            TargetType::Instance | TargetType::Ip => {
                if tg.function.is_some() {
                    self.err(
                        format!("{path}.function"),
                        "only lambda target groups have a function",
                    );
                }
                if tg.multi_value_headers_enabled {
                    self.err(
                        format!("{path}.multi_value_headers_enabled"),
                        "is a lambda target group attribute",
                    );
                }
                let mut seen = HashSet::new();
                for (i, t) in tg.targets.iter().enumerate() {
                    if !seen.insert(t) {
                        self.err(
                            format!("{path}.targets[{i}]"),
                            format!("{t} is listed twice"),
                        );
                    }
                    if t.port() == 0 {
                        self.err(format!("{path}.targets[{i}]"), "a target needs a port");
                    }
                }
            }
        }
        if tg.slow_start_seconds != 0 && !(30..=900).contains(&tg.slow_start_seconds) {
            self.err(
                format!("{path}.slow_start_seconds"),
                format!(
                    "{} s: slow start is 0 (off) or 30-900 s",
                    tg.slow_start_seconds
                ),
            );
        }
        if tg.slow_start_seconds != 0
            && tg.load_balancing_algorithm == Algorithm::LeastOutstandingRequests
        {
            self.err(
                format!("{path}.slow_start_seconds"),
                "slow start is not available with least_outstanding_requests",
            );
        }
        self.range(
            format!("{path}.deregistration_delay_seconds"),
            tg.deregistration_delay_seconds,
            (0, 3600),
            "s",
        );
        if let Some(secs) = tg.stickiness_duration_seconds {
            self.range(
                format!("{path}.stickiness_duration_seconds"),
                secs,
                (1, MAX_STICKINESS_SECONDS),
                "s",
            );
        }
        self.health_check(&format!("{path}.health_check"), &tg.health_check);
    }

    fn health_check(&mut self, hp: &str, hc: &HealthCheck) {
        let within = |v: Option<f64>, lo: f64, hi: f64| {
            v.is_none_or(|v| v.is_finite() && (lo..=hi).contains(&v))
        };
        if !within(hc.interval_seconds, 0.1, 300.0) {
            self.err(
                format!("{hp}.interval_seconds"),
                "is 5-300 s (portico allows down to 0.1 s)",
            );
        }
        if !within(hc.timeout_seconds, 0.1, 120.0) {
            self.err(
                format!("{hp}.timeout_seconds"),
                "is 2-120 s (portico allows down to 0.1 s)",
            );
        }
        if let (Some(i), Some(t)) = (hc.interval_seconds, hc.timeout_seconds) {
            if t >= i {
                self.err(
                    format!("{hp}.timeout_seconds"),
                    "must be less than interval_seconds",
                );
            }
        }
        for (key, v) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            if let Some(n) = v {
                self.range(format!("{hp}.{key}"), n, (2, 10), "");
            }
        }
        if let Some(p) = &hc.path {
            if !p.starts_with('/') || p.len() > 1024 {
                self.err(
                    format!("{hp}.path"),
                    "starts with `/` and is at most 1024 characters",
                );
            }
        }
        if let Some(Err(reason)) = hc.matcher.as_deref().map(Matcher::parse) {
            self.err(format!("{hp}.matcher"), reason);
        }
    }
}

/// Unescaped `*` and `?` in a condition value.
fn wildcard_count(text: &str) -> usize {
    let mut n = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' => n += 1,
            _ => {}
        }
    }
    n
}

/// The names of the `#{name}` placeholders in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("#{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        found.push(&after[..end]);
        rest = &after[end + 1..];
    }
    found
}
