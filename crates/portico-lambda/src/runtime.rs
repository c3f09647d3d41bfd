//! The function runtime: every configured function, the global concurrency limit, and the
//! shutdown sequence. Implements [`Invoker`].

use crate::isolation::Isolation;
use crate::logs::LogBook;
use crate::pool::{Limit, Memory, Pool, Shared};
use crate::spec::{AliasSpec, FunctionSpec, LATEST, version_key};
use arc_swap::ArcSwap;
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
    max_concurrency: usize,
    memory_budget_mb: usize,
    shared: Arc<Shared>,
    queued: Limit,
    /// Bytes of queued payload, a permit each.
    queued_bytes: Arc<tokio::sync::Semaphore>,
    max_queued_event_bytes: usize,
    async_retry_delays: Arc<[Duration]>,
    max_event_age: Duration,
    throttle_backoff: (Duration, Duration),
    /// One change of the functions at a time.
    applying: tokio::sync::Mutex<()>,
    /// Aliases by `NAME:ALIAS`.
    aliases: ArcSwap<HashMap<String, AliasSpec>>,
}

/// What [`Runtime::apply`] changed, by function name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Functions that were not there.
    pub added: Vec<String>,
    /// Functions whose code or configuration changed: new environments for them; the old
    /// ones finish their invocations and are stopped.
    pub replaced: Vec<String>,
    /// Functions no longer there: their environments finish their invocations and are
    /// stopped.
    pub removed: Vec<String>,
}

