//! Access logs in ALB's format: one line per request, space-separated fields in the order
//! ALB documents, quoted where ALB quotes them, `-` for what does not apply:
//!
//! ```text
//! type time elb client:port target:port request_processing_time target_processing_time
//! response_processing_time elb_status_code target_status_code received_bytes sent_bytes
//! "request" "user_agent" ssl_cipher ssl_protocol target_group_arn "trace_id" "domain_name"
//! "chosen_cert_arn" matched_rule_priority request_creation_time "actions_executed"
//! "redirect_url" "error_reason" "target:port_list" "target_status_code_list"
//! "classification" "classification_reason" conn_trace_id
//! ```
//!
//! A line is written when the response body has been sent (or the client went away), so
//! `sent_bytes` and `response_processing_time` are real. Lines go through a channel to one
//! writer thread per destination (file I/O stays off the async workers), which flushes
//! whenever it has nothing else to write.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// Where access log lines go.
#[derive(Debug, Clone)]
pub struct AccessLog {
    lines: mpsc::Sender<String>,
}

/// Why an access log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open access log {path}: {source}")]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

impl AccessLog {
    /// Opens `destination` (`stdout` or a file, appended to) and starts its writer thread.
    /// The writer flushes and ends when every clone of the returned log is dropped; join
    /// the handle to know the last line is out.
    pub fn open(destination: &str) -> Result<(Self, std::thread::JoinHandle<()>), OpenError> {
        let mut out: Box<dyn Write + Send> = if destination == "stdout" {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(destination)
                .map_err(|source| OpenError {
                    path: destination.into(),
                    source,
                })?;
            Box::new(file)
        };
        let (tx, rx) = mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    buf.extend_from_slice(line.as_bytes());
                    while let Ok(more) = rx.try_recv() {
                        buf.extend_from_slice(more.as_bytes());
                        if buf.len() > 1 << 20 {
                            break;
                        }
                    }
                    if let Err(error) = out.write_all(&buf).and_then(|()| out.flush()) {
                        tracing::error!(%error, "access log write failed; lines dropped");
                    }
                    buf.clear();
                }
            });
        let writer = spawned.map_err(|source| OpenError {
            path: destination.into(),
            source,
        })?;
        Ok((Self { lines: tx }, writer))
    }

    fn write(&self, line: String) {
        let _ = self.lines.send(line);
    }
}

/// What one request did, filled in as it goes.
#[derive(Debug, Clone)]
pub struct Record {
    /// `http`, `https` or `h2`.
    pub kind: &'static str,
    /// `app/NAME/ID`.
    pub elb: std::sync::Arc<str>,
    /// The client (from PROXY v2 when the listener reads it).
    pub client: SocketAddr,
    /// The connection's id, `TID_…`.
    pub conn_trace_id: std::sync::Arc<str>,
    /// When the request head arrived.
    pub received: Instant,
    /// The same, as wall time.
    pub created: SystemTime,
    /// `METHOD scheme://host:port/path?query HTTP/x`.
    pub request: String,
    /// The `User-Agent`.
    pub user_agent: String,
    /// Request bytes (head estimate plus body).
    pub received_bytes: u64,
    /// What the load balancer did with it.
    pub outcome: Outcome,
    /// The status sent to the client.
    pub status: u16,
    /// What the TLS handshake settled, on HTTPS listeners.
    pub tls: Option<crate::tls::Negotiated>,
}

/// What the load balancer did with a request, filled in as it goes (also when no access
/// log is written).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The rule that matched: its priority, 0 for the default action; none before routing.
    pub rule_priority: Option<u32>,
    /// `forward`, `redirect`, `fixed-response`.
    pub action: Option<&'static str>,
    /// The target group forwarded to.
    pub target_group_arn: Option<String>,
    /// The target that answered (HTTP targets).
    pub target: Option<SocketAddr>,
    /// When the request was sent to the target.
    pub dispatched: Option<Instant>,
    /// When the target's answer arrived.
    pub answered: Option<Instant>,
    /// The target's status.
    pub target_status: Option<u16>,
    /// `X-Amzn-Trace-Id` as sent on.
    pub trace_id: Option<http::HeaderValue>,
    /// A redirect's `Location`.
    pub redirect_url: Option<String>,
    /// ALB's error reason (Lambda targets); none is `-`.
    pub error_reason: Option<&'static str>,
    /// The desync classification of a request that is not compliant.
    pub classification: Option<crate::desync::Classification>,
    /// Whether an access log will read this outcome: the fields only it reads (the target
    /// group's ARN, the two times) are filled only then, so a request without one takes
    /// no clock readings and makes no copies for them.
    pub logged: bool,
}

