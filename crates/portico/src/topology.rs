//! The validated configuration turned into what each tier runs.
//!
//! No sockets: paths are resolved against the config file's directory, `{portico_bin_dir}`
//! against the running binary's, target groups get their ARNs, `.zip` packages are unpacked
//! into the code cache and each runtime's interpreter is found.

use anyhow::Context;
use portico_alb::http_target::{HttpGroupSpec, HttpTargetGroup};
use portico_alb::lambda_target::LambdaProbe;
use portico_alb::tls::{CertificateSource, Certificates};
use portico_alb::{LambdaTargetGroup, TargetGroup};
use portico_config::{Config, Function, FunctionRuntime, TargetType};
use portico_invoke::Invoker;
use portico_lambda::Isolation;
use portico_lambda::{FunctionSpec, launch};
use portico_sandbox::{Sandboxes, Scratch};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The embedded default topology (`portico up` without a file).
pub(crate) const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The region functions and target groups report.
pub(crate) const REGION: &str = "us-east-1";

/// The directory relative paths in `config_file` are resolved against.
pub(crate) fn base_dir(config_file: &Path) -> PathBuf {
    let dir = match config_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    // Absolute: every path portico hands a function must be, since the function's working
    // directory is its code directory, not portico's.
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The part of `config` that `node` runs (all of it without a node): the accelerator if it
/// is placed there, its load balancers, and the target groups they use. Functions stay:
/// they start only when invoked.
pub(crate) fn for_node(mut config: Config, node: Option<&str>) -> Config {
    use portico_config::runs_on;
    if node.is_none() {
        return config;
    }
    config.accelerator.take_if(|a| !a.runs_on(node));
    config
        .load_balancers
        .retain(|_, lb| runs_on(lb.node.as_deref(), node));
    let used: std::collections::BTreeSet<String> = config
        .load_balancers
        .values()
        .flat_map(|lb| &lb.listeners)
        .flat_map(|l| {
            l.rules
                .iter()
                .map(|r| &r.action)
                .chain(std::iter::once(&l.default_action))
        })
        .flat_map(|a| a.forward_targets().into_iter().map(|(tg, _)| tg.to_owned()))
        .collect();
    config.target_groups.retain(|name, _| used.contains(name));
    config
}

/// How functions are isolated: a sandbox each, made once here to be sure the machine can
/// (portico does not start otherwise), or, when `[runtime] sandbox = false`, none, which is
/// said. `file` is the configuration's own file, hidden from functions with the others.
pub(crate) async fn isolation(
    config: &Config,
    base: &Path,
    file: Option<&Path>,
) -> anyhow::Result<Isolation> {
    if !config.runtime.sandbox {
        if let Some(name) = config
            .functions
            .iter()
            .find_map(|(name, f)| f.image.as_ref().map(|_| name))
        {
            anyhow::bail!(
                "functions.{name}: a container image runs only in a sandbox, and [runtime] sandbox = false"
            );
        }
        tracing::warn!(
            "functions run without a sandbox ([runtime] sandbox = false): as plain processes of portico's user, seeing the host's files"
        );
        return Ok(Isolation::None);
    }
    let cache = portico_lambda::package::default_cache_dir();
    let mut hidden: Vec<PathBuf> = config.own_files().iter().map(|f| base.join(f)).collect();
    hidden.extend(file.map(Path::to_path_buf));
    // Other functions' unpacked code.
    hidden.push(cache.clone());
    let refuse = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "cannot run functions in sandboxes on this machine ({e}); set `sandbox = false` under [runtime] to run them as plain processes"
        )
    };
    // `/tmp` on disk, as Lambda's ephemeral storage: in memory it would count toward the
    // function's memory.
    let scratch = match Scratch::new(&cache.with_file_name("sandbox-tmp")).await {
        Ok(scratch) => Some(scratch),
        Err(error) => {
            tracing::warn!(
                %error,
                "functions' /tmp is kept in memory (a tmpfs, counted toward their memory): this machine cannot make it on disk"
            );
            None
        }
    };
    let sandboxes =
        Sandboxes::new(&cache.with_file_name("sandbox-root"), scratch).map_err(|e| refuse(&e))?;
    let probe = portico_lambda::isolation::probe(&sandboxes, &hidden).await;
    probe.map_err(|e| refuse(&e))?;
    Ok(Isolation::Sandbox { sandboxes, hidden })
}

