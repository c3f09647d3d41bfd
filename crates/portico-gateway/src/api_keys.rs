//! API keys and usage plans: which `x-api-key` values are accepted, and how many requests
//! each may make per day, week or month.
//!
//! As in API Gateway, a missing, unknown or disabled key is 403 `Forbidden`, and a key over
//! its plan's quota is 429 `Limit Exceeded` until the period ends (00:00 UTC; weeks start
//! on Monday). Counts live in memory: a restart starts every key's period afresh.

use portico_config::{ApiKey, QuotaPeriod, UsagePlan};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The header clients send their key in.
pub const HEADER: &str = "x-api-key";

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `x-api-key` header.
    #[error("no API key")]
    Missing,
    /// Not a known, enabled key.
    #[error("unknown or disabled API key")]
    Invalid,
    /// Its plan's quota is used up for this period.
    #[error("API key {key} is over its {period} quota of {limit} requests")]
    OverQuota {
        /// The key's name.
        key: Arc<str>,
        /// The quota.
        limit: u64,
        /// `DAY`, `WEEK` or `MONTH`.
        period: &'static str,
        /// Until the next period starts.
        retry_after: Duration,
    },
}

/// A usage plan with its counts per key.
#[derive(Debug)]
pub struct Plan {
    /// Its name.
    pub name: Arc<str>,
    quota: Option<(u64, QuotaPeriod)>,
    /// Per key name: the period the count is for, and the count.
    used: Mutex<HashMap<Arc<str>, (u64, u64)>>,
}

impl Plan {
    /// Requests each key made in the current period, by key name, at Unix time `now`.
    pub fn usage(&self, now: u64) -> Vec<(Arc<str>, u64)> {
        let Some((_, period)) = self.quota else {
            return Vec::new();
        };
        let current = period_index(period, now);
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.iter()
            .map(|(k, (p, n))| (k.clone(), if *p == current { *n } else { 0 }))
            .collect()
    }

    /// The quota, if any.
    pub fn limit(&self) -> Option<u64> {
        self.quota.map(|(limit, _)| limit)
    }
}

/// One accepted key.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its name, for logs, metrics and rate limit buckets.
    pub name: Arc<str>,
    plan: Option<Arc<Plan>>,
}

/// Every configured key, by value.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_value: HashMap<String, Key>,
    plans: Vec<Arc<Plan>>,
}

impl KeyStore {
    /// The store of `keys` (validated: values unique, plans exist), counting against
    /// `plans`; a plan of `previous` with the same name and quota goes on counting.
    pub fn new(
        keys: &[ApiKey],
        plans: &BTreeMap<String, UsagePlan>,
        previous: Option<&KeyStore>,
    ) -> Self {
        let plans: BTreeMap<&str, Arc<Plan>> = plans
            .iter()
            .map(|(name, plan)| {
                let quota = plan.quota.as_ref().map(|q| (q.limit, q.period));
                let same = previous.and_then(|p| {
                    p.plans
                        .iter()
                        .find(|old| &*old.name == name.as_str() && old.quota == quota)
                });
                let plan = same.cloned().unwrap_or_else(|| {
                    Arc::new(Plan {
                        name: name.as_str().into(),
                        quota,
                        used: Mutex::default(),
                    })
                });
                (name.as_str(), plan)
            })
            .collect();
        let by_value = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.enabled)
            .map(|(i, k)| {
                let key = Key {
                    name: k.name.clone().unwrap_or_else(|| format!("key-{i}")).into(),
                    plan: k.usage_plan.as_deref().and_then(|p| plans.get(p)).cloned(),
                };
                (k.value.clone(), key)
            })
            .collect();
        Self {
            by_value,
            plans: plans.into_values().collect(),
        }
    }

    /// The key sent in `header`, if it is known and enabled.
    pub fn identify(&self, header: Option<&[u8]>) -> Result<&Key, KeyError> {
        let value = header.ok_or(KeyError::Missing)?;
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| self.by_value.get(v))
            .ok_or(KeyError::Invalid)
    }

    /// Counts one request of `key` at Unix time `now` against its plan's quota.
    pub fn consume(&self, key: &Key, now: u64) -> Result<(), KeyError> {
        let Some(plan) = &key.plan else {
            return Ok(());
        };
        let Some((limit, period)) = plan.quota else {
            return Ok(());
        };
        let current = period_index(period, now);
        let mut used = plan.used.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = used.entry(key.name.clone()).or_insert((current, 0));
        if entry.0 != current {
            *entry = (current, 0);
        }
        if entry.1 >= limit {
            return Err(KeyError::OverQuota {
                key: key.name.clone(),
                limit,
                period: period.name(),
                retry_after: Duration::from_secs(period_start(period, current + 1) - now),
            });
        }
        entry.1 += 1;
        Ok(())
    }

    /// The usage plans.
    pub fn plans(&self) -> &[Arc<Plan>] {
        &self.plans
    }
}

