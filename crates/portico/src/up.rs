//! `portico up`: bind every listener, wire edge → load balancer → runtime, run until a
//! signal, then shut down in order.
//!
//! Load balancers are bound first: the edge's endpoints that name a load balancer need its
//! bound address (a port of 0 in the file means "any free port", which tests rely on).
//!
//! Shutdown sequence: stop accepting on every listener → load balancer connections finish
//! their current request (bounded by the drain time) and the edge's copies end with them →
//! every function process is stopped and reaped.

use crate::banner::Banner;
use crate::{signals, topology};
use anyhow::{Context, bail};
use portico_config::{Action, ClientAffinity, Config, LbListener, TargetType};
use portico_edge::health::{self, HealthCheck};
use portico_edge::{Affinity, Edge, Endpoint, EndpointGroup};
use portico_invoke::Invoker;
use portico_lambda::{Runtime, RuntimeOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every listener (edge address, load balancer, Invoke API): at most 10 000 connections at
/// once, and 10 s for open connections to finish after a shutdown signal.
const LISTENER_LIMITS: portico_accept::Limits = portico_accept::Limits {
    max_connections: 10_000,
    drain: Duration::from_secs(10),
};

/// A bound load balancer listener, as the edge needs to know it.
struct BoundListener {
    address: SocketAddr,
    proxy_protocol: bool,
}

/// Runs `config` until SIGINT or SIGTERM.
pub(crate) async fn run(config: Config, base: PathBuf) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new(
        topology::function_specs(&config, &base)?,
        RuntimeOptions {
            max_concurrency: config.runtime.max_concurrency as usize,
            idle_timeout: Duration::from_secs(u64::from(
                config.runtime.environment_idle_timeout_seconds,
            )),
            ..RuntimeOptions::default()
        },
    ));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut banner = Banner {
        // The demo's echo function is made for direct invocations; else any will do.
        example_function: config
            .functions
            .keys()
            .find(|name| *name == "echo")
            .or_else(|| config.functions.keys().next())
            .cloned(),
        ..Banner::default()
    };

    let mut log_writers = Vec::new();
    let started = start(
        &config,
        &base,
        runtime.clone(),
        (&shutdown, &tasks),
        &mut banner,
        &mut log_writers,
    )
    .await;
    if let Err(error) = started {
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        runtime.shutdown().await;
        return Err(error);
    }
    print!("{}", banner.render());

    let signal = signals::shutdown_requested()
        .await
        .context("installing signal handlers")?;
    tracing::info!(
        signal,
        "shutting down: closing listeners, draining connections"
    );
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopping function processes");
    runtime.shutdown().await;
    // Every listener is gone, so every access log's writer has its last line and ends.
    let _ = tokio::task::spawn_blocking(move || {
        for writer in log_writers {
            let _ = writer.join();
        }
    })
    .await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn start(
    config: &Config,
    base: &Path,
    runtime: Arc<Runtime>,
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
    banner: &mut Banner,
    writers: &mut Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let invoker: Arc<dyn Invoker> = runtime.clone();
    if config.invoke_api.enabled {
        let api = &config.invoke_api;
        let listener = TcpListener::bind((api.address, api.port.0))
            .await
            .with_context(|| format!("invoke_api: cannot bind {}:{}", api.address, api.port))?;
        banner.invoke_api = Some(listener.local_addr()?);
        tasks.spawn(portico_lambda::invoke_api::serve(
            listener,
            runtime,
            LISTENER_LIMITS,
            shutdown.clone(),
        ));
    }
    let groups = topology::target_groups(config, &invoker, tasks, shutdown);
    let mut bound: BTreeMap<String, Vec<BoundListener>> = BTreeMap::new();
    for (name, lb) in &config.load_balancers {
        let access_log = match &lb.access_logs {
            logs if logs.enabled => {
                let destination = match logs.destination.as_deref() {
                    None | Some("stdout") => "stdout".to_owned(),
                    Some(path) => base.join(path).display().to_string(),
                };
                let (log, writer) = portico_alb::access_log::AccessLog::open(&destination)
                    .with_context(|| format!("load_balancers.{name}.access_logs"))?;
                writers.push(writer);
                Some(log)
            }
            _ => None,
        };
        let elb = format!(
            "app/{name}/{:016x}",
            portico_alb::target_group::stable_hash(name.as_bytes())
        );
        for (i, l) in lb.listeners.iter().enumerate() {
            let tls = topology::certificates(l, lb.http2, base)
                .with_context(|| format!("load_balancers.{name}.listeners[{i}].certificates"))?;
            let listener = TcpListener::bind((l.address, l.port.0))
                .await
                .with_context(|| {
                    format!(
                        "load_balancers.{name}.listeners[{i}]: cannot bind {}:{}",
                        l.address, l.port
                    )
                })?;
            let address = listener.local_addr()?;
            let router = portico_alb::Router::compile(l, &groups)
                .with_context(|| format!("load_balancers.{name}.listeners[{i}]"))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            banner.load_balancers.push((name.clone(), scheme, address));
            banner.routes.push(format!(
                "load balancer {name} {address}{}: {}",
                if l.proxy_protocol_v2 {
                    " (PROXY v2)"
                } else {
                    ""
                },
                describe_routes(l, config),
            ));
            let spec = portico_alb::ListenerSpec {
                load_balancer: name.clone(),
                proxy_protocol: l.proxy_protocol_v2,
                idle_timeout: Duration::from_secs(u64::from(lb.idle_timeout_seconds)),
                limits: LISTENER_LIMITS,
                router,
                elb: elb.clone(),
                access_log: access_log.clone(),
                tls,
                http2: lb.http2,
            };
            tasks.spawn(portico_alb::serve(
                listener,
                spec,
                invoker.clone(),
                shutdown.clone(),
            ));
            bound.entry(name.clone()).or_default().push(BoundListener {
                address,
                proxy_protocol: l.proxy_protocol_v2,
            });
        }
    }
    let accelerator = match &config.accelerator {
        Some(acc) => Some(start_edge(acc, &bound, shutdown, tasks, banner).await?),
        None => None,
    };
    if config.admin_api.enabled {
        let api = &config.admin_api;
        let listener = TcpListener::bind((api.address, api.port.0))
            .await
            .with_context(|| format!("admin_api: cannot bind {}:{}", api.address, api.port))?;
        banner.admin_api = Some(listener.local_addr()?);
        let admin = Arc::new(portico_admin::Admin {
            target_groups: groups,
            accelerator,
        });
        tasks.spawn(portico_admin::serve(
            listener,
            admin,
            LISTENER_LIMITS,
            shutdown.clone(),
        ));
    }
    Ok(())
}

