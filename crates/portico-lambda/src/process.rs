//! Spawning a function's process with Lambda's environment, and ending it.
//!
//! Each execution environment runs in its own process group, so that ending it also ends
//! whatever the function started. The supervisor task owns the child: it reaps it when it
//! exits on its own, and terminates the whole group (SIGTERM, then SIGKILL after a grace
//! period) when the environment is stopped.

use crate::exchange::{Exchange, State};
use crate::extensions::{Event, Extensions};
use crate::isolation::{Isolation, View};
use crate::memory::MemoryLimit;
use crate::spec::FunctionSpec;
use crate::telemetry::Kind;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use portico_sandbox::{Entry, Resource};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stopped function gets to exit after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_millis(500);

/// Lambda's `PATH` before the layers' `bin`.
const LAMBDA_PATH: &str = "/var/lang/bin:/usr/local/bin:/usr/bin:/bin";

/// Starts an environment's processes (its extensions, then its runtime) where `isolation`
/// says, with Lambda's environment. The runtime's stdout and stderr go to one pipe, the
/// extensions' to another: one log stream in Lambda, two kinds of lines for telemetry.
pub(crate) struct Launcher {
    view: View,
    variables: Vec<(String, String)>,
    /// The sandbox, and how a process enters it.
    sandbox: Option<(portico_sandbox::Sandbox, Entry)>,
    /// The pipes' write ends (the runtime's, the extensions'), handed to each process;
    /// dropped by [`Launcher::finish`] so that the read ends see EOF once the processes
    /// are gone.
    writers: [std::io::PipeWriter; 2],
}

/// The read ends of an environment's output pipes.
pub(crate) struct Outputs {
    /// The runtime's.
    pub(crate) function: tokio::net::unix::pipe::Receiver,
    /// The extensions'.
    pub(crate) extensions: tokio::net::unix::pipe::Receiver,
}

/// Why a function could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    /// The process could not be started.
    #[error("cannot start {program}: {source}")]
    Process {
        program: String,
        source: std::io::Error,
    },
    /// Its sandbox could not be made.
    #[error(transparent)]
    Sandbox(#[from] portico_sandbox::SandboxError),
}

fn program_of(spec: &FunctionSpec) -> String {
    spec.program.display().to_string()
}

