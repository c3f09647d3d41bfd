//! The systems under test as child processes: started in their own process group, readied
//! by polling until they answer, and stopped with everything they started.

use crate::load::{self, Target};
use anyhow::bail;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running system under test.
pub(crate) struct Server {
    child: Child,
}

impl Server {
    /// Starts `cmd` in a process group of its own, its output discarded.
    pub(crate) fn start(cmd: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Self { child })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `target` answers a request with 200, up to `limit`; returns how long it
    /// took from the call.
    pub(crate) async fn ready(
        &mut self,
        target: &Target,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if load::once(target).await.is_ok() {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited before answering: {status}");
            }
            if started.elapsed() > limit {
                bail!("no answer from {} within {limit:?}", target.addr);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What every proxy benchmark starts from: the portico binary to measure, this binary (for
/// its backends), the core proxies are pinned to, the cores everything else runs on, and a
/// scratch directory for configs.
pub(crate) struct Setup {
    pub(crate) portico: std::path::PathBuf,
    pub(crate) me: std::path::PathBuf,
    pub(crate) proxy_core: String,
    /// The other cores, where this process (the load generator) and the backends it starts
    /// are pinned, so that the proxy has its core to itself; `None` on one core.
    pub(crate) other_cores: Option<String>,
    pub(crate) scratch: std::path::PathBuf,
}

impl Setup {
    /// The setup of benchmark `name`; `portico` overrides `target/release/portico`.
    ///
    /// Pins this process (every thread, and the processes it starts later) to all cores but
    /// the last, which is the proxies' alone: without that, the load generator and the
    /// backend run on the proxy's core whenever it idles, and how much they take depends on
    /// each proxy's sleeping pattern rather than its speed.
    pub(crate) fn new(name: &str, portico: Option<std::path::PathBuf>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let portico =
            portico.unwrap_or_else(|| crate::workspace_root().join("target/release/portico"));
        let me = std::env::current_exe()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let other_cores = (cores > 1).then(|| format!("0-{}", cores - 2));
        if let Some(others) = &other_cores {
            let pinned = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", others, &std::process::id().to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .context("running taskset (util-linux) to pin the load generator")?;
            anyhow::ensure!(pinned.success(), "taskset could not pin the load generator");
        }
        let scratch =
            std::env::temp_dir().join(format!("portico-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        Ok(Self {
            portico,
            me,
            proxy_core: (cores - 1).to_string(),
            other_cores,
            scratch,
        })
    }

    /// Writes a config file into the scratch directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
        use anyhow::Context;
        let path = self.scratch.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// How long one core has been busy since boot, from the ticks of `/proc/stat`: in user
/// space, in the kernel (system and hard interrupts), and in softirqs (where loopback TCP
/// runs). Idle, I/O wait and steal (the hypervisor running something else) are left out. A
/// proxy pinned to a core of its own is charged this way for all the work it causes there, the
/// kernel's TCP work included, which its own process times leave out when it runs in softirqs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoreTime {
    /// user and nice.
    pub(crate) user: Duration,
    /// system and irq.
    pub(crate) system: Duration,
    /// softirq.
    pub(crate) softirq: Duration,
}

impl CoreTime {
    /// Reads `core`'s line of `/proc/stat`.
    pub(crate) fn read(core: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let label = format!("cpu{core}");
        let line = stat
            .lines()
            .find(|line| line.split_whitespace().next() == Some(label.as_str()))
            .with_context(|| format!("/proc/stat has no line for {label}"))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat: a malformed {label} line"))?;
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let sum = |fields: &[usize]| {
            let ticks: u64 = fields.iter().filter_map(|&f| ticks.get(f)).sum();
            // /proc/stat counts in USER_HZ, which the kernel's ABI fixes at 100 per second.
            Duration::from_millis(ticks.saturating_mul(10))
        };
        Ok(Self {
            user: sum(&[0, 1]),
            system: sum(&[2, 5]),
            softirq: sum(&[6]),
        })
    }

    /// All three together.
    pub(crate) fn busy(&self) -> Duration {
        self.user + self.system + self.softirq
    }

    /// The time from `earlier` to this reading.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            softirq: self.softirq.saturating_sub(earlier.softirq),
        }
    }
}
