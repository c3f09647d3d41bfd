//! The gateway's Prometheus metrics, served by the admin API at `GET /metrics` in the
//! OpenMetrics text format.
//!
//! - `portico_gateway_requests_total{policy, outcome}`: each request a policy decided,
//!   `outcome` one of `admitted`, `preflight`, `unauthorized`, `insufficient_scope`,
//!   `forbidden`, `quota_exceeded`, `throttled`, `invalid`;
//! - `portico_rate_limit_burst{policy, key}` and `portico_rate_limit_per_second{policy, key}`:
//!   each rate limit as configured; `portico_rate_limit_buckets{policy, key}`: buckets held;
//! - `portico_usage_plan_quota{plan}` and `portico_usage_plan_used{plan, api_key}`: each
//!   plan's quota and what each key used of it this period.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

/// Label pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) decisions: Family<Labels, Counter>,
    pub(crate) rate_limit_burst: Family<Labels, Gauge>,
    pub(crate) rate_limit_per_second: Family<Labels, Gauge<f64, AtomicU64>>,
    pub(crate) rate_limit_buckets: Family<Labels, Gauge>,
    pub(crate) quota: Family<Labels, Gauge>,
    pub(crate) quota_used: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            decisions: Family::default(),
            rate_limit_burst: Family::default(),
            rate_limit_per_second: Family::default(),
            rate_limit_buckets: Family::default(),
            quota: Family::default(),
            quota_used: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(PoisonError::into_inner);
            r.register(
                "portico_gateway_requests",
                "Requests decided by gateway policies, by outcome",
                m.decisions.clone(),
            );
            r.register(
                "portico_rate_limit_burst",
                "Requests a rate limit's bucket holds",
                m.rate_limit_burst.clone(),
            );
            r.register(
                "portico_rate_limit_per_second",
                "Rate at which a rate limit's buckets refill",
                m.rate_limit_per_second.clone(),
            );
            r.register(
                "portico_rate_limit_buckets",
                "Buckets a rate limit holds (clients seen recently)",
                m.rate_limit_buckets.clone(),
            );
            r.register(
                "portico_usage_plan_quota",
                "Requests each key of a usage plan may make per period",
                m.quota.clone(),
            );
            r.register(
                "portico_usage_plan_used",
                "Requests an API key made in the current period",
                m.quota_used.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
