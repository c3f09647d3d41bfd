//! What building a sandbox's root takes, step by step, worked out before the fork.
//!
//! Between `fork` and `exec` a child of a threaded process may only make system calls: no
//! allocation, no locks. So every path is turned into a C string here, in the parent, and
//! the child only walks the list ([`crate::child`]). A step that fails is reported by its
//! index, and [`Step::describe`] says what it was.

use crate::{Layout, Root, SandboxError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Top-level host directories the sandbox replaces rather than shows.
const REPLACED: [&str; 6] = ["proc", "dev", "tmp", "run", "opt", "var"];

/// Directories under `/var` that are the sandbox's own (Lambda's layout).
const OWN_VAR: [&str; 4] = ["task", "runtime", "lang", "tmp"];

/// One step of building the root.
#[derive(Debug)]
pub(crate) enum Step {
    /// A tmpfs at `target` with `options` (`size=…,mode=…`).
    Tmpfs {
        target: CString,
        options: CString,
        flags: libc::c_ulong,
    },
    /// An empty directory.
    Mkdir { path: CString },
    /// A symbolic link `link` → `target`.
    Symlink { target: CString, link: CString },
    /// `source` bound at `target` (with what is mounted below it), read-only, no set-uid,
    /// no devices.
    Bind { source: CString, target: CString },
    /// A character device, as on every Linux host (`/dev/null`, …).
    Device {
        path: CString,
        major: u32,
        minor: u32,
    },
    /// A fresh procfs at `target`: the sandbox's own processes only.
    Proc { target: CString },
    /// `/dev/null` over the file `target`: it reads as empty.
    HideFile { null: CString, target: CString },
    /// An empty read-only tmpfs over the directory `target`.
    HideDir { target: CString },
    /// The ext4 file system on `device` at `target`, no set-uid, no devices, open to all
    /// as `/tmp` is (its `lost+found` removed).
    Disk {
        device: CString,
        target: CString,
        lost_found: CString,
    },
    /// `target`'s mount becomes read-only (what is mounted below it is not touched).
    ReadOnly { target: CString },
    /// `root` becomes `/`, and the host's root is detached.
    PivotRoot { root: CString },
}

impl Step {
    /// What the step does, for an error message.
    pub(crate) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::Tmpfs { target, .. } => format!("mounting a tmpfs at {}", s(target)),
            Step::Mkdir { path } => format!("making {}", s(path)),
            Step::Symlink { link, .. } => format!("linking {}", s(link)),
            Step::Bind { source, target } => {
                format!("binding {} at {}", s(source), s(target))
            }
            Step::Device { path, .. } => format!("making the device {}", s(path)),
            Step::Proc { target } => format!("mounting proc at {}", s(target)),
            Step::HideFile { target, .. } => format!("hiding the file {}", s(target)),
            Step::HideDir { target } => format!("hiding the directory {}", s(target)),
            Step::Disk { device, target, .. } => {
                format!("mounting {} at {}", s(device), s(target))
            }
            Step::ReadOnly { target } => format!("making {} read-only", s(target)),
            Step::PivotRoot { root } => format!("entering the root {}", s(root)),
        }
    }
}

/// What `/tmp` is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tmp<'a> {
    /// A tmpfs (in memory) of the layout's size.
    Memory,
    /// The file system on this (loop) device.
    Disk(&'a Path),
}

