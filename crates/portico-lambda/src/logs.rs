//! Function output and Lambda's per-invocation log lines.
//!
//! A function's stdout and stderr share one pipe, as they share one log stream in Lambda, so
//! their lines keep the order the function wrote them in. Every line becomes a log event
//! tagged with the function's name and the request id being served, goes into the function's
//! [`LogBook`] (recent lines and live followers, for `portico logs`), and, when the caller
//! asked for it (`X-Amz-Log-Type: Tail`), into the invocation's 4 KB tail. Around each
//! invocation the runtime writes Lambda's own `START`, `END` and `REPORT` lines.
//!
//! Before an invocation ends, the capture task is synchronised with the pipe: it reads every
//! byte the function wrote before it replied (the count comes from `FIONREAD`), so that a
//! function's last lines never land after its `END`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::spec::{Level, Logging};
use crate::telemetry::{Kind, Telemetry};

/// Longest line kept as one event; longer lines are split. CloudWatch's event limit.
const MAX_LINE_BYTES: usize = 256 * 1024;

/// How long output is still read after the process was reaped (a grandchild may hold the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Size of the log tail returned in `X-Amz-Log-Result`: Lambda's last 4 KB.
pub const LOG_TAIL_BYTES: usize = 4 * 1024;

/// Recent lines a [`LogBook`] keeps, by total size of their text.
const BOOK_BYTES: usize = 1024 * 1024;

/// Bytes of lines a follower may fall behind before it misses some: what a client that
/// stops reading can hold in portico's memory.
const FOLLOW_BACKLOG_BYTES: usize = 1024 * 1024;

/// One line of a function's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Position in the function's log, from 1; gaps mean lines were missed.
    pub seq: u64,
    /// When the line was written.
    pub at: SystemTime,
    /// The invocation being served when it was written, if any.
    pub request_id: Option<Arc<str>>,
    /// The line, without its line break.
    pub text: String,
}

/// The recent log of one function and its live followers: what `portico logs` shows.
pub struct LogBook {
    function: Arc<str>,
    recent: Mutex<Recent>,
    next_seq: AtomicU64,
    followers: Mutex<Vec<FollowerQueue>>,
}

/// A follower's side of the book: its queue, and what it holds.
struct FollowerQueue {
    tx: mpsc::UnboundedSender<Arc<LogLine>>,
    /// Bytes queued and not yet taken.
    queued: Arc<AtomicUsize>,
    /// Lines it missed since it last took one.
    skipped: Arc<AtomicU64>,
}

/// What a follower gets next.
#[derive(Debug)]
pub enum Followed {
    /// A new line.
    Line(Arc<LogLine>),
    /// This many lines were skipped: the follower fell more than its backlog behind.
    Skipped(u64),
}

/// New lines of one [`LogBook`], as they are written; dropping it ends the following and
/// frees what it held.
pub struct Follower {
    rx: mpsc::UnboundedReceiver<Arc<LogLine>>,
    queued: Arc<AtomicUsize>,
    skipped: Arc<AtomicU64>,
}

impl Follower {
    /// The next line, or the count of lines skipped before it; `None` once the book is gone.
    pub async fn recv(&mut self) -> Option<Followed> {
        // The lines queued before the gap come first, then the gap.
        let line = match self.rx.try_recv() {
            Ok(line) => line,
            Err(_) => {
                let skipped = self.skipped.swap(0, Ordering::Relaxed);
                if skipped > 0 {
                    return Some(Followed::Skipped(skipped));
                }
                self.rx.recv().await?
            }
        };
        self.queued.fetch_sub(line.text.len(), Ordering::Relaxed);
        Some(Followed::Line(line))
    }
}

#[derive(Default)]
struct Recent {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
}

impl LogBook {
    /// An empty log for `function`.
    pub fn new(function: &str) -> Self {
        Self {
            function: function.into(),
            recent: Mutex::new(Recent::default()),
            next_seq: AtomicU64::new(1),
            followers: Mutex::new(Vec::new()),
        }
    }

    /// The function this log belongs to.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The lines still kept, oldest first.
    pub fn recent(&self) -> Vec<Arc<LogLine>> {
        self.lock().lines.iter().cloned().collect()
    }

