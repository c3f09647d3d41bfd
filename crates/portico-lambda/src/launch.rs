//! How a function of each Lambda runtime is started.
//!
//! - `provided`: the code's `bootstrap` (or a configured command) speaks the Runtime API itself.
//! - `python3.N`: the official runtime interface client, `python -m awslambdaric HANDLER`, with
//!   the code directory as working directory and on `PYTHONPATH`. The interpreter is
//!   `python3.N` when the machine has it, else `python3`; it is resolved once, at start, to
//!   the real executable (so that pyenv shims and virtualenvs work in Lambda's cleared
//!   environment), and a missing `awslambdaric` is reported then, not at the first request.
//! - `nodejsN.x`: the official `aws-lambda-ric` client with the handler, from the code's own
//!   `node_modules` or a global install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The program, arguments and runtime-specific variables that start one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables the runtime needs besides Lambda's own (the user's come after these).
    pub environment: Vec<(String, String)>,
    /// `LAMBDA_RUNTIME_DIR`: where the runtime's own libraries are (Lambda's
    /// `/var/runtime`): the runtime interface client's directory, or for `provided` the
    /// program's.
    pub runtime_dir: PathBuf,
    /// The interpreter's installation (Lambda's `/var/lang`), when there is one to show a
    /// sandbox.
    pub lang_dir: Option<PathBuf>,
}

impl Launch {
    /// A `provided` function's launch: `program` with `args`.
    pub fn provided(program: PathBuf, args: Vec<String>) -> Self {
        let runtime_dir = program.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            program,
            args,
            environment: Vec::new(),
            runtime_dir,
            lang_dir: None,
        }
    }
}

/// Why a runtime cannot start functions on this machine.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No interpreter for the runtime was found.
    #[error("{runtime}: none of {tried} was found on PATH")]
    NoInterpreter {
        /// The runtime, e.g. `python3.12`.
        runtime: String,
        /// The programs looked for.
        tried: String,
    },
    /// The interpreter is there but the runtime interface client is not.
    #[error("{runtime}: {interpreter} cannot load {client}; install it with `{install}`")]
    NoClient {
        /// The runtime.
        runtime: String,
        /// The interpreter that was asked.
        interpreter: String,
        /// The client, e.g. `awslambdaric`.
        client: &'static str,
        /// The command that installs it.
        install: &'static str,
    },
}

/// The launch of a `python3.{minor}` function with `handler` in `task_root`.
pub fn python(minor: u8, handler: &str, task_root: &Path) -> Result<Launch, LaunchError> {
    let runtime = format!("python3.{minor}");
    let candidates = [runtime.clone(), "python3".to_owned()];
    let mut unusable = None;
    for candidate in &candidates {
        let (executable, runtime_dir, prefix) = match probe_python(candidate) {
            Probe::Missing => continue,
            Probe::NoClient => {
                unusable.get_or_insert_with(|| candidate.clone());
                continue;
            }
            Probe::Ready {
                executable,
                client_dir,
                prefix,
            } => (executable, client_dir, prefix),
        };
        if candidate != &runtime {
            tracing::warn!(
                runtime,
                interpreter = %executable.display(),
                "no {runtime} on this machine; running the function with python3"
            );
        }
        let root = task_root.display().to_string();
        // The executable is inside its installation when it was built there (pyenv, a
        // `/usr/local` build); a sandbox shows that at `/var/lang`.
        let lang_dir = executable.starts_with(&prefix).then_some(prefix);
        return Ok(Launch {
            program: executable,
            args: vec!["-m".into(), "awslambdaric".into(), handler.to_owned()],
            environment: vec![("PYTHONPATH".into(), root)],
            runtime_dir,
            lang_dir,
        });
    }
    Err(match unusable {
        Some(interpreter) => LaunchError::NoClient {
            runtime,
            interpreter,
            client: "awslambdaric",
            install: "python3 -m pip install awslambdaric",
        },
        None => LaunchError::NoInterpreter {
            runtime,
            tried: candidates.join(", "),
        },
    })
}

/// What a Python interpreter on this machine can do.
#[derive(Clone)]
enum Probe {
    /// Not on `PATH`.
    Missing,
    /// Runs, but cannot import `awslambdaric`.
    NoClient,
    /// Runs with `awslambdaric`: its real executable, the directory `awslambdaric` is
    /// in, and its installation (`sys.base_prefix`).
    Ready {
        executable: PathBuf,
        client_dir: PathBuf,
        prefix: PathBuf,
    },
}

