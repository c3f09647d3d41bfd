//! The gateway features ALB lacks and API Gateway has, applied by the load balancer before
//! a target group is called: JWT authorizers ([`jwt`], keys from [`jwks`]), API keys and
//! usage plans ([`api_keys`]), rate limits ([`rate_limit`]), request validation
//! ([`validation`]) and CORS ([`cors`]). Refusals are answered as API Gateway answers them
//! ([`rejection`]); decisions and limits are counted in [`metrics`]. [`token`] mints test
//! tokens (`portico token`).
//!
//! [`Gateway`] holds what the whole process shares (authorizers with their keys, API keys
//! and their quota counts, metrics); [`Policy`] is one listener's or rule's `gateway` table,
//! compiled once at start. For one request a policy runs, in order:
//! 1. CORS preflights are answered by the load balancer with [`Policy::cors`], before
//!    anything else (browsers send no credentials on them);
//! 2. [`Policy::admit`]: the JWT (401/403), the API key (403), the rate limit (429), the
//!    key's quota (429 `Limit Exceeded`), required headers and query parameters (400);
//! 3. [`Policy::check_body`]: the JSON Schema, when there is one (400).

pub mod api_keys;
pub mod cors;
pub mod fetch;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod rate_limit;
pub mod rejection;
pub mod token;
pub mod validation;

use crate::api_keys::KeyStore;
use crate::cors::CorsPolicy;
use crate::jwks::{Jwks, JwksError};
use crate::jwt::{Authorizer, Verified};
use crate::metrics::{Labels, Metrics};
use crate::rate_limit::{BucketKey, RateLimiter};
use crate::validation::{RequestValidator, SchemaError};
use http::HeaderMap;
use portico_config::{Config, RateLimitKey};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use rejection::Rejection;

/// The request header that carries a verified JWT's claims to targets: the claims as
/// JSON, base64url-encoded without padding. Set only by the gateway; a client's own is
/// removed. A `HeaderName`, so the request path never parses it.
pub const CLAIMS_HEADER: http::HeaderName = http::HeaderName::from_static("x-portico-jwt-claims");

/// How often rate limit buckets that have refilled are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An authorizer's JWKS file is unusable.
    #[error("authorizers.{name}: {source}")]
    Jwks {
        /// The authorizer.
        name: String,
        /// Why.
        source: JwksError,
    },
    /// A body schema cannot be read or is not JSON.
    #[error("{path}.validate.body_schema: {file}: {reason}")]
    SchemaFile {
        /// The gateway table's key path.
        path: String,
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A validation setting cannot be compiled.
    #[error("{path}.validate: {source}")]
    Validation {
        /// The gateway table's key path.
        path: String,
        /// Why.
        source: SchemaError,
    },
    /// The API key file is unusable.
    #[error("api_keys.file: {0}")]
    ApiKeys(portico_config::LoadError),
    /// A policy names an authorizer this node did not start.
    #[error("{path}.jwt: no authorizer named {name:?}")]
    UnknownAuthorizer {
        /// The gateway table's key path.
        path: String,
        /// The name.
        name: String,
    },
}

/// What the process's gateway policies share.
#[derive(Debug)]
pub struct Gateway {
    authorizers: HashMap<String, Arc<Authorizer>>,
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    /// Each policy's rate limiter, with its labels and settings.
    limiters: Mutex<Vec<Limiter>>,
    /// The limiters of the gateway this one follows, for policies that did not change.
    inherited: Vec<Limiter>,
}

/// A policy's rate limiter, with its metric labels and the settings it was made with.
type Limiter = (Labels, portico_config::gateway::RateLimit, Arc<RateLimiter>);

