//! The Telemetry API (2022-07-01) and the older Logs API (2020-08-15) of one execution
//! environment: extensions subscribe during the init phase, and the environment delivers
//! them its platform events (`platform.initStart`, `platform.start`, `platform.report`, …),
//! its function's log lines and its extensions' log lines, in Lambda's schema.
//!
//! A subscription names a destination on the environment's host, `http://sandbox.localdomain:PORT/…`
//! (an HTTP POST of a JSON array of events) or a TCP port (one JSON event per line), the
//! kinds of events it wants (`platform`, `function`, `extension`), and its buffering: a batch
//! goes when it holds `maxItems` events or `maxBytes` bytes, or `timeoutMs` after its first
//! event. Events of the init phase that came before a subscription are delivered to it too.
//! A subscriber that falls behind does not hold the environment's memory: past a bound, its
//! events are dropped and counted, and it is told so in a `platform.logsDropped` event.
//!
//! Validation follows Lambda's: 400 `ValidationError` for a request outside the schema, 403
//! `Telemetry.SubscriptionClosed` (`Logs.SubscriptionClosed`) once the init phase is over,
//! 403 `Extension.UnknownExtensionIdentifier` for a caller that is not a registered
//! extension.

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Which of the two APIs a subscription came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `PUT /2022-07-01/telemetry`.
    Telemetry,
    /// `PUT /2020-08-15/logs`.
    Logs,
}

/// Where an event comes from: its category in a subscription's `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The platform's own events.
    Platform,
    /// A line the function (its runtime) wrote.
    Function,
    /// A line an extension wrote.
    Extension,
}

/// Which subscriptions an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    Both,
    TelemetryOnly,
    LogsOnly,
}

/// One event, ready to send.
struct Event {
    kind: Kind,
    audience: Audience,
    /// Its JSON text.
    text: Bytes,
}

/// The most events an environment keeps of its init phase for subscriptions still to come.
const MAX_EARLY_EVENTS: usize = 1000;

/// How much a subscriber may fall behind, as a multiple of its `maxBytes`, before its events
/// are dropped.
const BACKLOG_BATCHES: usize = 4;

/// How long one delivery may take before the subscriber is counted as behind.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

struct Subscriber {
    api: Api,
    types: [bool; 3],
    queue: mpsc::UnboundedSender<Arc<Event>>,
    queued_bytes: Arc<AtomicUsize>,
    backlog_limit: usize,
    dropped: Arc<Dropped>,
}

