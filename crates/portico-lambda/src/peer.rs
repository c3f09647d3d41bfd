//! Who is on the other end of a Runtime API connection.
//!
//! An environment's Runtime API listens on a loopback port, which any local process could
//! reach: one that took the next invocation would get its payload (and its caller's
//! `Authorization` header) and could answer in the function's place. So a connection is
//! served only when the socket at its other end belongs to a process of the environment:
//! the kernel finds its socket by its two addresses (sock_diag), and its inode
//! among the open files of the environment's processes (those of its cgroup, or the
//! function's process and its descendants).

use std::net::{IpAddr, SocketAddr};

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

/// The processes in the PID namespace whose inode is `namespace`.
pub(crate) fn in_pid_namespace(namespace: u64) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() == namespace)
        })
        .collect()
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

/// The inode of the TCP socket whose local address is `peer` and remote address `local`,
/// asked of the kernel by its four-tuple (`NETLINK_SOCK_DIAG`, as `ss` asks). Reading
/// `/proc/net/tcp` instead is not exact: the kernel writes it a page at a time, and a table
/// that changes between two reads (connections opening and closing, which any client can
/// cause) skips lines, so the function's own connection could go unfound.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    let socket = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        Some(netlink::SOCK_DIAG),
    )
    .ok()?;
    let request = diag_request(peer, local)?;
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    rustix::net::sendto(&socket, &request, SendFlags::empty(), &kernel).ok()?;
    let mut reply = [0u8; 1024];
    let (n, _) = rustix::net::recv(&socket, &mut reply, RecvFlags::empty()).ok()?;
    diag_inode(reply.get(..n)?)
}

/// `SOCK_DIAG_BY_FAMILY`, the request type of `inet_diag_req_v2`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST`: one socket, found by its four-tuple (no `NLM_F_DUMP`).
const NLM_F_REQUEST: u16 = 1;
/// `NLMSG_ERROR`: the kernel's answer when there is no such socket.
const NLMSG_ERROR: u16 = 2;
/// Size of `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// Offset of `idiag_inode` in `struct inet_diag_msg`: family, state, timer, retrans (4),
/// the socket id (48), expires, rqueue, wqueue, uid (16).
const INODE_OFFSET: usize = 4 + 48 + 16;

/// A netlink message asking for the TCP socket whose local end is `src` and remote end
/// `dst`: `nlmsghdr` + `inet_diag_req_v2` (all states, no cookie).
fn diag_request(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let family: u8 = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => 2,  // AF_INET
        (SocketAddr::V6(_), SocketAddr::V6(_)) => 10, // AF_INET6
        _ => return None,
    };
    let address = |a: SocketAddr| -> [u8; 16] {
        let mut bytes = [0u8; 16];
        match a.ip() {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes = v6.octets(),
        }
        bytes
    };
    let mut m = Vec::with_capacity(NLMSG_HDR + 56);
    m.extend_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[family, 6 /* IPPROTO_TCP */, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&address(src));
    m.extend_from_slice(&address(dst));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    Some(m)
}

/// The inode in the kernel's answer to [`diag_request`]; `None` for an error (no such
/// socket) or a short answer.
fn diag_inode(reply: &[u8]) -> Option<u64> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR || kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let at = NLMSG_HDR + INODE_OFFSET;
    let inode = u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?);
    Some(u64::from(inode))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_answer_that_is_an_error_or_short_names_no_socket() {
        let mut error = vec![0u8; 36];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(diag_inode(&error), None);
        let mut short = vec![0u8; 40];
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert_eq!(diag_inode(&short), None);
        assert_eq!(diag_inode(&[]), None);
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(diag_request(v4, v6).is_none());
        assert_eq!(diag_request(v6, v6).unwrap().len(), 72);
    }

    #[test]
    fn the_kernel_finds_a_socket_among_many_that_come_and_go() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_served, peer) = listener.accept().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink_address = sink.local_addr().unwrap();
        std::thread::spawn(move || while sink.accept().is_ok() {});
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let many: Vec<_> = (0..100)
                        .filter_map(|_| std::net::TcpStream::connect(sink_address).ok())
                        .collect();
                    drop(many);
                }
            })
        };
        let me = std::process::id();
        for _ in 0..200 {
            assert!(held_by(peer, local, &[me]));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        drop(client);
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
