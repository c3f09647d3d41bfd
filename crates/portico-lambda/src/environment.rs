//! One execution environment: a function process, its Runtime API endpoint and its state.
//!
//! An environment handles one invocation at a time. It is reusable after a response or a
//! reported error; after a timeout or a crash it is stopped and must be replaced, as Lambda
//! replaces a sandbox it had to reset.

use crate::exchange::{Exchange, Outcome, Pending, State};
use crate::extensions::{self, Extensions};
use crate::isolation::Isolation;
use crate::logs::{self, LogBook, Output, Report, ReportStatus, Sink, SyncRequest};
use crate::memory::MemoryLimit;
use crate::process::{self, ExtensionProcesses, Launcher, SpawnError};
use crate::runtime_api::{self, ApiContext, error_document};
use crate::spec::{FunctionSpec, Level};
use crate::telemetry::{Kind, Telemetry};
use bytes::Bytes;
use portico_invoke::{FunctionError, Invocation, InvokeError, InvokeOutput};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Ask the output captures (the runtime's, the extensions') to catch up with their
    /// pipes.
    sync_output: Vec<mpsc::Sender<SyncRequest>>,
    /// Reported on the first invocation only, as Lambda does for cold starts.
    init_duration: Mutex<Option<Duration>>,
    reusable: AtomicBool,
    /// Its extensions.
    extensions: Arc<Extensions>,
    /// Its telemetry subscribers.
    telemetry: Arc<Telemetry>,
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Environment {
    /// Starts an environment (from what was `prepared` for it, if anything) and waits for
    /// its init phase to finish (the first `/next`). An init that runs past the 10 s init
    /// limit is tried once more, as Lambda tries it again at the first invocation
    /// ("suppressed init"), with the function's own timeout.
    pub(crate) async fn start(
        spec: Arc<FunctionSpec>,
        book: Arc<LogBook>,
        host: Host<'_>,
        prepared: Option<Prepared>,
    ) -> Result<Self, InvokeError> {
        let first = Self::start_phase(
            spec.clone(),
            book.clone(),
            host,
            (spec.init_timeout, "init"),
            prepared,
        )
        .await;
        match first {
            Err(InvokeError::InitFailed { error_type, .. }) if error_type == INIT_TIMEOUT => {
                Self::start_phase(spec.clone(), book, host, (spec.timeout, "invoke"), None).await
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
        prepared: Option<Prepared>,
    ) -> Result<Self, InvokeError> {
        let sink = Sink::new(book.clone(), spec.logging);
        sink.system(
            &logs::init_start_line(&spec),
            Some(("platform.initStart", logs::init_start_record(&spec, phase))),
            Level::Info,
        );
        let started = Instant::now();
        let result = Self::start_once(spec, book, host, (limit, phase), prepared).await;
        if let Err(InvokeError::InitFailed { error_type, .. }) = &result {
            let (status, text_status) = if error_type == INIT_TIMEOUT {
                ("timeout", "timeout".to_owned())
            } else {
                ("error", format!("error\tError Type: {error_type}"))
            };
            let took = started.elapsed();
            sink.system(
                &format!(
                    "INIT_REPORT Init Duration: {:.2} ms\tPhase: {phase}\tStatus: {text_status}",
                    took.as_secs_f64() * 1000.0
                ),
                Some((
                    "platform.initReport",
                    logs::init_report_record(phase, status, Some(error_type), took),
                )),
                Level::Warn,
            );
        }
        result
    }

    /// Makes what an environment needs before any of its processes runs: its Runtime API
    /// listener, its cgroups, its sandbox, and (sandboxed, without external extensions,
    /// which start first) its runtime's process waiting to exec. Made ahead of a start, it
    /// takes all that off the cold start.
    pub(crate) async fn prepare(
        spec: &FunctionSpec,
        isolation: &Isolation,
    ) -> Result<Prepared, InvokeError> {
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
        let (exchange, inbox) = Exchange::new(spec.max_concurrency);
        let memory = Arc::new(MemoryLimit::create(spec.memory_size_mb));
        let spawn_failed = |e: SpawnError, error_type: &str| match e {
            SpawnError::Process { .. } => init_failed(error_type, e.to_string()),
            SpawnError::Sandbox(_) => init_failed("Runtime.Unavailable", e.to_string()),
        };
        let (launcher, outputs) = Launcher::new(spec, api_addr, isolation, &memory)
            .await
            .map_err(|e| spawn_failed(e, "Runtime.InvalidEntrypoint"))?;
        let runtime = if extensions::external(spec).is_empty() {
            launcher
                .prepare(&spec.program, &spec.args, (&spec.task_root, Kind::Function))
                .await
                .map_err(|e| spawn_failed(e, "Runtime.InvalidEntrypoint"))?
        } else {
            None
        };
        Ok(Prepared {
            listener,
            exchange: Arc::new(exchange),
            inbox,
            memory,
            launcher,
            outputs,
            runtime,
        })
    }

    async fn start_once(
        spec: Arc<FunctionSpec>,
        book: Arc<LogBook>,
        Host {
            tracker,
            parent,
            isolation,
        }: Host<'_>,
        (init_timeout, phase): (Duration, &str),
        prepared: Option<Prepared>,
    ) -> Result<Self, InvokeError> {
        let started = Instant::now();
        let init_failed = |error_type: &str, message: String| InvokeError::InitFailed {
            function: spec.name.clone(),
            error_type: error_type.to_owned(),
            message,
        };
        let Prepared {
            listener,
            exchange,
            inbox,
            memory,
            launcher,
            outputs,
            runtime,
        } = match prepared {
            Some(prepared) => prepared,
            None => Self::prepare(&spec, isolation).await?,
        };
        let stop = parent.child_token();
        let reaped = CancellationToken::new();
        let telemetry = Arc::new(Telemetry::new());
        telemetry.platform_telemetry("platform.initStart", logs::init_start_record(&spec, phase));
        let spawn_failed = |e: SpawnError, error_type: &str| match e {
            SpawnError::Process { .. } => init_failed(error_type, e.to_string()),
            SpawnError::Sandbox(_) => init_failed("Runtime.Unavailable", e.to_string()),
        };
        let sandboxed = started.elapsed();
        let external = extensions::external(&spec);
        if external.len() > extensions::MAX_EXTENSIONS {
            return Err(init_failed(
                "Extension.LaunchError",
                format!(
                    "{} extensions in /opt/extensions: Lambda's limit is {}",
                    external.len(),
                    extensions::MAX_EXTENSIONS
                ),
            ));
        }
        let registry = Arc::new(Extensions::new(
            external.iter().map(|(name, _)| name.clone()).collect(),
        ));
        let ctx = Arc::new(ApiContext {
            exchange: exchange.clone(),
            extensions: registry.clone(),
            function: extensions::FunctionInfo {
                name: spec.name.clone(),
                version: spec.version.clone(),
                handler: spec.handler.clone(),
                account_id: crate::spec::ACCOUNT_ID.into(),
            },
            telemetry: telemetry.clone(),
        });
        let pids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let members = runtime_api::Members {
            pids: pids.clone(),
            memory: Some(memory.clone()),
            pid_namespace: launcher.pid_namespace_id(),
        };
        tracker.spawn(runtime_api::serve(
            listener,
            (ctx, Some(members)),
            stop.clone(),
        ));
        let sink = Arc::new(Sink::with_telemetry(book, spec.logging, telemetry.clone()));
        let mut sync_output = Vec::new();
        for (pipe, kind) in [
            (outputs.function, Kind::Function),
            (outputs.extensions, Kind::Extension),
        ] {
            let (sync, syncs) = mpsc::channel(1);
            sync_output.push(sync);
            tracker.spawn(logs::capture(
                sink.clone(),
                Output::new(pipe, kind),
                syncs,
                reaped.clone(),
            ));
        }
        let processes = ExtensionProcesses {
            registry: registry.clone(),
            telemetry: telemetry.clone(),
            watchers: TaskTracker::new(),
            kill: CancellationToken::new(),
        };
        let started_process = |pid: Option<u32>| {
            if let Some(pid) = pid {
                pids.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
                if !launcher.joins_cgroups() {
                    memory.enter(pid);
                }
            }
        };
        // External extensions first, each registered before the runtime starts.
        let opt = spec.opt_dir.clone().unwrap_or_default();
        for (name, path) in external {
            let child = match launcher.start(&path, &[], (&opt, Kind::Extension)).await {
                Ok(child) => child,
                Err(e) => {
                    processes.kill.cancel();
                    return Err(spawn_failed(e, "Extension.LaunchError"));
                }
            };
            started_process(child.id());
            processes.watchers.spawn(process::watch_extension(
                child,
                name,
                registry.clone(),
                (stop.clone(), processes.kill.clone()),
            ));
        }
        let registered = tokio::time::timeout(init_timeout, registry.registered()).await;
        if let Some(failure) = init_failure(registered, init_timeout) {
            processes.kill.cancel();
            return Err(init_failed(failure.0, failure.1));
        }
        let child = match runtime {
            // Made ahead, waiting to exec.
            Some(runtime) => runtime.start().map_err(SpawnError::from),
            None => {
                launcher
                    .start(&spec.program, &spec.args, (&spec.task_root, Kind::Function))
                    .await
            }
        };
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                processes.kill.cancel();
                return Err(spawn_failed(e, "Runtime.InvalidEntrypoint"));
            }
        };
        let pid = child.id();
        started_process(pid);
        let spawned = started.elapsed();
        if let Some(pid) = pid {
            memory.watch(pid);
        }
        let sandbox = launcher.finish();
        let memory = pid.map(|_| memory);
        tracker.spawn(process::supervise(
            child,
            exchange.clone(),
            (stop.clone(), reaped),
            (memory.clone(), sandbox),
            processes,
        ));

        let env = Self {
            spec: spec.clone(),
            inbox,
            state: exchange.subscribe(),
            stop,
            pid,
            memory,
            sink,
            sync_output,
            init_duration: Mutex::new(None),
            reusable: AtomicBool::new(true),
            extensions: registry,
            telemetry,
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
                tracing::debug!(
                    function = spec.name,
                    prepared_ms = sandboxed.as_secs_f64() * 1000.0,
                    spawned_ms = spawned.as_secs_f64() * 1000.0,
                    ready_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "execution environment started"
                );
                // The init phase ends when the runtime and every extension are ready.
                env.extensions.close();
                let left = init_timeout.saturating_sub(started.elapsed());
                let ready = tokio::time::timeout(left, env.extensions.ready()).await;
                if let Some((error_type, message)) = init_failure(ready, init_timeout) {
                    env.init_done(phase, started.elapsed(), Some(error_type));
                    env.retire("failure");
                    return Err(init_failed(error_type, message));
                }
                env.init_done(phase, started.elapsed(), None);
                *env.init_duration.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(started.elapsed());
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

    /// The end of the init phase in telemetry: the extensions, the runtime's status and
    /// the phase's report; no more subscriptions after it.
    fn init_done(&self, phase: &str, took: Duration, error_type: Option<&str>) {
        for (name, events) in self.extensions.registered_events() {
            self.telemetry.platform(
                "platform.extension",
                json!({"name": name, "state": "Ready", "events": events}),
            );
        }
        let status = if error_type.is_some() {
            "error"
        } else {
            "success"
        };
        let mut done = json!({"initializationType": "on-demand", "phase": phase, "status": status});
        if let Some(error_type) = error_type {
            done["errorType"] = json!(error_type);
        }
        self.telemetry
            .platform_telemetry("platform.initRuntimeDone", done);
        self.telemetry.platform_telemetry(
            "platform.initReport",
            logs::init_report_record(phase, status, error_type, took),
        );
        self.telemetry.close();
    }

    /// Whether this environment may take another invocation.
    pub(crate) fn is_reusable(&self) -> bool {
        self.reusable.load(Ordering::Relaxed)
            && matches!(*self.state.borrow(), State::Ready)
            && self.extensions.fatal().is_none()
    }

    /// Runs one invocation. Function failures come back in [`InvokeOutput::function_error`].
    pub(crate) async fn invoke(&self, invocation: Invocation) -> InvokeOutput {
        let (mut output, rest) = self.respond(invocation).await;
        output.log_tail = self.complete(rest).await;
        output
    }

    /// Whether an invocation's response may go to its caller before the invocation is
    /// over: when extensions registered for `INVOKE` may still be working on it (as on
    /// Lambda, the caller does not wait for them), and the caller did not ask for the
    /// log's tail (which ends with the `REPORT` line).
    pub(crate) fn responds_early(&self, invocation: &Invocation) -> bool {
        !invocation.tail_logs && self.spec.max_concurrency <= 1 && self.extensions.any_for_invoke()
    }

    /// Runs one invocation until its response: the output for the caller, and what is
    /// left to do ([`Environment::complete`]). Function failures come back in
    /// [`InvokeOutput::function_error`].
    pub(crate) async fn respond(&self, invocation: Invocation) -> (InvokeOutput, Invoked) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        // With several invocations at once (Lambda Managed Instances), lines are not
        // attributed to one of them, and there is no tail: the runtime's own JSON records
        // carry their request ids.
        let concurrent = self.spec.max_concurrency > 1;
        if !concurrent {
            self.sink.begin(&request_id, invocation.tail_logs);
        }
        self.sink.system(
            &format!(
                "START RequestId: {request_id} Version: {}",
                self.spec.version
            ),
            Some((
                "platform.start",
                json!({"requestId": request_id, "version": self.spec.version}),
            )),
            Level::Info,
        );
        let (reply, outcome) = oneshot::channel();
        let deadline = deadline_ms(self.spec.timeout);
        let trace_id = crate::xray::header(invocation.trace_id.as_deref());
        let tracing = json!({"type": "X-Amzn-Trace-Id", "value": trace_id});
        self.telemetry.platform(
            "platform.start",
            json!({"requestId": request_id, "version": self.spec.version, "tracing": tracing}),
        );
        // Extensions get the event as the runtime does: with the ARN it was invoked by (an
        // alias's, a version's).
        let arn = match invocation.function.split_once(':') {
            Some((_, qualifier)) if !qualifier.is_empty() => crate::spec::function_arn(
                &self.spec.region,
                &format!("{}:{qualifier}", self.spec.name),
            ),
            _ => self.spec.arn(),
        };
        self.extensions.dispatch(&extensions::Event::Invoke {
            request_id: &request_id,
            deadline_ms: deadline,
            function_arn: &arn,
            trace_id: Some(&trace_id),
        });
        let pending = Pending {
            request_id: request_id.clone(),
            payload: invocation.payload,
            deadline_ms: deadline,
            trace_id: Some(trace_id),
            client_context: invocation.client_context,
            cognito_identity: invocation.cognito_identity,
            invoked_arn: arn,
            reply,
        };
        let mut ended = self.run(pending, outcome).await;
        let runtime_done = self.runtime_done(&request_id, &ended, started.elapsed(), &tracing);
        // A spike between two samples still shows in the peak: the function went over even
        // if it replied, and Lambda would have killed it.
        if self.memory.as_ref().is_some_and(|m| m.went_over()) {
            ended = Ended::OutOfMemory;
        }
        let status = match &ended {
            Ended::Outcome(_) => None,
            Ended::TimedOut => Some(ReportStatus::Timeout),
            Ended::Exited(_) if self.oom_killed() => {
                Some(ReportStatus::Error("Runtime.OutOfMemory"))
            }
            Ended::OutOfMemory => Some(ReportStatus::Error("Runtime.OutOfMemory")),
            Ended::Exited(_) => Some(ReportStatus::Error("Runtime.ExitError")),
        };
        let extensions = matches!(ended, Ended::Outcome(_)) && !concurrent;
        let output = self.conclude(&request_id, ended, started.elapsed());
        let rest = Invoked {
            request_id,
            started,
            tracing,
            runtime_done,
            status,
            extensions,
            concurrent,
        };
        (output, rest)
    }

    /// The end of an invocation once its response is out: its extensions' work on it,
    /// Lambda's `END` and `REPORT` lines; the log's tail, if it was asked for.
    pub(crate) async fn complete(&self, rest: Invoked) -> Option<String> {
        let Invoked {
            request_id,
            started,
            tracing,
            runtime_done,
            status,
            extensions,
            concurrent,
        } = rest;
        if extensions {
            self.extensions_done(started).await;
        }
        self.catch_up_output().await;
        self.sink.system(
            &format!("END RequestId: {request_id}"),
            Some(("platform.runtimeDone", runtime_done)),
            Level::Info,
        );
        self.telemetry
            .platform_logs("platform.end", json!({"requestId": request_id}));
        let report = Report {
            request_id: &request_id,
            duration: started.elapsed(),
            memory_size_mb: self.spec.memory_size_mb,
            // Of a process that is gone, the last sample.
            max_memory_used_mb: self.memory.as_ref().and_then(|m| m.peak_mb()),
            init_duration: self
                .init_duration
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            status,
        };
        let record = report.record(&tracing);
        let level = if status.is_some() {
            Level::Warn
        } else {
            Level::Info
        };
        self.sink.system(
            &report.line(),
            Some(("platform.report", record.clone())),
            level,
        );
        self.telemetry.platform("platform.report", record);
        if concurrent { None } else { self.sink.end() }
    }

    /// Lambda's `platform.runtimeDone`: how the runtime ended the invocation, and when;
    /// sent to telemetry, and returned for the log's `END`.
    fn runtime_done(
        &self,
        request_id: &str,
        ended: &Ended,
        took: Duration,
        tracing: &Value,
    ) -> Value {
        let (status, error_type, produced) = match ended {
            Ended::Outcome(Outcome::Response(body)) => ("success", None, body.len()),
            Ended::Outcome(Outcome::Error { error_type, .. }) => {
                ("error", Some(error_type.as_str()), 0)
            }
            Ended::TimedOut => ("timeout", None, 0),
            Ended::OutOfMemory => ("failure", Some("Runtime.OutOfMemory"), 0),
            Ended::Exited(_) => ("failure", Some("Runtime.ExitError"), 0),
        };
        let mut record = json!({
            "requestId": request_id,
            "status": status,
            "metrics": {"durationMs": logs::millis(took), "producedBytes": produced},
            "tracing": tracing,
        });
        if let Some(error_type) = error_type {
            record["errorType"] = json!(error_type);
        }
        self.telemetry
            .platform_telemetry("platform.runtimeDone", record.clone());
        record
    }

    /// Waits, within the invocation's timeout, until every extension is done with the
    /// invocation (asked for its next event); an extension that fails or runs out of time
    /// ends the environment, as in Lambda.
    async fn extensions_done(&self, started: Instant) {
        let left = self.spec.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.extensions.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err((error_type, message))) => {
                self.sink
                    .system(&format!("{error_type}: {message}"), None, Level::Error);
                self.retire("failure");
            }
            Err(_) => {
                self.sink.system(
                    &format!(
                        "Extensions did not finish the invocation within the timeout ({:.2} s)",
                        self.spec.timeout.as_secs_f64()
                    ),
                    None,
                    Level::Error,
                );
                self.retire("timeout");
            }
        }
    }

    /// Waits until every line the function wrote so far is in the log, so that none lands
    /// after `END`. A process that is gone has nothing more to wait for.
    async fn catch_up_output(&self) {
        for sync in &self.sync_output {
            let (done, caught_up) = oneshot::channel();
            if sync.send(done).await.is_ok() {
                let _ = caught_up.await;
            }
        }
    }

    async fn run(&self, pending: Pending, outcome: oneshot::Receiver<Outcome>) -> Ended {
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

    fn conclude(&self, request_id: &str, ended: Ended, elapsed: Duration) -> InvokeOutput {
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
                // Lambda resets an environment whose invocation timed out; one taking
                // several at once (Managed Instances) reports the timeout and goes on.
                if self.spec.max_concurrency <= 1 {
                    self.retire("timeout");
                }
                // The log line in Lambda's form (time, request id, how long it ran); the
                // caller gets the error document Lambda returns.
                self.sink.system(
                    &format!(
                        "{} {request_id} Task timed out after {:.2} seconds",
                        process::rfc3339(std::time::SystemTime::now()),
                        elapsed.as_secs_f64()
                    ),
                    None,
                    Level::Error,
                );
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
                self.sink.system(&message, None, Level::Error);
                self.sink.system("Runtime.OutOfMemory", None, Level::Error);
                failed(
                    "Runtime.OutOfMemory",
                    error_document("Runtime.OutOfMemory", &message),
                    false,
                )
            }
            Ended::Exited(status) => {
                self.retire("failure");
                let message =
                    format!("RequestId: {request_id} Error: Runtime exited with error: {status}");
                self.sink.system(&message, None, Level::Error);
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
    fn kill_now(&self) {
        if let Some(pid) = self.pid {
            process::kill_group(pid);
        }
        self.retire("failure");
    }

    /// Whether the kernel killed the process for going over its memory.
    fn oom_killed(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.oom_killed())
    }

    /// Stops this environment; it will not be reused. `reason` is what its extensions are
    /// told: `spindown`, `timeout` or `failure`.
    fn retire(&self, reason: &'static str) {
        self.extensions.set_shutdown_reason(reason);
        self.reusable.store(false, Ordering::Relaxed);
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

/// The failure of an init-phase wait for extensions (`Err` from the timeout: the init
/// phase ran out of time).
fn init_failure(
    waited: Result<Result<(), (&'static str, String)>, tokio::time::error::Elapsed>,
    limit: Duration,
) -> Option<(&'static str, String)> {
    match waited {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure),
        Err(_) => Some((
            INIT_TIMEOUT,
            format!(
                "init phase did not finish within {:.2} s: extensions not ready",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// An environment made ahead of its start ([`Environment::prepare`]).
pub(crate) struct Prepared {
    listener: TcpListener,
    exchange: Arc<Exchange>,
    inbox: mpsc::Sender<Pending>,
    memory: Arc<MemoryLimit>,
    launcher: Launcher,
    outputs: process::Outputs,
    /// The runtime's process, waiting to exec.
    runtime: Option<portico_sandbox::Prepared>,
}

impl Prepared {
    /// Ends an environment made ahead that was not used: its waiting process and its
    /// sandbox, waiting until they are gone.
    pub(crate) async fn end(self) {
        if let Some(runtime) = self.runtime {
            runtime.end().await;
        }
        if let Some(sandbox) = self.launcher.finish() {
            sandbox.end().await;
        }
    }
}

/// What is left of an invocation once its response is out.
pub(crate) struct Invoked {
    request_id: String,
    started: Instant,
    tracing: Value,
    runtime_done: Value,
    status: Option<ReportStatus>,
    /// The runtime answered: its extensions may still be working on it.
    extensions: bool,
    concurrent: bool,
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
