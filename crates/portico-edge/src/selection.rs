//! Which endpoint a new connection goes to.
//!
//! Groups are tried nearest first: by the round-trip time this edge measures to each group
//! with its health checks ([`EndpointGroup::nearness`]), in whole milliseconds so that groups
//! within the same millisecond do not swap places on noise; ties, and groups not measured
//! yet, keep the order of the configuration. A group takes the connection when it has an
//! available endpoint and its traffic dial lets the connection through; the share it dials
//! away goes on to the next group. If no group takes it, the connection goes to the first
//! group with any available endpoint (a dial does not turn traffic away when nobody else can
//! take it). If no endpoint anywhere is healthy, Global Accelerator fails open: every
//! weighted endpoint is tried as if healthy.
//!
//! Within a group an endpoint is drawn by weight. With `SOURCE_IP` affinity the draw is
//! made by rendezvous hashing of the client address, so a client keeps its endpoint while
//! that endpoint stays available, and only the clients of a lost endpoint move.

use crate::endpoint::{Endpoint, EndpointGroup, Target};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// How connections of one client are spread, as Global Accelerator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Each connection on its own.
    None,
    /// All connections of a client address to the same endpoint.
    SourceIp,
}

/// Endpoints to try for a connection from `client` that arrived on `port`, best first (the
/// rest are fallbacks if connecting to the first fails), each with the address to connect
/// to (after the group's port overrides).
pub fn candidates(
    groups: &[EndpointGroup],
    client: SocketAddr,
    port: u16,
    affinity: Affinity,
) -> Vec<(Arc<Endpoint>, SocketAddr)> {
    let mut order = Vec::new();
    let mut groups: Vec<&EndpointGroup> = groups.iter().collect();
    // Stable: equal distances keep the configured order.
    groups.sort_by_key(|g| g.nearness());
    let dialled = groups.iter().find(|g| {
        g.available().next().is_some() && fastrand::u8(0..100) < g.traffic_dial_percentage
    });
    let first_available = groups.iter().find(|g| g.available().next().is_some());
    if let Some(group) = dialled.or(first_available) {
        let others = groups.iter().filter(|g| !std::ptr::eq(**g, *group));
        for g in std::iter::once(group).chain(others) {
            let at = g.endpoint_port(port);
            order.extend(
                rank(g.available(), client.ip(), affinity)
                    .into_iter()
                    .map(|e| (e.clone(), e.target.address(at))),
            );
        }
    } else {
        // Fail open: nothing is healthy, so try everything that has a weight.
        for g in groups {
            let at = g.endpoint_port(port);
            order.extend(
                rank(
                    g.endpoints.iter().filter(|e| e.weight > 0),
                    client.ip(),
                    affinity,
                )
                .into_iter()
                .map(|e| (e.clone(), e.target.address(at))),
            );
        }
    }
    order
}