impl Outcome {
    /// Notes that the request goes to the target now.
    pub fn mark_dispatched(&mut self) {
        if self.logged {
            self.dispatched = Some(Instant::now());
        }
    }

    /// Notes that the target's answer arrived now.
    pub fn mark_answered(&mut self) {
        if self.logged {
            self.answered = Some(Instant::now());
        }
    }
}

fn dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// ALB writes `"` inside quoted fields as `\"` and control characters escaped.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Record {
    /// The log line, with `sent_bytes` and the time the response was done.
    pub fn line(&self, sent_bytes: u64, done: Instant, now: SystemTime) -> String {
        let secs = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64());
        let (request_t, target_t, response_t) =
            match (self.outcome.dispatched, self.outcome.answered) {
                (Some(sent), Some(back)) => (
                    secs(sent.saturating_duration_since(self.received)),
                    secs(back.saturating_duration_since(sent)),
                    secs(done.saturating_duration_since(back)),
                ),
                // ALB logs -1 for the times of a request it never sent, or that got no answer.
                (Some(sent), None) => (
                    secs(sent.saturating_duration_since(self.received)),
                    "-1".to_owned(),
                    "-1".to_owned(),
                ),
                _ => ("-1".to_owned(), "-1".to_owned(), "-1".to_owned()),
            };
        let target = dash(self.outcome.target);
        let target_status = dash(self.outcome.target_status);
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{} {} {} {} {} {request_t} {target_t} {response_t} {} {} {} {sent_bytes} ",
            self.kind,
            humantime::format_rfc3339_micros(now),
            self.elb,
            self.client,
            target,
            self.status,
            target_status,
            self.received_bytes,
        );
        quoted(&mut out, &self.request);
        out.push(' ');
        quoted(&mut out, &self.user_agent);
        let tls = self.tls.as_ref();
        let _ = write!(
            out,
            " {} {} {} ",
            tls.map_or("-", |t| t.cipher),
            tls.map_or("-", |t| t.protocol),
            self.outcome.target_group_arn.as_deref().unwrap_or("-")
        );
        let trace_id = self.outcome.trace_id.as_ref().and_then(|v| v.to_str().ok());
        quoted(&mut out, trace_id.unwrap_or("-"));
        out.push(' ');
        quoted(
            &mut out,
            tls.and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
        );
        out.push(' ');
        quoted(&mut out, tls.map_or("-", |t| &t.certificate_arn));
        out.push(' ');
        out.push_str(&dash(self.outcome.rule_priority));
        let _ = write!(out, " {} ", humantime::format_rfc3339_micros(self.created));
        quoted(&mut out, self.outcome.action.unwrap_or("-"));
        out.push(' ');
        quoted(
            &mut out,
            self.outcome.redirect_url.as_deref().unwrap_or("-"),
        );
        out.push(' ');
        quoted(&mut out, self.outcome.error_reason.unwrap_or("-"));
        out.push(' ');
        quoted(&mut out, &target);
        out.push(' ');
        quoted(&mut out, &target_status);
        let classification = self.outcome.classification;
        out.push(' ');
        quoted(&mut out, classification.map_or("-", |c| c.tier));
        out.push(' ');
        quoted(&mut out, classification.map_or("-", |c| c.reason));
        let _ = writeln!(out, " {}", self.conn_trace_id);
        out
    }
}

/// A response body that counts what it sends and writes the access log line when it ends
/// or is dropped (a client that goes away is still logged).
pub struct LoggedBody<B> {
    inner: B,
    sent: u64,
    pending: Option<(Record, AccessLog)>,
}

