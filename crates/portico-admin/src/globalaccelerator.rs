//! Global Accelerator's API (2018-08-06, the JSON 1.1 protocol: `POST /` with
//! `X-Amz-Target: GlobalAccelerator_V20180706.OPERATION`) for the accelerator, so that
//! `aws globalaccelerator --endpoint-url …` works against portico's admin API:
//!
//! - `ListAccelerators`, `DescribeAccelerator`: the accelerator, its static IPs;
//! - `ListListeners`: its listeners (ports, protocol, client affinity);
//! - `ListEndpointGroups`, `DescribeEndpointGroup`: a listener's endpoint groups, with each
//!   endpoint's health as this node sees it;
//! - `UpdateEndpointGroup`: traffic dial, endpoints and their weights (the list given
//!   replaces the group's, as Global Accelerator does), health checks, port overrides. Made
//!   through the control plane: validated as the file is, applied as a reload, kept.
//!
//! ARNs are made from names, so they stay across restarts. An endpoint that is a load
//! balancer is named by the load balancer's ARN; one that is an address, by the address.
//! Endpoint groups the configuration shares between listeners (`accelerator.endpoint_groups`)
//! are one group: updating it through any listener's ARN updates it for all of them.

use portico_alb::target_group::stable_hash;
use portico_config::{Accelerator, Config, EdgeHealthProtocol, EdgeProtocol, Endpoint};
use portico_control::{ChangeError, Control, Edit};
use serde_json::{Value, json};
use std::sync::Arc;

/// The `X-Amz-Target` prefix of Global Accelerator's operations.
pub const TARGET_PREFIX: &str = "GlobalAccelerator_V20180706.";

/// A Global Accelerator error: the HTTP status, the exception's name and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaError {
    /// The HTTP status.
    pub status: u16,
    /// The exception (`__type`).
    pub kind: &'static str,
    /// The message.
    pub message: String,
}

impl GaError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", message)
    }

    /// The JSON protocol's error document.
    pub fn document(&self) -> String {
        json!({ "__type": self.kind, "message": self.message }).to_string()
    }
}

/// The accelerator's ARN.
fn accelerator_arn(acc: &Accelerator) -> String {
    let hash = stable_hash(acc.name.as_bytes());
    format!(
        "arn:aws:globalaccelerator::{}:accelerator/{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        portico_lambda::spec::ACCOUNT_ID,
        hash >> 32,
        (hash >> 16) & 0xffff,
        hash & 0xffff,
        (hash >> 48) & 0xffff,
        hash & 0xffff_ffff_ffff
    )
}

/// Listener `index`'s ARN.
fn listener_arn(acc: &Accelerator, index: usize) -> String {
    let accelerator = accelerator_arn(acc);
    let hash = stable_hash(format!("{accelerator}/{index}").as_bytes());
    format!("{accelerator}/listener/{:08x}", hash & 0xffff_ffff)
}

/// The ARN of listener `index`'s endpoint group in `region`.
fn endpoint_group_arn(acc: &Accelerator, index: usize, region: &str) -> String {
    let listener = listener_arn(acc, index);
    let hash = stable_hash(format!("{listener}/{region}").as_bytes());
    format!("{listener}/endpoint-group/{:012x}", hash & 0xffff_ffff_ffff)
}

/// A load balancer's ARN, as an endpoint's id.
fn load_balancer_arn(name: &str) -> String {
    portico_alb::target_group::load_balancer_arn(
        crate::REGION,
        portico_lambda::spec::ACCOUNT_ID,
        name,
    )
}

/// An endpoint's id: its load balancer's ARN, or its address.
fn endpoint_id(endpoint: &Endpoint) -> String {
    match (&endpoint.load_balancer, &endpoint.address) {
        (Some(lb), _) => load_balancer_arn(lb),
        (None, Some(address)) => address.to_string(),
        (None, None) => String::new(),
    }
}

