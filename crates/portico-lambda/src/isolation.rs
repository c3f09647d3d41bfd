//! Where an execution environment runs: in a sandbox of its own, as Lambda runs it, or (only
//! when the configuration says so) as a plain child process of portico.
//!
//! In a sandbox the function sees Lambda's paths: its code at `/var/task`, the runtime's
//! client at `/var/runtime`, the language's installation at `/var/lang`, its layers at
//! `/opt`. A [`View`] says where each of those is for the process, and rewrites the host
//! paths a launch was resolved with (the program, its arguments, `PYTHONPATH`, …) into the
//! sandbox's.

use crate::spec::FunctionSpec;
use portico_sandbox::{Layout, Root, Sandboxes, User};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How execution environments are isolated.
#[derive(Debug, Clone, Default)]
pub enum Isolation {
    /// Plain child processes of portico, with the host's paths (`[runtime] sandbox = false`).
    #[default]
    None,
    /// A sandbox each (mount and PID namespaces, an unprivileged user).
    Sandbox {
        /// What makes them.
        sandboxes: Arc<Sandboxes>,
        /// Host files functions must not see: portico's configuration, certificates, keys.
        hidden: Vec<PathBuf>,
    },
}

/// Lambda's directories.
const TASK: &str = "/var/task";
const RUNTIME: &str = "/var/runtime";
const LANG: &str = "/var/lang";
const OPT: &str = "/opt";

/// Where a function's directories are, as its process sees them.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// Host directory → the path the process sees it at, most specific first.
    map: Vec<(PathBuf, PathBuf)>,
    /// The code (`LAMBDA_TASK_ROOT`).
    pub(crate) task: PathBuf,
    /// The runtime's directory (`LAMBDA_RUNTIME_DIR`).
    pub(crate) runtime: PathBuf,
    /// The language's installation, when the runtime has one apart from the host's.
    pub(crate) lang: Option<PathBuf>,
    /// The layers (`/opt`), when the function has any.
    pub(crate) opt: Option<PathBuf>,
}

impl View {
    /// The host's paths, unchanged.
    pub(crate) fn host(spec: &FunctionSpec) -> Self {
        Self {
            map: Vec::new(),
            task: spec.task_root.clone(),
            runtime: spec.runtime_dir.clone(),
            lang: spec.lang_dir.clone(),
            opt: spec.opt_dir.clone(),
        }
    }

    /// Lambda's paths, for a sandbox.
    pub(crate) fn sandboxed(spec: &FunctionSpec) -> Self {
        if spec.image.is_some() {
            // An image's paths are its own already.
            return Self {
                map: Vec::new(),
                task: spec.task_root.clone(),
                runtime: PathBuf::from(RUNTIME),
                lang: None,
                opt: None,
            };
        }
        let mut map = vec![(spec.task_root.clone(), PathBuf::from(TASK))];
        map.push((spec.runtime_dir.clone(), PathBuf::from(RUNTIME)));
        if let Some(lang) = &spec.lang_dir {
            map.push((lang.clone(), PathBuf::from(LANG)));
        }
        if let Some(opt) = &spec.opt_dir {
            map.push((opt.clone(), PathBuf::from(OPT)));
        }
        // The longest host path first: the runtime's directory may be inside the
        // language's.
        map.sort_by_key(|(host, _)| std::cmp::Reverse(host.as_os_str().len()));
        Self {
            map,
            task: PathBuf::from(TASK),
            runtime: PathBuf::from(RUNTIME),
            lang: spec.lang_dir.as_ref().map(|_| PathBuf::from(LANG)),
            opt: spec.opt_dir.as_ref().map(|_| PathBuf::from(OPT)),
        }
    }

    /// Where the host path `path` is for the process.
    pub(crate) fn path(&self, path: &Path) -> PathBuf {
        for (host, inside) in &self.map {
            if let Ok(rest) = path.strip_prefix(host) {
                return if rest.as_os_str().is_empty() {
                    inside.clone()
                } else {
                    inside.join(rest)
                };
            }
        }
        path.to_owned()
    }

