//! The memory limit of an execution environment (the function's memory size).
//!
//! Lambda runs each environment in a container whose memory is capped at the function's
//! memory size; a function that goes over is killed, and its invocation fails with
//! `Runtime.OutOfMemory`. portico gets the same behaviour in two ways:
//!
//! - **a cgroup**, where the machine allows it: each environment gets its own memory cgroup,
//!   capped at the memory size with swap off, and the kernel's OOM killer enforces it. On a
//!   unified (v2) hierarchy with the memory controller that portico may delegate to:
//!   `memory.max`, `memory.swap.max`, and `memory.events` tells an OOM kill from any other
//!   death. Else, on a v1 `memory` hierarchy (what this kind of machine mounts):
//!   `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` under portico's own memory
//!   cgroup, and `memory.oom_control`'s `oom_kill` count. (v1 counts page cache in a cgroup's
//!   usage, so its peak, `Max Memory Used`, includes the files the function read; the kernel
//!   reclaims that cache before it kills.)
//! - **elsewhere**, a watchdog samples the process's peak resident memory (`VmHWM`, which no
//!   short spike escapes) while it initialises and while it serves an invocation, and kills it
//!   once it is over the size; an `RLIMIT_DATA` of twice the size backs it up against an
//!   allocation too large to wait for the next sample.
//!
//! Either way, resident memory is what counts, as in Lambda: memory reserved but never
//! touched is free.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the watchdog samples a busy environment's memory, and how old a sample may be
/// when the end of an invocation looks at it. Reading `/proc/PID/status` costs tens of
/// microseconds, a tenth of a warm invocation: short invocations in a row share one sample.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

const MIB: u64 = 1024 * 1024;

/// Which cgroup hierarchy enforces the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    /// The unified hierarchy.
    V2,
    /// The v1 `memory` controller's hierarchy.
    V1,
}

/// The directory environments' cgroups are made in, and its hierarchy, when usable; found
/// once.
fn cgroup_parent() -> Option<(&'static Path, Hierarchy)> {
    static PARENT: OnceLock<Option<(PathBuf, Hierarchy)>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let v2 = match delegate_cgroup() {
                Ok(dir) => {
                    tracing::info!(cgroup = %dir.display(), "memory limits enforced with cgroup v2");
                    return Some((dir, Hierarchy::V2));
                }
                Err(reason) => reason,
            };
            match v1_memory_cgroup() {
                Ok(dir) => {
                    tracing::info!(cgroup = %dir.display(), "memory limits enforced with the cgroup v1 memory controller");
                    Some((dir, Hierarchy::V1))
                }
                Err(v1) => {
                    tracing::info!(
                        v2 = %v2,
                        v1 = %v1,
                        "memory limits enforced by sampling peak memory (no usable cgroup)"
                    );
                    None
                }
            }
        })
        .as_ref()
        .map(|(dir, hierarchy)| (dir.as_path(), *hierarchy))
}

/// portico's own cgroup in the v1 `memory` hierarchy, where it may make children.
fn v1_memory_cgroup() -> Result<PathBuf, String> {
    v1_cgroup("memory", "memory.limit_in_bytes")
}

/// portico's own cgroup in the v1 hierarchy of `controller` (whose directories have
/// `marker`), where it may make children.
fn v1_cgroup(controller: &str, marker: &str) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let relative = own
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })
        .ok_or_else(|| format!("no v1 {controller} controller"))?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(relative.trim_start_matches('/'));
    if !dir.join(marker).exists() {
        return Err(format!("{}: not a {controller} cgroup", dir.display()));
    }
    // Can portico make a child here?
    let probe = dir.join(format!("portico-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(dir)
}

/// Makes portico's own cgroup able to hold one child cgroup per environment with the memory
/// controller on. A cgroup with processes cannot hand controllers to children, so portico
/// first moves itself into a `portico` leaf beside them.
fn delegate_cgroup() -> Result<PathBuf, String> {
    let root = Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("not on a unified (v2) hierarchy")?;
    let dir = root.join(relative.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err("the memory controller is not available to portico's cgroup".into());
    }
    let enabled =
        std::fs::read_to_string(dir.join("cgroup.subtree_control")).map_err(|e| e.to_string())?;
    if !enabled.split_whitespace().any(|c| c == "memory") {
        let leaf = dir.join("portico");
        std::fs::create_dir_all(&leaf).map_err(|e| format!("{}: {e}", leaf.display()))?;
        std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("moving portico into {}: {e}", leaf.display()))?;
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
            .map_err(|e| format!("enabling the memory controller: {e}"))?;
    }
    // CPU shares and the process limit where the machine delegates them too.
    for extra in ["+cpu", "+pids"] {
        if controllers.split_whitespace().any(|c| c == &extra[1..]) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), extra);
        }
    }
    Ok(dir)
}

