//! Wall-clock seconds for token lifetimes; replaceable in tests so expiry can be exercised
//! without sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering};

#[derive(Debug, Clone, Default)]
pub(super) enum Clock {
    #[default]
    System,
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        match self {
            // A clock before 1970 makes every token look not-yet-valid: fail closed.
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            #[cfg(test)]
            Clock::Manual(now) => now.load(Ordering::SeqCst),
        }
    }
}
