//! A sandbox's `/tmp` on disk, as Lambda's ephemeral storage is.
//!
//! A tmpfs would keep `/tmp` in memory, charged to the function's memory limit: a 128 MB
//! function could not write 200 MB to its 512 MB `/tmp`, as it can on Lambda. So each
//! sandbox gets a small ext4 file system of its own, on a loop device over a file of the
//! size asked for. The file is made sparse and nameless (`O_TMPFILE`): only the loop device
//! holds it, and the loop device is cleared when the sandbox's mount of it goes (with the
//! sandbox), so nothing is left behind, whatever happens to portico.
//!
//! Formatting is paid once per size: `mke2fs` (Debian's e2fsprogs) writes an empty file
//! system into a template, and each sandbox's file is a copy of the template's few written
//! blocks.

use crate::SandboxError;
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where `mke2fs` is looked for (it is in `/usr/sbin`, often not on a service's `PATH`).
const MKE2FS: [&str; 3] = ["/usr/sbin/mke2fs", "/sbin/mke2fs", "mke2fs"];

/// The template's format version: a change to how templates are made changes their names.
const TEMPLATE_VERSION: u32 = 2;

/// What ext4 keeps for itself out of a file system's size (inode tables, bitmaps, the
/// reserve for delayed allocation): the file is this much larger than asked, so that
/// about the size asked for is free in it.
const OVERHEAD_PER_MILLE: u64 = 38;

/// `ioctl` requests and flags of `linux/loop.h`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` (`linux/loop.h`).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (`linux/loop.h`).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// Makes disk-backed `/tmp`s: holds the directory of templates and the nameless files.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// The sizes whose template is made.
    made: tokio::sync::Mutex<HashSet<u64>>,
}

/// A loop device holding a sandbox's `/tmp`, held open until the sandbox has mounted it
/// (then the mount holds it, and it is cleared when the mount goes).
#[derive(Debug)]
pub(crate) struct Disk {
    /// Its device file, `/dev/loopN`.
    pub(crate) device: PathBuf,
    _open: File,
}

fn setup(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let step = step.into();
    move |source| SandboxError::Setup { step, source }
}

