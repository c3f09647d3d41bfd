//! The rules a decoded [`Config`] must follow: ranges, names, references, address clashes.
//!
//! Every rule runs, so one call reports every problem. Limits follow AWS where AWS has one
//! (function names, timeouts, memory, reserved environment variables, target group names).

use crate::error::ConfigError;
use crate::model::{
    Accelerator, ApiAccessKey, Config, EdgeProtocol, Function, FunctionRuntime, LbListener,
    LbProtocol, LoadBalancer, TargetGroup,
};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

mod gateway;
mod ha;
pub use ha::{ADVERT_INTERVAL_SECONDS, BFD_INTERVAL_MS, MAX_PREEMPT_DELAY_SECONDS};
mod routing;
pub use gateway::*;
pub use routing::*;

/// The most sockets the accelerator's listeners may bind: ports times static IPs.
pub const MAX_EDGE_SOCKETS: usize = 4096;

/// Lambda's timeout range, in seconds.
pub const TIMEOUT_SECONDS: (u32, u32) = (1, 900);
/// Lambda's memory range, in MB.
pub const MEMORY_MB: (u32, u32) = (128, 10_240);
/// Lambda's ephemeral storage (`/tmp`) range, in MB.
pub const EPHEMERAL_STORAGE_MB: (u32, u32) = (512, 10_240);
/// Lambda's most layers per function.
pub const MAX_LAYERS: usize = 5;

