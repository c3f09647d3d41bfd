//! One execution environment: a function process, its Runtime API endpoint and its state.
//!
//! An environment handles one invocation at a time. It is reusable after a response or a
//! reported error; after a timeout or a crash it is stopped and must be replaced, as Lambda
//! replaces a sandbox it had to reset.

use crate::exchange::{Exchange, Outcome, Pending, State};
use crate::isolation::Isolation;
use crate::logs::{self, LogBook, Output, Report, ReportStatus, Sink, SyncRequest};
use crate::memory::MemoryLimit;
use crate::process::{self, SpawnError};
use crate::runtime_api::{self, ApiContext, error_document};
use crate::spec::FunctionSpec;
use bytes::Bytes;
use portico_invoke::{FunctionError, Invocation, InvokeError, InvokeOutput};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an environment is started with: the owner of its tasks, the token whose
/// cancellation stops it, and how it is isolated.
#[derive(Clone, Copy)]
pub(crate) struct Host<'a> {
    pub(crate) tracker: &'a TaskTracker,
    pub(crate) parent: &'a CancellationToken,
    pub(crate) isolation: &'a Isolation,
}

/// A running execution environment.
pub(crate) struct Environment {
    spec: Arc<FunctionSpec>,
    inbox: mpsc::Sender<Pending>,
    state: watch::Receiver<State>,
    /// Stops the process and the API server; fired on drop.
    stop: CancellationToken,
    pid: Option<u32>,
    /// The memory limit; shared with the supervisor, which keeps it until the process is
    /// reaped (a cgroup can only go once it is empty).
    memory: Option<Arc<MemoryLimit>>,
    /// Where this environment's log lines go.
    sink: Arc<Sink>,
    /// Asks the output capture to catch up with the pipe.
    sync_output: mpsc::Sender<SyncRequest>,
    /// Reported on the first invocation only, as Lambda does for cold starts.
    init_duration: Option<Duration>,
    reusable: bool,
    /// Its sandbox, if it has one: everything in it ends when it is dropped.
    _sandbox: Option<portico_sandbox::Sandbox>,
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Environment {
    /// Starts an environment and waits for its init phase to finish (the first `/next`). An
    /// init that runs past the 10 s init limit is tried once more, as Lambda tries it again
    /// at the first invocation ("suppressed init"), with the function's own timeout.
    pub(crate) async fn start(
        spec: Arc<FunctionSpec>,
        book: Arc<LogBook>,
        host: Host<'_>,
    ) -> Result<Self, InvokeError> {
        let first = Self::start_phase(
            spec.clone(),
            book.clone(),
            host,
            (spec.init_timeout, "init"),
        )
        .await;
        match first {
            Err(InvokeError::InitFailed { error_type, .. }) if error_type == INIT_TIMEOUT => {
                Self::start_phase(spec.clone(), book, host, (spec.timeout, "invoke")).await
            }
            other => other,
        }
    }

    /// One init: Lambda's `INIT_START` line, the start, and an `INIT_REPORT` line when it
    /// fails (`Status: timeout`, or `Status: error` with the error type), in `phase`.
    async fn start_phase(
        spec: Arc<FunctionSpec>,
        book: Arc<LogBook>,
        host: Host<'_>,
        (limit, phase): (Duration, &str),
    ) -> Result<Self, InvokeError> {
        let sink = Sink::new(book.clone());
        sink.line(&logs::init_start_line(&spec));
        let started = Instant::now();
        let result = Self::start_once(spec, book, host, limit).await;
        if let Err(InvokeError::InitFailed { error_type, .. }) = &result {
            let status = if error_type == INIT_TIMEOUT {
                "timeout".to_owned()
            } else {
                format!("error\tError Type: {error_type}")
            };
            sink.line(&format!(
                "INIT_REPORT Init Duration: {:.2} ms\tPhase: {phase}\tStatus: {status}",
                started.elapsed().as_secs_f64() * 1000.0
            ));
        }
        result
    }

    async fn start_once(
        spec: Arc<FunctionSpec>,
        book: Arc<LogBook>,
        Host {
            tracker,
            parent,
            isolation,
        }: Host<'_>,
        init_timeout: Duration,
    ) -> Result<Self, InvokeError> {
        let started = Instant::now();
        let init_failed = |error_type: &str, message: String| InvokeError::InitFailed {
            function: spec.name.clone(),
            error_type: error_type.to_owned(),
            message,
        };
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|e| init_failed("Runtime.Unavailable", format!("runtime API bind: {e}")))?;
        let api_addr = listener
            .local_addr()
            .map_err(|e| init_failed("Runtime.Unavailable", format!("runtime API address: {e}")))?;
        let (exchange, inbox) = Exchange::new();
        let exchange = Arc::new(exchange);
        let stop = parent.child_token();
        let reaped = CancellationToken::new();

        let memory = Arc::new(MemoryLimit::create(spec.memory_size_mb));
        let spawned = process::spawn(&spec, api_addr, isolation, &memory)
            .await
            .map_err(|e| match e {
                SpawnError::Process { .. } => {
                    init_failed("Runtime.InvalidEntrypoint", e.to_string())
                }
                SpawnError::Sandbox(_) => init_failed("Runtime.Unavailable", e.to_string()),
            })?;
        let process::Spawned {
            child,
            output,
            sandbox,
        } = spawned;
        // A process started in a sandbox joined its cgroups before it ran.
        let joined_cgroups = sandbox.is_some();
        let pid = child.id();
        let memory = pid.map(|pid| {
            memory.attach(pid, joined_cgroups);
            memory.clone()
        });
        let ctx = Arc::new(ApiContext {
            exchange: exchange.clone(),
            function_arn: spec.arn(),
        });
        let members = pid.map(|pid| runtime_api::Members {
            pid,
            memory: memory.clone(),
        });
        tracker.spawn(runtime_api::serve(listener, (ctx, members), stop.clone()));
        let sink = Arc::new(Sink::new(book));
        let (sync_output, syncs) = mpsc::channel(1);
        tracker.spawn(logs::capture(
            sink.clone(),
            Output::new(output),
            syncs,
            reaped.clone(),
        ));
        tracker.spawn(process::supervise(
            child,
            exchange.clone(),
            stop.clone(),
            reaped,
            memory.clone(),
        ));

        let mut env = Self {
            spec: spec.clone(),
            inbox,
            state: exchange.subscribe(),
            stop,
            pid,
            memory,
            sink,
            sync_output,
            init_duration: None,
            reusable: true,
            _sandbox: sandbox,
        };
        let mut watch = env.state.clone();
        let settled = tokio::select! {
            settled = tokio::time::timeout(
                init_timeout,
                watch.wait_for(|s| *s != State::Starting),
            ) => settled.map(|r| r.map(|state| state.clone())),
            _ = over_limit(&env.memory) => {
                env.kill_now();
                return Err(init_failed(
                    "Runtime.OutOfMemory",
                    "Runtime exited with error: signal: killed".to_owned(),
                ));
            }
        };
        let state = match settled {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => State::Exited {
                status: "supervisor gone".into(),
            },
            Err(_) => {
                return Err(init_failed(
                    INIT_TIMEOUT,
                    format!(
                        "init phase did not finish within {:.2} s",
                        init_timeout.as_secs_f64()
                    ),
                ));
            }
        };
        match state {
            State::Ready => {
                env.init_duration = Some(started.elapsed());
                Ok(env)
            }
            State::InitFailed {
                error_type,
                message,
            } => Err(init_failed(&error_type, message)),
            State::Exited { status } => Err(init_failed(
                if env.oom_killed() {
                    "Runtime.OutOfMemory"
                } else {
                    "Runtime.ExitError"
                },
                format!("Runtime exited with error: {status}"),
            )),
            State::Starting => Err(init_failed("Runtime.Unknown", "init did not settle".into())),
        }
    }

