//! Execution environments' sandboxes, as Lambda has them.
//!
//! A [`Sandbox`] is a mount namespace and a PID namespace. Its root shows the host read-only
//! (so that the host's interpreters and libraries work), or an image's root filesystem; on it,
//! Lambda's own directories (`/var/task`, `/var/runtime`, `/var/lang`, `/opt`) are the
//! function's, bound read-only, `/tmp` is a private file system of the function's ephemeral
//! storage size (on disk, as Lambda's, with a [`Scratch`]; otherwise a tmpfs), `/proc` shows the sandbox's processes only, `/dev` has the usual devices and no
//! more, and the files the host wants kept from functions (portico's configuration,
//! certificates and keys) read as empty. Nothing is set-uid there, and what runs inside runs
//! as an unprivileged user that cannot gain privileges. The network is the host's.
//!
//! Each sandbox has an init, PID 1 of its namespace (named `portico-sandbox` in `ps`), that
//! reaps what is orphaned there; when it dies, the kernel kills everything in the
//! namespace. Programs are started inside by
//! joining its namespaces ([`Sandbox::spawn`]); they stay children of portico, which waits
//! for them as for any process.
//!
//! Namespaces are entered by a thread of its own ([`Sandboxes`]): a new PID namespace is
//! entered by the next child of the thread that asks for it, and a sandbox's init dies with
//! that thread (`PR_SET_PDEATHSIG`), so with portico.
//!
//! Layout:
//! - [`plan`](crate::plan): a [`Layout`] turned into the steps that build the root, before the fork;
//! - `child`: what the forked child does before `exec`, system calls only;
//! - [`scratch`](crate::scratch): `/tmp` on disk, a loop device each.

mod child;
mod plan;
pub mod scratch;

pub use scratch::Scratch;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The user functions run as: Lambda's `sbx_user1051` (uid 993, gid 990).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

impl User {
    /// Lambda's sandbox user.
    pub const LAMBDA: User = User { uid: 993, gid: 990 };
}

/// What the root of a sandbox is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The host's directories, read-only.
    Host,
    /// A directory holding a whole root filesystem (an unpacked image), read-only.
    Directory(PathBuf),
}

/// What a sandbox shows.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Host directories shown read-only at a path inside: the code at `/var/task`, …
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// The size of the private `/tmp`, in bytes.
    pub tmp_size_bytes: u64,
    /// Host files and directories that must not be seen inside.
    pub hidden: Vec<PathBuf>,
    /// Who runs inside.
    pub user: User,
    /// An empty host directory the root is built on (in the sandbox's own mount namespace,
    /// so that the host never sees it used).
    pub staging: PathBuf,
    /// What the root is.
    pub root: Root,
}

/// Why a sandbox cannot be made, or a program started in it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A path cannot be passed to the kernel.
    #[error("{0}: a path with a NUL byte")]
    Path(PathBuf),
    /// A directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A step of building the sandbox failed.
    #[error("sandbox: {step}: {source}")]
    Setup {
        /// What was being done.
        step: String,
        /// The error.
        source: std::io::Error,
    },
    /// The thread that enters namespaces is gone (the runtime is shutting down).
    #[error("sandbox: the spawning thread is gone")]
    SpawnerGone,
}

type Job = Box<dyn FnOnce() + Send>;

/// Makes sandboxes: owns the thread that enters namespaces.
pub struct Sandboxes {
    jobs: std::sync::mpsc::Sender<Job>,
    staging: PathBuf,
    /// Where `/tmp`s are made on disk; without, they are tmpfs (in memory).
    scratch: Option<Scratch>,
}

impl std::fmt::Debug for Sandboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes")
            .field("staging", &self.staging)
            .field("scratch", &self.scratch)
            .finish()
    }
}