async fn start_edge(
    acc: &portico_config::Accelerator,
    bound: &BTreeMap<String, Vec<BoundListener>>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    banner: &mut Banner,
) -> anyhow::Result<portico_admin::AcceleratorView> {
    banner.accelerator = Some(acc.name.clone());
    let mut static_addresses = Vec::new();
    let mut groups = Vec::new();
    for g in &acc.endpoint_groups {
        let mut endpoints = Vec::new();
        for e in &g.endpoints {
            let (address, proxy_default, label) = match (&e.load_balancer, e.address) {
                (Some(lb), _) => {
                    let Some(first) = bound.get(lb).and_then(|l| l.first()) else {
                        bail!("endpoint names load balancer {lb:?}, which has no listener");
                    };
                    (
                        first.address,
                        first.proxy_protocol,
                        format!("load balancer {lb} at {}", first.address),
                    )
                }
                (None, Some(addr)) => (addr, false, format!("{addr}")),
                (None, None) => bail!("endpoint without a target in region {}", g.region),
            };
            let proxy = e.client_ip_preservation.unwrap_or(proxy_default);
            let endpoint = Arc::new(Endpoint::new(address, e.weight, proxy));
            let interval = Duration::from_secs(u64::from(g.health_check_interval_seconds));
            let check = HealthCheck {
                interval,
                timeout: interval.min(Duration::from_secs(5)),
                threshold: g.threshold_count,
            };
            tasks.spawn(health::run(endpoint.clone(), check, shutdown.clone()));
            banner.routes.push(format!(
                "endpoint group {} (dial {} %) -> {label}, weight {}{}",
                g.region,
                g.traffic_dial_percentage,
                e.weight,
                if proxy { ", PROXY v2" } else { "" }
            ));
            endpoints.push(endpoint);
        }
        groups.push(EndpointGroup {
            region: g.region.clone(),
            traffic_dial_percentage: g.traffic_dial_percentage,
            endpoints,
        });
    }
    for l in &acc.listeners {
        let affinity = match l.client_affinity {
            ClientAffinity::None => Affinity::None,
            ClientAffinity::SourceIp => Affinity::SourceIp,
        };
        let edge = Arc::new(Edge {
            groups: groups.clone(),
            affinity,
            limits: LISTENER_LIMITS,
        });
        // With port 0, the first address picks a free port and the others reuse it: every
        // static IP serves the same port, as the accelerator promises.
        let mut port = l.port.0;
        for ip in &acc.static_ips {
            let listener = TcpListener::bind((*ip, port))
                .await
                .with_context(|| format!("accelerator: cannot bind static address {ip}:{port}"))?;
            let address = listener.local_addr()?;
            port = address.port();
            banner.static_addresses.push((address, "tcp"));
            static_addresses.push(address);
            tasks.spawn(portico_edge::serve(
                listener,
                edge.clone(),
                shutdown.clone(),
            ));
        }
        banner.routes.insert(
            0,
            format!(
                "static addresses tcp :{port} -> endpoint groups {}",
                groups
                    .iter()
                    .map(|g| g.region.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(portico_admin::AcceleratorView {
        name: acc.name.clone(),
        static_addresses,
        groups,
    })
}

/// One line on what a listener does: its rules' count and where its default action goes.
fn describe_routes(listener: &LbListener, config: &Config) -> String {
    let default = match &listener.default_action {
        Action::Forward { .. } => listener
            .default_action
            .forward_targets()
            .iter()
            .map(|(tg, _)| match config.target_groups.get(*tg) {
                Some(group) if group.target_type == TargetType::Lambda => format!(
                    "target group {tg} (lambda) -> function {}",
                    group.function.as_deref().unwrap_or("?")
                ),
                Some(group) => format!("target group {tg} ({} targets)", group.targets.len()),
                None => format!("target group {tg}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Action::Redirect(_) => "redirect".to_owned(),
        Action::FixedResponse(f) => format!("fixed response {}", f.status_code),
    };
    match listener.rules.len() {
        0 => format!("-> {default}"),
        n => format!("{n} rule(s), default -> {default}"),
    }
}