/// Unix time now, in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Gateway {
    /// Loads the authorizers `config`'s load balancers use (JWKS files read, URLs fetched),
    /// the API keys (inline and from their file) and usage plans, and starts pruning rate
    /// limit buckets until `shutdown`. Paths are relative to `base`. A gateway that
    /// follows `previous` (a configuration reloaded) keeps its metrics, the counts of its
    /// usage plans whose quota did not change, and the buckets of its rate limits whose
    /// policy did not change.
    pub async fn start(
        config: &Config,
        base: &Path,
        (tasks, shutdown): (&TaskTracker, &CancellationToken),
        previous: Option<&Gateway>,
    ) -> Result<Arc<Self>, GatewayError> {
        let used: std::collections::BTreeSet<&str> = config
            .load_balancers
            .values()
            .flat_map(|lb| &lb.listeners)
            .flat_map(|l| std::iter::once(&l.gateway).chain(l.rules.iter().map(|r| &r.gateway)))
            .filter_map(|g| g.jwt.as_ref().map(|j| j.authorizer.as_str()))
            .collect();
        let mut authorizers = HashMap::new();
        for (name, a) in config
            .authorizers
            .iter()
            .filter(|(n, _)| used.contains(n.as_str()))
        {
            let jwks = match (&a.jwks_file, &a.jwks_url) {
                (Some(file), _) => {
                    Arc::new(Jwks::from_file(&base.join(file)).map_err(|source| {
                        GatewayError::Jwks {
                            name: name.clone(),
                            source,
                        }
                    })?)
                }
                (None, Some(url)) => {
                    let refresh = Duration::from_secs(u64::from(a.jwks_refresh_seconds));
                    Jwks::from_url(url, refresh, tasks, shutdown).await
                }
                (None, None) => Arc::new(Jwks::fixed(jwks::KeySet::default())),
            };
            let authorizer = Authorizer::new(
                a.issuer.clone(),
                a.audiences.clone(),
                a.clock_skew_seconds,
                jwks,
            );
            authorizers.insert(name.clone(), Arc::new(authorizer));
        }
        let mut keys = config.api_keys.keys.clone();
        if let Some(file) = &config.api_keys.file {
            keys.extend(
                portico_config::load_api_key_file(&base.join(file), config)
                    .map_err(GatewayError::ApiKeys)?,
            );
        }
        let gateway = Arc::new(Self {
            authorizers,
            keys: Arc::new(KeyStore::new(
                &keys,
                &config.usage_plans,
                previous.map(|p| &*p.keys),
            )),
            metrics: previous.map_or_else(Default::default, |p| p.metrics.clone()),
            limiters: Mutex::default(),
            inherited: previous.map_or_else(Vec::new, |p| {
                p.limiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            }),
        });
        tasks.spawn(gateway.clone().prune(shutdown.clone()));
        Ok(gateway)
    }

    /// Compiles the `gateway` table at key path `path` (also its name in metrics); `None`
    /// when nothing in it is on. Schema files are relative to `base`.
    pub fn policy(
        &self,
        spec: &portico_config::Gateway,
        path: &str,
        base: &Path,
    ) -> Result<Option<Arc<Policy>>, GatewayError> {
        if spec.is_empty() {
            return Ok(None);
        }
        let jwt = spec
            .jwt
            .as_ref()
            .map(|j| {
                let authorizer = self
                    .authorizers
                    .get(&j.authorizer)
                    .cloned()
                    .ok_or_else(|| GatewayError::UnknownAuthorizer {
                        path: path.to_owned(),
                        name: j.authorizer.clone(),
                    })?;
                Ok::<_, GatewayError>(JwtCheck {
                    authorizer,
                    scopes: j.scopes.clone(),
                    scopes_text: j.scopes.join(" "),
                })
            })
            .transpose()?;
        let validator = spec
            .validate
            .as_ref()
            .map(|v| {
                let schema = v
                    .body_schema
                    .as_ref()
                    .map(|file| read_schema(&base.join(file), path))
                    .transpose()?;
                RequestValidator::new(v, schema.as_ref()).map_err(|source| {
                    GatewayError::Validation {
                        path: path.to_owned(),
                        source,
                    }
                })
            })
            .transpose()?;
        let limiter = spec.rate_limit.as_ref().map(|spec| {
            let labels: Labels = vec![("policy", path.to_owned()), ("key", spec.key.to_string())];
            let limiter = self
                .inherited
                .iter()
                .find(|(l, s, _)| *l == labels && s == spec)
                .map_or_else(|| Arc::new(RateLimiter::new(spec)), |(_, _, l)| l.clone());
            self.metrics
                .rate_limit_burst
                .get_or_create(&labels)
                .set(i64::from(limiter.burst()));
            self.metrics
                .rate_limit_per_second
                .get_or_create(&labels)
                .set(limiter.per_second());
            self.limiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((labels, spec.clone(), limiter.clone()));
            limiter
        });
        let counter = |outcome: &'static str| {
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("policy", path.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .clone()
        };
        let outcomes = OUTCOMES.iter().map(|o| (*o, counter(o))).collect();
        Ok(Some(Arc::new(Policy {
            jwt,
            keys: spec.api_key_required.then(|| self.keys.clone()),
            limiter,
            validator,
            cors: spec.cors.as_ref().map(CorsPolicy::new),
            outcomes,
        })))
    }

    /// The metrics, with quota and bucket gauges brought up to date.
    pub fn encode_metrics(&self) -> String {
        let now = unix_now();
        for plan in self.keys.plans() {
            let Some(limit) = plan.limit() else { continue };
            self.metrics
                .quota
                .get_or_create(&vec![("plan", plan.name.to_string())])
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
            for (key, used) in plan.usage(now) {
                self.metrics
                    .quota_used
                    .get_or_create(&vec![
                        ("plan", plan.name.to_string()),
                        ("api_key", key.to_string()),
                    ])
                    .set(i64::try_from(used).unwrap_or(i64::MAX));
            }
        }
        self.metrics.encode()
    }

    /// Drops refilled buckets every [`PRUNE_INTERVAL`] and records how many remain.
    async fn prune(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            }
            let limiters = self
                .limiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for (labels, _, limiter) in limiters {
                let held = limiter.prune();
                self.metrics
                    .rate_limit_buckets
                    .get_or_create(&labels)
                    .set(i64::try_from(held).unwrap_or(i64::MAX));
            }
        }
    }
}

