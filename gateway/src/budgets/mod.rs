//! Token and cost budgets (seed 001 §5.5): before an AI request leaves, the
//! gateway reserves its prompt estimate plus its output limit against every
//! budget that covers the agent, its team and its project; when the answer
//! has passed, the reservation is settled to the usage the provider
//! reported. Counters are shared through NATS by every replica, and each
//! change is a compare-and-set, so concurrent requests cannot overspend:
//! whatever is admitted was reserved first. Replicas reserve blocks of a
//! budget at a time and admit requests from them in memory (`lease`).

pub mod bench;
pub mod lease;
pub mod store;
pub mod usage;

use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use clawgress_policies::model::{BudgetMode, BudgetRule, BudgetWindow, BudgetsPolicy, ModelPrice};
use serde::Serialize;

use crate::identity::Identity;
use crate::inspect::ai::AiRecord;
pub use store::{BudgetStore, Counter, StoreError};

/// Throttle mode lets one request past an exhausted budget this often.
const THROTTLE_INTERVAL_MS: i64 = 60_000;

/// A policy's budgets, compiled: the rules and the price list.
#[derive(Debug)]
pub struct BudgetPlan {
    rules: Vec<BudgetRule>,
    /// Longest model prefix first, so the most specific price wins.
    prices: Vec<(String, ModelPrice)>,
    default_max_tokens: u64,
}

/// What one request reserved, to be settled once its answer is known.
#[derive(Debug, Clone, Serialize)]
pub struct Reservation {
    pub tokens: u64,
    /// Micro-dollars reserved (0 when the model has no price).
    #[serde(skip)]
    pub micros: u64,
    pub cost_usd: f64,
    /// The budgets it counts against.
    pub budgets: Vec<Charged>,
    #[serde(skip)]
    price: Option<ModelPrice>,
}

/// One budget a request counts against.
#[derive(Debug, Clone, Serialize)]
pub struct Charged {
    #[serde(skip)]
    pub key: String,
    #[serde(skip)]
    pub window_end_ms: i64,
    pub policy_id: String,
    pub mode: BudgetMode,
    /// The request is past this budget and passed by its mode.
    pub over: bool,
    /// Admitted from this replica's block (of this generation) rather
    /// than reserved in the shared counter by itself.
    #[serde(skip)]
    pub lease: Option<u64>,
}

/// A budget a request may not go past (hard-stop, or throttle between
/// its allowed requests).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetExceeded {
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
    /// In flight: reserved by requests not yet answered, and held in
    /// replicas' blocks.
    pub reserved_tokens: u64,
    /// What this request needed.
    pub requested_tokens: u64,
    pub resets_at: DateTime<Utc>,
    /// Seconds until a retry can pass (the reset, or throttle's next slot).
    #[serde(skip)]
    pub retry_after_secs: u64,
}

#[derive(Debug)]
pub enum BudgetRefusal {
    Exceeded(Box<BudgetExceeded>),
    Unavailable(StoreError),
}

impl BudgetPlan {
    /// `None` when the policy sets no budgets (or switches them off).
    pub fn new(policy: &BudgetsPolicy) -> Option<Arc<BudgetPlan>> {
        if !policy.enabled || policy.rules.is_empty() {
            return None;
        }
        let mut prices: Vec<(String, ModelPrice)> = policy.pricing.iter().map(|(m, p)| (m.clone(), *p)).collect();
        prices.sort_by_key(|(model, _)| std::cmp::Reverse(model.len()));
        Some(Arc::new(BudgetPlan {
            rules: policy.rules.clone(),
            prices,
            default_max_tokens: policy.default_max_tokens,
        }))
    }

