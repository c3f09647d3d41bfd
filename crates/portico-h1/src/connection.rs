//! One keep-alive connection to a target, and the exchange of one request on it.
//!
//! The request is written and the response head read by the future of `send`; the
//! response body (see `body`) carries the connection on, and hands it to a [`Recycle`]
//! when it ends. No task of its own: an idle connection is a socket in a pool, which the
//! runtime still watches, so a target closing it is seen at the next checkout without a
//! system call ([`Connection::is_stale`]).

use crate::body::ResponseBody;
use crate::error::Error;
use crate::request::Outgoing;
use crate::response::{self, Parsed};
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::Body;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::net::TcpStream;

/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;

/// Where a connection goes when a response on it has ended and it can take another
/// request: its pool.
pub trait Recycle: Send + 'static {
    /// Takes the connection back.
    fn recycle(self, conn: Connection);
}

/// An HTTP/1.1 connection to a target.
#[derive(Debug)]
pub struct Connection {
    pub(crate) stream: TcpStream,
    /// Bytes read from the target and not yet used.
    pub(crate) read: BytesMut,
}

/// A request that failed, with what is needed to decide whether it may go again.
#[derive(Debug)]
pub struct Failure<B> {
    /// What went wrong.
    pub error: Error,
    outgoing: Outgoing<B>,
    answered: bool,
}

impl<B> Failure<B> {
    /// The request, ready to be sent again on another connection, when the target sent
    /// nothing back and sending it again is safe (see [`Outgoing`]); else the error.
    ///
    /// Meant for a connection taken from a pool: the target may have closed it just as
    /// the request went out (its keep-alive timeout racing ours).
    pub fn into_retry(mut self) -> Result<Outgoing<B>, Error> {
        let retry_safe = matches!(
            self.error,
            Error::ClosedBeforeResponse | Error::Read(_) | Error::Write(_)
        );
        if retry_safe && !self.answered && self.outgoing.rewind() {
            Ok(self.outgoing)
        } else {
            Err(self.error)
        }
    }
}

impl Connection {
    /// A connection over `stream`, which should have `TCP_NODELAY` set.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: BytesMut::new(),
        }
    }

    /// Whether the target closed the connection, or wrote to it unasked, while it sat
    /// idle: either way it can take no request. Costs a system call only when the runtime
    /// saw the socket become readable.
    pub fn is_stale(&mut self) -> bool {
        if !self.read.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends `request` and reads the response head. The response's body reads the rest,
    /// sends what is left of the request body, and gives the connection to `recycle` at
    /// its end if the connection can carry another request.
    pub async fn send<B, R>(
        mut self,
        mut request: Outgoing<B>,
        recycle: R,
    ) -> Result<Response<ResponseBody<B, R>>, Failure<B>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
        R: Recycle,
    {
        let mut answered = false;
        let mut write_error = None;
        let head = std::future::poll_fn(|cx| {
            self.poll_head(&mut request, &mut answered, &mut write_error, cx)
        })
        .await;
        match head {
            Ok(head) => {
                let (parts, ()) = head.response.into_parts();
                let body = ResponseBody::new(self, request, head.framing, head.keep_alive, recycle);
                Ok(Response::from_parts(parts, body))
            }
            Err(error) => Err(Failure {
                error,
                outgoing: request,
                answered,
            }),
        }
    }

    /// Writes the request while reading until a final response head is whole.
    fn poll_head<B>(
        &mut self,
        request: &mut Outgoing<B>,
        answered: &mut bool,
        write_error: &mut Option<io::Error>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<response::Head, Error>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if write_error.is_none() && !request.is_sent() {
            match request.poll_send(&mut self.stream, cx) {
                // The target may have answered and stopped reading: read its answer.
                Poll::Ready(Err(Error::Write(e))) => *write_error = Some(e),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            if !self.read.is_empty() {
                let head_request = request.is_head();
                match response::parse(&mut self.read, head_request, request.spare_headers())? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial => {}
                }
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(match write_error.take() {
                        Some(e) => Error::Write(e),
                        None => Error::ClosedBeforeResponse,
                    }));
                }
                Poll::Ready(Ok(_)) => *answered = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Read(e))),
            }
        }
    }

    /// Reads what the target sent into the read buffer; `0` when it closed.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_RESERVE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}
