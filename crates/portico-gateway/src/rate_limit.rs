//! Rate limits: one token bucket per key (client address, API key or JWT claim), as
//! `governor`'s GCRA keeps them: `burst` requests at once, then one more every
//! `period / requests`. A request over the limit learns when the next one will pass, which
//! becomes `Retry-After`.
//!
//! Buckets that have refilled are dropped by [`RateLimiter::prune`], which the gateway
//! calls periodically, so a stream of one-off clients does not grow memory without end.

use governor::clock::{Clock, MonotonicClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};
use portico_config::{RateLimit, RateLimitKey};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// What a bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketKey {
    /// A client address.
    Ip(IpAddr),
    /// An API key's name or a claim's value.
    Text(Box<str>),
}

/// One configured limit and its buckets.
pub struct RateLimiter {
    gcra: Gcra<BucketKey, HashMapStateStore<BucketKey>, MonotonicClock>,
    clock: MonotonicClock,
    key: RateLimitKey,
    burst: u32,
    per_second: f64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("key", &self.key)
            .field("burst", &self.burst)
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter for `spec` (validated: requests, burst and period at least 1).
    pub fn new(spec: &RateLimit) -> Self {
        let requests = spec.requests.max(1);
        let period = Duration::from_secs(u64::from(spec.period_seconds.max(1)));
        let burst = NonZeroU32::new(spec.burst()).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period / requests)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = MonotonicClock;
        Self {
            gcra: Gcra::hashmap_with_clock(quota, clock.clone()),
            clock,
            key: spec.key.clone(),
            burst: burst.get(),
            per_second: f64::from(requests) / period.as_secs_f64(),
        }
    }

    /// What the limit counts by.
    pub fn key(&self) -> &RateLimitKey {
        &self.key
    }

    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The refill rate, in requests per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &BucketKey) -> Result<(), Duration> {
        self.gcra
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops buckets that are full again; returns how many remain.
    pub fn prune(&self) -> usize {
        self.gcra.retain_recent();
        self.gcra.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, period_seconds: u32, burst: Option<u32>) -> RateLimit {
        RateLimit {
            requests,
            period_seconds,
            burst,
            key: RateLimitKey::SourceIp,
        }
    }

    #[test]
    fn a_burst_over_the_limit_loses_exactly_the_excess() {
        let limiter = RateLimiter::new(&limit(5, 60, None));
        let client = BucketKey::Ip("192.0.2.1".parse().unwrap());
        let results: Vec<_> = (0..8).map(|_| limiter.check(&client)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
        let wait = results[7].unwrap_err();
        assert!(
            wait > Duration::from_secs(11) && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert!(
            limiter
                .check(&BucketKey::Ip("192.0.2.2".parse().unwrap()))
                .is_ok()
        );
        assert_eq!(limiter.prune(), 2);
    }

    #[test]
    fn burst_is_separate_from_the_rate() {
        let limiter = RateLimiter::new(&limit(1, 1, Some(3)));
        let key = BucketKey::Text("k".into());
        assert_eq!((0..5).filter(|_| limiter.check(&key).is_ok()).count(), 3);
        assert_eq!(limiter.burst(), 3);
        assert!((limiter.per_second() - 1.0).abs() < 1e-9);
    }
}
