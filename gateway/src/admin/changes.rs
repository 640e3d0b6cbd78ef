//! The changes the control API makes (temporary allows, access requests
//! and their review, the emergency block and its lifting): each checked,
//! written to the control store and described for its audit record.

use bytes::Bytes;
use chrono::Utc;
use clawgress_policies::matcher::{MatchOutcome, MatchRequest, Protocol};
use clawgress_policies::values::DurationSpec;
use http::StatusCode;
use serde::Deserialize;

use super::api::{Changed, Route, parse_body, required, store_problem};
use super::auth::Actor;
use super::problem::Problem;
use crate::Gateway;
use crate::control::{self, AccessRequest, ControlItem, EmergencyBlock, RequestStatus, TempAllow};

/// Longest a temporary entry or an approved request may last.
const MAX_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);
/// How long an approved request lasts when it names no duration.
const DEFAULT_APPROVAL: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

fn parse_duration(text: &str, what: &str) -> Result<std::time::Duration, Problem> {
    let duration = text
        .parse::<DurationSpec>()
        .map_err(|e| Problem::bad(format!("{what}: {}", e.problem), e.hint))?
        .duration();
    if duration.is_zero() || duration > MAX_TEMPORARY {
        return Err(Problem::bad(
            format!("{what} must be between 1s and 90d; got {text}"),
            "write a duration like 24h or 7d; for longer, add the domain to the policy file",
        ));
    }
    Ok(duration)
}

fn ports_or_default(ports: Option<Vec<u16>>) -> Result<Vec<u16>, Problem> {
    let ports = ports.unwrap_or_else(|| control::DEFAULT_PORTS.to_vec());
    if ports.is_empty() || ports.contains(&0) {
        return Err(Problem::bad(
            "`ports` must list ports between 1 and 65535",
            "e.g. \"ports\": [443]",
        ));
    }
    Ok(ports)
}

/// A domain the operator may open: well-formed, and not one that a
/// blocklist or block pattern covers (those win over any allow).
fn checked_domain(gateway: &Gateway, text: &str) -> Result<String, Problem> {
    let domain =
        control::parse_domain(text).map_err(|e| Problem::bad(format!("`domain`: {e}"), "e.g. api.new-service.com"))?;
    let policy = gateway.policy.load();
    let probe = domain.trim_start_matches("*.");
    let verdict = policy.compiled.evaluate(
        &MatchRequest {
            host: probe,
            port: 443,
            protocol: Protocol::Https,
            role: "",
        },
        Utc::now(),
    );
    if let MatchOutcome::Deny(denial) = verdict
        && matches!(
            denial.reason,
            clawgress_policies::DenyReason::Blocklisted | clawgress_policies::DenyReason::BlockedPattern
        )
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "blocklisted",
            format!(
                "{domain} is blocked by {}; a block wins over any allow",
                denial.policy_id
            ),
        )
        .hint("change the policy file if the block is wrong"));
    }
    Ok(domain)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemporaryBody {
    domain: String,
    duration: String,
    reason: String,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    ports: Option<Vec<u16>>,
    /// Only this team's agents (a team-bound token's own by default).
    #[serde(default)]
    team: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    domain: String,
    reason: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    ports: Option<Vec<u16>>,
    #[serde(default)]
    team: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    duration: Option<String>,
    /// Why it was approved or rejected; kept on the audit line.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    incident_id: String,
}