/// The steps that build a root for `layout`, with `tmp` as `/tmp`, in order.
pub(crate) fn plan(layout: &Layout, tmp: Tmp<'_>) -> Result<Vec<Step>, SandboxError> {
    let staging = &layout.staging;
    let inside = |p: &str| staging.join(p.trim_start_matches('/'));
    let mut steps = Vec::new();
    let nosuid = (libc::MS_NOSUID | libc::MS_NODEV) as libc::c_ulong;
    match &layout.root {
        Root::Host => {
            steps.push(Step::Tmpfs {
                target: c(staging)?,
                options: cstr("size=1m,mode=0755")?,
                flags: nosuid,
            });
            host_skeleton(staging, &mut steps)?;
        }
        Root::Directory(dir) => {
            steps.push(Step::Bind {
                source: c(dir)?,
                target: c(staging)?,
            });
        }
    }
    // Lambda's own directories: code, runtime, language, layers.
    for (source, target) in &layout.binds {
        let target = inside(&target.to_string_lossy());
        if matches!(layout.root, Root::Host) {
            steps.push(Step::Mkdir { path: c(&target)? });
        }
        steps.push(Step::Bind {
            source: c(source)?,
            target: c(&target)?,
        });
    }
    if matches!(layout.root, Root::Host) {
        for dir in ["proc", "dev", "tmp", "run"] {
            steps.push(Step::Mkdir {
                path: c(&inside(dir))?,
            });
        }
        // `/opt` is the layers' (bound above when there are any) and otherwise empty.
        if !layout.binds.iter().any(|(_, t)| t == Path::new("/opt")) {
            steps.push(Step::Mkdir {
                path: c(&inside("opt"))?,
            });
        }
    }
    steps.push(Step::Proc {
        target: c(&inside("proc"))?,
    });
    devices(&inside("dev"), &mut steps)?;
    let tmp_dir = inside("tmp");
    steps.push(match tmp {
        Tmp::Memory => Step::Tmpfs {
            target: c(&tmp_dir)?,
            options: cstr(&format!("size={},mode=1777", layout.tmp_size_bytes))?,
            flags: nosuid,
        },
        Tmp::Disk(device) => Step::Disk {
            device: c(device)?,
            target: c(&tmp_dir)?,
            lost_found: c(&tmp_dir.join("lost+found"))?,
        },
    });
    let null = c(&inside("dev/null"))?;
    for hidden in &layout.hidden {
        let Some(relative) = visible_relative(hidden) else {
            continue;
        };
        let target = c(&staging.join(relative))?;
        if hidden.is_dir() {
            steps.push(Step::HideDir { target });
        } else if hidden.exists() {
            steps.push(Step::HideFile {
                null: null.clone(),
                target,
            });
        }
    }
    steps.push(Step::ReadOnly {
        target: c(&inside("dev"))?,
    });
    steps.push(Step::ReadOnly {
        target: c(staging)?,
    });
    steps.push(Step::PivotRoot { root: c(staging)? });
    Ok(steps)
}

/// The host's top-level directories, read-only, and its top-level links, as they are; `/var`
/// one level down, so that Lambda's `/var/task`, `/var/runtime` and `/var/lang` can be the
/// sandbox's own.
fn host_skeleton(staging: &Path, steps: &mut Vec<Step>) -> Result<(), SandboxError> {
    mirror(Path::new("/"), staging, &REPLACED, steps)?;
    let var = staging.join("var");
    steps.push(Step::Mkdir { path: c(&var)? });
    mirror(Path::new("/var"), &var, &OWN_VAR, steps)
}

/// For each entry of `host` but `skip`: directories bound read-only under `into`, links
/// copied. Files and anything else are left out.
fn mirror(
    host: &Path,
    into: &Path,
    skip: &[&str],
    steps: &mut Vec<Step>,
) -> Result<(), SandboxError> {
    let entries = std::fs::read_dir(host).map_err(|source| SandboxError::Read {
        path: host.to_owned(),
        source,
    })?;
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if skip.iter().any(|s| name.as_bytes() == s.as_bytes()) || name == "lost+found" {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let target = into.join(&name);
        if kind.is_symlink() {
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            steps.push(Step::Symlink {
                target: c(&link)?,
                link: c(&target)?,
            });
        } else if kind.is_dir() {
            steps.push(Step::Mkdir { path: c(&target)? });
            steps.push(Step::Bind {
                source: c(&entry.path())?,
                target: c(&target)?,
            });
        }
    }
    Ok(())
}

/// Lambda's `/dev`: the usual character devices and the links to `/proc/self/fd`.
fn devices(dev: &Path, steps: &mut Vec<Step>) -> Result<(), SandboxError> {
    steps.push(Step::Tmpfs {
        target: c(dev)?,
        options: cstr("size=64k,mode=0755")?,
        flags: libc::MS_NOSUID as libc::c_ulong,
    });
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
    ] {
        steps.push(Step::Device {
            path: c(&dev.join(name))?,
            major,
            minor,
        });
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: cstr(target)?,
            link: c(&dev.join(name))?,
        });
    }
    Ok(())
}

