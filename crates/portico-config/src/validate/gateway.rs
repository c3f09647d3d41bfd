//! The rules for gateway settings: authorizers, API keys, usage plans, and the `gateway`
//! tables of listeners and rules.

use super::Validator;
use crate::error::ConfigError;
use crate::gateway::{ApiKey, Authorizer, Cors, Gateway, RateLimitKey, Validation};
use crate::model::Config;
use std::collections::HashSet;

/// Slack allowed on token times, in seconds.
pub const CLOCK_SKEW_SECONDS: (u32, u32) = (0, 300);
/// How often a JWKS URL may be fetched again, in seconds.
pub const JWKS_REFRESH_SECONDS: (u32, u32) = (60, 86_400);
/// A rate limit's period, in seconds (up to a day).
pub const RATE_PERIOD_SECONDS: (u32, u32) = (1, 86_400);
/// Longest CORS `max_age_seconds`, as API Gateway allows.
pub const MAX_CORS_AGE_SECONDS: u32 = 86_400;
/// API Gateway's lengths for an API key's value.
pub const API_KEY_CHARS: (usize, usize) = (20, 128);

/// Every problem of the API keys at `path` (inline, or read from a key file), each `key`
/// checked against `config`'s usage plans; `seen` carries values and names across calls.
pub fn api_keys(
    path: &str,
    keys: &[ApiKey],
    config: &Config,
    seen: &mut HashSet<String>,
) -> Vec<ConfigError> {
    let mut v = Validator::default();
    for (i, key) in keys.iter().enumerate() {
        let kp = format!("{path}[{i}]");
        let (min, max) = API_KEY_CHARS;
        let len = key.value.chars().count();
        if !(min..=max).contains(&len) || !key.value.chars().all(|c| c.is_ascii_graphic()) {
            v.err(
                format!("{kp}.value"),
                format!("an API key is {min}-{max} printable ASCII characters without spaces"),
            );
        }
        if !seen.insert(format!("value:{}", key.value)) {
            v.err(format!("{kp}.value"), "this key is listed twice");
        }
        if let Some(name) = &key.name {
            if !seen.insert(format!("name:{name}")) {
                v.err(
                    format!("{kp}.name"),
                    format!("another key is named {name:?}"),
                );
            }
        }
        if let Some(plan) = &key.usage_plan {
            v.reference(
                format!("{kp}.usage_plan"),
                "usage plan",
                plan,
                &config.usage_plans,
            );
        }
    }
    v.errors
}

impl Validator {
    /// Authorizers, usage plans and inline API keys.
    pub(super) fn gateway_resources(&mut self, config: &Config) {
        for (name, a) in &config.authorizers {
            self.authorizer(&format!("authorizers.{name}"), a);
        }
        for (name, plan) in &config.usage_plans {
            if plan.quota.as_ref().is_some_and(|q| q.limit == 0) {
                self.err(
                    format!("usage_plans.{name}.quota.limit"),
                    "must be at least 1",
                );
            }
        }
        let errors = api_keys(
            "api_keys.keys",
            &config.api_keys.keys,
            config,
            &mut HashSet::new(),
        );
        self.errors.extend(errors);
    }

    fn authorizer(&mut self, path: &str, a: &Authorizer) {
        if a.issuer.is_empty() {
            self.err(format!("{path}.issuer"), "must not be empty");
        }
        if a.audiences.is_empty() || a.audiences.iter().any(String::is_empty) {
            self.err(
                format!("{path}.audiences"),
                "at least one audience is required, and none may be empty",
            );
        }
        match (&a.jwks_file, &a.jwks_url) {
            (Some(_), Some(_)) | (None, None) => {
                self.err(path, "set exactly one of jwks_file and jwks_url")
            }
            (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                self.err(
                    format!("{path}.jwks_url"),
                    format!("{url:?} is not an http:// or https:// URL"),
                )
            }
            _ => {}
        }
        self.range(
            format!("{path}.jwks_refresh_seconds"),
            a.jwks_refresh_seconds,
            JWKS_REFRESH_SECONDS,
            "s",
        );
        self.range(
            format!("{path}.clock_skew_seconds"),
            a.clock_skew_seconds,
            CLOCK_SKEW_SECONDS,
            "s",
        );
    }

