//! The application load balancer tier: HTTP listeners that turn requests into Lambda
//! invocations with ALB's exact event and response semantics.
//!
//! A request's path through this crate, phase by phase:
//! 1. [`listener`] accepts a connection; with PROXY protocol enabled, `portico_proxy_protocol`
//!    reads the client's real address first and refuses connections without a header;
//! 2. hyper parses HTTP/1.1; [`forward`] checks the request against ALB's limits;
//! 3. [`forwarded`] adds `X-Forwarded-For/-Proto/-Port` and `X-Amzn-Trace-Id`;
//! 4. [`event`] builds the ALB event JSON for the target group;
//! 5. the function is called through [`portico_invoke::Invoker`];
//! 6. [`reply`] turns the function's reply into the HTTP response;
//! 7. any failure becomes ALB's status code and error page in [`error`], and nowhere else.
//!
//! [`target_group`] holds what a Lambda target group is at run time; [`rules`] compiles and
//! matches listener rule conditions.

pub mod error;
pub mod event;
pub mod forward;
pub mod forwarded;
pub mod listener;
pub mod reply;
pub mod rules;
pub mod target_group;

pub use listener::{ListenerSpec, serve};
pub use target_group::LambdaTargetGroup;
