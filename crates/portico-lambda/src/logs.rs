//! Function output and Lambda's per-invocation log lines.
//!
//! Every line a function writes to stdout or stderr becomes a log event tagged with the
//! function's name. Around each invocation the runtime writes Lambda's own
//! `START`, `END` and `REPORT` lines, so logs read like CloudWatch's.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Longest line kept as one event; longer lines are split. CloudWatch's event limit.
const MAX_LINE_BYTES: u64 = 256 * 1024;

/// How long output is still read after the process was reaped (a grandchild may hold the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Emits one log line of `function`.
pub(crate) fn emit(function: &str, line: &str) {
    tracing::info!(target: "portico::function", function, "{line}");
}

/// Reads `stream` line by line into the log until it closes, or shortly after `reaped`.
pub(crate) async fn capture(
    function: Arc<str>,
    stream: impl AsyncRead + Unpin,
    reaped: CancellationToken,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let give_up = async {
        reaped.cancelled().await;
        tokio::time::sleep(DRAIN_AFTER_EXIT).await;
    };
    tokio::pin!(give_up);
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE_BYTES);
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut buf) => read,
            _ = &mut give_up => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                emit(&function, line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// Figures for a `REPORT` line.
pub(crate) struct Report<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) duration: Duration,
    pub(crate) memory_size_mb: u32,
    pub(crate) max_memory_used_mb: Option<u64>,
    pub(crate) init_duration: Option<Duration>,
}

impl Report<'_> {
    /// Lambda's `REPORT` line; billed duration is rounded up to the millisecond.
    pub(crate) fn line(&self) -> String {
        let ms = self.duration.as_secs_f64() * 1000.0;
        let mut line = format!(
            "REPORT RequestId: {}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB",
            self.request_id,
            ms.ceil().max(1.0) as u64,
            self.memory_size_mb,
            self.max_memory_used_mb.unwrap_or(0),
        );
        if let Some(init) = self.init_duration {
            line.push_str(&format!(
                "\tInit Duration: {:.2} ms",
                init.as_secs_f64() * 1000.0
            ));
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
        };
        assert_eq!(
            r.line(),
            "REPORT RequestId: id-1\tDuration: 1234.56 ms\tBilled Duration: 1235 ms\tMemory Size: 128 MB\tMax Memory Used: 20 MB\tInit Duration: 4.56 ms"
        );
    }
}
