//! The accelerator over loopback: half-close in both directions, the PROXY v2 header toward
//! endpoints that want it, failover when an endpoint refuses connections, TCP and HTTP
//! health checks, UDP flows with their idle timeout, port ranges with port overrides, and
//! reloads that keep every socket that stays.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use portico_edge::health::{HealthCheck, Protocol};
use portico_edge::{
    Accelerator, AcceleratorSpec, Affinity, EndpointSpec, GroupSpec, ListenerSpec, Target,
    Transport,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A backend that reads until the client stops sending, then answers with what it got
/// (and, with `proxy`, the client address from the PROXY header first), prefixed by `name`.
async fn backend_at(bind: SocketAddr, name: &'static str, proxy: bool) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
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
                let reply = format!("{name}client={client:?} bytes={}", got.len());
                s.write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

async fn backend(proxy: bool) -> SocketAddr {
    backend_at("127.0.0.1:0".parse().unwrap(), "", proxy).await
}

fn tcp_check(interval_ms: u64) -> HealthCheck {
    let mut check = HealthCheck::every(Protocol::Tcp, Duration::from_millis(interval_ms), 2);
    check.timeout = Duration::from_millis(200);
    check
}

fn endpoint(address: SocketAddr, weight: u8, proxy: bool) -> EndpointSpec {
    EndpointSpec {
        target: Target::Fixed(address),
        weight,
        proxy_protocol: proxy,
    }
}

fn spec(
    ips: &[&str],
    transport: Transport,
    ports: Vec<u16>,
    groups: Vec<GroupSpec>,
) -> AcceleratorSpec {
    AcceleratorSpec {
        name: "test".into(),
        static_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        listeners: vec![ListenerSpec {
            transport,
            ports,
            affinity: Affinity::None,
            idle_timeout: Duration::from_secs(10),
            groups,
        }],
        webhook: None,
        freebind: false,
    }
}

fn group(endpoints: Vec<EndpointSpec>) -> GroupSpec {
    GroupSpec {
        region: "r".into(),
        traffic_dial_percentage: 100,
        health: tcp_check(1000),
        port_overrides: Default::default(),
        endpoints,
    }
}

struct Running {
    accelerator: Arc<Accelerator>,
    shutdown: CancellationToken,
}

impl Running {
    async fn start(spec: &AcceleratorSpec) -> Self {
        Self::admitting(spec, portico_accept::Admission::default()).await
    }

    async fn admitting(spec: &AcceleratorSpec, admission: portico_accept::Admission) -> Self {
        let shutdown = CancellationToken::new();
        let accelerator = Accelerator::start(
            spec,
            (
                portico_accept::Limits {
                    max_connections: 64,
                    drain: Duration::from_secs(1),
                },
                admission,
            ),
            shutdown.clone(),
            TaskTracker::new(),
        )
        .await
        .unwrap();
        Self {
            accelerator,
            shutdown,
        }
    }

    /// The bound address of `transport` on `ip`, first port.
    fn address(&self, transport: Transport, ip: &str) -> SocketAddr {
        let ip: IpAddr = ip.parse().unwrap();
        self.accelerator
            .view()
            .addresses
            .iter()
            .find(|(t, a)| *t == transport && a.ip() == ip)
            .unwrap()
            .1
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
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
    let edge = Running::start(&spec(
        &["127.0.0.2"],
        Transport::Tcp,
        vec![0],
        vec![group(vec![endpoint(b, 100, false)])],
    ))
    .await;
    assert_eq!(
        exchange(edge.address(Transport::Tcp, "127.0.0.2"), 3 * 1024 * 1024).await,
        "client=None bytes=3145728"
    );
}

#[tokio::test]
async fn proxy_header_carries_the_clients_address() {
    let b = backend(true).await;
    let edge = Running::start(&spec(
        &["127.0.0.2"],
        Transport::Tcp,
        vec![0],
        vec![group(vec![endpoint(b, 100, true)])],
    ))
    .await;
    let reply = exchange(edge.address(Transport::Tcp, "127.0.0.2"), 10).await;
    assert!(reply.starts_with("client=Some(127.0.0.9:"), "{reply}");
    assert!(reply.ends_with("bytes=10"), "{reply}");
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
    let edge = Running::start(&spec(
        &["127.0.0.2"],
        Transport::Tcp,
        vec![0],
        vec![group(vec![
            endpoint(dead, 255, false),
            endpoint(b, 1, false),
        ])],
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(
            exchange(edge.address(Transport::Tcp, "127.0.0.2"), 1).await,
            "client=None bytes=1"
        );
    }
}

fn first_endpoint_healthy(edge: &Running) -> bool {
    edge.accelerator.view().listeners[0].route.groups[0].endpoints[0].is_healthy()
}

#[tokio::test]
async fn tcp_health_checks_take_an_endpoint_out_and_bring_it_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut g = group(vec![endpoint(addr, 100, false)]);
    g.health = tcp_check(20);
    let edge = Running::start(&spec(&["127.0.0.2"], Transport::Tcp, vec![0], vec![g])).await;
    drop(listener);
    wait_for(|| !first_endpoint_healthy(&edge)).await;
    let _back = TcpListener::bind(addr).await.unwrap();
    wait_for(|| first_endpoint_healthy(&edge)).await;
}

#[tokio::test]
async fn the_node_serves_while_an_endpoint_group_has_a_healthy_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut g = group(vec![endpoint(addr, 100, false)]);
    g.health = tcp_check(20);
    let edge = Running::start(&spec(&["127.0.0.2"], Transport::Tcp, vec![0], vec![g])).await;
    let (serving, reason) = edge.accelerator.serving();
    assert!(serving, "{reason}");
    assert!(reason.contains("healthy endpoints in r"), "{reason}");
    drop(listener);
    wait_for(|| !edge.accelerator.serving().0).await;
    assert_eq!(
        edge.accelerator.serving().1,
        "no endpoint group has a healthy endpoint"
    );
    let _back = TcpListener::bind(addr).await.unwrap();
    wait_for(|| edge.accelerator.serving().0).await;
    edge.shutdown.cancel();
    assert_eq!(
        edge.accelerator.serving(),
        (false, "shutting down".to_owned())
    );
}

/// An endpoint that answers each request line, and closes when its client's side ends.
async fn line_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    w.write_all(format!("re: {line}\n").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    backend
}

/// Sends `line` on `stream` and reads the answer.
async fn ask(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>, line: &str) -> String {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_line(&mut answer).await.unwrap();
    answer
}

/// A connection from `from` to `to`, held open.
async fn connect_from(from: &str, to: SocketAddr) -> tokio::io::BufReader<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    tokio::io::BufReader::new(socket.connect(to).await.unwrap())
}

/// Whether the edge closed `stream` without serving it (it was refused on accept).
async fn refused(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> bool {
    let _ = stream.get_mut().write_all(b"anyone?\n").await;
    let mut answer = String::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut answer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither served nor closed"),
    }
}

/// One client holding its limit of connections is refused the next one, on accept, while
/// other clients and its own open connections are served; when the descriptor budget is
/// spent, new connections from anyone are refused and open ones go on; both come back.
#[tokio::test]
async fn a_client_at_its_limit_and_a_spent_budget_refuse_new_connections_only() {
    let backend = line_echo().await;
    let descriptors = Arc::new(portico_accept::Descriptors::new(3 * 6, 0));
    let per_client = Arc::new(portico_accept::PerClient::new(4));
    let edge = Running::admitting(
        &spec(
            &["127.0.0.2"],
            Transport::Tcp,
            vec![0],
            vec![group(vec![endpoint(backend, 1, false)])],
        ),
        portico_accept::Admission {
            descriptors: Some((descriptors.clone(), 3)),
            per_client: Some(per_client.clone()),
            loopback_free: false,
        },
    )
    .await;
    let address = edge.address(Transport::Tcp, "127.0.0.2");
    let mut attacker = Vec::new();
    for i in 0..4 {
        let mut held = connect_from("127.0.0.50", address).await;
        assert_eq!(
            ask(&mut held, &format!("a{i}")).await,
            format!("re: a{i}\n")
        );
        attacker.push(held);
    }
    let mut fifth = connect_from("127.0.0.50", address).await;
    assert!(refused(&mut fifth).await, "over its limit");
    assert_eq!(per_client.refused(), 1);
    assert_eq!(ask(&mut attacker[0], "still").await, "re: still\n");
    let mut other = connect_from("127.0.0.51", address).await;
    assert_eq!(ask(&mut other, "b").await, "re: b\n");
    assert_eq!(descriptors.held(), 15);

    // One more connection spends the budget; the next, from a third client, is refused.
    let mut last = connect_from("127.0.0.52", address).await;
    assert_eq!(ask(&mut last, "c").await, "re: c\n");
    let mut over = connect_from("127.0.0.53", address).await;
    assert!(refused(&mut over).await, "over the budget");
    assert_eq!(descriptors.refused(), 1);
    assert_eq!(ask(&mut other, "b2").await, "re: b2\n");

    // Connections that end give their share back.
    attacker.clear();
    wait_for(|| descriptors.held() == 6).await;
    let mut again = connect_from("127.0.0.50", address).await;
    assert_eq!(ask(&mut again, "back").await, "re: back\n");
    assert_eq!(per_client.open("127.0.0.50".parse().unwrap()), 1);
}

#[tokio::test]
async fn quiesce_drops_new_connections_and_finishes_open_ones_at_their_end() {
    let backend = line_echo().await;
    let edge = Running::start(&spec(
        &["127.0.0.2", "127.0.0.3"],
        Transport::Tcp,
        vec![0],
        vec![group(vec![endpoint(backend, 1, false)])],
    ))
    .await;
    let address = edge.address(Transport::Tcp, "127.0.0.2");
    let other = edge.address(Transport::Tcp, "127.0.0.3");
    let connect = |to: SocketAddr| async move {
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(to).await.unwrap())
    };
    let mut open = connect(address).await;
    assert_eq!(ask(&mut open, "one").await, "re: one\n");
    let mut elsewhere = connect(other).await;
    assert_eq!(ask(&mut elsewhere, "two").await, "re: two\n");
    let quiesced: IpAddr = "127.0.0.2".parse().unwrap();
    wait_for(|| edge.accelerator.open_connections(Some(quiesced)) == 1).await;
    assert_eq!(edge.accelerator.open_connections(None), 2);

    // Only 127.0.0.2 is handed over.
    edge.accelerator.quiesce(Some(quiesced)).await;
    // The open connection ends at its boundary: the endpoint saw the end and closed.
    let mut rest = String::new();
    open.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "closed after its last answer");
    wait_for(|| edge.accelerator.open_connections(Some(quiesced)) == 0).await;
    // A new connection is neither accepted nor refused: its SYN is dropped (and sent
    // again by the client's kernel, for another node to answer).
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    assert!(attempt.is_err(), "the connection waits: {attempt:?}");
    // The other static IP goes on: its open connection and new ones.
    assert_eq!(ask(&mut elsewhere, "three").await, "re: three\n");
    assert_eq!(ask(&mut connect(other).await, "four").await, "re: four\n");

    // Taken again: new connections are served, and not asked to finish.
    edge.accelerator.resume(quiesced).await;
    let mut again = connect(address).await;
    assert_eq!(ask(&mut again, "five").await, "re: five\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ask(&mut again, "six").await, "re: six\n");

    // Everything at once, as a stopping node does.
    edge.accelerator.quiesce(None).await;
    for mut stream in [again, elsewhere] {
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "");
    }
    wait_for(|| edge.accelerator.open_connections(None) == 0).await;
}

