//! A target's response body, read from the connection by whoever polls it (the task that
//! writes it to the client), which is also when the rest of a request body still uploading
//! is sent. At the body's end the connection goes back to its pool, if it can carry
//! another request: the response said so, the request was sent in full, and the target
//! sent nothing past the response.

use crate::connection::{Connection, Recycle};
use crate::error::Error;
use crate::request::Outgoing;
use crate::response::{Framing, MAX_HEAD};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A response body streamed from a target.
pub struct ResponseBody<B, R: Recycle> {
    /// `None` once the body has ended (or failed).
    conn: Option<Connection>,
    /// The request, while some of it is still to be written.
    upload: Option<Outgoing<B>>,
    decoder: Decoder,
    keep_alive: bool,
    recycle: Option<R>,
}

impl<B, R: Recycle> std::fmt::Debug for ResponseBody<B, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("decoder", &self.decoder)
            .field("open", &self.conn.is_some())
            .field("uploading", &self.upload.is_some())
            .finish()
    }
}

impl<B, R> ResponseBody<B, R>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
    R: Recycle,
{
    pub(crate) fn new(
        conn: Connection,
        upload: Outgoing<B>,
        framing: Framing,
        keep_alive: bool,
        recycle: R,
    ) -> Self {
        let decoder = match framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size, 0),
            Framing::UntilClose => Decoder::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            upload: (!upload.is_sent()).then_some(upload),
            decoder,
            keep_alive,
            recycle: Some(recycle),
        };
        if body.decoder.is_done() {
            // Nothing polls an empty body (a 204, a HEAD reply): it ends now.
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes back if it can carry another request.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let reusable = self.keep_alive && self.upload.is_none() && conn.read.is_empty();
        self.upload = None;
        if let (true, Some(recycle)) = (reusable, self.recycle.take()) {
            recycle.recycle(conn);
        }
    }

    /// The body failed: the connection closes.
    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.upload = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl<B, R> Body for ResponseBody<B, R>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
    R: Recycle + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(upload) = this.upload.as_mut() {
            match upload.poll_send(&mut conn.stream, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The target stopped reading the request; its response may still come.
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.decoder.decode(&mut conn.read) {
                Err(e) => return this.fail(e),
                Ok(Some(data)) => {
                    this.decoder.settle(&mut conn.read);
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.decoder, Decoder::UntilClose) => {
                    // Keep-alive is already off for such a body (see `response`).
                    this.decoder = Decoder::Done;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(Error::ClosedInBody),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(Error::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes to go.
    Length(u64),
    /// Chunked: the part expected next, and trailer bytes read so far.
    Chunked(Chunk, usize),
    /// Until the connection closes.
    UntilClose,
    /// Ended.
    Done,
}

/// The part of a chunked body expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// This many bytes of chunk data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty line.
    Trailers,
}

impl Decoder {
    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// The next piece of body data in `buf`, consuming it; `None` when more bytes are
    /// needed first, or the body has ended (then `is_done`).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            match self {
                Self::Done => return Ok(None),
                Self::Length(left) | Self::Chunked(Chunk::Data(left), _) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        *self = match self {
                            Self::Chunked(_, trailers) => Self::Chunked(Chunk::DataEnd, *trailers),
                            _ => Self::Done,
                        };
                    }
                    return Ok(Some(data));
                }
                Self::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Self::Chunked(..) => {
                    if !self.step(buf)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Moves past the framing that follows chunk data, as far as `buf` allows, so that
    /// the end of the body is known as soon as its bytes are in. Errors wait for the next
    /// `decode`, which meets them again.
    fn settle(&mut self, buf: &mut BytesMut) {
        while matches!(
            self,
            Self::Chunked(Chunk::DataEnd | Chunk::Size | Chunk::Trailers, _)
        ) {
            match self.step(buf) {
                Ok(true) => {}
                _ => return,
            }
        }
    }

    /// One step through chunked framing other than data. `false`: more bytes are needed.
    fn step(&mut self, buf: &mut BytesMut) -> Result<bool, Error> {
        let Self::Chunked(part, trailers) = *self else {
            return Ok(false);
        };
        match part {
            Chunk::Data(_) => Ok(false),
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::BadChunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *self = Self::Chunked(Chunk::Size, trailers);
                Ok(true)
            }
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    let next = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                    *self = Self::Chunked(next, trailers);
                    Ok(true)
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    Err(Error::BadChunk("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(false),
                Err(_) => Err(Error::BadChunk("invalid chunk size")),
            },
            Chunk::Trailers => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if trailers + buf.len() > MAX_HEAD {
                        return Err(Error::BadChunk("trailers too large"));
                    }
                    return Ok(false);
                };
                buf.advance(end + 2);
                *self = if end == 0 {
                    Self::Done
                } else if trailers + end + 2 > MAX_HEAD {
                    return Err(Error::BadChunk("trailers too large"));
                } else {
                    Self::Chunked(Chunk::Trailers, trailers + end + 2)
                };
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the data and whether it ended.
    fn decode_in_steps(
        mut decoder: Decoder,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, bool), Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = decoder.decode(&mut buf)? {
                out.extend_from_slice(&data);
                decoder.settle(&mut buf);
            }
        }
        Ok((out, decoder.is_done()))
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        for step in [1, 2, 3, 7, CHUNKED.len()] {
            let chunked = Decoder::Chunked(Chunk::Size, 0);
            let (data, done) = decode_in_steps(chunked, CHUNKED, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn the_end_of_a_chunked_body_is_known_with_its_last_data() {
        let mut decoder = Decoder::Chunked(Chunk::Size, 0);
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\n"[..]);
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"ok");
        decoder.settle(&mut buf);
        assert!(decoder.is_done() && buf.is_empty());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut decoder = Decoder::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"abc");
        assert!(decoder.is_done());
        assert_eq!(
            &buf[..],
            b"def",
            "bytes past the body are left for the connection to judge"
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
        ] {
            let chunked = Decoder::Chunked(Chunk::Size, 0);
            assert!(
                matches!(decode_in_steps(chunked, bad, 64), Err(Error::BadChunk(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        let chunked = Decoder::Chunked(Chunk::Size, 0);
        assert!(matches!(
            decode_in_steps(chunked, &long_line, 512),
            Err(Error::BadChunk(_))
        ));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_HEAD / 10 + 1 {
            trailers.extend_from_slice(b"x-t: 1234\r\n");
        }
        let chunked = Decoder::Chunked(Chunk::Size, 0);
        assert!(matches!(
            decode_in_steps(chunked, &trailers, 100),
            Err(Error::BadChunk(_))
        ));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Any bytes as a target's response: the head parsed, and a chunked body decoded in
    /// pieces of every size, never a panic.
    #[test]
    fn fuzz_h1_response() {
        portico_fuzz::check!("h1_response", |data: &[u8]| {
            let _ = crate::response::parse_all(data, false);
            let _ = crate::response::parse_all(data, true);
            for step in [1, 7, data.len().max(1)] {
                let mut decoder = Decoder::Chunked(Chunk::Size, 0);
                let mut buf = BytesMut::new();
                for piece in data.chunks(step) {
                    buf.extend_from_slice(piece);
                    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
                    if decoder.is_done() {
                        break;
                    }
                }
            }
        });
    }
}
