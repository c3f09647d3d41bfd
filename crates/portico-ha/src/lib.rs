//! Static IPs that outlive any one host: the accelerator's nodes hold or announce them
//! through keepalived (VRRP) or BIRD (BGP), and portico's own health decides.
//!
//! portico writes the daemon's configuration for its node from the topology file, runs the
//! daemon as a child tied to its own life ([`daemon`]), and feeds it one verdict: whether
//! this node can serve (its listeners are bound and an endpoint group has a healthy
//! endpoint). In mode `vrrp` the verdict is a track file that keepalived watches; in mode
//! `bgp` it enables or disables the static protocol that holds the announced routes. There
//! is no consensus or routing code here: the daemons are the engine.
//!
//! Stopping is in two steps. [`Ha::release`] gives the addresses up (a priority-0
//! advertisement, a BGP withdrawal) and returns once the daemon confirms it, while the edge
//! still serves what reaches it; [`Ha::stop`] ends the daemon after the edge has drained.
//!
//! In mode `vrrp` a node that holds an address another node prefers hands it back once it
//! hears that node present for `preempt_delay`: the [`Edge`] drains the address first, so
//! that no connection is open here when its packets start going to the other node (see
//! [`keepalived`]).
//!
//! Layout:
//! - [`spec`]: one node's part of the file, and the checks of the host;
//! - [`keepalived`]: mode `vrrp`: configuration, track file, state changes;
//! - [`bird`]: mode `bgp`: configuration and control socket;
//! - [`daemon`]: the daemon as a supervised child;
//! - [`addresses`]: the static IPs on `lo`, for mode `bgp`;
//! - `second_chance`: mode `bgp`: packets of another node's connections go on to it.

pub mod addresses;
pub mod bird;
mod daemon;
pub mod keepalived;
mod second_chance;
pub mod spec;

pub use keepalived::VrrpState;
pub use spec::HaSpec;

use portico_config::HaMode;
use serde_json::{Value, json};
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Whether this node can serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// It can: its listeners are bound and an endpoint group has a healthy endpoint.
    pub serving: bool,
    /// Why, in words.
    pub reason: String,
}

/// A future the [`Edge`] returns.
pub type EdgeFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the edge does while this node hands one static IP over to another node.
pub trait Edge: Send + Sync + 'static {
    /// Stops new connections to `ip` without refusing them, asks the open ones to finish,
    /// and returns once they have, or after a bounded wait.
    fn drain(&self, ip: IpAddr) -> EdgeFuture<'_>;
    /// Takes new connections to `ip` again: the address may come back here.
    fn resume(&self, ip: IpAddr) -> EdgeFuture<'_>;
}

/// What could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// A file of the run directory could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The static IPs could not be put on `lo`.
    #[error("cannot put the static IPs on lo: {0}")]
    Addresses(String),
    /// The second chance's nftables table could not be written.
    #[error("accelerator.ha.second_chance: {0}")]
    SecondChance(String),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> HaError + '_ {
    move |source| HaError::File {
        path: path.display().to_string(),
        source,
    }
}

/// How long [`Ha::release`] waits for the daemon to confirm.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the daemon's own view (BGP sessions, VRRP masters) is read.
const DAEMON_POLL: Duration = Duration::from_secs(1);

/// In mode `bgp`, how long a node that starts waits for its sessions to the other edge
/// nodes before it announces anything: it must know which nodes are live to pass their
/// connections' packets on to them.
const NODES_WAIT: Duration = Duration::from_secs(5);

/// After a handed-over address left this node, how long packets already on their way here
/// (a client that has not yet seen the new holder's ARP) still find it draining.
const HAND_OVER_SETTLE: Duration = Duration::from_millis(200);

