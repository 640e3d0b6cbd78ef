//! Per-key limiter state in sharded maps: every worker thread checks limits
//! on every request, so one lock for all keys would serialise the gateway.
//! A key's shard is picked by hash; only requests for keys in the same shard
//! ever contend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(super) type Shard<V> = HashMap<Box<str>, V>;

/// A map from key to `V` split over a power-of-two number of mutexes.
pub(super) struct Sharded<V> {
    hasher: RandomState,
    shards: Box<[Mutex<Shard<V>>]>,
}

impl<V> Sharded<V> {
    pub fn new(shards: usize) -> Self {
        let count = shards.max(1).next_power_of_two();
        Sharded {
            hasher: RandomState::new(),
            shards: (0..count).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard holding `key`, locked. The maps are only ever left in a
    /// consistent state, so a poisoned lock is still safe to use.
    pub fn lock(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        // Truncating the hash is fine: only its low bits pick the shard.
        let index = (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1);
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Visits each shard in turn, holding one lock at a time.
    pub fn for_each(&self, mut visit: impl FnMut(&mut Shard<V>)) {
        for shard in &self.shards {
            visit(&mut shard.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    pub fn len(&self) -> usize {
        let mut total = 0;
        self.for_each(|shard| total += shard.len());
        total
    }
}

/// Theoretical arrival times per key, at most `max_keys` of them.
pub(super) struct TatTable {
    map: Sharded<u64>,
    per_shard: usize,
}

impl TatTable {
    pub fn new(max_keys: usize, shards: usize) -> Self {
        let max_keys = max_keys.max(1);
        // Fewer shards than keys, so per-shard caps add up to at most max_keys.
        let mut map = Sharded::new(shards);
        if map.shard_count() > max_keys {
            map = Sharded::new(prev_power_of_two(max_keys));
        }
        let per_shard = max_keys / map.shard_count();
        TatTable { map, per_shard }
    }

    pub fn lock(&self, key: &str) -> TatShard<'_> {
        TatShard {
            shard: self.map.lock(key),
            cap: self.per_shard,
        }
    }

    /// Forgets every key whose TAT is not after `now`. Such a key has its
    /// whole burst back, the same as a key never seen, so forgetting it
    /// changes no decision.
    pub fn retain_recent(&self, now: u64) {
        self.map.for_each(|shard| shard.retain(|_, tat| *tat > now));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn prev_power_of_two(n: usize) -> usize {
    let up = n.next_power_of_two();
    if up == n { n } else { up / 2 }
}

/// One locked shard of a [`TatTable`].
pub(super) struct TatShard<'a> {
    shard: MutexGuard<'a, Shard<u64>>,
    cap: usize,
}

impl TatShard<'_> {
    /// The key's TAT; 0 (long past) for a key not held.
    pub fn tat(&self, key: &str) -> u64 {
        self.shard.get(key).copied().unwrap_or(0)
    }

    /// Records the key's new TAT, making room if the shard is full.
    pub fn store(&mut self, key: &str, tat: u64, now: u64) {
        if let Some(slot) = self.shard.get_mut(key) {
            *slot = tat;
            return;
        }
        if self.shard.len() >= self.cap {
            // Idle keys first: dropping them costs nothing.
            self.shard.retain(|_, held| *held > now);
        }
        if self.shard.len() >= self.cap {
            // Still full of busy keys: drop the one closest to idle. It comes
            // back as a fresh key, with its burst and never more.
            let victim = self
                .shard
                .iter()
                .min_by_key(|(_, held)| **held)
                .map(|(held_key, _)| held_key.clone());
            if let Some(victim) = victim {
                self.shard.remove(&victim);
            }
        }
        self.shard.insert(Box::from(key), tat);
    }
}