fn read_schema(file: &Path, path: &str) -> Result<serde_json::Value, GatewayError> {
    let fail = |reason: String| GatewayError::SchemaFile {
        path: path.to_owned(),
        file: file.display().to_string(),
        reason,
    };
    let text = std::fs::read(file).map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))
}

/// Outcomes counted per policy.
const OUTCOMES: [&str; 8] = [
    "admitted",
    "preflight",
    "unauthorized",
    "insufficient_scope",
    "forbidden",
    "quota_exceeded",
    "throttled",
    "invalid",
];

#[derive(Debug)]
struct JwtCheck {
    authorizer: Arc<Authorizer>,
    scopes: Vec<String>,
    scopes_text: String,
}

/// One listener's or rule's gateway checks.
#[derive(Debug)]
pub struct Policy {
    jwt: Option<JwtCheck>,
    keys: Option<Arc<KeyStore>>,
    limiter: Option<Arc<RateLimiter>>,
    validator: Option<RequestValidator>,
    cors: Option<CorsPolicy>,
    outcomes: Vec<(&'static str, Counter)>,
}

/// What the policies a request passed established about it.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// The verified JWT, when a policy required one.
    pub jwt: Option<Arc<Verified>>,
    /// The API key's name, when a policy required one.
    pub api_key: Option<Arc<str>>,
}

impl Policy {
    /// The CORS settings, if any.
    pub fn cors(&self) -> Option<&CorsPolicy> {
        self.cors.as_ref()
    }

    /// Counts a preflight this policy answered.
    pub fn count_preflight(&self) {
        self.count("preflight");
    }

    fn count(&self, outcome: &str) {
        if let Some((_, c)) = self.outcomes.iter().find(|(o, _)| *o == outcome) {
            c.inc();
        }
    }

    fn reject(&self, rejection: Rejection) -> Rejection {
        self.count(rejection.outcome());
        rejection
    }

    /// Whether the body must be read for [`Policy::check_body`].
    pub fn wants_body(&self) -> bool {
        self.validator
            .as_ref()
            .is_some_and(RequestValidator::wants_body)
    }

    /// Runs the checks that need only the request head; what they establish goes into
    /// `grant` (read by later checks and policies).
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        client: IpAddr,
        grant: &mut Grant,
    ) -> Result<(), Rejection> {
        if let Some(check) = &self.jwt {
            let verified = match headers.get(http::header::AUTHORIZATION) {
                None => Err(jwt::JwtError::Missing),
                Some(value) => match Authorizer::token_of(value.as_bytes()) {
                    Ok(token) => {
                        check
                            .authorizer
                            .verify(token, &check.scopes, unix_now())
                            .await
                    }
                    Err(e) => Err(e),
                },
            };
            match verified {
                Ok(v) => grant.jwt = Some(Arc::new(v)),
                Err(error) => {
                    return Err(self.reject(Rejection::Jwt {
                        error,
                        scopes: check.scopes_text.clone(),
                    }));
                }
            }
        }
        let key = match &self.keys {
            Some(store) => {
                let header = headers
                    .get(api_keys::HEADER)
                    .map(http::HeaderValue::as_bytes);
                match store.identify(header) {
                    Ok(key) => {
                        grant.api_key = Some(key.name.clone());
                        Some((store, key))
                    }
                    Err(e) => return Err(self.reject(Rejection::ApiKey(e))),
                }
            }
            None => None,
        };
        if let Some(limiter) = &self.limiter {
            let bucket = bucket_key(limiter.key(), client, grant);
            if let Err(wait) = limiter.check(&bucket) {
                return Err(self.reject(Rejection::Throttled(wait)));
            }
        }
        if let Some((store, key)) = key {
            if let Err(e) = store.consume(key, unix_now()) {
                return Err(self.reject(Rejection::ApiKey(e)));
            }
        }
        if let Some(validator) = &self.validator {
            if let Err(message) = validator.check_head(headers, query) {
                return Err(self.reject(Rejection::Invalid(message)));
            }
        }
        if !self.wants_body() {
            self.count("admitted");
        }
        Ok(())
    }

    /// Validates the body read in full (only called when [`Policy::wants_body`]).
    pub fn check_body(&self, body: &[u8]) -> Result<(), Rejection> {
        if let Some(validator) = &self.validator {
            if let Err(message) = validator.check_body(body) {
                return Err(self.reject(Rejection::Invalid(message)));
            }
        }
        self.count("admitted");
        Ok(())
    }
}

/// The bucket a request takes from. A request without the API key or claim a limit counts
/// by (a claim the token lacks) is counted by its client address.
fn bucket_key(key: &RateLimitKey, client: IpAddr, grant: &Grant) -> BucketKey {
    let text = match key {
        RateLimitKey::SourceIp => None,
        RateLimitKey::ApiKey => grant.api_key.as_deref().map(Box::from),
        RateLimitKey::Claim(name) => grant
            .jwt
            .as_ref()
            .and_then(|v| v.claim_text(name))
            .map(String::into_boxed_str),
    };
    text.map_or(BucketKey::Ip(client), BucketKey::Text)
}