/// Where the host path `hidden` shows in a host-rooted sandbox, relative to its root: `None`
/// when the sandbox does not show it anyway (under a directory it replaces).
fn visible_relative(hidden: &Path) -> Option<PathBuf> {
    let real = hidden.canonicalize().ok()?;
    let mut parts = real.components().filter_map(|c| match c {
        Component::Normal(part) => Some(part),
        _ => None,
    });
    let first = parts.next()?;
    if REPLACED.iter().any(|r| first.as_bytes() == r.as_bytes()) {
        if first != "var" {
            return None;
        }
        let second = parts.next()?;
        if OWN_VAR.iter().any(|o| second.as_bytes() == o.as_bytes()) {
            return None;
        }
    }
    real.strip_prefix("/").ok().map(Path::to_path_buf)
}

fn c(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Path(path.to_owned()))
}

fn cstr(text: &str) -> Result<CString, SandboxError> {
    CString::new(text).map_err(|_| SandboxError::Path(PathBuf::from(text)))
}

/// A path as a C string (for what the child needs besides the steps).
pub(crate) fn c_path(path: &Path) -> Result<CString, SandboxError> {
    c(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::User;

    fn layout() -> Layout {
        Layout {
            binds: vec![(PathBuf::from("/usr/bin"), PathBuf::from("/var/task"))],
            tmp_size_bytes: 512 << 20,
            hidden: vec![PathBuf::from("/etc/hostname"), PathBuf::from("/tmp/x")],
            user: User::LAMBDA,
            staging: PathBuf::from("/run/portico-test-root"),
            root: Root::Host,
        }
    }

    #[test]
    fn the_host_is_shown_read_only_with_lambda_s_directories_its_own() {
        let steps = plan(&layout(), Tmp::Memory).unwrap();
        let described: Vec<String> = steps.iter().map(Step::describe).collect();
        let has = |s: &str| described.iter().any(|d| d == s);
        assert!(
            has("binding /usr at /run/portico-test-root/usr"),
            "{described:#?}"
        );
        assert!(has("binding /usr/bin at /run/portico-test-root/var/task"));
        assert!(has("mounting proc at /run/portico-test-root/proc"));
        assert!(has("mounting a tmpfs at /run/portico-test-root/tmp"));
        assert!(has("hiding the file /run/portico-test-root/etc/hostname"));
        // The host's /tmp, /proc and /dev are never shown; /tmp/x is hidden already.
        assert!(!described.iter().any(|d| d.starts_with("binding /tmp")));
        assert!(!described.iter().any(|d| d.starts_with("binding /proc")));
        assert!(!described.iter().any(|d| d.contains("/tmp/x")));
        assert_eq!(
            described.last().map(String::as_str),
            Some("entering the root /run/portico-test-root")
        );
        let tmp = steps.iter().find_map(|s| match s {
            Step::Tmpfs {
                target, options, ..
            } if target.to_bytes().ends_with(b"/tmp") => {
                Some(options.to_string_lossy().into_owned())
            }
            _ => None,
        });
        assert_eq!(tmp.as_deref(), Some("size=536870912,mode=1777"));
    }

    #[test]
    fn a_path_with_a_nul_is_refused() {
        let mut layout = layout();
        layout
            .binds
            .push((PathBuf::from("/a\0b"), PathBuf::from("/opt")));
        assert!(matches!(
            plan(&layout, Tmp::Memory),
            Err(SandboxError::Path(_))
        ));
    }

    #[test]
    fn a_disk_tmp_is_mounted_from_its_device() {
        let steps = plan(&layout(), Tmp::Disk(Path::new("/dev/loop7"))).unwrap();
        let described: Vec<String> = steps.iter().map(Step::describe).collect();
        assert!(
            described
                .iter()
                .any(|d| d == "mounting /dev/loop7 at /run/portico-test-root/tmp"),
            "{described:#?}"
        );
        assert!(
            !described
                .iter()
                .any(|d| d.starts_with("mounting a tmpfs at /run/portico-test-root/tmp"))
        );
    }
}
