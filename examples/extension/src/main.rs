//! A Lambda extension written with the official `lambda-extension` crate. Lambda starts it
//! from `/opt/extensions` before the runtime; it prints each event it is sent (and so
//! shows in the function's log), and takes a moment after each invocation, as an extension
//! that flushes telemetry does.

use lambda_extension::{Error, LambdaEvent, NextEvent, service_fn};

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

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_extension::run(service_fn(on_event)).await
}
