//! A request head hyper cannot parse gets ALB's answer instead of hyper's.
//!
//! hyper answers such a head itself, with an empty 400 (431 or 414 when it is oversized),
//! and ends the connection. ALB answers with its error page, and a transfer coding other
//! than `chunked` (hyper refuses any request whose last coding is not `chunked`, as RFC 9112
//! asks) with 501. [`Held`] wraps a connection's stream and holds back a write that is a
//! whole bodiless 4xx head; if the connection shuts down next, that was hyper's automatic
//! reply: the stream is parked untouched in the connection's [`Parking`], and the listener
//! writes ALB's page for hyper's error with [`answer`]. Any other call on the stream first
//! writes the held bytes out, so a response or body that merely looks like such a head
//! loses nothing and keeps its order. The check on the hot path is one 10-byte compare per
//! write.
//!
//! hyper's error does not carry the header's value, so `Transfer-Encoding: identity` alone,
//! which ALB lists as supported, is answered with 501 too (RFC 9112 no longer defines
//! `identity`; no client of today sends it).

use bytes::Bytes;
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long ALB's answer to a malformed request may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a connection's stream waits after hyper's automatic reply was held back.
pub(crate) type Parking<I> = Arc<Mutex<Option<I>>>;

/// A connection's stream that holds back hyper's automatic reply to a malformed head.
pub(crate) struct Held<I> {
    /// `None` once parked.
    io: Option<I>,
    /// A write held back, and how much of it has been written out since.
    held: Option<(Bytes, usize)>,
    parking: Parking<I>,
}

impl<I> Held<I> {
    /// Wraps `io`; the stream is put in `parking` when hyper's automatic reply is held.
    pub(crate) fn new(io: I, parking: Parking<I>) -> Self {
        Self {
            io: Some(io),
            held: None,
            parking,
        }
    }
}

/// Whether `buf` is a whole response head with an empty body and a 4xx status, as hyper
/// writes for a head it cannot parse.
fn is_automatic_reply(buf: &[u8]) -> bool {
    buf.starts_with(b"HTTP/1.1 4")
        && buf.ends_with(b"\r\n\r\n")
        && buf
            .windows(b"\r\ncontent-length: 0\r\n".len())
            .any(|w| w == b"\r\ncontent-length: 0\r\n")
}

fn parked() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was parked")
}

impl<I: AsyncWrite + Unpin> Held<I> {
    /// Writes out what was held back, if anything.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.held {
            let io = self.io.as_mut().ok_or_else(parked)?;
            let n = ready!(Pin::new(io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.held = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Held<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_release(cx))?;
        let io = self.io.as_mut().ok_or_else(parked)?;
        Pin::new(io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_release(cx))?;
        if is_automatic_reply(buf) {
            self.held = Some((Bytes::copy_from_slice(buf), 0));
            return Poll::Ready(Ok(buf.len()));
        }
        let io = self.io.as_mut().ok_or_else(parked)?;
        Pin::new(io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_release(cx))?;
        let io = self.io.as_mut().ok_or_else(parked)?;
        Pin::new(io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A held reply stays held through a flush: hyper flushes its automatic reply
        // before it shuts the connection down.
        let io = self.io.as_mut().ok_or_else(parked)?;
        Pin::new(io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.take().is_some() {
            let io = self.io.take().ok_or_else(parked)?;
            *self.parking.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
            return Poll::Ready(Ok(()));
        }
        let io = self.io.as_mut().ok_or_else(parked)?;
        Pin::new(io).poll_shutdown(cx)
    }
}

/// ALB's status for the error hyper met in a request head: 501 for a transfer coding it
/// does not support, 400 for anything else (ALB answers oversized heads with 400 too).
pub(crate) fn status_for(error: &(dyn std::error::Error + 'static)) -> StatusCode {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.to_string().starts_with("invalid transfer-encoding")
        {
            return StatusCode::NOT_IMPLEMENTED;
        }
        source = error.source();
    }
    StatusCode::BAD_REQUEST
}

/// Writes ALB's answer to a malformed request on a parked stream, and closes it.
pub(crate) async fn answer<I: AsyncWrite + Unpin>(mut io: I, status: StatusCode) {
    let (head, body) = crate::error::error_page_bytes(status);
    let written = tokio::time::timeout(ANSWER_TIMEOUT, async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
    if let Ok(Err(error)) = written {
        tracing::debug!(%error, "the answer to a malformed request could not be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn only_a_whole_bodiless_4xx_head_looks_automatic() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert!(is_automatic_reply(hyper));
        assert!(!is_automatic_reply(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!is_automatic_reply(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhello"
        ));
        assert!(!is_automatic_reply(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
        ));
    }

    #[tokio::test]
    async fn a_held_write_followed_by_more_goes_out_first_and_whole() {
        let (client, server) = tokio::io::duplex(64);
        let parking = Parking::default();
        let mut held = Held::new(server, parking.clone());
        let lookalike = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        held.write_all(lookalike).await.unwrap();
        held.write_all(b"next").await.unwrap();
        held.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [&lookalike[..], b"next"].concat());
        assert!(parking.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_held_write_followed_by_a_read_goes_out_before_it() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut held = Held::new(server, Parking::default());
        let lookalike = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        held.write_all(lookalike).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        held.read_exact(&mut one).await.unwrap();
        let mut got = vec![0u8; lookalike.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, lookalike);
    }

    #[tokio::test]
    async fn a_held_write_followed_by_shutdown_parks_the_stream_unwritten() {
        let (mut client, server) = tokio::io::duplex(4096);
        let parking = Parking::default();
        let mut held = Held::new(server, parking.clone());
        held.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        held.flush().await.unwrap();
        held.shutdown().await.unwrap();
        drop(held);
        let io = parking.lock().unwrap().take().expect("parked");
        answer(io, StatusCode::NOT_IMPLEMENTED).await;
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{got}");
        assert!(got.contains("<title>501 Not Implemented</title>"), "{got}");
    }
}
