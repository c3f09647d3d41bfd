//! The typed topology: accelerator (edge), load balancers, target groups and functions.
//!
//! Every field documents its default. Names of things (`functions.hello`) are the keys of
//! their tables; references between parts (`target_group = "hello"`) use those names and are
//! checked by [`crate::validate`].

use crate::routing::{Action, Rule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The whole topology described by one file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Config {
    /// The edge: static IPs and where their traffic goes. Optional: without it, only the
    /// load balancers' own listeners accept traffic.
    #[serde(default)]
    pub accelerator: Option<Accelerator>,
    /// Load balancers by name.
    #[serde(default)]
    pub load_balancers: BTreeMap<String, LoadBalancer>,
    /// Target groups by name.
    #[serde(default)]
    pub target_groups: BTreeMap<String, TargetGroup>,
    /// Functions by name (the Lambda function name).
    #[serde(default)]
    pub functions: BTreeMap<String, Function>,
    /// The Lambda Invoke API, for the AWS CLI and SDKs (`--endpoint-url`).
    #[serde(default)]
    pub invoke_api: InvokeApi,
    /// The admin API: `aws elbv2` target actions and status.
    #[serde(default)]
    pub admin_api: AdminApi,
    /// Settings of the function runtime as a whole.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// What the node keeps back from its clients, so that none of them can exhaust it.
    #[serde(default)]
    pub limits: Limits,
    /// JWT authorizers by name, for `gateway.jwt` on listeners and rules.
    #[serde(default)]
    pub authorizers: BTreeMap<String, crate::gateway::Authorizer>,
    /// API keys, for `gateway.api_key_required`.
    #[serde(default)]
    pub api_keys: crate::gateway::ApiKeys,
    /// Usage plans by name: the quotas API keys count against.
    #[serde(default)]
    pub usage_plans: BTreeMap<String, crate::gateway::UsagePlan>,
}

impl Config {
    /// The files of portico's own this configuration names (certificates, private keys,
    /// JWKS files, access logs), as written (relative to the config file): what functions
    /// must not see.
    pub fn own_files(&self) -> Vec<&str> {
        let certificates = self
            .load_balancers
            .values()
            .flat_map(|lb| &lb.listeners)
            .flat_map(|l| &l.certificates)
            .flat_map(|c| [c.certificate.as_str(), c.private_key.as_str()]);
        let logs = self
            .load_balancers
            .values()
            .filter_map(|lb| lb.access_logs.destination.as_deref())
            .filter(|d| *d != "stdout");
        let jwks = self
            .authorizers
            .values()
            .filter_map(|a| a.jwks_file.as_deref());
        certificates.chain(logs).chain(jwks).collect()
    }

    /// The networks whose connections may send `listener` a PROXY v2 header: its
    /// `proxy_protocol_sources`, or loopback and the accelerator's nodes.
    pub fn proxy_protocol_sources(&self, listener: &LbListener) -> Vec<ipnet::IpNet> {
        if let Some(sources) = &listener.proxy_protocol_sources {
            return sources.clone();
        }
        let loopback = [
            ipnet::IpNet::from(ipnet::Ipv4Net::new_assert([127, 0, 0, 0].into(), 8)),
            ipnet::IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ];
        let nodes = self
            .accelerator
            .iter()
            .flat_map(|a| &a.nodes)
            .map(|n| ipnet::IpNet::from(n.address));
        loopback.into_iter().chain(nodes).collect()
    }

    /// Every node named in the file (`node = "…"` on the accelerator or a load balancer).
    pub fn nodes(&self) -> std::collections::BTreeSet<&str> {
        self.accelerator
            .iter()
            .flat_map(|a| {
                a.node
                    .as_deref()
                    .into_iter()
                    .chain(a.nodes.iter().map(|n| n.name.as_str()))
            })
            .chain(
                self.load_balancers
                    .values()
                    .filter_map(|l| l.node.as_deref()),
            )
            .collect()
    }
}

/// Whether a part placed on `placed` runs when portico runs as `node` (`None`: every part).
/// A part without a node runs on every node.
pub fn runs_on(placed: Option<&str>, node: Option<&str>) -> bool {
    match (placed, node) {
        (Some(placed), Some(node)) => placed == node,
        _ => true,
    }
}

/// Settings of the function runtime as a whole.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RuntimeSettings {
    /// Most execution environments busy at once across all functions (Lambda's account
    /// concurrency). Default 1000.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Seconds a warm execution environment may sit unused before it is stopped. Default 600.
    #[serde(default = "default_environment_idle")]
    pub environment_idle_timeout_seconds: u32,
    /// MB of memory execution environments may hold in all, each its function's memory
    /// size while it runs or stays warm. A new one that does not fit stops the warm ones
    /// unused the longest; when they are not enough, it is throttled. Default: three
    /// quarters of the node's memory.
    #[serde(default)]
    pub memory_budget_mb: Option<u32>,
    /// Run each execution environment in a sandbox of its own, as Lambda does: mount and
    /// PID namespaces, the code read-only at `/var/task`, layers at `/opt`, a private `/tmp`,
    /// an unprivileged user, none of portico's files. Default true; portico refuses to start
    /// where it cannot make one, unless this is false (functions then run as plain processes
    /// of portico, which says so when it starts).
    #[serde(default = "default_true")]
    pub sandbox: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_concurrency: default_max_concurrency(),
            environment_idle_timeout_seconds: default_environment_idle(),
            memory_budget_mb: None,
            sandbox: true,
        }
    }
}