    /// New lines as they are written. Subscribe before reading [`Self::recent`] and skip
    /// lines whose `seq` was already seen, and nothing falls in between. A follower that
    /// falls more than 1 MB behind misses lines (and is told how many).
    pub fn follow(&self) -> Follower {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FollowerQueue {
                tx,
                queued: queued.clone(),
                skipped: skipped.clone(),
            });
        Follower {
            rx,
            queued,
            skipped,
        }
    }

    /// Emits `text` as a log event and keeps it.
    fn record(&self, request_id: Option<Arc<str>>, text: String) {
        tracing::info!(
            target: "portico::function",
            function = &*self.function,
            request_id = request_id.as_deref().unwrap_or(""),
            "{text}"
        );
        let line = Arc::new(LogLine {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            at: SystemTime::now(),
            request_id,
            text,
        });
        {
            let mut recent = self.lock();
            recent.bytes += line.text.len();
            recent.lines.push_back(line.clone());
            while recent.bytes > BOOK_BYTES {
                match recent.lines.pop_front() {
                    Some(old) => recent.bytes -= old.text.len(),
                    None => break,
                }
            }
        }
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        // A follower that left is forgotten, with what it held.
        followers.retain(|f| !f.tx.is_closed());
        for follower in followers.iter() {
            let size = line.text.len();
            if follower.queued.load(Ordering::Relaxed) + size > FOLLOW_BACKLOG_BYTES {
                follower.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            follower.queued.fetch_add(size, Ordering::Relaxed);
            let _ = follower.tx.send(line.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where one execution environment's log lines go: its function's [`LogBook`], tagged with
/// the invocation in progress, and that invocation's tail when one was asked for.
pub(crate) struct Sink {
    book: Arc<LogBook>,
    current: Mutex<Current>,
    /// Where the processes' lines also go: the environment's telemetry subscribers.
    telemetry: Option<Arc<Telemetry>>,
    /// Text or JSON, and the levels kept.
    logging: Logging,
}

#[derive(Default)]
struct Current {
    request_id: Option<Arc<str>>,
    tail: Option<String>,
}

impl Sink {
    pub(crate) fn new(book: Arc<LogBook>, logging: Logging) -> Self {
        Self {
            book,
            current: Mutex::new(Current::default()),
            telemetry: None,
            logging,
        }
    }

    /// A sink whose processes' lines also go to `telemetry`.
    pub(crate) fn with_telemetry(
        book: Arc<LogBook>,
        logging: Logging,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            telemetry: Some(telemetry),
            ..Self::new(book, logging)
        }
    }

    /// Writes one line a process wrote: its function's or an extension's (`kind`). With
    /// JSON logs and an application log level, a function's JSON record below that level
    /// is dropped, as Lambda drops it (a record without a valid `level` counts as `INFO`).
    pub(crate) fn output(&self, kind: Kind, text: &str) {
        if kind == Kind::Function && !self.keeps(text) {
            return;
        }
        self.line(text);
        if let Some(telemetry) = &self.telemetry {
            telemetry.line(kind, text);
        }
    }

    fn keeps(&self, text: &str) -> bool {
        let Some(least) = self.logging.application_level.filter(|_| self.logging.json) else {
            return true;
        };
        if !text.starts_with('{') {
            return true;
        }
        let Ok(serde_json::Value::Object(record)) = serde_json::from_str(text) else {
            return true;
        };
        let level = record
            .get("level")
            .and_then(|l| l.as_str())
            .and_then(Level::parse)
            .unwrap_or(Level::Info);
        level >= least
    }

    /// Writes one of the platform's lines: `text` in a text log; in a JSON log, the
    /// `event` record (Lambda's `{"time", "type", "record"}`), or for a line with none, a
    /// `{"timestamp", "level", "message", "requestId"}` record, if `level` is kept by the
    /// system log level (default `INFO`).
    pub(crate) fn system(
        &self,
        text: &str,
        event: Option<(&str, serde_json::Value)>,
        level: Level,
    ) {
        if !self.logging.json {
            self.line(text);
            return;
        }
        if level < self.logging.system_level.unwrap_or(Level::Info) {
            return;
        }
        let time = crate::process::rfc3339(SystemTime::now());
        let record = match event {
            Some((event, record)) => {
                serde_json::json!({"time": time, "type": event, "record": record})
            }
            None => {
                let request_id = self.lock().request_id.clone();
                serde_json::json!({
                    "timestamp": time,
                    "level": level.name(),
                    "message": text,
                    "requestId": request_id.as_deref(),
                })
            }
        };
        self.line(&record.to_string());
    }

    /// Starts attributing lines to `request_id`, collecting its tail if `tail` is set.
    pub(crate) fn begin(&self, request_id: &str, tail: bool) {
        let mut current = self.lock();
        current.request_id = Some(request_id.into());
        current.tail = tail.then(String::new);
    }

    /// Stops attributing lines to the invocation; returns its tail, if one was collected.
    pub(crate) fn end(&self) -> Option<String> {
        let mut current = self.lock();
        current.request_id = None;
        current.tail.take()
    }

    /// Writes one line.
    pub(crate) fn line(&self, text: &str) {
        let request_id = {
            let mut current = self.lock();
            if let Some(tail) = current.tail.as_mut() {
                push_bounded(tail, text, LOG_TAIL_BYTES);
            }
            current.request_id.clone()
        };
        self.book.record(request_id, text.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends `line` and a line break to `tail`, then keeps only its last `limit` bytes (cut at
/// a character boundary).
fn push_bounded(tail: &mut String, line: &str, limit: usize) {
    tail.push_str(line);
    tail.push('\n');
    if tail.len() > limit {
        let mut cut = tail.len() - limit;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

/// Asks the capture task to read everything written so far; answered when it has.
pub(crate) type SyncRequest = oneshot::Sender<()>;

/// The output pipe of one environment, read by [`capture`].
pub(crate) struct Output {
    pipe: pipe::Receiver,
    /// Whose lines these are.
    kind: Kind,
    /// Bytes read so far.
    consumed: u64,
    /// The start of a line not finished yet.
    partial: Vec<u8>,
}

impl Output {
    pub(crate) fn new(pipe: pipe::Receiver, kind: Kind) -> Self {
        Self {
            pipe,
            kind,
            consumed: 0,
            partial: Vec::new(),
        }
    }

    /// Reads one chunk into the sink; `false` at end of stream or on a read error.
    async fn read_some(&mut self, sink: &Sink) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.consumed += n as u64;
                self.take(&chunk[..n], sink);
                true
            }
        }
    }

    /// Splits `bytes` into lines; a line longer than [`MAX_LINE_BYTES`] is cut into pieces.
    fn take(&mut self, mut bytes: &[u8], sink: &Sink) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            self.flush(sink);
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_LINE_BYTES {
            let rest = self.partial.split_off(MAX_LINE_BYTES);
            self.flush(sink);
            self.partial = rest;
        }
    }

    /// Writes out the unfinished line, if any.
    fn flush(&mut self, sink: &Sink) {
        if self.partial.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.partial);
        sink.output(self.kind, text.trim_end_matches('\r'));
        self.partial.clear();
    }

    /// Reads every byte already in the pipe, then writes out an unfinished line.
    async fn catch_up(&mut self, sink: &Sink) {
        let waiting = rustix::io::ioctl_fionread(&self.pipe).unwrap_or(0);
        let target = self.consumed + waiting;
        while self.consumed < target {
            if !self.read_some(sink).await {
                break;
            }
        }
        self.flush(sink);
    }
}

/// Reads `output` into `sink` until the pipe closes, or shortly after `reaped`; answers
/// sync requests in between.
pub(crate) async fn capture(
    sink: Arc<Sink>,
    mut output: Output,
    mut syncs: mpsc::Receiver<SyncRequest>,
    reaped: CancellationToken,
) {
    let give_up = async {
        reaped.cancelled().await;
        tokio::time::sleep(DRAIN_AFTER_EXIT).await;
    };
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            more = output.read_some(&sink) => if !more { break },
            Some(done) = syncs.recv() => {
                output.catch_up(&sink).await;
                let _ = done.send(());
            }
            _ = &mut give_up => break,
        }
    }
    output.flush(&sink);
}

/// Lambda's `INIT_START` line for `spec`'s runtime: `INIT_START Runtime Version:
/// python:3.12.v1<TAB>Runtime Version ARN: arn:aws:lambda:REGION::runtime:<64 hex>`.
pub(crate) fn init_start_line(spec: &crate::spec::FunctionSpec) -> String {
    let (version, arn) = runtime_version(spec);
    format!("INIT_START Runtime Version: {version}\tRuntime Version ARN: {arn}")
}

/// `spec`'s runtime version and its ARN, as Lambda names them.
pub(crate) fn runtime_version(spec: &crate::spec::FunctionSpec) -> (String, String) {
    use sha2::{Digest, Sha256};
    let runtime = &spec.runtime;
    // `python3.12` → `python:3.12`, `nodejs20.x` → `nodejs:20`, `provided.al2023` →
    // `provided:al2023`, `provided` → `provided:al1`.
    let version = if let Some(minor) = runtime.strip_prefix("python") {
        format!("python:{minor}")
    } else if let Some(major) = runtime.strip_prefix("nodejs") {
        format!("nodejs:{}", major.trim_end_matches(".x"))
    } else if let Some(os) = runtime.strip_prefix("provided.") {
        format!("provided:{os}")
    } else {
        "provided:al1".to_owned()
    };
    let digest: String = Sha256::digest(runtime.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        format!("{version}.v1"),
        format!("arn:aws:lambda:{}::runtime:{digest}", spec.region),
    )
}

/// `d` in milliseconds with two decimals, as Lambda's metrics give them.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// Lambda's `platform.initStart` record of `spec`'s init in `phase`.
pub(crate) fn init_start_record(
    spec: &crate::spec::FunctionSpec,
    phase: &str,
) -> serde_json::Value {
    let (version, arn) = runtime_version(spec);
    serde_json::json!({
        "initializationType": "on-demand",
        "phase": phase,
        "runtimeVersion": version,
        "runtimeVersionArn": arn,
        "functionName": spec.name,
        "functionVersion": spec.version,
    })
}

/// Lambda's `platform.initReport` record of an init in `phase` that ended with `status`
/// after `took`.
pub(crate) fn init_report_record(
    phase: &str,
    status: &str,
    error_type: Option<&str>,
    took: Duration,
) -> serde_json::Value {
    let mut record = serde_json::json!({
        "initializationType": "on-demand",
        "phase": phase,
        "status": status,
        "metrics": {"durationMs": millis(took)},
    });
    if let Some(error_type) = error_type {
        record["errorType"] = serde_json::json!(error_type);
    }
    record
}

/// How an invocation that did not complete ends its `REPORT` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportStatus {
    /// `Status: timeout`.
    Timeout,
    /// `Status: error`, with the error type.
    Error(&'static str),
}

/// Figures for a `REPORT` line and the `platform.report` event.
pub(crate) struct Report<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) duration: Duration,
    pub(crate) memory_size_mb: u32,
    pub(crate) max_memory_used_mb: Option<u64>,
    pub(crate) init_duration: Option<Duration>,
    pub(crate) status: Option<ReportStatus>,
}

