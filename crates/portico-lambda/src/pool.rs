//! The execution environments of one function: warm ones reused, new ones created on
//! demand, up to the function's reserved concurrency.

use crate::environment::Environment;
use crate::logs::LogBook;
use crate::spec::FunctionSpec;
use portico_invoke::{Invocation, InvokeError, InvokeOutput, ThrottleReason};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A semaphore and the size it was made with, so that a refusal can name the limit.
pub(crate) struct Limit {
    permits: Arc<Semaphore>,
    size: usize,
}

impl Limit {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The size it was made with.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A permit, or the size of the limit that is full.
    pub(crate) fn try_acquire(&self) -> Result<OwnedSemaphorePermit, usize> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.size)
    }
}

/// What every invocation shares: the runtime-wide concurrency limit (Lambda's account
/// limit), the owner of the environments' tasks, and the shutdown signal.
pub(crate) struct Shared {
    pub(crate) global: Limit,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// Environments of one function.
pub(crate) struct Pool {
    spec: Arc<FunctionSpec>,
    /// Warm environments with the time each went idle, most recently used last (reused
    /// first, so the others can idle out).
    idle: Mutex<Vec<(Environment, Instant)>>,
    /// The function's reserved concurrency, when it has one.
    reserved: Option<Limit>,
    /// The function's log, written by all its environments.
    book: Arc<LogBook>,
}

impl Pool {
    pub(crate) fn new(spec: FunctionSpec) -> Self {
        let reserved = spec.reserved_concurrency.map(Limit::new);
        Self {
            book: Arc::new(LogBook::new(&spec.name)),
            spec: Arc::new(spec),
            idle: Mutex::new(Vec::new()),
            reserved,
        }
    }

    pub(crate) fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    pub(crate) fn logs(&self) -> &Arc<LogBook> {
        &self.book
    }

    /// Runs one invocation on a warm environment, or on a new one.
    pub(crate) async fn invoke(
        &self,
        invocation: Invocation,
        shared: &Shared,
    ) -> Result<InvokeOutput, InvokeError> {
        let _reserved = match &self.reserved {
            Some(limit) => Some(
                limit
                    .try_acquire()
                    .map_err(|size| self.throttled(size, ThrottleReason::ReservedConcurrency))?,
            ),
            None => None,
        };
        let _global = shared
            .global
            .try_acquire()
            .map_err(|size| self.throttled(size, ThrottleReason::AccountConcurrency))?;
        let warm = self.take_idle();
        let mut env = match warm {
            Some(env) => env,
            None => {
                Environment::start(
                    self.spec.clone(),
                    self.book.clone(),
                    &shared.tracker,
                    &shared.shutdown,
                )
                .await?
            }
        };
        let output = env.invoke(invocation).await;
        if env.is_reusable() && !shared.shutdown.is_cancelled() {
            self.lock_idle().push((env, Instant::now()));
        }
        Ok(output)
    }

    fn take_idle(&self) -> Option<Environment> {
        let mut idle = self.lock_idle();
        while let Some((env, _)) = idle.pop() {
            if env.is_reusable() {
                return Some(env);
            }
        }
        None
    }

    /// Stops the environments idle for longer than `idle_timeout`; returns how many.
    pub(crate) fn retire_idle(&self, idle_timeout: Duration) -> usize {
        let retired: Vec<(Environment, Instant)> = {
            let mut idle = self.lock_idle();
            let (keep, retire) = idle
                .drain(..)
                .partition(|(env, since)| env.is_reusable() && since.elapsed() < idle_timeout);
            *idle = keep;
            retire
        };
        // Dropped outside the lock: dropping an environment stops its process.
        retired.len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(Environment, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn throttled(&self, limit: usize, reason: ThrottleReason) -> InvokeError {
        InvokeError::Throttled {
            function: self.spec.name.clone(),
            limit,
            reason,
        }
    }

    /// Drops every idle environment (their processes are stopped).
    pub(crate) fn clear(&self) {
        self.lock_idle().clear();
    }
}