/// What the daemon and portico's verdict look like now.
#[derive(Debug, Default)]
struct State {
    pid: Option<u32>,
    restarts: u32,
    health: Option<NodeHealth>,
    released: bool,
    /// VRRP: each static IP's instance state.
    vrrp: Vec<Option<VrrpState>>,
    /// BGP: the routes are enabled.
    announced: bool,
    /// BGP: the rows of `show protocols`.
    protocols: Vec<bird::ProtocolState>,
    /// BGP: per static IP, the nodes that announce it (by index), as BIRD hears them.
    announcers: Vec<Vec<usize>>,
    /// BGP: the live edge nodes (this one and those whose session is up), as the second
    /// chance's table has them.
    live: Vec<usize>,
    /// BGP: every session to another edge node is up, or [`NODES_WAIT`] has passed.
    nodes_ready: bool,
    /// VRRP: keepalived's last data dump.
    dumped: keepalived::Dump,
    /// VRRP: each node's presence instance state here.
    presence: Vec<Option<VrrpState>>,
    /// VRRP: per node, since when this node has heard it present.
    present_since: Vec<Option<Instant>>,
    /// VRRP: the static IP being handed over, by index.
    handing_over: Option<usize>,
    /// The last error applying the verdict.
    error: Option<String>,
}

/// The daemon of a running edge node.
pub struct Ha {
    spec: HaSpec,
    edge: Arc<dyn Edge>,
    started: Instant,
    state: Mutex<State>,
    /// Wakes the task that applies the verdict (a release, a daemon start).
    wake: Notify,
    /// Wakes whoever waits for a state change of the daemon.
    changed: Notify,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("node", &self.spec.node)
            .finish_non_exhaustive()
    }
}

