//! A follower that retries every second or two while NATS is down would
//! write the same warning thousands of times an hour: a failure is logged
//! when it is new, and again only once a minute while it lasts.

use std::time::{Duration, Instant};

/// How often a failure that keeps repeating is logged again.
pub const EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Repeats {
    last: Option<(String, Instant)>,
}

impl Repeats {
    /// Whether this failure should be logged now (and, if so, notes it).
    pub fn worth_logging(&mut self, error: &str) -> bool {
        let due = match &self.last {
            Some((last, at)) => last != error || at.elapsed() >= EVERY,
            None => true,
        };
        if due {
            self.last = Some((error.to_string(), Instant::now()));
        }
        due
    }

    /// After a success: the next failure is news.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_when_new_and_not_again_while_it_repeats() {
        let mut repeats = Repeats::default();
        assert!(repeats.worth_logging("connection refused"));
        assert!(!repeats.worth_logging("connection refused"));
        assert!(repeats.worth_logging("timed out"), "a different failure is news");
        assert!(!repeats.worth_logging("timed out"));
        repeats.clear();
        assert!(repeats.worth_logging("timed out"), "after a success it is news again");
    }
}