pub(super) async fn change(
    gateway: &Gateway,
    route: &Route,
    actor: &Actor,
    body: &Bytes,
    details: &mut std::collections::BTreeMap<String, String>,
) -> Changed {
    let now = Utc::now();
    let store = &gateway.control;
    let item = match route {
        Route::AddTemporary => {
            let body: TemporaryBody = parse_body(
                body,
                r#"{"domain": "api.example.com", "duration": "24h", "reason": "...", "task": "..."}"#,
            )?;
            let domain = checked_domain(gateway, &body.domain)?;
            let duration = parse_duration(&body.duration, "`duration`")?;
            ControlItem::Allow(TempAllow {
                id: control::new_id("tmp"),
                domain,
                ports: ports_or_default(body.ports)?,
                expires_at: now + duration,
                reason: required(&body.reason, "reason")?,
                task: body.task,
                created_by: actor.name.clone(),
                created_at: now,
                request_id: None,
                team: super::tenancy::team_for_new(actor, body.team.as_deref())?,
            })
        }
        Route::RemoveTemporary(id) => {
            let snapshot = store.snapshot();
            let entry = snapshot
                .temp_allow(id)
                .ok_or_else(|| not_found("temporary entry", id))?;
            super::tenancy::check_team(actor, "temporary entry", id, entry.team.as_deref())?;
            details.insert("id".to_string(), id.clone());
            details.insert("domain".to_string(), entry.domain.clone());
            let key = ControlItem::Allow(entry.clone()).key();
            let revision = snapshot.revision_of(&key).unwrap_or_default();
            store.delete(&key, revision).await.map_err(store_problem)?;
            return Ok((StatusCode::OK, serde_json::json!({"removed": id})));
        }
        Route::FileRequest => {
            let body: RequestBody = parse_body(
                body,
                r#"{"domain": "api.example.com", "reason": "...", "project": "..."}"#,
            )?;
            let duration = match &body.duration {
                Some(text) => parse_duration(text, "`duration`")?,
                None => DEFAULT_APPROVAL,
            };
            ControlItem::Request(AccessRequest {
                id: control::new_id("req"),
                domain: checked_domain(gateway, &body.domain)?,
                ports: ports_or_default(body.ports)?,
                reason: required(&body.reason, "reason")?,
                project: body.project,
                duration_secs: duration.as_secs(),
                requested_by: actor.name.clone(),
                requested_at: now,
                status: RequestStatus::Pending,
                decided_by: None,
                decided_at: None,
                team: super::tenancy::team_for_new(actor, body.team.as_deref())?,
            })
        }
        Route::Approve(id) | Route::Reject(id) => {
            let approve = matches!(route, Route::Approve(_));
            let body: ApproveBody = parse_body(body, r#"{} or {"duration": "30d", "reason": "..."}"#)?;
            let snapshot = store.snapshot();
            let request = snapshot.request(id).ok_or_else(|| not_found("request", id))?;
            super::tenancy::check_team(actor, "request", id, request.team.as_deref())?;
            let request_revision = snapshot
                .revision_of(&ControlItem::Request(request.clone()).key())
                .unwrap_or_default();
            if request.status != RequestStatus::Pending {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "request_already_decided",
                    format!("request {id} is already {:?}", request.status).to_lowercase(),
                ));
            }
            let mut decided = request.clone();
            decided.status = if approve {
                RequestStatus::Approved
            } else {
                RequestStatus::Rejected
            };
            decided.decided_by = Some(actor.name.clone());
            decided.decided_at = Some(now);
            details.insert("request_id".to_string(), id.clone());
            details.insert("domain".to_string(), request.domain.clone());
            if let Some(reason) = body.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                details.insert("decision_reason".to_string(), reason.chars().take(500).collect());
            }
            let mut answer = serde_json::json!({"request": decided});
            if !approve {
                store
                    .update(ControlItem::Request(decided), request_revision)
                    .await
                    .map_err(store_problem)?;
                return Ok((StatusCode::OK, answer));
            }
            let duration = match &body.duration {
                Some(text) => parse_duration(text, "`duration`")?,
                // Re-capped: the stored value is only as trustworthy as the bucket.
                None => std::time::Duration::from_secs(request.duration_secs).min(MAX_TEMPORARY),
            };
            let entry = TempAllow {
                id: control::new_id("tmp"),
                domain: request.domain.clone(),
                ports: request.ports.clone(),
                expires_at: now + duration,
                reason: request.reason.clone(),
                task: request.project.clone(),
                created_by: actor.name.clone(),
                created_at: now,
                request_id: Some(id.clone()),
                team: request.team.clone(),
            };
            details.insert("id".to_string(), entry.id.clone());
            answer["allowlist_entry"] = serde_json::to_value(&entry).unwrap_or_default();
            let entry_key = ControlItem::Allow(entry.clone()).key();
            store.create(ControlItem::Allow(entry)).await.map_err(store_problem)?;
            // The request is marked only if nobody decided it meanwhile; if
            // someone did, the entry just made is taken back.
            if let Err(error) = store.update(ControlItem::Request(decided), request_revision).await {
                let made = store.snapshot().revision_of(&entry_key);
                if let Some(revision) = made
                    && let Err(undo) = store.delete(&entry_key, revision).await
                {
                    tracing::error!(key = %entry_key, "cannot take back an entry from a lost approval race: {undo}");
                    details.insert("orphan_entry".to_string(), entry_key);
                }
                return Err(store_problem(error));
            }
            return Ok((StatusCode::OK, answer));
        }
        Route::EmergencyBlock => {
            super::tenancy::check_global(actor, "the emergency block")?;
            let body: BlockBody = parse_body(body, r#"{"reason": "Security incident"}"#)?;
            if let Some(block) = store.snapshot().emergency() {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "already_blocked",
                    format!("emergency block {} is already in force", block.incident_id),
                )
                .hint(format!("restore with --incident-id {}", block.incident_id)));
            }
            ControlItem::Emergency(EmergencyBlock {
                incident_id: control::new_id("inc"),
                reason: required(&body.reason, "reason")?,
                actor: actor.name.clone(),
                since: now,
            })
        }
        Route::Restore => {
            super::tenancy::check_global(actor, "the emergency block")?;
            let body: RestoreBody = parse_body(body, r#"{"incident_id": "inc-..."}"#)?;
            let snapshot = store.snapshot();
            let block = snapshot
                .emergency()
                .ok_or_else(|| Problem::new(StatusCode::CONFLICT, "not_blocked", "no emergency block is in force"))?;
            if block.incident_id != body.incident_id {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "wrong_incident",
                    format!("the block in force is {}, not {}", block.incident_id, body.incident_id),
                )
                .hint("restore names the incident it ends, so two incidents are never confused"));
            }
            details.insert("incident_id".to_string(), block.incident_id.clone());
            let revision = snapshot.revision_of(control::EMERGENCY_KEY).unwrap_or_default();
            store
                .delete(control::EMERGENCY_KEY, revision)
                .await
                .map_err(store_problem)?;
            return Ok((StatusCode::OK, serde_json::json!({"restored": body.incident_id})));
        }
        Route::Quarantine => return super::quarantine::quarantine(gateway, actor, body, details).await,
        Route::Release(agent) => {
            super::tenancy::check_agent(gateway, actor, agent)?;
            return super::quarantine::release(gateway, agent, body, details).await;
        }
        _ => return Err(Problem::new(StatusCode::NOT_FOUND, "no_such_route", "not a change")),
    };
    match &item {
        ControlItem::Allow(entry) => {
            details.insert("id".to_string(), entry.id.clone());
            details.insert("domain".to_string(), entry.domain.clone());
            details.insert("expires_at".to_string(), entry.expires_at.to_rfc3339());
            details.insert("reason".to_string(), entry.reason.clone());
        }
        ControlItem::Request(request) => {
            details.insert("request_id".to_string(), request.id.clone());
            details.insert("domain".to_string(), request.domain.clone());
            details.insert("reason".to_string(), request.reason.clone());
        }
        ControlItem::Emergency(block) => {
            details.insert("incident_id".to_string(), block.incident_id.clone());
            details.insert("reason".to_string(), block.reason.clone());
        }
        ControlItem::Quarantine(_) => {}
    }
    let answer = match &item {
        ControlItem::Allow(entry) => serde_json::to_value(entry),
        ControlItem::Request(request) => serde_json::to_value(request),
        ControlItem::Emergency(block) => serde_json::to_value(block),
        ControlItem::Quarantine(held) => serde_json::to_value(held),
    }
    .unwrap_or_default();
    store.create(item).await.map_err(|error| match (&error, route) {
        (control::ControlError::Conflict, Route::EmergencyBlock) => Problem::new(
            StatusCode::CONFLICT,
            "already_blocked",
            "another maintainer's emergency block is already in force",
        )
        .hint("see it with `clawgress egress status`"),
        _ => store_problem(error),
    })?;
    Ok((StatusCode::CREATED, answer))
}

fn not_found(what: &str, id: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with id {id}"))
        .hint("list them with `clawgress egress list`")
}