#[derive(Default)]
struct Dropped {
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Subscriber {
    fn wants(&self, event: &Event) -> bool {
        let audience = match event.audience {
            Audience::Both => true,
            Audience::TelemetryOnly => self.api == Api::Telemetry,
            Audience::LogsOnly => self.api == Api::Logs,
        };
        audience && self.types[event.kind as usize]
    }

    fn offer(&self, event: &Arc<Event>) {
        let size = event.text.len();
        if self.queued_bytes.load(Ordering::Relaxed) + size > self.backlog_limit {
            self.dropped.records.fetch_add(1, Ordering::Relaxed);
            self.dropped.bytes.fetch_add(size as u64, Ordering::Relaxed);
            return;
        }
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if self.queue.send(event.clone()).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

struct Inner {
    /// Subscriptions are accepted (the init phase).
    open: bool,
    early: Vec<Arc<Event>>,
    subscribers: Vec<Subscriber>,
}

/// The telemetry of one environment.
pub(crate) struct Telemetry {
    inner: Mutex<Inner>,
    /// Owns the delivery tasks; each ends when its queue closes (the subscriptions are
    /// flushed, or the telemetry dropped) and it has sent what was in it.
    tasks: TaskTracker,
}

/// A refused subscription.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) error_type: &'static str,
    pub(crate) message: String,
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error_type: "ValidationError",
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<String>,
    types: Vec<String>,
    destination: Destination,
    #[serde(default)]
    buffering: Buffering,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Destination {
    protocol: String,
    #[serde(rename = "URI")]
    uri: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Buffering {
    #[serde(rename = "maxItems")]
    max_items: Option<u64>,
    #[serde(rename = "maxBytes")]
    max_bytes: Option<u64>,
    #[serde(rename = "timeoutMs")]
    timeout_ms: Option<u64>,
}

/// Where a subscriber's batches go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// POST to `127.0.0.1:port` at `path`.
    Http { port: u16, path: String },
    /// One event per line on a connection to `127.0.0.1:port`.
    Tcp { port: u16 },
}

/// Lambda's schema versions of the Telemetry API.
const SCHEMA_VERSIONS: [&str; 3] = ["2022-07-01", "2022-12-13", "2025-01-29"];

impl Telemetry {
    /// The telemetry of an environment.
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                open: true,
                early: Vec::new(),
                subscribers: Vec::new(),
            }),
            tasks: TaskTracker::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription of extension `name` through `api` with the request `body`: `"OK"`.
    pub(crate) fn subscribe(&self, name: &str, api: Api, body: &[u8]) -> Result<Bytes, Refusal> {
        let request: Request = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("schema validation error: {e}")))?;
        if api == Api::Telemetry {
            match request.schema_version.as_deref() {
                Some(v) if SCHEMA_VERSIONS.contains(&v) => {}
                Some(v) => {
                    return Err(invalid(format!(
                        "schemaVersion {v} is not one of {SCHEMA_VERSIONS:?}"
                    )));
                }
                None => return Err(invalid("schemaVersion is required")),
            }
        }
        let mut types = [false; 3];
        if request.types.is_empty() {
            return Err(invalid(
                "types: at least one of platform, function, extension",
            ));
        }
        for t in &request.types {
            let kind = match t.as_str() {
                "platform" => Kind::Platform,
                "function" => Kind::Function,
                "extension" => Kind::Extension,
                other => {
                    return Err(invalid(format!(
                        "types: {other} is not platform, function or extension"
                    )));
                }
            };
            types[kind as usize] = true;
        }
        let target = target(&request.destination)?;
        let buffering = limits(request.buffering)?;
        let mut inner = self.lock();
        if !inner.open {
            let (error_type, what) = match api {
                Api::Telemetry => ("Telemetry.SubscriptionClosed", "Telemetry API"),
                Api::Logs => ("Logs.SubscriptionClosed", "Logs API"),
            };
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                error_type,
                message: format!("{what} subscription is closed"),
            });
        }
        let (queue, batches) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            api,
            types,
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            backlog_limit: buffering.max_bytes * BACKLOG_BATCHES,
            dropped: Arc::new(Dropped::default()),
        };
        self.tasks.spawn(deliver(
            batches,
            (target, buffering),
            (subscriber.queued_bytes.clone(), subscriber.dropped.clone()),
        ));
        for event in &inner.early {
            if subscriber.wants(event) {
                subscriber.offer(event);
            }
        }
        inner.subscribers.push(subscriber);
        drop(inner);
        let (event, record) = match api {
            Api::Telemetry => ("platform.telemetrySubscription", Audience::TelemetryOnly),
            Api::Logs => ("platform.logsSubscription", Audience::LogsOnly),
        };
        self.emit(
            Kind::Platform,
            record,
            event,
            json!({"name": name, "state": "Subscribed", "types": request.types}),
        );
        Ok(Bytes::from_static(b"\"OK\""))
    }

    /// The init phase is over: no more subscriptions, and its events are not kept.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.open = false;
        inner.early = Vec::new();
    }

    /// A platform event of both APIs.
    pub(crate) fn platform(&self, event: &str, record: Value) {
        self.emit(Kind::Platform, Audience::Both, event, record);
    }

    /// A platform event of the Telemetry API only.
    pub(crate) fn platform_telemetry(&self, event: &str, record: Value) {
        self.emit(Kind::Platform, Audience::TelemetryOnly, event, record);
    }

    /// A platform event of the Logs API only.
    pub(crate) fn platform_logs(&self, event: &str, record: Value) {
        self.emit(Kind::Platform, Audience::LogsOnly, event, record);
    }

    /// A log line of the function or of an extension.
    pub(crate) fn line(&self, kind: Kind, text: &str) {
        let kind_name = match kind {
            Kind::Extension => "extension",
            _ => "function",
        };
        self.emit(kind, Audience::Both, kind_name, Value::from(text));
    }

    fn emit(&self, kind: Kind, audience: Audience, event: &str, record: Value) {
        let mut inner = self.lock();
        if inner.subscribers.is_empty() && !inner.open {
            return;
        }
        let text = json!({
            "time": crate::process::rfc3339(SystemTime::now()),
            "type": event,
            "record": record,
        })
        .to_string();
        let event = Arc::new(Event {
            kind,
            audience,
            text: Bytes::from(text),
        });
        for subscriber in &inner.subscribers {
            if subscriber.wants(&event) {
                subscriber.offer(&event);
            }
        }
        if inner.open && inner.early.len() < MAX_EARLY_EVENTS {
            inner.early.push(event);
        }
    }

    /// Waits (at most `limit`) until every subscriber has been sent what it was given: at
    /// the end of an environment, so that its last events are not lost.
    pub(crate) async fn flush(&self, limit: Duration) {
        {
            let mut inner = self.lock();
            // Closing the queues ends the delivery tasks once they are empty.
            inner.subscribers.clear();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

/// The destination of a subscription: Lambda accepts only the environment's own host.
fn target(destination: &Destination) -> Result<Target, Refusal> {
    match destination.protocol.as_str() {
        "HTTP" => {
            let uri = destination
                .uri
                .as_deref()
                .ok_or_else(|| invalid("destination.URI is required for HTTP"))?;
            let uri: http::Uri = uri.parse().map_err(|e| {
                invalid(format!(
                    "Invalid destination: could not parse destination.URI: {e}"
                ))
            })?;
            if !matches!(uri.host(), Some("sandbox.localdomain" | "sandbox")) {
                return Err(invalid(
                    "Invalid destination: destination.URI host must be sandbox.localdomain",
                ));
            }
            if uri.scheme_str() != Some("http") {
                return Err(invalid("Invalid destination: destination.URI must be http"));
            }
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("Invalid destination: destination.URI needs a port"))?;
            let path = uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
            Ok(Target::Http { port, path })
        }
        "TCP" => {
            let port = destination
                .port
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("destination.port is required for TCP"))?;
            Ok(Target::Tcp { port })
        }
        other => Err(invalid(format!(
            "Invalid destination: unknown protocol: {other}. Only TCP and HTTP are supported"
        ))),
    }
}