impl Applied {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

/// The account's concurrency less every reservation of `functions` (a function's, shared
/// by its versions).
fn unreserved(max_concurrency: usize, functions: &[FunctionSpec]) -> usize {
    let reserved: usize = functions
        .iter()
        .filter(|f| f.version == LATEST)
        .filter_map(|f| f.reserved_concurrency)
        .sum();
    max_concurrency.saturating_sub(reserved)
}

/// Each function's reserved concurrency, shared by its versions: the limit of `before` when
/// its size did not change (what runs counts against it), else a new one.
fn reservations(
    functions: &[FunctionSpec],
    before: &HashMap<String, Arc<Pool>>,
) -> HashMap<String, Limit> {
    functions
        .iter()
        .filter(|f| f.version == LATEST)
        .filter_map(|f| {
            let size = f.reserved_concurrency?;
            let kept = before
                .get(&f.name)
                .and_then(|p| p.reserved())
                .filter(|l| l.size() == size);
            Some((f.name.clone(), kept.unwrap_or_else(|| Limit::new(size))))
        })
        .collect()
}

/// Half of what `spec` may run at once: its concurrency, and the environments of its size
/// the memory budget holds (its asynchronous invocations' lanes).
fn event_lanes(spec: &FunctionSpec, unreserved: usize, memory_budget_mb: usize) -> usize {
    let concurrency = spec.reserved_concurrency.unwrap_or(unreserved);
    let fit = memory_budget_mb / (spec.memory_size_mb.max(1) as usize);
    concurrency.min(fit) / 2
}

impl Runtime {
    /// A runtime for `functions`; environments start on the first invocation. Called inside
    /// a tokio runtime, it also starts the task that retires idle environments.
    pub fn new(functions: Vec<FunctionSpec>, options: RuntimeOptions) -> Self {
        let unreserved = unreserved(options.max_concurrency, &functions);
        let reserved = reservations(&functions, &HashMap::new());
        let pools: HashMap<String, Arc<Pool>> = functions
            .into_iter()
            .map(|spec| {
                let lanes = event_lanes(&spec, unreserved, options.memory_budget_mb);
                let limit = reserved.get(&spec.name).cloned();
                (spec.key(), Arc::new(Pool::new(spec, lanes, limit)))
            })
            .collect();
        let shared = Arc::new(Shared {
            unreserved: ArcSwap::from_pointee(Limit::new(unreserved)),
            memory: Memory::new(options.memory_budget_mb),
            pools: ArcSwap::from_pointee(pools),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            isolation: options.isolation,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            // Each sandboxed function's first cold start finds an environment made ahead.
            for pool in shared.pools.load().values() {
                pool.prepare_spare(&shared, Duration::ZERO);
            }
            shared
                .tracker
                .spawn(retire_idle(shared.clone(), options.idle_timeout));
        }
        Self {
            max_concurrency: options.max_concurrency,
            memory_budget_mb: options.memory_budget_mb,
            shared,
            queued: Limit::new(options.max_queued_events),
            queued_bytes: Arc::new(tokio::sync::Semaphore::new(options.max_queued_event_bytes)),
            max_queued_event_bytes: options.max_queued_event_bytes,
            async_retry_delays: options.async_retry_delays.into(),
            max_event_age: options.max_event_age,
            throttle_backoff: options.throttle_backoff,
            applying: tokio::sync::Mutex::new(()),
            aliases: ArcSwap::default(),
        }
    }

    /// Sets the functions' aliases (invocations of `NAME:ALIAS` run the version it names).
    pub fn set_aliases(&self, aliases: Vec<AliasSpec>) {
        let by_key = aliases
            .into_iter()
            .map(|a| (format!("{}:{}", a.function, a.name), a))
            .collect();
        self.aliases.store(Arc::new(by_key));
    }

    /// Moves the runtime to `functions`, under traffic: invocations that start from now on
    /// run the new set. A function whose code or configuration changed gets new
    /// environments; its old ones finish the invocations they are running (never cut) and
    /// are stopped, as are those of a function no longer there. An unchanged function keeps
    /// its warm environments.
    pub async fn apply(&self, functions: Vec<FunctionSpec>, aliases: Vec<AliasSpec>) -> Applied {
        let _one = self.applying.lock().await;
        let unreserved = unreserved(self.max_concurrency, &functions);
        let before = self.shared.pools.load_full();
        let reserved = reservations(&functions, &before);
        let mut applied = Applied::default();
        let mut retiring = Vec::new();
        let mut pools = HashMap::new();
        for spec in functions {
            let name = spec.key();
            let lanes = event_lanes(&spec, unreserved, self.memory_budget_mb);
            let limit = reserved.get(&spec.name).cloned();
            let pool = match before.get(&name) {
                // Its reservation alone changed, or nothing: it goes on, its environments warm.
                Some(old) if old.spec().same_as(&spec) => {
                    old.set_reserved(limit);
                    old.clone()
                }
                Some(old) => {
                    applied.replaced.push(name.clone());
                    retiring.push(old.clone());
                    Arc::new(old.succeed(spec, lanes, limit))
                }
                None => {
                    applied.added.push(name.clone());
                    Arc::new(Pool::new(spec, lanes, limit))
                }
            };
            pools.insert(name, pool);
        }
        for (name, old) in before.iter() {
            if !pools.contains_key(name) {
                applied.removed.push(name.clone());
                retiring.push(old.clone());
            }
        }
        if unreserved != self.shared.unreserved.load().size() {
            // Invocations running on the old limit keep their permits until they end.
            self.shared
                .unreserved
                .store(Arc::new(Limit::new(unreserved)));
        }
        self.shared.pools.store(Arc::new(pools));
        self.set_aliases(aliases);
        for pool in retiring {
            self.shared
                .tracker
                .spawn(async move { pool.retire().await });
        }
        let pools = self.shared.pools.load();
        for name in applied.added.iter().chain(&applied.replaced) {
            if let Some(pool) = pools.get(name) {
                pool.prepare_spare(&self.shared, Duration::ZERO);
            }
        }
        applied.added.sort();
        applied.replaced.sort();
        applied.removed.sort();
        applied
    }

    /// Most environments busy at once, across functions (the account's concurrency).
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// What functions without reserved concurrency share: the account's concurrency less
    /// every reservation.
    pub fn unreserved_concurrency(&self) -> usize {
        self.shared.unreserved.load().size()
    }

    /// The memory budget of execution environments and what they hold of it now, in MB.
    pub fn memory_mb(&self) -> (usize, usize) {
        (self.shared.memory.budget_mb(), self.shared.memory.held_mb())
    }

    /// Warm (idle) environments now, across functions.
    pub fn warm_environments(&self) -> usize {
        self.shared
            .pools
            .load()
            .values()
            .map(|p| p.idle_count())
            .sum()
    }

    /// The functions this runtime runs now (their `$LATEST`).
    pub fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        self.shared
            .pools
            .load()
            .values()
            .filter(|p| p.spec().version == LATEST)
            .map(|p| p.spec_arc())
            .collect()
    }

