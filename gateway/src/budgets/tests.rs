use std::sync::Arc;

use chrono::{TimeZone, Utc};
use clawgress_policies::model::BudgetsPolicy;

use super::*;
use crate::inspect::ai::AiRecord;

fn plan(rules: &str) -> Arc<BudgetPlan> {
    let yaml = format!(
        "pricing:\n  gpt-4o: {{input_per_mtok: 2.5, output_per_mtok: 10}}\n  gpt-4o-mini: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}\nrules:\n{rules}"
    );
    let policy: BudgetsPolicy = serde_saphyr::from_str(&yaml).expect("budgets yaml");
    BudgetPlan::new(&policy).expect("a plan")
}

fn identity(agent: &str) -> Identity {
    Identity {
        agent_id: Arc::from(agent),
        team: Arc::from("team-a"),
        project: Arc::from("proj-a"),
        environment: Arc::from("dev"),
        role: Arc::from("ai-agent"),
        method: crate::identity::AuthMethod::ApiKey,
        session_id: None,
    }
}

fn ai(estimate: u64, max_tokens: u64) -> AiRecord {
    let endpoint = clawgress_ai::detect("/v1/chat/completions").unwrap();
    let mut record = crate::inspect::ai::analyze(endpoint, br#"{"model":"gpt-4o","messages":[]}"#);
    record.token_estimate = Some(estimate);
    record.max_tokens = Some(max_tokens);
    record
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 18, 30, 15).unwrap()
}

#[test]
fn windows_are_calendar_windows_in_utc() {
    let (start, end) = window_bounds(BudgetWindow::Minute, now());
    assert_eq!(
        (start.to_rfc3339(), end.to_rfc3339()),
        ("2026-11-23T18:30:00+00:00".into(), "2026-11-23T18:31:00+00:00".into())
    );
    let (start, end) = window_bounds(BudgetWindow::Day, now());
    assert_eq!(start.to_rfc3339(), "2026-11-23T00:00:00+00:00");
    assert_eq!(end.to_rfc3339(), "2026-11-24T00:00:00+00:00");
    let december = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
    let (start, end) = window_bounds(BudgetWindow::Month, december);
    assert_eq!(start.to_rfc3339(), "2026-12-01T00:00:00+00:00");
    assert_eq!(end.to_rfc3339(), "2027-01-01T00:00:00+00:00");
}

#[test]
fn the_longest_prefix_prices_a_model_and_unknown_models_pay_the_most() {
    let plan = plan("  - {scope: agent, window: day, tokens: 1000}\n");
    assert_eq!(plan.price(Some("gpt-4o-mini-2024-07-18")).unwrap().input_per_mtok, 0.15);
    assert_eq!(plan.price(Some("gpt-4o-2024-08-06")).unwrap().input_per_mtok, 2.5);
    assert_eq!(plan.price(Some("brand-new-model")).unwrap().output_per_mtok, 10.0);
}

