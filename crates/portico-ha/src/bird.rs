//! Mode `bgp`: BIRD 2's configuration for one node, and its control socket.
//!
//! Every static IP is a route of one static protocol, `portico_ips` (`portico_ips6` for
//! IPv6), exported to every peer with this node as the next hop; the router spreads flows
//! over the nodes that announce them by ECMP. The edge nodes also hold iBGP sessions with
//! each other (`nodeN`, the file's N-th node) that carry only these routes and install
//! nothing, so that each node can say which nodes announce each static IP. The protocols start disabled: portico enables
//! them while the node can serve and disables them when it cannot or is stopping, and BIRD
//! withdraws the routes. Nothing is exported into this host's own routing table. BFD to the
//! peers (on by default) takes a dead node's routes away within three BFD intervals; without
//! it, the BGP hold time (3 s) does.
//!
//! The control socket speaks BIRD's CLI protocol (`doc/prog-intro`: four-digit codes, `-`
//! after the code on every line but the last of a reply, a space on the last).

use crate::spec::HaSpec;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The files of a BIRD node, in its run directory.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// The configuration portico writes.
    pub(crate) config: PathBuf,
    /// BIRD's control socket.
    pub(crate) socket: PathBuf,
    /// BIRD's process id.
    pub(crate) pid: PathBuf,
}

impl Files {
    /// The files in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            config: dir.join("bird.conf"),
            socket: dir.join("bird.ctl"),
            pid: dir.join("bird.pid"),
        }
    }

    /// BIRD's arguments: this configuration and socket, in the foreground.
    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            "-f".to_owned(),
            "-c".to_owned(),
            self.config.display().to_string(),
            "-s".to_owned(),
            self.socket.display().to_string(),
            "-P".to_owned(),
            self.pid.display().to_string(),
        ]
    }
}

/// The static protocols that hold the announced routes: IPv4, IPv6.
pub(crate) const PROTOCOLS: [&str; 2] = ["portico_ips", "portico_ips6"];

/// The protocol of the peer at `index`.
pub(crate) fn peer_name(index: usize) -> String {
    format!("peer{index}")
}

/// The session to the edge node at `index` of the file.
pub(crate) fn node_session(index: usize) -> String {
    format!("node{index}")
}

/// BGP's hold time when BFD is off, in seconds (keepalives every second).
const HOLD_TIME_SECONDS: u32 = 3;

/// BIRD's configuration for `spec`'s node.
pub(crate) fn render(spec: &HaSpec) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by portico for node {:?} of accelerator {:?}; rewritten at every start.",
        spec.node, spec.accelerator
    );
    let _ = writeln!(c, "log stderr all;");
    let _ = writeln!(c, "router id {};", router_id(spec));
    let _ = writeln!(c, "protocol device {{ scan time 10; }}");
    for (channel, protocol) in static_families(&spec.static_ips) {
        let _ = writeln!(
            c,
            "\nprotocol static {protocol} {{\n    {channel};\n    disabled;"
        );
        for ip in spec
            .static_ips
            .iter()
            .filter(|ip| family(**ip).1 == protocol)
        {
            let _ = writeln!(c, "    route {ip}/{} blackhole;", crate::host_prefix(*ip));
        }
        let _ = writeln!(c, "}}");
    }
    if spec.bfd {
        let ms = spec.bfd_interval.as_millis();
        let _ = writeln!(
            c,
            "\nprotocol bfd {{\n    interface \"*\" {{\n        min rx interval {ms} ms;\n        min tx interval {ms} ms;\n        idle tx interval {ms} ms;\n        multiplier 3;\n    }};\n}}"
        );
    }
    for (index, peer) in spec.peers.iter().enumerate() {
        session(&mut c, &peer_name(index), spec, (peer.address, peer.asn));
        if spec.bfd {
            let _ = writeln!(c, "    bfd on;");
        }
        // A session carries its own family; IPv6 routes go over IPv6 sessions.
        let (channel, protocol) = family(peer.address);
        let _ = writeln!(
            c,
            "    {channel} {{\n        import none;\n        export where proto = \"{protocol}\";\n        next hop self;\n    }};"
        );
        let _ = writeln!(c, "}}");
    }
    // The other edge nodes, over iBGP: each tells the others what it announces, so that
    // every node can say which nodes announce each static IP. Their routes stay in BIRD's
    // table (unreachable, below the static ones); nothing goes to the peers or the kernel.
    for (index, (_, address)) in spec.nodes.iter().enumerate() {
        if index == spec.me || address.is_ipv4() != spec.address().is_ipv4() {
            continue;
        }
        session(&mut c, &node_session(index), spec, (*address, spec.asn));
        // A dead node leaves the second chance's ring within a second.
        if spec.bfd {
            let _ = writeln!(c, "    bfd on;");
        }
        let (channel, protocol) = family(*address);
        let _ = writeln!(
            c,
            "    {channel} {{\n        import all;\n        export where proto = \"{protocol}\";\n    }};"
        );
        let _ = writeln!(c, "}}");
    }
    c
}