impl Scratch {
    /// Keeps templates and files in `dir` (made if missing; on a disk, not a tmpfs), and
    /// checks that this machine can make a disk (`mke2fs`, loop devices) by making one of
    /// Lambda's default 512 MB.
    pub async fn new(dir: &Path) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(dir).map_err(setup(format!("making {}", dir.display())))?;
        let scratch = Self {
            dir: dir.to_owned(),
            made: Default::default(),
        };
        drop(scratch.disk(512 << 20).await?);
        Ok(scratch)
    }

    /// A new, empty file system of about `size_bytes` free, on a loop device.
    pub(crate) async fn disk(&self, size_bytes: u64) -> Result<Disk, SandboxError> {
        let file_bytes =
            (size_bytes + size_bytes * OVERHEAD_PER_MILLE / 1000).next_multiple_of(4096);
        let template = self.template(file_bytes).await?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || attach(&template, &dir))
            .await
            .map_err(|e| SandboxError::Setup {
                step: "making a /tmp".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// The template of an empty file system in a file of `file_bytes`, made if missing.
    async fn template(&self, file_bytes: u64) -> Result<PathBuf, SandboxError> {
        let path = self
            .dir
            .join(format!("empty-ext4-v{TEMPLATE_VERSION}-{file_bytes}.img"));
        let mut made = self.made.lock().await;
        if made.contains(&file_bytes) || path.is_file() {
            made.insert(file_bytes);
            return Ok(path);
        }
        let partial = self.dir.join(format!(
            "empty-ext4-v{TEMPLATE_VERSION}-{file_bytes}.{}.partial",
            std::process::id()
        ));
        let file =
            File::create(&partial).map_err(setup(format!("making {}", partial.display())))?;
        file.set_len(file_bytes)
            .map_err(setup(format!("sizing {}", partial.display())))?;
        drop(file);
        let formatted = format_ext4(&partial).await;
        if let Err(error) = formatted {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
        std::fs::rename(&partial, &path)
            .map_err(setup(format!("renaming {}", partial.display())))?;
        made.insert(file_bytes);
        Ok(path)
    }
}

/// Writes an empty ext4 file system into `file`: no journal (nothing in `/tmp` outlives a
/// crash), nothing reserved for root, inode tables left to be zeroed never (the mount says
/// `noinit_itable`), so the file stays sparse.
async fn format_ext4(file: &Path) -> Result<(), SandboxError> {
    let program = MKE2FS
        .iter()
        .find(|p| !p.starts_with('/') || Path::new(p).is_file())
        .copied()
        .unwrap_or("mke2fs");
    let output = tokio::process::Command::new(program)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-m",
            "0",
            // The loop device's block size: smaller blocks could not be mounted from it.
            "-b",
            "4096",
            "-O",
            "^has_journal,^resize_inode",
            "-E",
            "lazy_itable_init=1,nodiscard,root_owner=0:0",
            "-L",
            "tmp",
        ])
        .arg(file)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(setup(format!(
            "running {program} (Debian's e2fsprogs) to make a /tmp"
        )))?;
    if !output.status.success() {
        return Err(SandboxError::Setup {
            step: format!("running {program} to make a /tmp"),
            source: std::io::Error::other(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        });
    }
    Ok(())
}

/// A copy of `template`, nameless in `dir`, on a new loop device.
fn attach(template: &Path, dir: &Path) -> Result<Disk, SandboxError> {
    let source = File::open(template).map_err(setup(format!("opening {}", template.display())))?;
    let length = source
        .metadata()
        .map_err(setup(format!("reading {}", template.display())))?
        .len();
    let copy = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(setup(format!("making a file in {}", dir.display())))?;
    copy.set_len(length)
        .map_err(setup("sizing a /tmp's file"))?;
    copy_written(&source, &copy).map_err(setup(format!("copying {}", template.display())))?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(setup("opening /dev/loop-control"))?;
    let mut last = None;
    // Another process may take the free device between asking and configuring it.
    for _ in 0..16 {
        let number = free_loop(&control).map_err(setup("asking for a free loop device"))?;
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device)
            .map_err(setup(format!("opening {}", device.display())))?;
        match configure(&open, &copy) {
            Ok(()) => {
                return Ok(Disk {
                    device,
                    _open: open,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(setup(format!("configuring {}", device.display()))(e)),
        }
    }
    Err(setup("configuring a loop device")(last.unwrap_or_else(
        || std::io::Error::from_raw_os_error(libc::EBUSY),
    )))
}

/// Copies the written parts of `source` into `copy` at the same offsets (the holes stay
/// holes).
fn copy_written(source: &File, copy: &File) -> std::io::Result<()> {
    let length = source.metadata()?.len();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < length {
        let Some(start) = seek(source, offset, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(source, start, libc::SEEK_HOLE)?.unwrap_or(length);
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let read = source.read_at(&mut buffer[..want], at)?;
            if read == 0 {
                break;
            }
            copy.write_all_at(&buffer[..read], at)?;
            at += read as u64;
        }
        offset = end;
    }
    Ok(())
}

/// `lseek` to the next data or hole at or after `offset`: `None` when there is none.
#[allow(unsafe_code)]
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a descriptor owned by `file`, which outlives the call.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(at as u64))
}

/// A free loop device's number (made if none is free).
#[allow(unsafe_code)]
fn free_loop(control: &File) -> std::io::Result<u32> {
    // SAFETY: an ioctl without argument on a descriptor owned by `control`.
    let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if number < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(number as u32)
}

/// Backs the loop device `device` with `file`, cleared when it is last closed, reading and
/// writing the file directly (not through a second page cache).
#[allow(unsafe_code)]
fn configure(device: &File, file: &File) -> std::io::Result<()> {
    let mut name = [0u8; 64];
    name[..11].copy_from_slice(b"portico-tmp");
    let config = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size: 4096,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            size_limit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
            file_name: name,
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is (its size is
    // checked above), on descriptors owned by `device` and `file`.
    let result = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
