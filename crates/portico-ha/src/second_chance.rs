//! Mode `bgp`: a second chance for packets the router's hash sent to the wrong node.
//!
//! The router spreads flows over the nodes that announce a static IP by a hash of each
//! flow, over the nodes it knows. When a node joins (it comes back, a link returns), the
//! hash moves part of every other node's open connections to it; that node has no socket
//! for them and would reset them. Unimog and GLB solve this by passing such a packet on
//! to the node that had the connection ("daisy chain", "second chance"). Here the kernel
//! does it, with an nftables table that portico writes:
//!
//! - a TCP packet to a static IP that is not a SYN and that conntrack has never seen (`ct
//!   state new`) belongs to a connection another node has;
//! - it goes on to the next live edge node (the nodes in the file's order, round, those
//!   whose iBGP session is up), as it is (`dup to NEXT`, then dropped here); its TTL set
//!   to 255 says "first hop" (a routed packet arrives with 254 at most), 254 the second…;
//! - a node that has the connection takes the packet as any other; one that has not
//!   passes it on, and the last one (once every other live node has seen it) lets its
//!   kernel reset it, as it would without all this: a connection of a node that died
//!   is still reset, once that node is known dead (BFD on the sessions between edge
//!   nodes, then the next reading of BIRD's protocols: about a second).
//!
//! The table is written before the node announces anything, so that conntrack knows every
//! connection this node ever had, and rewritten when the set of live nodes changes; it is
//! removed when the node stops. Answers go from the node that has the connection straight
//! to the client. The nodes must share a segment (a copy goes to the next node's address
//! unrouted), and this covers IPv4 static IPs on nodes with IPv4 addresses.

use crate::spec::HaSpec;
use std::fmt::Write;
use std::net::IpAddr;

/// The nftables command.
pub(crate) const NFT: &str = "nft";

/// The TTL of a packet on its first hop between edge nodes.
const FIRST_HOP_TTL: usize = 255;

/// The table of `spec`'s accelerator: `portico_` and its name, in the characters nft
/// takes.
pub(crate) fn table(spec: &HaSpec) -> String {
    let name: String = spec
        .accelerator
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("portico_{name}")
}

/// Whether the node forwards anything at all: IPv4 static IPs on an IPv4 node.
pub(crate) fn applies(spec: &HaSpec) -> bool {
    spec.second_chance && spec.address().is_ipv4() && spec.static_ips.iter().any(IpAddr::is_ipv4)
}

/// The node a packet goes on to from this one: the first live node after this one in the
/// file's order, round. `live` holds node indices, this node's among them.
pub(crate) fn next(me: usize, live: &[usize]) -> Option<usize> {
    live.iter()
        .copied()
        .filter(|n| *n > me)
        .min()
        .or_else(|| live.iter().copied().filter(|n| *n < me).min())
}

/// The nft script that (re)writes the table for `live` nodes, in one transaction.
pub(crate) fn render(spec: &HaSpec, live: &[usize]) -> String {
    let table = table(spec);
    let ips: Vec<String> = spec
        .static_ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(ToString::to_string)
        .collect();
    let mut c = String::new();
    // Adding, then deleting, then writing the table replaces it whether or not it was there.
    let _ = writeln!(c, "add table ip {table}\ndelete table ip {table}");
    let _ = writeln!(c, "table ip {table} {{");
    let _ = writeln!(
        c,
        "    chain prerouting {{\n        type filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        c,
        "        ip daddr {{ {} }} tcp flags & syn == 0 ct state new jump second_chance\n    }}",
        ips.join(", ")
    );
    let _ = writeln!(c, "    chain second_chance {{");
    let others = live.iter().filter(|n| **n != spec.me).count();
    if let Some(next) = next(spec.me, live).map(|n| spec.nodes[n].1) {
        // Copies from other nodes: hop k arrives with TTL 256 - k. The last one stays here
        // (every other live node has seen it) and is reset; the others go on.
        let last = FIRST_HOP_TTL + 1 - others;
        let _ = writeln!(c, "        ip ttl {last} accept");
        for ttl in (last + 1..=FIRST_HOP_TTL).rev() {
            let _ = writeln!(
                c,
                "        ip ttl {ttl} ip ttl set {} dup to {next} drop",
                ttl - 1
            );
        }
        // From the router: the first hop.
        let _ = writeln!(c, "        ip ttl set {FIRST_HOP_TTL} dup to {next} drop");
    }
    let _ = writeln!(c, "    }}\n}}");
    c
}