/// Carries out `operation` with its JSON `body`: the answer's JSON, or the error.
pub async fn handle(
    control: Option<&Arc<Control>>,
    accelerator: Option<&Arc<portico_edge::Accelerator>>,
    operation: &str,
    body: &[u8],
) -> Result<Value, GaError> {
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| GaError::new(400, "SerializationException", e.to_string()))?
    };
    let Some(control) = control else {
        return Err(GaError::new(
            503,
            "InternalServiceErrorException",
            "portico is starting",
        ));
    };
    let config = control.config();
    let arn_of = |key: &str| {
        request
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| GaError::invalid(format!("{key} is required")))
    };
    match operation {
        "ListAccelerators" => Ok(json!({
            "Accelerators": config.accelerator.iter().map(describe_accelerator).collect::<Vec<_>>(),
        })),
        "DescribeAccelerator" => {
            let acc = find_accelerator(&config, &arn_of("AcceleratorArn")?)?;
            Ok(json!({ "Accelerator": describe_accelerator(acc) }))
        }
        "ListListeners" => {
            let acc = find_accelerator(&config, &arn_of("AcceleratorArn")?)?;
            let listeners: Vec<Value> = acc
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| describe_listener(acc, i, l))
                .collect();
            Ok(json!({ "Listeners": listeners }))
        }
        "ListEndpointGroups" => {
            let arn = arn_of("ListenerArn")?;
            let (acc, index) = find_listener(&config, &arn)?;
            let groups: Vec<Value> = acc
                .groups_of(&acc.listeners[index])
                .iter()
                .map(|g| describe_group(acc, index, g, accelerator))
                .collect();
            Ok(json!({ "EndpointGroups": groups }))
        }
        "DescribeEndpointGroup" => {
            let arn = arn_of("EndpointGroupArn")?;
            let (acc, index, group) = find_group(&config, &arn)?;
            Ok(json!({ "EndpointGroup": describe_group(acc, index, group, accelerator) }))
        }
        "UpdateEndpointGroup" => {
            let arn = arn_of("EndpointGroupArn")?;
            let (_, index, group) = find_group(&config, &arn)?;
            let region = group.region.clone();
            let table = control.table().await;
            let edit = update_group(&table, index, &region, &request)?;
            let config = control.change(vec![edit]).await.map_err(refused)?;
            let acc = config.accelerator.as_ref().ok_or_else(|| {
                GaError::new(404, "AcceleratorNotFoundException", "no accelerator")
            })?;
            let group = acc
                .groups_of(&acc.listeners[index])
                .iter()
                .find(|g| g.region == region)
                .ok_or_else(|| GaError::new(404, "EndpointGroupNotFoundException", arn.clone()))?;
            tracing::info!(
                endpoint_group = arn,
                "endpoint group changed through the Global Accelerator API"
            );
            Ok(json!({ "EndpointGroup": describe_group(acc, index, group, accelerator) }))
        }
        other => Err(GaError::new(
            400,
            "UnknownOperationException",
            format!("{other}: not an operation portico's Global Accelerator API has"),
        )),
    }
}

fn refused(error: ChangeError) -> GaError {
    if error.is_refusal() {
        GaError::invalid(error.reason())
    } else {
        GaError::new(500, "InternalServiceErrorException", error.reason())
    }
}

fn find_accelerator<'a>(config: &'a Config, arn: &str) -> Result<&'a Accelerator, GaError> {
    config
        .accelerator
        .as_ref()
        .filter(|a| accelerator_arn(a) == arn)
        .ok_or_else(|| {
            GaError::new(
                404,
                "AcceleratorNotFoundException",
                format!("Accelerator {arn} not found"),
            )
        })
}

fn find_listener<'a>(config: &'a Config, arn: &str) -> Result<(&'a Accelerator, usize), GaError> {
    config
        .accelerator
        .as_ref()
        .and_then(|acc| {
            (0..acc.listeners.len())
                .find(|i| listener_arn(acc, *i) == arn)
                .map(|i| (acc, i))
        })
        .ok_or_else(|| {
            GaError::new(
                404,
                "ListenerNotFoundException",
                format!("Listener {arn} not found"),
            )
        })
}

