//! The function runtime: every configured function, the global concurrency limit, and the
//! shutdown sequence. Implements [`Invoker`].

use crate::isolation::Isolation;
use crate::logs::LogBook;
use crate::pool::{Limit, Memory, Pool, Shared};
use crate::spec::FunctionSpec;
use portico_invoke::{BoxFuture, Invocation, InvokeError, InvokeOutput, Invoker, ThrottleReason};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest synchronous invocation payload: Lambda's 6 MB.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Largest asynchronous (`Event`) invocation payload: 1 MB, as the Invoke API documents.
pub const MAX_ASYNC_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Runtime-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Most execution environments busy at once, across functions (Lambda's account limit).
    /// Functions with reserved concurrency run within it; the others share what is left.
    pub max_concurrency: usize,
    /// MB of memory execution environments may hold in all (each its function's memory
    /// size, busy or warm).
    pub memory_budget_mb: usize,
    /// How long a warm environment may sit unused before it is stopped.
    pub idle_timeout: Duration,
    /// Waits before the retries of a failed asynchronous invocation: Lambda retries twice,
    /// one minute and then two minutes later.
    pub async_retry_delays: Vec<Duration>,
    /// Most asynchronous invocations queued or running at once; beyond it, `Event`
    /// invocations are refused as throttled rather than held in unbounded memory.
    pub max_queued_events: usize,
    /// Most bytes of payload those hold in all: with `max_queued_events`, what the queue may
    /// cost in memory (each event keeps its payload through its retries).
    pub max_queued_event_bytes: usize,
    /// How long an asynchronous invocation may wait to run: Lambda's maximum event age,
    /// six hours. An event still throttled after it is dropped.
    pub max_event_age: Duration,
    /// The first and the longest wait before an asynchronous invocation that was throttled
    /// is tried again; Lambda backs off exponentially from one second to five minutes, and
    /// throttles do not count against the retries.
    pub throttle_backoff: (Duration, Duration),
    /// How environments are isolated from the host and from each other.
    pub isolation: Isolation,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 1000,
            memory_budget_mb: default_memory_budget_mb(),
            idle_timeout: Duration::from_secs(600),
            async_retry_delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            max_queued_events: 100_000,
            max_queued_event_bytes: 64 * 1024 * 1024,
            max_event_age: Duration::from_secs(6 * 3600),
            throttle_backoff: (Duration::from_secs(1), Duration::from_secs(300)),
            isolation: Isolation::None,
        }
    }
}

/// Runs functions in execution environments.
pub struct Runtime {
    pools: HashMap<String, Arc<Pool>>,
    max_concurrency: usize,
    shared: Arc<Shared>,
    queued: Limit,
    /// Bytes of queued payload, a permit each.
    queued_bytes: Arc<tokio::sync::Semaphore>,
    max_queued_event_bytes: usize,
    async_retry_delays: Arc<[Duration]>,
    max_event_age: Duration,
    throttle_backoff: (Duration, Duration),
}

