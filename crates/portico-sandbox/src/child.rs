//! What runs in a forked child, between `fork` and `exec`: building the root, the init's
//! reaping, and entering a sandbox. Only system calls here (the parent is threaded: a lock
//! another thread held at the fork would never be released), on data prepared in
//! [`crate::plan`].

use crate::User;
use crate::plan::Step;
use std::ffi::CStr;
use std::os::fd::RawFd;

/// `mount_setattr`'s argument (`linux/mount.h`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// The error number of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(result: libc::c_long) -> Result<(), i32> {
    if result < 0 { Err(errno()) } else { Ok(()) }
}

/// Sets `attr` on the mount at `target` (and below it when `recursive`).
#[allow(unsafe_code)]
fn set_attr(target: &CStr, attr: u64, recursive: bool) -> Result<(), i32> {
    let attr = MountAttr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a plain system call on a valid C string and a struct of its documented size.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

#[allow(unsafe_code)]
fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    let data = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: valid C strings; `data` is null or a C string, as tmpfs, proc and ext4 take.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data,
        )
    } as libc::c_long)
}

/// Builds the root in a new mount namespace and enters it: the steps in order. On failure,
/// the index of the failed step and the error number.
#[allow(unsafe_code)]
pub(crate) fn build_root(steps: &[Step]) -> Result<(), (usize, i32)> {
    // SAFETY: unshare and mount on constant arguments.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into()).map_err(|e| (usize::MAX, e))?;
        // Nothing done here propagates back to the host's mounts.
        check(
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )
        .map_err(|e| (usize::MAX, e))?;
    }
    for (index, step) in steps.iter().enumerate() {
        run(step).map_err(|e| (index, e))?;
    }
    Ok(())
}

#[allow(unsafe_code)]
fn run(step: &Step) -> Result<(), i32> {
    // SAFETY: every call below is a system call on valid C strings from the plan.
    unsafe {
        match step {
            Step::Tmpfs {
                target,
                options,
                flags,
            } => mount(c"tmpfs", target, c"tmpfs", *flags, Some(options)),
            Step::Mkdir { path } => match check(libc::mkdir(path.as_ptr(), 0o755).into()) {
                Err(libc::EEXIST) => Ok(()),
                other => other,
            },
            Step::Symlink { target, link } => {
                check(libc::symlink(target.as_ptr(), link.as_ptr()).into())
            }
            Step::Bind { source, target } => {
                mount(
                    source,
                    target,
                    c"none",
                    (libc::MS_BIND | libc::MS_REC) as libc::c_ulong,
                    None,
                )?;
                set_attr(
                    target,
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    true,
                )
            }
            Step::Device { path, major, minor } => {
                let mode = libc::S_IFCHR | 0o666;
                check(libc::mknod(path.as_ptr(), mode, libc::makedev(*major, *minor)).into())?;
                // The umask took some bits away.
                check(libc::chmod(path.as_ptr(), 0o666).into())
            }
            Step::Proc { target } => mount(
                c"proc",
                target,
                c"proc",
                (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
                None,
            ),
            Step::HideFile { null, target } => {
                mount(null, target, c"none", libc::MS_BIND as libc::c_ulong, None)?;
                set_attr(target, MOUNT_ATTR_RDONLY, false)
            }
            Step::HideDir { target } => mount(
                c"tmpfs",
                target,
                c"tmpfs",
                (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY) as libc::c_ulong,
                Some(c"size=4k,mode=0755"),
            ),
            Step::Disk {
                device,
                target,
                lost_found,
            } => {
                mount(
                    device,
                    target,
                    c"ext4",
                    (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong,
                    Some(c"noinit_itable"),
                )?;
                match check(libc::rmdir(lost_found.as_ptr()).into()) {
                    Ok(()) | Err(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
                check(libc::chmod(target.as_ptr(), 0o1777).into())
            }
            Step::ReadOnly { target } => set_attr(target, MOUNT_ATTR_RDONLY, false),
            Step::PivotRoot { root } => {
                // pivot_root(".", "."), then the old root, stacked under the new one, is
                // detached (pivot_root(2)).
                check(libc::chdir(root.as_ptr()).into())?;
                check(libc::syscall(
                    libc::SYS_pivot_root,
                    c".".as_ptr(),
                    c".".as_ptr(),
                ))?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into())?;
                check(libc::chdir(c"/".as_ptr()).into())
            }
        }
    }
}

/// Names the calling process (`/proc/PID/comm`, what `ps` shows).
#[allow(unsafe_code)]
pub(crate) fn name(name: &CStr) {
    // SAFETY: prctl with a valid C string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    }
}

/// A prepared program's process name while it waits to exec.
pub(crate) const PREPARED_NAME: &CStr = c"portico-spare";

/// The init's process name (`/proc/PID/comm`).
pub(crate) const INIT_NAME: &CStr = c"portico-sandbox";

/// The sandbox's init (PID 1 of its namespace): it reaps whatever is orphaned there, until
/// it is killed. It holds nothing of its parent's: its descriptors are closed, and it may
/// not be traced or read through `/proc`.
#[allow(unsafe_code)]
pub(crate) fn init() -> ! {
    // SAFETY: system calls on local values; nothing here allocates.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // What `ps` shows: not a second portico.
        name(INIT_NAME);
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        let mut child: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut child);
        libc::sigaddset(&mut child, libc::SIGCHLD);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            let mut signal = 0;
            libc::sigwait(&child, &mut signal);
        }
    }
}

