//! The gateway features ALB lacks and API Gateway has: JWT authorizers, API keys with usage
//! plans, rate limits, request validation and CORS.
//!
//! A listener and each of its rules may carry a `gateway` table. The listener's applies to
//! every request it receives, before the rules; a rule's to the requests it matches, after
//! the listener's. Authorizers, usage plans and API keys are named once at the top of the
//! file and referred to by name.
//!
//! ```toml
//! [authorizers.main]
//! issuer = "https://auth.example.com"
//! audiences = ["orders"]
//! jwks_file = "keys/jwks.json"
//!
//! [[load_balancers.web.listeners.rules]]
//! priority = 10
//! conditions = [{ field = "path-pattern", values = ["/private"] }]
//! action = { type = "forward", target_group = "hello" }
//! gateway.jwt = { authorizer = "main", scopes = ["orders:read"] }
//! gateway.rate_limit = { requests = 5, period_seconds = 60 }
//! ```

use serde::Deserialize;
use std::fmt;

/// Gateway checks of a listener or a rule. Each is off unless set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Gateway {
    /// Require a JWT verified by a named authorizer (401/403 otherwise).
    #[serde(default)]
    pub jwt: Option<JwtRequirement>,
    /// Require a known API key in `x-api-key`, and count it against its usage plan's quota
    /// (403 without a valid key, 429 over quota). Default false.
    #[serde(default)]
    pub api_key_required: bool,
    /// A token bucket per client address, API key or JWT claim (429 when empty).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Required headers, query parameters and a JSON Schema for the body (400 otherwise).
    #[serde(default)]
    pub validate: Option<Validation>,
    /// Answer CORS preflights and add CORS headers to responses.
    #[serde(default)]
    pub cors: Option<Cors>,
}

impl Gateway {
    /// Whether nothing is switched on.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A rule's or listener's use of a JWT authorizer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirement {
    /// The authorizer's name (`[authorizers.NAME]`).
    pub authorizer: String,
    /// The token must hold at least one of these in its `scope` or `scp` claim (403 if not).
    /// Default none: any valid token passes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A JWT authorizer: whose tokens are accepted, and the keys that verify them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Authorizer {
    /// The `iss` claim a token must carry, exactly.
    pub issuer: String,
    /// A token's `aud` (or, without `aud`, `client_id`) must be one of these.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (relative to the config file), read at start.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Or a JWKS URL (`http://` or `https://`), fetched at start, refreshed every
    /// `jwks_refresh_seconds` and when a token names a key it does not hold.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How long fetched keys are used before they are fetched again. Default 3600.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u32,
    /// Slack allowed on `exp`, `nbf` and `iat` for clocks that disagree, 0–300. Default 60.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u32,
}

fn default_jwks_refresh() -> u32 {
    3600
}
fn default_clock_skew() -> u32 {
    60
}

/// A token bucket: `burst` requests at once, refilled at `requests` per `period_seconds`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period, in seconds. Default 1.
    #[serde(default = "default_rate_period")]
    pub period_seconds: u32,
    /// The bucket's size: requests allowed at once. Default `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Whose bucket a request takes from. Default `source-ip`.
    #[serde(default)]
    pub key: RateLimitKey,
}

fn default_rate_period() -> u32 {
    1
}

impl RateLimit {
    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum RateLimitKey {
    /// `source-ip`: the client's address (from PROXY v2 when the listener reads it).
    #[default]
    SourceIp,
    /// `api-key`: the request's `x-api-key`.
    ApiKey,
    /// `claim:NAME`: a claim of the verified JWT, such as `claim:sub`.
    Claim(String),
}

impl TryFrom<String> for RateLimitKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "source-ip" => Ok(Self::SourceIp),
            "api-key" => Ok(Self::ApiKey),
            _ => match text.strip_prefix("claim:") {
                Some(claim) if !claim.is_empty() => Ok(Self::Claim(claim.to_owned())),
                _ => Err(format!(
                    "{text:?} is not a rate limit key; use \"source-ip\", \"api-key\" or \"claim:NAME\""
                )),
            },
        }
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SourceIp => f.write_str("source-ip"),
            Self::ApiKey => f.write_str("api-key"),
            Self::Claim(name) => write!(f, "claim:{name}"),
        }
    }
}

/// Request validation, done before the target group is called.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Headers that must be present (names, case-insensitive).
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// Query parameters that must be present (names, case-sensitive).
    #[serde(default)]
    pub required_query_parameters: Vec<String>,
    /// A JSON Schema (draft 2020-12) file, relative to the config file, the body must
    /// satisfy. The body is read in full first (at most 1 MB).
    #[serde(default)]
    pub body_schema: Option<String>,
}

/// Cross-origin resource sharing, as API Gateway's HTTP APIs configure it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed (`https://app.example.com`), or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights, or `*`. Default `*`.
    #[serde(default = "any")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights (case-insensitive), or `*`. Default none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may expose to scripts. Default none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight, 0–86400 s. Default: not sent.
    #[serde(default)]
    pub max_age_seconds: Option<u32>,
    /// Allow credentials (cookies, `Authorization`). Not with origin `*`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The API keys clients send in `x-api-key`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// A TOML file (relative to the config file) of more keys, as `[[keys]]` entries shaped
    /// like `keys` here; read at start.
    #[serde(default)]
    pub file: Option<String>,
    /// Keys given inline.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// One API key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (the value is never logged). Default: the key's
    /// position, `key-N`.
    #[serde(default)]
    pub name: Option<String>,
    /// The key itself, 20–128 printable ASCII characters (API Gateway's rule).
    pub value: String,
    /// The usage plan whose quota it counts against. Default: none, unlimited.
    #[serde(default)]
    pub usage_plan: Option<String>,
    /// Whether the key is accepted. Default true.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_enabled() -> bool {
    true
}

/// The API key file's shape.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// A usage plan: how much each of its keys may call.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsagePlan {
    /// Requests per key per period; none is unlimited.
    #[serde(default)]
    pub quota: Option<Quota>,
}

/// A usage plan quota.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per key in one period.
    pub limit: u64,
    /// `DAY`, `WEEK` or `MONTH`, in UTC (weeks start on Monday).
    pub period: QuotaPeriod,
}

/// The period a quota counts over; a new one starts at 00:00 UTC.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuotaPeriod {
    /// A calendar day.
    Day,
    /// Monday to Sunday.
    Week,
    /// A calendar month.
    Month,
}

impl QuotaPeriod {
    /// API Gateway's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "DAY",
            Self::Week => "WEEK",
            Self::Month => "MONTH",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_keys_parse() {
        assert_eq!(
            RateLimitKey::try_from("source-ip".to_owned()),
            Ok(RateLimitKey::SourceIp)
        );
        assert_eq!(
            RateLimitKey::try_from("api-key".to_owned()),
            Ok(RateLimitKey::ApiKey)
        );
        assert_eq!(
            RateLimitKey::try_from("claim:sub".to_owned()),
            Ok(RateLimitKey::Claim("sub".into()))
        );
        assert!(RateLimitKey::try_from("claim:".to_owned()).is_err());
        assert!(RateLimitKey::try_from("ip".to_owned()).is_err());
        assert_eq!(RateLimitKey::Claim("sub".into()).to_string(), "claim:sub");
    }
}
