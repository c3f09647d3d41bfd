//! Running keepalived or BIRD as a child that lives and dies with portico.
//!
//! The daemon is started through `setpriv --pdeathsig TERM`, so that the kernel sends it
//! SIGTERM the moment portico dies, however it dies (kill -9 included): keepalived then
//! gives up its addresses with a priority-0 advertisement and BIRD closes its sessions, and
//! the other nodes take over at once. The parent-death signal fires when the *thread* that
//! forked the child ends, so each daemon is forked by a thread of its own that does nothing
//! but wait for it. The daemon runs in its own process group (a terminal's Ctrl-C goes to
//! portico, which stops the daemon in order). Its standard output and error become log
//! lines. A daemon that exits on its own is started again after a back-off (1 s, doubling
//! up to 30 s); stopping sends SIGTERM to its group and, after a grace period, SIGKILL.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The program that sets the parent-death signal and then runs the daemon.
pub(crate) const SETPRIV: &str = "setpriv";

/// How long a stopping daemon gets between SIGTERM and SIGKILL: keepalived and BIRD need
/// a moment to send their last advertisement or close their sessions.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// First and longest wait before a daemon that exited is started again.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Longest log line kept from a daemon; the rest of the line is dropped.
const MAX_LINE: usize = 4096;

/// A program and its arguments.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    /// Its name in logs: `keepalived` or `bird`.
    pub(crate) name: &'static str,
    /// The node it serves, in logs.
    pub(crate) node: String,
    /// The executable.
    pub(crate) path: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its environment, beside portico's.
    pub(crate) env: Vec<(String, String)>,
    /// Lines with any of these in them are logged at debug level (what the daemon says
    /// each time portico asks it for its state).
    pub(crate) quiet: &'static [&'static str],
}

/// What happened to the daemon.
#[derive(Debug)]
pub(crate) enum Event {
    /// It started with this process id.
    Started(u32),
    /// It exited on its own (it will be started again).
    Exited(ExitStatus),
}

/// Runs `program` until `stop` fires, starting it again whenever it exits; reports each
/// start and exit on `events`.
pub(crate) async fn supervise(
    program: Program,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF.0;
    loop {
        let (pid, exited) = match spawn(&program) {
            Ok(started) => started,
            Err(error) => {
                tracing::error!(daemon = program.name, %error, "cannot start");
                if sleep_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        tracing::info!(daemon = program.name, pid, "started");
        let _ = events.send(Event::Started(pid));
        tokio::pin!(exited);
        tokio::select! {
            status = &mut exited => {
                let status = status.unwrap_or_else(|_| ExitStatus::from_raw(0));
                tracing::error!(daemon = program.name, %status, retry_in = ?backoff, "exited; starting it again");
                let _ = events.send(Event::Exited(status));
                if sleep_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
            () = stop.cancelled() => {
                terminate(program.name, pid, exited).await;
                return;
            }
        }
    }
}

/// Sleeps for `wait`; true if `stop` fired first.
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}

/// SIGTERM to the daemon's group, SIGKILL after the grace period; returns once it is
/// reaped.
async fn terminate(
    name: &str,
    pid: u32,
    exited: impl Future<Output = Result<ExitStatus, oneshot::error::RecvError>>,
) {
    let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let _ = killpg(group, Signal::SIGTERM);
    tokio::pin!(exited);
    match tokio::time::timeout(STOP_GRACE, &mut exited).await {
        Ok(status) => tracing::info!(daemon = name, status = ?status.ok(), "stopped"),
        Err(_) => {
            tracing::warn!(daemon = name, "did not stop within {STOP_GRACE:?}: killed");
            let _ = killpg(group, Signal::SIGKILL);
            let _ = exited.await;
        }
    }
}

/// Starts `program` from a thread that waits for it (see the module documentation).
/// Returns its process id and its exit status to come.
fn spawn(
    program: &Program,
) -> std::io::Result<(
    u32,
    impl Future<Output = Result<ExitStatus, oneshot::error::RecvError>>,
)> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (exited_tx, exited_rx) = oneshot::channel();
    let program = program.clone();
    std::thread::Builder::new()
        .name(format!("{}-parent", program.name))
        .spawn(move || {
            let mut command = Command::new(SETPRIV);
            command
                .args(["--pdeathsig", "TERM", "--"])
                .arg(&program.path)
                .args(&program.args)
                .envs(program.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    let _ = started_tx.send(Err(error));
                    return;
                }
            };
            for output in [
                child
                    .stdout
                    .take()
                    .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let (name, quiet, node) = (program.name, program.quiet, program.node.clone());
                let _ = std::thread::Builder::new()
                    .name(format!("{name}-log"))
                    .spawn(move || log_lines(name, &node, quiet, output));
            }
            let _ = started_tx.send(Ok(child.id()));
            let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(0));
            let _ = exited_tx.send(status);
        })?;
    let pid = started_rx
        .recv()
        .map_err(|_| std::io::Error::other("the daemon's thread ended before it started"))??;
    Ok((pid, exited_rx))
}

/// Each line the daemon writes, as a log line of portico's.
fn log_lines(name: &str, node: &str, quiet: &[&str], output: Box<dyn std::io::Read + Send>) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') && line.len() == MAX_LINE {
                    // Drop the rest of an overlong line.
                    let mut rest = Vec::new();
                    let _ = reader.read_until(b'\n', &mut rest);
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if quiet.iter().any(|q| text.contains(q)) {
                    tracing::debug!(daemon = name, node, "{text}");
                } else {
                    tracing::info!(daemon = name, node, "{text}");
                }
            }
        }
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sh(script: &str) -> Program {
        Program {
            name: "sh",
            node: "test".to_owned(),
            path: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env: Vec::new(),
            quiet: &[],
        }
    }

    #[tokio::test]
    async fn a_daemon_that_exits_is_started_again_and_stop_ends_it() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(sh("exit 3"), tx, stop.clone()));
        assert!(matches!(rx.recv().await, Some(Event::Started(_))));
        match rx.recv().await {
            Some(Event::Exited(status)) => assert_eq!(status.code(), Some(3)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rx.recv().await, Some(Event::Started(_))));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_terminates_the_whole_group() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        // The shell and its child both go with the group.
        let task = tokio::spawn(supervise(sh("sleep 600 & wait"), tx, stop.clone()));
        let Some(Event::Started(pid)) = rx.recv().await else {
            panic!("not started")
        };
        stop.cancel();
        task.await.unwrap();
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive, "the daemon's process is gone");
    }
}
