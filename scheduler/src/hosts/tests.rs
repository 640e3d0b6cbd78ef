use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::*;

fn local(per_domain: usize, politeness: Duration, queue: usize) -> Arc<Hosts> {
    Hosts::new(
        HostLimits {
            per_domain,
            politeness,
            queue,
        },
        None,
    )
}

fn slot(pool: &Arc<Semaphore>) -> Slot {
    Slot::new(
        pool.clone().try_acquire_owned().expect("a free pool slot"),
        pool.clone(),
    )
}

#[tokio::test]
async fn a_job_waiting_for_its_host_gives_its_pool_slot_to_other_hosts() {
    let hosts = local(1, Duration::ZERO, 8);
    let pool = Arc::new(Semaphore::new(2));
    let first = slot(&pool);
    let held = hosts.turn("flood.test", &first).await.unwrap();
    // The second job for the same host waits, without its pool slot...
    let second = Arc::new(slot(&pool));
    let waiter = {
        let (hosts, second) = (hosts.clone(), second.clone());
        tokio::spawn(async move { hosts.turn("flood.test", &second).await.map(|_| ()) })
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while pool.available_permits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the waiting job gave its pool slot back");
    assert_eq!(hosts.waiting(), 1);
    // ...so a job for another host starts at once.
    let other = slot(&pool);
    let turn = tokio::time::timeout(Duration::from_secs(1), hosts.turn("trickle.test", &other))
        .await
        .expect("another host is not held up")
        .unwrap();
    drop((turn, other));
    // The waiter runs once the flood's slot is free, with a pool slot again.
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got its turn")
        .unwrap()
        .unwrap();
    // Both jobs hold a pool slot again: the first its own, the waiter the
    // one it took back before running.
    assert_eq!(pool.available_permits(), 0);
    drop((first, second));
    assert_eq!(pool.available_permits(), 2);
}

#[tokio::test]
async fn past_the_host_queue_a_job_is_busy() {
    let hosts = local(1, Duration::ZERO, 1);
    let pool = Arc::new(Semaphore::new(8));
    let running = slot(&pool);
    let _turn = hosts.turn("h.test", &running).await.unwrap();
    let waiting = Arc::new(slot(&pool));
    let _waiter = {
        let (hosts, waiting) = (hosts.clone(), waiting.clone());
        tokio::spawn(async move { hosts.turn("h.test", &waiting).await.map(|_| ()) })
    };
    while hosts.waiting() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = slot(&pool);
    assert!(hosts.turn("h.test", &third).await.is_err());
}

#[tokio::test]
async fn starts_at_one_host_are_spaced_by_the_politeness_gap() {
    let hosts = local(4, Duration::from_millis(40), 8);
    let pool = Arc::new(Semaphore::new(8));
    let began = Instant::now();
    let mut turns = Vec::new();
    for _ in 0..3 {
        let slot = slot(&pool);
        turns.push((hosts.turn("polite.test", &slot).await.unwrap(), slot));
    }
    // Three starts: two gaps at least.
    assert!(began.elapsed() >= Duration::from_millis(80), "{:?}", began.elapsed());
}
