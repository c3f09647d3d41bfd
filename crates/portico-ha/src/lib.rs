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
//! Layout:
//! - [`spec`]: one node's part of the file, and the checks of the host;
//! - [`keepalived`]: mode `vrrp`: configuration, track file, state changes;
//! - [`bird`]: mode `bgp`: configuration and control socket;
//! - [`daemon`]: the daemon as a supervised child;
//! - [`addresses`]: the static IPs on `lo`, for mode `bgp`.

pub mod addresses;
pub mod bird;
mod daemon;
pub mod keepalived;
pub mod spec;

pub use keepalived::VrrpState;
pub use spec::HaSpec;

use portico_config::HaMode;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> HaError + '_ {
    move |source| HaError::File {
        path: path.display().to_string(),
        source,
    }
}

/// How long [`Ha::release`] waits for the daemon to confirm.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the daemon's own view (BGP sessions, VRRP masters) is read for status.
const DAEMON_POLL: Duration = Duration::from_secs(1);

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
    /// VRRP: keepalived's last data dump, per static IP.
    dumped: Vec<keepalived::Dumped>,
    /// The last error applying the verdict.
    error: Option<String>,
}

/// The daemon of a running edge node.
pub struct Ha {
    spec: HaSpec,
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
    /// [`Ha::stop`]. The node holds or announces nothing until the first serving verdict.
    pub async fn start(
        spec: HaSpec,
        health: watch::Receiver<NodeHealth>,
    ) -> Result<Arc<Self>, HaError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(file_error(&spec.run_dir))?;
        let program = match spec.mode {
            HaMode::Vrrp => {
                let files = keepalived::Files::in_dir(&spec.run_dir);
                write_atomic(&files.health, "1\n")?;
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
                    quiet: &["data for process"],
                }
            }
            HaMode::Bgp => {
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
                ..State::default()
            }),
            spec,
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
            if let Some((index, vrrp)) = keepalived::parse_notify(&line) {
                let ip = self.spec.static_ips.get(index).copied();
                tracing::info!(static_ip = ?ip, state = vrrp.name(), "VRRP");
                if let Some(slot) = self.state().vrrp.get_mut(index) {
                    *slot = Some(vrrp);
                }
                self.changed.notify_waiters();
            }
        }
    }

    /// Asks keepalived for a data dump every second (SIGUSR1), for the master each backup
    /// hears.
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
                self.state().dumped = keepalived::parse_dump(&text, self.spec.static_ips.len());
            }
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
                    let master = state.dumped.get(i).and_then(|d| d.master);
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
                .map(|(_, (name, address))| json!({ "node": name, "address": address.to_string() }))
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
