//! The accelerator tier: static IPs that never change, forwarding TCP to endpoints.
//!
//! The edge knows addresses and health, never HTTP. For each accepted connection it picks an
//! endpoint group (the first one, in order of preference, that has healthy endpoints and
//! whose traffic dial accepts the connection), picks an endpoint by weight or by client
//! affinity, writes a PROXY protocol v2 header when the endpoint wants one, and copies bytes
//! both ways until both sides are done.
//!
//! Layout:
//! - [`endpoint`]: endpoint groups and endpoints at run time, with their health;
//! - [`selection`]: which endpoint a new connection goes to;
//! - [`health`]: TCP health checks that move endpoints in and out of service;
//! - [`listener`]: accepting on a static address and forwarding.

pub mod endpoint;
pub mod health;
pub mod listener;
pub mod selection;

pub use endpoint::{Endpoint, EndpointGroup};
pub use listener::{Edge, serve};
pub use selection::Affinity;