fn find_group<'a>(
    config: &'a Config,
    arn: &str,
) -> Result<(&'a Accelerator, usize, &'a portico_config::EndpointGroup), GaError> {
    let not_found = || {
        GaError::new(
            404,
            "EndpointGroupNotFoundException",
            format!("Endpoint group {arn} not found"),
        )
    };
    let listener = arn.split("/endpoint-group/").next().ok_or_else(not_found)?;
    let (acc, index) = find_listener(config, listener).map_err(|_| not_found())?;
    acc.groups_of(&acc.listeners[index])
        .iter()
        .find(|g| endpoint_group_arn(acc, index, &g.region) == arn)
        .map(|g| (acc, index, g))
        .ok_or_else(not_found)
}

fn describe_accelerator(acc: &Accelerator) -> Value {
    let (v4, v6): (Vec<std::net::IpAddr>, Vec<std::net::IpAddr>) =
        acc.static_ips.iter().partition(|ip| ip.is_ipv4());
    let mut sets = Vec::new();
    for (family, ips) in [("IPv4", v4), ("IPv6", v6)] {
        if !ips.is_empty() {
            sets.push(json!({
                "IpFamily": family,
                "IpAddressFamily": family,
                "IpAddresses": ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
    }
    let hash = stable_hash(acc.name.as_bytes());
    json!({
        "AcceleratorArn": accelerator_arn(acc),
        "Name": acc.name,
        "IpAddressType": if sets.len() > 1 { "DUAL_STACK" } else { "IPV4" },
        "Enabled": true,
        "IpSets": sets,
        "DnsName": format!("{:016x}.awsglobalaccelerator.com", hash),
        "Status": "DEPLOYED",
    })
}

fn describe_listener(acc: &Accelerator, index: usize, l: &portico_config::EdgeListener) -> Value {
    let ranges: Vec<Value> = match l.port {
        Some(port) => vec![json!({ "FromPort": port.0, "ToPort": port.0 })],
        None => l
            .port_ranges
            .iter()
            .map(|r| json!({ "FromPort": r.from_port.0, "ToPort": r.to_port.0 }))
            .collect(),
    };
    json!({
        "ListenerArn": listener_arn(acc, index),
        "PortRanges": ranges,
        "Protocol": match l.protocol {
            EdgeProtocol::Tcp => "TCP",
            EdgeProtocol::Udp => "UDP",
        },
        "ClientAffinity": match l.client_affinity {
            portico_config::ClientAffinity::None => "NONE",
            portico_config::ClientAffinity::SourceIp => "SOURCE_IP",
        },
    })
}

fn describe_group(
    acc: &Accelerator,
    index: usize,
    group: &portico_config::EndpointGroup,
    running: Option<&Arc<portico_edge::Accelerator>>,
) -> Value {
    // Each endpoint's health as this node's checks see it, when the group runs here.
    let view = running.map(|a| a.view());
    let live = view.as_ref().and_then(|v| {
        v.listeners
            .get(index)
            .and_then(|l| l.route.groups.iter().find(|g| g.region == group.region))
            .map(|g| {
                g.endpoints
                    .iter()
                    .map(|e| match e.status.verdict() {
                        portico_health::Verdict::Healthy => "HEALTHY",
                        portico_health::Verdict::Unhealthy => "UNHEALTHY",
                        portico_health::Verdict::Initial => "INITIAL",
                    })
                    .collect::<Vec<_>>()
            })
    });
    let endpoints: Vec<Value> = group
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "EndpointId": endpoint_id(e),
                "Weight": e.weight,
                "HealthState": live.as_ref().and_then(|h| h.get(i).copied()).unwrap_or("INITIAL"),
                "ClientIPPreservationEnabled": e.client_ip_preservation.unwrap_or(e.load_balancer.is_some()),
            })
        })
        .collect();
    json!({
        "EndpointGroupArn": endpoint_group_arn(acc, index, &group.region),
        "EndpointGroupRegion": group.region,
        "EndpointDescriptions": endpoints,
        "TrafficDialPercentage": group.traffic_dial_percentage,
        "HealthCheckPort": group.health_check_port.map(|p| p.0),
        "HealthCheckProtocol": match group.health_check_protocol {
            EdgeHealthProtocol::Tcp => "TCP",
            EdgeHealthProtocol::Http => "HTTP",
            EdgeHealthProtocol::Https => "HTTPS",
        },
        "HealthCheckPath": group.health_check_path,
        "HealthCheckIntervalSeconds": group.health_check_interval_seconds,
        "ThresholdCount": group.threshold_count,
        "PortOverrides": group.port_overrides.iter().map(|o| json!({
            "ListenerPort": o.listener_port.0,
            "EndpointPort": o.endpoint_port.0,
        })).collect::<Vec<_>>(),
    })
}

