//! A log line said at most once per interval, with how many times it was due since.

use std::time::{Duration, Instant};

/// Counts events and says when one should be logged: the first, then one per `every`.
#[derive(Debug)]
pub struct Occasional {
    every: Duration,
    since_log: u64,
    logged: Option<Instant>,
}

impl Occasional {
    /// At most one log line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            since_log: 0,
            logged: None,
        }
    }

    /// Counts one event; when a line is due, returns how many events it speaks for.
    pub fn note(&mut self) -> Option<u64> {
        self.since_log += 1;
        let due = self.logged.is_none_or(|at| at.elapsed() >= self.every);
        if !due {
            return None;
        }
        self.logged = Some(Instant::now());
        Some(std::mem::take(&mut self.since_log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_due_once_per_interval_with_the_count_since() {
        let mut occasional = Occasional::new(Duration::from_secs(10));
        assert_eq!(occasional.note(), Some(1));
        for _ in 0..1000 {
            assert_eq!(occasional.note(), None);
        }
        occasional.logged = Some(Instant::now() - Duration::from_secs(11));
        assert_eq!(occasional.note(), Some(1001));
    }
}
