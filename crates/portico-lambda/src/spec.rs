//! What the runtime needs to know about one function, resolved from the configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Account id used in ARNs: functions run here, not in an AWS account.
pub const ACCOUNT_ID: &str = "000000000000";

/// Lambda's default ephemeral storage (`/tmp`), in MB.
pub const DEFAULT_EPHEMERAL_STORAGE_MB: u32 = 512;

/// Lambda's init phase limit.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A function, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// The function's name.
    pub name: String,
    /// Which version of it: `$LATEST`, or a published version's number (an immutable
    /// snapshot of its code and configuration).
    pub version: String,
    /// The program started for each execution environment (`bootstrap`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Working directory and `LAMBDA_TASK_ROOT`.
    pub task_root: PathBuf,
    /// `_HANDLER`.
    pub handler: String,
    /// Lambda's runtime identifier, e.g. `provided.al2023` or `python3.12`.
    pub runtime: String,
    /// Variables the runtime needs (e.g. `PYTHONPATH`), set before the user's own.
    pub runtime_environment: Vec<(String, String)>,
    /// `LAMBDA_RUNTIME_DIR`: where the runtime's own libraries are.
    pub runtime_dir: PathBuf,
    /// The language's installation (Lambda's `/var/lang`), for a runtime whose interpreter
    /// is not the host's own (a Python built under `/root`, say).
    pub lang_dir: Option<PathBuf>,
    /// The function's layers, merged in order (Lambda's `/opt`).
    pub opt_dir: Option<PathBuf>,
    /// The size of `/tmp`, in MB (Lambda's ephemeral storage, 512–10240).
    pub ephemeral_storage_mb: u32,
    /// The AWS credentials the function gets, if any.
    pub credentials: Option<crate::credentials::Credentials>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB.
    pub memory_size_mb: u32,
    /// How long one invocation may run.
    pub timeout: Duration,
    /// How long the init phase may take (until the first `/next`).
    pub init_timeout: Duration,
    /// Most environments at once; `None` leaves only the runtime's global limit.
    pub reserved_concurrency: Option<usize>,
    /// Invocations one environment takes at once (Lambda Managed Instances'
    /// `PerExecutionEnvironmentMaxConcurrency`; the runtime reads it in
    /// `AWS_LAMBDA_MAX_CONCURRENCY`). 1, Lambda's classic model, by default.
    pub max_concurrency: usize,
    /// The user's environment variables.
    pub environment: BTreeMap<String, String>,
    /// The code's SHA-256 and size, as Lambda reports them (`CodeSha256`, `CodeSize`).
    pub code: crate::package::Fingerprint,
    /// When the function was last set up: portico's start or the reload that changed it
    /// (`LastModified`).
    pub last_modified: std::time::SystemTime,
    /// `AWS_REGION`.
    pub region: String,
    /// How its log is written (Lambda's `LoggingConfig`).
    pub logging: Logging,
    /// For a container image function, its root filesystem and the variables its image
    /// sets; `program`, `args` and `task_root` are then paths inside it.
    pub image: Option<ImageRoot>,
}

/// A container image function's root filesystem, and the variables its image sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The image's `Env`.
    pub env: Vec<(String, String)>,
}

/// How a function's log is written: Lambda's `LoggingConfig`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Logging {
    /// JSON records (`AWS_LAMBDA_LOG_FORMAT=JSON`) rather than plain lines.
    pub json: bool,
    /// With JSON, the least level of the function's own records kept.
    pub application_level: Option<Level>,
    /// With JSON, the least level of the platform's records kept (default `INFO`).
    pub system_level: Option<Level>,
}

/// A log level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `TRACE`.
    Trace,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `WARN`.
    Warn,
    /// `ERROR`.
    Error,
    /// `FATAL`.
    Fatal,
}

impl Level {
    /// Its name, as Lambda writes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }

    /// The level named `name` (any case; `WARNING` is `WARN`, `CRITICAL` is `FATAL`, as
    /// the runtimes' loggers name them).
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name.to_ascii_uppercase().as_str() {
            "TRACE" => Level::Trace,
            "DEBUG" => Level::Debug,
            "INFO" => Level::Info,
            "WARN" | "WARNING" => Level::Warn,
            "ERROR" => Level::Error,
            "FATAL" | "CRITICAL" => Level::Fatal,
            _ => return None,
        })
    }
}

/// An alias of a function: a name for one of its versions, and optionally a share of its
/// invocations for a second version (a weighted alias, as canaries use).
#[derive(Debug, Clone, PartialEq)]
pub struct AliasSpec {
    /// The function.
    pub function: String,
    /// The alias's name.
    pub name: String,
    /// The version it names (`$LATEST` or a number).
    pub version: String,
    /// A second version and the share of invocations it gets (0 to 1).
    pub additional: Option<(String, f64)>,
    /// Its description.
    pub description: String,
    /// `AWS_REGION`, for its ARN.
    pub region: String,
}

impl AliasSpec {
    /// The version one invocation runs: the additional one for its share of them.
    pub fn pick(&self) -> &str {
        match &self.additional {
            Some((version, weight)) if fastrand::f64() < *weight => version,
            _ => &self.version,
        }
    }

    /// Its ARN: the function's, qualified with the alias's name.
    pub fn arn(&self) -> String {
        function_arn(&self.region, &format!("{}:{}", self.function, self.name))
    }
}

/// The name and qualifier in `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:QUALIFIER]`
/// or an ARN `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`, as Lambda's APIs take
/// a function's name.
pub fn split_function_name(given: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = given.split(':').collect();
    let (name, qualifier) = match parts.iter().position(|p| *p == "function") {
        Some(i) => (parts.get(i + 1), parts.get(i + 2)),
        None => (parts.first(), parts.get(1)),
    };
    (
        name.copied().unwrap_or_default().to_owned(),
        qualifier.map(|q| (*q).to_owned()),
    )
}

/// The version every function has: its code and configuration as they are now.
pub const LATEST: &str = "$LATEST";

/// How the runtime knows version `version` of function `name`.
pub fn version_key(name: &str, version: &str) -> String {
    if version == LATEST {
        name.to_owned()
    } else {
        format!("{name}:{version}")
    }
}

/// The ARN of function `name` (with a `:QUALIFIER` when it has one) in `region`, as
/// Lambda forms it.
pub fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}")
}

impl FunctionSpec {
    /// The function's ARN (unqualified for `$LATEST`, with the version's number else).
    pub fn arn(&self) -> String {
        if self.version == LATEST {
            function_arn(&self.region, &self.name)
        } else {
            function_arn(&self.region, &format!("{}:{}", self.name, self.version))
        }
    }

    /// How the runtime knows this version: the name for `$LATEST`, `NAME:N` for a
    /// published version.
    pub fn key(&self) -> String {
        version_key(&self.name, &self.version)
    }

    /// Whether `other` is the same code and configuration (when each was set up and its
    /// reserved concurrency aside, which is the function's and not its environments'): an
    /// environment of one would be one of the other.
    pub fn same_as(&self, other: &FunctionSpec) -> bool {
        let mut aligned = other.clone();
        aligned.last_modified = self.last_modified;
        aligned.reserved_concurrency = self.reserved_concurrency;
        *self == aligned
    }
}