fn default_max_concurrency() -> u32 {
    1000
}
fn default_environment_idle() -> u32 {
    600
}

/// What the node keeps back from its clients.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open files kept out of the budget that connections from clients draw from, for what
    /// must go on working when it is spent: established connections' traffic to targets,
    /// the Invoke and admin APIs, health checks and function starts. Default: an eighth of
    /// the open-file limit, between 256 and 8 192 (and at most half of it).
    #[serde(default)]
    pub reserved_descriptors: Option<u32>,
    /// Most TCP connections one client (an IPv4 address, an IPv6 /64) may hold on the
    /// accelerator's static IPs at once; 0 for no limit. Default 1 000.
    #[serde(default = "default_connections_per_client")]
    pub connections_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            reserved_descriptors: None,
            connections_per_client: default_connections_per_client(),
        }
    }
}

fn default_connections_per_client() -> u32 {
    1000
}

/// Where one of portico's own APIs listens: the Lambda Invoke API (default port 9001) or the
/// admin API (default port 9002). `PORT` is the default port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ApiListener<const PORT: u16> {
    /// Serve it at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to bind. Default `127.0.0.1`: reachable from this machine only. An address
    /// beyond loopback needs `access_keys`.
    #[serde(default = "default_lb_address")]
    pub address: IpAddr,
    /// Port to bind. `0` picks a free port.
    #[serde(default = "default_api_port::<PORT>")]
    pub port: Port,
    /// The access keys whose AWS Signature Version 4 the API accepts (the AWS CLI and SDKs
    /// sign every request with the caller's key). With none, requests are not checked, which
    /// only an API on loopback may do. Default none.
    #[serde(default)]
    pub access_keys: Vec<ApiAccessKey>,
    /// How long a connection may take to send a request head, and stay open with none in
    /// progress. Default 60 s (ALB's idle timeout).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u32,
    /// How long a request's body may take to arrive. Default 60 s.
    #[serde(default = "default_idle_timeout")]
    pub body_timeout_seconds: u32,
}

impl<const PORT: u16> Default for ApiListener<PORT> {
    fn default() -> Self {
        Self {
            enabled: true,
            address: default_lb_address(),
            port: Port(PORT),
            access_keys: Vec::new(),
            idle_timeout_seconds: default_idle_timeout(),
            body_timeout_seconds: default_idle_timeout(),
        }
    }
}

impl<const PORT: u16> ApiListener<PORT> {
    /// The head and idle timeout.
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.idle_timeout_seconds))
    }

    /// The body deadline.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.body_timeout_seconds))
    }
}

/// An access key one of portico's APIs accepts.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiAccessKey {
    /// The key's id, as callers configure it (`AWS_ACCESS_KEY_ID`): 16 to 128 letters and
    /// digits.
    pub access_key_id: String,
    /// The secret (`AWS_SECRET_ACCESS_KEY`): at least 16 characters.
    pub secret_access_key: String,
}

impl std::fmt::Debug for ApiAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccessKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn default_api_port<const PORT: u16>() -> Port {
    Port(PORT)
}

/// Where the Lambda Invoke API listens (default port 9001).
pub type InvokeApi = ApiListener<9001>;

/// Where the admin API listens (default port 9002): the ELBv2 target actions
/// (`aws elbv2 … --endpoint-url`) and portico's status.
pub type AdminApi = ApiListener<9002>;

