//! Which tokio scheduler portico runs on, from `TOKIO_WORKER_THREADS` (tokio's own variable).
//!
//! Unset: the multi-threaded scheduler with one worker per core. `N` > 1: that scheduler
//! with `N` workers. `1`: the current-thread scheduler, so every task runs on the main
//! thread. One worker of the multi-threaded scheduler still pays for work stealing (atomic
//! run queues, wake-ups that must be safe across threads) that one thread has no use for;
//! on one core the current-thread scheduler serves 8–13 % more requests
//! (`scripts/bench lb`). Anything else is refused with a clear message instead of tokio's
//! panic.

use tokio::runtime::Builder;

/// The variable that sets the number of worker threads.
pub(crate) const VARIABLE: &str = "TOKIO_WORKER_THREADS";

/// A value of [`VARIABLE`] that is not a whole number of threads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{VARIABLE}={value:?}: expected a whole number of threads from 1 to {MAX_THREADS}")]
pub(crate) struct BadThreads {
    value: String,
}

/// More workers than this is a typo, not a machine.
const MAX_THREADS: usize = 4096;

/// How many worker threads `value` (the variable's value, if set) asks for: `None` for one
/// per core.
pub(crate) fn threads(value: Option<&str>) -> Result<Option<usize>, BadThreads> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Some(n)),
        _ => Err(BadThreads {
            value: value.to_owned(),
        }),
    }
}

/// A runtime builder for `threads` workers (`None`: one per core), I/O and timers enabled.
pub(crate) fn builder(threads: Option<usize>) -> Builder {
    let mut builder = match threads {
        Some(1) => Builder::new_current_thread(),
        Some(n) => {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_and_bad_values_refused() {
        assert_eq!(threads(None), Ok(None));
        assert_eq!(threads(Some("1")), Ok(Some(1)));
        assert_eq!(threads(Some(" 8 ")), Ok(Some(8)));
        for bad in [
            "",
            "0",
            "-1",
            "two",
            "1.5",
            "4097",
            "99999999999999999999999",
        ] {
            let error = threads(Some(bad)).expect_err(bad);
            assert!(
                error.to_string().starts_with("TOKIO_WORKER_THREADS="),
                "{error}"
            );
        }
    }

    #[test]
    fn one_thread_is_the_current_thread_scheduler() {
        let one = builder(Some(1)).build().expect("runtime");
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        // Timers work on the one thread.
        one.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(1)).await });
        let two = builder(Some(2)).build().expect("runtime");
        assert_eq!(
            two.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
    }
}