impl Ha {
    /// Writes the daemon's configuration, starts it, and keeps feeding it `health` until
    /// [`Ha::stop`]; `edge` drains an address this node hands over. The node holds or
    /// announces nothing until the first serving verdict.
    pub async fn start(
        spec: HaSpec,
        health: watch::Receiver<NodeHealth>,
        edge: Arc<dyn Edge>,
    ) -> Result<Arc<Self>, HaError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(file_error(&spec.run_dir))?;
        let program = match spec.mode {
            HaMode::Vrrp => {
                let files = keepalived::Files::in_dir(&spec.run_dir);
                write_atomic(&files.health, "1\n")?;
                for index in 0..spec.static_ips.len() {
                    write_atomic(&files.hold(index), "0\n")?;
                }
                std::fs::write(&files.config, keepalived::render(&spec, &files))
                    .map_err(file_error(&files.config))?;
                make_fifo(&files.notify)?;
                daemon::Program {
                    name: "keepalived",
                    node: spec.node.clone(),
                    path: spec.daemon.clone(),
                    args: files.args(),
                    // Its data dumps (SIGUSR1) go to the run directory, not a shared /tmp.
                    env: vec![("TMPDIR".to_owned(), spec.run_dir.display().to_string())],
                    // Data dumps every second.
                    quiet: &["data for process"],
                }
            }
            HaMode::Bgp => {
                // Before anything is announced, so that conntrack sees every connection.
                if second_chance::applies(&spec) {
                    second_chance::apply(&spec, &[spec.me])
                        .await
                        .map_err(HaError::SecondChance)?;
                }
                addresses::add(&spec.static_ips).map_err(HaError::Addresses)?;
                let files = bird::Files::in_dir(&spec.run_dir);
                std::fs::write(&files.config, bird::render(&spec))
                    .map_err(file_error(&files.config))?;
                let _ = std::fs::remove_file(&files.socket);
                daemon::Program {
                    name: "bird",
                    node: spec.node.clone(),
                    path: spec.daemon.clone(),
                    args: files.args(),
                    env: Vec::new(),
                    quiet: &[],
                }
            }
        };
        let ha = Arc::new(Self {
            state: Mutex::new(State {
                vrrp: vec![None; spec.static_ips.len()],
                presence: vec![None; spec.nodes.len()],
                present_since: vec![None; spec.nodes.len()],
                live: vec![spec.me],
                ..State::default()
            }),
            spec,
            edge,
            started: Instant::now(),
            wake: Notify::new(),
            changed: Notify::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        ha.tasks
            .spawn(daemon::supervise(program, events_tx, ha.stop.clone()));
        ha.tasks.spawn(ha.clone().follow_daemon(events));
        ha.tasks.spawn(ha.clone().apply_health(health));
        if ha.spec.mode == HaMode::Vrrp {
            ha.tasks.spawn(ha.clone().read_notify());
            ha.tasks.spawn(ha.clone().poll_dumps());
            ha.tasks.spawn(ha.clone().hand_back());
        } else {
            ha.tasks.spawn(ha.clone().poll_protocols());
        }
        tracing::info!(
            mode = ha.spec.mode.name(),
            node = %ha.spec.node,
            run_dir = %ha.spec.run_dir.display(),
            "high availability started"
        );
        Ok(ha)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the static IPs up for good (VRRP: fault, so a priority-0 advertisement; BGP:
    /// withdrawn) and returns once the daemon confirms it, or after a few seconds.
    pub async fn release(&self) {
        self.state().released = true;
        self.wake.notify_one();
        let confirmed = tokio::time::timeout(RELEASE_TIMEOUT, async {
            loop {
                let changed = self.changed.notified();
                if self.released_everything() {
                    return;
                }
                changed.await;
            }
        })
        .await;
        match confirmed {
            Ok(()) => tracing::info!("static IPs given up"),
            Err(_) => tracing::warn!("the daemon did not confirm that the static IPs are given up"),
        }
    }

    fn released_everything(&self) -> bool {
        let state = self.state();
        match self.spec.mode {
            HaMode::Vrrp => state
                .vrrp
                .iter()
                .all(|s| !matches!(s, Some(VrrpState::Master))),
            HaMode::Bgp => !state.announced && state.error.is_none(),
        }
    }

    /// Stops the daemon (it removes what it holds) and, in mode `bgp`, takes the static IPs
    /// off `lo`.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if self.spec.mode == HaMode::Bgp {
            if let Err(error) = addresses::remove(&self.spec.static_ips) {
                tracing::warn!(%error, "could not take the static IPs off lo");
            }
            if second_chance::applies(&self.spec) {
                if let Err(error) = second_chance::remove(&self.spec).await {
                    tracing::warn!(%error, "could not remove the second chance's table");
                }
            }
        }
    }

    /// Follows the supervisor's reports; a daemon (re)start gets the current verdict.
    async fn follow_daemon(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<daemon::Event>) {
        while let Some(event) = events.recv().await {
            {
                let mut state = self.state();
                match event {
                    daemon::Event::Started(pid) => state.pid = Some(pid),
                    daemon::Event::Exited(status) => {
                        tracing::warn!(%status, "the daemon is down: this node holds and announces nothing until it is back");
                        state.pid = None;
                        state.restarts += 1;
                        state.announced = false;
                        state.vrrp.iter_mut().for_each(|s| *s = None);
                    }
                }
            }
            self.wake.notify_one();
            self.changed.notify_waiters();
        }
    }

    /// Hands every new verdict to the daemon; after a release, "not serving" for good.
    async fn apply_health(self: Arc<Self>, mut health: watch::Receiver<NodeHealth>) {
        let mut retry = tokio::time::interval(Duration::from_millis(200));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let verdict = health.borrow_and_update().clone();
            let serving = verdict.serving && !self.state().released;
            let applied = self.apply(serving).await;
            {
                let mut state = self.state();
                if state.health.as_ref() != Some(&verdict) {
                    tracing::info!(serving = verdict.serving, reason = %verdict.reason, "node health");
                }
                state.health = Some(verdict);
                state.error = applied.err();
            }
            self.changed.notify_waiters();
            let failed = self.state().error.is_some();
            tokio::select! {
                () = self.stop.cancelled() => return,
                changed = health.changed() => if changed.is_err() { return },
                () = self.wake.notified() => {}
                _ = retry.tick(), if failed => {}
            }
        }
    }

