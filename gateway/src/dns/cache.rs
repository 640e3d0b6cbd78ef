//! The answer caches of the resolver and of the DNS control server: per
//! key, with its own expiry, bounded in size so a flood of unique names
//! (random subdomains) cannot grow memory without limit.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the cache remembers about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CachedAnswer {
    Found(Arc<[IpAddr]>),
    /// NXDOMAIN, or the name exists without A/AAAA records.
    NotFound,
}

#[derive(Debug)]
struct Slot<T> {
    answer: T,
    expires_at: Instant,
    /// Which push into `order` belongs to this slot; older pushes for the same
    /// name are stale and skipped when evicting.
    generation: u64,
}

/// Evicts the oldest insertion first when full. Insertion order is close to
/// expiry order (TTLs are capped), and it costs O(1) per insert, where
/// finding the soonest expiry would need a heap or a scan.
#[derive(Debug)]
pub(super) struct AnswerCache<T = CachedAnswer> {
    max_entries: usize,
    slots: HashMap<String, Slot<T>>,
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

impl<T: Clone> AnswerCache<T> {
    pub(super) fn new(max_entries: usize) -> Self {
        AnswerCache {
            max_entries,
            slots: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
        }
    }

    /// The live answer for `name`, dropping it if it has expired.
    pub(super) fn get(&mut self, name: &str, now: Instant) -> Option<T> {
        let slot = self.slots.get(name)?;
        if slot.expires_at > now {
            return Some(slot.answer.clone());
        }
        self.slots.remove(name);
        None
    }

    /// Remembers `answer` for `ttl`. A zero TTL (or a cache sized zero) means
    /// "do not cache", as DNS itself defines TTL 0.
    pub(super) fn insert(&mut self, name: &str, answer: T, ttl: Duration, now: Instant) {
        if ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let Some(expires_at) = now.checked_add(ttl) else {
            return;
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        self.slots.insert(
            name.to_string(),
            Slot {
                answer,
                expires_at,
                generation,
            },
        );
        self.order.push_back((name.to_string(), generation));
        while self.slots.len() > self.max_entries {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .slots
                .get(&oldest)
                .is_some_and(|slot| slot.generation == generation)
            {
                self.slots.remove(&oldest);
            }
        }
        // Re-inserting the same names (each expiry refreshes them) leaves stale
        // pushes behind; drop them once they outnumber the live entries.
        if self.order.len() > 2 * self.max_entries.max(16) {
            let slots = &self.slots;
            self.order
                .retain(|(name, generation)| slots.get(name).is_some_and(|slot| slot.generation == *generation));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub(super) fn order_len(&self) -> usize {
        self.order.len()
    }
}