    /// The `gateway` table at `path`; `listener` is its listener's table when `path` is a
    /// rule's (what the listener provides counts for the rule).
    pub(super) fn gateway(
        &mut self,
        path: &str,
        g: &Gateway,
        listener: Option<&Gateway>,
        config: &Config,
    ) {
        let path = format!("{path}.gateway");
        let has_jwt = g.jwt.is_some() || listener.is_some_and(|l| l.jwt.is_some());
        let has_key = g.api_key_required || listener.is_some_and(|l| l.api_key_required);
        if let Some(jwt) = &g.jwt {
            self.reference(
                format!("{path}.jwt.authorizer"),
                "authorizer",
                &jwt.authorizer,
                &config.authorizers,
            );
            if jwt.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
                self.err(
                    format!("{path}.jwt.scopes"),
                    "a scope is a non-empty word without spaces",
                );
            }
        }
        if g.api_key_required && config.api_keys.keys.is_empty() && config.api_keys.file.is_none() {
            self.err(
                format!("{path}.api_key_required"),
                "no API keys are configured ([api_keys])",
            );
        }
        if let Some(limit) = &g.rate_limit {
            let lp = format!("{path}.rate_limit");
            if limit.requests == 0 {
                self.err(format!("{lp}.requests"), "must be at least 1");
            }
            if limit.burst == Some(0) {
                self.err(format!("{lp}.burst"), "must be at least 1");
            }
            self.range(
                format!("{lp}.period_seconds"),
                limit.period_seconds,
                RATE_PERIOD_SECONDS,
                "s",
            );
            match &limit.key {
                RateLimitKey::ApiKey if !has_key => self.err(
                    format!("{lp}.key"),
                    "counting by api-key needs api_key_required on this rule or its listener",
                ),
                RateLimitKey::Claim(_) if !has_jwt => self.err(
                    format!("{lp}.key"),
                    "counting by a claim needs jwt on this rule or its listener",
                ),
                _ => {}
            }
        }
        if let Some(validation) = &g.validate {
            self.validation(&format!("{path}.validate"), validation);
        }
        if let Some(cors) = &g.cors {
            self.cors(&format!("{path}.cors"), cors);
        }
    }

    fn validation(&mut self, path: &str, v: &Validation) {
        for (i, name) in v.required_headers.iter().enumerate() {
            if !is_token(name) {
                self.err(
                    format!("{path}.required_headers[{i}]"),
                    format!("{name:?} is not a header name"),
                );
            }
        }
        for (i, name) in v.required_query_parameters.iter().enumerate() {
            if name.is_empty() {
                self.err(
                    format!("{path}.required_query_parameters[{i}]"),
                    "must not be empty",
                );
            }
        }
        if v.body_schema.as_deref() == Some("") {
            self.err(format!("{path}.body_schema"), "must name a file");
        }
    }

    fn cors(&mut self, path: &str, c: &Cors) {
        if c.allow_origins.is_empty() {
            self.err(
                format!("{path}.allow_origins"),
                "at least one origin (or \"*\") is required",
            );
        }
        for (i, origin) in c.allow_origins.iter().enumerate() {
            if origin != "*" && !is_origin(origin) {
                self.err(
                    format!("{path}.allow_origins[{i}]"),
                    format!("{origin:?} is not an origin (scheme://host[:port]) or \"*\""),
                );
            }
        }
        if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
            self.err(
                format!("{path}.allow_credentials"),
                "credentials cannot be allowed for every origin (\"*\"); list the origins",
            );
        }
        for (field, list) in [
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            for (i, name) in list.iter().enumerate() {
                if name != "*" && !is_token(name) {
                    self.err(
                        format!("{path}.{field}[{i}]"),
                        format!("{name:?} is not a method or header name"),
                    );
                }
            }
        }
        if let Some(age) = c.max_age_seconds {
            self.range(
                format!("{path}.max_age_seconds"),
                age,
                (0, MAX_CORS_AGE_SECONDS),
                "s",
            );
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2): what header names and methods are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `scheme://host[:port]`, with nothing after the authority.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
}
