//! The accelerator as a whole: its static addresses, listeners and endpoint groups, started
//! once and changed in place by reloads.
//!
//! A reload ([`Accelerator::apply`]) never touches a socket that stays in the file: static
//! addresses and ports that remain keep their bound sockets, and only their routes are
//! swapped, so clients see no gap. New addresses and ports are bound first; if one cannot be
//! bound the reload is refused and nothing changes. Sockets that left the file stop
//! accepting and their open connections drain. Endpoints keep their health and counters
//! across reloads while their address and check stay the same; an endpoint that left the
//! file drains (its open connections finish, new ones go elsewhere) and its checks stop.
//! When the set of static IPs changes, the `ip-ranges.json` document gets a new sync token
//! and the webhook, if any, is called with it.

use crate::endpoint::{Endpoint, EndpointGroup, Target};
use crate::health::{self, HealthCheck};
use crate::ip_ranges::IpRanges;
use crate::route::{Route, RouteCell};
use crate::selection::Affinity;
use crate::tcp::Connections;
use portico_health::{Status, Verdict};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Transport protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP connections.
    Tcp,
    /// UDP flows.
    Udp,
}

impl Transport {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The accelerator as the configuration describes it.
#[derive(Debug, Clone)]
pub struct AcceleratorSpec {
    /// Its name.
    pub name: String,
    /// The static IPs.
    pub static_ips: Vec<IpAddr>,
    /// Its listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Where `ip-ranges.json` is POSTed when the static IPs change.
    pub webhook: Option<String>,
    /// Bind the static IPs whether or not this host has them (`IP_FREEBIND`): on a node of
    /// several, an address that moves here is served at once, without a rebind.
    pub freebind: bool,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// TCP or UDP.
    pub transport: Transport,
    /// Its ports; a single `0` picks a free port, the same on every static IP.
    pub ports: Vec<u16>,
    /// Client affinity.
    pub affinity: Affinity,
    /// Idle timeout of connections or flows.
    pub idle_timeout: Duration,
    /// Its endpoint groups.
    pub groups: Vec<GroupSpec>,
}

/// One endpoint group.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// Region name.
    pub region: String,
    /// Traffic dial, 0–100.
    pub traffic_dial_percentage: u8,
    /// How its endpoints are checked.
    pub health: HealthCheck,
    /// Listener port → endpoint port.
    pub port_overrides: BTreeMap<u16, u16>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// One endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Where it receives traffic.
    pub target: Target,
    /// Weight, 0–255.
    pub weight: u8,
    /// Send PROXY protocol v2.
    pub proxy_protocol: bool,
}

/// What a reload could not do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A new static address or port could not be bound; nothing was changed.
    #[error("cannot bind {transport} {address}")]
    Bind {
        /// TCP or UDP.
        transport: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The accelerator as status output shows it.
#[derive(Debug)]
pub struct View {
    /// Its name.
    pub name: String,
    /// Every bound static address with its transport.
    pub addresses: Vec<(Transport, SocketAddr)>,
    /// Each listener: transport, bound ports and route.
    pub listeners: Vec<ListenerView>,
    /// The static IPs as `ip-ranges.json`.
    pub ip_ranges: IpRanges,
}

/// One listener as status output shows it.
#[derive(Debug)]
pub struct ListenerView {
    /// TCP or UDP.
    pub transport: Transport,
    /// The ports it accepts on.
    pub ports: Vec<u16>,
    /// Where its traffic goes now.
    pub route: Arc<Route>,
}

/// Identity of a bound socket: the same key across a reload keeps the same socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SocketKey {
    ip: IpAddr,
    transport: Transport,
    /// The configured port; 0 for "any free port".
    port: u16,
    /// With port 0: which listener (its free port is its own).
    listener: Option<usize>,
}

struct Bound {
    address: SocketAddr,
    route: RouteCell,
    stop: CancellationToken,
    /// A TCP listener's socket (a second descriptor of it), for [`Accelerator::quiesce`].
    listener: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    address: SocketAddr,
    check: HealthCheck,
    /// The endpoint takes PROXY protocol v2.
    proxy: bool,
}

struct Check {
    status: Arc<Status>,
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    static_ips: Vec<IpAddr>,
    changed: Option<SystemTime>,
    sockets: HashMap<SocketKey, Bound>,
    checks: HashMap<CheckKey, Check>,
}

/// Descriptors a UDP flow holds: its socket toward the endpoint.
const UDP_FLOW_DESCRIPTORS: usize = 1;

