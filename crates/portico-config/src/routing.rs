//! Listener rules and actions, in ALB's terms: each rule has a priority, conditions that must
//! all hold, and one action; the listener's default action answers everything else.
//!
//! ```toml
//! [[load_balancers.web.listeners.rules]]
//! priority = 10
//! conditions = [{ field = "path-pattern", values = ["/static/*"] }]
//! action = { type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "static" }
//! ```
//!
//! Condition and action names are ALB's (`host-header`, `fixed-response`…); the limits on them
//! are checked in [`crate::validate`].

use ipnet::IpNet;
use serde::Deserialize;

/// One listener rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Rule {
    /// 1–50000, unique per listener; the lowest matching priority wins.
    pub priority: u32,
    /// Conditions, all of which must hold (at least one).
    pub conditions: Vec<RuleCondition>,
    /// What to do with a matching request.
    pub action: Action,
    /// Gateway checks on the requests this rule matches, after the listener's. Default none.
    #[serde(default)]
    pub gateway: crate::gateway::Gateway,
    /// The rule's id, the end of its ARN (`aws elbv2 create-rule` sets it, so that its ARN
    /// stays when its priority changes). Default: one made from the priority.
    #[serde(default)]
    pub id: Option<String>,
}

/// A rule condition; its values are OR'ed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "field", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RuleCondition {
    /// The `Host` header (without port); case-insensitive, `*` and `?` wildcards.
    HostHeader {
        /// Host patterns.
        values: Vec<String>,
    },
    /// The path, without the query string; case-sensitive, `*` and `?` wildcards.
    PathPattern {
        /// Path patterns.
        values: Vec<String>,
    },
    /// Any value of the named header; case-insensitive, wildcards in values.
    HttpHeader {
        /// The header's name (no wildcards).
        name: String,
        /// Value patterns.
        values: Vec<String>,
    },
    /// The request method; case-sensitive, no wildcards.
    HttpRequestMethod {
        /// Method names.
        values: Vec<String>,
    },
    /// A `key=value` pair of the query string, compared as sent; case-insensitive, wildcards.
    QueryString {
        /// Pairs; a pair without a key matches any key.
        values: Vec<QueryValue>,
    },
    /// The client's address (from the PROXY v2 header when the listener reads one).
    SourceIp {
        /// Networks in CIDR notation.
        values: Vec<IpNet>,
    },
}

impl RuleCondition {
    /// ALB's name for the condition type.
    pub fn field(&self) -> &'static str {
        match self {
            Self::HostHeader { .. } => "host-header",
            Self::PathPattern { .. } => "path-pattern",
            Self::HttpHeader { .. } => "http-header",
            Self::HttpRequestMethod { .. } => "http-request-method",
            Self::QueryString { .. } => "query-string",
            Self::SourceIp { .. } => "source-ip",
        }
    }
}

/// One `key=value` pattern of a `query-string` condition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryValue {
    /// The key's pattern; none matches any key.
    #[serde(default)]
    pub key: Option<String>,
    /// The value's pattern.
    pub value: String,
}

/// A listener or rule action.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Send the request to one target group, or to several by weight.
    Forward {
        /// One target group, by name.
        #[serde(default)]
        target_group: Option<String>,
        /// Or up to 5 weighted target groups.
        #[serde(default)]
        target_groups: Vec<WeightedTargetGroup>,
        /// Group stickiness: a client keeps going to the group it was first sent to for
        /// this long (1 s–7 days), through the `AWSALBTG` cookie. Default off.
        #[serde(default)]
        stickiness_duration_seconds: Option<u32>,
    },
    /// Answer with a redirect built from the request's parts.
    Redirect(Redirect),
    /// Answer with a fixed status, content type and body.
    FixedResponse(FixedResponse),
}

impl Action {
    /// A `forward` to one target group.
    pub fn forward(target_group: &str) -> Self {
        Self::Forward {
            target_group: Some(target_group.to_owned()),
            target_groups: Vec::new(),
            stickiness_duration_seconds: None,
        }
    }

    /// The target groups a `forward` sends to, with weights (one group: weight 1).
    pub fn forward_targets(&self) -> Vec<(&str, u32)> {
        match self {
            Self::Forward {
                target_group,
                target_groups,
                ..
            } => target_group
                .iter()
                .map(|tg| (tg.as_str(), 1))
                .chain(target_groups.iter().map(|w| (w.name.as_str(), w.weight)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A target group of a weighted `forward`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetGroup {
    /// The target group's name.
    pub name: String,
    /// 0–999; a group's share is its weight over the sum. Default 1.
    #[serde(default = "default_group_weight")]
    pub weight: u32,
}

fn default_group_weight() -> u32 {
    1
}

/// A `redirect` action. Each part may use the placeholders `#{protocol}`, `#{host}`,
/// `#{port}`, `#{path}` (the original path without its leading `/`) and `#{query}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `HTTP`, `HTTPS` or `#{protocol}` (the default).
    #[serde(default = "keep_protocol")]
    pub protocol: String,
    /// Host name; default `#{host}`.
    #[serde(default = "keep_host")]
    pub host: String,
    /// Port, 1–65535 or `#{port}` (the default).
    #[serde(default = "keep_port")]
    pub port: String,
    /// Absolute path starting with `/`; default `/#{path}`.
    #[serde(default = "keep_path")]
    pub path: String,
    /// Query string without the `?`; default `#{query}`.
    #[serde(default = "keep_query")]
    pub query: String,
    /// `HTTP_301` (permanent) or `HTTP_302` (temporary).
    pub status_code: RedirectStatus,
}

fn keep_protocol() -> String {
    "#{protocol}".to_owned()
}
fn keep_host() -> String {
    "#{host}".to_owned()
}
fn keep_port() -> String {
    "#{port}".to_owned()
}
fn keep_path() -> String {
    "/#{path}".to_owned()
}
fn keep_query() -> String {
    "#{query}".to_owned()
}

impl Redirect {
    /// Whether protocol, host, port and path are all left as they were (only the query may
    /// change), which ALB refuses.
    pub fn keeps_the_address(&self) -> bool {
        self.protocol == keep_protocol()
            && self.host == keep_host()
            && self.port == keep_port()
            && self.path == keep_path()
    }

    /// Whether every part is left as it was, which would redirect a request to itself.
    pub fn is_identity(&self) -> bool {
        self.protocol == keep_protocol()
            && self.host == keep_host()
            && self.port == keep_port()
            && self.path == keep_path()
            && self.query == keep_query()
    }
}

/// The status of a redirect, named as ALB names it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum RedirectStatus {
    /// 301 Moved Permanently.
    #[serde(rename = "HTTP_301")]
    Permanent,
    /// 302 Found.
    #[serde(rename = "HTTP_302")]
    Temporary,
}

impl RedirectStatus {
    /// The numeric status.
    pub fn code(self) -> u16 {
        match self {
            Self::Permanent => 301,
            Self::Temporary => 302,
        }
    }
}

/// A `fixed-response` action.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    /// A 2XX, 4XX or 5XX status.
    pub status_code: u16,
    /// One of ALB's: `text/plain`, `text/css`, `text/html`, `application/javascript`,
    /// `application/json`. Default: none sent.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Up to 1024 characters. Default empty.
    #[serde(default)]
    pub message_body: Option<String>,
}

/// Content types a `fixed-response` may have (ALB's list).
pub const FIXED_RESPONSE_CONTENT_TYPES: [&str; 5] = [
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
];
