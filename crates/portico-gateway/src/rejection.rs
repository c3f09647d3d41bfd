//! Requests the gateway turns away, answered as API Gateway answers them: its status, its
//! `{"message": …}` body, `x-amzn-ErrorType`, and `WWW-Authenticate` or `Retry-After` where
//! they apply.

use crate::api_keys::KeyError;
use crate::jwt::JwtError;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::time::Duration;

/// Why the gateway refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The JWT is missing or invalid (401), or lacks a required scope (403).
    #[error("JWT: {error}")]
    Jwt {
        /// What is wrong with it.
        error: JwtError,
        /// The rule's scopes, for `WWW-Authenticate`.
        scopes: String,
    },
    /// The API key is missing or unknown (403), or over quota (429).
    #[error("{0}")]
    ApiKey(KeyError),
    /// The rate limit's bucket is empty (429).
    #[error("rate limit: retry after {0:?}")]
    Throttled(Duration),
    /// The request failed validation (400); the message names what failed.
    #[error("{0}")]
    Invalid(String),
}

impl Rejection {
    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Jwt { error, .. } if error.is_forbidden() => StatusCode::FORBIDDEN,
            Self::Jwt { .. } => StatusCode::UNAUTHORIZED,
            Self::ApiKey(KeyError::OverQuota { .. }) | Self::Throttled(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ApiKey(_) => StatusCode::FORBIDDEN,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short name of the outcome, for metrics and access logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Jwt { error, .. } if error.is_forbidden() => "insufficient_scope",
            Self::Jwt { .. } => "unauthorized",
            Self::ApiKey(KeyError::OverQuota { .. }) => "quota_exceeded",
            Self::ApiKey(_) => "forbidden",
            Self::Throttled(_) => "throttled",
            Self::Invalid(_) => "invalid",
        }
    }

    /// API Gateway's error type and message.
    fn error_type_and_message(&self) -> (&'static str, &str) {
        match self {
            Self::Jwt { error, .. } if error.is_forbidden() => {
                ("AccessDeniedException", "Forbidden")
            }
            Self::Jwt { .. } => ("UnauthorizedException", "Unauthorized"),
            Self::ApiKey(KeyError::OverQuota { .. }) => {
                ("LimitExceededException", "Limit Exceeded")
            }
            Self::ApiKey(_) => ("ForbiddenException", "Forbidden"),
            Self::Throttled(_) => ("TooManyRequestsException", "Too Many Requests"),
            Self::Invalid(message) => ("BadRequestException", message),
        }
    }

    /// The response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (error_type, message) = self.error_type_and_message();
        let body = serde_json::json!({ "message": message }).to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
        match &self {
            Self::Jwt { error, scopes } => {
                let value = match error {
                    JwtError::Missing => format!("Bearer scope=\"{scopes}\""),
                    e if e.is_forbidden() => format!(
                        "Bearer scope=\"{scopes}\" error=\"insufficient_scope\" error_description=\"{e}\""
                    ),
                    e => format!(
                        "Bearer scope=\"{scopes}\" error=\"invalid_token\" error_description=\"{e}\""
                    ),
                };
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Self::Throttled(wait)
            | Self::ApiKey(KeyError::OverQuota {
                retry_after: wait, ..
            }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_seconds(*wait)));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_api_gateways() {
        let r = Rejection::Jwt {
            error: JwtError::Audience,
            scopes: "orders:read".into(),
        }
        .into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer scope=\"orders:read\" error=\"invalid_token\" error_description=\"the token does not have a valid audience\""
        );
        let r = Rejection::Jwt {
            error: JwtError::Scope,
            scopes: "a b".into(),
        }
        .into_response();
        assert_eq!(r.status(), 403);
        let r = Rejection::Throttled(Duration::from_millis(11_200)).into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "12");
        assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
        let r = Rejection::ApiKey(KeyError::Missing).into_response();
        assert_eq!(r.status(), 403);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_seconds(Duration::ZERO), 1);
        assert_eq!(retry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_seconds(Duration::from_millis(2001)), 3);
    }
}
