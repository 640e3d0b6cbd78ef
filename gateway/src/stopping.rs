//! Shutdown within a budget (`--drain-timeout`): in-flight work gets most
//! of it, and every later step (joining tasks and threads, flushing the
//! audit trail, the last NATS publishes) waits only for what is left. A
//! step that does not finish in time is named in the log and left behind,
//! so a dead NATS server or a hung upstream cannot hold a process up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The part of a drain budget kept for the steps after the in-flight work:
/// a quarter, at most 5 s.
pub fn reserve(drain: Duration) -> Duration {
    (drain / 4).min(Duration::from_secs(5))
}

/// How long in-flight requests (or queries) may run after the stop.
pub fn in_flight(drain: Duration) -> Duration {
    drain.saturating_sub(reserve(drain))
}

/// The time left to stop in.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    /// A budget of `total` from now.
    pub fn start(total: Duration) -> Budget {
        Budget {
            deadline: Instant::now() + total,
        }
    }

    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `future`'s output if it finishes within the budget; otherwise a
    /// warning naming `what`, and `None`.
    pub async fn bound<F: Future>(&self, what: &str, future: F) -> Option<F::Output> {
        match tokio::time::timeout_at(self.deadline, future).await {
            Ok(output) => Some(output),
            Err(_) => {
                tracing::warn!("{what} did not stop within the drain timeout; left behind");
                None
            }
        }
    }

    /// Waits for a task within the budget; aborts it when time is up.
    pub async fn join<T>(&self, what: &str, mut task: tokio::task::JoinHandle<T>) -> Option<T> {
        match self.bound(what, &mut task).await {
            Some(joined) => joined.ok(),
            None => {
                task.abort();
                None
            }
        }
    }

    /// Joins threads within the budget. A thread still running when time is
    /// up is left to end with the process.
    pub async fn join_threads(&self, what: &str, threads: Vec<std::thread::JoinHandle<()>>) {
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        // The blocking join itself is never waited for past the budget.
        let _ = self.bound(what, joined).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_work_gets_most_of_the_budget() {
        assert_eq!(in_flight(Duration::from_secs(30)), Duration::from_secs(25));
        assert_eq!(in_flight(Duration::from_secs(2)), Duration::from_millis(1500));
        assert_eq!(in_flight(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_step_that_hangs_is_left_behind_in_time() {
        let budget = Budget::start(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let hung = tokio::spawn(std::future::pending::<()>());
        assert!(budget.join("a hung task", hung).await.is_none());
        // What is ready is taken, even past the deadline.
        assert_eq!(budget.bound("a finished step", async { 1 }).await, Some(1));
        let (_tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        budget.join_threads("a stuck thread", vec![stuck]).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
