use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use clawgress_policies::located::Located;
use clawgress_policies::model::CircuitBreaker;
use clawgress_policies::values::{DurationSpec, Percent};

use super::machine::HALF_OPEN_RETRY_AFTER;
use super::*;

const API: &str = "api.example.com";
const WAIT: Duration = Duration::from_secs(30);

/// The seed's defaults: 50% over 60 s once 10 seen, 30 s wait, 3 probes, 2 to close.
fn seed_breakers() -> (Breakers, Arc<ManualClock>) {
    breakers_with(&CircuitBreaker::default())
}

fn breakers_with(cfg: &CircuitBreaker) -> (Breakers, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (Breakers::with_clock(cfg, clock.clone()), clock)
}

fn succeed(breakers: &Breakers, domain: &str, times: usize) {
    for _ in 0..times {
        breakers.admit(domain).expect("admitted").success();
    }
}

fn fail(breakers: &Breakers, domain: &str, times: usize) {
    for _ in 0..times {
        breakers.admit(domain).expect("admitted").failure();
    }
}

/// Opens `domain`'s breaker and waits out the open period.
fn half_open(breakers: &Breakers, clock: &ManualClock, domain: &str) {
    fail(breakers, domain, 10);
    assert_eq!(breakers.state(domain), Some(BreakerState::Open));
    clock.advance(WAIT);
    assert_eq!(breakers.state(domain), Some(BreakerState::HalfOpen));
}

fn refusal(breakers: &Breakers, domain: &str) -> BreakerOpen {
    breakers.admit(domain).expect_err("refused fast")
}

#[test]
fn stays_closed_below_min_requests_even_when_everything_fails() {
    let (breakers, _clock) = seed_breakers();
    fail(&breakers, API, 9);
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
    breakers.admit(API).expect("still admitted").success();
}

#[test]
fn opens_at_exactly_the_failure_rate_once_min_requests_were_seen() {
    let (breakers, _clock) = seed_breakers();
    succeed(&breakers, API, 5);
    fail(&breakers, API, 4);
    assert_eq!(
        breakers.state(API),
        Some(BreakerState::Closed),
        "9 outcomes are below min_requests"
    );
    fail(&breakers, API, 1);
    assert_eq!(breakers.state(API), Some(BreakerState::Open), "5 of 10 is exactly 50%");
    assert_eq!(refusal(&breakers, API).state, BreakerState::Open);
}

#[test]
fn stays_closed_just_below_the_failure_rate() {
    let (breakers, _clock) = seed_breakers();
    succeed(&breakers, API, 6);
    fail(&breakers, API, 4);
    succeed(&breakers, API, 10);
    assert_eq!(breakers.state(API), Some(BreakerState::Closed), "4 of 10, then 4 of 20");
}

#[test]
fn the_success_that_reaches_min_requests_can_open_it() {
    let (breakers, _clock) = seed_breakers();
    fail(&breakers, API, 9);
    succeed(&breakers, API, 1);
    assert_eq!(breakers.state(API), Some(BreakerState::Open), "9 of 10 failed");
}

#[test]
fn outcomes_older_than_the_window_no_longer_count() {
    let (breakers, clock) = seed_breakers();
    fail(&breakers, API, 9);
    clock.advance(Duration::from_secs(60));
    fail(&breakers, API, 1);
    assert_eq!(
        breakers.state(API),
        Some(BreakerState::Closed),
        "the 9 aged out, 1 is below min"
    );
    fail(&breakers, API, 8);
    assert_eq!(breakers.state(API), Some(BreakerState::Closed), "9 in the window");
    fail(&breakers, API, 1);
    assert_eq!(breakers.state(API), Some(BreakerState::Open));
}

#[test]
fn outcomes_inside_the_window_still_count() {
    let (breakers, clock) = seed_breakers();
    fail(&breakers, API, 9);
    // The last bucket that still overlaps the window of a failure at 0 s.
    clock.advance(Duration::from_secs(54));
    fail(&breakers, API, 1);
    assert_eq!(breakers.state(API), Some(BreakerState::Open));
}