/// Environment variables Lambda reserves; a function may not set them.
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// Every problem in `config`; empty when it is valid.
pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut v = Validator::default();
    if let Some(acc) = &config.accelerator {
        v.accelerator(acc, config);
    }
    for (name, lb) in &config.load_balancers {
        v.load_balancer(name, lb, config);
    }
    for (name, tg) in &config.target_groups {
        v.target_group(name, tg, config);
    }
    for (name, f) in &config.functions {
        v.function(name, f);
    }
    if config.runtime.max_concurrency == 0 {
        v.err("runtime.max_concurrency", "must be at least 1");
    }
    let reserved: u32 = config
        .functions
        .values()
        .filter_map(|f| f.reserved_concurrency)
        .sum();
    if reserved > config.runtime.max_concurrency {
        v.err(
            "runtime.max_concurrency",
            format!(
                "{} is less than the functions' reserved concurrency, {reserved} in all",
                config.runtime.max_concurrency
            ),
        );
    }
    if let Some(budget) = config.runtime.memory_budget_mb {
        for (name, f) in &config.functions {
            if f.memory_size_mb > budget && budget >= 128 {
                v.err(
                    format!("functions.{name}.memory_size_mb"),
                    format!(
                        "{} MB does not fit in runtime.memory_budget_mb ({budget} MB)",
                        f.memory_size_mb
                    ),
                );
            }
        }
    }
    if config.runtime.memory_budget_mb.is_some_and(|mb| mb < 128) {
        v.err(
            "runtime.memory_budget_mb",
            "must hold one environment of the smallest size, 128 MB",
        );
    }
    if config.runtime.environment_idle_timeout_seconds == 0 {
        v.err(
            "runtime.environment_idle_timeout_seconds",
            "must be at least 1",
        );
    }
    v.gateway_resources(config);
    v.bind_clashes(config);
    let (invoke, admin) = (&config.invoke_api, &config.admin_api);
    v.api_access_keys(
        "invoke_api",
        invoke.enabled,
        invoke.address,
        &invoke.access_keys,
    );
    v.api_access_keys(
        "admin_api",
        admin.enabled,
        admin.address,
        &admin.access_keys,
    );
    v.errors
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(path, reason));
    }

    fn accelerator(&mut self, acc: &Accelerator, config: &Config) {
        if acc.static_ips.is_empty() {
            self.err(
                "accelerator.static_ips",
                "at least one static IP is required",
            );
        }
        let mut seen = HashSet::new();
        for (i, ip) in acc.static_ips.iter().enumerate() {
            if !seen.insert(ip) {
                self.err(
                    format!("accelerator.static_ips[{i}]"),
                    format!("{ip} is listed twice"),
                );
            }
        }
        if acc.listeners.is_empty() {
            self.err("accelerator.listeners", "at least one listener is required");
        }
        self.high_availability(acc);
        if let Some(url) = &acc.ip_ranges_webhook {
            let rest = url.strip_prefix("http://").unwrap_or_default();
            if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
                self.err(
                    "accelerator.ip_ranges_webhook",
                    format!("{url:?} is not an http:// URL with a host"),
                );
            }
        }
        // Two listeners on one port are reported by `bind_clashes`, with every address.
        let mut total_ports = 0usize;
        for (i, l) in acc.listeners.iter().enumerate() {
            let lp = format!("accelerator.listeners[{i}]");
            total_ports += self.edge_listener(&lp, l);
            if l.endpoint_groups.is_some() {
                self.endpoint_groups(&format!("{lp}.endpoint_groups"), acc, l, config);
            }
        }
        if total_ports * acc.static_ips.len() > MAX_EDGE_SOCKETS {
            self.err(
                "accelerator.listeners",
                format!(
                    "{total_ports} ports on {} static IPs is over {MAX_EDGE_SOCKETS} sockets",
                    acc.static_ips.len()
                ),
            );
        }
        let shared_users: Vec<&crate::model::EdgeListener> = acc
            .listeners
            .iter()
            .filter(|l| l.endpoint_groups.is_none())
            .collect();
        if !shared_users.is_empty() || !acc.endpoint_groups.is_empty() {
            if let Some(first) = shared_users.first() {
                self.endpoint_groups("accelerator.endpoint_groups", acc, first, config);
                if shared_users.iter().any(|l| l.protocol != first.protocol) {
                    self.err(
                        "accelerator.endpoint_groups",
                        "TCP and UDP listeners cannot share endpoint groups; give each listener its own",
                    );
                }
            } else {
                self.err(
                    "accelerator.endpoint_groups",
                    "every listener has its own endpoint groups; these are unused",
                );
            }
        }
    }

    /// Checks one accelerator listener; returns how many ports it takes.
    fn edge_listener(&mut self, lp: &str, l: &crate::model::EdgeListener) -> usize {
        /// Global Accelerator's limit of port ranges per listener.
        const MAX_PORT_RANGES: usize = 10;
        match (l.port, l.port_ranges.is_empty()) {
            (Some(_), true) | (None, false) => {}
            _ => self.err(lp, "set exactly one of `port` or `port_ranges`"),
        }
        if l.port_ranges.len() > MAX_PORT_RANGES {
            self.err(
                format!("{lp}.port_ranges"),
                format!("{} ranges is over {MAX_PORT_RANGES}", l.port_ranges.len()),
            );
        }
        for (r, range) in l.port_ranges.iter().enumerate() {
            if range.from_port.0 == 0 || range.from_port.0 > range.to_port.0 {
                self.err(
                    format!("{lp}.port_ranges[{r}]"),
                    format!(
                        "{}-{} is not a range of ports 1-65535 with from_port <= to_port",
                        range.from_port, range.to_port
                    ),
                );
            }
        }
        let ports = l.ports();
        let mut seen = HashSet::new();
        if let Some(dup) = ports.iter().find(|p| !seen.insert(**p)) {
            self.err(
                format!("{lp}.port_ranges"),
                format!("port {dup} is in two ranges"),
            );
        }
        if l.idle_timeout_seconds == Some(0) {
            self.err(format!("{lp}.idle_timeout_seconds"), "must be at least 1");
        }
        ports.len()
    }

    /// Checks the endpoint groups `listener` uses (its own, or the accelerator's).
    fn endpoint_groups(
        &mut self,
        path: &str,
        acc: &Accelerator,
        listener: &crate::model::EdgeListener,
        config: &Config,
    ) {
        let groups = acc.groups_of(listener);
        if groups.is_empty() {
            self.err(path, "at least one endpoint group is required");
        }
        let udp = listener.protocol == crate::model::EdgeProtocol::Udp;
        let listener_ports: HashSet<u16> = acc
            .listeners
            .iter()
            .filter(|l| std::ptr::eq(acc.groups_of(l), groups))
            .flat_map(|l| l.ports())
            .collect();
        let mut regions = HashSet::new();
        for (g, group) in groups.iter().enumerate() {
            let gp = format!("{path}[{g}]");
            if !regions.insert(&group.region) {
                self.err(
                    format!("{gp}.region"),
                    format!("region {:?} has two groups", group.region),
                );
            }
            if group.traffic_dial_percentage > 100 {
                self.err(
                    format!("{gp}.traffic_dial_percentage"),
                    format!("{} is over 100", group.traffic_dial_percentage),
                );
            }
            let interval = group.health_check_interval_seconds;
            if !(interval == 10.0 || interval == 30.0 || (0.05..10.0).contains(&interval)) {
                self.err(
                    format!("{gp}.health_check_interval_seconds"),
                    format!("{interval} s: Global Accelerator checks every 10 or 30 s (under 10 s, from 0.05 s, is allowed for tests)"),
                );
            }
            if !group.health_check_path.starts_with('/') || group.health_check_path.len() > 255 {
                self.err(
                    format!("{gp}.health_check_path"),
                    "a path starts with `/` and has at most 255 characters",
                );
            }
            if group.health_check_port == Some(crate::model::Port(0)) {
                self.err(format!("{gp}.health_check_port"), "0 is not a port");
            }
            if !(1..=10).contains(&group.threshold_count) {
                self.err(
                    format!("{gp}.threshold_count"),
                    format!("{} is outside 1-10", group.threshold_count),
                );
            }
            let mut overridden = HashSet::new();
            for (o, po) in group.port_overrides.iter().enumerate() {
                let op = format!("{gp}.port_overrides[{o}]");
                if !listener_ports.contains(&po.listener_port.0) {
                    self.err(
                        format!("{op}.listener_port"),
                        format!(
                            "{} is not a port of the listeners using this group",
                            po.listener_port
                        ),
                    );
                }
                if !overridden.insert(po.listener_port) {
                    self.err(
                        format!("{op}.listener_port"),
                        format!("{} is overridden twice", po.listener_port),
                    );
                }
                if po.endpoint_port.0 == 0 {
                    self.err(format!("{op}.endpoint_port"), "0 is not a port");
                }
            }
            if group.endpoints.is_empty() {
                self.err(
                    format!("{gp}.endpoints"),
                    "at least one endpoint is required",
                );
            }
            for (e, ep) in group.endpoints.iter().enumerate() {
                self.endpoint(&format!("{gp}.endpoints[{e}]"), ep, acc, udp, config);
            }
        }
    }

    fn endpoint(
        &mut self,
        ep_path: &str,
        ep: &crate::model::Endpoint,
        acc: &Accelerator,
        udp: bool,
        config: &Config,
    ) {
        if udp && ep.client_ip_preservation == Some(true) {
            self.err(
                format!("{ep_path}.client_ip_preservation"),
                "client IP preservation (PROXY v2) is for TCP listeners",
            );
        }
        match (&ep.load_balancer, &ep.address) {
            (Some(_), None) if udp => self.err(
                format!("{ep_path}.load_balancer"),
                "a load balancer takes TCP only; a UDP listener forwards to addresses",
            ),
            (Some(lb), None) => {
                self.reference(
                    format!("{ep_path}.load_balancer"),
                    "load balancer",
                    lb,
                    &config.load_balancers,
                );
                let Some(target) = config.load_balancers.get(lb) else {
                    return;
                };
                let first = target.listeners.first();
                if ep.client_ip_preservation == Some(true)
                    && first.is_some_and(|l| !l.proxy_protocol_v2)
                {
                    self.err(
                        format!("{ep_path}.client_ip_preservation"),
                        format!(
                            "load balancer {lb:?} does not expect a PROXY v2 header; set its listener's proxy_protocol_v2 = true"
                        ),
                    );
                }
                let elsewhere = target
                    .node
                    .as_deref()
                    .is_some_and(|n| !acc.runs_on(Some(n)));
                if elsewhere && first.is_some_and(|l| l.address.is_unspecified() || l.port.0 == 0) {
                    self.err(
                        format!("{ep_path}.load_balancer"),
                        format!(
                            "load balancer {lb:?} runs on another node, so its first listener needs a fixed address and port to be reached at"
                        ),
                    );
                }
            }
            (None, Some(address)) => {
                if address.port == Some(0) {
                    self.err(format!("{ep_path}.address"), "port 0 is not reachable");
                }
            }
            _ => self.err(ep_path, "set exactly one of `load_balancer` or `address`"),
        }
    }

    fn load_balancer(&mut self, name: &str, lb: &LoadBalancer, config: &Config) {
        let path = format!("load_balancers.{name}");
        self.resource_name(&path, name, 32);
        if lb.listeners.is_empty() {
            self.err(
                format!("{path}.listeners"),
                "at least one listener is required",
            );
        }
        if !(1..=4000).contains(&lb.idle_timeout_seconds) {
            self.err(
                format!("{path}.idle_timeout_seconds"),
                format!("{} s is outside 1-4000 s", lb.idle_timeout_seconds),
            );
        }
        for (i, l) in lb.listeners.iter().enumerate() {
            let lp = format!("{path}.listeners[{i}]");
            self.certificates(&lp, l);
            let https = l.protocol == crate::model::LbProtocol::Https;
            self.action(
                &format!("{lp}.default_action"),
                &l.default_action,
                config,
                https,
            );
            self.gateway(&lp, &l.gateway, None, config);
            self.rules(&lp, l, config);
            self.proxy_protocol_sources(&lp, l, lb, config);
        }
    }

    /// PROXY v2 sources only where headers are read; and where the edge connects from a
    /// node whose address the file does not give, they must be listed.
    fn proxy_protocol_sources(
        &mut self,
        path: &str,
        l: &LbListener,
        lb: &LoadBalancer,
        config: &Config,
    ) {
        let path = format!("{path}.proxy_protocol_sources");
        if !l.proxy_protocol_v2 {
            if l.proxy_protocol_sources.is_some() {
                self.err(&path, "is for listeners with proxy_protocol_v2 = true");
            }
            return;
        }
        let Some(acc) = &config.accelerator else {
            return;
        };
        let edge_elsewhere = acc.nodes.is_empty()
            && lb
                .node
                .as_deref()
                .is_some_and(|n| acc.node.as_deref().is_some_and(|edge| edge != n));
        if edge_elsewhere && l.proxy_protocol_sources.is_none() {
            self.err(
                &path,
                "the edge connects from another node whose address this file does not give: list the networks it connects from (only they may send PROXY headers)",
            );
        }
    }

    /// HTTPS needs a certificate and HTTP has none; ALB allows the default certificate and
    /// 25 more per listener.
    fn certificates(&mut self, path: &str, l: &LbListener) {
        const MAX_CERTIFICATES: usize = 26;
        let path = format!("{path}.certificates");
        match l.protocol {
            LbProtocol::Https if l.certificates.is_empty() => {
                self.err(&path, "an HTTPS listener needs at least one certificate")
            }
            LbProtocol::Https if l.certificates.len() > MAX_CERTIFICATES => self.err(
                &path,
                format!(
                    "{} certificates; a listener has at most {MAX_CERTIFICATES} (the default and 25 more)",
                    l.certificates.len()
                ),
            ),
            LbProtocol::Http if !l.certificates.is_empty() => {
                self.err(&path, "certificates are for HTTPS listeners; set protocol = \"HTTPS\"")
            }
            _ => {}
        }
        for (c, cert) in l.certificates.iter().enumerate() {
            if cert.certificate.is_empty() {
                self.err(format!("{path}[{c}].certificate"), "empty path");
            }
            if cert.private_key.is_empty() {
                self.err(format!("{path}[{c}].private_key"), "empty path");
            }
        }
    }

    fn target_group(&mut self, name: &str, tg: &TargetGroup, config: &Config) {
        let path = format!("target_groups.{name}");
        self.resource_name(&path, name, 32);
        self.target_group_settings(&path, tg, config);
    }

    fn function(&mut self, name: &str, f: &Function) {
        let path = format!("functions.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.err(&path, "a function name is 1-64 letters, digits, `-` or `_`");
        }
        self.function_settings(&path, f);
        for (version, snapshot) in &f.versions {
            let at = format!("{path}.versions.{version}");
            let numbered = !version.is_empty()
                && version.len() <= 10
                && version.bytes().all(|b| b.is_ascii_digit())
                && !version.starts_with('0');
            if !numbered {
                self.err(&at, "a version is a number from 1");
            }
            if !snapshot.versions.is_empty() || !snapshot.aliases.is_empty() {
                self.err(&at, "a version has no versions or aliases of its own");
            }
            if snapshot.reserved_concurrency.is_some() {
                self.err(
                    format!("{at}.reserved_concurrency"),
                    "is the function's, for all its versions",
                );
            }
            self.function_settings(&at, snapshot);
        }
        for (alias, a) in &f.aliases {
            let at = format!("functions.{name}.aliases.{alias}");
            let named = (1..=128).contains(&alias.len())
                && alias
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !alias.bytes().all(|b| b.is_ascii_digit());
            if !named {
                self.err(
                    &at,
                    "an alias name is 1-128 letters, digits, `-` or `_`, and not only digits",
                );
            }
            let exists = |v: &str| v == "$LATEST" || f.versions.contains_key(v);
            if !exists(&a.function_version) {
                self.err(
                    format!("{at}.function_version"),
                    format!("no version {:?} of function {name}", a.function_version),
                );
            }
            if a.routing_config.len() > 1 {
                self.err(
                    format!("{at}.routing_config"),
                    "routes to one additional version at most",
                );
            }
            for (version, weight) in &a.routing_config {
                let key = format!("{at}.routing_config.{version}");
                if !f.versions.contains_key(version) {
                    self.err(&key, "an additional version is a published one");
                } else if *version == a.function_version {
                    self.err(&key, "is the alias's own version");
                }
                if a.function_version == "$LATEST" {
                    self.err(
                        &key,
                        "a weighted alias names a published version, not $LATEST",
                    );
                }
                if !(0.0..=1.0).contains(weight) {
                    self.err(&key, "a weight is from 0 to 1");
                }
            }
        }
    }

    /// Checks the settings of function (or version) `path`.
    fn function_settings(&mut self, path: &str, f: &Function) {
        let path = path.to_owned();
        if f.image_config.is_some() && f.image.is_none() {
            self.err(
                format!("{path}.image_config"),
                "is for a function with an `image`",
            );
        }
        if let Some(image) = &f.image {
            if f.code.is_some() || f.command.is_some() {
                self.err(&path, "set only one of `code`, `command` or `image`");
            }
            if image.is_empty() {
                self.err(
                    format!("{path}.image"),
                    "must name an OCI image layout: a directory or a .tar of one",
                );
            }
            if !matches!(f.runtime, FunctionRuntime::Provided(_)) {
                self.err(
                    format!("{path}.runtime"),
                    "a container image brings its own runtime",
                );
            }
            if !f.layers.is_empty() {
                self.err(
                    format!("{path}.layers"),
                    "a container image function takes no layers (as in Lambda)",
                );
            }
        } else {
            self.code_or_command(&path, f);
        }
        match &f.profile {
            Some(_) if !f.aws_credentials => self.err(
                format!("{path}.profile"),
                "names the credentials of a function that takes none (aws_credentials = false)",
            ),
            Some(profile) if profile.is_empty() || profile.contains(['[', ']', '\n']) => {
                self.err(format!("{path}.profile"), "is not a profile name")
            }
            _ => {}
        }
        if !matches!(f.runtime, FunctionRuntime::Provided(_)) {
            let valid = f.handler.as_deref().is_some_and(|h| {
                h.rsplit_once('.')
                    .is_some_and(|(module, function)| !module.is_empty() && !function.is_empty())
            });
            if !valid {
                self.err(
                    format!("{path}.handler"),
                    format!("{} needs a handler `module.function`", f.runtime),
                );
            }
        }
        self.range(
            format!("{path}.timeout_seconds"),
            f.timeout_seconds,
            TIMEOUT_SECONDS,
            "s",
        );
        self.range(
            format!("{path}.memory_size_mb"),
            f.memory_size_mb,
            MEMORY_MB,
            "MB",
        );
        self.range(
            format!("{path}.ephemeral_storage_mb"),
            f.ephemeral_storage_mb,
            EPHEMERAL_STORAGE_MB,
            "MB",
        );
        if let Some(n) = f.max_concurrency_per_environment {
            self.range(
                format!("{path}.max_concurrency_per_environment"),
                n,
                (1, 1024),
                "",
            );
        }
        let logging = &f.logging_config;
        if logging.log_format != crate::LogFormat::Json
            && (logging.application_log_level.is_some() || logging.system_log_level.is_some())
        {
            self.err(
                format!("{path}.logging_config"),
                "log levels need log_format = \"JSON\" (as in Lambda)",
            );
        }
        if logging.system_log_level.is_some_and(|l| {
            !matches!(
                l,
                crate::LogLevel::Debug | crate::LogLevel::Info | crate::LogLevel::Warn
            )
        }) {
            self.err(
                format!("{path}.logging_config.system_log_level"),
                "is DEBUG, INFO or WARN",
            );
        }
        if f.layers.len() > MAX_LAYERS {
            self.err(
                format!("{path}.layers"),
                format!(
                    "{} layers is over Lambda's limit of {MAX_LAYERS}",
                    f.layers.len()
                ),
            );
        }
        for key in f.environment.keys() {
            let kp = format!("{path}.environment.{key}");
            let valid_name = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                self.err(
                    kp,
                    "a variable name starts with a letter and has only letters, digits and `_`",
                );
            } else if RESERVED_ENV.contains(&key.as_str()) {
                self.err(kp, "is reserved by Lambda and set by the runtime");
            }
        }
        let env_bytes: usize = f.environment.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > 4096 {
            self.err(
                format!("{path}.environment"),
                format!("{env_bytes} bytes is over Lambda's limit of 4 KB"),
            );
        }
    }

    /// A function of code: `code`, or for `provided` a `command`.
    fn code_or_command(&mut self, path: &str, f: &Function) {
        match (f.runtime, &f.code, &f.command) {
            (_, Some(code), None) if code.is_empty() => self.err(
                format!("{path}.code"),
                "must name a directory or a .zip file",
            ),
            (_, Some(_), None) => {}
            (FunctionRuntime::Provided(_), None, Some(cmd)) if cmd.is_empty() => {
                self.err(format!("{path}.command"), "must name a program")
            }
            (FunctionRuntime::Provided(_), None, Some(_)) => {}
            (FunctionRuntime::Provided(_), _, _) => self.err(
                path,
                "set exactly one of `code` (a directory or .zip with `bootstrap`) or `command`",
            ),
            (runtime, _, Some(_)) => self.err(
                format!("{path}.command"),
                format!("is for the provided runtime; {runtime} runs `code` with its handler"),
            ),
            (runtime, None, None) => self.err(
                format!("{path}.code"),
                format!("{runtime} needs `code`: a directory or a .zip file"),
            ),
        }
    }

    /// Names of load balancers and target groups: ALB's rule, 1-`max` of letters, digits and
    /// hyphens, not starting or ending with a hyphen.
    fn resource_name(&mut self, path: &str, name: &str, max: usize) {
        let ok = !name.is_empty()
            && name.len() <= max
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !ok {
            self.err(
                path,
                format!("a name is 1-{max} letters, digits or hyphens, not starting or ending with a hyphen"),
            );
        }
    }

    fn range(&mut self, path: String, value: u32, (min, max): (u32, u32), unit: &str) {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if value < min {
            self.err(
                path,
                format!("{value}{unit} is below the minimum of {min}{unit}"),
            );
        } else if value > max {
            self.err(
                path,
                format!("{value}{unit} is above the maximum of {max}{unit}"),
            );
        }
    }

    fn reference<T>(&mut self, path: String, kind: &str, name: &str, map: &BTreeMap<String, T>) {
        if !map.contains_key(name) {
            self.err(path, format!("no {kind} named {name:?}"));
        }
    }

    /// Two listeners on the same fixed address and port can never both start.
    fn bind_clashes(&mut self, config: &Config) {
        let mut seen: BTreeMap<(SocketAddr, EdgeProtocol), String> = BTreeMap::new();
        let mut claim = |v: &mut Self, addr: SocketAddr, protocol: EdgeProtocol, path: String| {
            if addr.port() == 0 {
                return;
            }
            if let Some(first) = seen.get(&(addr, protocol)) {
                let what = match protocol {
                    EdgeProtocol::Tcp => String::new(),
                    EdgeProtocol::Udp => " (udp)".to_owned(),
                };
                v.err(path, format!("{addr}{what} is already used by {first}"));
            } else {
                seen.insert((addr, protocol), path);
            }
        };
        if let Some(acc) = &config.accelerator {
            // A repeated static IP is its own error; count each address once here.
            let ips: std::collections::BTreeSet<_> = acc.static_ips.iter().collect();
            for (i, l) in acc.listeners.iter().enumerate() {
                for ip in &ips {
                    let ports: std::collections::BTreeSet<u16> = l.ports().into_iter().collect();
                    for port in ports {
                        claim(
                            self,
                            SocketAddr::new(**ip, port),
                            l.protocol,
                            format!("accelerator.listeners[{i}]"),
                        );
                    }
                }
            }
        }
        for (name, lb) in &config.load_balancers {
            for (i, l) in lb.listeners.iter().enumerate() {
                let addr = SocketAddr::new(l.address, l.port.0);
                claim(
                    self,
                    addr,
                    EdgeProtocol::Tcp,
                    format!("load_balancers.{name}.listeners[{i}]"),
                );
            }
        }
        for (name, enabled, address, port) in [
            (
                "invoke_api",
                config.invoke_api.enabled,
                config.invoke_api.address,
                config.invoke_api.port,
            ),
            (
                "admin_api",
                config.admin_api.enabled,
                config.admin_api.address,
                config.admin_api.port,
            ),
        ] {
            if enabled {
                claim(
                    self,
                    SocketAddr::new(address, port.0),
                    EdgeProtocol::Tcp,
                    name.to_owned(),
                );
            }
        }
    }

    /// An API beyond loopback checks signatures; its keys are well formed and distinct.
    fn api_access_keys(
        &mut self,
        name: &str,
        enabled: bool,
        address: IpAddr,
        keys: &[ApiAccessKey],
    ) {
        let path = format!("{name}.access_keys");
        if enabled && keys.is_empty() && !address.to_canonical().is_loopback() {
            self.err(
                &path,
                format!(
                    "{address} is reachable beyond this machine: give the API access keys (its callers then sign every request, as the AWS CLI and SDKs do)"
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let id = &key.access_key_id;
            if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                self.err(
                    format!("{path}[{i}].access_key_id"),
                    "16 to 128 letters and digits",
                );
            }
            if key.secret_access_key.len() < 16 {
                self.err(
                    format!("{path}[{i}].secret_access_key"),
                    "at least 16 characters",
                );
            }
            if !seen.insert(id) {
                self.err(
                    format!("{path}[{i}].access_key_id"),
                    format!("{id} is given twice"),
                );
            }
        }
    }
}