/// The accelerator: static addresses that never change, and the endpoints behind them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Accelerator {
    /// A name for logs and status output. Default `portico`.
    #[serde(default = "default_accelerator_name")]
    pub name: String,
    /// The host that runs the accelerator (`portico up FILE --node NAME`). Default: every
    /// node. Set this or `nodes`.
    #[serde(default)]
    pub node: Option<String>,
    /// The hosts that run the accelerator together, each serving every static IP and
    /// listener; `ha` says how the static IPs move between them. Set this or `node`.
    #[serde(default)]
    pub nodes: Vec<crate::ha::EdgeNode>,
    /// How the static IPs stay reachable when a node fails: VRRP or BGP. Required with
    /// `nodes`.
    #[serde(default)]
    pub ha: Option<crate::ha::HighAvailability>,
    /// The static IP addresses, IPv4 and IPv6. Every listener listens on every one of them.
    pub static_ips: Vec<IpAddr>,
    /// Listeners: the ports accepted on each static IP.
    pub listeners: Vec<EdgeListener>,
    /// Endpoint groups, one per region, of every listener that has none of its own.
    #[serde(default)]
    pub endpoint_groups: Vec<EndpointGroup>,
    /// An `http://` URL that receives the static addresses as `ip-ranges.json` (POST) when
    /// the accelerator starts and whenever a reload changes them. Default: none.
    #[serde(default)]
    pub ip_ranges_webhook: Option<String>,
}

impl Accelerator {
    /// Whether portico run as `node` runs the accelerator (`None`: everything runs).
    pub fn runs_on(&self, node: Option<&str>) -> bool {
        match node {
            Some(node) if !self.nodes.is_empty() => self.nodes.iter().any(|n| n.name == node),
            _ => runs_on(self.node.as_deref(), node),
        }
    }

    /// The entry of `nodes` named `node`.
    pub fn edge_node(&self, node: &str) -> Option<&crate::ha::EdgeNode> {
        self.nodes.iter().find(|n| n.name == node)
    }
}

fn default_accelerator_name() -> String {
    "portico".to_owned()
}

/// Global Accelerator's idle timeout of TCP connections, in seconds.
pub const EDGE_TCP_IDLE_TIMEOUT_SECONDS: u32 = 340;
/// Global Accelerator's idle timeout of UDP flows, in seconds.
pub const EDGE_UDP_IDLE_TIMEOUT_SECONDS: u32 = 30;

/// One accelerator listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EdgeListener {
    /// Transport protocol. Default `tcp`.
    #[serde(default)]
    pub protocol: EdgeProtocol,
    /// One port on every static IP. `0` picks a free port (useful in tests). Set this or
    /// `port_ranges`.
    #[serde(default)]
    pub port: Option<Port>,
    /// Port ranges on every static IP, as Global Accelerator's `PortRanges`
    /// (`[{ from_port = 8000, to_port = 8009 }]`, both ends included).
    #[serde(default)]
    pub port_ranges: Vec<PortRange>,
    /// How connections of one client are spread over endpoints. Default `none`.
    #[serde(default)]
    pub client_affinity: ClientAffinity,
    /// Seconds a connection (TCP) or flow (UDP) may stay without traffic before it is
    /// closed. Default as Global Accelerator: 340 for TCP, 30 for UDP.
    #[serde(default)]
    pub idle_timeout_seconds: Option<u32>,
    /// This listener's own endpoint groups, as Global Accelerator has them per listener.
    /// Default: the accelerator's `endpoint_groups`.
    #[serde(default)]
    pub endpoint_groups: Option<Vec<EndpointGroup>>,
}

impl Accelerator {
    /// The endpoint groups of `listener`: its own, else the accelerator's.
    pub fn groups_of<'a>(&'a self, listener: &'a EdgeListener) -> &'a [EndpointGroup] {
        listener
            .endpoint_groups
            .as_deref()
            .unwrap_or(&self.endpoint_groups)
    }
}

impl EdgeListener {
    /// Every port this listener accepts on, in order.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.port.iter().map(|p| p.0).collect();
        for range in &self.port_ranges {
            ports.extend(range.from_port.0..=range.to_port.0);
        }
        ports
    }

    /// The idle timeout, with Global Accelerator's default for the protocol.
    pub fn idle_timeout(&self) -> Duration {
        let default = match self.protocol {
            EdgeProtocol::Tcp => EDGE_TCP_IDLE_TIMEOUT_SECONDS,
            EdgeProtocol::Udp => EDGE_UDP_IDLE_TIMEOUT_SECONDS,
        };
        Duration::from_secs(u64::from(self.idle_timeout_seconds.unwrap_or(default)))
    }
}

/// A range of ports, both ends included.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// The first port.
    pub from_port: Port,
    /// The last port.
    pub to_port: Port,
}

/// Transport protocol of an accelerator listener.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EdgeProtocol {
    /// TCP streams.
    #[default]
    #[serde(alias = "TCP")]
    Tcp,
    /// UDP datagrams, grouped into flows by client address.
    #[serde(alias = "UDP")]
    Udp,
}

