//! `portico up`: bind every listener, wire edge → load balancer → runtime, run until a
//! signal, then shut down in order.
//!
//! Load balancers are bound first: the edge's endpoints that name a load balancer need its
//! bound address (a port of 0 in the file means "any free port", which tests rely on).
//!
//! Shutdown sequence: stop accepting on every listener → load balancer connections finish
//! their current request (bounded by the drain time) and the edge's copies end with them →
//! every function process is stopped and reaped.

use crate::balancers::LoadBalancers;
use crate::banner::Banner;
use crate::{signals, topology};
use anyhow::{Context, bail};
use portico_config::{ClientAffinity, Config, EdgeHealthProtocol, EdgeProtocol};
use portico_edge::health::{self, HealthCheck};
use portico_edge::{
    Accelerator, AcceleratorSpec, Affinity, EndpointSpec, GroupSpec, ListenerSpec, Target,
    Transport,
};
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

/// Each static address and port: at most 100 000 connections at once (Global Accelerator has
/// no per-listener cap; this bounds memory), and the same drain as every listener.
const EDGE_LIMITS: portico_accept::Limits = portico_accept::Limits {
    max_connections: 100_000,
    drain: LISTENER_LIMITS.drain,
};

/// Descriptors one connection to a static IP holds: the client's socket and the edge's
/// connection to its endpoint; one more when that endpoint is a load balancer on this node
/// (its end of the connection).
const EDGE_CONNECTION_DESCRIPTORS: usize = 2;

/// Descriptors one connection to a load balancer listener holds: the client's socket and a
/// connection to an HTTP target. Connections from loopback (this node's edge) draw nothing:
/// the edge paid for them.
const LB_CONNECTION_DESCRIPTORS: usize = 2;

/// What keeps clients from exhausting the node: the descriptor budget all public
/// listeners draw from, and the per-client limit on the static IPs.
#[derive(Debug, Clone)]
struct Protection {
    descriptors: Arc<portico_accept::Descriptors>,
    per_client: Option<Arc<portico_accept::PerClient>>,
}

impl Protection {
    /// The budget of this process, as `limits` configure it; after the open-file limit
    /// was raised.
    fn new(limits: &portico_config::model::Limits) -> Self {
        let descriptors = portico_accept::Descriptors::of_this_process(
            limits.reserved_descriptors.map(|n| n as usize),
        );
        tracing::debug!(
            budget = descriptors.budget(),
            reserve = descriptors.reserve(),
            "descriptor budget for client connections"
        );
        Self {
            descriptors: Arc::new(descriptors),
            per_client: (limits.connections_per_client > 0).then(|| {
                Arc::new(portico_accept::PerClient::new(
                    limits.connections_per_client as usize,
                ))
            }),
        }
    }

    /// For the static IPs; `local_endpoints` when some endpoint is a load balancer bound
    /// on this node.
    fn edge(&self, local_endpoints: bool) -> portico_accept::Admission {
        let cost = EDGE_CONNECTION_DESCRIPTORS + usize::from(local_endpoints);
        portico_accept::Admission {
            descriptors: Some((self.descriptors.clone(), cost)),
            per_client: self.per_client.clone(),
            loopback_free: false,
        }
    }

    fn load_balancer(&self) -> portico_accept::Admission {
        portico_accept::Admission {
            descriptors: Some((self.descriptors.clone(), LB_CONNECTION_DESCRIPTORS)),
            per_client: None,
            loopback_free: true,
        }
    }
}

/// What `portico up` was asked to run.
pub(crate) struct Options {
    /// The file, when not the embedded default (SIGHUP re-reads it).
    pub(crate) file: Option<PathBuf>,
    /// The directory relative paths are resolved against.
    pub(crate) base: PathBuf,
    /// Run only this node's part of the topology (checked to be in the file).
    pub(crate) node: Option<String>,
    /// This node's part of a multi-node accelerator, its host checked.
    pub(crate) ha: Option<portico_ha::HaSpec>,
    /// The control plane: the file with the changes made through the APIs over it.
    pub(crate) control: Arc<portico_control::Control>,
}

/// What `start` leaves running that a reload needs.
#[derive(Default)]
struct Started {
    accelerator: Option<Arc<Accelerator>>,
    /// The daemon holding or announcing the static IPs, on a node of several.
    ha: Option<Arc<portico_ha::Ha>>,
    balancers: Option<LoadBalancers>,
}

