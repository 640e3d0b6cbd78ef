//! Process resources: the open-files limit, raised at start, and the cap on
//! client connections (`--max-connections`) that keeps the gateway inside it.
//!
//! Each proxied connection holds two descriptors (the client's and the
//! upstream's); a tunnel the same. At the cap the listeners stop accepting
//! (the kernel's backlog holds new connections) instead of running out of
//! descriptors, which would also fail the audit trail, NATS reconnects and
//! DNS.

use std::sync::Arc;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `--max-connections` unless given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Descriptors besides connections: listeners, the audit trail and its
/// write-ahead cursor, NATS, DNS sockets, the admin port's clients.
const RESERVED_FILES: u64 = 256;

/// What was done with RLIMIT_NOFILE, for the start lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub now: u64,
    pub hard: Option<u64>,
    /// What `max_connections` needs.
    pub needed: u64,
}

impl OpenFiles {
    pub fn enough(&self) -> bool {
        self.now >= self.needed
    }

    pub fn line(&self) -> String {
        let raised = if self.now > self.before {
            format!(" (raised from {})", self.before)
        } else {
            String::new()
        };
        format!("open files limit {}{raised}, {} needed", self.now, self.needed)
    }
}

/// The descriptors `max_connections` need.
pub fn files_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED_FILES)
}

/// Raises the soft open-files limit to the hard one (no privilege needed),
/// and warns, with what to do, when even that is short of what
/// `max_connections` needs.
pub fn raise_open_files(max_connections: usize) -> OpenFiles {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum;
    let mut now = before;
    if limit.current.is_some() && limit.current < hard.or(Some(u64::MAX)) {
        let raised = Rlimit {
            current: hard,
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now = hard.unwrap_or(u64::MAX),
            Err(error) => tracing::warn!(%error, "cannot raise the open-files limit from {before} to its hard limit"),
        }
    }
    let files = OpenFiles {
        before,
        now,
        hard,
        needed: files_needed(max_connections),
    };
    if !files.enough() {
        tracing::warn!(
            "the open-files limit is {now}, but --max-connections {max_connections} needs about {} \
             (a client and an upstream socket each): raise the hard limit (LimitNOFILE= in the systemd \
             unit, `ulimit -Hn` as root) or lower --max-connections",
            files.needed
        );
    }
    files
}

/// The gateway's connection slots, shared by every listener.
#[derive(Debug, Clone)]
pub struct Connections(Arc<Semaphore>);

/// One connection's slot; a tunnel takes it over from its connection.
#[derive(Debug, Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections(Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))))
    }

    /// Waits for a free slot (the listener stops accepting meanwhile).
    pub async fn slot(&self) -> Option<ConnectionSlot> {
        let permit = self.0.clone().acquire_owned().await.ok()?;
        Some(ConnectionSlot {
            _permit: Arc::new(permit),
        })
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_and_a_shortfall_is_reported() {
        let files = raise_open_files(1);
        assert!(files.now >= files.before);
        assert_eq!(Some(files.now), getrlimit(Resource::Nofile).current);
        assert!(files.enough(), "{files:?}");
        assert!(!raise_open_files(usize::MAX / 4).enough());
        assert_eq!(files_needed(10_000), 20_256);
    }

    #[tokio::test]
    async fn slots_are_given_back_when_the_last_holder_lets_go() {
        let connections = Connections::new(2);
        let first = connections.slot().await.unwrap();
        let tunnel = first.clone();
        let _second = connections.slot().await.unwrap();
        assert_eq!(connections.available(), 0);
        drop(first);
        assert_eq!(connections.available(), 0, "the tunnel still holds it");
        drop(tunnel);
        assert_eq!(connections.available(), 1);
    }
}
