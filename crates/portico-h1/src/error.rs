//! What can go wrong between the load balancer and a target, as one typed error.

use std::io;

/// An error of one request to a target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the request failed.
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// The target closed the connection before a whole response head.
    #[error("the target closed the connection before its response")]
    ClosedBeforeResponse,
    /// The target closed the connection before the end of its response body.
    #[error("the target closed the connection in the middle of its response body")]
    ClosedInBody,
    /// The response head is not HTTP/1.
    #[error("malformed response head: {0}")]
    MalformedHead(httparse::Error),
    /// The response head is larger than allowed.
    #[error("the response head is larger than {limit} bytes")]
    HeadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The response has more header fields than allowed.
    #[error("the response has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The status code is outside 100–999.
    #[error("invalid status code {0}")]
    BadStatus(u16),
    /// A header field name or value that HTTP does not allow.
    #[error("invalid response header field {0:?}")]
    BadHeader(String),
    /// `Content-Length` is not a number, or its values disagree.
    #[error("invalid content-length in the response")]
    BadContentLength,
    /// A `101 Switching Protocols` that nobody asked for.
    #[error("the target switched protocols without being asked to")]
    UnexpectedSwitch,
    /// The chunked response body breaks its framing.
    #[error("malformed chunked response body: {0}")]
    BadChunk(&'static str),
    /// The request body (the client's upload) failed.
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
}

/// The error of a body that is not this crate's: a request body being forwarded.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