/// Orders endpoints by a weighted random draw (or, with affinity, a weighted hash of the
/// client address): weighted rendezvous hashing, score = -ln(u) / weight, lowest first.
fn rank<'a>(
    endpoints: impl Iterator<Item = &'a Arc<Endpoint>>,
    client: IpAddr,
    affinity: Affinity,
) -> Vec<Arc<Endpoint>> {
    let mut scored: Vec<(f64, Arc<Endpoint>)> = endpoints
        .map(|e| {
            let u = match affinity {
                Affinity::None => fastrand::f64(),
                Affinity::SourceIp => unit_hash(client, e.target),
            };
            // u in (0, 1]: -ln(u) is finite and >= 0.
            let u = u.max(f64::MIN_POSITIVE);
            (-u.ln() / f64::from(e.weight), e.clone())
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.into_iter().map(|(_, e)| e).collect()
}

/// A stable hash of (client, endpoint) mapped into (0, 1].
fn unit_hash(client: IpAddr, endpoint: Target) -> f64 {
    // A fixed-key hasher: the same client maps to the same endpoint across restarts.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    std::hash::Hash::hash(&client, &mut h);
    std::hash::Hash::hash(&endpoint, &mut h);
    ((h.finish() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_health::{Status, Verdict};
    use std::time::Duration;

    fn ep(port: u16, weight: u8) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            Target::Fixed(SocketAddr::from(([127, 0, 0, 1], port))),
            weight,
            true,
            Arc::new(Status::new(Verdict::Healthy)),
            Arc::default(),
        ))
    }

    fn set_healthy(e: &Endpoint, healthy: bool) {
        e.status.set(if healthy {
            Verdict::Healthy
        } else {
            Verdict::Unhealthy
        });
    }

    fn group(region: &str, dial: u8, endpoints: Vec<Arc<Endpoint>>) -> EndpointGroup {
        EndpointGroup {
            region: region.into(),
            traffic_dial_percentage: dial,
            port_overrides: Default::default(),
            endpoints,
        }
    }

    /// The port of the first candidate.
    fn first(g: &[EndpointGroup], c: SocketAddr, affinity: Affinity) -> u16 {
        candidates(g, c, 80, affinity)[0].1.port()
    }

    fn client(n: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, n], 40000))
    }

    #[test]
    fn weights_shape_the_spread() {
        let g = [group("a", 100, vec![ep(1, 200), ep(2, 50), ep(3, 0)])];
        let mut counts = [0u32; 3];
        for i in 0..10_000 {
            let port = first(&g, client((i % 250) as u8), Affinity::None);
            counts[(port - 1) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets nothing");
        let share = f64::from(counts[0]) / 10_000.0;
        assert!(
            (0.75..0.85).contains(&share),
            "weight 200 of 250 got {share}"
        );
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_then_groups_fail_over() {
        let a = ep(1, 100);
        let b = ep(2, 100);
        let g = [
            group("near", 100, vec![a.clone()]),
            group("far", 100, vec![b.clone()]),
        ];
        assert_eq!(first(&g, client(1), Affinity::None), 1);
        set_healthy(&a, false);
        let c = candidates(&g, client(1), 80, Affinity::None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].1.port(), 2);
    }

    #[test]
    fn fail_open_when_nothing_is_healthy() {
        let a = ep(1, 100);
        set_healthy(&a, false);
        let g = [group("only", 100, vec![a])];
        assert_eq!(candidates(&g, client(1), 80, Affinity::None).len(), 1);
    }

    #[test]
    fn traffic_dial_sends_the_rest_to_the_next_group() {
        let g = [
            group("near", 25, vec![ep(1, 100)]),
            group("far", 100, vec![ep(2, 100)]),
        ];
        let near = (0..10_000)
            .filter(|_| first(&g, client(1), Affinity::None) == 1)
            .count();
        assert!(
            (2_000..3_000).contains(&near),
            "dial 25 % took {near} of 10000"
        );
    }

    #[test]
    fn the_nearest_healthy_group_is_first_and_the_next_nearest_takes_over() {
        let (far, near, unmeasured) = (ep(1, 100), ep(2, 100), ep(3, 100));
        far.status.record_rtt(Duration::from_millis(50));
        near.status.record_rtt(Duration::from_millis(20));
        let g = [
            group("unmeasured", 100, vec![unmeasured.clone()]),
            group("far", 100, vec![far.clone()]),
            group("near", 100, vec![near.clone()]),
        ];
        let order = |c: SocketAddr| -> Vec<u16> {
            candidates(&g, c, 80, Affinity::None)
                .iter()
                .map(|(_, a)| a.port())
                .collect()
        };
        assert_eq!(
            order(client(1)),
            [2, 1, 3],
            "nearest first, unmeasured last"
        );
        set_healthy(&near, false);
        assert_eq!(order(client(1)), [1, 3], "failed over to the next nearest");
        set_healthy(&near, true);
        // Within the same millisecond, the configured order decides.
        far.status.record_rtt(Duration::from_micros(20_300));
        for _ in 0..40 {
            far.status.record_rtt(Duration::from_micros(20_300));
        }
        assert_eq!(order(client(1))[..2], [1, 2], "tie: configuration order");
    }

    #[test]
    fn the_dial_of_the_nearest_group_sends_the_rest_to_the_next_nearest() {
        let (far, near) = (ep(1, 100), ep(2, 100));
        far.status.record_rtt(Duration::from_millis(50));
        near.status.record_rtt(Duration::from_millis(5));
        let g = [group("far", 100, vec![far]), group("near", 40, vec![near])];
        let to_near = (0..10_000)
            .filter(|_| first(&g, client(1), Affinity::None) == 2)
            .count();
        assert!(
            (3_500..4_500).contains(&to_near),
            "dial 40 % on the nearest took {to_near} of 10000"
        );
    }

    #[test]
    fn dial_zero_still_serves_when_no_other_group_can() {
        let g = [group("only", 0, vec![ep(1, 100)])];
        assert_eq!(first(&g, client(1), Affinity::None), 1);
    }

    #[test]
    fn source_ip_affinity_is_sticky_and_moves_only_lost_clients() {
        let eps: Vec<_> = (1..=4).map(|p| ep(p, 100)).collect();
        let g = [group("a", 100, eps.clone())];
        let before: Vec<u16> = (0..200)
            .map(|n| first(&g, client(n), Affinity::SourceIp))
            .collect();
        let again: Vec<u16> = (0..200)
            .map(|n| first(&g, client(n), Affinity::SourceIp))
            .collect();
        assert_eq!(before, again);
        assert!(
            before.iter().any(|&p| p != before[0]),
            "clients spread over endpoints"
        );
        set_healthy(&eps[0], false);
        for n in 0..200u8 {
            let now = first(&g, client(n), Affinity::SourceIp);
            if before[n as usize] != 1 {
                assert_eq!(now, before[n as usize], "client {n} moved without cause");
            } else {
                assert_ne!(now, 1);
            }
        }
    }

    #[test]
    fn port_overrides_and_host_targets_pick_the_endpoint_port() {
        let host = Arc::new(Endpoint::new(
            Target::Host("10.0.0.7".parse().unwrap()),
            1,
            false,
            Arc::new(Status::new(Verdict::Healthy)),
            Arc::default(),
        ));
        let mut g = group("a", 100, vec![host]);
        g.port_overrides.insert(443, 8443);
        let g = [g];
        let to = |port| candidates(&g, client(1), port, Affinity::None)[0].1;
        assert_eq!(to(443), "10.0.0.7:8443".parse().unwrap(), "overridden");
        assert_eq!(to(80), "10.0.0.7:80".parse().unwrap(), "the arrival port");
    }
}
