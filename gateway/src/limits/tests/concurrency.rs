//! Many threads, one set of limiters: never more than the GCRA allows, and
//! refusals spend nothing even when checks race.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

fn hammer(limits: &Limits, agents: &[String], rounds: usize) -> Vec<usize> {
    let admitted: Vec<AtomicUsize> = agents.iter().map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|scope| {
        for (agent, count) in agents.iter().zip(&admitted) {
            scope.spawn(move || {
                for _ in 0..rounds {
                    if limits.check(&key(agent, "x.example.com")).is_allowed() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn threads_on_one_agent_share_exactly_one_burst() {
    let (limits, _clock) = build(&roomy(), Tuning::default());
    let agents = vec!["agent-1".to_owned(); 4];
    let admitted: usize = hammer(&limits, &agents, 2000).into_iter().sum();
    assert_eq!(admitted, 20);
}

#[test]
fn racing_refusals_spend_nothing_in_other_limiters() {
    let mut config = roomy();
    config.per_agent.default = rate("10/hour");
    let lifted_config = config.clone();
    config.per_project.default = rate("60/min");
    config.per_project.burst = nz(50);
    let (limits, clock) = build(&config, Tuning::default());
    let agents: Vec<String> = (0..8).map(|n| format!("agent-{n}")).collect();
    let admitted = hammer(&limits, &agents, 200);
    assert_eq!(admitted.iter().sum::<usize>(), 50, "exactly the project's burst");
    // Once the project has recovered (50 s; the agents need hours), lift its
    // limit over the same state: each agent has exactly what its own passes
    // left, however many of its checks the project refused.
    clock.advance(Duration::from_secs(50));
    let lifted = limits.reconfigured(&lifted_config);
    for (agent, used) in agents.iter().zip(&admitted) {
        assert!(*used <= 20, "{agent}: {used}");
        let left = passes(&lifted, &key(agent, "x.example.com"));
        assert_eq!(left as usize, 20 - used, "{agent}");
    }
}

/// Threads check while another moves the clock; whatever the interleaving,
/// admissions stay within burst + rate × elapsed.
fn admitted_while_time_moves(limits: &Limits, clock: &ManualClock, agents: &[String]) -> (usize, Duration) {
    let admitted = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let start = clock.now();
    std::thread::scope(|scope| {
        for agent in agents {
            let (admitted, done) = (&admitted, &done);
            scope.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    if limits.check(&key(agent, "x.example.com")).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for _ in 0..2000 {
            clock.advance(Duration::from_millis(1));
            std::thread::yield_now();
        }
        done.store(true, Ordering::Release);
    });
    (admitted.into_inner(), clock.now() - start)
}

#[test]
fn one_agent_never_exceeds_burst_plus_rate_times_elapsed() {
    let mut config = roomy();
    config.per_agent.default = rate("100/s");
    let (limits, clock) = build(&config, Tuning::default());
    let (admitted, elapsed) = admitted_while_time_moves(&limits, &clock, &vec!["agent-1".to_owned(); 3]);
    let bound = 20 + (elapsed.as_millis() / 10) as usize;
    assert!(admitted <= bound, "{admitted} > {bound}");
}

#[test]
fn the_global_limiter_never_exceeds_burst_plus_rate_times_elapsed() {
    let mut config = roomy();
    config.global.default = rate("100/s");
    config.global.burst = nz(20);
    let (limits, clock) = build(&config, Tuning::default());
    let agents: Vec<String> = (0..3).map(|n| format!("agent-{n}")).collect();
    let (admitted, elapsed) = admitted_while_time_moves(&limits, &clock, &agents);
    let bound = 20 + (elapsed.as_millis() / 10) as usize;
    assert!(admitted <= bound, "{admitted} > {bound}");
}

#[test]
fn a_hundred_thousand_checks_keep_every_agent_within_its_rate() {
    let (limits, clock) = build(&roomy(), Tuning::default());
    let agents: Vec<String> = (0..100).map(|n| format!("agent-{n}")).collect();
    let mut admitted = vec![0u32; agents.len()];
    let step = Duration::from_millis(1);
    for n in 0..100_000 {
        let slot = n % agents.len();
        if let LimitVerdict::Allow { remaining, .. } = limits.check(&key(&agents[slot], "x.example.com")) {
            assert!(remaining < 20);
            admitted[slot] += 1;
        }
        clock.advance(step);
    }
    // Each agent asks every 100 ms for ~100 s: more than its rate, so it
    // gets at least the rate and at most burst + rate over the span.
    let span = step * (100_000 - agents.len() as u32);
    let at_rate = (span.as_millis() / AGENT_INTERVAL.as_millis()) as u32;
    for (agent, got) in agents.iter().zip(&admitted) {
        assert!(
            (at_rate..=20 + at_rate).contains(got),
            "{agent}: {got} not in {at_rate}..={}",
            20 + at_rate
        );
    }
}
