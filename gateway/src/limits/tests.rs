//! Limiter behaviour on a [`ManualClock`]: every number below follows from
//! the rates configured in the test, and no test sleeps.

mod concurrency;
mod throttle;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use clawgress_policies::model::{AgentLimit, RateLimits};
use clawgress_policies::values::Rate;
use http::HeaderMap;

use super::*;

pub(super) fn rate(text: &str) -> Rate {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

pub(super) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or_else(|| panic!("{n} is zero"))
}

/// 100/min with a burst of 20 per agent (the seed's defaults); every other
/// limiter is far out of reach unless a test tightens it.
pub(super) fn roomy() -> RateLimits {
    let mut limits = RateLimits {
        per_agent: AgentLimit {
            default: rate("100/min"),
            burst: nz(20),
        },
        ..RateLimits::default()
    };
    limits.per_project.default = rate("100000/s");
    limits.per_project.burst = nz(1_000_000);
    limits.per_domain.default = rate("100000/s");
    limits.global.default = rate("100000/s");
    limits.global.burst = nz(1_000_000);
    limits
}

pub(super) fn build(limits: &RateLimits, tuning: Tuning) -> (Limits, ManualClock) {
    let clock = ManualClock::new();
    (Limits::with_clock(limits, tuning, Arc::new(clock.clone())), clock)
}

pub(super) fn key<'a>(agent: &'a str, domain: &'a str) -> LimitKey<'a> {
    LimitKey {
        agent,
        project: "project",
        domain,
        domain_rate: None,
    }
}

