//! The control API for held agents: `POST /v1/quarantine` (operator: a
//! person, or `clawgress analyze` with its own token), `POST
//! /v1/quarantine/{agent}/release` (maintainer) and `GET /v1/quarantine`.
//! Each change is a `quarantine.<agent>` key of the control store, so every
//! replica applies it, and is audited by [`super::api`] like every change.
//!
//! Releasing needs a higher role than quarantining on purpose: the
//! analyzer's token can stop an agent, never let one go again.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use http::StatusCode;
use serde::Deserialize;

use super::api::{Changed, parse_body, required, store_problem};
use super::auth::Actor;
use super::problem::Problem;
use crate::Gateway;
use crate::control::{ControlItem, ControlSnapshot, HoldMode, QuarantinedAgent, hold_key};

/// Lowest and highest rate a `rate_reduction` may set.
const PER_MINUTE: std::ops::RangeInclusive<u32> = 1..=10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    agent_id: String,
    reason: String,
    #[serde(default)]
    mode: HoldMode,
    #[serde(default)]
    per_minute: Option<u32>,
    #[serde(default)]
    anomaly_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    reason: String,
}

/// `POST /v1/quarantine`: holds an agent. A quarantine replaces a rate
/// reduction (stricter wins); holding an agent already held as strictly is
/// `409 already_quarantined`.
pub(super) async fn quarantine(
    gateway: &Gateway,
    actor: &Actor,
    body: &Bytes,
    details: &mut BTreeMap<String, String>,
) -> Changed {
    let body: QuarantineBody = parse_body(
        body,
        r#"{"agent_id": "scraper-001", "reason": "...", "mode": "quarantine"} or {"mode": "rate_reduction", "per_minute": 10, ...}"#,
    )?;
    let agent_id = body.agent_id.trim();
    if agent_id.is_empty() || agent_id.len() > 256 {
        return Err(Problem::bad(
            "`agent_id` must name an agent (1 to 256 bytes)",
            "e.g. \"agent_id\": \"scraper-001\"",
        ));
    }
    super::tenancy::check_agent(gateway, actor, agent_id)?;
    let per_minute = match (body.mode, body.per_minute) {
        (HoldMode::Quarantine, _) => None,
        (HoldMode::RateReduction, Some(n)) if PER_MINUTE.contains(&n) => Some(n),
        (HoldMode::RateReduction, _) => {
            return Err(Problem::bad(
                "a rate_reduction needs `per_minute` between 1 and 10000",
                "e.g. \"per_minute\": 10",
            ));
        }
    };
    let held = QuarantinedAgent {
        agent_id: agent_id.to_string(),
        mode: body.mode,
        per_minute,
        reason: required(&body.reason, "reason")?,
        actor: actor.name.clone(),
        since: Utc::now(),
        anomaly_id: body.anomaly_id.map(|id| id.chars().take(100).collect()),
        request_id: body.request_id.map(|id| id.chars().take(100).collect()),
    };
    details.insert("agent_id".to_string(), held.agent_id.clone());
    details.insert("mode".to_string(), held.mode.as_str().to_string());
    details.insert("reason".to_string(), held.reason.clone());
    if let Some(id) = &held.anomaly_id {
        details.insert("anomaly_id".to_string(), id.clone());
    }
    let store = &gateway.control;
    let snapshot = store.snapshot();
    let key = hold_key(&held.agent_id);
    let answer = serde_json::to_value(&held).unwrap_or_default();
    match snapshot.hold(&held.agent_id) {
        None => store
            .create(ControlItem::Quarantine(held))
            .await
            .map_err(store_problem)?,
        Some(existing) if existing.mode == HoldMode::RateReduction && held.mode == HoldMode::Quarantine => {
            let revision = snapshot.revision_of(&key).unwrap_or_default();
            store
                .update(ControlItem::Quarantine(held), revision)
                .await
                .map_err(store_problem)?;
        }
        Some(existing) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already_quarantined",
                format!(
                    "agent {} is already held ({}) since {}",
                    existing.agent_id,
                    existing.mode.as_str(),
                    existing.since.to_rfc3339()
                ),
            )
            .hint("see the holds with `clawgress egress quarantined`"));
        }
    }
    Ok((StatusCode::CREATED, answer))
}

/// `POST /v1/quarantine/{agent}/release`: lifts a hold, with a reason.
pub(super) async fn release(
    gateway: &Gateway,
    agent_id: &str,
    body: &Bytes,
    details: &mut BTreeMap<String, String>,
) -> Changed {
    let body: ReleaseBody = parse_body(body, r#"{"reason": "false positive, checked by ..."}"#)?;
    let reason = required(&body.reason, "reason")?;
    // Agent ids travel in the path: `%XX` escapes are undone.
    let agent_id = percent_encoding::percent_decode_str(agent_id)
        .decode_utf8_lossy()
        .into_owned();
    details.insert("agent_id".to_string(), agent_id.clone());
    details.insert("reason".to_string(), reason.clone());
    let store = &gateway.control;
    let snapshot = store.snapshot();
    let Some(held) = snapshot.hold(&agent_id) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_quarantined",
            format!("agent {agent_id} is not quarantined or rate-reduced"),
        )
        .hint("list the held agents with `clawgress egress quarantined`"));
    };
    details.insert("mode".to_string(), held.mode.as_str().to_string());
    let key = hold_key(&agent_id);
    let revision = snapshot.revision_of(&key).unwrap_or_default();
    store.delete(&key, revision).await.map_err(store_problem)?;
    Ok((
        StatusCode::OK,
        serde_json::json!({"released": agent_id, "was": held, "reason": reason}),
    ))
}

/// `GET /v1/quarantine`.
pub(super) fn list(snapshot: &ControlSnapshot) -> serde_json::Value {
    let mut held: Vec<&QuarantinedAgent> = snapshot.holds().collect();
    held.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    serde_json::json!({ "quarantined": held })
}
