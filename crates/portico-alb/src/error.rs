//! Everything that can go wrong on the request path, and the one place where it becomes an
//! HTTP status and ALB's error page.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use portico_invoke::InvokeError;

/// Which side caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something ALB refuses.
    Client,
    /// The function failed or replied badly.
    Target,
    /// portico itself (shutting down, overloaded).
    Portico,
}

/// A request that could not be answered by the target.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The body is over the Lambda target limit.
    #[error("request body over the limit of {limit} bytes")]
    RequestTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request line is over ALB's limit.
    #[error("request line over the limit of {limit} bytes")]
    UriTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A header, or all headers together, over ALB's limit.
    #[error("request headers over the limit of {limit} bytes")]
    HeaderTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// WebSocket (or any) upgrade to a Lambda target.
    #[error("upgrade requests are not supported by Lambda targets")]
    UpgradeRefused,
    /// The request body could not be read.
    #[error("request body could not be read: {0}")]
    BadBody(String),
    /// The invocation did not take place.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The function ran and failed (raised, timed out, crashed).
    #[error("function failed with {error_type}")]
    FunctionFailed {
        /// Lambda's error type.
        error_type: String,
    },
    /// The reply is not a valid ALB response document.
    #[error("invalid function reply: {0}")]
    InvalidReply(String),
    /// The request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The target group has no targets that may take requests.
    #[error("the target group has no registered targets")]
    NoTargets,
    /// A connection to the target could not be opened.
    #[error("cannot connect to the target: {0}")]
    TargetConnect(String),
    /// No connection to the target within ALB's connect timeout (10 s).
    #[error("no connection to {target} within {timeout:?}")]
    TargetConnectTimeout {
        /// The target.
        target: std::net::SocketAddr,
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The client's request body did not arrive within the load balancer's idle timeout.
    #[error("the request body did not arrive within {timeout:?}")]
    ClientTimeout {
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// `TRACE`, `CONNECT` or a method over 127 characters, which ALB does not take.
    #[error("the method is not supported")]
    MethodNotAllowed,
    /// `X-Forwarded-For` with more addresses than ALB takes.
    #[error("X-Forwarded-For with {count} addresses, over the limit of {limit}")]
    TooManyForwardedFor {
        /// Addresses in the request's header.
        count: usize,
        /// ALB's limit (30).
        limit: usize,
    },
    /// A transfer coding other than `chunked` and `identity`.
    #[error("unsupported Transfer-Encoding {0:?}")]
    UnsupportedTransferEncoding(String),
    /// A request for a Lambda target whose headers or text body are not UTF-8.
    #[error("the request's {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// The target closed or broke the connection before a full response head.
    #[error("the target failed: {0}")]
    TargetFailed(String),
    /// The target did not answer in time.
    #[error("the target did not answer within {timeout:?}")]
    TargetTimeout {
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The reply JSON is over the 1 MB limit.
    #[error("function reply of {size} bytes is over the limit of {limit} bytes")]
    ReplyTooLarge {
        /// Size of the reply.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A gateway policy refused the request (JWT, API key, rate limit, validation); it is
    /// answered as API Gateway answers, not with ALB's error page.
    #[error("gateway: {0}")]
    Gateway(#[from] portico_gateway::Rejection),
}

impl LbError {
    /// The status ALB answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            // ALB: "The request header exceeded 16K per single header, or 64K for the
            // entire header": a 400, not 431.
            Self::HeaderTooLarge { .. }
            | Self::UpgradeRefused
            | Self::BadBody(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyForwardedFor { .. } => X_FORWARDED_FOR_TOO_LONG,
            Self::UnsupportedTransferEncoding(_) => StatusCode::NOT_IMPLEMENTED,
            Self::NoTargets => StatusCode::SERVICE_UNAVAILABLE,
            Self::TargetConnect(_) | Self::TargetFailed(_) | Self::NotUtf8(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::TargetTimeout { .. } | Self::TargetConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Invoke(InvokeError::Throttled { .. } | InvokeError::ShuttingDown) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Invoke(InvokeError::RequestTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invoke(InvokeError::NotFound(_) | InvokeError::InitFailed { .. })
            | Self::FunctionFailed { .. }
            | Self::InvalidReply(_)
            | Self::ReplyTooLarge { .. } => StatusCode::BAD_GATEWAY,
            Self::Gateway(rejection) => rejection.status(),
        }
    }

    /// The `error_reason` ALB writes in its access log for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequestTooLarge { .. } | Self::Invoke(InvokeError::RequestTooLarge { .. }) => {
                "LambdaRequestTooLarge"
            }
            Self::UriTooLong { .. }
            | Self::HeaderTooLarge { .. }
            | Self::UpgradeRefused
            | Self::BadBody(_)
            | Self::BadRequest(_)
            | Self::MethodNotAllowed
            | Self::ClientTimeout { .. }
            | Self::TooManyForwardedFor { .. }
            | Self::UnsupportedTransferEncoding(_)
            | Self::NoTargets
            | Self::TargetConnect(_)
            | Self::TargetConnectTimeout { .. }
            | Self::TargetFailed(_)
            | Self::TargetTimeout { .. }
            | Self::Gateway(_) => "-",
            Self::NotUtf8(_) => "LambdaBadRequest",
            Self::Invoke(InvokeError::Throttled { .. }) => "LambdaThrottling",
            Self::Invoke(InvokeError::ShuttingDown) => "LambdaServiceException",
            Self::Invoke(InvokeError::NotFound(_)) => "LambdaResourceNotFound",
            Self::Invoke(InvokeError::InitFailed { .. }) | Self::FunctionFailed { .. } => {
                "LambdaUnhandled"
            }
            Self::InvalidReply(_) => "LambdaInvalidResponse",
            Self::ReplyTooLarge { .. } => "LambdaResponseTooLarge",
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::RequestTooLarge { .. }
            | Self::UriTooLong { .. }
            | Self::HeaderTooLarge { .. }
            | Self::UpgradeRefused
            | Self::BadBody(_)
            | Self::BadRequest(_)
            | Self::MethodNotAllowed
            | Self::ClientTimeout { .. }
            | Self::TooManyForwardedFor { .. }
            | Self::UnsupportedTransferEncoding(_)
            | Self::NotUtf8(_)
            | Self::Gateway(_) => Side::Client,
            Self::Invoke(InvokeError::RequestTooLarge { .. }) => Side::Client,
            Self::Invoke(InvokeError::ShuttingDown) => Side::Portico,
            _ => Side::Target,
        }
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Self::Gateway(rejection) => rejection.into_response(),
            other => error_page(other.status()),
        }
    }
}

/// ALB's status for an `X-Forwarded-For` with more than 30 addresses.
pub const X_FORWARDED_FOR_TOO_LONG: StatusCode = match StatusCode::from_u16(463) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// ALB's error page for `status`: a short HTML document, `Server: awselb/2.0`, titled as ALB
/// titles it (`503 Service Temporarily Unavailable`; a status without a reason phrase, such
/// as 463, by its number alone).
pub fn error_page(status: StatusCode) -> Response<Full<Bytes>> {
    let body = page_html(status);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::SERVER,
        header::HeaderValue::from_static("awselb/2.0"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html"),
    );
    response
}

/// The HTML of ALB's error page for `status`.
fn page_html(status: StatusCode) -> String {
    let title = match (status, status.canonical_reason()) {
        (StatusCode::SERVICE_UNAVAILABLE, _) => "503 Service Temporarily Unavailable".to_owned(),
        (_, Some(reason)) => format!("{} {reason}", status.as_u16()),
        (_, None) => status.as_u16().to_string(),
    };
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
    )
}

/// ALB's error page for `status` as HTTP/1.1 bytes, head and body, for a connection that
/// closes after it (one whose request hyper could not parse).
pub fn error_page_bytes(status: StatusCode) -> (String, String) {
    let body = page_html(status);
    let head = format!(
        "HTTP/1.1 {} {}\r\nServer: awselb/2.0\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        body.len(),
    );
    (head, body)
}