impl Runtime {
    /// A runtime for `functions`; environments start on the first invocation. Called inside
    /// a tokio runtime, it also starts the task that retires idle environments.
    pub fn new(functions: Vec<FunctionSpec>, options: RuntimeOptions) -> Self {
        let reserved: usize = functions
            .iter()
            .filter_map(|f| f.reserved_concurrency)
            .sum();
        let unreserved = options.max_concurrency.saturating_sub(reserved);
        let pools: HashMap<String, Arc<Pool>> = functions
            .into_iter()
            .map(|spec| {
                // Half of what the function may run at once: its concurrency, and the
                // environments of its size the memory budget holds.
                let concurrency = spec.reserved_concurrency.unwrap_or(unreserved);
                let fit = options.memory_budget_mb / (spec.memory_size_mb.max(1) as usize);
                let lanes = concurrency.min(fit) / 2;
                (spec.name.clone(), Arc::new(Pool::new(spec, lanes)))
            })
            .collect();
        let shared = Arc::new(Shared {
            unreserved: Limit::new(unreserved),
            memory: Memory::new(options.memory_budget_mb),
            pools: pools.values().cloned().collect(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            isolation: options.isolation,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            // Each sandboxed function's first cold start finds an environment made ahead.
            for pool in &shared.pools {
                pool.prepare_spare(&shared, Duration::ZERO);
            }
            let (all, shutdown) = (shared.pools.clone(), shared.shutdown.clone());
            shared
                .tracker
                .spawn(retire_idle(all, options.idle_timeout, shutdown));
        }
        Self {
            pools,
            max_concurrency: options.max_concurrency,
            shared,
            queued: Limit::new(options.max_queued_events),
            queued_bytes: Arc::new(tokio::sync::Semaphore::new(options.max_queued_event_bytes)),
            max_queued_event_bytes: options.max_queued_event_bytes,
            async_retry_delays: options.async_retry_delays.into(),
            max_event_age: options.max_event_age,
            throttle_backoff: options.throttle_backoff,
        }
    }

    /// Most environments busy at once, across functions (the account's concurrency).
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// What functions without reserved concurrency share: the account's concurrency less
    /// every reservation.
    pub fn unreserved_concurrency(&self) -> usize {
        self.shared.unreserved.size()
    }

    /// The memory budget of execution environments and what they hold of it now, in MB.
    pub fn memory_mb(&self) -> (usize, usize) {
        (self.shared.memory.budget_mb(), self.shared.memory.held_mb())
    }

    /// Warm (idle) environments now, across functions.
    pub fn warm_environments(&self) -> usize {
        self.pools.values().map(|p| p.idle_count()).sum()
    }

    /// The functions this runtime runs.
    pub fn functions(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.pools.values().map(|p| p.spec())
    }

    /// The function named `name`.
    pub fn spec(&self, name: &str) -> Option<&FunctionSpec> {
        self.pools.get(name).map(|p| p.spec())
    }

    /// The log of function `name`.
    pub fn logs(&self, name: &str) -> Option<&Arc<LogBook>> {
        self.pools.get(name).map(|p| p.logs())
    }

    /// The ARN function `name` has, or would have, in this runtime.
    pub fn arn_for(&self, name: &str) -> String {
        let region = self
            .functions()
            .next()
            .map_or("us-east-1", |f| f.region.as_str());
        crate::spec::function_arn(region, name)
    }

    /// Runs one invocation.
    pub async fn invoke_function(
        &self,
        invocation: Invocation,
    ) -> Result<InvokeOutput, InvokeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(InvokeError::ShuttingDown);
        }
        let pool = self
            .pools
            .get(&invocation.function)
            .ok_or_else(|| InvokeError::NotFound(invocation.function.clone()))?;
        if invocation.payload.len() > MAX_SYNC_PAYLOAD_BYTES {
            return Err(InvokeError::RequestTooLarge {
                size: invocation.payload.len(),
                limit: MAX_SYNC_PAYLOAD_BYTES,
            });
        }
        // In a task of its own: a caller that goes away (a client that disconnects, an
        // HTTP/2 stream reset) does not end the invocation. As on Lambda, it runs to its end
        // and its environment stays warm for the next one.
        let (pool, shared) = (pool.clone(), self.shared.clone());
        let task = self
            .shared
            .tracker
            .spawn(async move { pool.invoke(invocation, &shared, None).await });
        task.await.unwrap_or_else(|error| {
            tracing::error!(%error, "an invocation's task failed");
            Err(InvokeError::ShuttingDown)
        })
    }