/// Runs `config` until SIGINT or SIGTERM; SIGHUP moves everything to the file, in place.
pub(crate) async fn run(config: Config, options: Options) -> anyhow::Result<()> {
    let Options {
        file,
        base,
        node,
        ha: ha_spec,
        control,
    } = options;
    raise_file_limit();
    let full = config.clone();
    let config = topology::for_node(config, node.as_deref());
    let isolation = topology::isolation(&config, &base, file.as_deref()).await?;
    let runtime = Arc::new(Runtime::new(
        topology::function_specs(&config, &base)?,
        RuntimeOptions {
            isolation,
            max_concurrency: config.runtime.max_concurrency as usize,
            idle_timeout: Duration::from_secs(u64::from(
                config.runtime.environment_idle_timeout_seconds,
            )),
            memory_budget_mb: config
                .runtime
                .memory_budget_mb
                .map_or_else(portico_lambda::runtime::default_memory_budget_mb, |mb| {
                    mb as usize
                }),
            ..RuntimeOptions::default()
        },
    ));
    runtime.set_aliases(topology::aliases(&config));
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

    let mut started = Started::default();
    let admin: Arc<dyn portico_lambda::admin::FunctionAdmin> = Arc::new(
        portico_control::lambda::LambdaControl::new(control.clone(), topology::REGION),
    );
    let result = start(
        (&config, &full),
        &base,
        (runtime.clone(), admin, &control),
        (&shutdown, &tasks),
        (&mut banner, &mut started),
        ha_spec,
    )
    .await;
    if let Err(error) = result {
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        runtime.shutdown().await;
        if let Some(ha) = &started.ha {
            ha.stop().await;
        }
        return Err(error);
    }
    print!("{}", banner.render());

    // From now on, what changes the node (a reload, the APIs) goes through the control plane.
    let node = Arc::new(Node {
        name: node,
        base: base.clone(),
        runtime: runtime.clone(),
        running: tokio::sync::Mutex::new((full, started)),
        left: CancellationToken::new(),
    });
    control.set_apply(node.clone());
    let mut signals = signals::Signals::install().context("installing signal handlers")?;
    let signal = loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            () = node.left.cancelled() => break "SIGHUP (this node left the accelerator)",
        };
        match signal {
            signals::Signal::Reload => match &file {
                Some(file) => {
                    tracing::info!(file = %file.display(), "SIGHUP: reloading");
                    if let Err(error) = control.reload().await {
                        tracing::error!("reload refused, nothing changed: {error}")
                    }
                }
                None => tracing::info!("SIGHUP: the embedded default has nothing to reload"),
            },
            signals::Signal::Shutdown(name) => break name,
        }
    };
    let (_, mut started) = std::mem::take(&mut *node.running.lock().await);
    if let (Some(ha), Some(accelerator)) = (&started.ha, &started.accelerator) {
        tracing::info!(signal, "shutting down: giving up the static IPs");
        crate::ha::give_up(ha, accelerator).await;
    }
    tracing::info!(
        signal,
        "shutting down: closing listeners, draining connections"
    );
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopping function processes");
    runtime.shutdown().await;
    if let Some(ha) = &started.ha {
        ha.stop().await;
    }
    // Every listener is gone, so every access log's writer has its last line and ends.
    // (Dropped here with what holds their logs: the listeners' settings.)
    let log_writers = started
        .balancers
        .take()
        .map(LoadBalancers::into_writers)
        .unwrap_or_default();
    let _ = tokio::task::spawn_blocking(move || {
        for writer in log_writers {
            let _ = writer.join();
        }
    })
    .await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Starts `config` (this node's part of `full`).
async fn start(
    (config, full): (&Config, &Config),
    base: &Path,
    (runtime, admin, control): (
        Arc<Runtime>,
        Arc<dyn portico_lambda::admin::FunctionAdmin>,
        &Arc<portico_control::Control>,
    ),
    (shutdown, tasks): (&CancellationToken, &TaskTracker),
    (banner, started): (&mut Banner, &mut Started),
    ha_spec: Option<portico_ha::HaSpec>,
) -> anyhow::Result<()> {
    let invoker: Arc<dyn Invoker> = runtime.clone();
    let protection = Protection::new(&config.limits);
    if config.invoke_api.enabled {
        let api = &config.invoke_api;
        let listener = TcpListener::bind((api.address, api.port.0))
            .await
            .with_context(|| format!("invoke_api: cannot bind {}:{}", api.address, api.port))?;
        banner.invoke_api = Some(listener.local_addr()?);
        tasks.spawn(portico_lambda::invoke_api::serve(
            listener,
            (runtime, Some(admin)),
            (
                LISTENER_LIMITS,
                portico_lambda::invoke_api::Timeouts {
                    idle: api.idle_timeout(),
                    body: api.body_timeout(),
                },
                topology::access_keys(&api.access_keys),
            ),
            shutdown.clone(),
        ));
    }
    let mut balancers = LoadBalancers::new(
        base,
        invoker.clone(),
        (protection.load_balancer(), LISTENER_LIMITS),
        (shutdown, tasks),
    )
    .await?;
    let prepared = balancers.prepare(config, full).await?;
    let bound = prepared.bound();
    balancers.commit(prepared, Some(banner));
    let shown = balancers.shown();
    started.balancers = Some(balancers);
    let bound = &bound;
    let accelerator = match &config.accelerator {
        Some(acc) => {
            let local = acc
                .listeners
                .iter()
                .flat_map(|l| acc.groups_of(l))
                .flat_map(|g| &g.endpoints)
                .any(|e| {
                    e.load_balancer
                        .as_ref()
                        .is_some_and(|lb| bound.contains_key(lb))
                });
            let admission = protection.edge(local);
            Some(start_edge(acc, full, bound, (admission, shutdown, tasks), banner).await?)
        }
        None => None,
    };
    started.accelerator = accelerator.clone();
    if let (Some(spec), Some(accelerator)) = (ha_spec, &accelerator) {
        banner.routes.push(format!(
            "static IPs {} by {} on node {} ({}), with {}",
            match spec.mode {
                portico_config::HaMode::Vrrp => "held",
                portico_config::HaMode::Bgp => "announced",
            },
            spec.mode.name(),
            spec.node,
            spec.address(),
            spec.daemon
        ));
        started.ha = Some(
            crate::ha::start(spec, accelerator, (shutdown, tasks))
                .await
                .context("accelerator.ha")?,
        );
    }
    if config.admin_api.enabled {
        let api = &config.admin_api;
        let listener = TcpListener::bind((api.address, api.port.0))
            .await
            .with_context(|| format!("admin_api: cannot bind {}:{}", api.address, api.port))?;
        banner.admin_api = Some(listener.local_addr()?);
        let own_listeners = banner
            .load_balancers
            .iter()
            .map(|(_, _, address)| *address)
            .chain(banner.static_addresses.iter().map(|(address, _)| *address))
            .chain(banner.invoke_api)
            .chain(banner.admin_api)
            .collect();
        let admin = Arc::new(portico_admin::Admin {
            balancers: shown,
            accelerator,
            ha: started.ha.clone(),
            descriptors: protection.descriptors.clone(),
            per_client: protection.per_client.clone(),
            keys: topology::access_keys(&api.access_keys),
            own_listeners,
            body_timeout: api.body_timeout(),
            control: Some(control.clone()),
        });
        tasks.spawn(portico_admin::serve(
            listener,
            admin,
            (LISTENER_LIMITS, api.idle_timeout()),
            shutdown.clone(),
        ));
    }
    Ok(())
}

/// The accelerator of `config` as the edge runs it. Endpoints that name a load balancer
/// bound here go to its bound address; one on another node to its configured address.
fn edge_spec(
    acc: &portico_config::Accelerator,
    config: &Config,
    bound: &BTreeMap<String, Vec<crate::balancers::BoundListener>>,
    routes: &mut Vec<String>,
) -> anyhow::Result<AcceleratorSpec> {
    let mut listeners = Vec::new();
    for (i, l) in acc.listeners.iter().enumerate() {
        let mut groups = Vec::new();
        for g in acc.groups_of(l) {
            let mut endpoints = Vec::new();
            for e in &g.endpoints {
                let (target, proxy_default, label) = match (&e.load_balancer, e.address) {
                    (Some(lb), _) => {
                        let (address, proxy) = match bound.get(lb).and_then(|l| l.first()) {
                            Some(first) => (first.address, first.proxy_protocol),
                            None => {
                                let Some(first) = config
                                    .load_balancers
                                    .get(lb)
                                    .and_then(|l| l.listeners.first())
                                else {
                                    bail!(
                                        "endpoint names load balancer {lb:?}, which has no listener"
                                    );
                                };
                                (
                                    SocketAddr::new(first.address, first.port.0),
                                    first.proxy_protocol_v2,
                                )
                            }
                        };
                        (
                            Target::Fixed(address),
                            proxy,
                            format!("load balancer {lb} at {address}"),
                        )
                    }
                    (None, Some(addr)) => (
                        match addr.port {
                            Some(port) => Target::Fixed(SocketAddr::new(addr.ip, port)),
                            None => Target::Host(addr.ip),
                        },
                        false,
                        addr.to_string(),
                    ),
                    (None, None) => bail!("endpoint without a target in region {}", g.region),
                };
                let proxy = l.protocol == EdgeProtocol::Tcp
                    && e.client_ip_preservation.unwrap_or(proxy_default);
                routes.push(format!(
                    "listener {i} endpoint group {} (dial {} %) -> {label}, weight {}{}",
                    g.region,
                    g.traffic_dial_percentage,
                    e.weight,
                    if proxy { ", PROXY v2" } else { "" }
                ));
                endpoints.push(EndpointSpec {
                    target,
                    weight: e.weight,
                    proxy_protocol: proxy,
                });
            }
            let protocol = match g.health_check_protocol {
                EdgeHealthProtocol::Tcp => health::Protocol::Tcp,
                EdgeHealthProtocol::Http => health::Protocol::Http,
                EdgeHealthProtocol::Https => health::Protocol::Https,
            };
            let mut check =
                HealthCheck::every(protocol, g.health_check_interval(), g.threshold_count);
            check.path = g.health_check_path.clone();
            check.port = g.health_check_port.map(|p| p.0);
            groups.push(GroupSpec {
                region: g.region.clone(),
                traffic_dial_percentage: g.traffic_dial_percentage,
                health: check,
                port_overrides: g
                    .port_overrides
                    .iter()
                    .map(|o| (o.listener_port.0, o.endpoint_port.0))
                    .collect(),
                endpoints,
            });
        }
        listeners.push(ListenerSpec {
            transport: match l.protocol {
                EdgeProtocol::Tcp => Transport::Tcp,
                EdgeProtocol::Udp => Transport::Udp,
            },
            ports: l.ports(),
            affinity: match l.client_affinity {
                ClientAffinity::None => Affinity::None,
                ClientAffinity::SourceIp => Affinity::SourceIp,
            },
            idle_timeout: l.idle_timeout(),
            groups,
        });
    }
    Ok(AcceleratorSpec {
        name: acc.name.clone(),
        static_ips: acc.static_ips.clone(),
        listeners,
        webhook: acc.ip_ranges_webhook.clone(),
        freebind: acc.ha.is_some(),
    })
}

async fn start_edge(
    acc: &portico_config::Accelerator,
    config: &Config,
    bound: &BTreeMap<String, Vec<crate::balancers::BoundListener>>,
    (admission, shutdown, tasks): (portico_accept::Admission, &CancellationToken, &TaskTracker),
    banner: &mut Banner,
) -> anyhow::Result<Arc<Accelerator>> {
    banner.accelerator = Some(acc.name.clone());
    let mut routes = Vec::new();
    let spec = edge_spec(acc, config, bound, &mut routes)?;
    let accelerator = Accelerator::start(
        &spec,
        (EDGE_LIMITS, admission),
        shutdown.clone(),
        tasks.clone(),
    )
    .await
    .context("accelerator")?;
    let view = accelerator.view();
    for (transport, address) in &view.addresses {
        banner.static_addresses.push((*address, transport.name()));
    }
    for (l, lv) in acc.listeners.iter().zip(&view.listeners) {
        let ports = match (lv.ports.first(), lv.ports.last()) {
            (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
            (Some(a), _) => a.to_string(),
            _ => "-".to_owned(),
        };
        banner.routes.push(format!(
            "static addresses {} :{ports} -> endpoint groups {}",
            lv.transport.name(),
            acc.groups_of(l)
                .iter()
                .map(|g| g.region.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    banner.routes.extend(routes);
    Ok(accelerator)
}

/// What a reload did.
enum Reloaded {
    /// Everything moved to the file.
    Applied,
    /// The file no longer lists this node among the accelerator's: it leaves, gracefully.
    NodeRemoved,
}

/// The running node: what a reload or a change made through the APIs moves.
struct Node {
    /// This node's name, on an accelerator of several.
    name: Option<String>,
    /// The directory relative paths are resolved against.
    base: PathBuf,
    runtime: Arc<Runtime>,
    /// The whole configuration running now, and what runs it.
    running: tokio::sync::Mutex<(Config, Started)>,
    /// Fires when a reload removed this node from the accelerator: it leaves, gracefully.
    left: CancellationToken,
}

impl portico_control::Apply for Node {
    fn apply(&self, config: Config) -> portico_invoke::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let (config_now, started) = &mut *running;
            match reload(config, self, config_now, started).await {
                Ok(Reloaded::Applied) => Ok(()),
                Ok(Reloaded::NodeRemoved) => {
                    self.left.cancel();
                    Ok(())
                }
                Err(error) => Err(format!("{error:#}")),
            }
        })
    }
}

/// Moves everything to `full` (the file with the changes made through the APIs over it),
/// in place: functions, load balancer listeners, rules, target groups, gateway policies,
/// certificates (read again even when the file names the same ones), and the accelerator.
/// Everything the new configuration needs is made first; on any error nothing changes.
/// The APIs, the runtime's own settings, the limits and the nodes of an accelerator of
/// several need a restart, which a warning says.
async fn reload(
    full: Config,
    live: &Node,
    running: &mut Config,
    started: &mut Started,
) -> anyhow::Result<Reloaded> {
    let node = live.name.as_deref();
    let several = |c: &Config| c.accelerator.as_ref().is_some_and(|a| a.ha.is_some());
    if several(running) && started.accelerator.is_some() {
        if !full.accelerator.as_ref().is_some_and(|a| a.runs_on(node)) {
            return Ok(Reloaded::NodeRemoved);
        }
        let (old, new) = (running.accelerator.as_ref(), full.accelerator.as_ref());
        let ha_of = |a: Option<&portico_config::Accelerator>| {
            a.map(|a| (a.static_ips.clone(), a.nodes.clone(), a.ha.clone()))
        };
        if ha_of(old) != ha_of(new) {
            tracing::warn!(
                section = "accelerator.static_ips, nodes, ha",
                "reload: changes to the nodes and their daemon need a restart of each node"
            );
        }
    }
    for (what, same) in [
        ("invoke_api", full.invoke_api == running.invoke_api),
        ("admin_api", full.admin_api == running.admin_api),
        ("runtime", full.runtime == running.runtime),
        ("limits", full.limits == running.limits),
    ] {
        if !same {
            tracing::warn!(
                section = what,
                "reload: changes to this section need a restart"
            );
        }
    }
    let config = topology::for_node(full.clone(), node);
    // Made first, all of it: an error here changes nothing.
    if !running.runtime.sandbox {
        if let Some(name) = config
            .functions
            .iter()
            .find_map(|(n, f)| f.image.as_ref().map(|_| n))
        {
            bail!(
                "functions.{name}: a container image runs only in a sandbox, and [runtime] sandbox = false"
            );
        }
    }
    let functions = topology::function_specs(&config, &live.base)?;
    let Some(balancers) = started.balancers.as_mut() else {
        bail!("reload before the load balancers started");
    };
    let prepared = balancers.prepare(&config, &full).await?;
    let acc = config.accelerator.as_ref().filter(|a| a.runs_on(node));
    let edge = match (acc, &started.accelerator) {
        (Some(acc), Some(_)) => Some(edge_spec(acc, &full, &prepared.bound(), &mut Vec::new())?),
        (None, None) => None,
        _ => {
            tracing::warn!("reload: adding or removing the accelerator needs a restart");
            None
        }
    };
    // The accelerator first: it binds its new static addresses before it switches, and
    // refuses the whole reload when one cannot be bound, before anything else changed. (A
    // connection it sends to a load balancer listener bound for this reload waits in that
    // socket's backlog until the listener serves, a moment later.)
    if let (Some(spec), Some(accelerator)) = (edge, &started.accelerator) {
        let changed = accelerator.apply(&spec).await?;
        tracing::info!(static_ips_changed = changed, "reload: accelerator updated");
    }
    // Then functions, so that what the new rules name is there, then the load balancers.
    let applied = live
        .runtime
        .apply(functions, topology::aliases(&config))
        .await;
    let changes = balancers.commit(prepared, None);
    tracing::info!(
        functions_added = ?applied.added,
        functions_replaced = ?applied.replaced,
        functions_removed = ?applied.removed,
        listeners_started = ?changes.started,
        listeners_stopped = ?changes.stopped,
        listeners_kept = changes.kept,
        target_groups_made = ?changes.groups_made,
        target_groups_stopped = ?changes.groups_stopped,
        target_groups_retargeted = ?changes.groups_retargeted,
        "reload: load balancers and functions updated"
    );
    *running = full;
    Ok(Reloaded::Applied)
}

/// Raises the open-file limit to its hard maximum, as HAProxy and nginx do: every held
/// connection costs descriptors (two per forwarded connection at the edge).
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%error, "could not raise the open-file limit");
        }
    }
}