/// BIRD's channel for addresses of `ip`'s family, and the static protocol that holds
/// this family's static IPs.
fn family(ip: IpAddr) -> (&'static str, &'static str) {
    if ip.is_ipv4() {
        ("ipv4", PROTOCOLS[0])
    } else {
        ("ipv6", PROTOCOLS[1])
    }
}

/// The families of `ips` (channel and static protocol), IPv4 first, each once.
pub(crate) fn static_families(
    ips: &[IpAddr],
) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    let v4 = ips.iter().any(IpAddr::is_ipv4);
    let v6 = ips.iter().any(IpAddr::is_ipv6);
    [(v4, ("ipv4", PROTOCOLS[0])), (v6, ("ipv6", PROTOCOLS[1]))]
        .into_iter()
        .filter_map(|(present, pair)| present.then_some(pair))
}

/// Opens a BGP session `name` to `neighbor` (address, AS number), from this node, with
/// the timers every session of the node shares.
fn session(c: &mut String, name: &str, spec: &HaSpec, (neighbor, asn): (IpAddr, u32)) {
    let _ = writeln!(c, "\nprotocol bgp {name} {{");
    let _ = writeln!(c, "    local {} as {};", spec.address(), spec.asn);
    let _ = writeln!(c, "    neighbor {neighbor} as {asn};");
    let _ = writeln!(
        c,
        "    hold time {HOLD_TIME_SECONDS};\n    keepalive time 1;\n    connect retry time 1;\n    error wait time 1, 5;"
    );
}

/// The nodes that announce a route, from `show route PREFIX`: its own static protocol
/// (`portico_ips`) stands for node `me`, a session `nodeN` for node N.
pub(crate) fn announcers(lines: &[String], me: usize) -> Vec<usize> {
    let mut found: Vec<usize> = lines
        .iter()
        .filter_map(|line| {
            let name = line.split_once('[')?.1.split_whitespace().next()?;
            if PROTOCOLS.contains(&name) {
                Some(me)
            } else {
                name.strip_prefix("node")?.parse().ok()
            }
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// BIRD's router id: the node's address when it is IPv4, else a number from its place in
/// the file (a router id is 32 bits, unique among the peers).
fn router_id(spec: &HaSpec) -> String {
    match spec.address() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(_) => {
            let n = u32::try_from(spec.me + 1).unwrap_or(u32::MAX);
            std::net::Ipv4Addr::from(0x0A00_0000 | n).to_string()
        }
    }
}

/// What BIRD's control socket answered.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached or broke.
    #[error("BIRD's control socket: {0}")]
    Io(#[from] std::io::Error),
    /// BIRD refused the command.
    #[error("BIRD refused {command:?}: {reply}")]
    Refused {
        /// The command.
        command: String,
        /// BIRD's reply.
        reply: String,
    },
    /// The reply was longer than a reply may be.
    #[error("BIRD's reply to {0:?} is too long")]
    TooLong(String),
}

/// Longest reply read from BIRD, in bytes.
const MAX_REPLY: usize = 256 * 1024;

/// One command on BIRD's control socket at `socket`: the reply's lines, without their
/// codes. A reply whose last code is 8xxx or 9xxx (runtime or syntax error) is refused.
pub(crate) async fn command(socket: &Path, command: &str) -> Result<Vec<String>, ControlError> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    // The greeting: `0001 BIRD 2.0.12 ready.`
    read_reply(&mut lines, command).await?;
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let (code, reply) = read_reply(&mut lines, command).await?;
    if code >= 8000 {
        return Err(ControlError::Refused {
            command: command.to_owned(),
            reply: reply.join(" "),
        });
    }
    Ok(reply)
}

/// Reads one reply: lines until one whose code is followed by a space. Returns the last
/// code and every line's text.
async fn read_reply(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    command: &str,
) -> Result<(u32, Vec<String>), ControlError> {
    let mut text = Vec::new();
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        total += line.len();
        if total > MAX_REPLY {
            return Err(ControlError::TooLong(command.to_owned()));
        }
        let (code, last, rest) = parse_line(line.trim_end_matches(['\r', '\n']));
        text.push(rest.to_owned());
        if last {
            return Ok((code.unwrap_or(0), text));
        }
    }
}

