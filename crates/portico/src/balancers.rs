//! The load balancers as they run (listeners, target groups, gateway policies, access logs,
//! certificates), and their move to a new configuration in place.
//!
//! A configuration is taken in two steps. [`LoadBalancers::prepare`] makes everything the
//! new one needs (certificates read, rules compiled, new listeners bound, changed target
//! groups started) and changes nothing that serves: any error refuses the configuration
//! whole, and what was made for it is dropped. [`LoadBalancers::commit`] then switches:
//! listeners whose address and port stay keep their socket and connections, and take the
//! new settings for the next connection and the next request; requests in progress finish
//! on what they began with; new listeners start; removed ones stop accepting and drain;
//! target groups that did not change keep their state (health, stickiness, registered
//! targets), the others are replaced and their checks stopped.
//!
//! Starting is the same move, from nothing.

use crate::banner::Banner;
use crate::topology;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use portico_alb::access_log::AccessLog;
use portico_alb::{Listening, TargetGroup};
use portico_config::{Action, Config, LbListener, TargetType};
use portico_gateway::Gateway;
use portico_invoke::Invoker;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the admin API reads of the load balancers, swapped whole at each change.
pub(crate) type Shown = Arc<ArcSwap<portico_admin::Balancers>>;

/// A listener's identity across configurations: its address, its port and, among
/// listeners with the same two (port 0: any free port), its rank.
type ListenerKey = (IpAddr, u16, usize);

/// A load balancer listener being served.
struct Running {
    load_balancer: String,
    /// Where it is bound.
    address: SocketAddr,
    listening: Listening,
    /// Stops it: it stops accepting, and its connections finish their requests.
    stop: CancellationToken,
}

/// A target group as it runs, with the configuration it was made from.
struct Group {
    config: portico_config::TargetGroup,
    group: TargetGroup,
    /// Stops its health checks.
    stop: CancellationToken,
    /// Made for the configuration being prepared (not the running one's).
    fresh: bool,
    /// The running group, whose targets alone changed: the addresses to register and to
    /// deregister (draining) at the commit.
    retarget: Option<(Vec<SocketAddr>, Vec<SocketAddr>)>,
}

/// Whether `a` and `b` are the same target group but for their targets.
fn only_targets_differ(a: &portico_config::TargetGroup, b: &portico_config::TargetGroup) -> bool {
    let mut same = a.clone();
    same.targets = b.targets.clone();
    same == *b
}

/// A load balancer's access log, with the settings it was opened with.
struct Log {
    settings: portico_config::model::AccessLogs,
    log: AccessLog,
}

/// A bound load balancer listener, as the edge needs to know it.
pub(crate) struct BoundListener {
    /// Where it is bound.
    pub(crate) address: SocketAddr,
    /// Whether it reads PROXY v2 headers.
    pub(crate) proxy_protocol: bool,
}

/// Every load balancer of this node, as it runs now.
pub(crate) struct LoadBalancers {
    base: PathBuf,
    invoker: Arc<dyn Invoker>,
    admission: portico_accept::Admission,
    limits: portico_accept::Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    listeners: BTreeMap<ListenerKey, Running>,
    groups: BTreeMap<String, Group>,
    logs: BTreeMap<String, Log>,
    /// The access logs' writer threads, joined at shutdown.
    writers: Vec<std::thread::JoinHandle<()>>,
    /// Stops the gateway's task.
    gateway_stop: CancellationToken,
    shown: Shown,
}

/// A configuration made ready: what [`LoadBalancers::commit`] switches to.
pub(crate) struct Prepared {
    listeners: Vec<(ListenerKey, NewListener)>,
    /// Its target groups: the running ones that did not change, and fresh ones (stopped
    /// if the configuration is dropped uncommitted).
    groups: BTreeMap<String, Group>,
    logs: BTreeMap<String, Log>,
    writers: Vec<std::thread::JoinHandle<()>>,
    gateway: Arc<Gateway>,
    /// Stops its gateway's task (if it is dropped uncommitted, or replaced).
    gateway_stop: CancellationToken,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Not committed (a commit takes the groups, and the gateway's token).
        for group in self.groups.values().filter(|g| g.fresh) {
            group.stop.cancel();
        }
        self.gateway_stop.cancel();
    }
}

