//! A small bounded cache of already-verified tokens, so that an agent re-sending one token on
//! every request does not pay for a signature check each time.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::Identity;

/// SHA-256 of the compact token: the cache never holds the token itself.
pub(super) type TokenFingerprint = [u8; 32];

/// How long a verified token may be served without re-verification, at most.
pub(super) const MAX_CACHE_SECONDS: u64 = 60;

pub(super) const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug)]
struct CachedToken {
    identity: Arc<Identity>,
    /// Exclusive: the entry is served only while `now < valid_until`.
    valid_until: u64,
}

#[derive(Debug)]
pub(super) struct TokenCache {
    capacity: usize,
    entries: RwLock<HashMap<TokenFingerprint, CachedToken>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get(&self, fingerprint: &TokenFingerprint, now: u64) -> Option<Arc<Identity>> {
        // A poisoned lock only means another thread panicked mid-operation; the map itself is
        // still a valid map, and every entry is checked against the clock anyway.
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(fingerprint)
            .filter(|entry| now < entry.valid_until)
            .map(|entry| entry.identity.clone())
    }

    /// `expires_at` is the token's `exp`; the entry lives until `min(exp, now + 60s)` so the
    /// cache can never serve a token past its expiry.
    pub fn insert(&self, fingerprint: TokenFingerprint, identity: Arc<Identity>, expires_at: u64, now: u64) {
        let valid_until = expires_at.min(now.saturating_add(MAX_CACHE_SECONDS));
        if valid_until <= now {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&fingerprint) {
            entries.retain(|_, entry| now < entry.valid_until);
            if entries.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary eighth (HashMap order is
                // effectively random) so the next inserts do not rescan the whole map.
                let victims: Vec<TokenFingerprint> = entries.keys().take((self.capacity / 8).max(1)).copied().collect();
                for victim in &victims {
                    entries.remove(victim);
                }
            }
        }
        entries.insert(fingerprint, CachedToken { identity, valid_until });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}