#[test]
fn open_fails_fast_with_a_retry_after_that_counts_down() {
    let (breakers, clock) = seed_breakers();
    fail(&breakers, API, 10);
    assert_eq!(
        refusal(&breakers, API),
        BreakerOpen {
            retry_after: WAIT,
            state: BreakerState::Open
        }
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(refusal(&breakers, API).retry_after, Duration::from_secs(20));
    clock.advance(Duration::from_millis(19_500));
    assert_eq!(refusal(&breakers, API).retry_after, Duration::from_millis(500));
    clock.advance(Duration::from_millis(500));
    assert_eq!(breakers.state(API), Some(BreakerState::HalfOpen));
    breakers.admit(API).expect("the first probe").success();
}

#[test]
fn half_open_admits_exactly_probe_count_probes() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    let probes: Vec<Ticket> = (0..3).map(|_| breakers.admit(API).expect("probe")).collect();
    assert_eq!(
        refusal(&breakers, API),
        BreakerOpen {
            retry_after: HALF_OPEN_RETRY_AFTER,
            state: BreakerState::HalfOpen
        }
    );
    drop(probes);
}

#[test]
fn two_probe_successes_close_it_with_fresh_counts() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    let first = breakers.admit(API).expect("probe");
    let second = breakers.admit(API).expect("probe");
    first.success();
    assert_eq!(
        breakers.state(API),
        Some(BreakerState::HalfOpen),
        "one success is not enough"
    );
    second.success();
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
    // The 10 failures that opened it are forgotten, though still inside 60 s.
    fail(&breakers, API, 9);
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
}

#[test]
fn a_successful_probe_keeps_its_slot() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    breakers.admit(API).expect("probe").success();
    let _second = breakers.admit(API).expect("probe");
    let _third = breakers.admit(API).expect("probe");
    assert_eq!(
        refusal(&breakers, API).state,
        BreakerState::HalfOpen,
        "3 probes in this phase"
    );
}

#[test]
fn a_probe_failure_reopens_it_for_a_new_wait() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    let failing = breakers.admit(API).expect("probe");
    let late_a = breakers.admit(API).expect("probe");
    let late_b = breakers.admit(API).expect("probe");
    clock.advance(Duration::from_secs(5));
    failing.failure();
    assert_eq!(
        refusal(&breakers, API),
        BreakerOpen {
            retry_after: WAIT,
            state: BreakerState::Open
        }
    );
    // Probes of the failed round report late; they must not close the breaker.
    late_a.success();
    late_b.success();
    assert_eq!(breakers.state(API), Some(BreakerState::Open));
    clock.advance(WAIT);
    assert_eq!(breakers.state(API), Some(BreakerState::HalfOpen));
}

#[test]
fn a_cancelled_probe_gives_its_slot_back() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    let probes: Vec<Ticket> = (0..3).map(|_| breakers.admit(API).expect("probe")).collect();
    assert!(breakers.admit(API).is_err());
    let mut probes = probes.into_iter();
    drop(probes.next());
    let replacement = breakers.admit(API).expect("the cancelled probe's slot");
    replacement.success();
    probes.next().expect("probe").success();
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
}

#[test]
fn a_request_admitted_while_closed_does_not_count_as_a_probe() {
    let (breakers, clock) = seed_breakers();
    let slow_a = breakers.admit(API).expect("admitted while closed");
    let slow_b = breakers.admit(API).expect("admitted while closed");
    half_open(&breakers, &clock, API);
    slow_a.success();
    slow_b.success();
    assert_eq!(breakers.state(API), Some(BreakerState::HalfOpen));
    let probes: Vec<Ticket> = (0..3)
        .map(|_| breakers.admit(API).expect("all 3 slots are free"))
        .collect();
    drop(probes);
}

#[test]
fn cancelled_requests_count_as_neither_outcome() {
    let (breakers, _clock) = seed_breakers();
    fail(&breakers, API, 9);
    for _ in 0..20 {
        drop(breakers.admit(API).expect("admitted"));
    }
    assert_eq!(breakers.state(API), Some(BreakerState::Closed), "still 9 outcomes");
}

#[test]
fn each_domain_has_its_own_breaker() {
    let (breakers, _clock) = seed_breakers();
    fail(&breakers, "down.example", 10);
    succeed(&breakers, "up.example", 3);
    assert_eq!(refusal(&breakers, "down.example").state, BreakerState::Open);
    breakers.admit("up.example").expect("unaffected").success();
    assert_eq!(
        breakers.states(),
        vec![
            ("down.example".to_string(), BreakerState::Open),
            ("up.example".to_string(), BreakerState::Closed),
        ]
    );
}

