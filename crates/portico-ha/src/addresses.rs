//! Mode `bgp`: the static IPs on the node's `lo`, so that the packets the router sends here
//! are delivered to the edge's sockets. Whether they come is the announcement's business;
//! the addresses stay while portico runs. (In mode `vrrp` keepalived adds and removes them
//! on the segment's interface itself.) Done with iproute2's `ip`, as an operator would.

use std::net::IpAddr;
use std::process::Command;

/// Puts every one of `ips` on `lo` (already there is fine).
pub fn add(ips: &[IpAddr]) -> Result<(), String> {
    for ip in ips {
        ip_command("replace", *ip)?;
    }
    Ok(())
}

/// Takes every one of `ips` off `lo`; all are tried, the first failure is returned.
pub fn remove(ips: &[IpAddr]) -> Result<(), String> {
    let mut first = Ok(());
    for ip in ips {
        if let Err(error) = ip_command("del", *ip) {
            first = first.and(Err(error));
        }
    }
    first
}

fn ip_command(verb: &str, ip: IpAddr) -> Result<(), String> {
    let prefix = crate::host_prefix(ip);
    let family = if ip.is_ipv4() { "-4" } else { "-6" };
    let address = format!("{ip}/{prefix}");
    let out = Command::new("ip")
        .args([family, "addr", verb, &address, "dev", "lo"])
        .output()
        .map_err(|e| format!("ip addr {verb} {address} dev lo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip addr {verb} {address} dev lo: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