/// Lambda gives a function one vCPU per 1 769 MB of memory.
const MB_PER_VCPU: u64 = 1769;

/// Lambda's limit on an environment's processes and threads.
const MAX_PROCESSES: u32 = 1024;

/// The memory limit of one environment, and its share of the CPUs and its process limit
/// where the machine has those controllers.
pub(crate) struct MemoryLimit {
    /// The environment's main process, once started.
    pid: OnceLock<u32>,
    limit_mb: u64,
    cgroup: Option<(PathBuf, Hierarchy)>,
    /// On a v1 machine, the environment's cgroups in the `cpu` and `pids` hierarchies (on
    /// v2, `cgroup` has those controllers too).
    others: Vec<PathBuf>,
    /// The last peak read, and when.
    sample: Mutex<Option<(Instant, u64)>>,
}

impl MemoryLimit {
    /// Puts process `pid` under a limit of `limit_mb`.
    #[cfg(test)]
    pub(crate) fn apply(pid: u32, limit_mb: u32) -> Self {
        let limit = Self::create(limit_mb);
        limit.enter(pid);
        limit.watch(pid);
        limit
    }

    /// Makes an environment's cgroups before its process starts: memory capped at
    /// `limit_mb` with no swap; CPU weighed in proportion to memory and capped at Lambda's
    /// vCPUs for that memory (at least one), and at most [`MAX_PROCESSES`] processes, where
    /// the machine has those controllers.
    pub(crate) fn create(limit_mb: u32) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("portico-env-{}-{id}", std::process::id());
        let limit_mb = u64::from(limit_mb);
        let cgroup = cgroup_parent().and_then(|(parent, hierarchy)| {
            match own_cgroup(&parent.join(&name), hierarchy, limit_mb) {
                Ok(dir) => Some((dir, hierarchy)),
                Err(error) => {
                    tracing::warn!(%error, "no cgroup for this environment; sampling its memory");
                    None
                }
            }
        });
        let mut others = Vec::new();
        match &cgroup {
            Some((dir, Hierarchy::V2)) => cpu_and_processes(dir, dir, limit_mb),
            _ => {
                let (cpu, pids) = v1_others();
                let cpu = cpu.map(|parent| parent.join(&name));
                let pids = pids.map(|parent| parent.join(&name));
                for dir in [&cpu, &pids].into_iter().flatten() {
                    if std::fs::create_dir_all(dir).is_ok() {
                        others.push(dir.clone());
                    }
                }
                if let (Some(cpu), Some(pids)) = (&cpu, &pids) {
                    cpu_and_processes(cpu, pids, limit_mb);
                }
            }
        }
        Self {
            pid: OnceLock::new(),
            limit_mb,
            cgroup,
            others,
            sample: Mutex::new(None),
        }
    }

    /// The `cgroup.procs` files a process joins to be in this environment.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.cgroup
            .iter()
            .map(|(dir, _)| dir)
            .chain(&self.others)
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }

    /// With no cgroup, the data segment limit that backs the watchdog up against an
    /// allocation faster than it: twice the memory size.
    pub(crate) fn data_limit(&self) -> Option<u64> {
        self.cgroup.is_none().then_some(self.limit_mb * 2 * MIB)
    }

    /// Process `pid` is the environment's main one: the one whose peak memory is sampled
    /// where no cgroup counts it.
    pub(crate) fn watch(&self, pid: u32) {
        let _ = self.pid.set(pid);
    }

    /// Moves process `pid` (one that did not join the cgroups itself, before `exec`) into
    /// them now, and limits it by [`Self::data_limit`].
    pub(crate) fn enter(&self, pid: u32) {
        for procs in self.procs_files() {
            if let Err(error) = std::fs::write(&procs, pid.to_string()) {
                tracing::warn!(%error, pid, cgroup = %procs.display(), "cannot move a function into its cgroup");
            }
        }
        if let Some(bytes) = self.data_limit() {
            let limit = rustix::process::Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            if let Some(target) = rustix::process::Pid::from_raw(pid as i32) {
                if let Err(error) =
                    rustix::process::prlimit(Some(target), rustix::process::Resource::Data, limit)
                {
                    tracing::warn!(%error, pid, "cannot set RLIMIT_DATA");
                }
            }
        }
    }

    /// Resolves once the process is over its limit (never, when the kernel enforces it).
    pub(crate) async fn exceeded(&self) {
        if self.cgroup.is_some() {
            return std::future::pending().await;
        }
        // No sample at the start: the end of the last invocation looked.
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.went_over() {
                return;
            }
        }
    }

    /// Whether the process went over its limit at some point (watchdog mode only; the
    /// kernel does not let a process over).
    pub(crate) fn went_over(&self) -> bool {
        self.cgroup.is_none() && self.peak_mb().is_some_and(|used| used > self.limit_mb)
    }

    /// The processes in its cgroup (none without one).
    pub(crate) fn members(&self) -> Vec<u32> {
        self.cgroup
            .as_ref()
            .map(|(dir, _)| procs(dir))
            .unwrap_or_default()
    }

    /// Whether the kernel killed the process for memory (with a cgroup only).
    pub(crate) fn oom_killed(&self) -> bool {
        let Some((dir, hierarchy)) = &self.cgroup else {
            return false;
        };
        let file = match hierarchy {
            Hierarchy::V2 => "memory.events",
            Hierarchy::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|events| {
                events
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// Peak memory used, in MB: the cgroup's peak, or the process's `VmHWM`; a sample
    /// younger than [`SAMPLE_EVERY`] is reused, and once the process is gone its last sample
    /// stands.
    pub(crate) fn peak_mb(&self) -> Option<u64> {
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, mb)) = *sample {
            if at.elapsed() < SAMPLE_EVERY {
                return Some(mb);
            }
        }
        let read = self
            .cgroup
            .as_ref()
            .and_then(|(dir, hierarchy)| {
                let file = match hierarchy {
                    Hierarchy::V2 => "memory.peak",
                    Hierarchy::V1 => "memory.max_usage_in_bytes",
                };
                std::fs::read_to_string(dir.join(file)).ok()
            })
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|bytes| bytes.div_ceil(MIB))
            .or_else(|| max_memory_used_mb(*self.pid.get()?));
        if let Some(mb) = read {
            *sample = Some((Instant::now(), mb));
        }
        read.or(sample.map(|(_, mb)| mb))
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        // The environment is over: whatever is still in its cgroups goes too, a process
        // that left the process group (`setsid`) included.
        for dir in self.cgroup.iter().map(|(dir, _)| dir).chain(&self.others) {
            kill_members(dir);
            remove_when_empty(dir.clone());
        }
    }
}