/// A running accelerator.
pub struct Accelerator {
    state: tokio::sync::Mutex<State>,
    view: RwLock<Arc<View>>,
    limits: portico_accept::Limits,
    /// What a TCP connection must pass to be served: the descriptor budget, the per-client
    /// limit.
    admission: portico_accept::Admission,
    /// Each static IP's TCP connections.
    connections: Arc<Mutex<HashMap<IpAddr, Arc<Connections>>>>,
    /// Every static IP was quiesced: the node is leaving, and nothing resumes.
    leaving: AtomicBool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accelerator").finish_non_exhaustive()
    }
}

impl Accelerator {
    /// Binds every static address of `spec` and starts forwarding and health checks, until
    /// `shutdown` fires; tasks are spawned on `tasks`. TCP connections are held to `limits`
    /// and pass `admission`; so does each new UDP flow, at a cost of one descriptor.
    pub async fn start(
        spec: &AcceleratorSpec,
        (limits, admission): (portico_accept::Limits, portico_accept::Admission),
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Self>, ApplyError> {
        let accelerator = Arc::new(Self {
            state: tokio::sync::Mutex::default(),
            view: RwLock::new(Arc::new(View {
                name: spec.name.clone(),
                addresses: Vec::new(),
                listeners: Vec::new(),
                ip_ranges: IpRanges::new(&[], SystemTime::now()),
            })),
            limits,
            admission,
            connections: Arc::default(),
            leaving: AtomicBool::new(false),
            shutdown,
            tasks,
        });
        // At shutdown, open connections are asked to finish gracefully first.
        let (connections, shutdown) = (
            accelerator.connections.clone(),
            accelerator.shutdown.clone(),
        );
        accelerator.tasks.spawn(async move {
            shutdown.cancelled().await;
            for each in lock(&connections).values() {
                each.finish();
            }
        });
        accelerator.apply(spec).await?;
        Ok(accelerator)
    }

    /// The accelerator now, for status output.
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops taking new TCP connections without refusing them, and asks the open ones to
    /// finish: a node about to give its static IPs up (all of them, or only `ip`). Each
    /// listener drops the SYNs it gets (a socket filter that passes nothing), so clients
    /// send them again a second later, when another node holds the address; each open
    /// connection's relay half-closes toward its endpoint, which ends it at a request
    /// boundary. Listeners stay bound.
    pub async fn quiesce(&self, ip: Option<IpAddr>) {
        // `ret #0`: accept no packet.
        const DROP_ALL: [socket2::SockFilter; 1] = [socket2::SockFilter::new(0x06, 0, 0, 0)];
        let state = self.state.lock().await;
        if ip.is_none() {
            self.leaving.store(true, Ordering::Relaxed);
        }
        for bound in state.sockets.values() {
            if ip.is_some_and(|ip| ip != bound.address.ip()) {
                continue;
            }
            if let Some(listener) = &bound.listener {
                if let Err(error) = socket2::SockRef::from(listener).attach_filter(&DROP_ALL) {
                    tracing::warn!(address = %bound.address, %error, "cannot stop new connections");
                }
            }
        }
        for (address, each) in lock(&self.connections).iter() {
            if ip.is_none_or(|ip| ip == *address) {
                each.finish();
            }
        }
    }

    /// Takes new connections on `ip` again after [`Accelerator::quiesce`]: a node that
    /// handed the address over, ready to take it back if its holder fails. Nothing resumes
    /// once every address was quiesced (the node is leaving) or at shutdown.
    pub async fn resume(&self, ip: IpAddr) {
        let state = self.state.lock().await;
        if self.leaving.load(Ordering::Relaxed) || self.shutdown.is_cancelled() {
            return;
        }
        for bound in state.sockets.values() {
            if bound.address.ip() != ip {
                continue;
            }
            if let Some(listener) = &bound.listener {
                if let Err(error) = socket2::SockRef::from(listener).detach_filter() {
                    tracing::warn!(address = %bound.address, %error, "cannot take new connections again");
                }
            }
        }
        if let Some(each) = lock(&self.connections).get(&ip) {
            each.resume();
        }
    }

    /// TCP connections open now (to `ip`, or to any static IP).
    pub fn open_connections(&self, ip: Option<IpAddr>) -> usize {
        lock(&self.connections)
            .iter()
            .filter(|(address, _)| ip.is_none_or(|ip| ip == **address))
            .map(|(_, each)| each.open())
            .sum()
    }

    /// Whether this node can serve: every static address is bound and at least one
    /// endpoint group has a healthy endpoint with a weight. (When none has, new connections
    /// are still tried on every endpoint, fail-open; but another node may have a healthy
    /// one, so this one should not hold the static IPs.)
    pub fn serving(&self) -> (bool, String) {
        if self.shutdown.is_cancelled() {
            return (false, "shutting down".to_owned());
        }
        let view = self.view();
        if view.addresses.is_empty() {
            return (false, "no static address is bound".to_owned());
        }
        let mut healthy: Vec<&str> = view
            .listeners
            .iter()
            .flat_map(|l| &l.route.groups)
            .filter(|g| g.available().next().is_some())
            .map(|g| g.region.as_str())
            .collect();
        healthy.sort_unstable();
        healthy.dedup();
        if healthy.is_empty() {
            return (false, "no endpoint group has a healthy endpoint".to_owned());
        }
        (
            true,
            format!(
                "{} static addresses bound; healthy endpoints in {}",
                view.addresses.len(),
                healthy.join(", ")
            ),
        )
    }

    /// Moves the running accelerator to `spec` (see the module documentation). Returns
    /// whether the set of static IPs changed.
    pub async fn apply(&self, spec: &AcceleratorSpec) -> Result<bool, ApplyError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;

        // Endpoints and their checks: reuse what stays, start what is new.
        let mut used_checks = HashSet::new();
        let mut routes = Vec::new();
        for listener in &spec.listeners {
            let first_port = listener.ports.first().copied().unwrap_or(0);
            let mut groups = Vec::new();
            let mut connect_timeout = Duration::from_millis(100);
            for g in &listener.groups {
                connect_timeout =
                    connect_timeout.max(crate::tcp::connect_timeout(g.health.timeout));
                let port = g
                    .port_overrides
                    .get(&first_port)
                    .copied()
                    .unwrap_or(first_port);
                let endpoints = g
                    .endpoints
                    .iter()
                    .map(|e| {
                        let traffic = e.target.address(port);
                        let key = CheckKey {
                            address: SocketAddr::new(
                                traffic.ip(),
                                g.health.port.unwrap_or(traffic.port()),
                            ),
                            check: g.health.clone(),
                            proxy: e.proxy_protocol,
                        };
                        let check = self.check(state, &mut used_checks, key);
                        Arc::new(Endpoint::new(
                            e.target,
                            e.weight,
                            e.proxy_protocol,
                            check.0,
                            check.1,
                        ))
                    })
                    .collect();
                groups.push(EndpointGroup {
                    region: g.region.clone(),
                    traffic_dial_percentage: g.traffic_dial_percentage,
                    port_overrides: g.port_overrides.clone(),
                    endpoints,
                });
            }
            routes.push(Arc::new(Route {
                groups,
                affinity: listener.affinity,
                idle_timeout: listener.idle_timeout,
                connect_timeout: connect_timeout.min(Duration::from_secs(5)),
            }));
        }

        // Sockets: bind the new ones first, so a failure changes nothing.
        let mut wanted: Vec<(SocketKey, usize)> = Vec::new();
        for (i, listener) in spec.listeners.iter().enumerate() {
            for ip in &spec.static_ips {
                for &port in &listener.ports {
                    let key = SocketKey {
                        ip: *ip,
                        transport: listener.transport,
                        port,
                        listener: (port == 0).then_some(i),
                    };
                    wanted.push((key, i));
                }
            }
        }
        let mut fresh: Vec<(SocketKey, usize, Socket)> = Vec::new();
        for &(key, i) in &wanted {
            if state.sockets.contains_key(&key) {
                continue;
            }
            // A free port is chosen once per listener and reused on every static IP.
            let port = if key.port == 0 {
                state
                    .sockets
                    .iter()
                    .filter(|(k, _)| k.listener == key.listener && k.transport == key.transport)
                    .map(|(_, b)| b.address.port())
                    .chain(
                        fresh
                            .iter()
                            .filter(|(k, ..)| k.listener == key.listener)
                            .map(|(.., s)| s.address().port()),
                    )
                    .next()
                    .unwrap_or(0)
            } else {
                key.port
            };
            let address = SocketAddr::new(key.ip, port);
            let socket = Socket::bind(key.transport, address, spec.freebind)
                // Returning drops the sockets bound so far: they were never served.
                .map_err(|source| ApplyError::Bind {
                    transport: key.transport.name(),
                    address,
                    source,
                })?;
            fresh.push((key, i, socket));
        }

        // Commit: swap routes, start new sockets, stop what left.
        let wanted_keys: HashSet<SocketKey> = wanted.iter().map(|(k, _)| *k).collect();
        state.sockets.retain(|key, bound| {
            let keep = wanted_keys.contains(key);
            if !keep {
                tracing::info!(address = %bound.address, "static address left the configuration: draining");
                bound.stop.cancel();
            }
            keep
        });
        for &(key, i) in &wanted {
            if let Some(bound) = state.sockets.get(&key) {
                bound.route.store(routes[i].clone());
            }
        }
        for (key, i, socket) in fresh {
            let address = socket.address();
            let route = RouteCell::new(routes[i].clone());
            let stop = self.shutdown.child_token();
            let mut held = None;
            match socket {
                Socket::Tcp(listener, _) => {
                    use std::os::fd::AsFd;
                    held = listener.as_fd().try_clone_to_owned().ok();
                    let connections = lock(&self.connections)
                        .entry(address.ip())
                        .or_default()
                        .clone();
                    self.tasks.spawn(crate::tcp::serve(
                        listener,
                        route.clone(),
                        (self.limits, self.admission.clone()),
                        connections,
                        stop.clone(),
                    ));
                }
                Socket::Udp(socket, _) => {
                    let admission = self.admission.with_cost(UDP_FLOW_DESCRIPTORS);
                    self.tasks.spawn(crate::udp::serve(
                        socket,
                        (route.clone(), admission),
                        stop.clone(),
                    ));
                }
            }
            state.sockets.insert(
                key,
                Bound {
                    address,
                    route,
                    stop,
                    listener: held,
                },
            );
        }
        state.checks.retain(|key, check| {
            let keep = used_checks.contains(key);
            if !keep {
                check.stop.cancel();
            }
            keep
        });

        let ips_changed = state.changed.is_none() || state.static_ips != spec.static_ips;
        if ips_changed {
            state.static_ips = spec.static_ips.clone();
            state.changed = Some(SystemTime::now());
        }
        let ip_ranges = IpRanges::new(
            &state.static_ips,
            state.changed.unwrap_or_else(SystemTime::now),
        );
        let mut addresses: Vec<(Transport, SocketAddr)> = state
            .sockets
            .iter()
            .map(|(k, b)| (k.transport, b.address))
            .collect();
        addresses.sort();
        let listeners = spec
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut ports: Vec<u16> = wanted
                    .iter()
                    .filter(|(_, li)| *li == i)
                    .filter_map(|(k, _)| state.sockets.get(k).map(|b| b.address.port()))
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                ListenerView {
                    transport: l.transport,
                    ports,
                    route: routes[i].clone(),
                }
            })
            .collect();
        let view = Arc::new(View {
            name: spec.name.clone(),
            addresses,
            listeners,
            ip_ranges: ip_ranges.clone(),
        });
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        if ips_changed {
            if let Some(url) = spec.webhook.clone() {
                self.tasks.spawn(async move {
                    match crate::ip_ranges::notify(&url, &ip_ranges).await {
                        Ok(()) => tracing::info!(%url, sync_token = %ip_ranges.sync_token, "ip-ranges webhook called"),
                        Err(error) => tracing::warn!(%error, "ip-ranges webhook failed"),
                    }
                });
            }
        }
        Ok(ips_changed)
    }

    /// The status and counter of the check `key`, started if new.
    fn check(
        &self,
        state: &mut State,
        used: &mut HashSet<CheckKey>,
        key: CheckKey,
    ) -> (Arc<Status>, Arc<AtomicU64>) {
        used.insert(key.clone());
        let check = state.checks.entry(key.clone()).or_insert_with(|| {
            // Healthy until checks say otherwise, as Global Accelerator treats new endpoints.
            let status = Arc::new(Status::new(Verdict::Healthy));
            let stop = self.shutdown.child_token();
            self.tasks.spawn(health::run(
                key.address,
                status.clone(),
                (key.check.clone(), key.proxy),
                stop.clone(),
            ));
            Check {
                status,
                connections: Arc::default(),
                stop,
            }
        });
        (check.status.clone(), check.connections.clone())
    }
}