#[test]
fn spellings_of_one_host_share_a_breaker() {
    let (breakers, _clock) = seed_breakers();
    fail(&breakers, "API.Example.com", 5);
    fail(&breakers, "api.example.com.", 5);
    assert_eq!(refusal(&breakers, API).state, BreakerState::Open);
    assert_eq!(breakers.tracked(), 1);
}

#[test]
fn per_domain_false_shares_one_breaker() {
    let cfg = CircuitBreaker {
        per_domain: false,
        ..CircuitBreaker::default()
    };
    let (breakers, _clock) = breakers_with(&cfg);
    fail(&breakers, "a.example", 5);
    fail(&breakers, "b.example", 5);
    assert_eq!(refusal(&breakers, "c.example").state, BreakerState::Open);
    assert_eq!(breakers.states(), vec![(ALL_DOMAINS.to_string(), BreakerState::Open)]);
}

#[test]
fn thresholds_come_from_the_policy() {
    let mut cfg = CircuitBreaker::default();
    cfg.thresholds.failure_rate = Percent::new(20.0);
    cfg.thresholds.min_requests = 5;
    cfg.thresholds.window = DurationSpec::from_secs(10);
    cfg.recovery.wait_time = DurationSpec::from_secs(2);
    cfg.recovery.probe_count = 1;
    cfg.recovery.success_threshold = Located::unlocated(1);
    let (breakers, clock) = breakers_with(&cfg);
    fail(&breakers, API, 3);
    clock.advance(Duration::from_secs(10));
    succeed(&breakers, API, 4);
    fail(&breakers, API, 1);
    assert_eq!(
        refusal(&breakers, API).retry_after,
        Duration::from_secs(2),
        "1 of 5 is 20%"
    );
    clock.advance(Duration::from_secs(2));
    let probe = breakers.admit(API).expect("the one probe");
    assert!(breakers.admit(API).is_err());
    probe.success();
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
}

#[test]
fn a_zero_failure_rate_needs_at_least_one_failure() {
    let mut cfg = CircuitBreaker::default();
    cfg.thresholds.failure_rate = Percent::new(0.0);
    let (breakers, _clock) = breakers_with(&cfg);
    succeed(&breakers, API, 50);
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
    fail(&breakers, API, 1);
    assert_eq!(breakers.state(API), Some(BreakerState::Open));
}

#[test]
fn a_zero_probe_count_still_lets_one_probe_through() {
    let mut cfg = CircuitBreaker::default();
    cfg.recovery.probe_count = 0;
    cfg.recovery.success_threshold = Located::unlocated(0);
    let (breakers, clock) = breakers_with(&cfg);
    half_open(&breakers, &clock, API);
    breakers.admit(API).expect("one probe").success();
    assert_eq!(breakers.state(API), Some(BreakerState::Closed));
}

#[test]
fn failure_statuses_default_to_the_gateway_errors_and_follow_the_policy() {
    let (breakers, _clock) = seed_breakers();
    for status in [502, 503, 504] {
        assert!(breakers.is_failure_status(status), "{status}");
    }
    for status in [200, 404, 429, 500] {
        assert!(!breakers.is_failure_status(status), "{status}");
    }
    let cfg = CircuitBreaker {
        failure_status_codes: vec![Located::unlocated(500)],
        ..CircuitBreaker::default()
    };
    let (custom, _clock) = breakers_with(&cfg);
    assert!(custom.is_failure_status(500));
    assert!(!custom.is_failure_status(503));
}

#[test]
fn state_names_and_gauge_values() {
    let all = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];
    assert_eq!(all.map(BreakerState::as_str), ["closed", "open", "half_open"]);
    assert_eq!(all.map(BreakerState::gauge_value), [0, 1, 2]);
    assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
}

