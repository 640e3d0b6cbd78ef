//! What budgets have spent so far: per rule and per scope id (agent, team,
//! project), in the current window, against the limit. Read by the control
//! API (`GET /v1/quotas`) and exported as metrics with bounded labels:
//! the rule and its scope, never the id (the ids are as many as the
//! agents; their values are in the API's answer).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clawgress_policies::model::{BudgetMode, BudgetScope};
use prometheus::{GaugeVec, Opts};
use serde::Serialize;
use tokio::sync::watch;

use super::{BudgetPlan, BudgetStore, counter_key, from_micros, window_bounds};
use crate::Gateway;
use crate::identity::IdentityResolver;

/// How often the spend metrics are refreshed.
const EXPORT_EVERY: Duration = Duration::from_secs(30);

/// One budget's spend for one id.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// `budgets.rules[N]`.
    pub policy_id: String,
    pub scope: &'static str,
    pub id: String,
    pub window: &'static str,
    pub mode: BudgetMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_cost_usd: Option<f64>,
    pub spent_tokens: u64,
    pub spent_cost_usd: f64,
    /// Reserved by requests in flight.
    pub reserved_tokens: u64,
    /// The larger of tokens and cost spent over their limits (1.0: used up).
    pub used_ratio: f64,
    pub resets_at: DateTime<Utc>,
    /// The counter could not be read (the budget store is unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BudgetPlan {
    /// The spend of every rule for every id it covers: the id it names, or
    /// (for `each`) every id of its scope among the agents in `identities`.
    pub async fn usage(&self, store: &BudgetStore, identities: &IdentityResolver, now: DateTime<Utc>) -> Vec<Usage> {
        let mut out = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let ids: BTreeSet<String> = match rule.id.as_deref() {
                Some(id) if id != "*" => std::iter::once(id.to_string()).collect(),
                _ => identities
                    .identities()
                    .map(|identity| match rule.scope {
                        BudgetScope::Agent => identity.agent_id.to_string(),
                        BudgetScope::Team => identity.team.to_string(),
                        BudgetScope::Project => identity.project.to_string(),
                    })
                    .collect(),
            };
            let (start, end) = window_bounds(rule.window.value, now);
            let limit_tokens = rule.tokens.as_ref().map(|t| t.value);
            let limit_cost_usd = rule.cost_usd.as_ref().map(|c| c.value);
            for id in ids {
                let read = store.read(&counter_key(rule, &id, start)).await;
                let (counter, error) = match read {
                    Ok(counter) => (counter, None),
                    Err(error) => (Default::default(), Some(error.to_string())),
                };
                let spent_cost_usd = from_micros(counter.micros_spent);
                let ratio = |spent: f64, limit: Option<f64>| limit.filter(|l| *l > 0.0).map_or(0.0, |l| spent / l);
                out.push(Usage {
                    policy_id: format!("budgets.rules[{index}]"),
                    scope: rule.scope.as_str(),
                    id,
                    window: rule.window.value.as_str(),
                    mode: rule.mode,
                    limit_tokens,
                    limit_cost_usd,
                    spent_tokens: counter.tokens_spent,
                    spent_cost_usd,
                    reserved_tokens: counter.tokens_reserved,
                    used_ratio: ratio(counter.tokens_spent as f64, limit_tokens.map(|l| l as f64))
                        .max(ratio(spent_cost_usd, limit_cost_usd)),
                    resets_at: end,
                    error,
                });
            }
        }
        out
    }
}

/// The spend gauges, refreshed every [`EXPORT_EVERY`] while the gateway runs.
pub async fn export(gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let labels = ["scope", "budget"];
    let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &labels).ok();
    let (Some(tokens), Some(cost), Some(ratio)) = (
        gauge(
            "clawgress_budget_spent_tokens",
            "Tokens spent in the current window, summed over the ids of a budget rule's scope",
        ),
        gauge(
            "clawgress_budget_spent_cost_usd",
            "US dollars spent in the current window, summed over the ids of a budget rule's scope",
        ),
        gauge(
            "clawgress_budget_max_used_ratio",
            "The highest share of a budget rule's limit that any one id of its scope has used (1 = used up)",
        ),
    ) else {
        return;
    };
    let registry = gateway.metrics.registry();
    for vec in [&tokens, &cost, &ratio] {
        if registry.register(Box::new(vec.clone())).is_err() {
            return;
        }
    }
    loop {
        let policy = gateway.policy.load_full();
        let usage = match policy.budgets.clone() {
            Some(plan) => {
                let identities = gateway.identities.load_full();
                plan.usage(&gateway.budget_store, &identities, Utc::now()).await
            }
            None => Vec::new(),
        };
        // Read first, then swapped in: a scrape never sees a half-filled set.
        // Labels of rules that are gone leave with them.
        tokens.reset();
        cost.reset();
        ratio.reset();
        {
            for usage in usage {
                let labels = [usage.scope, usage.policy_id.as_str()];
                tokens.with_label_values(&labels).add(usage.spent_tokens as f64);
                cost.with_label_values(&labels).add(usage.spent_cost_usd);
                let max = ratio.with_label_values(&labels);
                if usage.used_ratio > max.get() {
                    max.set(usage.used_ratio);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(EXPORT_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