    /// `value` with each absolute path of a `:`-separated list rewritten: an argument or a
    /// variable such as `PYTHONPATH`.
    pub(crate) fn value(&self, value: &str) -> String {
        if self.map.is_empty() {
            return value.to_owned();
        }
        value
            .split(':')
            .map(|part| {
                if part.starts_with('/') {
                    self.path(Path::new(part)).display().to_string()
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(":")
    }

    /// What the sandbox shows: these directories, read-only, at Lambda's paths.
    pub(crate) fn layout(
        &self,
        spec: &FunctionSpec,
        sandboxes: &Sandboxes,
        hidden: &[PathBuf],
    ) -> Layout {
        let tmp_size_bytes = u64::from(spec.ephemeral_storage_mb) * 1024 * 1024;
        if let Some(image) = &spec.image {
            // The image is the root; the host's name resolution is shown over its own.
            let binds = ["/etc/resolv.conf", "/etc/hosts"]
                .into_iter()
                .map(PathBuf::from)
                .filter(|f| f.is_file())
                .map(|f| (f.clone(), f))
                .collect();
            return Layout {
                binds,
                tmp_size_bytes,
                hidden: Vec::new(),
                user: User::LAMBDA,
                staging: sandboxes.staging().to_owned(),
                root: Root::Directory(image.rootfs.clone()),
            };
        }
        let mut binds: Vec<(PathBuf, PathBuf)> = self.map.clone();
        // Parents before what is mounted inside them.
        binds.sort_by_key(|(_, inside)| inside.as_os_str().len());
        Layout {
            binds,
            tmp_size_bytes,
            hidden: hidden.to_vec(),
            user: User::LAMBDA,
            staging: sandboxes.staging().to_owned(),
            root: Root::Host,
        }
    }
}

/// Makes one empty sandbox and ends it: whether this machine can make them.
pub async fn probe(
    sandboxes: &Arc<Sandboxes>,
    hidden: &[PathBuf],
) -> Result<(), portico_sandbox::SandboxError> {
    let layout = Layout {
        binds: Vec::new(),
        // Lambda's default, whose `/tmp` is made ready by then.
        tmp_size_bytes: 512 << 20,
        hidden: hidden.to_vec(),
        user: User::LAMBDA,
        staging: sandboxes.staging().to_owned(),
        root: Root::Host,
    };
    sandboxes.create(&layout).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            map: vec![
                (
                    PathBuf::from("/py/lib/site-packages"),
                    PathBuf::from(RUNTIME),
                ),
                (PathBuf::from("/srv/code"), PathBuf::from(TASK)),
                (PathBuf::from("/py"), PathBuf::from(LANG)),
            ],
            task: PathBuf::from(TASK),
            runtime: PathBuf::from(RUNTIME),
            lang: Some(PathBuf::from(LANG)),
            opt: None,
        }
    }

    #[test]
    fn host_paths_become_lambda_s() {
        let v = view();
        assert_eq!(
            v.path(Path::new("/py/bin/python3")),
            Path::new("/var/lang/bin/python3")
        );
        assert_eq!(
            v.path(Path::new("/py/lib/site-packages/awslambdaric")),
            Path::new("/var/runtime/awslambdaric")
        );
        assert_eq!(v.path(Path::new("/srv/code")), Path::new("/var/task"));
        assert_eq!(v.path(Path::new("/srv/codex")), Path::new("/srv/codex"));
        assert_eq!(v.path(Path::new("/usr/bin/env")), Path::new("/usr/bin/env"));
        assert_eq!(
            v.value("/srv/code:/srv/code/node_modules:relative:/usr/lib"),
            "/var/task:/var/task/node_modules:relative:/usr/lib"
        );
    }
}
