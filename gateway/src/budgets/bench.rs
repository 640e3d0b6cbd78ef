//! `clawgress bench-budgets`: replicas sharing one hot budget on a real
//! NATS, with blocks (leases) or a compare-and-set per request, counting
//! the store's writes and lost races. Each replica is a [`BudgetStore`]
//! with its own connection and id, as separate gateways are; each request
//! reserves, "waits for the provider", and settles to its usage, as the
//! proxy does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clawgress_nats::Replicas;
use clawgress_policies::model::BudgetsPolicy;

use super::{BudgetPlan, BudgetRefusal, BudgetStore, settle_usage};
use crate::identity::{AuthMethod, Identity};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub nats_url: String,
    pub replicas: usize,
    /// Requests in flight per replica.
    pub concurrency: usize,
    pub duration: Duration,
    /// How long the provider takes to answer.
    pub provider_latency: Duration,
    pub leases: bool,
    /// The budget's tokens (large: the bench measures contention, not refusals).
    pub budget_tokens: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub leases: bool,
    pub replicas: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub refused: u64,
    pub unavailable: u64,
    pub writes: u64,
    pub writes_per_sec: f64,
    pub conflicts: u64,
    pub conflicts_per_sec: f64,
    /// Tokens the counter shows spent at the end (after every block went back).
    pub spent_tokens: u64,
    /// Tokens the requests used.
    pub used_tokens: u64,
}

/// Each request reserves its estimate plus this output limit...
const MAX_TOKENS: u64 = 200;
/// ... and uses this many.
const USED: (u64, u64) = (60, 40);

pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    let yaml = format!(
        "rules:\n  - {{scope: agent, window: day, tokens: {}, mode: hard-stop}}\n",
        config.budget_tokens
    );
    let policy: BudgetsPolicy = serde_saphyr::from_str(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = BudgetPlan::new(&policy).ok_or_else(|| anyhow::anyhow!("no budget plan"))?;
    let identity = Arc::new(Identity {
        agent_id: Arc::from(format!("bench-{}", super::lease::replica_id())),
        team: Arc::from("bench"),
        project: Arc::from("bench"),
        environment: Arc::from("bench"),
        role: Arc::from("ai-agent"),
        method: AuthMethod::ApiKey,
        session_id: None,
    });
    let endpoint = clawgress_ai::detect("/v1/chat/completions").ok_or_else(|| anyhow::anyhow!("endpoint"))?;
    let mut ai = crate::inspect::ai::analyze(endpoint, br#"{"model":"gpt-4o","messages":[]}"#);
    ai.token_estimate = Some(50);
    ai.max_tokens = Some(MAX_TOKENS);
    let ai = Arc::new(ai);
    let mut stores = Vec::new();
    for _ in 0..config.replicas.max(1) {
        let store = BudgetStore::nats(&config.nats_url, Replicas::Auto);
        let store = if config.leases { store } else { store.without_leases() };
        store.connect().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        stores.push(Arc::new(store));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tenders = Vec::new();
    for store in &stores {
        tenders.push(tokio::spawn(store.clone().maintain(stopped.clone())));
    }
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let deadline = Instant::now() + config.duration;
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for store in &stores {
        for _ in 0..config.concurrency.max(1) {
            let (store, plan, identity, ai, counts) = (
                store.clone(),
                plan.clone(),
                identity.clone(),
                ai.clone(),
                counts.clone(),
            );
            let latency = config.provider_latency;
            tasks.spawn(async move {
                while Instant::now() < deadline {
                    match plan.reserve(&store, &identity, &ai, chrono::Utc::now()).await {
                        Ok(Some(reservation)) => {
                            tokio::time::sleep(latency).await;
                            settle_usage(&store, &reservation, USED.0, USED.1).await;
                            counts[0].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(BudgetRefusal::Exceeded(_)) => {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(latency).await;
                        }
                        Err(BudgetRefusal::Unavailable(_)) => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(latency).await;
                        }
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = began.elapsed().as_secs_f64();
    let writes: u64 = stores.iter().map(|s| s.stats.writes.load(Ordering::Relaxed)).sum();
    let conflicts: u64 = stores.iter().map(|s| s.stats.conflicts.load(Ordering::Relaxed)).sum();
    let _ = stop.send(true);
    for tender in tenders {
        let _ = tender.await;
    }
    for store in &stores {
        store.release().await;
    }
    let key = super::counter_key(
        &plan.rules[0],
        &identity.agent_id,
        super::window_bounds(clawgress_policies::model::BudgetWindow::Day, chrono::Utc::now()).0,
    );
    let spent_tokens = stores[0].read(&key).await.map(|c| c.tokens_spent).unwrap_or(0);
    let requests = counts[0].load(Ordering::Relaxed);
    Ok(BenchReport {
        leases: config.leases,
        replicas: stores.len(),
        concurrency: config.concurrency,
        seconds,
        requests,
        requests_per_sec: requests as f64 / seconds,
        refused: counts[1].load(Ordering::Relaxed),
        unavailable: counts[2].load(Ordering::Relaxed),
        writes,
        writes_per_sec: writes as f64 / seconds,
        conflicts,
        conflicts_per_sec: conflicts as f64 / seconds,
        spent_tokens,
        used_tokens: requests * (USED.0 + USED.1),
    })
}