/// The processes in the cgroup at `dir` (none when it cannot be read).
fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup at `dir`; how many there were.
fn kill_members(dir: &Path) -> usize {
    procs(dir)
        .into_iter()
        .filter_map(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
        .filter(|pid| rustix::process::kill_process(*pid, rustix::process::Signal::KILL).is_ok())
        .count()
}

fn own_cgroup(dir: &Path, hierarchy: Hierarchy, limit_mb: u64) -> std::io::Result<PathBuf> {
    let dir = dir.to_owned();
    std::fs::create_dir_all(&dir)?;
    let bytes = (limit_mb * MIB).to_string();
    let configured = match hierarchy {
        Hierarchy::V2 => std::fs::write(dir.join("memory.max"), &bytes)
            .and_then(|()| std::fs::write(dir.join("memory.swap.max"), "0").or(Ok(()))),
        // Memory first, then memory and swap together at the same size: no swap. (A kernel
        // without swap accounting has no memsw files.)
        Hierarchy::V1 => std::fs::write(dir.join("memory.limit_in_bytes"), &bytes).and_then(|()| {
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, &bytes)
            } else {
                Ok(())
            }
        }),
    };
    match configured {
        Ok(()) => Ok(dir),
        Err(error) => {
            let _ = std::fs::remove_dir(&dir);
            Err(error)
        }
    }
}