pub(super) fn refused(verdict: LimitVerdict) -> RateLimited {
    match verdict {
        LimitVerdict::Limited(limited) => limited,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Checks until the first refusal; the passes before it.
pub(super) fn passes(limits: &Limits, key: &LimitKey<'_>) -> u32 {
    for n in 0..100_000 {
        if !limits.check(key).is_allowed() {
            return n;
        }
    }
    panic!("never refused");
}

const AGENT_INTERVAL: Duration = Duration::from_millis(600); // 100/min

#[test]
fn a_fresh_agent_gets_its_burst_then_is_refused() {
    let (limits, _clock) = build(&roomy(), Tuning::default());
    let k = key("agent-1", "api.example.com");
    for expected_remaining in (0..20).rev() {
        match limits.check(&k) {
            LimitVerdict::Allow { remaining, limit, .. } => {
                assert_eq!((remaining, limit), (expected_remaining, 100));
            }
            other => panic!("request within the burst refused: {other:?}"),
        }
    }
    let limited = refused(limits.check(&k));
    assert_eq!(
        (limited.scope, limited.limit, limited.window),
        (Scope::Agent, 100, "1m")
    );
    // Another agent is untouched.
    assert_eq!(passes(&limits, &key("agent-2", "api.example.com")), 20);
}

#[test]
fn retry_after_is_the_time_to_the_next_emission_not_the_window() {
    let (limits, clock) = build(&roomy(), Tuning::default());
    let k = key("agent-1", "api.example.com");
    assert_eq!(passes(&limits, &k), 20);
    assert_eq!(refused(limits.check(&k)).retry_after, AGENT_INTERVAL);
    clock.advance(Duration::from_millis(250));
    assert_eq!(refused(limits.check(&k)).retry_after, Duration::from_millis(350));
    clock.advance(Duration::from_millis(349));
    assert_eq!(refused(limits.check(&k)).retry_after, Duration::from_millis(1));
    clock.advance(Duration::from_millis(1));
    assert!(limits.check(&k).is_allowed(), "capacity is back exactly at retry_after");
    assert_eq!(refused(limits.check(&k)).retry_after, AGENT_INTERVAL);
}

#[test]
fn the_most_restrictive_failing_limiter_is_reported() {
    let mut config = roomy();
    config.per_agent = AgentLimit {
        default: rate("60/min"),
        burst: nz(1),
    };
    let (limits, clock) = build(&config, Tuning::default());
    let slow = LimitKey {
        domain_rate: Some(rate("6/min")), // one every 10 s, burst 1
        ..key("agent-1", "slow.example.com")
    };
    assert!(limits.check(&slow).is_allowed());
    // Both refuse: the domain's 10 s wins over the agent's 1 s.
    let limited = refused(limits.check(&slow));
    assert_eq!(
        (limited.scope, limited.limit, limited.window, limited.retry_after),
        (Scope::Domain, 6, "1m", Duration::from_secs(10))
    );
    // Later only the domain refuses; the agent, which would pass, lends
    // nothing to the answer.
    clock.advance(Duration::from_secs(4));
    let limited = refused(limits.check(&slow));
    assert_eq!(
        (limited.scope, limited.retry_after),
        (Scope::Domain, Duration::from_secs(6))
    );
    // On another domain only the agent counts: one pass, then it refuses
    // with its own time, not the domain's.
    let fast = key("agent-1", "fast.example.com");
    assert!(limits.check(&fast).is_allowed());
    let limited = refused(limits.check(&fast));
    assert_eq!(
        (limited.scope, limited.retry_after),
        (Scope::Agent, Duration::from_secs(1))
    );
}

#[test]
fn a_pass_describes_the_limiter_with_least_room() {
    let mut config = roomy();
    config.per_project.default = rate("1000/min");
    config.per_project.burst = nz(5);
    let (limits, _clock) = build(&config, Tuning::default());
    match limits.check(&key("agent-1", "a.example.com")) {
        LimitVerdict::Allow {
            remaining,
            limit,
            reset_after,
        } => assert_eq!((remaining, limit, reset_after), (4, 1000, Duration::from_millis(60))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refusal_by_the_agent_spends_nothing_of_the_project() {
    let mut config = roomy();
    config.per_project.default = rate("1/hour");
    config.per_project.burst = nz(25);
    let (limits, _clock) = build(&config, Tuning::default());
    assert_eq!(passes(&limits, &key("agent-a", "x.example.com")), 20);
    for _ in 0..10 {
        assert_eq!(
            refused(limits.check(&key("agent-a", "x.example.com"))).scope,
            Scope::Agent
        );
    }
    // 25 - 20: the ten refusals took nothing.
    assert_eq!(passes(&limits, &key("agent-b", "x.example.com")), 5);
    assert_eq!(
        refused(limits.check(&key("agent-b", "x.example.com"))).scope,
        Scope::Project
    );
}

#[test]
fn a_refusal_by_the_domain_spends_nothing_of_the_agent() {
    let (limits, _clock) = build(&roomy(), Tuning::default());
    let one_a_minute = LimitKey {
        domain_rate: Some(rate("1/min")),
        ..key("agent-a", "rare.example.com")
    };
    assert!(limits.check(&one_a_minute).is_allowed());
    for _ in 0..5 {
        assert_eq!(refused(limits.check(&one_a_minute)).scope, Scope::Domain);
    }
    let others = (0..30).map(|n| format!("d{n}.example.com")).collect::<Vec<_>>();
    let more = others
        .iter()
        .take_while(|domain| limits.check(&key("agent-a", domain)).is_allowed())
        .count();
    assert_eq!(more, 19, "20 burst - 1 pass; the 5 refusals took nothing");
}

#[test]
fn a_refusal_by_the_global_limiter_spends_nothing_of_the_agent() {
    let mut config = roomy();
    config.per_agent.default = rate("10/hour");
    let lifted_config = config.clone();
    config.global.default = rate("60/min");
    config.global.burst = nz(3);
    let (limits, clock) = build(&config, Tuning::default());
    assert_eq!(passes(&limits, &key("agent-a", "x.example.com")), 3);
    for _ in 0..5 {
        assert_eq!(
            refused(limits.check(&key("agent-a", "x.example.com"))).scope,
            Scope::Global
        );
    }
    // The global limiter recovers in 3 s, the agent's 3 passes take hours.
    // Lift the global limit over the same state: the agent still has 20 - 3.
    clock.advance(Duration::from_secs(3));
    let lifted = limits.reconfigured(&lifted_config);
    assert_eq!(passes(&lifted, &key("agent-a", "x.example.com")), 17);
}

#[test]
fn a_rule_rate_replaces_the_domain_default_for_that_request() {
    let mut config = roomy();
    config.per_domain.default = rate("60/min"); // burst 6
    let (limits, _clock) = build(&config, Tuning::default());
    assert_eq!(passes(&limits, &key("agent-a", "default.example.com")), 6);
    let ruled = LimitKey {
        domain_rate: Some(rate("10/s")), // burst 10
        ..key("agent-b", "ruled.example.com")
    };
    assert_eq!(passes(&limits, &ruled), 10);
    let limited = refused(limits.check(&ruled));
    assert_eq!((limited.limit, limited.window), (10, "1s"));
}

#[test]
fn domain_bursts_are_six_seconds_of_rate_within_one_window() {
    for (text, burst) in [
        ("200/min", 20),
        ("500/min", 50),
        ("5/min", 1),
        ("5/s", 5),
        ("1000/hour", 2),
        ("1/hour", 1),
    ] {
        assert_eq!(domain_burst(rate(text)).get(), burst, "{text}");
    }
}

#[test]
fn headers_round_seconds_up() {
    let limited = LimitVerdict::Limited(RateLimited {
        scope: Scope::Agent,
        limit: 100,
        window: "1m",
        retry_after: Duration::from_millis(350),
    });
    let mut headers = HeaderMap::new();
    headers.extend(limited.headers());
    let get = |headers: &HeaderMap, name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(get(&headers, "retry-after").as_deref(), Some("1"));
    assert_eq!(get(&headers, "ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(get(&headers, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(get(&headers, "ratelimit-reset").as_deref(), Some("1"));

    let allowed = LimitVerdict::Allow {
        remaining: 7,
        limit: 1000,
        reset_after: Duration::from_millis(12_001),
    };
    let mut headers = HeaderMap::new();
    headers.extend(allowed.headers());
    assert_eq!(get(&headers, "retry-after"), None);
    assert_eq!(get(&headers, "ratelimit-remaining").as_deref(), Some("7"));
    assert_eq!(get(&headers, "ratelimit-reset").as_deref(), Some("13"));
    assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    assert_eq!(ceil_secs(Duration::ZERO), 0);
}

#[test]
fn retain_recent_keeps_busy_keys_and_forgets_idle_ones_without_extra_capacity() {
    let (limits, clock) = build(&roomy(), Tuning::default());
    let k = key("agent-1", "api.example.com");
    assert_eq!(passes(&limits, &k), 20);
    limits.retain_recent();
    assert_eq!(limits.key_count(Scope::Agent), 1, "a busy key is kept");
    assert!(!limits.check(&k).is_allowed(), "and still limited");
    // Fully recovered: the key is idle, forgetting it gives nothing extra.
    clock.advance(AGENT_INTERVAL * 20);
    limits.retain_recent();
    assert_eq!(limits.key_count(Scope::Agent), 0);
    assert_eq!(limits.key_count(Scope::Domain), 0);
    assert_eq!(passes(&limits, &k), 20);
}

#[test]
fn a_key_evicted_by_the_cap_comes_back_with_at_most_its_burst() {
    let tuning = Tuning {
        max_keys: 2,
        shards: 1,
        ..Tuning::default()
    };
    let (limits, clock) = build(&roomy(), tuning);
    assert_eq!(passes(&limits, &key("agent-a", "x.example.com")), 20);
    clock.advance(Duration::from_millis(1));
    assert_eq!(passes(&limits, &key("agent-b", "x.example.com")), 20);
    // A third agent needs room: agent-a, the closest to idle, goes.
    assert!(limits.check(&key("agent-c", "x.example.com")).is_allowed());
    assert_eq!(limits.key_count(Scope::Agent), 2);
    assert_eq!(passes(&limits, &key("agent-a", "x.example.com")), 20);
    assert!(
        !limits.check(&key("agent-b", "x.example.com")).is_allowed(),
        "agent-b was kept"
    );
}

#[test]
fn many_keys_stay_within_the_cap() {
    let tuning = Tuning {
        max_keys: 1000,
        shards: 16,
        ..Tuning::default()
    };
    let (limits, clock) = build(&roomy(), tuning);
    for n in 0..20_000 {
        let agent = format!("agent-{n}");
        let domain = format!("d{n}.example.com");
        assert!(
            limits.check(&key(&agent, &domain)).is_allowed(),
            "a fresh key has its burst"
        );
        if n % 1000 == 0 {
            clock.advance(Duration::from_millis(1));
        }
    }
    for scope in [Scope::Agent, Scope::Domain] {
        let held = limits.key_count(scope);
        assert!(held <= 1000 && held > 0, "{scope}: {held}");
    }
    assert_eq!(limits.key_count(Scope::Project), 1);
}

#[test]
fn reload_with_new_limits_starts_fresh_and_reconfigured_keeps_state() {
    let (limits, _clock) = build(&roomy(), Tuning::default());
    let k = key("agent-1", "api.example.com");
    assert_eq!(passes(&limits, &k), 20);
    assert_eq!(passes(&limits.reconfigured(&roomy()), &k), 0);
    let mut bigger = roomy();
    bigger.per_agent.burst = nz(30);
    // The TAT is 20 intervals ahead; a burst of 30 leaves room for 10.
    assert_eq!(passes(&limits.reconfigured(&bigger), &k), 10);
    let fresh = Limits::new(&roomy());
    assert_eq!(passes(&fresh, &k), 20);
}

#[test]
fn intervals_round_up_so_the_rate_is_never_exceeded() {
    let gcra = gcra::Gcra::new(rate("7/hour"), nz(1));
    assert_eq!(gcra.interval(), (3_600_000_000_000u64).div_ceil(7));
    assert!(gcra.interval() * 7 >= 3_600_000_000_000);
}