/// Asks `interpreter` for its real executable and whether it has `awslambdaric`, once per
/// interpreter name: every Python function of a topology shares the answer.
fn probe_python(interpreter: &str) -> Probe {
    static PROBED: Mutex<BTreeMap<String, Probe>> = Mutex::new(BTreeMap::new());
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    probed
        .entry(interpreter.to_owned())
        .or_insert_with(|| {
            let script = "import os, sys, awslambdaric\n\
                print(os.path.realpath(sys.executable))\n\
                print(os.path.dirname(os.path.dirname(os.path.abspath(awslambdaric.__file__))))\n\
                print(os.path.realpath(sys.base_prefix))";
            match Command::new(interpreter).args(["-c", script]).output() {
                Err(_) => Probe::Missing,
                Ok(out) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                    match (
                        out.status.success(),
                        lines.next(),
                        lines.next(),
                        lines.next(),
                    ) {
                        (true, Some(executable), Some(client_dir), Some(prefix)) => Probe::Ready {
                            executable: PathBuf::from(executable),
                            client_dir: PathBuf::from(client_dir),
                            prefix: PathBuf::from(prefix),
                        },
                        _ => Probe::NoClient,
                    }
                }
            }
        })
        .clone()
}

/// The launch of a `nodejs{major}.x` function with `handler` in `task_root`.
pub fn nodejs(major: u8, handler: &str, task_root: &Path) -> Result<Launch, LaunchError> {
    let runtime = format!("nodejs{major}.x");
    if Command::new("node").arg("--version").output().is_err() {
        return Err(LaunchError::NoInterpreter {
            runtime,
            tried: "node".into(),
        });
    }
    let local = task_root.join("node_modules/.bin/aws-lambda-ric");
    let client = if local.exists() {
        Some(local)
    } else {
        find_on_path("aws-lambda-ric")
    };
    let Some(client) = client else {
        return Err(LaunchError::NoClient {
            runtime,
            interpreter: "node".into(),
            client: "aws-lambda-ric",
            install: "npm install aws-lambda-ric",
        });
    };
    // `node_modules/.bin/aws-lambda-ric` links to `aws-lambda-ric/bin/index.mjs`.
    let runtime_dir = client
        .canonicalize()
        .ok()
        .and_then(|real| real.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| client.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok(Launch {
        program: client,
        args: vec![handler.to_owned()],
        runtime_dir,
        lang_dir: None,
        environment: vec![(
            "NODE_PATH".into(),
            task_root.join("node_modules").display().to_string(),
        )],
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_resolves_the_real_interpreter() {
        // scripts/test installs awslambdaric.
        let launch = python(12, "app.handler", Path::new("/var/task")).unwrap();
        assert!(launch.program.is_absolute(), "{launch:?}");
        assert!(
            !launch.program.to_string_lossy().contains("shims"),
            "{launch:?}"
        );
        assert_eq!(launch.args, ["-m", "awslambdaric", "app.handler"]);
        assert_eq!(
            launch.environment,
            [("PYTHONPATH".to_owned(), "/var/task".to_owned())]
        );
        // The runtime's directory is the one awslambdaric is installed in.
        assert!(launch.runtime_dir.is_absolute(), "{launch:?}");
        assert!(
            launch.runtime_dir.join("awslambdaric").is_dir(),
            "{launch:?}"
        );
    }

    #[test]
    fn a_provided_function_s_runtime_directory_is_its_program_s() {
        let launch = Launch::provided(PathBuf::from("/srv/fn/bootstrap"), Vec::new());
        assert_eq!(launch.runtime_dir, Path::new("/srv/fn"));
    }

    #[test]
    fn a_missing_client_names_the_install_command() {
        let err = LaunchError::NoClient {
            runtime: "python3.12".into(),
            interpreter: "python3".into(),
            client: "awslambdaric",
            install: "python3 -m pip install awslambdaric",
        };
        assert_eq!(
            err.to_string(),
            "python3.12: python3 cannot load awslambdaric; install it with `python3 -m pip install awslambdaric`"
        );
    }
}