/// One line of a reply: its code (none on a continuation line that starts with a space),
/// whether it is the last, and its text.
fn parse_line(line: &str) -> (Option<u32>, bool, &str) {
    let code = line
        .get(..4)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok());
    match (code, line.as_bytes().get(4)) {
        (Some(code), Some(b' ')) => (Some(code), true, &line[5..]),
        (Some(code), None) => (Some(code), true, ""),
        (Some(code), Some(b'-')) => (Some(code), false, &line[5..]),
        _ => (None, false, line.strip_prefix(' ').unwrap_or(line)),
    }
}

/// One line of `show protocols`: name and state, and what BIRD says of it (`Established`,
/// `Active  Socket: Connection refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolState {
    /// The protocol's name.
    pub name: String,
    /// `up`, `down`, `start`…
    pub state: String,
    /// BIRD's info column.
    pub info: String,
}

/// The rows of `show protocols`.
pub(crate) fn parse_protocols(lines: &[String]) -> Vec<ProtocolState> {
    // Columns: Name Proto Table State Since Info; Since is a time (`12:00:01.123`) or a
    // date and a time.
    lines
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 5 || words[0] == "Name" {
                return None;
            }
            let since_end = if words.get(5).is_some_and(|w| w.contains(':')) {
                6
            } else {
                5
            };
            Some(ProtocolState {
                name: words[0].to_owned(),
                state: words[3].to_owned(),
                info: words.get(since_end..).unwrap_or_default().join(" "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(bfd: bool) -> HaSpec {
        let text = format!(
            r#"
[accelerator]
name = "acc"
static_ips = ["10.9.1.1", "10.9.1.2", "2001:db8::1"]
listeners = [{{ port = 80 }}]
nodes = [
  {{ name = "a", address = "10.9.0.2" }},
  {{ name = "b", address = "10.9.0.6", peers = [{{ address = "10.9.0.5", asn = 65000 }}, {{ address = "2001:db8:f::1", asn = 65000 }}] }},
]
ha = {{ mode = "bgp", asn = 65001, peers = [{{ address = "10.9.0.1", asn = 65000 }}], bfd = {bfd} }}
[[accelerator.endpoint_groups]]
region = "r"
endpoints = [{{ address = "10.9.9.1:80" }}]
"#
        );
        let acc = portico_config::parse(&text, "test")
            .map_err(|e| e.to_string())
            .unwrap()
            .accelerator
            .unwrap();
        HaSpec::new(&acc, "b", Path::new("/")).unwrap()
    }

    #[test]
    fn every_static_ip_is_announced_to_the_nodes_own_peers_once_enabled() {
        let text = render(&spec(true));
        assert!(text.contains("router id 10.9.0.6;"), "{text}");
        assert!(
            text.contains("protocol static portico_ips {\n    ipv4;\n    disabled;\n    route 10.9.1.1/32 blackhole;\n    route 10.9.1.2/32 blackhole;\n}"),
            "{text}"
        );
        assert!(
            text.contains("protocol static portico_ips6 {\n    ipv6;\n    disabled;\n    route 2001:db8::1/128 blackhole;\n}"),
            "{text}"
        );
        assert!(
            text.contains("protocol bgp peer0 {\n    local 10.9.0.6 as 65001;\n    neighbor 10.9.0.5 as 65000;"),
            "{text}"
        );
        assert!(
            text.contains("export where proto = \"portico_ips6\""),
            "{text}"
        );
        assert!(!text.contains("10.9.0.1 as"), "the node's own peers win");
        // Two peers and the other edge node.
        assert_eq!(text.matches("bfd on;").count(), 3, "{text}");
        assert!(text.contains("min rx interval 100 ms;"), "{text}");
        assert!(
            !text.contains("protocol kernel"),
            "nothing into this host's table"
        );
    }

    #[test]
    fn the_other_edge_nodes_are_ibgp_sessions_that_only_inform() {
        let text = render(&spec(true));
        assert!(
            text.contains("protocol bgp node0 {\n    local 10.9.0.6 as 65001;\n    neighbor 10.9.0.2 as 65001;"),
            "{text}"
        );
        assert!(
            !text.contains("protocol bgp node1"),
            "not to itself: {text}"
        );
        assert!(
            text.contains("import all;\n        export where proto = \"portico_ips\";\n    };"),
            "{text}"
        );
    }

    #[test]
    fn show_route_names_the_nodes_that_announce() {
        let lines: Vec<String> = [
            "Table master4:",
            "10.91.1.1/32         blackhole [portico_ips 09:08:11.603] * (200)",
            "\tType: static univ",
            "                     unreachable [node0 09:08:16.297 from 10.90.0.3] (100) [i]",
            "\tBGP.next_hop: 10.90.0.3",
            "                     unreachable [node2 09:08:16.297 from 10.90.0.4] (100) [i]",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(announcers(&lines, 1), vec![0, 1, 2]);
        assert_eq!(
            announcers(&["Network not found".to_owned()], 1),
            Vec::<usize>::new()
        );
        assert_eq!(
            announcers(&["x [nodeX y]".to_owned(), "[".to_owned()], 0),
            Vec::<usize>::new()
        );
    }

    /// A stand-in for BIRD's control socket that greets, reads one command and answers
    /// `reply`.
    async fn fake_bird(reply: Vec<u8>) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            let _ = write.write_all(&reply).await;
        });
        (dir, path)
    }

    /// A directory removed on drop.
    mod tempdir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir =
                    std::env::temp_dir().join(format!("portico-bird-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                Self(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn the_control_socket_refuses_errors_and_bounds_replies() {
        let (_dir, path) = fake_bird(b"0009 portico_ips: disabled\n".to_vec()).await;
        assert_eq!(
            command(&path, "disable portico_ips").await.unwrap(),
            vec!["portico_ips: disabled"]
        );
        let (_dir, path) =
            fake_bird(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n".to_vec()).await;
        let refused = command(&path, "disable nope").await.unwrap_err();
        assert!(matches!(refused, ControlError::Refused { .. }), "{refused}");
        // A reply that never ends within the bound is cut, not read for ever.
        let endless = b"1002-a line of a table that goes on\n".repeat(MAX_REPLY / 20);
        let (_dir, path) = fake_bird(endless).await;
        let long = command(&path, "show route").await.unwrap_err();
        assert!(matches!(long, ControlError::TooLong(_)), "{long}");
        // A socket that closes mid-reply is an error, not an empty answer.
        let (_dir, path) = fake_bird(b"1002-half a reply\n".to_vec()).await;
        assert!(command(&path, "show protocols").await.is_err());
    }

    #[test]
    fn without_bfd_the_hold_time_decides() {
        let text = render(&spec(false));
        assert!(!text.contains("bfd"), "{text}");
        assert!(text.contains("hold time 3;"), "{text}");
    }

    #[test]
    fn reply_lines_carry_codes_and_continuations() {
        assert_eq!(
            parse_line("0001 BIRD 2.0.12 ready."),
            (Some(1), true, "BIRD 2.0.12 ready.")
        );
        assert_eq!(
            parse_line("2002-Name  Proto"),
            (Some(2002), false, "Name  Proto")
        );
        assert_eq!(parse_line(" continued"), (None, false, "continued"));
        assert_eq!(parse_line("0000"), (Some(0), true, ""));
        assert_eq!(
            parse_line("9001 syntax error"),
            (Some(9001), true, "syntax error")
        );
    }

    #[test]
    fn show_protocols_gives_names_states_and_info() {
        let lines: Vec<String> = [
            "Name       Proto      Table      State  Since         Info",
            "portico_ips Static    master4    up     12:00:01.123  ",
            "peer0      BGP        ---        up     12:00:02.456  Established   ",
            "peer1      BGP        ---        start  2026-12-03 12:00:02  Active        Socket: Connection refused",
        ]
        .map(String::from)
        .to_vec();
        let rows = parse_protocols(&lines);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].state, "up");
        assert_eq!(rows[1].info, "Established");
        assert_eq!(rows[2].state, "start");
        assert_eq!(rows[2].info, "Active Socket: Connection refused");
    }
}
