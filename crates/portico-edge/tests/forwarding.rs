//! The edge over loopback: half-close in both directions, the PROXY v2 header toward
//! endpoints that want it, failover when an endpoint refuses connections.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use portico_edge::{Affinity, Edge, Endpoint, EndpointGroup};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A backend that reads until the client stops sending, then answers with what it got
/// (and, with `proxy`, the client address from the PROXY header first).
async fn backend(proxy: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let client = if proxy {
                    portico_proxy_protocol::read_header(&mut s, Duration::from_secs(5))
                        .await
                        .unwrap()
                } else {
                    None
                };
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                let reply = format!("client={client:?} bytes={}", got.len());
                s.write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

async fn edge(endpoints: Vec<Arc<Endpoint>>) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let edge = Arc::new(Edge {
        groups: vec![EndpointGroup {
            region: "r".into(),
            traffic_dial_percentage: 100,
            endpoints,
        }],
        affinity: Affinity::None,
        limits: portico_accept::Limits {
            max_connections: 64,
            drain: Duration::from_secs(1),
        },
    });
    tokio::spawn(portico_edge::serve(listener, edge, shutdown.clone()));
    (addr, shutdown)
}

/// Sends `n` bytes from 127.0.0.9, closes the write half, reads the answer.
async fn exchange(edge: SocketAddr, n: usize) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(edge).await.unwrap();
    s.write_all(&vec![7u8; n]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn half_close_carries_the_reply_back() {
    let b = backend(false).await;
    let (edge, shutdown) = edge(vec![Arc::new(Endpoint::new(b, 100, false))]).await;
    assert_eq!(
        exchange(edge, 3 * 1024 * 1024).await,
        "client=None bytes=3145728"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn proxy_header_carries_the_clients_address() {
    let b = backend(true).await;
    let (edge, shutdown) = edge(vec![Arc::new(Endpoint::new(b, 100, true))]).await;
    let reply = exchange(edge, 10).await;
    assert!(reply.starts_with("client=Some(127.0.0.9:"), "{reply}");
    assert!(reply.ends_with("bytes=10"), "{reply}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_refusing_endpoint_is_skipped() {
    // Bind and drop: nothing listens there any more.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let b = backend(false).await;
    let (edge, shutdown) = edge(vec![
        Arc::new(Endpoint::new(dead, 255, false)),
        Arc::new(Endpoint::new(b, 1, false)),
    ])
    .await;
    for _ in 0..5 {
        assert_eq!(exchange(edge, 1).await, "client=None bytes=1");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_bring_it_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = Arc::new(Endpoint::new(addr, 100, false));
    let check = portico_edge::health::HealthCheck {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        threshold: 2,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(portico_edge::health::run(
        endpoint.clone(),
        check,
        shutdown.clone(),
    ));
    drop(listener);
    wait_for(|| !endpoint.is_healthy()).await;
    let _back = TcpListener::bind(addr).await.unwrap();
    wait_for(|| endpoint.is_healthy()).await;
    shutdown.cancel();
}

/// Polls `condition` for up to 10 s: readiness, not timing.
async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}
