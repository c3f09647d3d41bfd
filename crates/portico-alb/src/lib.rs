//! The application load balancer tier: HTTP listeners that turn requests into Lambda
//! invocations with ALB's exact event and response semantics.
//!
//! A request's path through this crate, phase by phase:
//! 1. [`listener`] accepts a connection; with PROXY protocol enabled, `portico_proxy_protocol`
//!    reads the client's real address first and refuses connections without a header; on
//!    HTTPS listeners [`tls`] picks the certificate by SNI and ALPN picks the HTTP version;
//! 2. hyper parses HTTP/1.1 or HTTP/2; [`handler`] checks the request against ALB's limits;
//! 3. the listener's [`router`] finds the first rule whose [`rules`] conditions hold, or the
//!    default action;
//! 4. the action answers: [`fixed_response`], [`redirect`], or a forward to a target group
//!    picked by weight (with [`sticky`] group cookies);
//! 5. [`forwarded`] adds `X-Forwarded-For/-Proto/-Port` and `X-Amzn-Trace-Id`;
//! 6. a Lambda target group ([`lambda_target`]) builds the [`event`], invokes the function
//!    through [`portico_invoke::Invoker`] and turns the [`reply`] into the response; an HTTP
//!    target group ([`http_target`]) proxies to a healthy target over its keep-alive
//!    connections (`upstream`);
//! 7. any failure becomes ALB's status code and error page in [`error`], and nowhere else.
//!
//! [`access_log`] writes ALB's access log lines. [`target_group`] holds what a target group is at run time; [`body`] is the one response
//! body type.

pub mod access_log;
pub mod body;
pub mod desync;
pub mod error;
pub mod event;
pub mod fixed_response;
pub mod forwarded;
pub mod handler;
pub mod http_target;
pub mod lambda_target;
pub mod listener;
mod malformed;
pub mod redirect;
pub mod reply;
pub mod router;
pub mod rules;
pub mod sticky;
pub mod target_group;
pub mod tls;
mod upstream;

pub use listener::{ListenerSpec, Listening, listen, serve};
pub use router::Router;
pub use target_group::{LambdaTargetGroup, TargetGroup};

#[cfg(test)]
mod fuzz;
