//! The accelerator tier: static IPs that never change, forwarding TCP connections and UDP
//! flows to endpoints in the nearest healthy region.
//!
//! The edge knows addresses and health, never HTTP. For each new connection or flow it
//! picks an endpoint group (the nearest, by the round-trip time its health checks measure,
//! that has healthy endpoints and whose traffic dial accepts it), picks an endpoint by
//! weight or by client affinity, writes a PROXY protocol v2 header when the endpoint wants
//! one, and copies bytes both ways.
//!
//! Layout:
//! - [`accelerator`]: static addresses, listeners and groups, started and reloaded in place;
//! - [`endpoint`]: endpoint groups and endpoints at run time, with their health;
//! - [`route`]: what a listener forwards to, swappable by reloads;
//! - [`selection`]: which endpoint a new connection goes to;
//! - [`health`]: TCP, HTTP and HTTPS health checks that move endpoints in and out of service;
//! - [`tcp`] and [`relay`]: accepting TCP connections and copying them zero-copy;
//! - [`udp`]: UDP flows;
//! - [`ip_ranges`]: the static addresses as `ip-ranges.json`, and the webhook.

pub mod accelerator;
pub mod endpoint;
pub mod health;
pub mod ip_ranges;
pub mod relay;
pub mod route;
pub mod selection;
pub mod tcp;
pub mod udp;

pub use accelerator::{
    Accelerator, AcceleratorSpec, EndpointSpec, GroupSpec, ListenerSpec, Transport,
};
pub use endpoint::{Endpoint, EndpointGroup, Target};
pub use selection::Affinity;
