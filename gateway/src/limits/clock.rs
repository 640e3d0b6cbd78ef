//! Time for the limiters. Production reads tokio's monotonic clock; tests
//! drive a [`ManualClock`] so bursts, retry times and queue waits are exact
//! and no test sleeps.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// A pending wait on a [`Clock`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A monotonic clock the limiters read and wait on.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the clock's origin. Never goes backwards.
    fn now(&self) -> Duration;
    /// Resolves once `now()` has advanced by at least `duration`.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// tokio's clock: `std::time::Instant` normally, and the paused test clock
/// when a runtime has one, so `now` and `sleep` always agree.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told to, for deterministic tests of anything
/// that rate-limits. Sleeps wake when [`ManualClock::advance`] passes their
/// deadline.
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualState>>,
}

#[derive(Default)]
struct ManualState {
    now: Duration,
    sleepers: Vec<(Duration, oneshot::Sender<()>)>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward and wakes every sleep whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        state.now = state.now.saturating_add(by);
        let now = state.now;
        let (due, waiting): (Vec<_>, Vec<_>) = state.sleepers.drain(..).partition(|(deadline, _)| *deadline <= now);
        state.sleepers = waiting;
        for (_, wake) in due {
            // The sleeper may have been dropped (a timeout won the race).
            let _ = wake.send(());
        }
    }

    /// Sleeps registered and not yet woken, including abandoned ones; lets a
    /// test wait until its tasks have reached their waits.
    pub fn pending_sleeps(&self) -> usize {
        let state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        state.sleepers.iter().filter(|(_, wake)| !wake.is_closed()).count()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).now
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        if duration.is_zero() {
            return Box::pin(std::future::ready(()));
        }
        let (wake, woken) = oneshot::channel();
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = state.now.saturating_add(duration);
        state.sleepers.push((deadline, wake));
        Box::pin(async move {
            // An error means the clock is gone; nothing will ever wake us, so
            // treat it as elapsed rather than hang.
            let _ = woken.await;
        })
    }
}

/// Runs `work` for at most `limit` on `clock`; `None` when time ran out.
pub(super) async fn within<F: Future>(clock: &dyn Clock, limit: Duration, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = work => Some(out),
        () = clock.sleep(limit) => None,
    }
}