impl<B> LoggedBody<B> {
    /// Wraps `inner`; `head_bytes` is the size of the response head.
    pub fn new(inner: B, head_bytes: u64, record: Record, log: AccessLog) -> Self {
        Self {
            inner,
            sent: head_bytes,
            pending: Some((record, log)),
        }
    }

    fn finish(&mut self) {
        if let Some((record, log)) = self.pending.take() {
            log.write(record.line(self.sent, Instant::now(), SystemTime::now()));
        }
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> HttpBody for LoggedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_line_has_albs_fields_in_order() {
        let received = Instant::now();
        let mut record = Record {
            kind: "http",
            elb: "app/web/0123456789abcdef".into(),
            client: "192.0.2.1:4242".parse().unwrap(),
            conn_trace_id: "TID_1".into(),
            received,
            created: SystemTime::UNIX_EPOCH,
            request: "GET http://example.com:80/a?b=1 HTTP/1.1".into(),
            user_agent: "curl/8.0 \"x\"".into(),
            received_bytes: 100,
            outcome: Outcome {
                rule_priority: Some(0),
                action: Some("forward"),
                target_group_arn: Some("arn:tg".into()),
                target: Some("10.0.0.1:80".parse().unwrap()),
                dispatched: Some(received + Duration::from_millis(1)),
                answered: Some(received + Duration::from_millis(21)),
                target_status: Some(200),
                trace_id: Some(http::HeaderValue::from_static("Root=1-x")),
                redirect_url: None,
                error_reason: None,
                classification: None,
                logged: true,
            },
            status: 200,
            tls: None,
        };
        let line = record.line(
            300,
            received + Duration::from_millis(22),
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_500_000),
        );
        assert_eq!(
            line,
            "http 1970-01-01T00:00:01.500000Z app/web/0123456789abcdef 192.0.2.1:4242 \
             10.0.0.1:80 0.001 0.020 0.001 200 200 100 300 \
             \"GET http://example.com:80/a?b=1 HTTP/1.1\" \"curl/8.0 \\\"x\\\"\" - - arn:tg \
             \"Root=1-x\" \"-\" \"-\" 0 1970-01-01T00:00:00.000000Z \"forward\" \"-\" \"-\" \
             \"10.0.0.1:80\" \"200\" \"-\" \"-\" TID_1\n"
        );
        record.outcome.classification = Some(crate::desync::Classification {
            tier: "Ambiguous",
            reason: "SuspiciousHeader",
        });
        let line = record.line(300, received, SystemTime::UNIX_EPOCH);
        assert!(
            line.ends_with(" \"Ambiguous\" \"SuspiciousHeader\" TID_1\n"),
            "{line}"
        );
        record.kind = "h2";
        record.tls = Some(crate::tls::Negotiated {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            server_name: Some("api.example.com".into()),
            certificate_arn: "arn:aws:iam::000000000000:server-certificate/api".into(),
            h2: true,
        });
        let line = record.line(300, received, SystemTime::UNIX_EPOCH);
        assert!(line.starts_with("h2 "), "{line}");
        assert!(
            line.contains(
                "TLS_AES_128_GCM_SHA256 TLSv1.3 arn:tg \"Root=1-x\" \"api.example.com\" \
                 \"arn:aws:iam::000000000000:server-certificate/api\" 0 "
            ),
            "{line}"
        );
    }

    #[test]
    fn times_are_taken_only_for_a_logged_request() {
        let mut unlogged = Outcome::default();
        unlogged.mark_dispatched();
        unlogged.mark_answered();
        assert_eq!((unlogged.dispatched, unlogged.answered), (None, None));
        let mut logged = Outcome {
            logged: true,
            ..Outcome::default()
        };
        logged.mark_dispatched();
        logged.mark_answered();
        let (Some(dispatched), Some(answered)) = (logged.dispatched, logged.answered) else {
            panic!("a logged request keeps both times");
        };
        assert!(answered >= dispatched);
    }
}
