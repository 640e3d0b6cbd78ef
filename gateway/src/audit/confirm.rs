//! Confirmation that a record is in the trail: what lets a response's last
//! bytes go to the client, and what `--audit-fsync` decides it means.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Longest a response waits for its record to be confirmed before the
/// gateway gives up on it (`egress.fail_mode` then decides: cut or release).
/// Confirmation normally takes one write (or one fsync) of a group commit:
/// microseconds to milliseconds. This only bounds a stuck disk.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// When a written record counts as confirmed (`--audit-fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// After `write(2)` and `fdatasync(2)` of its batch: survives a power
    /// loss or kernel crash. Each batch waits for one fsync; everything that
    /// queued meanwhile shares the next one (group commit).
    Every,
    /// After `write(2)` (survives a kill of the gateway); fsync at most
    /// [`super::FSYNC_INTERVAL`] later, so a power loss can lose up to that
    /// much. The default.
    #[default]
    Interval,
    /// After `write(2)`; fsync only on a clean shutdown. The OS flushes when
    /// it likes (typically within 30 s).
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "every" => Ok(FsyncPolicy::Every),
            "interval" => Ok(FsyncPolicy::Interval),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!("`{other}` is not an fsync mode; use every, interval or never")),
        }
    }
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Every => "every",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// Why a record was not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unconfirmed {
    #[error("the audit writer did not confirm the record in time")]
    TimedOut,
    #[error("the audit writer stopped or failed before the record was written")]
    WriterFailed,
}

/// Resolves once the writer has put the record in the file (as the fsync
/// policy defines it). Records that went to the log (fail-open) are
/// confirmed at once. Without [`Confirmation::within`] it waits as long as
/// the writer takes.
#[must_use = "a confirmation does nothing unless awaited or polled"]
#[derive(Debug)]
pub struct Confirmation {
    rx: Option<oneshot::Receiver<()>>,
    timeout: Option<Duration>,
    /// Created on the first poll that has to wait: most confirmations are
    /// done by then, and a timer costs an allocation.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Confirmation {
    pub(crate) fn waiting(rx: oneshot::Receiver<()>) -> Self {
        Confirmation {
            rx: Some(rx),
            timeout: None,
            deadline: None,
        }
    }

    /// Already confirmed.
    pub fn done() -> Self {
        Confirmation {
            rx: None,
            timeout: None,
            deadline: None,
        }
    }

    /// Nobody waits: the record is queued (or written) all the same.
    pub fn detach(self) {}

    /// Gives up after `timeout` with [`Unconfirmed::TimedOut`].
    pub fn within(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Future for Confirmation {
    type Output = Result<(), Unconfirmed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(confirmed) => {
                this.rx = None;
                this.deadline = None;
                return Poll::Ready(confirmed.map_err(|_| Unconfirmed::WriterFailed));
            }
            Poll::Pending => {}
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.rx = None;
                Poll::Ready(Err(Unconfirmed::TimedOut))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