/// The v1 `cpu` and `pids` hierarchies' directories portico may make children in, found
/// once.
fn v1_others() -> (Option<PathBuf>, Option<PathBuf>) {
    static OTHERS: OnceLock<(Option<PathBuf>, Option<PathBuf>)> = OnceLock::new();
    OTHERS
        .get_or_init(|| {
            let found = |controller, marker| match v1_cgroup(controller, marker) {
                Ok(dir) => Some(dir),
                Err(error) => {
                    tracing::info!(%error, "no per-environment {controller} limits");
                    None
                }
            };
            (found("cpu", "cpu.shares"), found("pids", "cgroup.procs"))
        })
        .clone()
}

/// Weighs the CPU of the cgroup at `cpu` by its memory (Lambda's CPU grows with memory),
/// caps it at Lambda's vCPUs for that memory, at least one, and limits the processes of
/// the cgroup at `pids`. (Lambda caps a function under 1 769 MB at a fraction of a vCPU;
/// portico gives it the fraction only when CPUs are contended, so that a small function
/// does not start ten times slower on a developer's machine than its code does.)
fn cpu_and_processes(cpu: &Path, pids: &Path, memory_mb: u64) {
    const PERIOD_US: u64 = 100_000;
    let vcpus = memory_mb.div_ceil(MB_PER_VCPU).max(1);
    let quota = vcpus * PERIOD_US;
    let v2 = cpu.join("cpu.weight").exists();
    let writes = if v2 {
        vec![
            (
                cpu.join("cpu.weight"),
                (memory_mb / 16).clamp(1, 10_000).to_string(),
            ),
            (cpu.join("cpu.max"), format!("{quota} {PERIOD_US}")),
        ]
    } else {
        vec![
            (
                cpu.join("cpu.shares"),
                memory_mb.clamp(2, 262_144).to_string(),
            ),
            (cpu.join("cpu.cfs_period_us"), PERIOD_US.to_string()),
            (cpu.join("cpu.cfs_quota_us"), quota.to_string()),
        ]
    };
    for (file, value) in writes
        .into_iter()
        .chain([(pids.join("pids.max"), MAX_PROCESSES.to_string())])
    {
        if file.exists() {
            if let Err(error) = std::fs::write(&file, &value) {
                tracing::debug!(%error, file = %file.display(), "cgroup setting not written");
            }
        }
    }
}

/// Removes the cgroup at `dir` once its processes are gone: a killed process leaves its
/// cgroup once the kernel has reaped it, a moment later, so a thread of its own waits.
fn remove_when_empty(dir: PathBuf) {
    if std::fs::remove_dir(&dir).is_ok() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("cgroup-reaper".into())
        .spawn(move || {
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(20));
                kill_members(&dir);
                if std::fs::remove_dir(&dir).is_ok() {
                    return;
                }
            }
            tracing::debug!(cgroup = %dir.display(), "cgroup not removed");
        });
}

/// Peak resident memory of process `pid` in MB (`VmHWM`), when the OS tells.
pub(crate) fn max_memory_used_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_with_a_memory_cgroup_limits_each_environment_with_it() {
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let root = rustix::process::geteuid().is_root();
        if !(v1 && root) {
            eprintln!("no v1 memory hierarchy portico may write to: nothing to check here");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let limit = MemoryLimit::apply(child.id(), 64);
        let (dir, _) = limit.cgroup.clone().expect("a cgroup for the environment");
        let file = match cgroup_parent().map(|(_, h)| h) {
            Some(Hierarchy::V2) => "memory.max",
            _ => "memory.limit_in_bytes",
        };
        let set = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(set.trim(), (64 * MIB).to_string());
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == child.id().to_string()),
            "{procs}"
        );
        assert!(!limit.oom_killed());
        let _ = child.kill();
        let _ = child.wait();
        drop(limit);
        assert!(!dir.exists(), "the environment's cgroup goes with it");
    }
}