    /// Queues an asynchronous (`Event`) invocation and returns at once. The function runs in
    /// the background; when it fails it is retried after each of the configured delays, as
    /// Lambda retries twice; then the event is dropped with a warning. Events run in lanes,
    /// at most half of what the function may run at once (its concurrency, and the
    /// environments of its size the memory budget holds), waiting in order for one, so that
    /// a flood of events leaves the other half to synchronous callers; while the function is
    /// throttled the event waits, backing off, up to the maximum event age.
    pub fn invoke_event(&self, invocation: Invocation) -> Result<(), InvokeError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(InvokeError::ShuttingDown);
        }
        let pool = self
            .pools
            .get(&invocation.function)
            .cloned()
            .ok_or_else(|| InvokeError::NotFound(invocation.function.clone()))?;
        if invocation.payload.len() > MAX_ASYNC_PAYLOAD_BYTES {
            return Err(InvokeError::RequestTooLarge {
                size: invocation.payload.len(),
                limit: MAX_ASYNC_PAYLOAD_BYTES,
            });
        }
        let slot = self
            .queued
            .try_acquire()
            .map_err(|limit| InvokeError::Throttled {
                function: invocation.function.clone(),
                limit,
                reason: ThrottleReason::EventQueue,
            })?;
        let size = u32::try_from(invocation.payload.len()).unwrap_or(u32::MAX);
        let bytes = self
            .queued_bytes
            .clone()
            .try_acquire_many_owned(size)
            .map_err(|_| InvokeError::Throttled {
                function: invocation.function.clone(),
                limit: self.max_queued_event_bytes,
                reason: ThrottleReason::EventQueue,
            })?;
        let delivery = Delivery {
            pool,
            shared: self.shared.clone(),
            delays: self.async_retry_delays.clone(),
            max_age: self.max_event_age,
            backoff: self.throttle_backoff,
        };
        self.shared.tracker.spawn(async move {
            delivery.run(invocation).await;
            drop((slot, bytes));
        });
        Ok(())
    }

    /// Stops every execution environment and waits until every process is reaped.
    /// Invocations still running fail as their process goes away.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        for pool in self.pools.values() {
            pool.clear();
            // Nothing made ahead outlives the runtime either.
            if let Some(spare) = pool.take_spare() {
                spare.end().await;
            }
        }
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// One asynchronous invocation on its way: the first attempt and Lambda's retries.
struct Delivery {
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    delays: Arc<[Duration]>,
    max_age: Duration,
    backoff: (Duration, Duration),
}

impl Delivery {
    async fn run(self, invocation: Invocation) {
        let function = &self.pool.spec().name;
        let queued = tokio::time::Instant::now();
        let mut wait = self.backoff.0;
        let mut attempt = 0;
        loop {
            // Waits for a lane, then for concurrency, up to its maximum age (back-pressure);
            // throttled still when the node's memory is short.
            // The lane is held for the attempt only, not through a retry's wait.
            let deadline = queued + self.max_age;
            let Some(lane) = self.pool.event_lane(deadline, &self.shared.shutdown).await else {
                if !self.shared.shutdown.is_cancelled() {
                    tracing::warn!(
                        function,
                        "asynchronous invocation dropped: no lane free before its maximum age"
                    );
                }
                return;
            };
            let result = self
                .pool
                .invoke(invocation.clone(), &self.shared, Some(deadline))
                .await;
            drop(lane);
            let failure = match result {
                Ok(out) => out.function_error.map(|e| e.error_type),
                Err(InvokeError::Throttled { .. }) => {
                    // Not an attempt: the event waits for capacity, backing off.
                    if queued.elapsed() + wait > self.max_age {
                        tracing::warn!(
                            function,
                            "asynchronous invocation dropped: still throttled at its maximum age"
                        );
                        return;
                    }
                    if !self.pause(wait).await {
                        return;
                    }
                    wait = (wait * 2).min(self.backoff.1);
                    continue;
                }
                Err(InvokeError::ShuttingDown) => return,
                Err(error) => Some(error.to_string()),
            };
            let Some(failure) = failure else { return };
            let Some(delay) = self.delays.get(attempt).copied() else {
                tracing::warn!(
                    function,
                    attempts = attempt + 1,
                    failure,
                    "asynchronous invocation dropped after its retries"
                );
                return;
            };
            tracing::info!(
                function,
                attempt = attempt + 1,
                failure,
                retry_in_ms = delay.as_millis() as u64,
                "asynchronous invocation failed; retrying"
            );
            if !self.pause(delay).await {
                return;
            }
            attempt += 1;
        }
    }

    /// Sleeps for `wait`; `false` when the runtime shuts down first.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// The default memory budget of execution environments: three quarters of the node's
/// memory (`MemTotal`), or 4 GB when that cannot be read.
pub fn default_memory_budget_mb() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        });
    total_kb.map_or(4096, |kb| kb / 1024 * 3 / 4)
}

/// Stops environments idle for longer than `idle_timeout`, checking a few times per timeout.
async fn retire_idle(pools: Vec<Arc<Pool>>, idle_timeout: Duration, shutdown: CancellationToken) {
    let every = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for pool in &pools {
            let retired = pool.retire_idle(idle_timeout);
            if retired > 0 {
                tracing::info!(
                    function = pool.spec().name,
                    retired,
                    "idle execution environments stopped"
                );
            }
        }
    }
}

impl Invoker for Runtime {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Result<InvokeOutput, InvokeError>> {
        Box::pin(self.invoke_function(invocation))
    }
}