impl EdgeProtocol {
    /// Its lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Client affinity, as Global Accelerator names it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientAffinity {
    /// Each connection is placed on its own (5-tuple hash).
    #[default]
    #[serde(alias = "none")]
    None,
    /// All connections from one client address go to the same endpoint.
    #[serde(alias = "source_ip")]
    SourceIp,
}

/// How an endpoint group checks its endpoints.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum EdgeHealthProtocol {
    /// A TCP connection opens.
    #[default]
    #[serde(alias = "tcp")]
    Tcp,
    /// `GET path` answers 200.
    #[serde(alias = "http")]
    Http,
    /// `GET path` over TLS answers 200 (the certificate is not verified, as Global
    /// Accelerator does not).
    #[serde(alias = "https")]
    Https,
}

/// The endpoints of one region.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EndpointGroup {
    /// Region name, e.g. `eu-west-1` or `local`.
    pub region: String,
    /// Share of the traffic this group accepts, 0–100. Default 100.
    #[serde(default = "default_traffic_dial")]
    pub traffic_dial_percentage: u8,
    /// How endpoints are checked: `TCP`, `HTTP` or `HTTPS`. Default `TCP`.
    #[serde(default)]
    pub health_check_protocol: EdgeHealthProtocol,
    /// Path of HTTP and HTTPS checks. Default `/`.
    #[serde(default = "default_health_path")]
    pub health_check_path: String,
    /// Port checked. Default: the port traffic goes to.
    #[serde(default)]
    pub health_check_port: Option<Port>,
    /// Seconds between health checks of each endpoint: 10 or 30 as Global Accelerator, or
    /// under 10 for tests. Default 30.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_seconds: f64,
    /// Consecutive results needed to change an endpoint's health, 1–10. Default 3.
    #[serde(default = "default_threshold_count")]
    pub threshold_count: u32,
    /// Listener ports whose traffic goes to another port on the endpoints.
    #[serde(default)]
    pub port_overrides: Vec<PortOverride>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointGroup {
    /// Time between health checks.
    pub fn health_check_interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.health_check_interval_seconds).unwrap_or(Duration::MAX)
    }
}

fn default_traffic_dial() -> u8 {
    100
}
fn default_health_path() -> String {
    "/".to_owned()
}
fn default_health_interval() -> f64 {
    30.0
}
fn default_threshold_count() -> u32 {
    3
}

/// Traffic to `listener_port` goes to `endpoint_port` on the endpoints.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortOverride {
    /// A port of an accelerator listener.
    pub listener_port: Port,
    /// The port on the endpoints.
    pub endpoint_port: Port,
}

/// One endpoint: a load balancer of this file, or any address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Endpoint {
    /// Name of a load balancer in this file; its first listener receives the traffic.
    #[serde(default)]
    pub load_balancer: Option<String>,
    /// An address to forward to, for endpoints this file does not run: `IP:PORT`, or a
    /// bare IP to receive each connection on the port it arrived on (after port
    /// overrides), as Global Accelerator does.
    #[serde(default)]
    pub address: Option<EndpointAddress>,
    /// Relative weight within the group, 0–255 (0 sends nothing). Default 128.
    #[serde(default = "default_weight")]
    pub weight: u8,
    /// Send a PROXY protocol v2 header so the endpoint sees the client's address (TCP).
    /// Default: on for load balancers of this file, off for plain addresses.
    #[serde(default)]
    pub client_ip_preservation: Option<bool>,
}

fn default_weight() -> u8 {
    128
}

/// Where an endpoint is: an IP, and a port unless traffic keeps the listener's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointAddress {
    /// Its IP.
    pub ip: IpAddr,
    /// Its port; `None` takes the port the connection arrived on.
    pub port: Option<u16>,
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self {
                ip: addr.ip(),
                port: Some(addr.port()),
            });
        }
        text.parse::<IpAddr>()
            .map(|ip| Self { ip, port: None })
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an address: expected IP:PORT, [IPv6]:PORT or a bare IP"
                ))
            })
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// An application load balancer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LoadBalancer {
    /// The host that runs it (`portico up FILE --node NAME`). Default: every node.
    #[serde(default)]
    pub node: Option<String>,
    /// Its listeners.
    pub listeners: Vec<LbListener>,
    /// Seconds an idle client connection is kept open. Default 60 (as ALB).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u32,
    /// Access logs in ALB's format. Default off.
    #[serde(default)]
    pub access_logs: AccessLogs,
    /// Accept HTTP/2: negotiated by ALPN on HTTPS listeners, and by prior knowledge (h2c)
    /// on HTTP listeners. ALB's `routing.http2.enabled`; default true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// What happens to a request's `X-Forwarded-For` (ALB's
    /// `routing.http.xff_header_processing.mode`): `append` the client's address (the
    /// default), `preserve` it as sent, or `remove` it.
    #[serde(default)]
    pub xff_header_processing_mode: XffHeaderProcessingMode,
    /// Append the client's source port to its address in `X-Forwarded-For` (ALB's
    /// `routing.http.xff_client_port.enabled`). Default false.
    #[serde(default)]
    pub xff_client_port: bool,
    /// Send the `Host` header as the client sent it (ALB's
    /// `routing.http.preserve_host_header.enabled`); by default, as on ALB, a listener on a
    /// port other than 80 (HTTP) or 443 (HTTPS) appends its port to a `Host` without one.
    #[serde(default)]
    pub preserve_host_header: bool,
    /// How HTTP/1 requests that are not RFC 7230 compliant are treated (ALB's
    /// `routing.http.desync_mitigation_mode`): `monitor` forwards everything, `defensive`
    /// (the default) refuses the severe ones and closes the connection after ambiguous ones,
    /// `strictest` refuses every one that is not compliant.
    #[serde(default)]
    pub desync_mitigation_mode: DesyncMitigationMode,
}