/// The edit `UpdateEndpointGroup` makes to listener `index`'s group in `region`: the array
/// holding the group (the listener's own groups, or those it shares) with the group
/// changed.
fn update_group(
    table: &toml::Table,
    index: usize,
    region: &str,
    request: &Value,
) -> Result<Edit, GaError> {
    let acc = table
        .get("accelerator")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| GaError::new(404, "AcceleratorNotFoundException", "no accelerator"))?;
    let mut listeners = acc
        .get("listeners")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let own = listeners
        .get(index)
        .and_then(|l| l.get("endpoint_groups"))
        .is_some();
    let (path, mut groups): (Vec<&str>, Vec<toml::Value>) = if own {
        (
            vec!["accelerator", "listeners"],
            listeners[index]
                .get("endpoint_groups")
                .and_then(toml::Value::as_array)
                .cloned()
                .unwrap_or_default(),
        )
    } else {
        (
            vec!["accelerator", "endpoint_groups"],
            acc.get("endpoint_groups")
                .and_then(toml::Value::as_array)
                .cloned()
                .unwrap_or_default(),
        )
    };
    let group = groups
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|g| g.get("region").and_then(toml::Value::as_str) == Some(region))
        .ok_or_else(|| GaError::new(404, "EndpointGroupNotFoundException", region.to_owned()))?;
    let number = |key: &str| -> Result<Option<i64>, GaError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|n| Some(n as i64))
                .ok_or_else(|| GaError::invalid(format!("{key}: a number"))),
        }
    };
    if let Some(dial) = request
        .get("TrafficDialPercentage")
        .filter(|v| !v.is_null())
    {
        let dial = dial
            .as_f64()
            .ok_or_else(|| GaError::invalid("TrafficDialPercentage: a number"))?;
        group.insert(
            "traffic_dial_percentage".into(),
            (dial.round() as i64).into(),
        );
    }
    if let Some(port) = number("HealthCheckPort")? {
        group.insert("health_check_port".into(), port.into());
    }
    if let Some(interval) = number("HealthCheckIntervalSeconds")? {
        group.insert(
            "health_check_interval_seconds".into(),
            (interval as f64).into(),
        );
    }
    if let Some(count) = number("ThresholdCount")? {
        group.insert("threshold_count".into(), count.into());
    }
    if let Some(protocol) = request.get("HealthCheckProtocol").and_then(Value::as_str) {
        group.insert("health_check_protocol".into(), protocol.into());
    }
    if let Some(path) = request.get("HealthCheckPath").and_then(Value::as_str) {
        group.insert("health_check_path".into(), path.into());
    }
    if let Some(given) = request
        .get("EndpointConfigurations")
        .filter(|v| !v.is_null())
    {
        let given = given
            .as_array()
            .ok_or_else(|| GaError::invalid("EndpointConfigurations: a list"))?;
        let mut endpoints = Vec::new();
        for e in given {
            let id = e.get("EndpointId").and_then(Value::as_str).ok_or_else(|| {
                GaError::invalid("EndpointConfigurations: each has an EndpointId")
            })?;
            let mut endpoint = toml::Table::new();
            match id.split_once(":loadbalancer/app/") {
                Some((_, rest)) => {
                    let name = rest.split('/').next().unwrap_or_default();
                    endpoint.insert("load_balancer".into(), name.into());
                }
                None => {
                    endpoint.insert("address".into(), id.into());
                }
            }
            // Global Accelerator's default weight.
            let weight = e.get("Weight").and_then(Value::as_i64).unwrap_or(128);
            endpoint.insert("weight".into(), weight.into());
            if let Some(keep) = e
                .get("ClientIPPreservationEnabled")
                .and_then(Value::as_bool)
            {
                endpoint.insert("client_ip_preservation".into(), keep.into());
            }
            endpoints.push(toml::Value::Table(endpoint));
        }
        group.insert("endpoints".into(), endpoints.into());
    }
    if let Some(overrides) = request.get("PortOverrides").filter(|v| !v.is_null()) {
        let overrides = overrides
            .as_array()
            .ok_or_else(|| GaError::invalid("PortOverrides: a list"))?
            .iter()
            .map(|o| {
                let port = |key: &str| {
                    o.get(key)
                        .and_then(Value::as_i64)
                        .ok_or_else(|| GaError::invalid(format!("PortOverrides: each has a {key}")))
                };
                let mut table = toml::Table::new();
                table.insert("listener_port".into(), port("ListenerPort")?.into());
                table.insert("endpoint_port".into(), port("EndpointPort")?.into());
                Ok(toml::Value::Table(table))
            })
            .collect::<Result<Vec<_>, GaError>>()?;
        group.insert("port_overrides".into(), overrides.into());
    }
    let value = if own {
        if let Some(listener) = listeners.get_mut(index).and_then(toml::Value::as_table_mut) {
            listener.insert("endpoint_groups".into(), groups.into());
        }
        toml::Value::Array(listeners)
    } else {
        toml::Value::Array(groups)
    };
    Ok(Edit::set(&path, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[accelerator]
name = "edge"
static_ips = ["127.0.0.10"]

[[accelerator.listeners]]
protocol = "tcp"
port = 80

[[accelerator.listeners]]
protocol = "tcp"
port = 443
endpoint_groups = [{ region = "eu", endpoints = [{ address = "127.0.0.1:9443" }] }]

[[accelerator.endpoint_groups]]
region = "us"
endpoints = [{ address = "127.0.0.1:9080", weight = 100 }]
"#;

    #[test]
    fn arns_are_stable_and_name_their_parents() {
        let config = portico_config::parse(FILE, "ga.toml").unwrap();
        let acc = config.accelerator.as_ref().unwrap();
        let listener = listener_arn(acc, 1);
        assert!(listener.starts_with(&accelerator_arn(acc)));
        let group = endpoint_group_arn(acc, 1, "eu");
        assert!(group.starts_with(&format!("{listener}/endpoint-group/")));
        assert_eq!(find_group(&config, &group).unwrap().1, 1);
        assert_eq!(
            find_group(&config, &format!("{listener}/endpoint-group/000000000000"))
                .unwrap_err()
                .kind,
            "EndpointGroupNotFoundException"
        );
    }

    #[test]
    fn an_update_changes_the_array_that_holds_the_group() {
        let table: toml::Table = FILE.parse().unwrap();
        // Shared groups: `accelerator.endpoint_groups`.
        let edit = update_group(
            &table,
            0,
            "us",
            &json!({
                "TrafficDialPercentage": 40,
                "EndpointConfigurations": [
                    { "EndpointId": load_balancer_arn("web"), "Weight": 7 },
                    { "EndpointId": "127.0.0.1:9081" },
                ],
            }),
        )
        .unwrap();
        assert_eq!(edit.path, ["accelerator", "endpoint_groups"]);
        let groups = edit.value.unwrap();
        let group = &groups.as_array().unwrap()[0];
        assert_eq!(group["traffic_dial_percentage"].as_integer(), Some(40));
        let endpoints = group["endpoints"].as_array().unwrap();
        assert_eq!(endpoints[0]["load_balancer"].as_str(), Some("web"));
        assert_eq!(endpoints[0]["weight"].as_integer(), Some(7));
        assert_eq!(endpoints[1]["address"].as_str(), Some("127.0.0.1:9081"));
        assert_eq!(endpoints[1]["weight"].as_integer(), Some(128));
        // A listener's own groups: the listeners array.
        let edit = update_group(&table, 1, "eu", &json!({ "TrafficDialPercentage": 0 })).unwrap();
        assert_eq!(edit.path, ["accelerator", "listeners"]);
        // Malformed parameters are refused.
        let error =
            update_group(&table, 0, "us", &json!({ "TrafficDialPercentage": "all" })).unwrap_err();
        assert_eq!(error.kind, "InvalidArgumentException");
    }
}
