//! The health engine: probes a target on a schedule and turns results into a verdict with
//! separate healthy and unhealthy thresholds, as ALB target groups and Global Accelerator
//! endpoint groups do.
//!
//! - [`Status`] is what the routing side reads: one atomic load per request;
//! - [`Probe`] is one check: [`TcpProbe`] (a connection opens), [`HttpProbe`] (a `GET` gets a
//!   matching status), or any other (the load balancer probes Lambda functions);
//! - [`run`] drives a probe until shutdown and applies [`Thresholds`].
//!
//! A new target starts [`Verdict::Initial`]: one success makes it healthy (ALB: "after your
//! target is registered, it must pass one health check"); `unhealthy` failures in a row make
//! it unhealthy. After that, `healthy` successes in a row bring it back and `unhealthy`
//! failures in a row take it out.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod probes;
pub use probes::{HttpProbe, TcpProbe, USER_AGENT};

/// A target's health as the last checks left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not checked successfully yet.
    Initial,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// Why one check failed; ALB's target health reasons are told apart by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer within the check's timeout (ALB: `Target.Timeout`).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer with a status the matcher does not take (`Target.ResponseCodeMismatch`).
    #[error("status {0}")]
    Status(u16),
    /// The connection or the request failed (`Target.FailedHealthChecks`).
    #[error("{0}")]
    Failed(String),
}

/// A target's verdict, shared between the checker and the router.
#[derive(Debug)]
pub struct Status {
    verdict: AtomicU8,
    /// Why the last check failed; none after a success.
    last_failure: Mutex<Option<Failure>>,
    /// Smoothed duration of successful checks in microseconds (0: none yet).
    rtt_micros: AtomicU64,
    /// When the target last became healthy, as microseconds since `epoch` (0: never).
    healthy_since_micros: AtomicU64,
    epoch: Instant,
}

impl Default for Status {
    fn default() -> Self {
        Self::new(Verdict::Initial)
    }
}

impl Status {
    /// A status starting at `verdict`.
    pub fn new(verdict: Verdict) -> Self {
        let status = Self {
            verdict: AtomicU8::new(verdict as u8),
            last_failure: Mutex::new(None),
            rtt_micros: AtomicU64::new(0),
            healthy_since_micros: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        if verdict == Verdict::Healthy {
            status.mark_healthy_now();
        }
        status
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        match self.verdict.load(Ordering::Relaxed) {
            1 => Verdict::Healthy,
            2 => Verdict::Unhealthy,
            _ => Verdict::Initial,
        }
    }

    /// Whether the verdict is [`Verdict::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.verdict() == Verdict::Healthy
    }

    /// Sets the verdict (the checker does this; tests and manual overrides may too).
    pub fn set(&self, verdict: Verdict) {
        let before = self.verdict.swap(verdict as u8, Ordering::Relaxed);
        if verdict == Verdict::Healthy && before != Verdict::Healthy as u8 {
            self.mark_healthy_now();
        }
    }

    /// Why the last check failed, if it did.
    pub fn last_failure(&self) -> Option<Failure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The smoothed duration of successful checks: for a TCP check, the round-trip time of
    /// the handshake. None before the first success.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Folds one successful check's duration into [`Status::rtt`], as TCP smooths its RTT
    /// (RFC 6298: 7/8 of the old value, 1/8 of the new one).
    pub fn record_rtt(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.rtt_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.rtt_micros.store(new.max(1), Ordering::Relaxed);
    }

    fn record(&self, result: &Result<(), Failure>) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = result.clone().err();
    }

    fn mark_healthy_now(&self) {
        let micros = self.epoch.elapsed().as_micros().max(1);
        self.healthy_since_micros
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long the target has been healthy (none while it is not).
    pub fn healthy_for(&self) -> Option<Duration> {
        if !self.is_healthy() {
            return None;
        }
        let since = Duration::from_micros(self.healthy_since_micros.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// Consecutive results needed to change a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Successes that make a target healthy.
    pub healthy: u32,
    /// Failures that make a target unhealthy.
    pub unhealthy: u32,
}

/// When and how long checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// Time one check may take before it counts as failed.
    pub timeout: Duration,
}

/// One health check of one target.
pub trait Probe: Send + Sync + 'static {
    /// Runs one check; `Err` says why it failed.
    fn check(&self) -> impl Future<Output = Result<(), Failure>> + Send;
    /// What is checked, for logs.
    fn describe(&self) -> String;
}

