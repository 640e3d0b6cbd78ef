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