/// A listener of the new configuration: its settings, where it is bound, and its socket
/// when it is new.
struct NewListener {
    spec: portico_alb::ListenerSpec,
    address: SocketAddr,
    socket: Option<TcpListener>,
    /// What it does, in one line, for the banner.
    route: String,
}

impl Prepared {
    /// Where each load balancer's listeners will be bound, by load balancer.
    pub(crate) fn bound(&self) -> BTreeMap<String, Vec<BoundListener>> {
        let mut bound: BTreeMap<String, Vec<BoundListener>> = BTreeMap::new();
        for (_, new) in &self.listeners {
            bound
                .entry(new.spec.load_balancer.clone())
                .or_default()
                .push(BoundListener {
                    address: new.address,
                    proxy_protocol: new.spec.proxy_protocol,
                });
        }
        bound
    }
}

/// What a commit changed, for the log.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Listeners started, by address.
    pub(crate) started: Vec<SocketAddr>,
    /// Listeners stopped, by address.
    pub(crate) stopped: Vec<SocketAddr>,
    /// Listeners that kept their socket.
    pub(crate) kept: usize,
    /// Target groups made (new or changed).
    pub(crate) groups_made: Vec<String>,
    /// Target groups gone (removed or changed).
    pub(crate) groups_stopped: Vec<String>,
    /// Target groups whose targets alone changed.
    pub(crate) groups_retargeted: Vec<String>,
}

impl LoadBalancers {
    /// None yet; `admission` and `limits` are every listener's.
    pub(crate) async fn new(
        base: &Path,
        invoker: Arc<dyn Invoker>,
        (admission, limits): (portico_accept::Admission, portico_accept::Limits),
        (shutdown, tasks): (&CancellationToken, &TaskTracker),
    ) -> anyhow::Result<Self> {
        let gateway_stop = shutdown.child_token();
        let gateway =
            Gateway::start(&Config::default(), base, (tasks, &gateway_stop), None).await?;
        Ok(Self {
            gateway_stop,
            base: base.to_owned(),
            invoker,
            admission,
            limits,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            listeners: BTreeMap::new(),
            groups: BTreeMap::new(),
            logs: BTreeMap::new(),
            writers: Vec::new(),
            shown: Arc::new(ArcSwap::from_pointee(portico_admin::Balancers {
                target_groups: BTreeMap::new(),
                gateway,
            })),
        })
    }

    /// What the admin API shows: the target groups and the gateway, as they are now.
    pub(crate) fn shown(&self) -> Shown {
        self.shown.clone()
    }