    /// Whether this environment may take another invocation.
    pub(crate) fn is_reusable(&self) -> bool {
        self.reusable && matches!(*self.state.borrow(), State::Ready)
    }

    /// Runs one invocation. Function failures come back in [`InvokeOutput::function_error`].
    pub(crate) async fn invoke(&mut self, invocation: Invocation) -> InvokeOutput {
        let request_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        self.sink.begin(&request_id, invocation.tail_logs);
        self.sink
            .line(&format!("START RequestId: {request_id} Version: $LATEST"));
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            request_id: request_id.clone(),
            payload: invocation.payload,
            deadline_ms: deadline_ms(self.spec.timeout),
            trace_id: Some(crate::xray::header(invocation.trace_id.as_deref())),
            client_context: invocation.client_context,
            cognito_identity: invocation.cognito_identity,
            reply,
        };
        let mut ended = self.run(pending, outcome).await;
        // A spike between two samples still shows in the peak: the function went over even
        // if it replied, and Lambda would have killed it.
        if self.memory.as_ref().is_some_and(|m| m.went_over()) {
            ended = Ended::OutOfMemory;
        }
        self.catch_up_output().await;
        let status = match &ended {
            Ended::Outcome(_) => None,
            Ended::TimedOut => Some(ReportStatus::Timeout),
            Ended::Exited(_) if self.oom_killed() => {
                Some(ReportStatus::Error("Runtime.OutOfMemory"))
            }
            Ended::OutOfMemory => Some(ReportStatus::Error("Runtime.OutOfMemory")),
            Ended::Exited(_) => Some(ReportStatus::Error("Runtime.ExitError")),
        };
        let mut output = self.conclude(&request_id, ended, started.elapsed());
        self.sink.line(&format!("END RequestId: {request_id}"));
        let report = Report {
            request_id: &request_id,
            duration: started.elapsed(),
            memory_size_mb: self.spec.memory_size_mb,
            // Of a process that is gone, the last sample.
            max_memory_used_mb: self.memory.as_ref().and_then(|m| m.peak_mb()),
            init_duration: self.init_duration.take(),
            status,
        };
        self.sink.line(&report.line());
        output.log_tail = self.sink.end();
        output
    }

    /// Waits until every line the function wrote so far is in the log, so that none lands
    /// after `END`. A process that is gone has nothing more to wait for.
    async fn catch_up_output(&self) {
        let (done, caught_up) = oneshot::channel();
        if self.sync_output.send(done).await.is_ok() {
            let _ = caught_up.await;
        }
    }

    async fn run(&mut self, pending: Pending, outcome: oneshot::Receiver<Outcome>) -> Ended {
        if self.inbox.send(pending).await.is_err() {
            return Ended::Exited(self.exit_status());
        }
        let mut state = self.state.clone();
        let gone = state.wait_for(|s| matches!(s, State::Exited { .. } | State::InitFailed { .. }));
        tokio::select! {
            // A function that replies and then exits has replied: look at the reply first.
            biased;
            reply = outcome => match reply {
                Ok(outcome) => Ended::Outcome(outcome),
                Err(_) => Ended::Exited(self.exit_status()),
            },
            _ = gone => Ended::Exited(self.exit_status()),
            _ = tokio::time::sleep(self.spec.timeout) => Ended::TimedOut,
            _ = over_limit(&self.memory) => Ended::OutOfMemory,
        }
    }

    fn conclude(&mut self, request_id: &str, ended: Ended, elapsed: Duration) -> InvokeOutput {
        let failed = |error_type: &str, body: Bytes, timed_out: bool| InvokeOutput {
            request_id: request_id.to_owned(),
            payload: body,
            function_error: Some(FunctionError {
                error_type: error_type.to_owned(),
                timed_out,
            }),
            log_tail: None,
        };
        match ended {
            Ended::Outcome(Outcome::Response(body)) => InvokeOutput {
                request_id: request_id.to_owned(),
                payload: body,
                function_error: None,
                log_tail: None,
            },
            Ended::Outcome(Outcome::Error { error_type, body }) => failed(&error_type, body, false),
            Ended::TimedOut => {
                self.retire();
                // The log line in Lambda's form (time, request id, how long it ran); the
                // caller gets the error document Lambda returns.
                self.sink.line(&format!(
                    "{} {request_id} Task timed out after {:.2} seconds",
                    process::rfc3339(std::time::SystemTime::now()),
                    elapsed.as_secs_f64()
                ));
                let message = format!(
                    "RequestId: {request_id} Error: Task timed out after {:.2} seconds",
                    self.spec.timeout.as_secs_f64()
                );
                failed(
                    "Sandbox.Timedout",
                    error_document("Sandbox.Timedout", &message),
                    true,
                )
            }
            Ended::Exited(_) if self.oom_killed() => {
                self.conclude(request_id, Ended::OutOfMemory, elapsed)
            }
            Ended::OutOfMemory => {
                self.kill_now();
                let message = format!(
                    "RequestId: {request_id} Error: Runtime exited with error: signal: killed"
                );
                self.sink.line(&message);
                self.sink.line("Runtime.OutOfMemory");
                failed(
                    "Runtime.OutOfMemory",
                    error_document("Runtime.OutOfMemory", &message),
                    false,
                )
            }
            Ended::Exited(status) => {
                self.retire();
                let message =
                    format!("RequestId: {request_id} Error: Runtime exited with error: {status}");
                self.sink.line(&message);
                failed(
                    "Runtime.ExitError",
                    error_document("Runtime.ExitError", &message),
                    false,
                )
            }
        }
    }

    /// Kills the process group at once (no SIGTERM first), as the OOM killer would, and
    /// retires the environment.
    fn kill_now(&mut self) {
        if let Some(pid) = self.pid {
            process::kill_group(pid);
        }
        self.retire();
    }

    /// Whether the kernel killed the process for going over its memory.
    fn oom_killed(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.oom_killed())
    }

    /// Stops this environment; it will not be reused.
    fn retire(&mut self) {
        self.reusable = false;
        self.stop.cancel();
    }

    fn exit_status(&self) -> String {
        match &*self.state.borrow() {
            State::Exited { status } => status.clone(),
            State::InitFailed { error_type, .. } => format!("init failed ({error_type})"),
            _ => "exited".to_owned(),
        }
    }
}

/// Lambda's init timeout error type.
const INIT_TIMEOUT: &str = "Runtime.InitTimeout";

/// How an invocation ended, before it is turned into an [`InvokeOutput`].
enum Ended {
    Outcome(Outcome),
    TimedOut,
    Exited(String),
    /// Over the memory limit.
    OutOfMemory,
}

/// Resolves once the environment is over its memory limit.
async fn over_limit(memory: &Option<Arc<MemoryLimit>>) {
    match memory {
        Some(memory) => memory.exceeded().await,
        None => std::future::pending().await,
    }
}

fn deadline_ms(timeout: Duration) -> u64 {
    let deadline = SystemTime::now() + timeout;
    deadline
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
