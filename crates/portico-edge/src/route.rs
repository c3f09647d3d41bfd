//! What a listener forwards to, swappable at run time.
//!
//! Every socket of a listener holds a [`RouteCell`]; a reload stores a new [`Route`] in it,
//! and each new connection or UDP flow reads the route current at its arrival.

use crate::endpoint::EndpointGroup;
use crate::selection::Affinity;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where one listener's traffic goes.
#[derive(Debug)]
pub struct Route {
    /// Endpoint groups, in the order of the configuration.
    pub groups: Vec<EndpointGroup>,
    /// Client affinity.
    pub affinity: Affinity,
    /// Connections (TCP) or flows (UDP) idle this long are closed.
    pub idle_timeout: Duration,
    /// How long connecting to one endpoint may take before the next is tried.
    pub connect_timeout: Duration,
}

/// A listener's current [`Route`], shared by its sockets.
#[derive(Debug, Clone)]
pub struct RouteCell(Arc<RwLock<Arc<Route>>>);

impl RouteCell {
    /// A cell holding `route` (which other cells may share).
    pub fn new(route: Arc<Route>) -> Self {
        Self(Arc::new(RwLock::new(route)))
    }

    /// The route now.
    pub fn current(&self) -> Arc<Route> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the route for new connections.
    pub fn store(&self, route: Arc<Route>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = route;
    }
}
