//! The failover cases every multi-node edge test runs, whatever moves the static IPs (VRRP
//! or BGP): under a steady load, the node `edge-a` is stopped with SIGTERM, killed with
//! SIGKILL and cut off from its segment (`ip link set lan0 down`), and each time brought
//! back. What each case must hold is checked once the load has stopped, and every case's
//! figures are printed (lines starting with `HA`).

use super::Portico;
use super::load::{Expect, Load, Phase};
use super::netns::ip;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a request sends (without its final blank line).
const REQUEST: &str = "GET /hello HTTP/1.1\r\nHost: edge\r\n";

/// Longest time an address may go unanswered when a node dies or loses its link.
const RESTORED: Duration = Duration::from_secs(2);

/// Polls `condition` every 20 ms; panics after `limit`. Returns how long it took.
pub fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> bool) -> Duration {
    let began = Instant::now();
    while began.elapsed() < limit {
        if condition() {
            return began.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not reached within {limit:?}");
}

/// Whether a process of `daemon` whose files are under `dir` is running.
pub fn daemon_running(daemon: &str, dir: &str) -> bool {
    let dir = format!("{dir}/");
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmd| {
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains(daemon) && cmd.contains(&dir)
        })
    })
}

/// The nodes of a test and how to see what they do.
pub struct Edges<'a> {
    /// The topology file every node runs.
    pub config: &'a str,
    /// The same file without edge-a among the accelerator's nodes.
    pub config_without_a: &'a str,
    /// edge-a's namespace; its segment interface is `lan0`.
    pub namespace: &'a str,
    /// edge-a's daemon (`keepalived`, `bird`) and its run directory.
    pub daemon: (&'a str, &'a str),
    /// edge-a's share is served by edge-b alone (its addresses moved, its routes withdrawn).
    pub moved_away: &'a dyn Fn() -> bool,
    /// Both nodes carry their share.
    pub settled: &'a dyn Fn() -> bool,
    /// Puts back what `ip link set lan0 up` does not (routes through the link).
    pub after_relink: &'a dyn Fn(),
}

impl Edges<'_> {
    /// Waits for edge-a's share to move to edge-b; how long it took.
    fn moved(&self) -> Duration {
        wait_for(
            "edge-b carries edge-a's share",
            Duration::from_secs(5),
            self.moved_away,
        )
    }
}

/// Runs every case against `targets` with `a`, edge-a's running portico, and asserts what
/// each must hold.
pub fn run(targets: &[SocketAddr], edges: &Edges, mut a: Portico) {
    let mut load = Load::start(targets, 3, Duration::from_millis(10), REQUEST);
    let mut phases = Vec::new();
    let mut phase = |name: String, from: Instant, expect: Expect| {
        phases.push(Phase {
            name,
            from,
            to: Instant::now(),
            expect,
        });
    };
    let (daemon, dir) = edges.daemon;

    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    phase("steady".into(), from, Expect::NoFailure);

    // SIGTERM: edge-a gives its share up first, then drains; nothing is lost.
    let from = Instant::now();
    let status = a.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        (edges.moved_away)(),
        "edge-a's share moved before it exited"
    );
    assert!(
        !daemon_running(daemon, dir),
        "{daemon} stopped with portico"
    );
    std::thread::sleep(Duration::from_millis(500));
    phase("SIGTERM of edge-a".into(), from, Expect::NoFailure);

    let a = back(edges, &mut phase, "edge-a back after SIGTERM");

    // kill -9: the daemon goes with portico (its parent-death signal) and says so on its way.
    let from = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    let took = edges.moved();
    std::thread::sleep(Duration::from_secs(1));
    phase(
        format!("kill -9 of edge-a (its share moved after {took:?})"),
        from,
        Expect::RestoredWithin(RESTORED),
    );
    // keepalived takes about a second to stop.
    wait_for(
        &format!("no {daemon} outlives a killed portico"),
        Duration::from_secs(5),
        || !daemon_running(daemon, dir),
    );
    drop(a);

    let a = back(edges, &mut phase, "edge-a back after kill -9");

    // Cut link: edge-a's daemon goes silent; edge-b (VRRP) or the router's BFD (BGP)
    // notices within a second.
    let from = Instant::now();
    ip(&["-n", edges.namespace, "link", "set", "lan0", "down"]);
    let took = edges.moved();
    std::thread::sleep(Duration::from_secs(1));
    phase(
        format!("link of edge-a cut (its share moved after {took:?})"),
        from,
        Expect::RestoredWithin(RESTORED),
    );
    assert!(
        took <= Duration::from_secs(1),
        "a silent node is noticed within a second: {took:?}"
    );
    let from = Instant::now();
    ip(&["-n", edges.namespace, "link", "set", "lan0", "up"]);
    (edges.after_relink)();
    share_back(edges, &mut phase, from, "link of edge-a back");

    // A reload whose file no longer lists edge-a: it leaves as gracefully as on SIGTERM.
    let from = Instant::now();
    let mut a = a;
    std::fs::write(&a.config_file, edges.config_without_a).unwrap();
    a.reload();
    let status = super::wait_bounded(&mut a.child, Duration::from_secs(20))
        .expect("edge-a left within 20 s of the reload that removed it");
    assert!(status.success(), "{status:?}");
    assert!(
        (edges.moved_away)(),
        "edge-a's share moved before it exited"
    );
    std::thread::sleep(Duration::from_millis(500));
    phase("reload that removes edge-a".into(), from, Expect::NoFailure);

    load.stop();
    let broken = load.check(&phases);
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Starts edge-a again and records the phase until it carries its share.
fn back(edges: &Edges, phase: &mut impl FnMut(String, Instant, Expect), name: &str) -> Portico {
    let from = Instant::now();
    let a = Portico::start_in(edges.config, Some(edges.namespace), Some("edge-a"));
    share_back(edges, phase, from, name);
    a
}

/// Waits for edge-a to carry its share again and records the phase `name` begun at
/// `from`: nothing may fail (VRRP: the holder drains each address before it hands it back;
/// BGP: the connections the router's rehash moves are passed on, the second chance).
fn share_back(
    edges: &Edges,
    phase: &mut impl FnMut(String, Instant, Expect),
    from: Instant,
    name: &str,
) {
    let took = wait_for(
        "edge-a carries its share again",
        Duration::from_secs(15),
        edges.settled,
    );
    std::thread::sleep(Duration::from_millis(500));
    phase(
        format!("{name} (its share back after {took:?})"),
        from,
        Expect::NoFailure,
    );
}