/// ALB's `routing.http.desync_mitigation_mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DesyncMitigationMode {
    /// Every request is forwarded; the classification is only logged.
    Monitor,
    /// Severe requests are refused (400); ambiguous ones are forwarded, and the client's
    /// and the target's connections closed after them.
    #[default]
    Defensive,
    /// Only compliant requests are forwarded.
    Strictest,
}

/// ALB's `routing.http.xff_header_processing.mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XffHeaderProcessingMode {
    /// The client's address is appended (or the header made).
    #[default]
    Append,
    /// The header goes on as the client sent it.
    Preserve,
    /// The header is removed.
    Remove,
}

fn default_true() -> bool {
    true
}

/// Where a load balancer writes its access logs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogs {
    /// Write them at all. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// `stdout`, or a file (appended to; relative to the config file). Default `stdout`.
    #[serde(default)]
    pub destination: Option<String>,
}

fn default_idle_timeout() -> u32 {
    60
}

/// One load balancer listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LbListener {
    /// Address to bind. Default `127.0.0.1`.
    #[serde(default = "default_lb_address")]
    pub address: IpAddr,
    /// Port to bind. `0` picks a free port.
    pub port: Port,
    /// Application protocol. Default `HTTP`.
    #[serde(default)]
    pub protocol: LbProtocol,
    /// For `HTTPS`: the certificates, chosen by the client's SNI host name. The first is the
    /// default certificate, used when the client sends no SNI or no certificate matches.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Expect a PROXY protocol v2 header on every connection, and refuse connections
    /// without one. Default false.
    #[serde(default)]
    pub proxy_protocol_v2: bool,
    /// With `proxy_protocol_v2`: the networks whose connections may send the header; any
    /// other peer is refused (the header names the client, and only the edge may say who
    /// that is). Default: loopback and the addresses of the accelerator's `nodes`.
    #[serde(default)]
    pub proxy_protocol_sources: Option<Vec<ipnet::IpNet>>,
    /// Rules, tried from the lowest priority number up; the first whose conditions all
    /// hold decides. Default none.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What to do with a request no rule matches.
    pub default_action: Action,
    /// Gateway checks on every request of the listener, before its rules. Default none.
    #[serde(default)]
    pub gateway: crate::gateway::Gateway,
}

fn default_lb_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Application protocol of a load balancer listener.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum LbProtocol {
    /// HTTP/1.1 (and h2c) in clear text.
    #[default]
    #[serde(alias = "http")]
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS.
    #[serde(alias = "https")]
    Https,
}

/// A certificate of an HTTPS listener: PEM files, relative to the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Certificate {
    /// The certificate chain, leaf first.
    pub certificate: String,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
}

/// A target group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TargetGroup {
    /// What the targets are.
    pub target_type: TargetType,
    /// For `lambda`: the function's name.
    #[serde(default)]
    pub function: Option<String>,
    /// For `instance` and `ip`: the targets' addresses (`host:port`), plain HTTP/1.1.
    #[serde(default)]
    pub targets: Vec<SocketAddr>,
    /// ALB's `lambda.multi_value_headers.enabled` (`lambda` only). Default false.
    #[serde(default)]
    pub multi_value_headers_enabled: bool,
    /// How requests are spread over healthy targets. Default `round_robin`.
    #[serde(default)]
    pub load_balancing_algorithm: Algorithm,
    /// Health checks; their defaults depend on the target type (see [`HealthCheck`]).
    #[serde(default)]
    pub health_check: HealthCheck,
    /// A new or recovered target's share ramps up linearly over this many seconds
    /// (30–900; 0, the default, turns slow start off). Round robin only.
    #[serde(default)]
    pub slow_start_seconds: u32,
    /// How long a removed target keeps serving its in-flight requests (0–3600). Default 300.
    #[serde(default = "default_deregistration_delay")]
    pub deregistration_delay_seconds: u32,
    /// Duration-based stickiness with the `AWSALB` cookie: how long a client stays with its
    /// target (1 s–7 days). Default off.
    #[serde(default)]
    pub stickiness_duration_seconds: Option<u32>,
}