#[tokio::test]
async fn freebind_listens_on_a_static_ip_this_host_does_not_have_yet() {
    // 10.255.255.1 is on no interface of the test host: nothing is sent to it.
    let absent = ["10.255.255.1"];
    let backend = backend(false).await;
    let mut without = spec(
        &absent,
        Transport::Tcp,
        vec![0],
        vec![group(vec![endpoint(backend, 1, false)])],
    );
    let refused = Accelerator::start(
        &without,
        (
            portico_accept::Limits {
                max_connections: 4,
                drain: Duration::from_secs(1),
            },
            portico_accept::Admission::default(),
        ),
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .await;
    assert!(
        refused.is_err(),
        "an address this host lacks is refused without freebind"
    );
    without.freebind = true;
    let edge = Running::start(&without).await;
    assert_eq!(
        edge.address(Transport::Tcp, "10.255.255.1")
            .ip()
            .to_string(),
        "10.255.255.1"
    );
    let mut udp = spec(
        &absent,
        Transport::Udp,
        vec![0],
        vec![group(vec![endpoint(backend, 1, false)])],
    );
    udp.freebind = true;
    let edge = Running::start(&udp).await;
    assert_eq!(
        edge.address(Transport::Udp, "10.255.255.1")
            .ip()
            .to_string(),
        "10.255.255.1"
    );
}

/// An HTTP server answering `GET /healthz` with the status in `status`.
async fn http_health(status: Arc<std::sync::atomic::AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let code = status.load(std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if request.starts_with("GET /healthz ")
                    && request.contains("ELB-HealthChecker")
                {
                    code
                } else {
                    404
                };
                let reply =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_health_checks_want_200_on_the_path() {
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let addr = http_health(status.clone()).await;
    let mut g = group(vec![endpoint(addr, 100, false)]);
    g.health = HealthCheck::every(Protocol::Http, Duration::from_millis(20), 2);
    g.health.path = "/healthz".into();
    let edge = Running::start(&spec(&["127.0.0.2"], Transport::Tcp, vec![0], vec![g])).await;
    wait_for(|| {
        edge.accelerator.view().listeners[0].route.groups[0].endpoints[0]
            .status
            .rtt()
            .is_some()
    })
    .await;
    assert!(first_endpoint_healthy(&edge));
    status.store(503, std::sync::atomic::Ordering::Relaxed);
    wait_for(|| !first_endpoint_healthy(&edge)).await;
    status.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_for(|| first_endpoint_healthy(&edge)).await;
}

#[tokio::test]
async fn port_ranges_keep_the_arrival_port_unless_overridden() {
    // Endpoints at a bare IP get each connection on the port it arrived on.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = probe.local_addr().unwrap().port();
    drop(probe);
    let (p1, p2) = (base, base + 1);
    backend_at(SocketAddr::from(([127, 0, 0, 3], p1)), "p1 ", false).await;
    backend_at(SocketAddr::from(([127, 0, 0, 3], 9)), "override ", false).await;
    let mut g = group(vec![EndpointSpec {
        target: Target::Host("127.0.0.3".parse().unwrap()),
        weight: 1,
        proxy_protocol: false,
    }]);
    g.port_overrides.insert(p2, 9);
    let edge = Running::start(&spec(&["127.0.0.4"], Transport::Tcp, vec![p1, p2], vec![g])).await;
    assert!(
        exchange(SocketAddr::from(([127, 0, 0, 4], p1)), 1)
            .await
            .starts_with("p1 ")
    );
    assert!(
        exchange(SocketAddr::from(([127, 0, 0, 4], p2)), 1)
            .await
            .starts_with("override ")
    );
    drop(edge);
}

/// A UDP endpoint that answers each datagram with `name:` and the datagram.
async fn udp_echo(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            socket.send_to(&reply, from).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn udp_flows_forward_both_ways_and_close_when_idle() {
    let e = udp_echo("e").await;
    let mut s = spec(
        &["127.0.0.2"],
        Transport::Udp,
        vec![0],
        vec![group(vec![endpoint(e, 1, false)])],
    );
    s.listeners[0].idle_timeout = Duration::from_millis(300);
    let edge = Running::start(&s).await;
    let at = edge.address(Transport::Udp, "127.0.0.2");
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(at).await.unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        client.send(format!("ping{i}").as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &buf[..n],
            format!("e:ping{i}").as_bytes(),
            "answered from the static address"
        );
    }
    let flows = || edge.accelerator.view().listeners[0].route.groups[0].endpoints[0].connections();
    assert_eq!(flows(), 1, "one flow for one client");
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send(b"again").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"e:again");
    assert_eq!(flows(), 2, "the idle flow was closed and a new one opened");
}

/// A client's new UDP flows beyond its limit are dropped (its open ones go on), and each
/// flow holds one descriptor of the budget until it closes.
#[tokio::test]
async fn udp_flows_count_against_their_client_and_the_budget() {
    let e = udp_echo("e").await;
    let mut s = spec(
        &["127.0.0.2"],
        Transport::Udp,
        vec![0],
        vec![group(vec![endpoint(e, 1, false)])],
    );
    s.listeners[0].idle_timeout = Duration::from_millis(1500);
    let descriptors = Arc::new(portico_accept::Descriptors::new(100, 0));
    let per_client = Arc::new(portico_accept::PerClient::new(2));
    let edge = Running::admitting(
        &s,
        portico_accept::Admission {
            descriptors: Some((descriptors.clone(), 3)),
            per_client: Some(per_client.clone()),
            loopback_free: false,
        },
    )
    .await;
    let at = edge.address(Transport::Udp, "127.0.0.2");
    let mut buf = [0u8; 2048];
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(at).await.unwrap();
        client.send(b"hi").await.unwrap();
        let answered = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf))
            .await
            .is_ok();
        clients.push((client, answered));
    }
    let answered: Vec<bool> = clients.iter().map(|(_, a)| *a).collect();
    assert_eq!(answered, [true, true, false]);
    assert_eq!(per_client.refused(), 1);
    assert_eq!(descriptors.held(), 2, "one descriptor per flow");
    clients[0].0.send(b"again").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), clients[0].0.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"e:again");
    // Idle flows close and give their share back.
    wait_for(|| descriptors.held() == 0).await;
    clients[2].0.send(b"now").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), clients[2].0.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"e:now");
}