impl Launcher {
    /// Makes `spec`'s sandbox (when isolated) and the output pipe, whose read end is
    /// returned; processes get the Runtime API at `api` and join `memory`'s cgroups.
    pub(crate) async fn new(
        spec: &FunctionSpec,
        api: SocketAddr,
        isolation: &Isolation,
        memory: &MemoryLimit,
    ) -> Result<(Self, Outputs), SpawnError> {
        let view = match isolation {
            Isolation::None => View::host(spec),
            Isolation::Sandbox { .. } => View::sandboxed(spec),
        };
        let failed = |source| SpawnError::Process {
            program: "the output pipe".into(),
            source,
        };
        let (function, function_writer) = std::io::pipe().map_err(failed)?;
        let (extensions, extensions_writer) = std::io::pipe().map_err(failed)?;
        let outputs = Outputs {
            function: tokio::net::unix::pipe::Receiver::from_owned_fd(function.into())
                .map_err(failed)?,
            extensions: tokio::net::unix::pipe::Receiver::from_owned_fd(extensions.into())
                .map_err(failed)?,
        };
        let mut variables: Vec<(String, String)> = lambda_environment(spec, api, &view)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        if let Some(image) = &spec.image {
            // The image's own variables (its PATH, its LANG…), but not over Lambda's.
            for (name, value) in &image.env {
                let reserved = name.starts_with("AWS_") || name == "_HANDLER";
                match variables.iter_mut().find(|(k, _)| k == name) {
                    Some(_) if reserved => {}
                    Some((_, v)) => v.clone_from(value),
                    None => variables.push((name.clone(), value.clone())),
                }
            }
        }
        variables.extend(runtime_environment(spec, &view));
        variables.extend(spec.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
        let sandbox = match isolation {
            Isolation::None if spec.image.is_some() => {
                return Err(SpawnError::Process {
                    program: program_of(spec),
                    source: std::io::Error::other("a container image runs only in a sandbox"),
                });
            }
            Isolation::None => None,
            Isolation::Sandbox { sandboxes, hidden } => {
                let sandbox = sandboxes
                    .create(&view.layout(spec, sandboxes, hidden))
                    .await?;
                let mut limits = vec![(Resource::OpenFiles, open_files_limit())];
                limits.extend(memory.data_limit().map(|bytes| (Resource::Data, bytes)));
                let entry = Entry {
                    cwd: view.task.clone(),
                    cgroups: memory.procs_files(),
                    limits,
                };
                Some((sandbox, entry))
            }
        };
        let launcher = Self {
            view,
            variables,
            sandbox,
            writers: [function_writer, extensions_writer],
        };
        Ok((launcher, outputs))
    }

    /// Starts `program` (a host path) with `args` in `cwd` (a host directory), in its own
    /// process group: the runtime, or an extension (`kind`), whose output goes to its pipe.
    pub(crate) async fn start(
        &self,
        program: &Path,
        args: &[String],
        (cwd, kind): (&Path, Kind),
    ) -> Result<Child, SpawnError> {
        let (mut cmd, failed) = self.command(program, args, kind)?;
        match &self.sandbox {
            None => {
                cmd.current_dir(cwd);
                let child = cmd.spawn().map_err(failed)?;
                if let Some(pid) = child.id() {
                    lambda_limits(pid);
                }
                Ok(child)
            }
            Some((sandbox, entry)) => {
                let entry = Entry {
                    cwd: self.view.path(cwd),
                    ..entry.clone()
                };
                Ok(sandbox.spawn(cmd, &entry).await?)
            }
        }
    }

    /// Prepares `program` as [`Launcher::start`] would start it, in the sandbox, waiting
    /// before `exec` (see `portico_sandbox::Prepared`); `None` without a sandbox.
    pub(crate) async fn prepare(
        &self,
        program: &Path,
        args: &[String],
        (cwd, kind): (&Path, Kind),
    ) -> Result<Option<portico_sandbox::Prepared>, SpawnError> {
        let Some((sandbox, entry)) = &self.sandbox else {
            return Ok(None);
        };
        let (cmd, _) = self.command(program, args, kind)?;
        let entry = Entry {
            cwd: self.view.path(cwd),
            ..entry.clone()
        };
        Ok(Some(sandbox.prepare(cmd, &entry).await?))
    }

    /// The command that starts `program` with Lambda's environment, its output to `kind`'s
    /// pipe; and how its failure to start is told.
    fn command(
        &self,
        program: &Path,
        args: &[String],
        kind: Kind,
    ) -> Result<(Command, impl Fn(std::io::Error) -> SpawnError + use<>), SpawnError> {
        let writer = match kind {
            Kind::Extension => &self.writers[1],
            _ => &self.writers[0],
        };
        let program = self.view.path(program);
        let shown = program.display().to_string();
        let failed = move |source| SpawnError::Process {
            program: shown.clone(),
            source,
        };
        let mut cmd = Command::new(&program);
        cmd.args(args.iter().map(|a| self.view.value(a)))
            .env_clear()
            .envs(self.variables.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer.try_clone().map_err(&failed)?))
            .stderr(Stdio::from(writer.try_clone().map_err(&failed)?))
            .process_group(0)
            .kill_on_drop(true);
        Ok((cmd, failed))
    }

    /// The identity of its sandbox's PID namespace, if it has a sandbox.
    pub(crate) fn pid_namespace_id(&self) -> Option<u64> {
        self.sandbox
            .as_ref()
            .and_then(|(sandbox, _)| sandbox.pid_namespace_id())
    }

    /// Whether its processes joined their cgroups themselves, before `exec`.
    pub(crate) fn joins_cgroups(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Done starting: the sandbox, which must live as long as the environment (its end
    /// ends every process in it).
    pub(crate) fn finish(self) -> Option<portico_sandbox::Sandbox> {
        self.sandbox.map(|(sandbox, _)| sandbox)
    }
}

/// Lambda's quotas on an execution environment: 1 024 file descriptors, 1 024 processes and
/// threads (portico's own limits, 20 000 open files here, are not a function's).
const LAMBDA_NOFILE: u64 = 1024;
const LAMBDA_NPROC: u64 = 1024;

/// Lambda's open-file limit, or portico's own hard limit where that is lower (portico may
/// not raise limits without `CAP_SYS_RESOURCE`).
fn open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile)
        .maximum
        .map_or(LAMBDA_NOFILE, |own| own.min(LAMBDA_NOFILE))
}

/// Gives process `pid` (not sandboxed) Lambda's limits. Set right after the start: what the
/// process inherits in between is only what it was started with. Where portico's own hard
/// limit is lower, the function gets that. (In a sandbox, the open-file limit is set before
/// the function runs, and its processes are counted by its cgroup: `RLIMIT_NPROC` counts
/// per user, and every sandbox has the same one.)
fn lambda_limits(pid: u32) {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    let Some(target) = Pid::from_raw(pid as i32) else {
        return;
    };
    for (resource, value, name) in [
        (Resource::Nofile, LAMBDA_NOFILE, "RLIMIT_NOFILE"),
        (Resource::Nproc, LAMBDA_NPROC, "RLIMIT_NPROC"),
    ] {
        let value = getrlimit(resource)
            .maximum
            .map_or(value, |own| own.min(value));
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        if let Err(error) = prlimit(Some(target), resource, limit) {
            tracing::warn!(%error, pid, limit = name, "cannot set a function's limit");
        }
    }
}