impl Report<'_> {
    /// The billed duration: the invocation's and, on a cold start, the init's (Lambda bills
    /// the init phase since August 2025), rounded up to the millisecond.
    fn billed_ms(&self) -> u64 {
        let ms = self.duration.as_secs_f64() * 1000.0;
        let init_ms = self.init_duration.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        (ms + init_ms).ceil().max(1.0) as u64
    }

    /// Lambda's `platform.report` record.
    pub(crate) fn record(&self, tracing: &serde_json::Value) -> serde_json::Value {
        let (status, error_type) = match self.status {
            None => ("success", None),
            Some(ReportStatus::Timeout) => ("timeout", None),
            Some(ReportStatus::Error(kind)) => ("error", Some(kind)),
        };
        let mut metrics = serde_json::json!({
            "durationMs": millis(self.duration),
            "billedDurationMs": self.billed_ms(),
            "memorySizeMB": self.memory_size_mb,
            "maxMemoryUsedMB": self.max_memory_used_mb.unwrap_or(0),
        });
        if let Some(init) = self.init_duration {
            metrics["initDurationMs"] = serde_json::json!(millis(init));
        }
        let mut record = serde_json::json!({
            "requestId": self.request_id,
            "status": status,
            "metrics": metrics,
            "tracing": tracing,
        });
        if let Some(kind) = error_type {
            record["errorType"] = serde_json::json!(kind);
        }
        record
    }

    /// Lambda's `REPORT` line.
    pub(crate) fn line(&self) -> String {
        let ms = self.duration.as_secs_f64() * 1000.0;
        let mut line = format!(
            "REPORT RequestId: {}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
            self.request_id,
            self.billed_ms(),
            self.memory_size_mb,
            self.max_memory_used_mb.unwrap_or(0),
        );
        if let Some(init) = self.init_duration {
            line.push_str(&format!(
                "\tInit Duration: {:.2} ms",
                init.as_secs_f64() * 1000.0
            ));
        }
        match self.status {
            Some(ReportStatus::Timeout) => line.push_str("\tStatus: timeout"),
            Some(ReportStatus::Error(kind)) => {
                line.push_str(&format!("\tStatus: error\tError Type: {kind}"));
            }
            None => {}
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_has_lambdas_fields_in_order() {
        let r = Report {
            request_id: "id-1",
            duration: Duration::from_micros(1_234_560),
            memory_size_mb: 128,
            max_memory_used_mb: Some(20),
            init_duration: Some(Duration::from_micros(4_560)),
            status: None,
        };
        assert_eq!(
            r.line(),
            "REPORT RequestId: id-1\tDuration: 1234.56 ms\tBilled Duration: 1240 ms\tMemory Size: 128 MB\tMax Memory Used: 20 MB\tInit Duration: 4.56 ms"
        );
        let crashed = Report {
            init_duration: None,
            status: Some(ReportStatus::Error("Runtime.ExitError")),
            ..r
        };
        assert!(
            crashed
                .line()
                .ends_with("Max Memory Used: 20 MB\tStatus: error\tError Type: Runtime.ExitError"),
            "{}",
            crashed.line()
        );
        let timed_out = Report {
            status: Some(ReportStatus::Timeout),
            ..crashed
        };
        assert!(timed_out.line().ends_with("\tStatus: timeout"));
    }

    #[tokio::test]
    async fn a_follower_that_does_not_read_holds_at_most_its_backlog() {
        let book = LogBook::new("chatty");
        let mut slow = book.follow();
        let line = "x".repeat(1024);
        for _ in 0..3000 {
            book.record(None, line.clone());
        }
        // 3 MB written; what waits for the follower is bounded.
        assert!(slow.queued.load(Ordering::Relaxed) <= FOLLOW_BACKLOG_BYTES);
        let mut got = 0;
        let skipped = loop {
            match slow.recv().await.unwrap() {
                Followed::Line(_) => got += 1,
                Followed::Skipped(n) => break n,
            }
        };
        assert_eq!(got, FOLLOW_BACKLOG_BYTES / 1024);
        assert_eq!(got as u64 + skipped, 3000);
        // Caught up: new lines come again.
        book.record(None, "after".to_owned());
        match slow.recv().await.unwrap() {
            Followed::Line(l) => assert_eq!(l.text, "after"),
            other => panic!("{other:?}"),
        }
        // A follower that left is forgotten with what it held.
        drop(slow);
        book.record(None, "again".to_owned());
        assert!(book.followers.lock().unwrap().is_empty());
        // The recent lines are bounded by bytes too.
        let kept: usize = book.recent().iter().map(|l| l.text.len()).sum();
        assert!(kept <= BOOK_BYTES);
    }

    #[test]
    fn tail_keeps_the_last_bytes_on_a_character_boundary() {
        let mut tail = String::new();
        push_bounded(&mut tail, "first line", 16);
        assert_eq!(tail, "first line\n");
        push_bounded(&mut tail, "ééé", 16);
        assert_eq!(tail, "rst line\nééé\n");
        let mut tail = "éé\n".to_owned();
        // Cutting 3 bytes would split the second "é": 4 go.
        push_bounded(&mut tail, "xxxx", 7);
        assert_eq!(tail, "\nxxxx\n");
        push_bounded(&mut tail, &"x".repeat(40), 16);
        assert_eq!(tail, format!("{}\n", "x".repeat(15)));
    }

    #[test]
    fn lines_are_split_kept_and_attributed() {
        let book = Arc::new(LogBook::new("f"));
        let sink = Sink::new(book.clone(), Logging::default());
        sink.begin("req-1", true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (r, w) = std::io::pipe().unwrap();
            drop(w);
            let mut out = Output::new(
                pipe::Receiver::from_owned_fd(r.into()).unwrap(),
                Kind::Function,
            );
            out.take(b"one\ntwo\r\nthr", &sink);
            out.take(b"ee\n", &sink);
            out.take(&vec![b'y'; MAX_LINE_BYTES + 10], &sink);
            out.flush(&sink);
        });
        let tail = sink.end().unwrap();
        let lines = book.recent();
        let texts: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
        assert_eq!(texts, vec![3, 3, 5, MAX_LINE_BYTES, 10]);
        assert_eq!(lines[2].text, "three");
        assert_eq!(lines[0].request_id.as_deref(), Some("req-1"));
        assert_eq!(lines[0].seq + 4, lines[4].seq);
        assert!(tail.len() <= LOG_TAIL_BYTES && tail.ends_with("yyyyyyyyyy\n"));
        sink.line("after");
        assert_eq!(book.recent().last().unwrap().request_id, None);
    }
}