#[tokio::test]
async fn reloads_keep_sockets_that_stay_and_drain_the_rest() {
    let old = backend_at("127.0.0.1:0".parse().unwrap(), "old ", false).await;
    let new = backend_at("127.0.0.1:0".parse().unwrap(), "new ", false).await;
    let mut s = spec(
        &["127.0.0.2", "127.0.0.3"],
        Transport::Tcp,
        vec![0],
        vec![group(vec![endpoint(old, 1, false)])],
    );
    let edge = Running::start(&s).await;
    let kept = edge.address(Transport::Tcp, "127.0.0.2");
    let dropped = edge.address(Transport::Tcp, "127.0.0.3");
    // A connection open across the reload keeps its endpoint.
    let mut open = tokio::net::TcpStream::connect(kept).await.unwrap();
    open.write_all(b"x").await.unwrap();
    wait_for(|| {
        edge.accelerator.view().listeners[0].route.groups[0].endpoints[0].connections() == 1
    })
    .await;

    s.static_ips = vec!["127.0.0.2".parse().unwrap(), "127.0.0.5".parse().unwrap()];
    s.listeners[0].groups = vec![group(vec![endpoint(new, 1, false)])];
    assert!(
        edge.accelerator.apply(&s).await.unwrap(),
        "the static IPs changed"
    );
    assert_eq!(
        edge.address(Transport::Tcp, "127.0.0.2"),
        kept,
        "same socket, same port"
    );
    let added = edge.address(Transport::Tcp, "127.0.0.5");
    assert_eq!(
        added.port(),
        kept.port(),
        "a new static IP serves the listener's port"
    );
    assert!(exchange(kept, 1).await.starts_with("new "));
    assert!(exchange(added, 1).await.starts_with("new "));
    wait_for_refused(dropped).await;
    open.shutdown().await.unwrap();
    let mut reply = String::new();
    open.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("old "),
        "the open connection stayed on its endpoint: {reply}"
    );
    let doc = edge.accelerator.view().ip_ranges.clone();
    assert_eq!(doc.prefixes.len(), 2);
    assert_eq!(doc.prefixes[1].ip_prefix, "127.0.0.5/32");
    // The same IPs again: no change, the same sync token.
    assert!(!edge.accelerator.apply(&s).await.unwrap());
    assert_eq!(edge.accelerator.view().ip_ranges.sync_token, doc.sync_token);
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let b = backend(false).await;
    let taken = TcpListener::bind("127.0.0.6:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut s = spec(
        &["127.0.0.2"],
        Transport::Tcp,
        vec![port],
        vec![group(vec![endpoint(b, 1, false)])],
    );
    let edge = Running::start(&s).await;
    s.static_ips.push("127.0.0.6".parse().unwrap());
    let error = edge.accelerator.apply(&s).await.unwrap_err().to_string();
    assert!(error.contains("127.0.0.6"), "{error}");
    assert_eq!(edge.accelerator.view().addresses.len(), 1);
    assert_eq!(
        exchange(SocketAddr::from(([127, 0, 0, 2], port)), 1).await,
        "client=None bytes=1"
    );
}

async fn wait_for_refused(address: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{address} still accepts");
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
