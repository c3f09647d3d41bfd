//! The probes every tier uses: a TCP connect and an HTTP `GET`.

use crate::{Failure, Probe};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The `User-Agent` of ALB's health checks.
pub const USER_AGENT: &str = "ELB-HealthChecker/2.0";

/// Healthy while a TCP connection opens.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// The address to connect to.
    pub address: SocketAddr,
}

impl Probe for TcpProbe {
    async fn check(&self) -> Result<(), Failure> {
        TcpStream::connect(self.address)
            .await
            .map(drop)
            .map_err(|e| Failure::Failed(format!("connect: {e}")))
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.address)
    }
}

/// Healthy while `GET path` answers with a status `accepts` takes. One connection per
/// check, closed afterwards, as ALB does.
#[derive(Debug, Clone)]
pub struct HttpProbe<F> {
    /// The address to connect to.
    pub address: SocketAddr,
    /// The request path.
    pub path: String,
    /// Which statuses count as healthy.
    pub accepts: F,
}

impl<F: Fn(u16) -> bool + Send + Sync + 'static> Probe for HttpProbe<F> {
    async fn check(&self) -> Result<(), Failure> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|e| Failure::Failed(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Failed(format!("handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.address.to_string())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Failed(format!("request: {e}")))?;
        let response = sender.send_request(request).await;
        conn.abort();
        let status = response
            .map_err(|e| Failure::Failed(format!("request: {e}")))?
            .status();
        if (self.accepts)(status.as_u16()) {
            Ok(())
        } else {
            Err(Failure::Status(status.as_u16()))
        }
    }

    fn describe(&self) -> String {
        format!("http://{}{}", self.address, self.path)
    }
}