    /// The price of `model`: its longest matching prefix in the table. A
    /// model with no price is charged at the dearest price in the table, so
    /// a renamed model cannot slip past a cost budget.
    pub fn price(&self, model: Option<&str>) -> Option<ModelPrice> {
        let model = model.unwrap_or_default().to_ascii_lowercase();
        self.prices
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix.as_str()))
            .map(|(_, price)| *price)
            .or_else(|| {
                self.prices
                    .iter()
                    .map(|(_, price)| *price)
                    .max_by(|a, b| a.output_per_mtok.total_cmp(&b.output_per_mtok))
            })
    }

    /// Reserves what `ai` may spend against every budget that covers
    /// `identity`. On a refusal, whatever was already reserved is released.
    pub async fn reserve(
        &self,
        store: &BudgetStore,
        identity: &Identity,
        ai: &AiRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>, BudgetRefusal> {
        let applicable: Vec<(usize, &BudgetRule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.applies_to(&identity.agent_id, &identity.team, &identity.project))
            .collect();
        if applicable.is_empty() {
            return Ok(None);
        }
        let prompt = ai.token_estimate.unwrap_or(0);
        let output = ai.max_tokens.unwrap_or(self.default_max_tokens);
        let tokens = prompt.saturating_add(output);
        let price = self.price(ai.model.as_deref());
        let micros = price.map_or(0, |p| to_micros(p.cost(prompt, output)));
        let mut reservation = Reservation {
            tokens,
            micros,
            cost_usd: from_micros(micros),
            budgets: Vec::new(),
            price,
        };
        for (index, rule) in applicable {
            let (start, end) = window_bounds(rule.window.value, now);
            let own = match rule.scope {
                clawgress_policies::model::BudgetScope::Agent => &*identity.agent_id,
                clawgress_policies::model::BudgetScope::Team => &*identity.team,
                clawgress_policies::model::BudgetScope::Project => &*identity.project,
            };
            let key = counter_key(rule, own, start);
            let policy_id = format!("budgets.rules[{index}]");
            let limit_tokens = rule.tokens.as_ref().map(|t| t.value);
            let limit_micros = rule.cost_usd.as_ref().map(|c| to_micros(c.value));
            let now_ms = now.timestamp_millis();
            // From this replica's block when it (or a grown one) has room.
            if let Some(leases) = &store.leases {
                let need = lease::Need {
                    tokens,
                    micros,
                    limit_tokens,
                    limit_micros,
                };
                match leases.reserve(store, &key, end.timestamp_millis(), need).await {
                    Ok(Some(generation)) => {
                        reservation.budgets.push(Charged {
                            key,
                            window_end_ms: end.timestamp_millis(),
                            policy_id,
                            mode: rule.mode,
                            over: false,
                            lease: Some(generation),
                        });
                        continue;
                    }
                    // No room: the mode decides, below.
                    Ok(None) => {}
                    Err(error) => {
                        self.settle(store, reservation, Some(0)).await;
                        return Err(BudgetRefusal::Unavailable(error));
                    }
                }
            }
            let outcome = store
                .update(&key, end.timestamp_millis(), |mut counter| {
                    counter.expire_leases(chrono::Utc::now().timestamp_millis());
                    let fits = limit_tokens.is_none_or(|limit| counter.tokens_committed() + tokens <= limit)
                        && limit_micros.is_none_or(|limit| counter.micros_committed() + micros <= limit);
                    let over = !fits;
                    let admitted = match (fits, rule.mode) {
                        (true, _) | (false, BudgetMode::SoftStop | BudgetMode::AlertOnly) => true,
                        (false, BudgetMode::HardStop) => false,
                        (false, BudgetMode::Throttle) => {
                            let due = now_ms - counter.throttled_at_ms >= THROTTLE_INTERVAL_MS;
                            if due {
                                counter.throttled_at_ms = now_ms;
                            }
                            due
                        }
                    };
                    if !admitted {
                        return Err((over, counter));
                    }
                    counter.tokens_reserved += tokens;
                    counter.micros_reserved += micros;
                    Ok((counter.clone(), (over, counter)))
                })
                .await;
            match outcome {
                Ok(Ok((over, _))) => reservation.budgets.push(Charged {
                    key,
                    window_end_ms: end.timestamp_millis(),
                    policy_id,
                    mode: rule.mode,
                    over,
                    lease: None,
                }),
                Ok(Err((_, counter))) => {
                    self.settle(store, reservation, Some(0)).await;
                    let retry_after_secs = match rule.mode {
                        BudgetMode::Throttle => {
                            let next = counter.throttled_at_ms + THROTTLE_INTERVAL_MS - now_ms;
                            (next.max(0) as u64).div_ceil(1000).max(1)
                        }
                        _ => ((end - now).num_seconds().max(0) as u64).max(1),
                    };
                    return Err(BudgetRefusal::Exceeded(Box::new(BudgetExceeded {
                        policy_id,
                        scope: rule.scope.as_str(),
                        id: own.to_string(),
                        window: rule.window.value.as_str(),
                        mode: rule.mode,
                        limit_tokens,
                        limit_cost_usd: rule.cost_usd.as_ref().map(|c| c.value),
                        spent_tokens: counter.tokens_spent,
                        spent_cost_usd: from_micros(counter.micros_spent),
                        reserved_tokens: counter.tokens_reserved + counter.tokens_leased(),
                        requested_tokens: tokens,
                        resets_at: end,
                        retry_after_secs,
                    })));
                }
                Err(error) => {
                    self.settle(store, reservation, Some(0)).await;
                    return Err(BudgetRefusal::Unavailable(error));
                }
            }
        }
        Ok(Some(reservation))
    }

    /// Replaces a reservation by what was really used: `used_tokens`
    /// (prompt plus output; `Some(0)` when nothing reached the provider), or
    /// the whole reservation when the provider's usage is unknown.
    pub async fn settle(&self, store: &BudgetStore, reservation: Reservation, used: Option<u64>) {
        settle(store, &reservation, used.map(|tokens| (tokens, None))).await;
    }
}