    /// Makes ready everything `config` (this node's part of `full`) needs, without changing
    /// what serves. Refused whole on the first error.
    pub(crate) async fn prepare(&self, config: &Config, full: &Config) -> anyhow::Result<Prepared> {
        let gateway_stop = self.shutdown.child_token();
        let previous = self.shown.load().gateway.clone();
        let gateway = Gateway::start(
            config,
            &self.base,
            (&self.tasks, &gateway_stop),
            Some(&previous),
        )
        .await?;
        let mut prepared = Prepared {
            gateway_stop,
            listeners: Vec::new(),
            groups: BTreeMap::new(),
            logs: BTreeMap::new(),
            writers: Vec::new(),
            gateway,
        };
        for (name, tg) in &config.target_groups {
            let group = match self.groups.get(name) {
                Some(running) if running.config == *tg => Group {
                    config: tg.clone(),
                    group: running.group.clone(),
                    stop: running.stop.clone(),
                    fresh: false,
                    retarget: None,
                },
                // Only its targets changed (`RegisterTargets`, a file listing others): the
                // group goes on, its state kept, and the targets that leave drain.
                Some(running)
                    if matches!(running.group, TargetGroup::Http(_))
                        && only_targets_differ(&running.config, tg) =>
                {
                    let (old, new) = (&running.config.targets, &tg.targets);
                    Group {
                        config: tg.clone(),
                        group: running.group.clone(),
                        stop: running.stop.clone(),
                        fresh: false,
                        retarget: Some((
                            new.iter().filter(|a| !old.contains(a)).copied().collect(),
                            old.iter().filter(|a| !new.contains(a)).copied().collect(),
                        )),
                    }
                }
                _ => {
                    let stop = self.shutdown.child_token();
                    Group {
                        config: tg.clone(),
                        group: topology::target_group(name, tg, &self.invoker, &self.tasks, &stop),
                        stop,
                        fresh: true,
                        retarget: None,
                    }
                }
            };
            prepared.groups.insert(name.clone(), group);
        }
        let groups: BTreeMap<String, TargetGroup> = prepared
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.group.clone()))
            .collect();
        let mut ranks: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
        for (name, lb) in &config.load_balancers {
            let access_log = match &lb.access_logs {
                settings if settings.enabled => {
                    Some(self.access_log(name, settings, &mut prepared)?)
                }
                _ => None,
            };
            let elb = format!(
                "app/{name}/{:016x}",
                portico_alb::target_group::stable_hash(name.as_bytes())
            );
            for (i, l) in lb.listeners.iter().enumerate() {
                let path = format!("load_balancers.{name}.listeners[{i}]");
                let tls = topology::certificates(l, lb.http2, &self.base)
                    .with_context(|| format!("{path}.certificates"))?;
                let router = portico_alb::Router::compile(l, &groups, &mut |spec, rule| {
                    let path = match rule {
                        Some(r) => format!("{path}.rules[{r}].gateway"),
                        None => format!("{path}.gateway"),
                    };
                    prepared.gateway.policy(spec, &path, &self.base)
                })
                .with_context(|| path.clone())?;
                let rank = ranks.entry((l.address, l.port.0)).or_default();
                let key = (l.address, l.port.0, *rank);
                *rank += 1;
                let (address, socket) = match self.listeners.get(&key) {
                    Some(running) => (running.address, None),
                    None => {
                        let socket = TcpListener::bind((l.address, l.port.0))
                            .await
                            .with_context(|| {
                                format!("{path}: cannot bind {}:{}", l.address, l.port)
                            })?;
                        (socket.local_addr()?, Some(socket))
                    }
                };
                let route = format!(
                    "{}: {}",
                    if l.proxy_protocol_v2 {
                        " (PROXY v2)"
                    } else {
                        ""
                    },
                    describe_routes(l, config)
                );
                let spec = portico_alb::ListenerSpec {
                    load_balancer: name.clone(),
                    proxy_protocol: l.proxy_protocol_v2,
                    proxy_sources: full.proxy_protocol_sources(l),
                    idle_timeout: Duration::from_secs(u64::from(lb.idle_timeout_seconds)),
                    limits: self.limits,
                    admission: self.admission.clone(),
                    router,
                    elb: elb.clone(),
                    access_log: access_log.clone(),
                    tls,
                    http2: lb.http2,
                    forwarding: portico_alb::forwarded::Forwarding {
                        xff: lb.xff_header_processing_mode,
                        xff_client_port: lb.xff_client_port,
                        preserve_host_header: lb.preserve_host_header,
                    },
                    desync: lb.desync_mitigation_mode,
                };
                prepared.listeners.push((
                    key,
                    NewListener {
                        spec,
                        address,
                        socket,
                        route,
                    },
                ));
            }
        }
        Ok(prepared)
    }

    /// The access log of load balancer `name`: the one open when its settings are the same,
    /// else a new one (in `prepared`).
    fn access_log(
        &self,
        name: &str,
        settings: &portico_config::model::AccessLogs,
        prepared: &mut Prepared,
    ) -> anyhow::Result<AccessLog> {
        if let Some(open) = self.logs.get(name).filter(|l| l.settings == *settings) {
            prepared.logs.insert(
                name.to_owned(),
                Log {
                    settings: settings.clone(),
                    log: open.log.clone(),
                },
            );
            return Ok(open.log.clone());
        }
        let destination = match settings.destination.as_deref() {
            None | Some("stdout") => "stdout".to_owned(),
            Some(path) => self.base.join(path).display().to_string(),
        };
        let (log, writer) = AccessLog::open(&destination)
            .with_context(|| format!("load_balancers.{name}.access_logs"))?;
        prepared.writers.push(writer);
        prepared.logs.insert(
            name.to_owned(),
            Log {
                settings: settings.clone(),
                log: log.clone(),
            },
        );
        Ok(log)
    }

    /// Switches to `prepared`; `banner`, when given, gets the listeners and their routes.
    pub(crate) fn commit(
        &mut self,
        mut prepared: Prepared,
        banner: Option<&mut Banner>,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut listeners = BTreeMap::new();
        let mut lines = Vec::new();
        for (key, new) in prepared.listeners.drain(..) {
            let scheme = if new.spec.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let running = match (self.listeners.remove(&key), new.socket) {
                (Some(running), _) => {
                    changes.kept += 1;
                    let load_balancer = new.spec.load_balancer.clone();
                    running.listening.update(new.spec);
                    Running {
                        load_balancer,
                        ..running
                    }
                }
                (None, Some(socket)) => {
                    let address = new.address;
                    let stop = self.shutdown.child_token();
                    let load_balancer = new.spec.load_balancer.clone();
                    let (listening, served) =
                        portico_alb::listen(socket, new.spec, self.invoker.clone(), stop.clone());
                    self.tasks.spawn(served);
                    changes.started.push(address);
                    Running {
                        load_balancer,
                        address,
                        listening,
                        stop,
                    }
                }
                // Prepared against these listeners: a key not running came with its socket.
                (None, None) => continue,
            };
            lines.push((
                running.load_balancer.clone(),
                scheme,
                running.address,
                new.route,
            ));
            listeners.insert(key, running);
        }
        for (_, gone) in std::mem::replace(&mut self.listeners, listeners) {
            changes.stopped.push(gone.address);
            gone.stop.cancel();
        }
        // Taken: what was made for it stays.
        let mut groups = std::mem::take(&mut prepared.groups);
        for (name, old) in &self.groups {
            if groups.get(name).is_none_or(|g| g.fresh) {
                changes.groups_stopped.push(name.clone());
                old.stop.cancel();
            }
        }
        for (name, group) in &mut groups {
            if std::mem::take(&mut group.fresh) {
                changes.groups_made.push(name.clone());
            }
            if let (Some((register, deregister)), TargetGroup::Http(http)) =
                (group.retarget.take(), &group.group)
            {
                for address in register {
                    http.register(address);
                }
                for address in deregister {
                    http.deregister(address);
                }
                changes.groups_retargeted.push(name.clone());
            }
        }
        self.groups = groups;
        self.logs = std::mem::take(&mut prepared.logs);
        let gateway_stop = std::mem::replace(&mut prepared.gateway_stop, CancellationToken::new());
        std::mem::replace(&mut self.gateway_stop, gateway_stop).cancel();
        self.writers.retain(|w| !w.is_finished());
        self.writers.append(&mut prepared.writers);
        self.shown.store(Arc::new(portico_admin::Balancers {
            target_groups: self
                .groups
                .iter()
                .map(|(name, g)| (name.clone(), g.group.clone()))
                .collect(),
            gateway: prepared.gateway.clone(),
        }));
        if let Some(banner) = banner {
            for (name, scheme, address, route) in lines {
                banner
                    .routes
                    .push(format!("load balancer {name} {address}{route}"));
                banner.load_balancers.push((name, scheme, address));
            }
        }
        changes
    }

    /// The access logs' writer threads, once the load balancers have stopped: each ends
    /// when the last holder of its log (a listener's settings, a request) is gone.
    pub(crate) fn into_writers(mut self) -> Vec<std::thread::JoinHandle<()>> {
        std::mem::take(&mut self.writers)
    }
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
