//! The `fixed-response` action: a status, an optional content type and a body, answered by
//! the load balancer itself.

use crate::body::{Body, full};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A compiled fixed response.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedResponse {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl FixedResponse {
    /// Compiles the configured response (validated: status and content type are ALB's).
    pub fn compile(config: &portico_config::FixedResponse) -> Self {
        Self {
            status: StatusCode::from_u16(config.status_code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            content_type: config
                .content_type
                .as_deref()
                .and_then(|ct| HeaderValue::from_str(ct).ok()),
            body: Bytes::from(config.message_body.clone().unwrap_or_default()),
        }
    }

    /// The response.
    pub fn respond(&self) -> Response<Body> {
        let mut response = Response::new(full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::SERVER, HeaderValue::from_static("awselb/2.0"));
        if let Some(ct) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        response
    }
}