#[tokio::test]
async fn hard_stop_refuses_what_would_go_past_and_settling_frees_the_rest() {
    let plan = plan("  - {scope: agent, window: day, tokens: 1000, mode: hard-stop}\n");
    let store = BudgetStore::memory();
    let me = identity("a1");
    // 400 reserved each: two fit, the third does not.
    let first = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    let second = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    let refused = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap_err();
    let BudgetRefusal::Exceeded(exceeded) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(exceeded.limit_tokens, Some(1000));
    assert_eq!(exceeded.reserved_tokens, 800);
    assert_eq!(exceeded.resets_at.to_rfc3339(), "2026-11-24T00:00:00+00:00");
    assert_eq!(exceeded.retry_after_secs, 5 * 3600 + 29 * 60 + 45);
    // The first used only 150: settled, the third now fits.
    settle_usage(&store, &first, 100, 50).await;
    let key = &first.budgets[0].key;
    let counter = store.read(key).await.unwrap();
    assert_eq!((counter.tokens_spent, counter.tokens_reserved), (150, 400));
    plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    // Unknown usage is charged in full.
    plan.settle(&store, second, None).await;
    assert_eq!(store.read(key).await.unwrap().tokens_spent, 550);
    // Another agent has its own budget.
    plan.reserve(&store, &identity("a2"), &ai(100, 300), now())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn soft_stop_and_alert_only_pass_and_say_so_throttle_spaces_requests() {
    let plan = plan(
        "  - {scope: team, window: hour, tokens: 500, mode: soft-stop}\n  - {scope: project, window: minute, cost_usd: 0.01, mode: throttle}\n",
    );
    let store = BudgetStore::memory();
    let me = identity("a1");
    let first = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    assert!(first.budgets.iter().all(|b| !b.over));
    // 400 more tokens: past the team's 500, passed by soft-stop, marked.
    let second = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    assert!(second.budgets.iter().any(|b| b.over && b.mode == BudgetMode::SoftStop));
    // Cost: 100 in + 300 out at gpt-4o prices is $0.00325; three fit in
    // $0.01, the fourth goes past it and gets throttle's one pass a minute,
    // the fifth is refused.
    let third = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    assert!(!third.budgets.iter().any(|b| b.over && b.mode == BudgetMode::Throttle));
    let fourth = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap().unwrap();
    assert!(
        fourth.budgets.iter().any(|b| b.over && b.mode == BudgetMode::Throttle),
        "{fourth:?}"
    );
    let refused = plan.reserve(&store, &me, &ai(100, 300), now()).await.unwrap_err();
    let BudgetRefusal::Exceeded(exceeded) = refused else {
        panic!()
    };
    assert_eq!(exceeded.mode, BudgetMode::Throttle);
    assert_eq!(exceeded.retry_after_secs, 60);
    // The refused request released what it reserved under the team rule.
    let team_key = &first.budgets[0].key;
    assert_eq!(store.read(team_key).await.unwrap().tokens_reserved, 1600);
}

#[tokio::test]
async fn concurrent_reservations_never_overspend() {
    let plan = plan("  - {scope: agent, window: day, tokens: 10000}\n");
    let store = Arc::new(BudgetStore::memory());
    let me = Arc::new(identity("a1"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (plan, store, me) = (plan.clone(), store.clone(), me.clone());
        tasks.spawn(async move { plan.reserve(&store, &me, &ai(70, 100), now()).await.is_ok() });
    }
    let mut admitted = 0;
    while let Some(ok) = tasks.join_next().await {
        admitted += usize::from(ok.unwrap());
    }
    assert_eq!(admitted, 10000 / 170);
}

mod leases {
    use super::*;
    use crate::budgets::lease::{self, Need, write_block};
    use crate::budgets::store::{Counter, Lease};

    const T: i64 = 1_000_000;

    fn need(tokens: u64, limit: u64) -> Need {
        Need {
            tokens,
            micros: 0,
            limit_tokens: Some(limit),
            limit_micros: None,
        }
    }

    #[test]
    fn a_block_is_sixteen_requests_or_an_eighth_of_what_is_free_never_less_than_asked() {
        let mut counter = Counter::default();
        let written = write_block(
            &mut counter,
            "a",
            (0, 0),
            (0, 0),
            (0, 0),
            Some(&need(100, 1_000_000)),
            true,
            T,
        );
        assert!(written.granted);
        assert_eq!(written.lease.tokens, 1600, "16 requests' worth");
        // Near the end: an eighth of what is free...
        let mut counter = Counter {
            tokens_spent: 990_000,
            ..Default::default()
        };
        let written = write_block(
            &mut counter,
            "a",
            (0, 0),
            (0, 0),
            (0, 0),
            Some(&need(100, 1_000_000)),
            true,
            T,
        );
        assert_eq!(written.lease.tokens, 1250);
        // ...and at the very end exactly the request, then nothing.
        let mut counter = Counter {
            tokens_spent: 999_850,
            ..Default::default()
        };
        let written = write_block(
            &mut counter,
            "a",
            (0, 0),
            (0, 0),
            (0, 0),
            Some(&need(100, 1_000_000)),
            true,
            T,
        );
        assert_eq!(written.lease.tokens, 100);
        let written = write_block(
            &mut counter,
            "b",
            (0, 0),
            (0, 0),
            (0, 0),
            Some(&need(100, 1_000_000)),
            true,
            T,
        );
        assert!(!written.granted, "50 left, 100 asked");
        assert_eq!(counter.tokens_committed(), 999_950);
        // A replica's own block counts against what it may grow into.
        let mut counter = Counter::default();
        write_block(
            &mut counter,
            "a",
            (0, 0),
            (0, 0),
            (0, 0),
            Some(&need(400, 1000)),
            true,
            T,
        );
        let written = write_block(
            &mut counter,
            "a",
            (400, 0),
            (400, 0),
            (0, 0),
            Some(&need(400, 1000)),
            true,
            T,
        );
        assert!(written.granted);
        let written = write_block(
            &mut counter,
            "a",
            (800, 0),
            (800, 0),
            (0, 0),
            Some(&need(400, 1000)),
            true,
            T,
        );
        assert!(!written.granted, "800 of 1000 held and in flight: no room for 400 more");
        assert_eq!(counter.tokens_committed(), 800);
    }

    #[test]
    fn usage_is_written_back_out_of_the_block_and_an_expired_block_is_charged_in_full() {
        let mut counter = Counter::default();
        counter.leases.insert(
            "a".into(),
            Lease {
                tokens: 1000,
                micros: 0,
                until_ms: T + 5000,
            },
        );
        counter.leases.insert(
            "dead".into(),
            Lease {
                tokens: 700,
                micros: 0,
                until_ms: T - 1,
            },
        );
        // a used 300 of its block; 200 more are in flight.
        let written = write_block(&mut counter, "a", (1000, 0), (200, 0), (300, 0), None, true, T);
        assert!(!written.lost && written.granted);
        assert_eq!(written.lease.tokens, 700);
        assert_eq!(counter.tokens_spent, 300 + 700, "a's usage, and dead's whole block");
        assert!(!counter.leases.contains_key("dead"));
        // Given back: the rest of the block is free again.
        write_block(&mut counter, "a", (700, 0), (0, 0), (100, 0), None, false, T);
        assert!(counter.leases.is_empty());
        assert_eq!(counter.tokens_committed(), 1100);
        // A replica whose block expired learns it lost it.
        let written = write_block(&mut counter, "a", (700, 0), (0, 0), (50, 0), None, true, T);
        assert!(written.lost);
        assert_eq!(counter.tokens_spent, 1100, "its usage was in the charge");
    }

    /// Four replicas on one store, two hundred requests at once: nothing is
    /// admitted that was not in someone's block, and (blocks given back)
    /// nearly the whole budget is usable.
    #[tokio::test]
    async fn replicas_with_blocks_never_overspend_and_give_back_what_they_do_not_use() {
        const LIMIT: u64 = 10_000;
        let plan = plan(&format!(
            "  - {{scope: agent, window: day, tokens: {LIMIT}, mode: hard-stop}}\n"
        ));
        let first = Arc::new(BudgetStore::memory().with_leases("r0"));
        // The other three share the first one's counters, with blocks of their own.
        let replicas: Vec<Arc<BudgetStore>> = std::iter::once(first.clone())
            .chain((1..4).map(|i| Arc::new(first.another_replica(&format!("r{i}")))))
            .collect();
        let me = Arc::new(identity("a1"));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (plan, store, me) = (plan.clone(), replicas[i % 4].clone(), me.clone());
            tasks.spawn(async move {
                let reservation = plan.reserve(&store, &me, &ai(70, 100), now()).await.ok()??;
                tokio::task::yield_now().await;
                settle_usage(&store, &reservation, 70, 30).await;
                Some(())
            });
        }
        let mut admitted = 0u64;
        while let Some(done) = tasks.join_next().await {
            admitted += u64::from(done.unwrap().is_some());
        }
        assert!(admitted * 170 <= LIMIT, "{admitted} admitted at 170 each");
        for store in &replicas {
            store.release().await;
        }
        let key = counter_key(&plan.rules[0], "a1", window_bounds(BudgetWindow::Day, now()).0);
        let counter = replicas[0].read(&key).await.unwrap();
        assert!(counter.leases.is_empty(), "{counter:?}");
        assert_eq!(counter.tokens_spent, admitted * 100, "each used 100");
        // One at a time, the rest of the budget is usable: it is refused
        // only when less than one reservation is left.
        let mut more = 0;
        while plan
            .reserve(&replicas[more % 4], &me, &ai(70, 100), now())
            .await
            .is_ok()
        {
            more += 1;
        }
        for store in &replicas {
            store.release().await;
        }
        let counter = replicas[0].read(&key).await.unwrap();
        assert!(counter.tokens_committed() <= LIMIT);
        assert!(
            LIMIT - counter.tokens_committed() < 170 * 4,
            "{counter:?} after {more} more"
        );
        let _ = lease::TICK;
    }
}
