//! The one response body type of the load balancer: a boxed body that is either a buffer
//! (Lambda replies, fixed responses, error pages) or a backend's streamed body.

use bytes::Bytes;
use http::Response;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Why a body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client's request body broke off.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// A target's response body broke off.
    #[error(transparent)]
    Target(#[from] portico_h1::Error),
}

/// Every body the load balancer sends or forwards.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body from a buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A client's request body, as a [`Body`].
pub fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(BodyError::from).boxed()
}

/// A buffered response as a [`Body`] response.
pub fn boxed(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed())
}