/// Everything a process entering a sandbox does before `exec` (after joining its cgroups):
/// joins the mount namespace (whose root is the sandbox's), its working directory and its user, with
/// no way to gain privileges again.
#[allow(unsafe_code)]
pub(crate) fn enter(mount_namespace: RawFd, cwd: &CStr, user: User) -> Result<(), i32> {
    // SAFETY: system calls on a descriptor the caller keeps open and on valid C strings.
    unsafe {
        check(libc::setns(mount_namespace, libc::CLONE_NEWNS).into())?;
        check(libc::chdir(cwd.as_ptr()).into())?;
        check(libc::setgroups(0, std::ptr::null()).into())?;
        check(libc::setresgid(user.gid, user.gid, user.gid).into())?;
        check(libc::setresuid(user.uid, user.uid, user.uid).into())?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
    }
    Ok(())
}

/// A prepared program's wait before `exec`: `program` must be executable; then every
/// descriptor but the standard streams and the pipe `gate` is closed (so that the waiting
/// process holds nothing of portico's, and its spawn returns now), and a byte on `gate`
/// is the go. End of file (the program was dropped unstarted) is `ECANCELED`.
#[allow(unsafe_code)]
pub(crate) fn wait_gate(gate: RawFd, writer: RawFd, program: &CStr) -> Result<(), i32> {
    // SAFETY: access on a valid C string; closing descriptors this child will not use (the
    // gate's write end among them).
    unsafe {
        check(libc::access(program.as_ptr(), libc::X_OK).into())?;
        libc::close(writer);
        let gate_u = gate as u32;
        if gate_u > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, gate_u - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, gate_u + 1, u32::MAX, 0u32);
    }
    let mut byte = 0u8;
    loop {
        // SAFETY: a read into a local byte from a descriptor the child holds.
        let n = unsafe { libc::read(gate, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => return Err(libc::ECANCELED),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`.
#[allow(unsafe_code)]
pub(crate) fn join_cgroup(procs: &CStr) -> Result<(), i32> {
    // SAFETY: open, write and close on a valid C string and a local buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = errno();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// Sets the calling process's limit of `resource` to `value` (soft and hard).
#[allow(unsafe_code)]
pub(crate) fn limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), i32> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit with a local struct.
    check(unsafe { libc::setrlimit(resource, &limit) }.into())
}

/// Writes the failed step and error number to `report` (the parent reads them when the
/// spawn fails).
#[allow(unsafe_code)]
pub(crate) fn report(report: RawFd, step: usize, errno: i32) {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&(step as u64).to_le_bytes());
    bytes[8..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: a write of a local buffer to a descriptor the child holds.
    unsafe {
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
    }
}
