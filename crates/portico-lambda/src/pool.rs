//! The execution environments of one function: warm ones reused, new ones created on
//! demand.
//!
//! How many may run is Lambda's model: a function with reserved concurrency runs up to it,
//! and only it; the others share what the reservations leave of the runtime's concurrency
//! (the unreserved pool). And every environment, busy or warm, holds its memory size from
//! the node's [`Memory`] budget: a new one that does not fit first stops warm environments
//! of any function, the longest unused first, and is throttled only when that is not
//! enough. So no caller can start more processes than the node can hold.

use crate::environment::{Environment, Host, Prepared};
use crate::isolation::Isolation;
use crate::logs::LogBook;
use crate::spec::FunctionSpec;
use arc_swap::ArcSwap;
use portico_invoke::{Invocation, InvokeError, InvokeOutput, ThrottleReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A semaphore and the size it was made with, so that a refusal can name the limit.
#[derive(Clone)]
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

/// How long after a cold start the next spare environment is made.
const SPARE_AFTER: Duration = Duration::from_millis(500);

/// What every invocation shares: the unreserved concurrency (Lambda's account limit less
/// the reservations), the memory budget, every pool (for room in it), the owner of the
/// environments' tasks, the shutdown signal, and how environments are isolated.
pub(crate) struct Shared {
    pub(crate) unreserved: ArcSwap<Limit>,
    pub(crate) memory: Memory,
    /// The pools of the functions as configured now, by name.
    pub(crate) pools: ArcSwap<HashMap<String, Arc<Pool>>>,
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
    /// Its share of the memory budget.
    _memory: OwnedSemaphorePermit,
}

/// How an environment's start ended: the environment, or the error every invocation that
/// waited for it gets.
type Started = Option<Result<Arc<Held>, InvokeError>>;

/// An environment of the pool, or one starting, and how many invocations it is running
/// (or that wait for it).
struct Slot {
    env: SlotEnv,
    busy: usize,
    /// When it last became free (or started).
    since: Instant,
}

enum SlotEnv {
    /// Being started by an invocation; others may join it (an environment that takes
    /// several at once), and wait for its start.
    Starting(u64, watch::Receiver<Started>),
    Ready(Arc<Held>),
}

impl Slot {
    fn idle(&self) -> bool {
        self.busy == 0 && self.ready().is_some()
    }

    fn ready(&self) -> Option<&Arc<Held>> {
        match &self.env {
            SlotEnv::Ready(held) => Some(held),
            SlotEnv::Starting(..) => None,
        }
    }

    fn reusable(&self) -> bool {
        self.ready().is_none_or(|held| held.env.is_reusable())
    }
}

/// What an invocation found for itself.
enum Found {
    Warm(Arc<Held>),
    Starting(watch::Receiver<Started>),
}

/// Environments of one function.
pub(crate) struct Pool {
    spec: Arc<FunctionSpec>,
    /// Its environments, busy or warm. A warm one is reused before a new one starts: the
    /// one freed last (so the others can idle out); with several invocations per
    /// environment, the least busy with room.
    envs: Mutex<Vec<Slot>>,
    /// An environment made ahead for the next cold start (sandboxed functions): its
    /// sandbox, cgroups and runtime process waiting to exec.
    spare: Mutex<Option<Prepared>>,
    /// A spare is being made.
    preparing: std::sync::atomic::AtomicBool,
    /// The function's reserved concurrency, when it has one (changed in place: what runs
    /// keeps the permits it took).
    reserved: arc_swap::ArcSwapOption<Limit>,
    /// The lanes of its asynchronous invocations.
    events: Limit,
    /// The function's log, written by all its environments.
    book: Arc<LogBook>,
    /// The function's code or configuration changed, or it was removed: its environments
    /// finish their invocations and are stopped, none is kept or made.
    retired: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// The pool of `spec`, whose asynchronous invocations run `event_lanes` at a time,
    /// within the function's `reserved` concurrency (shared by its versions) when it has one.
    pub(crate) fn new(spec: FunctionSpec, event_lanes: usize, reserved: Option<Limit>) -> Self {
        Self {
            book: Arc::new(LogBook::new(&spec.name)),
            spec: Arc::new(spec),
            envs: Mutex::new(Vec::new()),
            spare: Mutex::new(None),
            preparing: std::sync::atomic::AtomicBool::new(false),
            reserved: arc_swap::ArcSwapOption::from(reserved.map(Arc::new)),
            events: Limit::new(event_lanes.max(1)),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The pool of `self`'s function changed: its log goes on.
    pub(crate) fn succeed(
        &self,
        spec: FunctionSpec,
        event_lanes: usize,
        reserved: Option<Limit>,
    ) -> Self {
        let mut next = Self::new(spec, event_lanes, reserved);
        next.book = self.book.clone();
        next
    }

    /// Its function's reserved concurrency, when it has one.
    pub(crate) fn reserved(&self) -> Option<Limit> {
        self.reserved.load().as_deref().cloned()
    }

    /// Counts its invocations against `reserved` from now on (the function's reservation
    /// changed); those running keep what they took.
    pub(crate) fn set_reserved(&self, reserved: Option<Limit>) {
        self.reserved.store(reserved.map(Arc::new));
    }

    /// Retires the pool: its warm environments and its spare are stopped now, the busy
    /// ones when their invocations are over.
    pub(crate) async fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
        self.clear();
        if let Some(spare) = self.take_spare() {
            spare.end().await;
        }
    }

    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
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

    /// Its function as it runs now: with its reserved concurrency as it is now.
    pub(crate) fn spec_arc(&self) -> Arc<FunctionSpec> {
        let reserved = self.reserved().map(|l| l.size());
        if reserved == self.spec.reserved_concurrency {
            return self.spec.clone();
        }
        let mut spec = FunctionSpec::clone(&self.spec);
        spec.reserved_concurrency = reserved;
        Arc::new(spec)
    }

    pub(crate) fn logs(&self) -> &Arc<LogBook> {
        &self.book
    }

    /// Runs one invocation on a warm environment, or on a new one; throttled when the
    /// function's concurrency or the node's memory is spent. With `wait_until`, it waits
    /// for concurrency until then instead (asynchronous invocations: back-pressure in
    /// arrival order, not a busy retry).
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        invocation: Invocation,
        shared: &Shared,
        wait_until: Option<tokio::time::Instant>,
    ) -> Result<InvokeOutput, InvokeError> {
        let (limit, reason) = match self.reserved() {
            Some(limit) => (limit, ThrottleReason::ReservedConcurrency),
            None => (
                Limit::clone(&shared.unreserved.load()),
                ThrottleReason::AccountConcurrency,
            ),
        };
        let concurrency = match wait_until {
            Some(deadline) => match limit.acquire_until(deadline, &shared.shutdown).await {
                Some(permit) => permit,
                None if shared.shutdown.is_cancelled() => return Err(InvokeError::ShuttingDown),
                None => return Err(self.throttled(limit.size(), reason)),
            },
            None => limit
                .try_acquire()
                .map_err(|size| self.throttled(size, reason))?,
        };
        let held = match self.take_warm() {
            Some(Found::Warm(held)) => held,
            Some(Found::Starting(mut started)) => {
                let outcome = started.wait_for(Option::is_some).await.map(|s| s.clone());
                match outcome {
                    Ok(Some(Ok(held))) => held,
                    Ok(Some(Err(error))) => return Err(error),
                    _ => return Err(InvokeError::ShuttingDown),
                }
            }
            None => self.clone().start_new(shared).await?,
        };
        if held.env.responds_early(&invocation) {
            // The caller gets the response now; the environment (and the function's
            // concurrency) stays busy until its extensions are done with the invocation.
            let (output, rest) = held.env.respond(invocation).await;
            let (pool, shutdown) = (self.clone(), shared.shutdown.clone());
            shared.tracker.spawn(async move {
                held.env.complete(rest).await;
                pool.release(&held, !shutdown.is_cancelled());
                drop(concurrency);
            });
            return Ok(output);
        }
        let output = held.env.invoke(invocation).await;
        self.release(&held, !shared.shutdown.is_cancelled());
        drop(concurrency);
        Ok(output)
    }

    /// Starts a new environment for an invocation; while it starts, invocations that find
    /// room in it wait for it rather than start their own.
    async fn start_new(self: Arc<Self>, shared: &Shared) -> Result<Arc<Held>, InvokeError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let memory = self.memory_for_new(shared)?;
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (announce, started) = watch::channel(None);
        self.lock_envs().push(Slot {
            env: SlotEnv::Starting(id, started),
            busy: 1,
            since: Instant::now(),
        });
        let host = Host {
            tracker: &shared.tracker,
            parent: &shared.shutdown,
            isolation: &shared.isolation,
        };
        let spare = self.take_spare();
        let result = Environment::start(self.spec.clone(), self.book.clone(), host, spare)
            .await
            .map(|env| {
                Arc::new(Held {
                    env,
                    _memory: memory,
                })
            });
        {
            let mut envs = self.lock_envs();
            let at = envs
                .iter()
                .position(|s| matches!(s.env, SlotEnv::Starting(sid, _) if sid == id));
            match (&result, at) {
                (Ok(held), Some(at)) => envs[at].env = SlotEnv::Ready(held.clone()),
                (Err(_), Some(at)) => {
                    envs.remove(at);
                }
                (_, None) => {}
            }
        }
        let _ = announce.send(Some(result.clone()));
        // The next cold start gets one too; made once this one is up, as moving a process
        // into its cgroups would hold up this start's threads.
        self.prepare_spare(shared, SPARE_AFTER);
        result
    }

    /// Takes the spare environment, if there is one.
    pub(crate) fn take_spare(&self) -> Option<Prepared> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Makes a spare environment in the background, `after` a while, unless one is there
    /// or being made; only for sandboxed functions (where it saves the sandbox and the
    /// cgroups' costs).
    pub(crate) fn prepare_spare(self: &Arc<Self>, shared: &Shared, after: Duration) {
        use std::sync::atomic::Ordering;
        if matches!(shared.isolation, Isolation::None)
            || shared.shutdown.is_cancelled()
            || self.is_retired()
            || self
                .spare
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            || self.preparing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (pool, isolation, shutdown) = (
            self.clone(),
            shared.isolation.clone(),
            shared.shutdown.clone(),
        );
        shared.tracker.spawn(async move {
            // Not in the middle of a burst of starts: made once the starts settle.
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = shutdown.cancelled() => {
                    pool.preparing.store(false, Ordering::Release);
                    return;
                }
            }
            match Environment::prepare(&pool.spec, &isolation).await {
                Ok(prepared) if !shutdown.is_cancelled() && !pool.is_retired() => {
                    *pool.spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(prepared);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(function = pool.spec.name, %error, "no spare environment");
                }
            }
            pool.preparing.store(false, Ordering::Release);
        });
    }

    /// A warm environment with room for one more invocation (or one starting, that will
    /// have), now counted busy with it.
    fn take_warm(&self) -> Option<Found> {
        let most = self.spec.max_concurrency.max(1);
        let mut envs = self.lock_envs();
        let slot = envs
            .iter_mut()
            .filter(|s| s.busy < most && s.reusable())
            .min_by_key(|s| (s.busy, std::cmp::Reverse(s.since)))?;
        slot.busy += 1;
        Some(match &slot.env {
            SlotEnv::Ready(held) => Found::Warm(held.clone()),
            SlotEnv::Starting(_, started) => Found::Starting(started.clone()),
        })
    }

    /// One invocation of `held` is over: it is free again, or (not reusable, or `keep`
    /// false at shutdown) stopped once it has none left.
    fn release(&self, held: &Arc<Held>, keep: bool) {
        let stopped = {
            let mut envs = self.lock_envs();
            let Some(at) = envs
                .iter()
                .position(|s| s.ready().is_some_and(|h| Arc::ptr_eq(h, held)))
            else {
                return;
            };
            let slot = &mut envs[at];
            slot.busy = slot.busy.saturating_sub(1);
            if slot.idle() {
                slot.since = Instant::now();
            }
            let done = !keep || !slot.reusable() || self.is_retired();
            (done && slot.idle()).then(|| envs.remove(at))
        };
        // Dropped outside the lock: dropping an environment stops its process.
        drop(stopped);
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
            let pools = shared.pools.load();
            let oldest = pools
                .values()
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
        self.lock_envs()
            .iter()
            .filter(|s| s.idle())
            .map(|s| s.since)
            .min()
    }

    /// Stops the warm environment unused the longest; whether there was one.
    fn retire_oldest(&self) -> bool {
        let oldest = {
            let mut envs = self.lock_envs();
            let at = envs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.idle())
                .min_by_key(|(_, s)| s.since)
                .map(|(at, _)| at);
            at.map(|at| envs.remove(at))
        };
        // Dropped outside the lock: dropping an environment stops its process.
        oldest.is_some()
    }

    /// Stops the environments idle for longer than `idle_timeout` (and the idle ones that
    /// cannot be reused); returns how many.
    pub(crate) fn retire_idle(&self, idle_timeout: Duration) -> usize {
        self.retire_where(|s| s.idle() && (!s.reusable() || s.since.elapsed() >= idle_timeout))
    }

    /// Stops the idle environments that `retire` picks; how many.
    fn retire_where(&self, retire: impl Fn(&Slot) -> bool) -> usize {
        let retired: Vec<Slot> = {
            let mut envs = self.lock_envs();
            let (out, keep) = envs.drain(..).partition(|s| retire(s));
            *envs = keep;
            out
        };
        // Dropped outside the lock: dropping an environment stops its process.
        retired.len()
    }

    /// Environments warm now.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock_envs().iter().filter(|s| s.idle()).count()
    }

    fn lock_envs(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.envs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn throttled(&self, limit: usize, reason: ThrottleReason) -> InvokeError {
        InvokeError::Throttled {
            function: self.spec.name.clone(),
            limit,
            reason,
        }
    }

    /// Drops every idle environment (their processes are stopped); busy ones are stopped
    /// when their invocations end. (The spare is ended by the runtime's shutdown.)
    pub(crate) fn clear(&self) {
        self.retire_where(Slot::idle);
    }
}
