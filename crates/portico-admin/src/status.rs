//! `GET /status`: what a running portico is doing, as JSON. The accelerator's static
//! addresses (`tcp://ip:port`, `udp://ip:port`) and, per listener and endpoint group
//! (nearest first, as new connections see them), its health, the round-trip time this edge
//! measures to it, and its share of the listener's connections (UDP: flows) forwarded so
//! far; each target group's targets and their health; the descriptor budget client
//! connections draw from and the connections refused for it or for the per-client limit.

use crate::Admin;
use portico_alb::TargetGroup;
use portico_edge::EndpointGroup;
use portico_health::{Status, Verdict};
use serde_json::{Value, json};
use std::time::Duration;

fn health(status: &Status) -> &'static str {
    match status.verdict() {
        Verdict::Healthy => "healthy",
        Verdict::Unhealthy => "unhealthy",
        Verdict::Initial => "initial",
    }
}

fn millis(rtt: Option<Duration>) -> Value {
    rtt.map_or(Value::Null, |d| json!(d.as_secs_f64() * 1000.0))
}

/// A listener's endpoint groups, nearest first as new connections see them.
fn groups(groups: &[EndpointGroup]) -> Vec<Value> {
    let mut groups: Vec<&EndpointGroup> = groups.iter().collect();
    groups.sort_by_key(|g| g.nearness());
    let total: u64 = groups.iter().map(|g| g.connections()).sum();
    groups
        .iter()
        .map(|g| {
            let connections = g.connections();
            json!({
                "region": g.region,
                "traffic_dial_percentage": g.traffic_dial_percentage,
                "healthy": g.available().next().is_some(),
                "rtt_ms": millis(g.rtt()),
                "connections": connections,
                "share_of_connections": if total == 0 {
                    0.0
                } else {
                    connections as f64 / total as f64
                },
                "endpoints": g.endpoints.iter().map(|e| json!({
                    "address": e.target.to_string(),
                    "weight": e.weight,
                    "health": health(&e.status),
                    "rtt_ms": millis(e.status.rtt()),
                    "connections": e.connections(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The status document.
pub fn document(admin: &Admin) -> Value {
    let accelerator = admin.accelerator.as_ref().map(|acc| {
        let view = acc.view();
        let listeners: Vec<Value> = view
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "protocol": l.transport.name(),
                    "ports": l.ports,
                    "endpoint_groups": groups(&l.route.groups),
                })
            })
            .collect();
        json!({
            "name": view.name,
            "static_addresses": view
                .addresses
                .iter()
                .map(|(t, a)| format!("{}://{a}", t.name()))
                .collect::<Vec<_>>(),
            "listeners": listeners,
        })
    });
    let balancers = admin.balancers.load();
    let target_groups: Vec<Value> = balancers
        .target_groups
        .values()
        .map(|tg| match tg {
            TargetGroup::Lambda(g) => json!({
                "name": g.name,
                "arn": g.arn,
                "target_type": portico_config::TargetType::Lambda.name(),
                "targets": [{
                    "id": g.function_arn,
                    "health": g.health.as_deref().map_or("unavailable", health),
                }],
            }),
            TargetGroup::Http(g) => json!({
                "name": g.name(),
                "arn": g.arn(),
                "target_type": g.spec().target_type.name(),
                "targets": g.targets().iter().map(|t| json!({
                    "id": t.address.to_string(),
                    "health": if t.is_draining() { "draining" } else { health(&t.status) },
                    "in_flight": t.in_flight(),
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    let ha = admin.ha.as_ref().map(|ha| ha.status());
    let descriptors = &admin.descriptors;
    let limits = json!({
        "descriptors": {
            "budget": descriptors.budget(),
            "reserve": descriptors.reserve(),
            "held": descriptors.held(),
            "refused": descriptors.refused(),
        },
        "per_client": admin.per_client.as_ref().map(|p| json!({
            "limit": p.limit(),
            "refused": p.refused(),
        })),
    });
    json!({
        "accelerator": accelerator,
        "ha": ha,
        "target_groups": target_groups,
        "limits": limits,
    })
}