impl Sandboxes {
    /// Starts the spawning thread, on the current Tokio runtime, with `staging` (made if
    /// missing) as the directory roots are built on, and `/tmp`s made on disk by `scratch`
    /// (or, without, in memory: a tmpfs, counted in the function's memory).
    pub fn new(staging: &Path, scratch: Option<Scratch>) -> Result<Arc<Self>, SandboxError> {
        std::fs::create_dir_all(staging).map_err(|source| SandboxError::Setup {
            step: format!("making {}", staging.display()),
            source,
        })?;
        let own =
            std::fs::File::open("/proc/self/ns/pid").map_err(|source| SandboxError::Setup {
                step: "opening portico's own PID namespace".into(),
                source,
            })?;
        let handle = tokio::runtime::Handle::current();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                // Kept open for the thread's life: where its children go back to.
                let _own = own;
                for job in queue {
                    job();
                }
            })
            .map_err(|source| SandboxError::Setup {
                step: "starting the spawning thread".into(),
                source,
            })?;
        Ok(Arc::new(Self {
            jobs,
            staging: staging.to_owned(),
            scratch,
        }))
    }

    /// The directory roots are built on.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Runs `job` on the spawning thread.
    async fn on_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SandboxError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .map_err(|_| SandboxError::SpawnerGone)?;
        result.await.map_err(|_| SandboxError::SpawnerGone)
    }

    /// Makes a sandbox showing `layout`.
    pub async fn create(self: &Arc<Self>, layout: &Layout) -> Result<Sandbox, SandboxError> {
        // Held open until the init has mounted it.
        let disk = match &self.scratch {
            Some(scratch) => Some(scratch.disk(layout.tmp_size_bytes).await?),
            None => None,
        };
        let tmp = match &disk {
            Some(disk) => plan::Tmp::Disk(&disk.device),
            None => plan::Tmp::Memory,
        };
        let steps = plan::plan(layout, tmp)?;
        let descriptions: Vec<String> = steps.iter().map(plan::Step::describe).collect();
        let (report_read, report_write) =
            std::io::pipe().map_err(|source| SandboxError::Setup {
                step: "making a pipe".into(),
                source,
            })?;
        let report_fd = report_write.as_raw_fd();
        // Never run: the child becomes the init without `exec`.
        let mut command = Command::new("/proc/self/exe");
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        #[allow(unsafe_code)]
        // SAFETY: the closure makes system calls only, on data prepared before the fork
        // (`child` and `plan`).
        unsafe {
            command.pre_exec(move || {
                // The init dies with the spawning thread, so with portico.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if let Err((step, errno)) = child::build_root(&steps) {
                    child::report(report_fd, step, errno);
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                child::init()
            });
        }
        let spawned = self
            .on_thread(move || {
                enter_new_pid_namespace()?;
                let spawned = command.spawn();
                leave_pid_namespace();
                spawned
            })
            .await?;
        drop(report_write);
        drop(disk);
        let init = match spawned {
            Ok(init) => init,
            Err(source) => {
                let step = failed_step(report_read)
                    .map(|i| {
                        descriptions
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| "making a mount namespace".into())
                    })
                    .unwrap_or_else(|| "making a PID namespace".into());
                return Err(SandboxError::Setup { step, source });
            }
        };
        let pid = init.id().unwrap_or_default();
        let namespace = |kind: &str| {
            std::fs::File::open(format!("/proc/{pid}/ns/{kind}"))
                .map(OwnedFd::from)
                .map_err(|source| SandboxError::Setup {
                    step: format!("opening the sandbox's {kind} namespace"),
                    source,
                })
        };
        Ok(Sandbox {
            pid_namespace: Arc::new(namespace("pid")?),
            mount_namespace: Arc::new(namespace("mnt")?),
            init,
            user: layout.user,
            sandboxes: self.clone(),
        })
    }
}

/// The step a child reported failing, if it did.
fn failed_step(mut report: std::io::PipeReader) -> Option<usize> {
    use std::io::Read;
    let mut bytes = [0u8; 12];
    report.read_exact(&mut bytes).ok()?;
    let step = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    usize::try_from(step).ok().filter(|s| *s != usize::MAX)
}

