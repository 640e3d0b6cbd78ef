use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dns::cache::{AnswerCache, CachedAnswer};

fn found(last: u8) -> CachedAnswer {
    CachedAnswer::Found(Arc::from([IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))]))
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn entries_expire_after_their_ttl() {
    let mut cache = AnswerCache::new(10);
    let t0 = Instant::now();
    cache.insert("a.test", found(1), Duration::from_secs(5), t0);
    cache.insert("b.test", CachedAnswer::NotFound, Duration::from_secs(1), t0);
    assert_eq!(cache.get("a.test", t0 + Duration::from_secs(4)), Some(found(1)));
    assert_eq!(cache.get("b.test", t0), Some(CachedAnswer::NotFound));
    assert_eq!(cache.get("b.test", t0 + Duration::from_secs(1)), None);
    assert_eq!(cache.get("a.test", t0 + Duration::from_secs(5)), None);
    assert_eq!(cache.len(), 0, "expired entries are dropped when seen");
}

#[test]
fn zero_ttl_and_zero_capacity_cache_nothing() {
    let t0 = Instant::now();
    let mut cache = AnswerCache::new(10);
    cache.insert("a.test", found(1), Duration::ZERO, t0);
    assert_eq!(cache.get("a.test", t0), None);
    let mut disabled = AnswerCache::new(0);
    disabled.insert("a.test", found(1), MINUTE, t0);
    assert_eq!(disabled.get("a.test", t0), None);
    assert_eq!(disabled.len(), 0);
}

#[test]
fn the_oldest_insertion_is_evicted_when_full() {
    let t0 = Instant::now();
    let mut cache = AnswerCache::new(3);
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        cache.insert(name, found(i as u8), MINUTE, t0);
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.get("a", t0), None);
    assert_eq!(cache.get("d", t0), Some(found(3)));
    // Refreshing "b" makes it the newest, so "c" goes next.
    cache.insert("b", found(9), MINUTE, t0);
    cache.insert("e", found(4), MINUTE, t0);
    assert_eq!(cache.get("c", t0), None);
    assert_eq!(cache.get("b", t0), Some(found(9)));
    assert_eq!(cache.get("e", t0), Some(found(4)));
}

#[test]
fn a_flood_of_unique_names_stays_bounded() {
    let t0 = Instant::now();
    let mut cache = AnswerCache::new(100);
    for i in 0..10_000 {
        cache.insert(&format!("n{i}.flood.test"), CachedAnswer::NotFound, MINUTE, t0);
    }
    assert_eq!(cache.len(), 100);
    assert!(cache.order_len() <= 200, "order queue {}", cache.order_len());
    assert_eq!(cache.get("n9999.flood.test", t0), Some(CachedAnswer::NotFound));
    assert_eq!(cache.get("n0.flood.test", t0), None);
}

#[test]
fn refreshing_the_same_names_does_not_grow_the_order_queue() {
    let t0 = Instant::now();
    let mut cache = AnswerCache::new(100);
    for i in 0..10_000 {
        cache.insert(&format!("n{}.test", i % 5), found(1), MINUTE, t0);
    }
    assert_eq!(cache.len(), 5);
    assert!(cache.order_len() <= 200, "order queue {}", cache.order_len());
}