const DAY: u64 = 86_400;

/// Which period Unix time `now` falls in: days, Monday-based weeks or months since 1970.
pub fn period_index(period: QuotaPeriod, now: u64) -> u64 {
    let day = now / DAY;
    match period {
        QuotaPeriod::Day => day,
        // 1970-01-01 was a Thursday: Monday 1969-12-29 starts week 0.
        QuotaPeriod::Week => (day + 3) / 7,
        QuotaPeriod::Month => {
            let (year, month) = civil_month(day);
            (year - 1970) * 12 + (month - 1)
        }
    }
}

/// The Unix time period `index` starts at.
pub fn period_start(period: QuotaPeriod, index: u64) -> u64 {
    match period {
        QuotaPeriod::Day => index * DAY,
        QuotaPeriod::Week => (index * 7).saturating_sub(3) * DAY,
        QuotaPeriod::Month => days_from_civil(1970 + index / 12, index % 12 + 1) * DAY,
    }
}

/// Year and month (1–12) of day `days` since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// Days since 1970-01-01 of the first day of `month` (1–12) of `year` ≥ 1970.
fn days_from_civil(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::Quota;

    fn store(limit: u64, period: QuotaPeriod) -> KeyStore {
        let keys = [
            ApiKey {
                name: Some("alice".into()),
                value: "alice-key-0123456789abcdef".into(),
                usage_plan: Some("basic".into()),
                enabled: true,
            },
            ApiKey {
                name: None,
                value: "disabled-key-0123456789abc".into(),
                usage_plan: None,
                enabled: false,
            },
        ];
        let plans = BTreeMap::from([(
            "basic".to_owned(),
            UsagePlan {
                quota: Some(Quota { limit, period }),
            },
        )]);
        KeyStore::new(&keys, &plans, None)
    }

    #[test]
    fn keys_are_identified_or_refused() {
        let s = store(3, QuotaPeriod::Day);
        assert_eq!(s.identify(None).unwrap_err(), KeyError::Missing);
        assert_eq!(s.identify(Some(b"nope")).unwrap_err(), KeyError::Invalid);
        assert_eq!(
            s.identify(Some(b"disabled-key-0123456789abc")).unwrap_err(),
            KeyError::Invalid
        );
        assert_eq!(
            s.identify(Some(b"\xff\xfe")).unwrap_err(),
            KeyError::Invalid
        );
        assert_eq!(
            &*s.identify(Some(b"alice-key-0123456789abcdef"))
                .unwrap()
                .name,
            "alice"
        );
    }

    #[test]
    fn quota_counts_per_period_and_says_when_it_resets() {
        let s = store(3, QuotaPeriod::Day);
        let key = s
            .identify(Some(b"alice-key-0123456789abcdef"))
            .unwrap()
            .clone();
        let noon = 20_000 * DAY + 12 * 3600;
        for _ in 0..3 {
            s.consume(&key, noon).unwrap();
        }
        let Err(KeyError::OverQuota { retry_after, .. }) = s.consume(&key, noon) else {
            panic!("fourth request passed");
        };
        assert_eq!(retry_after, Duration::from_secs(12 * 3600));
        assert_eq!(s.plans()[0].usage(noon), vec![("alice".into(), 3)]);
        // The next day starts afresh.
        s.consume(&key, noon + DAY).unwrap();
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        // 2026-11-25 12:00 UTC is a Wednesday.
        let now = 1_795_608_000;
        let week = period_index(QuotaPeriod::Week, now);
        assert_eq!(period_start(QuotaPeriod::Week, week), 1_795_392_000); // Mon 2026-11-23
        let month = period_index(QuotaPeriod::Month, now);
        assert_eq!(period_start(QuotaPeriod::Month, month), 1_793_491_200); // 2026-11-01
        assert_eq!(period_start(QuotaPeriod::Month, month + 1), 1_796_083_200); // 2026-12-01
        assert_eq!(period_start(QuotaPeriod::Month, 0), 0);
        assert_eq!(period_index(QuotaPeriod::Month, 31 * DAY), 1); // 1970-02-01
        assert_eq!(period_index(QuotaPeriod::Month, 31 * DAY - 1), 0);
    }
}