    /// Every version of function `name` (`$LATEST` first, then by number).
    pub fn versions(&self, name: &str) -> Vec<Arc<FunctionSpec>> {
        let mut versions: Vec<Arc<FunctionSpec>> = self
            .shared
            .pools
            .load()
            .values()
            .filter(|p| p.spec().name == name)
            .map(|p| p.spec_arc())
            .collect();
        versions.sort_by_key(|v| (v.version != LATEST, v.version.parse::<u64>().unwrap_or(0)));
        versions
    }

    /// The aliases of function `name`, by name.
    pub fn aliases(&self, name: &str) -> Vec<AliasSpec> {
        let mut aliases: Vec<AliasSpec> = self
            .aliases
            .load()
            .values()
            .filter(|a| a.function == name)
            .cloned()
            .collect();
        aliases.sort_by(|a, b| a.name.cmp(&b.name));
        aliases
    }

    /// The alias `alias` of function `name`.
    pub fn alias(&self, name: &str, alias: &str) -> Option<AliasSpec> {
        self.aliases.load().get(&format!("{name}:{alias}")).cloned()
    }

    /// The function `function` names (`NAME`, `NAME:VERSION` or `NAME:ALIAS`; an alias's own
    /// version, not its additional one), as it is now.
    pub fn spec(&self, function: &str) -> Option<Arc<FunctionSpec>> {
        self.pool_for(function, false).map(|p| p.spec_arc())
    }

    /// The log of function `name`.
    pub fn logs(&self, name: &str) -> Option<Arc<LogBook>> {
        self.pool_for(name, false).map(|p| p.logs().clone())
    }

    /// The pool that runs an invocation of `function` (`NAME`, `NAME:$LATEST`,
    /// `NAME:VERSION`, `NAME:ALIAS`); `weighted`: an alias picks its additional version for
    /// its share of invocations.
    fn pool_for(&self, function: &str, weighted: bool) -> Option<Arc<Pool>> {
        let pools = self.shared.pools.load();
        let key = match function.split_once(':') {
            None => return pools.get(function).cloned(),
            Some((name, LATEST)) => name.to_owned(),
            Some((name, version)) if version.bytes().all(|b| b.is_ascii_digit()) => {
                version_key(name, version)
            }
            Some((name, _)) => {
                let aliases = self.aliases.load();
                let alias = aliases.get(function)?;
                let version = if weighted {
                    alias.pick()
                } else {
                    &alias.version
                };
                version_key(name, version)
            }
        };
        pools.get(&key).cloned()
    }

    /// The ARN function `name` has, or would have, in this runtime.
    pub fn arn_for(&self, name: &str) -> String {
        let region = self
            .functions()
            .first()
            .map_or_else(|| "us-east-1".to_owned(), |f| f.region.clone());
        crate::spec::function_arn(&region, name)
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
            .pool_for(&invocation.function, true)
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
        let shared = self.shared.clone();
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
            .pool_for(&invocation.function, true)
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
        for pool in self.shared.pools.load().values() {
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
async fn retire_idle(shared: Arc<Shared>, idle_timeout: Duration) {
    let every = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for pool in shared.pools.load().values() {
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
