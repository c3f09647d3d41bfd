//! The execution environments of one function: warm ones reused, new ones created on
//! demand.
//!
//! How many may run is Lambda's model: a function with reserved concurrency runs up to it,
//! and only it; the others share what the reservations leave of the runtime's concurrency
//! (the unreserved pool). And every environment, busy or warm, holds its memory size from
//! the node's [`Memory`] budget: a new one that does not fit first stops warm environments
//! of any function, the longest unused first, and is throttled only when that is not
//! enough. So no caller can start more processes than the node can hold.

use crate::environment::{Environment, Host};
use crate::isolation::Isolation;
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

    /// A permit, once one is free (in the order they were asked for); `None` when
    /// `deadline` or `shutdown` comes first.
    pub(crate) async fn acquire_until(
        &self,
        deadline: tokio::time::Instant,
        shutdown: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            // The semaphore is never closed.
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            () = tokio::time::sleep_until(deadline) => None,
            () = shutdown.cancelled() => None,
        }
    }
}

/// What every invocation shares: the unreserved concurrency (Lambda's account limit less
/// the reservations), the memory budget, every pool (for room in it), the owner of the
/// environments' tasks, the shutdown signal, and how environments are isolated.
pub(crate) struct Shared {
    pub(crate) unreserved: Limit,
    pub(crate) memory: Memory,
    pub(crate) pools: Vec<Arc<Pool>>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) isolation: Isolation,
}

/// The node's memory for execution environments, in MB: each holds its function's memory
/// size from it while it lives.
pub(crate) struct Memory {
    permits: Arc<Semaphore>,
    budget_mb: usize,
}

impl Memory {
    pub(crate) fn new(budget_mb: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(budget_mb.min(Semaphore::MAX_PERMITS))),
            budget_mb,
        }
    }

    /// The budget.
    pub(crate) fn budget_mb(&self) -> usize {
        self.budget_mb
    }

    /// MB held by environments now.
    pub(crate) fn held_mb(&self) -> usize {
        self.budget_mb
            .saturating_sub(self.permits.available_permits())
    }

    fn try_take(&self, mb: u32) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_many_owned(mb).ok()
    }
}

/// An environment and the memory it holds.
struct Held {
    env: Environment,
    _memory: OwnedSemaphorePermit,
}

/// Environments of one function.
pub(crate) struct Pool {
    spec: Arc<FunctionSpec>,
    /// Warm environments with the time each went idle, most recently used last (reused
    /// first, so the others can idle out).
    idle: Mutex<Vec<(Held, Instant)>>,
    /// The function's reserved concurrency, when it has one.
    reserved: Option<Limit>,
    /// The lanes of its asynchronous invocations.
    events: Limit,
    /// The function's log, written by all its environments.
    book: Arc<LogBook>,
}

impl Pool {
    /// The pool of `spec`, whose asynchronous invocations run `event_lanes` at a time.
    pub(crate) fn new(spec: FunctionSpec, event_lanes: usize) -> Self {
        let reserved = spec.reserved_concurrency.map(Limit::new);
        Self {
            book: Arc::new(LogBook::new(&spec.name)),
            spec: Arc::new(spec),
            idle: Mutex::new(Vec::new()),
            reserved,
            events: Limit::new(event_lanes.max(1)),
        }
    }

    /// Waits, until `deadline`, for one of the lanes asynchronous invocations run in: at
    /// most half of what the function may run at once, so that a flood of events leaves
    /// the other half to synchronous callers. `None` past the deadline or at shutdown.
    pub(crate) async fn event_lane(
        &self,
        deadline: tokio::time::Instant,
        shutdown: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        self.events.acquire_until(deadline, shutdown).await
    }

    pub(crate) fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    pub(crate) fn logs(&self) -> &Arc<LogBook> {
        &self.book
    }