#[test]
fn the_cap_evicts_idle_closed_breakers_but_never_open_ones() {
    let (breakers, clock) = seed_breakers();
    let breakers = breakers.with_max_domains(4);
    fail(&breakers, "open.example", 10);
    succeed(&breakers, "oldest.example", 1);
    clock.advance(Duration::from_secs(120));
    succeed(&breakers, "older.example", 1);
    clock.advance(Duration::from_secs(120));
    succeed(&breakers, "recent.example", 1);
    assert_eq!(breakers.tracked(), 4);

    succeed(&breakers, "new.example", 1);
    assert!(breakers.tracked() <= 4);
    let kept: Vec<String> = breakers.states().into_iter().map(|(domain, _)| domain).collect();
    assert!(kept.contains(&"open.example".to_string()), "{kept:?}");
    assert!(kept.contains(&"new.example".to_string()), "{kept:?}");
    assert!(
        kept.contains(&"recent.example".to_string()),
        "most recent outcome kept: {kept:?}"
    );
    assert!(
        !kept.contains(&"oldest.example".to_string()),
        "least recently used goes first: {kept:?}"
    );
    // The open breaker is at least half-open by now, and was never forgotten.
    assert_eq!(breakers.state("open.example"), Some(BreakerState::HalfOpen));
}

#[test]
fn a_breaker_with_requests_in_flight_is_not_evicted() {
    let (breakers, _clock) = seed_breakers();
    let breakers = breakers.with_max_domains(2);
    let in_flight = breakers.admit("slow.example").expect("admitted");
    fail(&breakers, "open.example", 10);
    // Nothing can be evicted: the newcomer passes untracked.
    breakers.admit("third.example").expect("passes untracked").failure();
    assert_eq!(breakers.tracked(), 2);
    assert_eq!(breakers.state("third.example"), None);
    assert_eq!(breakers.state("slow.example"), Some(BreakerState::Closed));
    in_flight.success();
    breakers.admit("third.example").expect("admitted").success();
    assert_eq!(breakers.state("third.example"), Some(BreakerState::Closed));
    assert_eq!(breakers.state("slow.example"), None, "evicted once idle");
    assert_eq!(breakers.state("open.example"), Some(BreakerState::Open));
}

#[test]
fn concurrent_probes_never_exceed_the_probe_count() {
    let (breakers, clock) = seed_breakers();
    half_open(&breakers, &clock, API);
    let breakers = Arc::new(breakers);
    let current = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (breakers, current, most, admitted) =
                (breakers.clone(), current.clone(), most.clone(), admitted.clone());
            thread::spawn(move || {
                for _ in 0..2_000 {
                    if let Ok(probe) = breakers.admit(API) {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        // Counted strictly inside the ticket's lifetime, so
                        // the count can only under-report what is in flight.
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        current.fetch_sub(1, Ordering::SeqCst);
                        drop(probe);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("no panic");
    }
    assert!(admitted.load(Ordering::SeqCst) > 3, "cancelled probes free their slots");
    assert!(most.load(Ordering::SeqCst) <= 3, "at most 3 probes at once");
    // No slot leaked: exactly 3 probes fit again.
    let probes: Vec<Ticket> = (0..3).map(|_| breakers.admit(API).expect("probe")).collect();
    assert!(breakers.admit(API).is_err());
    drop(probes);
}

#[test]
fn concurrent_use_across_domains_and_the_cap_is_consistent() {
    let (breakers, clock) = seed_breakers();
    let breakers = Arc::new(breakers.with_max_domains(5));
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let (breakers, clock) = (breakers.clone(), clock.clone());
            thread::spawn(move || {
                let mut seed = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..5_000 {
                    // xorshift: a cheap, deterministic spread of domains and outcomes.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let domain = format!("d{}.example", seed % 12);
                    if let Ok(ticket) = breakers.admit(&domain) {
                        match seed % 3 {
                            0 => ticket.failure(),
                            1 => ticket.success(),
                            _ => drop(ticket),
                        }
                    }
                    if seed % 97 == 0 {
                        clock.advance(Duration::from_secs(1));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("no panic");
    }
    assert!(breakers.tracked() <= 5);
    assert_eq!(breakers.states().len(), breakers.tracked());
    // Nothing is in flight any more: a half-open breaker has fewer than 2
    // successes, so at least 2 of its 3 slots must be free (none leaked).
    for (domain, state) in breakers.states() {
        if state == BreakerState::HalfOpen {
            let probes: Vec<Ticket> = (0..2).map(|_| breakers.admit(&domain).expect("probe")).collect();
            drop(probes);
        }
    }
}