fn default_deregistration_delay() -> u32 {
    300
}

/// The kind of targets in a group.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    /// One Lambda function.
    Lambda,
    /// HTTP servers, by address.
    Instance,
    /// HTTP servers, by address.
    Ip,
}

impl TargetType {
    /// The name ALB gives it (`lambda`, `instance`, `ip`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lambda => "lambda",
            Self::Instance => "instance",
            Self::Ip => "ip",
        }
    }
}

/// ALB's load balancing algorithms.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastOutstandingRequests,
}

/// A target group's health check settings. Unset fields take ALB's defaults for the target
/// type: for `instance`/`ip` on, path `/`, every 30 s, 6 s timeout, unhealthy after 2
/// failures; for `lambda` off, every 35 s, 30 s timeout, unhealthy after 5 failures. Both:
/// healthy after 5 successes, success is status 200.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Check at all.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The request path. Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// The port to check; default the target's own port.
    #[serde(default)]
    pub port: Option<Port>,
    /// Seconds between checks: ALB allows 5–300; portico also takes fractions down to 0.1
    /// so tests need not wait.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// Seconds to wait for an answer, less than the interval (ALB: 2–120). Default 6
    /// (`lambda`: 30).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Consecutive successes that make a target healthy, 2–10.
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a target unhealthy, 2–10. Default 2 (`lambda`: 5).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that count as success: `200`, `200,202`, `200-299` (within 200–499).
    #[serde(default)]
    pub matcher: Option<String>,
}

impl HealthCheck {
    /// The settings in force for a group of `target_type`: the given ones over ALB's
    /// defaults. Call on a validated config (an invalid matcher falls back to `200`).
    pub fn resolve(&self, target_type: TargetType) -> HealthCheckSettings {
        let lambda = target_type == TargetType::Lambda;
        let secs = |v: Option<f64>, default: f64| Duration::from_secs_f64(v.unwrap_or(default));
        HealthCheckSettings {
            enabled: self.enabled.unwrap_or(!lambda),
            path: self.path.clone().unwrap_or_else(|| "/".to_owned()),
            port: self.port.map(|p| p.0),
            interval: secs(self.interval_seconds, if lambda { 35.0 } else { 30.0 }),
            // ALB's defaults (CreateTargetGroup): HTTP 6 s and 2 failures, Lambda 30 s and 5.
            timeout: secs(self.timeout_seconds, if lambda { 30.0 } else { 6.0 }),
            healthy_threshold: self.healthy_threshold.unwrap_or(5),
            unhealthy_threshold: self
                .unhealthy_threshold
                .unwrap_or(if lambda { 5 } else { 2 }),
            matcher: self
                .matcher
                .as_deref()
                .and_then(|m| Matcher::parse(m).ok())
                .unwrap_or_default(),
        }
    }
}

/// Health check settings with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSettings {
    /// Check at all.
    pub enabled: bool,
    /// The request path.
    pub path: String,
    /// The port to check, if not the target's.
    pub port: Option<u16>,
    /// Time between checks.
    pub interval: Duration,
    /// Time to wait for an answer.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Statuses that count as success.
    pub matcher: Matcher,
}

/// The statuses a health check accepts: ALB's `200`, `200,202` or `200-299` forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl Default for Matcher {
    fn default() -> Self {
        Self(vec![(200, 200)])
    }
}

