//! The execution environments of one function: warm ones reused, new ones created on
//! demand, up to the function's reserved concurrency.

use crate::environment::Environment;
use crate::spec::FunctionSpec;
use portico_invoke::{InvokeError, InvokeOutput};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The runtime-wide concurrency limit (Lambda's account limit).
pub(crate) struct GlobalLimit {
    pub(crate) permits: Semaphore,
    pub(crate) limit: usize,
}

/// Environments of one function.
pub(crate) struct Pool {
    spec: Arc<FunctionSpec>,
    /// Warm environments with the time each went idle, most recently used last (reused
    /// first, so the others can idle out).
    idle: Mutex<Vec<(Environment, Instant)>>,
    /// The function's reserved concurrency, when it has one.
    reserved: Option<Arc<Semaphore>>,
}

impl Pool {
    pub(crate) fn new(spec: FunctionSpec) -> Self {
        let reserved = spec
            .reserved_concurrency
            .map(|n| Arc::new(Semaphore::new(n)));
        Self {
            spec: Arc::new(spec),
            idle: Mutex::new(Vec::new()),
            reserved,
        }
    }

    pub(crate) fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// Runs one invocation on a warm environment, or on a new one.
    pub(crate) async fn invoke(
        &self,
        payload: bytes::Bytes,
        trace_id: Option<String>,
        global: &GlobalLimit,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<InvokeOutput, InvokeError> {
        let _reserved = match (&self.reserved, self.spec.reserved_concurrency) {
            (Some(sem), Some(limit)) => Some(sem.try_acquire().map_err(|_| self.throttled(limit))?),
            _ => None,
        };
        let _global = global
            .permits
            .try_acquire()
            .map_err(|_| self.throttled(global.limit))?;
        let warm = self.take_idle();
        let mut env = match warm {
            Some(env) => env,
            None => Environment::start(self.spec.clone(), tracker, shutdown).await?,
        };
        let output = env.invoke(payload, trace_id).await;
        if env.is_reusable() && !shutdown.is_cancelled() {
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

    fn throttled(&self, limit: usize) -> InvokeError {
        InvokeError::Throttled {
            function: self.spec.name.clone(),
            limit,
        }
    }

    /// Drops every idle environment (their processes are stopped).
    pub(crate) fn clear(&self) {
        self.lock_idle().clear();
    }
}
