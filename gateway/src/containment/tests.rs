use std::sync::Arc;

use super::*;

fn agent(name: &str) -> Arc<str> {
    Arc::from(name)
}

#[test]
fn an_agent_gets_at_most_its_concurrency_and_others_are_unaffected() {
    let c = Containment::new(3, 1_000);
    let a = agent("a");
    let held: Vec<_> = (0..3).map(|_| c.admit(&a, 0).expect("within limit")).collect();
    assert_eq!(c.admit(&a, 0).unwrap_err(), Overflow::Concurrency { limit: 3 });
    assert!(c.admit(&agent("b"), 0).is_ok(), "another agent has its own share");
    drop(held);
    assert!(c.admit(&a, 0).is_ok(), "released on drop");
}

#[test]
fn declared_and_streamed_bytes_count_against_the_pending_limit() {
    let c = Containment::new(10, 100);
    let a = agent("a");
    let first = c.admit(&a, 60).expect("60 of 100");
    assert_eq!(c.admit(&a, 50).unwrap_err(), Overflow::PendingBytes { limit: 100 });
    let streaming = c.admit(&a, 0).expect("no declared length");
    assert!(streaming.charge_streamed(30).is_ok());
    assert_eq!(
        streaming.charge_streamed(20),
        Err(Overflow::PendingBytes { limit: 100 })
    );
    drop((first, streaming));
    assert!(c.admit(&a, 100).is_ok(), "everything was released");
}

#[test]
fn a_body_over_the_limit_by_itself_is_too_large_not_busy() {
    let c = Containment::new(10, 100);
    let a = agent("a");
    let refused = c.admit(&a, 101).unwrap_err();
    assert_eq!(refused, Overflow::TooLarge { limit: 100 });
    assert!(!refused.is_retryable());
    let streaming = c.admit(&a, 0).unwrap();
    assert!(streaming.charge_streamed(100).is_ok());
    assert_eq!(streaming.charge_streamed(1), Err(Overflow::TooLarge { limit: 100 }));
    assert_eq!(c.tracked_agents(), 1);
    drop(streaming);
    assert_eq!(c.tracked_agents(), 0);
}

#[test]
fn idle_agents_are_forgotten() {
    let c = Containment::new(2, 100);
    for i in 0..1000 {
        let admission = c.admit(&agent(&format!("agent-{i}")), 1).expect("admit");
        drop(admission);
    }
    assert_eq!(c.tracked_agents(), 0);
    let held = c.admit(&agent("x"), 0).expect("admit");
    let _ = c.admit(&agent("x"), 0).expect("admit");
    assert_eq!(c.tracked_agents(), 1);
    drop(held);
}

#[test]
fn concurrent_admissions_never_exceed_the_limit() {
    let c = Containment::new(4, u64::MAX);
    let a = agent("a");
    let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let current = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (c, a, peak, current) = (c.clone(), a.clone(), peak.clone(), current.clone());
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    if let Ok(admission) = c.admit(&a, 0) {
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        current.fetch_sub(1, Ordering::SeqCst);
                        drop(admission);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(peak.load(Ordering::SeqCst) <= 4, "peak {}", peak.load(Ordering::SeqCst));
    assert_eq!(c.tracked_agents(), 0);
}