/// A socket bound for a listener, not yet serving.
enum Socket {
    Tcp(TcpListener, SocketAddr),
    Udp(UdpSocket, SocketAddr),
}

impl Socket {
    /// Binds `address` as tokio's `bind` does (`SO_REUSEADDR` on TCP, a backlog of 1024),
    /// and with `IP_FREEBIND` when `freebind` is set.
    fn bind(transport: Transport, address: SocketAddr, freebind: bool) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Type};
        let (kind, protocol) = match transport {
            Transport::Tcp => (Type::STREAM, Protocol::TCP),
            Transport::Udp => (Type::DGRAM, Protocol::UDP),
        };
        let socket = socket2::Socket::new(Domain::for_address(address), kind, Some(protocol))?;
        if freebind {
            match address {
                SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
                SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
            }
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(match transport {
            Transport::Tcp => {
                socket.set_reuse_address(true)?;
                socket.bind(&address.into())?;
                socket.listen(1024)?;
                let l = TcpListener::from_std(socket.into())?;
                let a = l.local_addr()?;
                Self::Tcp(l, a)
            }
            Transport::Udp => {
                socket.bind(&address.into())?;
                let s = UdpSocket::from_std(socket.into())?;
                let a = s.local_addr()?;
                Self::Udp(s, a)
            }
        })
    }

    fn address(&self) -> SocketAddr {
        match self {
            Self::Tcp(_, a) | Self::Udp(_, a) => *a,
        }
    }
}

/// `mutex` locked, poisoned or not: what it guards stays consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
