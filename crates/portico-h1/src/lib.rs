//! HTTP/1.1 client connections to a load balancer's targets, polled by the task that
//! serves the request.
//!
//! hyper's client runs each connection in a task of its own: a request goes to it over a
//! channel, and the response and each piece of its body come back over others, so every
//! request wakes two tasks and crosses three queues. Here the future that sends a request
//! writes it and reads the response head itself, and the response body reads the rest
//! from the socket as the client's side writes it out: one task, no channel, on the path
//! HAProxy takes in its event loop.
//!
//! - `request`: encoding and framing a request, and whether it may be sent again;
//! - `response`: parsing a response head (httparse), ALB's limits, body framing;
//! - `body`: the streamed response body and its chunked decoder;
//! - `connection`: one connection, the exchange of one request on it, and its recycling.

mod body;
mod connection;
mod error;
mod request;
mod response;

pub use body::ResponseBody;
pub use connection::{Connection, Failure, Recycle};
pub use error::{BoxError, Error};
pub use request::Outgoing;
pub use response::{MAX_HEAD, MAX_HEADERS};
