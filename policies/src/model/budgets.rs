//! `budgets:` — token and cost budgets for AI requests (our addition; seed
//! 001 §5.5): per agent, team or project, over a minute, hour, day or month,
//! priced with a per-model table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::located::Located;
use crate::model::or_default;

/// `budgets:` — what AI requests may spend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsPolicy {
    /// Enforce the rules below at all.
    pub enabled: bool,
    /// A file with a `pricing:` table (e.g. `pricing.yaml`), relative to the
    /// policy file. Entries written under `pricing:` here win over it.
    pub pricing_file: Option<Located<String>>,
    /// Prices per model; a model is priced by its longest matching prefix
    /// (`gpt-4o` prices `gpt-4o-2024-08-06`).
    #[serde(deserialize_with = "or_default")]
    pub pricing: BTreeMap<String, ModelPrice>,
    /// Output tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// The rules; a request is checked against every rule that matches it.
    #[serde(deserialize_with = "or_default")]
    pub rules: Vec<BudgetRule>,
}

impl Default for BudgetsPolicy {
    fn default() -> Self {
        BudgetsPolicy {
            enabled: true,
            pricing_file: None,
            pricing: BTreeMap::new(),
            default_max_tokens: 4096,
            rules: Vec::new(),
        }
    }
}

/// List prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawPrice")]
pub struct ModelPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input_per_mtok: f64,
    output_per_mtok: f64,
}

impl TryFrom<RawPrice> for ModelPrice {
    type Error = String;

    fn try_from(raw: RawPrice) -> Result<Self, String> {
        for (name, value) in [
            ("input_per_mtok", raw.input_per_mtok),
            ("output_per_mtok", raw.output_per_mtok),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!(
                    "`{name}: {value}` is not a price; write US dollars per million tokens, e.g. 2.5"
                ));
            }
        }
        Ok(ModelPrice {
            input_per_mtok: raw.input_per_mtok,
            output_per_mtok: raw.output_per_mtok,
        })
    }
}

impl ModelPrice {
    /// Dollars for `tokens_in` prompt and `tokens_out` output tokens.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input_per_mtok + tokens_out as f64 * self.output_per_mtok) / 1_000_000.0
    }
}

/// A `pricing:` file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingFile {
    pub pricing: BTreeMap<String, ModelPrice>,
}

/// One budget: who, over what window, how much, and what happens past it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetRule {
    /// `agent`, `team` or `project`.
    pub scope: BudgetScope,
    /// One agent, team or project id; absent or `"*"`: each one separately.
    #[serde(default)]
    pub id: Option<String>,
    /// `minute`, `hour`, `day` or `month` (calendar, UTC).
    pub window: Located<BudgetWindow>,
    /// Most tokens (prompt plus output) in a window.
    #[serde(default)]
    pub tokens: Option<Located<u64>>,
    /// Most US dollars in a window, at the pricing table's prices.
    #[serde(default)]
    pub cost_usd: Option<Located<f64>>,
    /// What happens to a request that would go past the budget.
    #[serde(default)]
    pub mode: BudgetMode,
}

impl BudgetRule {
    /// Whether this rule counts requests from these ids.
    pub fn applies_to(&self, agent: &str, team: &str, project: &str) -> bool {
        let own = match self.scope {
            BudgetScope::Agent => agent,
            BudgetScope::Team => team,
            BudgetScope::Project => project,
        };
        match self.id.as_deref() {
            None | Some("*") => true,
            Some(id) => id == own,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    Agent,
    Team,
    Project,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Agent => "agent",
            BudgetScope::Team => "team",
            BudgetScope::Project => "project",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    Minute,
    Hour,
    Day,
    Month,
}

impl BudgetWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetWindow::Minute => "minute",
            BudgetWindow::Hour => "hour",
            BudgetWindow::Day => "day",
            BudgetWindow::Month => "month",
        }
    }
}

/// Seed 001 §5.5's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetMode {
    /// Refuse with 429 and the budget, what is spent and when it resets.
    #[default]
    HardStop,
    /// Let the request through, raise an alert, and tell the agent in a
    /// response header.
    SoftStop,
    /// Past the budget, let one request through per `throttle` interval
    /// (a minute) and refuse the rest with a Retry-After.
    Throttle,
    /// Let everything through; raise an alert past the budget.
    AlertOnly,
}