/// Writes the table for `live` nodes.
pub(crate) async fn apply(spec: &HaSpec, live: &[usize]) -> Result<(), String> {
    run(render(spec, live)).await
}

/// Removes the table.
pub(crate) async fn remove(spec: &HaSpec) -> Result<(), String> {
    run(format!("delete table ip {}\n", table(spec))).await
}

/// Runs `script` through `nft -f -`.
async fn run(script: String) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(NFT)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {NFT}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("{NFT}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{NFT}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{NFT} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn spec(nodes: usize, me: &str) -> HaSpec {
        let list: Vec<String> = (0..nodes)
            .map(|i| format!(r#"{{ name = "n{i}", address = "10.9.0.{}" }}"#, i + 2))
            .collect();
        let text = format!(
            r#"
[accelerator]
name = "acc-1"
static_ips = ["10.9.1.1", "10.9.1.2", "2001:db8::1"]
listeners = [{{ port = 80 }}]
nodes = [{}]
ha = {{ mode = "bgp", asn = 65001, peers = [{{ address = "10.9.0.1", asn = 65000 }}] }}
[[accelerator.endpoint_groups]]
region = "r"
endpoints = [{{ address = "10.9.2.1:80" }}]
"#,
            list.join(", ")
        );
        let acc = portico_config::parse(&text, "test")
            .map_err(|e| e.to_string())
            .unwrap()
            .accelerator
            .unwrap();
        HaSpec::new(&acc, me, Path::new("/")).unwrap()
    }

    #[test]
    fn the_next_node_is_the_first_live_one_after_this_one_round() {
        assert_eq!(next(1, &[0, 1, 2]), Some(2));
        assert_eq!(next(2, &[0, 1, 2]), Some(0));
        assert_eq!(next(0, &[0, 2]), Some(2));
        assert_eq!(next(1, &[1]), None);
        assert_eq!(next(1, &[]), None);
    }

    #[test]
    fn alone_a_node_tracks_connections_and_passes_nothing_on() {
        let text = render(&spec(2, "n0"), &[0]);
        assert!(text.starts_with("add table ip portico_acc_1\ndelete table ip portico_acc_1\n"));
        assert!(
            text.contains("ip daddr { 10.9.1.1, 10.9.1.2 } tcp flags & syn == 0 ct state new jump second_chance"),
            "{text}"
        );
        assert!(!text.contains("dup"), "{text}");
    }

    #[test]
    fn two_nodes_pass_a_stray_packet_once() {
        let text = render(&spec(2, "n0"), &[0, 1]);
        assert!(
            text.contains("    chain second_chance {\n        ip ttl 255 accept\n        ip ttl set 255 dup to 10.9.0.3 drop\n    }"),
            "{text}"
        );
    }

    #[test]
    fn three_nodes_pass_it_round_until_each_has_seen_it() {
        let text = render(&spec(3, "n2"), &[0, 1, 2]);
        assert!(
            text.contains("        ip ttl 254 accept\n        ip ttl 255 ip ttl set 254 dup to 10.9.0.2 drop\n        ip ttl set 255 dup to 10.9.0.2 drop\n"),
            "{text}"
        );
    }

    #[test]
    fn it_needs_an_ipv4_node_and_an_ipv4_static_ip() {
        assert!(applies(&spec(2, "n0")));
        let mut without = spec(2, "n0");
        without.second_chance = false;
        assert!(!applies(&without));
        let mut v6 = spec(2, "n0");
        v6.static_ips.retain(IpAddr::is_ipv6);
        assert!(!applies(&v6));
    }
}