/// A subscription's buffering, Lambda's defaults filled in.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_items: usize,
    max_bytes: usize,
    timeout: Duration,
}

fn limits(buffering: Buffering) -> Result<Limits, Refusal> {
    let check = |name: &str, value: Option<u64>, (min, max): (u64, u64), default: u64| {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(invalid(format!(
                "buffering.{name}: {value} is not between {min} and {max}"
            )))
        }
    };
    Ok(Limits {
        max_items: check("maxItems", buffering.max_items, (1000, 10_000), 10_000)? as usize,
        max_bytes: check(
            "maxBytes",
            buffering.max_bytes,
            (262_144, 1_048_576),
            262_144,
        )? as usize,
        timeout: Duration::from_millis(check(
            "timeoutMs",
            buffering.timeout_ms,
            (25, 30_000),
            1000,
        )?),
    })
}

/// Sends a subscriber its events in batches until its queue closes and is empty.
async fn deliver(
    mut queue: mpsc::UnboundedReceiver<Arc<Event>>,
    (target, limits): (Target, Limits),
    (queued_bytes, dropped): (Arc<AtomicUsize>, Arc<Dropped>),
) {
    let mut tcp: Option<tokio::net::TcpStream> = None;
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].text.len();
        let deadline = tokio::time::Instant::now() + limits.timeout;
        while batch.len() < limits.max_items && bytes < limits.max_bytes {
            tokio::select! {
                event = queue.recv() => match event {
                    Some(event) => {
                        bytes += event.text.len();
                        batch.push(event);
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let lost = (
            dropped.records.swap(0, Ordering::Relaxed),
            dropped.bytes.swap(0, Ordering::Relaxed),
        );
        let mut texts: Vec<Bytes> = batch.iter().map(|e| e.text.clone()).collect();
        if lost.0 > 0 {
            texts.push(dropped_event(lost));
        }
        let sent = tokio::time::timeout(SEND_TIMEOUT, send(&target, &texts, &mut tcp)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tcp = None;
            tracing::debug!(
                ?target,
                events = texts.len(),
                "telemetry batch not delivered"
            );
        }
    }
}

/// Lambda's `platform.logsDropped` event.
fn dropped_event((records, bytes): (u64, u64)) -> Bytes {
    Bytes::from(
        json!({
            "time": crate::process::rfc3339(SystemTime::now()),
            "type": "platform.logsDropped",
            "record": {
                "reason": "Consumer seems to have fallen behind as it has not acknowledged receipt of logs.",
                "droppedRecords": records,
                "droppedBytes": bytes,
            },
        })
        .to_string(),
    )
}

async fn send(
    target: &Target,
    texts: &[Bytes],
    tcp: &mut Option<tokio::net::TcpStream>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    match target {
        Target::Tcp { port } => {
            if tcp.is_none() {
                *tcp = Some(tokio::net::TcpStream::connect(("127.0.0.1", *port)).await?);
            }
            let Some(stream) = tcp.as_mut() else {
                return Ok(());
            };
            let mut out = Vec::new();
            for text in texts {
                out.extend_from_slice(text);
                out.push(b'\n');
            }
            stream.write_all(&out).await
        }
        Target::Http { port, path } => {
            let mut body = Vec::with_capacity(texts.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, text) in texts.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(text);
            }
            body.push(b']');
            post(*port, path, Bytes::from(body)).await
        }
    }
}

/// POSTs `body` to `127.0.0.1:port` at `path`; an error status is an error.
async fn post(port: u16, path: &str, body: Bytes) -> std::io::Result<()> {
    let broken = |e: hyper::Error| std::io::Error::other(e);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(broken)?;
    let driver = tokio::spawn(connection);
    let request = http::Request::post(path)
        .header(http::header::HOST, format!("sandbox.localdomain:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = sender.send_request(request).await.map_err(broken);
    driver.abort();
    let status = response?.status();
    if status.is_client_error() || status.is_server_error() {
        return Err(std::io::Error::other(format!(
            "subscriber answered {status}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_checked_as_lambda_checks_them() {
        let t = Telemetry::new();
        let ok = br#"{"schemaVersion":"2022-12-13","types":["platform","function"],"destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:8080/lambda_logs"},"buffering":{"maxItems":1000,"maxBytes":262144,"timeoutMs":100}}"#;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(t.subscribe("ext", Api::Telemetry, ok).unwrap(), "\"OK\"");
            for (body, says) in [
                (&br#"{"types":["platform"],"destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:1/"}}"#[..], "schemaVersion"),
                (br#"{"schemaVersion":"2022-12-13","types":["platform"],"destination":{"protocol":"HTTP","URI":"http://example.com:1/"}}"#, "sandbox.localdomain"),
                (br#"{"schemaVersion":"2022-12-13","types":["kernel"],"destination":{"protocol":"HTTP","URI":"http://sandbox:1/"}}"#, "kernel"),
                (br#"{"schemaVersion":"2022-12-13","types":["platform"],"destination":{"protocol":"UDP","port":1}}"#, "UDP"),
                (br#"{"schemaVersion":"2022-12-13","types":["platform"],"destination":{"protocol":"TCP","port":9},"buffering":{"timeoutMs":5}}"#, "timeoutMs"),
                (b"{", "schema"),
            ] {
                let refusal = t.subscribe("ext", Api::Telemetry, body).unwrap_err();
                assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
                assert_eq!(refusal.error_type, "ValidationError");
                assert!(refusal.message.contains(says), "{}: {}", says, refusal.message);
            }
            // The Logs API has no schema version.
            let logs = br#"{"types":["function"],"destination":{"protocol":"TCP","port":9}}"#;
            assert!(t.subscribe("ext", Api::Logs, logs).is_ok());
            t.close();
            let closed = t.subscribe("ext", Api::Telemetry, ok).unwrap_err();
            assert_eq!((closed.status, closed.error_type), (StatusCode::FORBIDDEN, "Telemetry.SubscriptionClosed"));
        });
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_what_it_missed() {
        // A TCP subscriber that reads nothing until asked.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Telemetry::new();
        let body = format!(
            r#"{{"schemaVersion":"2022-12-13","types":["function"],"destination":{{"protocol":"TCP","port":{port}}},"buffering":{{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}}}}"#
        );
        t.subscribe("ext", Api::Telemetry, body.as_bytes()).unwrap();
        t.close();
        // Far more than the backlog (4 × 256 KB) at once: the rest is dropped.
        let line = "x".repeat(64 * 1024);
        for _ in 0..40 {
            t.line(Kind::Function, &line);
        }
        t.line(Kind::Function, "after");
        let (mut stream, _) = listener.accept().await.unwrap();
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(&mut stream).lines();
        let (mut received, mut dropped) = (0, 0);
        // Everything that comes until the subscriber has been quiet for a second.
        while let Ok(Ok(Some(text))) =
            tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await
        {
            let event: Value = serde_json::from_str(&text).unwrap();
            match event["type"].as_str().unwrap() {
                "function" => received += 1,
                "platform.logsDropped" => {
                    dropped += event["record"]["droppedRecords"].as_u64().unwrap();
                }
                other => panic!("{other}"),
            }
        }
        assert_eq!(
            received + dropped,
            41,
            "every line delivered or counted as dropped"
        );
        assert!(dropped > 0);
        assert!(received <= 17, "the backlog stays bounded: {received}");
    }
}