/// Every function of `config` and each of its published versions, ready for the
/// runtime. A version shares its function's reserved concurrency.
pub(crate) fn function_specs(config: &Config, base: &Path) -> anyhow::Result<Vec<FunctionSpec>> {
    let cache = portico_lambda::package::default_cache_dir();
    let mut specs = Vec::new();
    for (name, f) in &config.functions {
        specs.push(
            function_spec(name, f, base, &cache).with_context(|| format!("function {name}"))?,
        );
        for (version, snapshot) in &f.versions {
            let mut spec = function_spec(name, snapshot, base, &cache)
                .with_context(|| format!("function {name} version {version}"))?;
            spec.version = version.clone();
            spec.reserved_concurrency = f.reserved_concurrency.map(|n| n as usize);
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// Every alias of `config`'s functions, as the runtime resolves them.
pub(crate) fn aliases(config: &Config) -> Vec<portico_lambda::spec::AliasSpec> {
    config
        .functions
        .iter()
        .flat_map(|(name, f)| {
            f.aliases
                .iter()
                .map(|(alias, a)| portico_lambda::spec::AliasSpec {
                    function: name.clone(),
                    name: alias.clone(),
                    version: a.function_version.clone(),
                    additional: a.routing_config.iter().next().map(|(v, w)| (v.clone(), *w)),
                    description: a.description.clone(),
                    region: REGION.to_owned(),
                })
        })
        .collect()
}

fn function_spec(
    name: &str,
    f: &Function,
    base: &Path,
    cache: &Path,
) -> anyhow::Result<FunctionSpec> {
    if let Some(image) = &f.image {
        return image_spec(name, f, &resolve(image, base), cache);
    }
    let task_root = match (&f.code, &f.command) {
        (Some(code), _) => code_dir(&resolve(code, base), cache)?,
        (None, Some(cmd)) => cmd
            .first()
            .and_then(|p| resolve(p, base).parent().map(Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| base.to_owned()),
        // Validation guarantees one of the two.
        (None, None) => base.to_owned(),
    };
    let task_root = std::path::absolute(&task_root).unwrap_or(task_root);
    // What Lambda would have been sent: the package or the code directory; for a
    // `command`, its program when that is a file (not a name looked up on PATH).
    let shipped = match (&f.code, &f.command) {
        (Some(code), _) => Some(resolve(code, base)),
        (None, Some(cmd)) => cmd
            .first()
            .map(|p| resolve(p, base))
            .filter(|p| p.is_file()),
        (None, None) => None,
    };
    let code = match shipped {
        Some(path) => portico_lambda::package::fingerprint(&path)?,
        None => portico_lambda::package::Fingerprint::default(),
    };
    let launch = match (f.runtime, &f.command) {
        (FunctionRuntime::Provided(_), Some(cmd)) => launch::Launch::provided(
            cmd.first().map(|p| resolve(p, base)).unwrap_or_default(),
            cmd.iter().skip(1).cloned().collect(),
        ),
        (FunctionRuntime::Provided(_), None) => {
            launch::Launch::provided(task_root.join("bootstrap"), Vec::new())
        }
        (FunctionRuntime::Python { minor }, _) => launch::python(minor, f.handler(), &task_root)?,
        (FunctionRuntime::Nodejs { major }, _) => launch::nodejs(major, f.handler(), &task_root)?,
    };
    let opt_dir = if f.layers.is_empty() {
        None
    } else {
        let layers: Vec<PathBuf> = f.layers.iter().map(|l| resolve(l, base)).collect();
        let code = f.code.as_ref().map(|_| task_root.as_path());
        Some(portico_lambda::layers::merge(&layers, code, cache).context("layers")?)
    };
    Ok(FunctionSpec {
        name: name.to_owned(),
        version: portico_lambda::spec::LATEST.to_owned(),
        program: launch.program,
        args: launch.args,
        task_root,
        handler: f.handler().to_owned(),
        runtime: f.runtime.to_string(),
        runtime_environment: launch.environment,
        runtime_dir: launch.runtime_dir,
        lang_dir: launch.lang_dir,
        opt_dir,
        ephemeral_storage_mb: f.ephemeral_storage_mb,
        credentials: credentials(f)?,
        memory_size_mb: f.memory_size_mb,
        timeout: Duration::from_secs(u64::from(f.timeout_seconds)),
        init_timeout: portico_lambda::spec::DEFAULT_INIT_TIMEOUT,
        reserved_concurrency: f.reserved_concurrency.map(|n| n as usize),
        max_concurrency: f.max_concurrency_per_environment.unwrap_or(1) as usize,
        environment: f.environment.clone(),
        code,
        last_modified: std::time::SystemTime::now(),
        region: REGION.to_owned(),
        logging: logging(&f.logging_config),
        image: None,
    })
}

/// A container image function: its image unpacked, run as its configuration (and
/// `image_config`) says.
fn image_spec(
    name: &str,
    f: &Function,
    image: &Path,
    cache: &Path,
) -> anyhow::Result<FunctionSpec> {
    let unpacked = portico_lambda::image::unpack(image, cache)?;
    let overrides = f.image_config.clone().unwrap_or_default();
    let entrypoint = overrides.entry_point.unwrap_or(unpacked.entrypoint);
    let cmd = overrides.command.unwrap_or(unpacked.cmd);
    let mut argv = entrypoint.into_iter().chain(cmd.iter().cloned());
    let program = argv.next().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the image has neither Entrypoint nor Cmd",
            image.display()
        )
    })?;
    let working_dir = overrides.working_directory.unwrap_or(unpacked.working_dir);
    let task_root = if working_dir.is_empty() {
        PathBuf::from("/var/task")
    } else {
        PathBuf::from(working_dir)
    };
    Ok(FunctionSpec {
        name: name.to_owned(),
        version: portico_lambda::spec::LATEST.to_owned(),
        program: PathBuf::from(program),
        args: argv.collect(),
        task_root,
        // The image's command is its handler, as Lambda hands it to the base images' client.
        handler: cmd.first().cloned().unwrap_or_default(),
        runtime: "provided.al2023".to_owned(),
        runtime_environment: Vec::new(),
        runtime_dir: PathBuf::from("/var/runtime"),
        lang_dir: None,
        opt_dir: None,
        ephemeral_storage_mb: f.ephemeral_storage_mb,
        credentials: credentials(f)?,
        memory_size_mb: f.memory_size_mb,
        timeout: Duration::from_secs(u64::from(f.timeout_seconds)),
        init_timeout: portico_lambda::spec::DEFAULT_INIT_TIMEOUT,
        reserved_concurrency: f.reserved_concurrency.map(|n| n as usize),
        max_concurrency: f.max_concurrency_per_environment.unwrap_or(1) as usize,
        environment: f.environment.clone(),
        // Lambda reports an image function's code as its image's digest, with no size.
        code: portico_lambda::package::Fingerprint {
            sha256: image_sha256(&unpacked.digest),
            size: 0,
        },
        last_modified: std::time::SystemTime::now(),
        region: REGION.to_owned(),
        logging: logging(&f.logging_config),
        image: Some(portico_lambda::spec::ImageRoot {
            rootfs: unpacked.rootfs,
            env: unpacked.env,
        }),
    })
}

/// The base64 SHA-256 of a hex digest, as `CodeSha256` gives it.
fn image_sha256(hex: &str) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The credentials a function gets: its profile's or portico's own, unless it takes none.
fn credentials(f: &Function) -> anyhow::Result<Option<portico_lambda::credentials::Credentials>> {
    if !f.aws_credentials {
        return Ok(None);
    }
    Ok(portico_lambda::credentials::resolve(
        f.profile.as_deref(),
        &|name| std::env::var(name).ok(),
    )?)
}

/// A function's `logging_config`, as the runtime takes it.
fn logging(config: &portico_config::LoggingConfig) -> portico_lambda::spec::Logging {
    use portico_config::LogLevel;
    use portico_lambda::spec::Level;
    let level = |l: LogLevel| match l {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error => Level::Error,
        LogLevel::Fatal => Level::Fatal,
    };
    portico_lambda::spec::Logging {
        json: config.log_format == portico_config::LogFormat::Json,
        application_level: config.application_log_level.map(level),
        system_level: config.system_log_level.map(level),
    }
}

/// The directory a function's code is in: `code` itself, or the unpacked `.zip` it names.
fn code_dir(code: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    if code.is_file()
        && code
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
    {
        return Ok(portico_lambda::package::unpack(code, cache)?);
    }
    Ok(code.to_owned())
}

/// Expands `{portico_bin_dir}` and makes relative paths relative to `base`. A bare name
/// (`python3`) is left for the `PATH` lookup, as a shell would.
fn resolve(path: &str, base: &Path) -> PathBuf {
    const BIN_DIR: &str = "{portico_bin_dir}";
    if let Some(rest) = path.strip_prefix(BIN_DIR) {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        return bin_dir.join(rest.trim_start_matches('/'));
    }
    let p = PathBuf::from(path);
    if p.is_absolute() || !path.contains('/') {
        p
    } else {
        base.join(p)
    }
}

/// The certificates of an HTTPS listener, loaded and checked; `None` for HTTP. Each is
/// named in access logs as an IAM server certificate called after its file.
pub(crate) fn certificates(
    listener: &portico_config::LbListener,
    http2: bool,
    base: &Path,
) -> anyhow::Result<Option<Arc<Certificates>>> {
    if listener.protocol != portico_config::LbProtocol::Https {
        return Ok(None);
    }
    let sources: Vec<CertificateSource> = listener
        .certificates
        .iter()
        .map(|c| {
            let certificate = base.join(&c.certificate);
            let stem = certificate
                .file_stem()
                .map_or_else(|| "certificate".into(), |s| s.to_string_lossy());
            CertificateSource {
                arn: format!(
                    "arn:aws:iam::{}:server-certificate/{stem}",
                    portico_lambda::spec::ACCOUNT_ID
                ),
                private_key: base.join(&c.private_key),
                certificate,
            }
        })
        .collect();
    Ok(Some(Arc::new(Certificates::load(&sources, http2)?)))
}

/// Target group `name` as the load balancers run it. An HTTP group starts checking its
/// targets, and a Lambda group with health checks on starts invoking its function for
/// them; `stop` stops both.
pub(crate) fn target_group(
    name: &str,
    tg: &portico_config::TargetGroup,
    invoker: &Arc<dyn Invoker>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> TargetGroup {
    let arn = portico_alb::target_group::arn_for(REGION, portico_lambda::spec::ACCOUNT_ID, name);
    let health = tg.health_check.resolve(tg.target_type);
    match tg.target_type {
        TargetType::Lambda => {
            let function = tg.function.clone().unwrap_or_default();
            let mut group = LambdaTargetGroup {
                name: name.to_owned(),
                arn,
                function_arn: portico_lambda::spec::function_arn(REGION, &function),
                function,
                multi_value_headers: tg.multi_value_headers_enabled,
                health_check: health.clone(),
                health: None,
            };
            if health.enabled && !group.function.is_empty() {
                group.health = Some(LambdaProbe::start(&group, invoker, &health, tasks, stop));
            }
            TargetGroup::Lambda(group)
        }
        TargetType::Instance | TargetType::Ip => {
            let spec = HttpGroupSpec {
                name: name.to_owned(),
                arn,
                target_type: tg.target_type,
                targets: tg.targets.clone(),
                algorithm: tg.load_balancing_algorithm,
                slow_start: Duration::from_secs(u64::from(tg.slow_start_seconds)),
                deregistration_delay: Duration::from_secs(u64::from(
                    tg.deregistration_delay_seconds,
                )),
                stickiness: tg
                    .stickiness_duration_seconds
                    .map(|s| Duration::from_secs(u64::from(s))),
                health,
            };
            TargetGroup::Http(HttpTargetGroup::start(spec, tasks, stop))
        }
    }
}

/// An API's access key as the signature code takes it.
pub(crate) fn access_key(key: &portico_config::model::ApiAccessKey) -> portico_sigv4::AccessKey {
    portico_sigv4::AccessKey {
        id: key.access_key_id.clone(),
        secret: key.secret_access_key.clone(),
    }
}

/// The keys an API accepts signatures of.
pub(crate) fn access_keys(
    keys: &[portico_config::model::ApiAccessKey],
) -> portico_sigv4::AccessKeys {
    portico_sigv4::AccessKeys::new(keys.iter().map(access_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        portico_config::parse(DEFAULT_CONFIG, "embedded default").unwrap();
    }

    #[test]
    fn paths_resolve() {
        let base = Path::new("/etc/portico");
        assert_eq!(
            resolve("fn/bootstrap", base),
            PathBuf::from("/etc/portico/fn/bootstrap")
        );
        assert_eq!(resolve("./fn", base), PathBuf::from("/etc/portico/./fn"));
        assert_eq!(resolve("python3", base), PathBuf::from("python3"));
        assert_eq!(resolve("/opt/fn", base), PathBuf::from("/opt/fn"));
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        assert_eq!(
            resolve("{portico_bin_dir}/hello", base),
            exe_dir.join("hello")
        );
    }
}
