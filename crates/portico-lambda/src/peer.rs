//! Who is on the other end of a Runtime API connection.
//!
//! An environment's Runtime API listens on a loopback port, which any local process could
//! reach: one that took the next invocation would get its payload (and its caller's
//! `Authorization` header) and could answer in the function's place. So a connection is
//! served only when the socket at its other end belongs to a process of the environment:
//! its socket is found in `/proc/net/tcp` (or `tcp6`) by its two addresses, and its inode
//! among the open files of the environment's processes (those of its cgroup, or the
//! function's process and its descendants).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether the TCP connection whose client end is `peer` and server end `local` belongs to
/// one of `pids`.
pub(crate) fn held_by(peer: SocketAddr, local: SocketAddr, pids: &[u32]) -> bool {
    let Some(inode) = socket_inode(peer, local) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    pids.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
        })
    })
}

/// `pid` and every process descended from it.
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: the command may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// The inode of the socket whose local address is `peer` and remote address `local`.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (ours, theirs, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
        (parse_address(ours)? == peer && parse_address(theirs)? == local)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (an address as the kernel prints it, in its own byte order) → `127.0.0.1:8080`.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kernel_addresses_are_read_in_its_byte_order() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_address("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_address("00000000000000000000000001000000:0050"),
                Some("[::1]:80".parse().unwrap())
            );
        }
        assert_eq!(parse_address("nonsense"), None);
        assert_eq!(parse_address("0100007F:zz"), None);
    }

    #[test]
    fn a_connection_is_known_by_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_served, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = std::process::id();
        assert!(
            held_by(peer, local, &[me]),
            "this process holds its own socket"
        );
        // Another process (the parent, whatever it is) does not.
        let other = std::os::unix::process::parent_id();
        assert!(!held_by(peer, local, &[other]));
        assert!(process_tree(me).contains(&me));
    }
}
