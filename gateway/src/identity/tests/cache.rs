//! The verified-token cache on its own.

use std::sync::Arc;

use crate::identity::jwt_cache::{MAX_CACHE_SECONDS, TokenCache};
use crate::identity::{AuthMethod, Identity};

fn identity(n: u32) -> Arc<Identity> {
    let text: Arc<str> = Arc::from(format!("agent-{n}"));
    Arc::new(Identity {
        agent_id: text.clone(),
        team: text.clone(),
        project: text.clone(),
        environment: text.clone(),
        role: text,
        method: AuthMethod::Jwt,
        session_id: None,
    })
}

fn fingerprint(n: u32) -> [u8; 32] {
    let mut fp = [0u8; 32];
    fp[..4].copy_from_slice(&n.to_be_bytes());
    fp
}

#[test]
fn entries_live_until_the_earlier_of_exp_and_one_minute() {
    let cache = TokenCache::new(8);
    cache.insert(fingerprint(1), identity(1), 1_000 + 500, 1_000);
    cache.insert(fingerprint(2), identity(2), 1_000 + 10, 1_000);
    assert!(cache.get(&fingerprint(1), 1_000 + MAX_CACHE_SECONDS - 1).is_some());
    assert!(cache.get(&fingerprint(1), 1_000 + MAX_CACHE_SECONDS).is_none());
    assert!(cache.get(&fingerprint(2), 1_009).is_some());
    assert!(cache.get(&fingerprint(2), 1_010).is_none());
    assert!(cache.get(&fingerprint(3), 1_000).is_none());
}

#[test]
fn already_expired_tokens_are_not_stored() {
    let cache = TokenCache::new(8);
    cache.insert(fingerprint(1), identity(1), 1_000, 1_000);
    cache.insert(fingerprint(2), identity(2), 999, 1_000);
    assert_eq!(cache.len(), 0);
}

#[test]
fn the_cache_is_bounded() {
    let cache = TokenCache::new(16);
    for n in 0..200 {
        cache.insert(fingerprint(n), identity(n), 10_000, 1_000);
        assert!(cache.len() <= 16, "len {} after {n}", cache.len());
    }
    // The newest entry always makes it in.
    assert!(cache.get(&fingerprint(199), 1_001).is_some());
}

#[test]
fn expired_entries_are_evicted_before_live_ones() {
    let cache = TokenCache::new(4);
    cache.insert(fingerprint(1), identity(1), 1_010, 1_000);
    cache.insert(fingerprint(2), identity(2), 1_010, 1_000);
    cache.insert(fingerprint(3), identity(3), 2_000, 1_000);
    cache.insert(fingerprint(4), identity(4), 2_000, 1_000);
    // At t=1050 entries 1 and 2 are dead; inserting a fifth must drop them, not 3 or 4.
    cache.insert(fingerprint(5), identity(5), 2_000, 1_050);
    assert_eq!(cache.len(), 3);
    for n in [3, 4, 5] {
        assert!(cache.get(&fingerprint(n), 1_051).is_some(), "entry {n}");
    }
}