    /// Runs one invocation on a warm environment, or on a new one; throttled when the
    /// function's concurrency or the node's memory is spent. With `wait_until`, it waits
    /// for concurrency until then instead (asynchronous invocations: back-pressure in
    /// arrival order, not a busy retry).
    pub(crate) async fn invoke(
        &self,
        invocation: Invocation,
        shared: &Shared,
        wait_until: Option<tokio::time::Instant>,
    ) -> Result<InvokeOutput, InvokeError> {
        let (limit, reason) = match &self.reserved {
            Some(limit) => (limit, ThrottleReason::ReservedConcurrency),
            None => (&shared.unreserved, ThrottleReason::AccountConcurrency),
        };
        let _concurrency = match wait_until {
            Some(deadline) => match limit.acquire_until(deadline, &shared.shutdown).await {
                Some(permit) => permit,
                None if shared.shutdown.is_cancelled() => return Err(InvokeError::ShuttingDown),
                None => return Err(self.throttled(limit.size(), reason)),
            },
            None => limit
                .try_acquire()
                .map_err(|size| self.throttled(size, reason))?,
        };
        let mut held = match self.take_idle() {
            Some(held) => held,
            None => {
                let memory = self.memory_for_new(shared)?;
                let host = Host {
                    tracker: &shared.tracker,
                    parent: &shared.shutdown,
                    isolation: &shared.isolation,
                };
                let env = Environment::start(self.spec.clone(), self.book.clone(), host).await?;
                Held {
                    env,
                    _memory: memory,
                }
            }
        };
        let output = held.env.invoke(invocation).await;
        if held.env.is_reusable() && !shared.shutdown.is_cancelled() {
            self.lock_idle().push((held, Instant::now()));
        }
        Ok(output)
    }

    /// Memory for a new environment: from the budget, after stopping the warm environments
    /// unused the longest (of any function) when it is spent; throttled when even that is
    /// not enough.
    fn memory_for_new(&self, shared: &Shared) -> Result<OwnedSemaphorePermit, InvokeError> {
        let mb = self.spec.memory_size_mb;
        loop {
            if let Some(permit) = shared.memory.try_take(mb) {
                return Ok(permit);
            }
            let oldest = shared
                .pools
                .iter()
                .filter_map(|pool| pool.oldest_idle().map(|since| (since, pool)))
                .min_by_key(|(since, _)| *since);
            let Some((_, pool)) = oldest else {
                return Err(self.throttled(shared.memory.budget_mb(), ThrottleReason::Memory));
            };
            if pool.retire_oldest() {
                tracing::info!(
                    function = pool.spec.name,
                    for_function = self.spec.name,
                    "warm execution environment stopped: memory for a new one"
                );
            }
        }
    }

    /// When the warm environment unused the longest went idle.
    fn oldest_idle(&self) -> Option<Instant> {
        self.lock_idle().first().map(|(_, since)| *since)
    }

    /// Stops the warm environment unused the longest; whether there was one.
    fn retire_oldest(&self) -> bool {
        let oldest = {
            let mut idle = self.lock_idle();
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        // Dropped outside the lock: dropping an environment stops its process.
        oldest.is_some()
    }

    fn take_idle(&self) -> Option<Held> {
        let mut idle = self.lock_idle();
        while let Some((held, _)) = idle.pop() {
            if held.env.is_reusable() {
                return Some(held);
            }
        }
        None
    }

    /// Stops the environments idle for longer than `idle_timeout`; returns how many.
    pub(crate) fn retire_idle(&self, idle_timeout: Duration) -> usize {
        let retired: Vec<(Held, Instant)> = {
            let mut idle = self.lock_idle();
            let (keep, retire) = idle.drain(..).partition(|(held, since)| {
                held.env.is_reusable() && since.elapsed() < idle_timeout
            });
            *idle = keep;
            retire
        };
        // Dropped outside the lock: dropping an environment stops its process.
        retired.len()
    }

    /// Environments warm now.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(Held, Instant)>> {
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