    /// Tells the daemon whether this node serves.
    async fn apply(&self, serving: bool) -> Result<(), String> {
        match self.spec.mode {
            HaMode::Vrrp => {
                let files = keepalived::Files::in_dir(&self.spec.run_dir);
                write_atomic(&files.health, if serving { "0\n" } else { "1\n" })
                    .map_err(|e| e.to_string())
            }
            HaMode::Bgp => {
                if self.state().pid.is_none() {
                    return Err("bird is not running".to_owned());
                }
                // Nothing is announced before the other edge nodes are known.
                let serving = serving && self.state().nodes_ready;
                let socket = bird::Files::in_dir(&self.spec.run_dir).socket;
                let verb = if serving { "enable" } else { "disable" };
                for (_, protocol) in bird::static_families(&self.spec.static_ips) {
                    bird::command(&socket, &format!("{verb} {protocol}"))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let mut state = self.state();
                if state.announced != serving {
                    tracing::info!(
                        announced = serving,
                        "static IPs {}",
                        if serving { "announced" } else { "withdrawn" }
                    );
                }
                state.announced = serving;
                Ok(())
            }
        }
    }

    /// Reads keepalived's state changes from the notify FIFO.
    async fn read_notify(self: Arc<Self>) {
        use tokio::io::AsyncBufReadExt;
        let path = keepalived::Files::in_dir(&self.spec.run_dir).notify;
        // Opened for reading and writing, so that it never reads an end of file while
        // keepalived restarts.
        let fifo = match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
        {
            Ok(fifo) => fifo,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read keepalived's notify FIFO");
                return;
            }
        };
        let mut lines = tokio::io::BufReader::new(fifo).lines();
        loop {
            let line = tokio::select! {
                () = self.stop.cancelled() => return,
                line = lines.next_line() => line,
            };
            let Ok(Some(line)) = line else { return };
            match keepalived::parse_notify(&line) {
                Some((keepalived::Instance::Address(index), vrrp)) => {
                    let ip = self.spec.static_ips.get(index).copied();
                    tracing::info!(static_ip = ?ip, state = vrrp.name(), "VRRP");
                    let mut state = self.state();
                    if let Some(slot) = state.vrrp.get_mut(index) {
                        *slot = Some(vrrp);
                    }
                    // An address that came here from the node that prefers it (given up,
                    // or that node died) goes back only once that node is heard present
                    // anew for the whole delay.
                    let preferred = self.spec.preferred_node(index);
                    if vrrp == VrrpState::Master && preferred != self.spec.me {
                        state.present_since[preferred] = None;
                    }
                    drop(state);
                    self.changed.notify_waiters();
                }
                Some((keepalived::Instance::Node(index), vrrp)) => {
                    let mut state = self.state();
                    if let Some(slot) = state.presence.get_mut(index) {
                        *slot = Some(vrrp);
                        // Only a backup hears the node: anything else, and it is gone now.
                        if vrrp != VrrpState::Backup {
                            state.present_since[index] = None;
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Asks keepalived for a data dump every second (SIGUSR1), for the master each backup
    /// hears and the nodes present.
    async fn poll_dumps(self: Arc<Self>) {
        let path = self.spec.run_dir.join(keepalived::DUMP_FILE);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(DAEMON_POLL) => {}
            }
            let Some(pid) = self.state().pid else {
                continue;
            };
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).is_err() {
                continue;
            }
            // keepalived's VRRP process writes it at once; give it a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let read = path.clone();
            if let Ok(Ok(text)) =
                tokio::task::spawn_blocking(move || std::fs::read_to_string(read)).await
            {
                let dump = keepalived::parse_dump(
                    &text,
                    self.spec.static_ips.len(),
                    self.spec.nodes.len(),
                );
                let mut state = self.state();
                for (index, (name, address)) in self.spec.nodes.iter().enumerate() {
                    // The dump says who masters the node's instance; a state change since
                    // (the FIFO is at once) that made this node anything but its backup
                    // says it is gone.
                    let present = index != self.spec.me
                        && state.presence[index].is_none_or(|s| s == VrrpState::Backup)
                        && dump.present(index, *address);
                    let since = &mut state.present_since[index];
                    if present != since.is_some() {
                        tracing::info!(node = %name, present, "VRRP: node {}", if present { "present" } else { "gone" });
                        *since = present.then(Instant::now);
                    }
                }
                state.dumped = dump;
            }
        }
    }

    /// Hands each address this node holds back to its preferred node, once that node has
    /// been present for `preempt_delay`.
    async fn hand_back(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Some(index) = self.due_hand_back() {
                self.hand_over(index).await;
            }
        }
    }

    /// The first address this node holds and should hand back now.
    fn due_hand_back(&self) -> Option<usize> {
        let state = self.state();
        if state.released || !state.health.as_ref().is_some_and(|h| h.serving) {
            return None;
        }
        (0..self.spec.static_ips.len()).find(|&index| {
            let preferred = self.spec.preferred_node(index);
            state.vrrp[index] == Some(VrrpState::Master)
                && preferred != self.spec.me
                && state.present_since[preferred]
                    .is_some_and(|since| since.elapsed() >= self.spec.preempt_delay)
        })
    }

    /// Whether node `index` is heard present now.
    fn present(&self, index: usize) -> bool {
        self.state().present_since[index].is_some()
    }

    /// Hands static IP `index` over: the edge drains it, its instance faults (a priority-0
    /// advertisement: the preferred node, a backup, takes it at once), and once it has left
    /// and packets on their way have arrived, the instance is a backup again.
    async fn hand_over(&self, index: usize) {
        let began = Instant::now();
        let ip = self.spec.static_ips[index];
        let to = &self.spec.nodes[self.spec.preferred_node(index)].0;
        tracing::info!(static_ip = %ip, to = %to, "handing the address back to the node that prefers it");
        self.state().handing_over = Some(index);
        self.edge.drain(ip).await;
        let drained = began.elapsed();
        let hold = keepalived::Files::in_dir(&self.spec.run_dir).hold(index);
        // The drain took up to a second: the node must still be there to take it.
        let present = self.present(self.spec.preferred_node(index)) && !self.state().released;
        let write = if present {
            write_atomic(&hold, "1\n").map_err(|e| e.to_string())
        } else {
            Err(format!("{to} is gone: the address stays here"))
        };
        let result = match write {
            Ok(()) => {
                let left = tokio::time::timeout(RELEASE_TIMEOUT, async {
                    loop {
                        let changed = self.changed.notified();
                        if self.state().vrrp[index] != Some(VrrpState::Master) {
                            return;
                        }
                        changed.await;
                    }
                })
                .await;
                tokio::time::sleep(HAND_OVER_SETTLE).await;
                write_atomic(&hold, "0\n")
                    .map_err(|e| e.to_string())
                    .and(left.map_err(|_| "keepalived did not give the address up".to_owned()))
            }
            Err(error) => Err(error),
        };
        self.edge.resume(ip).await;
        self.state().handing_over = None;
        match result {
            Ok(()) => tracing::info!(
                static_ip = %ip,
                to = %to,
                drained_ms = drained.as_millis() as u64,
                took_ms = began.elapsed().as_millis() as u64,
                "address handed back"
            ),
            Err(error) => tracing::warn!(static_ip = %ip, %error, "hand-over failed"),
        }
    }

    /// Reads BIRD's protocols every second, for status.
    async fn poll_protocols(self: Arc<Self>) {
        let socket = bird::Files::in_dir(&self.spec.run_dir).socket;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(DAEMON_POLL) => {}
            }
            if self.state().pid.is_none() {
                continue;
            }
            if let Ok(lines) = bird::command(&socket, "show protocols").await {
                self.state().protocols = bird::parse_protocols(&lines);
                self.follow_nodes().await;
            }
            let mut announcers = Vec::with_capacity(self.spec.static_ips.len());
            for ip in &self.spec.static_ips {
                let prefix = host_prefix(*ip);
                let lines = bird::command(&socket, &format!("show route {ip}/{prefix}"))
                    .await
                    .unwrap_or_default();
                announcers.push(bird::announcers(&lines, self.spec.me));
            }
            self.state().announcers = announcers;
        }
    }

