//! A request on its way to a target: its head encoded once, its body framed
//! (`Content-Length` when the size is known, chunked otherwise) and written as it comes.
//!
//! A request whose body is all at hand when it starts (most are: the body arrived with the
//! head) is one buffer, written with one call, and kept until the response comes, so it
//! can be sent again on another connection if this one turns out to be dead.
//!
//! Its header map, emptied once the head is encoded, is kept to hold the response's
//! headers: the map (its allocation, grown to fit this kind of traffic) goes round from
//! request to response instead of one being allocated per message. hyper's server does the
//! same with a response's map for the next request on its connection, so on a keep-alive
//! connection one map carries every message.

use crate::error::Error;
use bytes::Bytes;
use http::{HeaderMap, Method, header, request};
use http_body::Body;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Body bytes gathered into the buffer before it is written.
const FILL_LIMIT: usize = 64 * 1024;

/// A request being sent. Sending it twice is harmless when nothing of it was written, or
/// when its method is idempotent (RFC 9110 §9.2.2, as `Method::is_idempotent` has it).
pub struct Outgoing<B> {
    buf: Vec<u8>,
    written: usize,
    /// The body still to read; `None` once it has ended.
    body: Option<B>,
    chunked: bool,
    /// `buf` holds the request from its first byte.
    whole: bool,
    idempotent: bool,
    /// A `HEAD` request: its response has no body.
    head: bool,
    /// The request's header map, emptied, for the response's headers.
    spare: HeaderMap,
}

impl<B> std::fmt::Debug for Outgoing<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("buffered", &self.buf.len())
            .field("written", &self.written)
            .field("body_ended", &self.body.is_none())
            .field("chunked", &self.chunked)
            .finish()
    }
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// Encodes the head of a request (origin-form target, `Host` already among the
    /// headers) for `body`. Framing headers the client sent are replaced by the ones that
    /// fit the body as it is forwarded.
    pub fn new(head: request::Parts, body: B) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(head.method.as_str().as_bytes());
        buf.push(b' ');
        let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in &head.headers {
            if name == header::CONTENT_LENGTH {
                had_length = true;
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let mut chunked = false;
        let body = if body.is_end_stream() {
            let expects_body = matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
            if had_length || expects_body {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
            None
        } else {
            match body.size_hint().exact() {
                Some(length) => {
                    buf.extend_from_slice(b"content-length: ");
                    buf.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                None => {
                    buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
            }
            Some(body)
        };
        buf.extend_from_slice(b"\r\n");
        let mut spare = head.headers;
        spare.clear();
        if spare.capacity() > crate::response::MAX_HEADERS {
            // Room for more fields than a response may have: a client's many headers are
            // not kept for the rest of its connection.
            spare = HeaderMap::new();
        }
        Self {
            buf,
            written: 0,
            body,
            chunked,
            whole: true,
            idempotent: head.method.is_idempotent(),
            head: head.method == Method::HEAD,
            spare,
        }
    }

    /// Writes as much of the request as the body and the socket allow; ready once all of
    /// it is written.
    pub(crate) fn poll_send(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        self.fill(cx)?;
        loop {
            while self.written < self.buf.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Error::Write(
                            std::io::ErrorKind::WriteZero.into(),
                        )));
                    }
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            // Everything so far is written and more is to come: the buffer starts over.
            self.buf.clear();
            self.written = 0;
            self.whole = false;
            self.fill(cx)?;
            if self.buf.is_empty() {
                // The body is pending and has our waker.
                return Poll::Pending;
            }
        }
    }

    /// Moves the body frames that are ready into the buffer, framed, up to [`FILL_LIMIT`].
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        while let Some(body) = self.body.as_mut() {
            if self.buf.len() >= FILL_LIMIT {
                break;
            }
            let ended = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => true,
                Poll::Ready(Some(Err(e))) => return Err(Error::RequestBody(Box::new(e))),
                // Trailers are not forwarded (ALB does not forward them either).
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        push_data(&mut self.buf, self.chunked, &data);
                        body.is_end_stream()
                    }
                    Err(_trailers) => false,
                },
            };
            if ended {
                if self.chunked {
                    self.buf.extend_from_slice(b"0\r\n\r\n");
                }
                self.body = None;
            }
        }
        Ok(())
    }
}

/// Appends a piece of the body, as a chunk when `chunked`.
fn push_data(buf: &mut Vec<u8>, chunked: bool, data: &Bytes) {
    if data.is_empty() {
        return;
    }
    if chunked {
        push_hex(buf, data.len());
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
    } else {
        buf.extend_from_slice(data);
    }
}

impl<B> Outgoing<B> {
    /// Whether this is a `HEAD` request.
    pub(crate) fn is_head(&self) -> bool {
        self.head
    }

    /// The emptied header map of the request, for the response's headers (an empty map
    /// without an allocation once taken).
    pub(crate) fn spare_headers(&mut self) -> &mut HeaderMap {
        &mut self.spare
    }

    /// Whether all of the request has been written.
    pub(crate) fn is_sent(&self) -> bool {
        self.body.is_none() && self.written == self.buf.len()
    }

    /// Makes the request ready to be sent again from its first byte, if it still has every
    /// byte of it and sending it twice is harmless: nothing of it was written, or its
    /// method is idempotent (RFC 9110 §9.2.2).
    pub(crate) fn rewind(&mut self) -> bool {
        let replayable =
            self.whole && self.body.is_none() && (self.idempotent || self.written == 0);
        if replayable {
            self.written = 0;
        }
        replayable
    }
}

/// Appends `n` in lower-case hex, as a chunk size.
fn push_hex(buf: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        buf.push(b"0123456789abcdef"[(n >> (4 * i)) & 0xf]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    fn outgoing(fields: usize) -> (usize, Outgoing<Empty<Bytes>>) {
        let mut builder = http::Request::builder().uri("/x").header("host", "a");
        for i in 0..fields {
            builder = builder.header(format!("x-{i}"), "v");
        }
        let (head, body) = builder.body(Empty::new()).unwrap().into_parts();
        let capacity = head.headers.capacity();
        (capacity, Outgoing::new(head, body))
    }

    #[test]
    fn the_emptied_header_map_is_kept_for_the_response() {
        let (capacity, mut request) = outgoing(6);
        assert!(String::from_utf8_lossy(&request.buf).contains("x-5: v\r\n"));
        let spare = request.spare_headers();
        assert!(spare.is_empty());
        assert_eq!(spare.capacity(), capacity);
    }

    #[test]
    fn a_map_larger_than_any_response_is_not_kept() {
        let (capacity, mut request) = outgoing(300);
        assert!(capacity > crate::response::MAX_HEADERS);
        assert_eq!(request.spare_headers().capacity(), 0);
    }
}