/// In ALB's form: `200`, `200,202`, `200-299`.
impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl Matcher {
    /// Parses a matcher; codes must be within 200–499, as ALB requires for HTTP checks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let code = |s: &str| -> Result<u16, String> {
            let n: u16 = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a status code"))?;
            if (200..=499).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is outside 200-499"))
            }
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (code(lo)?, code(hi)?);
                    if lo > hi {
                        return Err(format!("range {lo}-{hi} is empty"));
                    }
                    (lo, hi)
                }
                None => {
                    let n = code(part)?;
                    (n, n)
                }
            };
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    /// Whether `status` counts as healthy.
    pub fn accepts(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// A Lambda function.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Function {
    /// The runtime. Default `provided.al2023`.
    #[serde(default)]
    pub runtime: FunctionRuntime,
    /// The function's code: a directory or a `.zip` deployment package (Lambda's layout:
    /// `bootstrap` at the top for `provided`, the handler's module for the others). Relative
    /// paths are relative to the config file.
    #[serde(default)]
    pub code: Option<String>,
    /// Or, for `provided` only: the program to run and its arguments, instead of
    /// `code`/`bootstrap`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Or a container image: an OCI image layout, a directory or a `.tar` of one (as `skopeo
    /// copy`, `buildah push` or `docker save` write them), run with its `Entrypoint`,
    /// `Cmd`, `WorkingDir` and `Env` in a sandbox whose root it is. Relative to the config
    /// file.
    #[serde(default)]
    pub image: Option<String>,
    /// Lambda's `ImageConfig`: overrides of the image's `Entrypoint`, `Cmd` and
    /// `WorkingDir`.
    #[serde(default)]
    pub image_config: Option<ImageConfig>,
    /// `_HANDLER`: `module.function` for Python and Node.js (required there); default
    /// `bootstrap` for `provided`.
    #[serde(default)]
    pub handler: Option<String>,
    /// Memory in MB, 128–10240. Default 128.
    #[serde(default = "default_memory")]
    pub memory_size_mb: u32,
    /// Invocation timeout in seconds, 1–900. Default 3.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// The size of `/tmp` in MB, 512–10240 (Lambda's ephemeral storage). Default 512.
    #[serde(default = "default_ephemeral_storage")]
    pub ephemeral_storage_mb: u32,
    /// How the function's log is written: Lambda's `LoggingConfig`.
    #[serde(default)]
    pub logging_config: LoggingConfig,
    /// Layers: up to 5 `.zip` files or directories (relative to the config file), extracted
    /// in order into `/opt`, a later one overwriting an earlier one; with the code, at most
    /// 250 MB unzipped.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Most execution environments at once; none means only the global limit. 0, as on
    /// Lambda, throttles every invocation (a function switched off).
    #[serde(default)]
    pub reserved_concurrency: Option<u32>,
    /// Invocations one execution environment takes at once, 1–1024 (Lambda Managed
    /// Instances' `PerExecutionEnvironmentMaxConcurrency`; the runtime reads it in
    /// `AWS_LAMBDA_MAX_CONCURRENCY`, as the official Rust, Python and Node.js clients do).
    /// Default 1: one at a time, Lambda's classic model.
    #[serde(default)]
    pub max_concurrency_per_environment: Option<u32>,
    /// Environment variables for the function.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Hand the function AWS credentials, as Lambda hands it its execution role's (and as
    /// `sam local` does): those of `profile`, else `AWS_ACCESS_KEY_ID`… from portico's own
    /// environment, else the profile `AWS_PROFILE` (or `default`) of the shared config and
    /// credentials files. Default true; false hands it none.
    #[serde(default = "default_true")]
    pub aws_credentials: bool,
    /// The profile of the shared config and credentials files whose credentials the
    /// function gets.
    #[serde(default)]
    pub profile: Option<String>,
    /// Published versions, by number: immutable snapshots of the function's code and
    /// configuration (`PublishVersion` writes them; each is a function table of its own,
    /// without versions, aliases or reserved concurrency).
    #[serde(default)]
    pub versions: BTreeMap<String, Function>,
    /// Aliases, by name: a version each, and optionally a share of its invocations for a
    /// second one (`fn:ALIAS` in invocations and target groups).
    #[serde(default)]
    pub aliases: BTreeMap<String, Alias>,
}

/// A function's alias.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    /// The version it names: `$LATEST` or a published version's number.
    pub function_version: String,
    /// A second version and the share of the alias's invocations it gets, 0 to 1
    /// (`RoutingConfig.AdditionalVersionWeights`: at most one).
    #[serde(default)]
    pub routing_config: BTreeMap<String, f64>,
    /// Its description.
    #[serde(default)]
    pub description: String,
}

fn default_memory() -> u32 {
    128
}
fn default_timeout() -> u32 {
    3
}
fn default_ephemeral_storage() -> u32 {
    512
}

impl Function {
    /// `_HANDLER`: the configured one, or `bootstrap` for `provided`.
    pub fn handler(&self) -> &str {
        self.handler.as_deref().unwrap_or("bootstrap")
    }

    /// Whether `qualifier` names one of its versions or aliases (`$LATEST`, a published
    /// version's number, an alias's name).
    pub fn has_qualifier(&self, qualifier: &str) -> bool {
        qualifier == "$LATEST"
            || self.versions.contains_key(qualifier)
            || self.aliases.contains_key(qualifier)
    }
}