/// Settles with the provider's split of prompt and output tokens, priced.
pub async fn settle_usage(store: &BudgetStore, reservation: &Reservation, tokens_in: u64, tokens_out: u64) {
    let micros = reservation
        .price
        .map_or(0, |p| to_micros(p.cost(tokens_in, tokens_out)));
    settle(store, reservation, Some((tokens_in + tokens_out, Some(micros)))).await;
}

/// `used`: tokens and micro-dollars actually spent; `None` charges the
/// reservation in full (the conservative answer when usage is unknown).
pub async fn settle(store: &BudgetStore, reservation: &Reservation, used: Option<(u64, Option<u64>)>) {
    let (tokens, micros) = match used {
        Some((tokens, Some(micros))) => (tokens, micros),
        Some((tokens, None)) => {
            // Priced in proportion when only a total is known.
            let micros = if reservation.tokens == 0 {
                0
            } else {
                (reservation.micros as u128 * tokens as u128 / reservation.tokens as u128) as u64
            };
            (tokens, micros)
        }
        None => (reservation.tokens, reservation.micros),
    };
    for charged in &reservation.budgets {
        if let (Some(generation), Some(leases)) = (charged.lease, &store.leases) {
            leases.settle(
                &charged.key,
                generation,
                (reservation.tokens, reservation.micros),
                (tokens, micros),
            );
            continue;
        }
        let settled = store
            .update(&charged.key, charged.window_end_ms, |mut counter| {
                counter.tokens_reserved = counter.tokens_reserved.saturating_sub(reservation.tokens);
                counter.micros_reserved = counter.micros_reserved.saturating_sub(reservation.micros);
                counter.tokens_spent += tokens;
                counter.micros_spent += micros;
                Ok::<_, ()>((counter, ()))
            })
            .await;
        if let Err(error) = settled {
            // The reservation stays counted until its window ends: the
            // budget errs towards refusing, never towards overspending.
            tracing::warn!(%error, key = %charged.key, "could not settle a budget reservation");
        }
    }
}

fn to_micros(dollars: f64) -> u64 {
    (dollars * 1_000_000.0).ceil().max(0.0) as u64
}

fn from_micros(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// The calendar window (UTC) that contains `now`.
pub fn window_bounds(window: BudgetWindow, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = match window {
        BudgetWindow::Minute => now.with_second(0).and_then(|t| t.with_nanosecond(0)),
        BudgetWindow::Hour => now
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0)),
        BudgetWindow::Day => Utc
            .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
            .single(),
        BudgetWindow::Month => Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single(),
    }
    .unwrap_or(now);
    let end = match window {
        BudgetWindow::Minute => start + chrono::Duration::minutes(1),
        BudgetWindow::Hour => start + chrono::Duration::hours(1),
        BudgetWindow::Day => start + chrono::Duration::days(1),
        BudgetWindow::Month => {
            let (year, month) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
                .single()
                .unwrap_or(start + chrono::Duration::days(31))
        }
    };
    (start, end)
}

/// `agent.<id>.day.20261123`: ids are hex-encoded unless they are already
/// safe as a NATS KV key token.
fn counter_key(rule: &BudgetRule, id: &str, start: DateTime<Utc>) -> String {
    let safe = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let id = if safe {
        id.to_string()
    } else {
        format!("x{}", hex::encode(id))
    };
    let stamp = match rule.window.value {
        BudgetWindow::Minute => start.format("%Y%m%d%H%M"),
        BudgetWindow::Hour => start.format("%Y%m%d%H"),
        BudgetWindow::Day => start.format("%Y%m%d"),
        BudgetWindow::Month => start.format("%Y%m"),
    };
    format!("{}.{id}.{}.{stamp}", rule.scope.as_str(), rule.window.value.as_str())
}

#[cfg(test)]
mod tests;
