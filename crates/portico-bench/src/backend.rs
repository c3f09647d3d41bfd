//! `portico-bench backend`: the HTTP server every load balancer forwards to in the `lb`
//! benchmark. hyper on one thread, answering every request with a small fixed body, so the
//! proxies in front of it are what is measured.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;

/// Options of `portico-bench backend`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The port on 127.0.0.1.
    #[arg(long)]
    port: u16,
}

/// The body every request gets.
const BODY: &[u8] = b"{\"ok\":true,\"from\":\"backend\"}";

pub(crate) fn run(options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", options.port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        // Read the whole request body, as a real service would.
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
