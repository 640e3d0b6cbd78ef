//! `reject`, `delay` and `queue` on a manual clock: tasks wait on the clock,
//! the test moves it, and `settle` lets every woken task run.

use std::future::Future;
use std::sync::Mutex;

use clawgress_policies::model::ThrottleAction;
use tokio::task::JoinHandle;

use super::*;

const SECOND: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(60);

/// One request a second per agent, burst 1.
fn one_per_second(delay_ms: u64, queue_depth: usize) -> (Arc<Limits>, ManualClock) {
    let mut config = roomy();
    config.per_agent = AgentLimit {
        default: rate("60/min"),
        burst: nz(1),
    };
    config.throttle_delay_ms = delay_ms;
    let tuning = Tuning {
        queue_depth,
        ..Tuning::default()
    };
    let (limits, clock) = build(&config, tuning);
    (Arc::new(limits), clock)
}

/// Lets every runnable task on this (current-thread) runtime run.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// The future's answer if it has one without waiting.
async fn at_once<F: Future>(work: F) -> Option<F::Output> {
    let work = std::pin::pin!(work);
    tokio::select! {
        biased;
        out = work => Some(out),
        () = std::future::ready(()) => None,
    }
}

type Log = Arc<Mutex<Vec<(usize, bool)>>>;

fn spawn_acquire(
    limits: &Arc<Limits>,
    id: usize,
    agent: &'static str,
    action: ThrottleAction,
    max_wait: Duration,
    log: &Log,
) -> JoinHandle<LimitVerdict> {
    let (limits, log) = (limits.clone(), log.clone());
    tokio::spawn(async move {
        let verdict = limits.acquire(&key(agent, "x.example.com"), action, max_wait).await;
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, verdict.is_allowed()));
        verdict
    })
}

fn logged(log: &Log) -> Vec<(usize, bool)> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn waiting(limits: &Limits) -> usize {
    limits.state.queues.waiting.load(std::sync::atomic::Ordering::Acquire)
}

#[tokio::test]
async fn reject_answers_at_once() {
    let (limits, _clock) = one_per_second(1000, 64);
    let k = key("agent-1", "x.example.com");
    assert!(limits.check(&k).is_allowed());
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Reject, LONG)).await;
    let limited = refused(verdict.expect("reject never waits"));
    assert_eq!((limited.scope, limited.retry_after), (Scope::Agent, SECOND));
}

#[tokio::test]
async fn delay_waits_for_capacity_within_throttle_delay() {
    let (limits, clock) = one_per_second(1000, 64);
    let log = Log::default();
    assert!(limits.check(&key("agent-1", "x.example.com")).is_allowed());
    let task = spawn_acquire(&limits, 0, "agent-1", ThrottleAction::Delay, LONG, &log);
    settle().await;
    assert_eq!(
        (logged(&log).len(), clock.pending_sleeps()),
        (0, 1),
        "waiting for capacity"
    );
    clock.advance(SECOND - Duration::from_millis(1));
    settle().await;
    assert!(logged(&log).is_empty());
    clock.advance(Duration::from_millis(1));
    settle().await;
    assert_eq!(logged(&log), [(0, true)]);
    assert!(task.await.is_ok_and(|v| v.is_allowed()));
}

#[tokio::test]
async fn delay_refuses_at_once_when_capacity_is_further_than_the_delay() {
    let (limits, _clock) = one_per_second(500, 64);
    let k = key("agent-1", "x.example.com");
    assert!(limits.check(&k).is_allowed());
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Delay, LONG)).await;
    assert_eq!(
        refused(verdict.expect("no point waiting 500 ms for 1 s")).retry_after,
        SECOND
    );
    // The request's own deadline caps the delay too.
    let (limits, _clock) = one_per_second(5000, 64);
    assert!(limits.check(&k).is_allowed());
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Delay, Duration::from_millis(200))).await;
    assert_eq!(refused(verdict.expect("past the request deadline")).scope, Scope::Agent);
}

#[tokio::test]
async fn queue_lets_requests_through_in_arrival_order_one_per_interval() {
    let (limits, clock) = one_per_second(100, 64);
    let log = Log::default();
    assert!(limits.check(&key("agent-1", "x.example.com")).is_allowed());
    let tasks: Vec<_> = {
        let mut tasks = Vec::new();
        for id in 0..5 {
            tasks.push(spawn_acquire(&limits, id, "agent-1", ThrottleAction::Queue, LONG, &log));
            settle().await;
        }
        tasks
    };
    assert_eq!((logged(&log).len(), waiting(&limits)), (0, 5));
    for admitted in 1..=5 {
        clock.advance(SECOND);
        settle().await;
        let expected: Vec<_> = (0..admitted).map(|id| (id, true)).collect();
        assert_eq!(logged(&log), expected, "after {admitted} s");
    }
    for task in tasks {
        assert!(task.await.is_ok_and(|v| v.is_allowed()));
    }
    assert_eq!(waiting(&limits), 0);
    assert_eq!(
        limits.state.queues.fifos[Scope::Agent.index()].len(),
        0,
        "empty lines are removed"
    );
}