    /// Keeps the second chance's table on the live edge nodes, and says when they are known.
    async fn follow_nodes(&self) {
        let sessions: Vec<(usize, bool)> = {
            let state = self.state();
            self.spec
                .nodes
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != self.spec.me)
                .filter_map(|(index, _)| {
                    let name = bird::node_session(index);
                    // Nodes of the other family have no session.
                    let row = state.protocols.iter().find(|p| p.name == name)?;
                    Some((index, row.state == "up"))
                })
                .collect()
        };
        let mut live: Vec<usize> = sessions
            .iter()
            .filter(|(_, up)| *up)
            .map(|(index, _)| *index)
            .chain([self.spec.me])
            .collect();
        live.sort_unstable();
        if second_chance::applies(&self.spec) && self.state().live != live {
            match second_chance::apply(&self.spec, &live).await {
                Ok(()) => {
                    let names: Vec<&str> = live
                        .iter()
                        .map(|n| self.spec.nodes[*n].0.as_str())
                        .collect();
                    tracing::info!(live = ?names, "second chance: packets of the other live nodes' connections go on to them");
                    self.state().live = live;
                }
                Err(error) => {
                    tracing::warn!(%error, "second chance: cannot rewrite the table");
                    return;
                }
            }
        }
        let ready = sessions.iter().all(|(_, up)| *up) || self.started.elapsed() >= NODES_WAIT;
        let mut state = self.state();
        if ready && !state.nodes_ready {
            state.nodes_ready = true;
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The node's high availability as `portico status` shows it.
    pub fn status(&self) -> Value {
        let state = self.state();
        let spec = &self.spec;
        let static_ips: Vec<Value> = spec
            .static_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| match spec.mode {
                HaMode::Vrrp => {
                    let vrrp = state.vrrp.get(i).copied().flatten();
                    let master = state.dumped.addresses.get(i).and_then(|d| d.master);
                    let holder = match vrrp {
                        Some(VrrpState::Master) => Some(spec.node.clone()),
                        Some(VrrpState::Backup) => master
                            .map(|m| spec.node_at(m).map_or_else(|| m.to_string(), str::to_owned)),
                        _ => None,
                    };
                    json!({
                        "address": ip.to_string(),
                        "state": vrrp.map(VrrpState::name),
                        "held_here": vrrp == Some(VrrpState::Master),
                        "held_by": holder,
                        "priority": spec.priority(i),
                        "preferred_node": spec.nodes[spec.preferred_node(i)].0,
                        "handing_over": state.handing_over == Some(i),
                        "virtual_router_id": usize::from(spec.virtual_router_id) + i,
                    })
                }
                HaMode::Bgp => json!({
                    "address": ip.to_string(),
                    "announced_here": state.announced,
                    "announced_by": state.announcers.get(i).map(|nodes| {
                        nodes
                            .iter()
                            .filter_map(|n| spec.nodes.get(*n).map(|(name, _)| name.clone()))
                            .collect::<Vec<_>>()
                    }),
                }),
            })
            .collect();
        let peers: Vec<Value> = match spec.mode {
            HaMode::Vrrp => spec
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != spec.me)
                .map(|(i, (name, address))| {
                    json!({
                        "node": name,
                        "address": address.to_string(),
                        "present": state.present_since[i].is_some(),
                    })
                })
                .collect(),
            HaMode::Bgp => spec
                .peers
                .iter()
                .enumerate()
                .map(|(i, peer)| {
                    let row = state
                        .protocols
                        .iter()
                        .find(|p| p.name == bird::peer_name(i));
                    json!({
                        "address": peer.address.to_string(),
                        "asn": peer.asn,
                        "state": row.map(|r| r.state.clone()),
                        "info": row.map(|r| r.info.clone()),
                    })
                })
                .collect(),
        };
        let second_chance = (spec.mode == HaMode::Bgp).then(|| {
            let applies = second_chance::applies(spec);
            json!({
                "enabled": applies,
                "live": applies.then(|| state.live.iter().map(|n| spec.nodes[*n].0.clone()).collect::<Vec<_>>()),
                "next": second_chance::next(spec.me, &state.live)
                    .filter(|_| applies)
                    .map(|n| spec.nodes[n].0.clone()),
            })
        });
        json!({
            "mode": spec.mode.name(),
            "node": spec.node,
            "address": spec.address().to_string(),
            "daemon": {
                "program": spec.daemon,
                "pid": state.pid,
                "running": state.pid.is_some(),
                "restarts": state.restarts,
            },
            "health": state.health.as_ref().map(|h| json!({ "serving": h.serving, "reason": h.reason })),
            "released": state.released,
            "error": state.error,
            "static_ips": static_ips,
            "peers": peers,
            "second_chance": second_chance,
        })
    }
}

/// The prefix length of `ip` alone: /32 or /128.
pub(crate) fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Writes `text` to `path` by renaming a new file over it, so that a reader (keepalived
/// watches with inotify) never sees it half-written.
fn write_atomic(path: &Path, text: &str) -> Result<(), HaError> {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).map_err(file_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(file_error(path))
}

/// A FIFO at `path`, made anew.
fn make_fifo(path: &Path) -> Result<(), HaError> {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    let _ = std::fs::remove_file(path);
    mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .map_err(|e| file_error(path)(e.into()))
}
