//! A Lambda extension written with the official `lambda-extension` crate. Lambda starts it
//! from `/opt/extensions` before the runtime. It prints each event it is sent, and a line
//! for each platform event and function log line the Telemetry API delivers to it (so both
//! show in the function's log), and takes a moment after each invocation, as an extension
//! that flushes telemetry does. Its Telemetry API listener's port is
//! `DEMO_TELEMETRY_PORT` (default 9003, the crate's).

use lambda_extension::{
    Error, Extension, LambdaEvent, LambdaTelemetry, LambdaTelemetryRecord, NextEvent,
    SharedService, service_fn,
};

async fn on_event(event: LambdaEvent) -> Result<(), Error> {
    match event.next {
        NextEvent::Invoke(invoke) => {
            println!("demo-extension: INVOKE {}", invoke.request_id);
            // Work after the function's reply, before asking for the next event.
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            println!("demo-extension: done with {}", invoke.request_id);
        }
        NextEvent::Shutdown(shutdown) => {
            println!("demo-extension: SHUTDOWN {}", shutdown.shutdown_reason);
        }
    }
    Ok(())
}

async fn on_telemetry(batch: Vec<LambdaTelemetry>) -> Result<(), Error> {
    for event in batch {
        let line = match event.record {
            LambdaTelemetryRecord::Function(text) => format!("function {}", text.trim()),
            LambdaTelemetryRecord::PlatformStart { request_id, .. } => {
                format!("platform.start {request_id}")
            }
            LambdaTelemetryRecord::PlatformRuntimeDone {
                request_id, status, ..
            } => format!("platform.runtimeDone {request_id} {status:?}"),
            LambdaTelemetryRecord::PlatformReport {
                request_id,
                metrics,
                ..
            } => format!(
                "platform.report {request_id} {} MB billed {} ms",
                metrics.memory_size_mb, metrics.billed_duration_ms
            ),
            LambdaTelemetryRecord::PlatformInitStart { phase, .. } => {
                format!("platform.initStart {phase:?}")
            }
            LambdaTelemetryRecord::PlatformInitReport { metrics, .. } => {
                format!("platform.initReport {} ms", metrics.duration_ms)
            }
            LambdaTelemetryRecord::PlatformExtension { name, events, .. } => {
                format!("platform.extension {name} {events:?}")
            }
            other => format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("")
                .to_owned(),
        };
        // Not the telemetry of its own lines: it subscribed to `platform` and `function`.
        println!("demo-extension: telemetry {line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let port = std::env::var("DEMO_TELEMETRY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9003);
    Extension::new()
        .with_events_processor(service_fn(on_event))
        .with_telemetry_processor(SharedService::new(service_fn(on_telemetry)))
        .with_telemetry_port_number(port)
        .run()
        .await
}