#[tokio::test]
async fn a_newcomer_does_not_overtake_the_queue_when_capacity_frees() {
    let (limits, clock) = one_per_second(100, 64);
    let log = Log::default();
    let k = key("agent-1", "x.example.com");
    assert!(limits.check(&k).is_allowed());
    let first = spawn_acquire(&limits, 0, "agent-1", ThrottleAction::Queue, LONG, &log);
    settle().await;
    // Capacity is back, but the queued request has not run yet.
    clock.advance(SECOND);
    let mut newcomer = std::pin::pin!(limits.acquire(&k, ThrottleAction::Queue, LONG));
    assert_eq!(at_once(&mut newcomer).await, None, "the newcomer lines up behind");
    settle().await;
    assert_eq!(logged(&log), [(0, true)]);
    assert_eq!(at_once(&mut newcomer).await, None, "and waits for the next slot");
    clock.advance(SECOND);
    assert!(newcomer.await.is_allowed());
    assert!(first.await.is_ok_and(|v| v.is_allowed()));
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_the_real_retry_time() {
    let (limits, clock) = one_per_second(100, 3);
    let log = Log::default();
    let k = key("agent-1", "x.example.com");
    assert!(limits.check(&k).is_allowed());
    for id in 0..3 {
        spawn_acquire(&limits, id, "agent-1", ThrottleAction::Queue, LONG, &log);
        settle().await;
    }
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Queue, LONG)).await;
    let limited = refused(verdict.expect("a full line refuses at once"));
    assert_eq!((limited.scope, limited.retry_after), (Scope::Agent, SECOND));
    for _ in 0..3 {
        clock.advance(SECOND);
        settle().await;
    }
    assert_eq!(logged(&log), [(0, true), (1, true), (2, true)]);
}

#[tokio::test]
async fn queue_refuses_at_once_when_the_wait_would_pass_the_deadline() {
    let (limits, clock) = one_per_second(100, 64);
    let log = Log::default();
    let k = key("agent-1", "x.example.com");
    assert!(limits.check(&k).is_allowed());
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Queue, Duration::from_millis(500))).await;
    assert_eq!(refused(verdict.expect("1 s wait, 0.5 s left")).retry_after, SECOND);
    spawn_acquire(&limits, 0, "agent-1", ThrottleAction::Queue, LONG, &log);
    settle().await;
    // One ahead: this one would pass at 2 s.
    let tight = Duration::from_millis(1500);
    let verdict = at_once(limits.acquire(&k, ThrottleAction::Queue, tight)).await;
    assert!(verdict.is_some_and(|v| !v.is_allowed()));
    spawn_acquire(&limits, 1, "agent-1", ThrottleAction::Queue, 2 * SECOND, &log);
    settle().await;
    clock.advance(SECOND);
    settle().await;
    clock.advance(SECOND);
    settle().await;
    assert_eq!(logged(&log), [(0, true), (1, true)]);
    assert_eq!(waiting(&limits), 0);
}

#[tokio::test]
async fn a_request_that_waits_past_its_deadline_in_line_gets_a_429() {
    let (limits, clock) = one_per_second(100, 64);
    let slow = |agent| LimitKey {
        domain_rate: Some(rate("6/min")), // one every 10 s, burst 1
        ..key(agent, "slow.example.com")
    };
    assert!(limits.check(&slow("agent-0")).is_allowed());
    let head = {
        let limits = limits.clone();
        tokio::spawn(async move { limits.acquire(&slow("agent-h"), ThrottleAction::Queue, LONG).await })
    };
    settle().await;
    let behind = {
        let limits = limits.clone();
        tokio::spawn(async move {
            limits
                .acquire(&slow("agent-n"), ThrottleAction::Queue, Duration::from_secs(25))
                .await
        })
    };
    settle().await;
    // Twice a plain check takes the slot the head was waiting for, so the
    // head holds the line longer than the one behind it predicted.
    for _ in 0..2 {
        clock.advance(Duration::from_secs(10));
        assert!(limits.check(&slow("agent-rogue")).is_allowed());
        settle().await;
    }
    clock.advance(Duration::from_secs(5));
    settle().await;
    assert!(behind.is_finished());
    let limited = refused(behind.await.unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(
        (limited.scope, limited.retry_after),
        (Scope::Domain, Duration::from_secs(5))
    );
    assert!(!head.is_finished());
    clock.advance(Duration::from_secs(5));
    assert!(head.await.is_ok_and(|v| v.is_allowed()));
    assert_eq!(waiting(&limits), 0);
}

#[tokio::test]
async fn a_request_that_leaves_the_line_hands_on_its_place() {
    let (limits, clock) = one_per_second(100, 64);
    let log = Log::default();
    assert!(limits.check(&key("agent-1", "x.example.com")).is_allowed());
    let tasks: Vec<_> = {
        let mut tasks = Vec::new();
        for id in 0..3 {
            tasks.push(spawn_acquire(&limits, id, "agent-1", ThrottleAction::Queue, LONG, &log));
            settle().await;
        }
        tasks
    };
    tasks[1].abort();
    settle().await;
    assert_eq!(waiting(&limits), 2);
    clock.advance(SECOND);
    settle().await;
    clock.advance(SECOND);
    settle().await;
    assert_eq!(logged(&log), [(0, true), (2, true)]);
    assert_eq!(waiting(&limits), 0);
}

#[test]
fn acquire_can_run_on_a_multi_threaded_runtime() {
    fn assert_send<T: Send>(_: &T) {}
    let limits = Limits::new(&roomy());
    let k = key("agent-1", "x.example.com");
    let work = limits.acquire(&k, ThrottleAction::Queue, LONG);
    assert_send(&work);
}
