//! The one response body type of the load balancer: a boxed body that is either a buffer
//! (Lambda replies, fixed responses, error pages) or a backend's streamed body.

use bytes::Bytes;
use http::Response;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Every response body the load balancer sends.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body from a buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A buffered response as a [`Body`] response.
pub fn boxed(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed())
}