/// The runtime's own variables (`PYTHONPATH`, `NODE_PATH`) where `view` puts the
/// directories, with the layers' language directories after the code's, as Lambda's
/// runtimes search them.
fn runtime_environment(spec: &FunctionSpec, view: &View) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = spec
        .runtime_environment
        .iter()
        .map(|(k, v)| (k.clone(), view.value(v)))
        .collect();
    let Some(opt) = &view.opt else {
        return vars;
    };
    let opt = opt.display();
    let (name, layered) = if let Some(minor) = spec.runtime.strip_prefix("python3.") {
        (
            "PYTHONPATH",
            format!("{opt}/python/lib/python3.{minor}/site-packages:{opt}/python"),
        )
    } else if let Some(major) = spec
        .runtime
        .strip_prefix("nodejs")
        .and_then(|r| r.strip_suffix(".x"))
    {
        (
            "NODE_PATH",
            format!("{opt}/nodejs/node{major}/node_modules:{opt}/nodejs/node_modules"),
        )
    } else {
        return vars;
    };
    match vars.iter_mut().find(|(k, _)| k == name) {
        Some((_, value)) => *value = format!("{value}:{layered}"),
        None => vars.push((name.to_owned(), layered)),
    }
    vars
}

/// The variables Lambda sets for every function, with its directories where `view` puts
/// them.
fn lambda_environment(
    spec: &FunctionSpec,
    api: SocketAddr,
    view: &View,
) -> Vec<(&'static str, String)> {
    let task_root = view.task.display().to_string();
    let runtime_dir = view.runtime.display().to_string();
    let lang = view
        .lang
        .as_ref()
        .map(|l| format!("{}/lib:", l.display()))
        .unwrap_or_default();
    let opt = view
        .opt
        .as_deref()
        .unwrap_or(Path::new("/opt"))
        .display()
        .to_string();
    // Lambda's, then the host's, so that interpreters and tools installed here are found.
    let path = match std::env::var("PATH") {
        Ok(host) if !host.is_empty() => format!("{LAMBDA_PATH}:{opt}/bin:{host}"),
        _ => format!("{LAMBDA_PATH}:{opt}/bin"),
    };
    let mut vars = vec![
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("_HANDLER", spec.handler.clone()),
        ("AWS_LAMBDA_FUNCTION_NAME", spec.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", spec.version.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_size_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name(&spec.version)),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("AWS_REGION", spec.region.clone()),
        ("AWS_DEFAULT_REGION", spec.region.clone()),
        ("LAMBDA_TASK_ROOT", task_root.clone()),
        ("LAMBDA_RUNTIME_DIR", runtime_dir.clone()),
        (
            "LD_LIBRARY_PATH",
            format!(
                "{lang}/lib64:/usr/lib64:{runtime_dir}:{runtime_dir}/lib:{task_root}:{task_root}/lib:{opt}/lib"
            ),
        ),
        ("PATH", path),
        ("TZ", ":UTC".to_owned()),
        ("LANG", "en_US.UTF-8".to_owned()),
    ];
    // Managed Instances: how many invocations the runtime's workers take at once.
    if spec.max_concurrency > 1 {
        vars.push((
            "AWS_LAMBDA_MAX_CONCURRENCY",
            spec.max_concurrency.to_string(),
        ));
    }
    // Lambda's LoggingConfig, which the runtimes' clients read.
    let logging = spec.logging;
    vars.push((
        "AWS_LAMBDA_LOG_FORMAT",
        if logging.json { "JSON" } else { "Text" }.to_owned(),
    ));
    if let Some(level) = logging.application_level.filter(|_| logging.json) {
        vars.push(("AWS_LAMBDA_LOG_LEVEL", level.name().to_owned()));
    }
    // The runtime's identifier; OS-only runtimes have none.
    if !spec.runtime.starts_with("provided") {
        vars.push(("AWS_EXECUTION_ENV", format!("AWS_Lambda_{}", spec.runtime)));
    }
    if let Some(credentials) = &spec.credentials {
        vars.extend(credentials.variables());
    }
    vars
}

/// `YYYY/MM/DD/[VERSION]<32 hex>`, the shape of Lambda's log stream names.
fn log_stream_name(version: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}/{m:02}/{d:02}/[{version}]{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// `time` as an RFC 3339 UTC timestamp with milliseconds, `2026-11-25T10:00:00.123Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An environment's external extensions, as its supervisor shuts them down.
pub(crate) struct ExtensionProcesses {
    /// Their registrations.
    pub(crate) registry: Arc<Extensions>,
    /// The environment's telemetry, flushed to them before they are shut down.
    pub(crate) telemetry: Arc<crate::telemetry::Telemetry>,
    /// The tasks watching their processes (closed when the environment stops).
    pub(crate) watchers: TaskTracker,
    /// Fired to kill what is left of them.
    pub(crate) kill: CancellationToken,
}

/// Watches external extension `name`'s process: its death while the environment runs fails
/// the environment (`Extension.Crash`); it is killed when `kill` fires.
pub(crate) async fn watch_extension(
    mut child: Child,
    name: String,
    registry: Arc<Extensions>,
    (stop, kill): (CancellationToken, CancellationToken),
) {
    tokio::select! {
        status = child.wait() => {
            if !stop.is_cancelled() {
                let status = match status {
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("wait failed: {e}"),
                };
                registry.exited(&name, &status);
            }
        }
        () = kill.cancelled() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Owns `child` (and its sandbox) until it exits or `stop` fires; drops `until_reaped` once it is reaped,
/// publishes the exit on `exchange`, then fires `reaped`. Stopped with extensions
/// registered, the environment shuts down as Lambda's does (see [`shut_down`]).
pub(crate) async fn supervise<Guard: Send>(
    mut child: Child,
    exchange: Arc<Exchange>,
    (stop, reaped): (CancellationToken, CancellationToken),
    (until_reaped, sandbox): (Guard, Option<portico_sandbox::Sandbox>),
    extensions: ExtensionProcesses,
) {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop.cancelled() => shut_down(&mut child, pgid, &extensions).await,
    };
    // Whatever the function left running in its group goes with it, and what is left of
    // the extensions.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    extensions.kill.cancel();
    extensions.watchers.close();
    extensions.watchers.wait().await;
    // Nothing of the environment outlives it: the sandbox's end kills what is left in it.
    if let Some(sandbox) = sandbox {
        sandbox.end().await;
    }
    let status = match status {
        Ok(s) => describe_exit(s),
        Err(e) => format!("wait failed: {e}"),
    };
    drop(until_reaped);
    exchange.set_state(State::Exited { status });
    reaped.cancel();
}

/// Kills process group `pgid` with SIGKILL.
pub(crate) fn kill_group(pgid: u32) {
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Lambda's shutdown phase: with no extension, the runtime is ended ([`terminate`]); with
/// extensions, the runtime gets SIGTERM and each external extension registered for it a
/// `SHUTDOWN` event, and all have 2 s (500 ms when only internal extensions registered) to
/// exit before they are killed.
async fn shut_down(
    child: &mut Child,
    pgid: Option<Pid>,
    extensions: &ExtensionProcesses,
) -> std::io::Result<ExitStatus> {
    let (registered, for_shutdown) = extensions.registry.counts();
    if registered == 0 {
        return terminate(child, pgid).await;
    }
    // What the subscribers were not sent yet, before they are told to stop.
    extensions.telemetry.flush(TELEMETRY_FLUSH).await;
    let budget = if for_shutdown > 0 {
        SHUTDOWN_WITH_EXTENSIONS
    } else {
        SHUTDOWN_WITH_INTERNAL_EXTENSIONS
    };
    let deadline = SystemTime::now() + budget;
    let deadline_ms = deadline
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    extensions.registry.dispatch(&Event::Shutdown {
        reason: extensions.registry.shutdown_reason(),
        deadline_ms,
    });
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    extensions.watchers.close();
    let all_exited = async {
        let status = child.wait().await;
        extensions.watchers.wait().await;
        status
    };
    if let Ok(status) = tokio::time::timeout(budget, all_exited).await {
        return status;
    }
    extensions.kill.cancel();
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    child.wait().await
}

/// How long the last telemetry may take to be delivered at an environment's end.
const TELEMETRY_FLUSH: Duration = Duration::from_millis(500);

/// Lambda's shutdown phase with external extensions registered for `SHUTDOWN`, and with
/// internal extensions only.
const SHUTDOWN_WITH_EXTENSIONS: Duration = Duration::from_millis(2000);
const SHUTDOWN_WITH_INTERNAL_EXTENSIONS: Duration = Duration::from_millis(500);

async fn terminate(child: &mut Child, pgid: Option<Pid>) -> std::io::Result<ExitStatus> {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(TERMINATE_GRACE, child.wait()).await {
            return status;
        }
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    child.wait().await
}

/// Lambda's wording: `exit status 1`, `signal: killed`.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(Signal::SIGKILL) => "signal: killed".to_owned(),
        Some(Signal::SIGTERM) => "signal: terminated".to_owned(),
        Some(Signal::SIGSEGV) => "signal: segmentation fault".to_owned(),
        Some(Signal::SIGABRT) => "signal: aborted".to_owned(),
        Some(other) => format!("signal: {}", other.as_str()),
        None => "exited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        let t = UNIX_EPOCH + Duration::from_millis(1_764_065_096_789);
        assert_eq!(rfc3339(t), "2025-11-25T10:04:56.789Z");
    }
}
