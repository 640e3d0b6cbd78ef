//! Per-agent containment (seed §5.2): one agent may not hold more than
//! `max_concurrent_requests` exchanges open, nor more than
//! `max_pending_bytes` of request bodies in flight, so a runaway agent
//! cannot starve the others.
//!
//! One [`Containment`] lives for the gateway's whole life (limits are
//! updated on reload) so that requests admitted before a reload are still
//! counted after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why an agent's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The agent already has `limit` exchanges open.
    Concurrency { limit: u32 },
    /// The agent's request bodies in flight would exceed `limit` bytes.
    PendingBytes { limit: u64 },
    /// This one body is over `limit` by itself: no wait would help (413).
    TooLarge { limit: u64 },
}

impl Overflow {
    /// Whether retrying later can succeed (the agent's own load drains).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Overflow::TooLarge { .. })
    }
}

#[derive(Debug, Default)]
struct AgentLoad {
    in_flight: AtomicU32,
    pending_bytes: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Containment {
    max_concurrent: AtomicU32,
    max_pending_bytes: AtomicU64,
    // Entries exist only while an agent has something in flight, so the map
    // is bounded by the number of open exchanges.
    agents: Mutex<HashMap<Arc<str>, Arc<AgentLoad>>>,
}

impl Containment {
    pub fn new(max_concurrent: u32, max_pending_bytes: u64) -> Arc<Self> {
        let containment = Arc::new(Containment::default());
        containment.set_limits(max_concurrent, max_pending_bytes);
        containment
    }

    pub fn set_limits(&self, max_concurrent: u32, max_pending_bytes: u64) {
        self.max_concurrent.store(max_concurrent.max(1), Ordering::Relaxed);
        self.max_pending_bytes
            .store(max_pending_bytes.max(1), Ordering::Relaxed);
    }

    /// Admits one exchange for `agent` with `declared_bytes` of request body
    /// (its Content-Length; bodies without one are charged as they stream).
    pub fn admit(self: &Arc<Self>, agent: &Arc<str>, declared_bytes: u64) -> Result<Admission, Overflow> {
        let max_concurrent = self.max_concurrent.load(Ordering::Relaxed);
        let max_pending = self.max_pending_bytes.load(Ordering::Relaxed);
        let load = {
            let mut agents = self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let load = agents.entry(agent.clone()).or_default().clone();
            if load.in_flight.load(Ordering::Relaxed) >= max_concurrent {
                drop(agents);
                self.forget_if_idle(agent, &load);
                return Err(Overflow::Concurrency { limit: max_concurrent });
            }
            if declared_bytes > max_pending {
                drop(agents);
                self.forget_if_idle(agent, &load);
                return Err(Overflow::TooLarge { limit: max_pending });
            }
            let pending = load.pending_bytes.load(Ordering::Relaxed);
            if declared_bytes > 0 && pending.saturating_add(declared_bytes) > max_pending {
                drop(agents);
                self.forget_if_idle(agent, &load);
                return Err(Overflow::PendingBytes { limit: max_pending });
            }
            load.in_flight.fetch_add(1, Ordering::Relaxed);
            load.pending_bytes.fetch_add(declared_bytes, Ordering::Relaxed);
            load
        };
        Ok(Admission {
            containment: self.clone(),
            agent: agent.clone(),
            load,
            charged: AtomicU64::new(declared_bytes),
        })
    }

    pub fn max_pending_bytes(&self) -> u64 {
        self.max_pending_bytes.load(Ordering::Relaxed)
    }

    /// Agents with exchanges in flight (for tests and metrics).
    pub fn tracked_agents(&self) -> usize {
        self.agents.lock().map(|a| a.len()).unwrap_or(0)
    }

    fn forget_if_idle(&self, agent: &Arc<str>, load: &Arc<AgentLoad>) {
        let mut agents = self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if load.in_flight.load(Ordering::Relaxed) == 0
            && agents.get(agent).is_some_and(|current| Arc::ptr_eq(current, load))
        {
            agents.remove(agent);
        }
    }
}

/// One admitted exchange; dropping it releases the agent's share.
#[derive(Debug)]
pub struct Admission {
    containment: Arc<Containment>,
    agent: Arc<str>,
    load: Arc<AgentLoad>,
    charged: AtomicU64,
}

impl Admission {
    /// Charges body bytes that arrive without a declared length. Returns
    /// the overflow once the agent's bytes in flight pass the limit.
    pub fn charge_streamed(&self, bytes: u64) -> Result<(), Overflow> {
        let limit = self.containment.max_pending_bytes.load(Ordering::Relaxed);
        let before = self.load.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        let own = self.charged.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if own > limit {
            Err(Overflow::TooLarge { limit })
        } else if before.saturating_add(bytes) > limit {
            Err(Overflow::PendingBytes { limit })
        } else {
            Ok(())
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.load
            .pending_bytes
            .fetch_sub(self.charged.load(Ordering::Relaxed), Ordering::Relaxed);
        if self.load.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.containment.forget_if_idle(&self.agent, &self.load);
        }
    }
}

#[cfg(test)]
mod tests;
