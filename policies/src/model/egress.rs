//! `egress:` — the default policy (seed §1) and how strictly it is applied.

use std::collections::BTreeMap;

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::diagnostic::hinted;
use crate::model::or_default;

/// `egress:` — what happens to a request nothing else decided about, and
/// how the decisions are applied.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressPolicy {
    /// What happens to a request no rule allows. Only `deny` is accepted:
    /// the gateway is default-deny by design.
    pub default_action: DefaultAction,
    /// Which requests the audit trail records: `all_requests` (default),
    /// `denied_only` or `none`.
    pub logging: Logging,
    /// `enabled` (default) exports egress metrics; `disabled` does not.
    pub monitoring: Monitoring,
    /// `enforce` (default) refuses what the policy denies; `report` lets it
    /// through and records a would-deny, to try a policy on live traffic.
    pub enforcement: Enforcement,
    /// What the gateway does when it cannot decide (a backend it needs is
    /// down): `closed` (default) refuses, `open` lets the request through.
    pub fail_mode: FailMode,
    /// Per-environment overrides of `enforcement` and `fail_mode`, keyed by
    /// the environment name from the agent's identity, e.g.
    /// `environments: {staging: {enforcement: report}}`.
    #[serde(deserialize_with = "or_default")]
    pub environments: BTreeMap<String, EnvironmentOverride>,
}

impl EgressPolicy {
    /// The enforcement mode for agents in `environment`.
    pub fn enforcement_for(&self, environment: &str) -> Enforcement {
        self.environments
            .get(environment)
            .and_then(|e| e.enforcement)
            .unwrap_or(self.enforcement)
    }

    /// The fail mode for agents in `environment`.
    pub fn fail_mode_for(&self, environment: &str) -> FailMode {
        self.environments
            .get(environment)
            .and_then(|e| e.fail_mode)
            .unwrap_or(self.fail_mode)
    }
}

/// One environment's overrides; an unset field keeps the top-level value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentOverride {
    /// Overrides `egress.enforcement` for this environment.
    #[serde(default)]
    pub enforcement: Option<Enforcement>,
    /// Overrides `egress.fail_mode` for this environment.
    #[serde(default)]
    pub fail_mode: Option<FailMode>,
}

/// The action for requests no rule allows. There is exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    #[default]
    Deny,
}

impl<'de> Deserialize<'de> for DefaultAction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Action;
        impl Visitor<'_> for Action {
            type Value = DefaultAction;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`deny`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DefaultAction, E> {
                if v == "deny" {
                    Ok(DefaultAction::Deny)
                } else {
                    Err(refuse(v))
                }
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<DefaultAction, E> {
                Err(refuse(&v.to_string()))
            }
        }
        deserializer.deserialize_any(Action)
    }
}

fn refuse<E: serde::de::Error>(written: &str) -> E {
    hinted(
        format!("default_action is '{written}', but only `deny` is accepted: default-deny is not negotiable"),
        "write `default_action: deny` and list what may pass under allowlist; use `enforcement: report` \
         to try a policy without blocking",
    )
}

/// Which requests are written to the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Logging {
    #[default]
    AllRequests,
    DeniedOnly,
    #[serde(rename = "none")]
    Off,
}

/// `enabled` / `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitoring {
    #[default]
    Enabled,
    Disabled,
}

/// Whether policy denials are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Enforce,
    Report,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Report => "report",
        }
    }
}

/// What to do when a decision cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Closed,
    Open,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}