/// Applies check results to a verdict.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    thresholds: Thresholds,
    successes: u32,
    failures: u32,
}

impl Tally {
    /// A tally with no results yet.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            successes: 0,
            failures: 0,
        }
    }

    /// The verdict after one more result, given the current one.
    pub fn record(&mut self, current: Verdict, ok: bool) -> Verdict {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        match current {
            Verdict::Initial if ok => Verdict::Healthy,
            Verdict::Unhealthy if self.successes >= self.thresholds.healthy => Verdict::Healthy,
            Verdict::Initial | Verdict::Healthy if self.failures >= self.thresholds.unhealthy => {
                Verdict::Unhealthy
            }
            other => other,
        }
    }
}

/// Checks with `probe` every interval until `shutdown` fires, updating `status`.
pub async fn run<P: Probe>(
    probe: P,
    status: Arc<Status>,
    schedule: Schedule,
    thresholds: Thresholds,
    shutdown: CancellationToken,
) {
    let mut tally = Tally::new(thresholds);
    let mut ticker = tokio::time::interval(schedule.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(schedule.timeout, probe.check()) => match r {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout(schedule.timeout)),
            },
        };
        status.record(&result);
        if result.is_ok() {
            status.record_rtt(started.elapsed());
        }
        let before = status.verdict();
        let after = tally.record(before, result.is_ok());
        if after != before {
            status.set(after);
            match &result {
                Ok(()) => {
                    tracing::info!(target = probe.describe(), ?before, ?after, "health changed")
                }
                Err(reason) => tracing::warn!(
                    target = probe.describe(),
                    ?before,
                    ?after,
                    %reason,
                    "health changed"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_apply_as_alb_documents() {
        let t = Thresholds {
            healthy: 3,
            unhealthy: 2,
        };
        let mut tally = Tally::new(t);
        assert_eq!(
            tally.record(Verdict::Initial, true),
            Verdict::Healthy,
            "one pass"
        );
        let mut tally = Tally::new(t);
        assert_eq!(tally.record(Verdict::Initial, false), Verdict::Initial);
        assert_eq!(tally.record(Verdict::Initial, false), Verdict::Unhealthy);
        let mut v = Verdict::Healthy;
        let mut tally = Tally::new(t);
        for (ok, want) in [
            (false, Verdict::Healthy),
            (true, Verdict::Healthy),
            (false, Verdict::Healthy),
            (false, Verdict::Unhealthy),
            (true, Verdict::Unhealthy),
            (true, Verdict::Unhealthy),
            (false, Verdict::Unhealthy),
            (true, Verdict::Unhealthy),
            (true, Verdict::Unhealthy),
            (true, Verdict::Healthy),
        ] {
            v = tally.record(v, ok);
            assert_eq!(v, want);
        }
    }

    #[test]
    fn rtt_is_smoothed_like_tcps() {
        let status = Status::default();
        assert_eq!(status.rtt(), None);
        status.record_rtt(Duration::from_millis(80));
        assert_eq!(status.rtt(), Some(Duration::from_millis(80)));
        status.record_rtt(Duration::from_millis(0));
        assert_eq!(status.rtt(), Some(Duration::from_millis(70)));
        for _ in 0..100 {
            status.record_rtt(Duration::from_millis(20));
        }
        let settled = status.rtt().unwrap();
        assert!(settled >= Duration::from_millis(20) && settled < Duration::from_millis(21));
    }

    #[test]
    fn status_reports_how_long_it_has_been_healthy() {
        let s = Status::default();
        assert_eq!(s.healthy_for(), None);
        s.set(Verdict::Healthy);
        assert!(s.healthy_for().is_some());
        s.set(Verdict::Unhealthy);
        assert_eq!(s.healthy_for(), None);
    }
}