/// Lambda's `ImageConfig`: what overrides an image's own configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Instead of the image's `Entrypoint`.
    #[serde(default)]
    pub entry_point: Option<Vec<String>>,
    /// Instead of its `Cmd`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Instead of its `WorkingDir`.
    #[serde(default)]
    pub working_directory: Option<String>,
}

/// Lambda's `LoggingConfig` of a function.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `Text` (default) or `JSON`: the function's log lines and the platform's as JSON
    /// records (`AWS_LAMBDA_LOG_FORMAT`).
    #[serde(default)]
    pub log_format: LogFormat,
    /// With JSON: the least level of the function's own records kept (`TRACE`, `DEBUG`,
    /// `INFO`, `WARN`, `ERROR`, `FATAL`; `AWS_LAMBDA_LOG_LEVEL`).
    #[serde(default)]
    pub application_log_level: Option<LogLevel>,
    /// With JSON: the least level of the platform's records kept (`DEBUG`, `INFO`, `WARN`).
    #[serde(default)]
    pub system_log_level: Option<LogLevel>,
}

/// A log format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain lines.
    #[default]
    Text,
    /// JSON records.
    #[serde(rename = "JSON")]
    Json,
}

/// A log level, lowest first.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// `TRACE`.
    Trace,
    /// `DEBUG`.
    Debug,
    /// `INFO`.
    Info,
    /// `WARN`.
    Warn,
    /// `ERROR`.
    Error,
    /// `FATAL`.
    Fatal,
}

/// A function runtime, by Lambda's identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionRuntime {
    /// OS-only runtime (`provided`, `provided.al2`, `provided.al2023`): run `bootstrap`,
    /// which speaks the Runtime API itself.
    Provided(ProvidedOs),
    /// `python3.N`, run through the official `awslambdaric` client.
    Python {
        /// `N`.
        minor: u8,
    },
    /// `nodejsN.x`, run through the official `aws-lambda-ric` client.
    Nodejs {
        /// `N`.
        major: u8,
    },
}

/// Python versions Lambda has runtimes for.
pub const PYTHON_MINORS: std::ops::RangeInclusive<u8> = 9..=14;
/// Node.js versions Lambda has runtimes for.
pub const NODEJS_MAJORS: [u8; 4] = [18, 20, 22, 24];

impl Default for FunctionRuntime {
    /// `provided.al2023`, Lambda's current OS-only runtime.
    fn default() -> Self {
        Self::Provided(ProvidedOs::Al2023)
    }
}

/// The operating system of an OS-only runtime, as its identifier names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvidedOs {
    /// `provided` (Amazon Linux).
    Al1,
    /// `provided.al2`.
    Al2,
    /// `provided.al2023`.
    Al2023,
}

impl FunctionRuntime {
    /// Parses Lambda's runtime identifier.
    pub fn parse(id: &str) -> Option<Self> {
        match id {
            "provided" => return Some(Self::Provided(ProvidedOs::Al1)),
            "provided.al2" => return Some(Self::Provided(ProvidedOs::Al2)),
            "provided.al2023" => return Some(Self::Provided(ProvidedOs::Al2023)),
            _ => {}
        }
        if let Some(minor) = id.strip_prefix("python3.") {
            let minor: u8 = minor.parse().ok()?;
            return PYTHON_MINORS
                .contains(&minor)
                .then_some(Self::Python { minor });
        }
        let major: u8 = id
            .strip_prefix("nodejs")?
            .strip_suffix(".x")?
            .parse()
            .ok()?;
        NODEJS_MAJORS
            .contains(&major)
            .then_some(Self::Nodejs { major })
    }
}

impl fmt::Display for FunctionRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provided(ProvidedOs::Al1) => f.write_str("provided"),
            Self::Provided(ProvidedOs::Al2) => f.write_str("provided.al2"),
            Self::Provided(ProvidedOs::Al2023) => f.write_str("provided.al2023"),
            Self::Python { minor } => write!(f, "python3.{minor}"),
            Self::Nodejs { major } => write!(f, "nodejs{major}.x"),
        }
    }
}

impl<'de> Deserialize<'de> for FunctionRuntime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        Self::parse(&id).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown runtime {id:?}: expected provided, provided.al2, provided.al2023, \
                 python3.{}-python3.{} or nodejs{{{}}}.x",
                PYTHON_MINORS.start(),
                PYTHON_MINORS.end(),
                NODEJS_MAJORS.map(|m| m.to_string()).join(",")
            ))
        })
    }
}

/// A TCP port; `0` asks the OS for a free one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u16::try_from(n)
            .map(Port)
            .map_err(|_| serde::de::Error::custom(format!("{n} is not a port (0-65535)")))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