/// The calling thread's next children go into a new PID namespace.
#[allow(unsafe_code)]
fn enter_new_pid_namespace() -> std::io::Result<()> {
    // SAFETY: unshare of the PID namespace changes only where this thread's next children
    // go; the thread goes back with `leave_pid_namespace` before doing anything else.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's next children go into the PID namespace `namespace`.
#[allow(unsafe_code)]
fn join_pid_namespace(namespace: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setns on a namespace descriptor held open by the caller.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's next children go into portico's own PID namespace again.
#[allow(unsafe_code)]
fn leave_pid_namespace() {
    let own = std::fs::File::open("/proc/self/ns/pid");
    let restored = own.and_then(|own| {
        // SAFETY: setns on a namespace descriptor held open here.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    });
    if let Err(error) = restored {
        // Every later spawn of this thread would go to a namespace that may be gone.
        tracing::error!(%error, "cannot leave a sandbox's PID namespace; stopping");
        std::process::abort();
    }
}

/// What a prepared program's process waits on before `exec`.
struct Gate {
    read: std::os::fd::RawFd,
    write: std::os::fd::RawFd,
    /// Its program, checked before it waits.
    program: CString,
}

/// A program prepared in a sandbox, waiting before `exec`. Dropped unstarted, its process
/// ends without running.
pub struct Prepared {
    gate: std::io::PipeWriter,
    child: Child,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

impl Prepared {
    /// Lets the program run: its `exec` goes on. Its process, already running: an `exec`
    /// that fails now (it was checked when prepared) shows as its exit.
    pub fn start(mut self) -> Result<Child, SandboxError> {
        use std::io::Write;
        self.gate
            .write_all(b"1")
            .map_err(|source| SandboxError::Setup {
                step: "starting a prepared program".into(),
                source,
            })?;
        Ok(self.child)
    }

    /// Ends the waiting process without running the program, and waits until it is gone.
    pub async fn end(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// How a program starts in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Its working directory, inside.
    pub cwd: PathBuf,
    /// The `cgroup.procs` files of the cgroups it joins before anything of it runs.
    pub cgroups: Vec<PathBuf>,
    /// Its resource limits (set before it becomes the sandbox's user, who may not raise
    /// them).
    pub limits: Vec<(Resource, u64)>,
}

/// A resource limit of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_NOFILE`.
    OpenFiles,
    /// `RLIMIT_DATA`.
    Data,
}

impl Resource {
    fn raw(self) -> libc::__rlimit_resource_t {
        match self {
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::Data => libc::RLIMIT_DATA,
        }
    }
}

/// A sandbox: its init, and its namespaces to start programs in.
pub struct Sandbox {
    init: Child,
    pid_namespace: Arc<OwnedFd>,
    mount_namespace: Arc<OwnedFd>,
    user: User,
    sandboxes: Arc<Sandboxes>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("init", &self.init.id())
            .field("user", &self.user)
            .finish()
    }
}

impl Sandbox {
    /// Starts `command` inside, as `entry` says: its program is a path inside the
    /// sandbox.
    pub async fn spawn(&self, mut command: Command, entry: &Entry) -> Result<Child, SandboxError> {
        self.enter_before_exec(&mut command, entry, None)?;
        self.spawn_inside(command, "starting a program in the sandbox")
            .await
    }

    /// Forks `command` (its steps before exec already added) into the sandbox's PID
    /// namespace, from the spawning thread; `step` names it in an error.
    async fn spawn_inside(&self, mut command: Command, step: &str) -> Result<Child, SandboxError> {
        let pid_namespace = self.pid_namespace.clone();
        self.sandboxes
            .on_thread(move || {
                join_pid_namespace(&pid_namespace)?;
                let spawned = command.spawn();
                leave_pid_namespace();
                spawned
            })
            .await?
            .map_err(|source| SandboxError::Setup {
                step: step.into(),
                source,
            })
    }

    /// Prepares `command` inside, as `entry` says, without running it: its process is
    /// made now, in the sandbox's namespaces and cgroups and as its user, and waits before
    /// `exec` until [`Prepared::start`]. What a process costs before it runs (joining
    /// cgroups above all) is paid here, ahead of the start. While it waits it holds
    /// nothing of portico's but its standard streams (every other descriptor is closed), so
    /// a program that could not be executed is refused here.
    pub async fn prepare(
        &self,
        mut command: Command,
        entry: &Entry,
    ) -> Result<Prepared, SandboxError> {
        let (gate, gate_writer) = std::io::pipe().map_err(|source| SandboxError::Setup {
            step: "making a pipe".into(),
            source,
        })?;
        let program = plan::c_path(Path::new(command.as_std().get_program()))?;
        self.enter_before_exec(
            &mut command,
            entry,
            Some(Gate {
                read: gate.as_raw_fd(),
                write: gate_writer.as_raw_fd(),
                program,
            }),
        )?;
        let child = self
            .spawn_inside(command, "preparing a program in the sandbox")
            .await?;
        drop(gate);
        Ok(Prepared {
            gate: gate_writer,
            child,
        })
    }

    /// Adds to `command` what it does between fork and exec to enter the sandbox (and,
    /// with `gate`, a pipe's read and write ends, to wait for a byte on it before `exec`).
    fn enter_before_exec(
        &self,
        command: &mut Command,
        entry: &Entry,
        gate: Option<Gate>,
    ) -> Result<(), SandboxError> {
        let cwd = plan::c_path(&entry.cwd)?;
        let cgroups = entry
            .cgroups
            .iter()
            .map(|p| plan::c_path(p))
            .collect::<Result<Vec<CString>, _>>()?;
        let limits: Vec<(libc::__rlimit_resource_t, u64)> = entry
            .limits
            .iter()
            .map(|(resource, value)| (resource.raw(), *value))
            .collect();
        let mount_namespace = self.mount_namespace.clone();
        let user = self.user;
        #[allow(unsafe_code)]
        // SAFETY: the closure makes system calls only, on data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if gate.is_some() {
                    // Named from the start: what `ps` shows is not a function yet.
                    child::name(child::PREPARED_NAME);
                }
                for procs in &cgroups {
                    child::join_cgroup(procs).map_err(std::io::Error::from_raw_os_error)?;
                }
                for (resource, value) in &limits {
                    child::limit(*resource, *value).map_err(std::io::Error::from_raw_os_error)?;
                }
                child::enter(mount_namespace.as_raw_fd(), &cwd, user)
                    .map_err(std::io::Error::from_raw_os_error)?;
                match &gate {
                    Some(gate) => child::wait_gate(gate.read, gate.write, &gate.program)
                        .map_err(std::io::Error::from_raw_os_error),
                    None => Ok(()),
                }
            });
        }
        Ok(())
    }

    /// The init's process id (as portico sees it).
    pub fn init_pid(&self) -> Option<u32> {
        self.init.id()
    }

    /// The identity of the sandbox's PID namespace (its inode): a process whose
    /// `/proc/PID/ns/pid` has it is in the sandbox.
    pub fn pid_namespace_id(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::from(self.pid_namespace.try_clone().ok()?);
        file.metadata().ok().map(|m| m.ino())
    }

    /// Ends the sandbox: kills its init, and so everything in it, and waits until the init
    /// is gone.
    pub async fn end(mut self) {
        let _ = self.init.start_kill();
        let _ = self.init.wait().await;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The init's death kills everything in the namespace.
        let _ = self.init.start_kill();
    }
}
