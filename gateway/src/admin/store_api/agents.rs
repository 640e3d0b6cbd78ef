//! `/v1/agents`: the agent registry in the store. Keys are made here and
//! shown once; the store keeps their SHA-256 only. A rotation keeps the old
//! key working until its grace period ends. Every write is checked against
//! the agents file's own rules over the whole registry it would leave.

use chrono::Utc;
use clawgress_control::{Agent, NewAgent};
use clawgress_policies::values::DurationSpec;
use http::StatusCode;
use serde::Deserialize;

use super::super::auth::Role;
use super::super::problem::Problem;
use super::super::tenancy;
use super::{Answer, Call, committed, parse, query_value, store_problem};
use crate::identity::IdentityResolver;

/// Longest grace period a rotated key may keep working.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// How long the old key works after a rotation that names no grace.
const DEFAULT_GRACE: &str = "1h";
/// Prefix of the API keys made here: a leaked one is recognizable.
const KEY_PREFIX: &str = "cgk_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    List,
    Create,
    Import,
    Get(String),
    Update(String),
    Rotate(String),
    Delete(String),
}

impl Route {
    pub fn parse(method: &str, rest: &[&str]) -> Option<Route> {
        Some(match (method, rest) {
            ("GET", []) => Route::List,
            ("POST", []) => Route::Create,
            ("POST", ["import"]) => Route::Import,
            ("GET", [id]) => Route::Get(id.to_string()),
            ("PATCH", [id]) => Route::Update(id.to_string()),
            ("POST", [id, "rotate"]) => Route::Rotate(id.to_string()),
            ("DELETE", [id]) => Route::Delete(id.to_string()),
            _ => return None,
        })
    }

    pub fn role(&self) -> Role {
        match self {
            Route::List | Route::Get(_) => Role::Viewer,
            Route::Import => Role::Maintainer,
            _ => Role::Operator,
        }
    }

    pub fn action(&self) -> Option<&'static str> {
        match self {
            Route::List | Route::Get(_) => None,
            Route::Create => Some("agent_create"),
            Route::Import => Some("agent_import"),
            Route::Update(_) => Some("agent_update"),
            Route::Rotate(_) => Some("agent_rotate"),
            Route::Delete(_) => Some("agent_delete"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    team: String,
    project: String,
    environment: String,
    role: String,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    spiffe_ids: Vec<String>,
    #[serde(default)]
    disabled: bool,
    /// No API key: the agent authenticates with a JWT (or a certificate) only.
    #[serde(default)]
    no_key: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    spiffe_ids: Option<Vec<String>>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// A delete names its version like any change (or by If-Match).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    version: Option<i64>,
    /// How long the old key keeps working, e.g. `1h`, `0s` (at once), at most `30d`.
    #[serde(default)]
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// The agents file's text.
    text: String,
    /// Its file name, for errors (`agents.yaml:12:7: ...`).
    #[serde(default)]
    name: Option<String>,
    /// Leave agents the store already has as they are (an import run again).
    #[serde(default)]
    skip_existing: bool,
}

fn validate(agents: &[Agent]) -> Result<(), String> {
    IdentityResolver::check_store_agents(agents)
}

fn visible(call: &Call<'_>, agent: &Agent) -> bool {
    call.actor.covers(&agent.team)
}

/// The agent, if the caller may see it (another team's is "not found": its
/// existence is not the caller's business).
async fn fetch(call: &Call<'_>, id: &str) -> Result<Agent, Problem> {
    let agent = call.db()?.agent(id).await.map_err(store_problem)?;
    match agent {
        Some(agent) if visible(call, &agent) => Ok(agent),
        Some(agent) => Err(tenancy_refusal(call, &agent)),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no agent '{id}' in the store"),
        )
        .hint("list them with `clawgress control agents list`")),
    }
}

fn tenancy_refusal(call: &Call<'_>, agent: &Agent) -> Problem {
    tenancy::check_team(call.actor, "agent", &agent.id, Some(&agent.team))
        .err()
        .unwrap_or_else(|| Problem::new(StatusCode::FORBIDDEN, "team_not_allowed", "not your team's agent"))
}

pub(super) async fn handle(route: &Route, call: &mut Call<'_>) -> Answer {
    match route {
        Route::List => {
            let team = query_value(call.query, "team");
            let agents: Vec<_> = call
                .db()?
                .agents()
                .await
                .map_err(store_problem)?
                .into_iter()
                .filter(|a| visible(call, a) && team.as_deref().is_none_or(|t| t == a.team))
                .map(|a| a.view())
                .collect();
            Ok((StatusCode::OK, serde_json::json!({ "agents": agents })))
        }
        Route::Get(id) => Ok((StatusCode::OK, fetch(call, id).await?.view())),
        Route::Create => create(call).await,
        Route::Import => import(call).await,
        Route::Update(id) => update(call, id).await,
        Route::Rotate(id) => rotate(call, id).await,
        Route::Delete(id) => {
            let body: DeleteBody = parse(call.body, r#"{"version": 3}"#)?;
            let version = call.version(body.version)?;
            call.details.insert("agent_id".to_string(), id.clone());
            let agent = fetch(call, id).await?;
            let (deleted, revision) = call
                .db()?
                .delete_agent(&call.author(), id, version)
                .await
                .map_err(store_problem)?;
            call.details.insert("team".to_string(), agent.team);
            let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Agents, revision).await;
            Ok(committed(
                StatusCode::OK,
                serde_json::json!({"deleted": deleted.view()}),
                propagation,
                call.details,
            ))
        }
    }
}

async fn create(call: &mut Call<'_>) -> Answer {
    let body: CreateBody = parse(
        call.body,
        r#"{"id": "scraper-002", "team": "data", "project": "crawl", "environment": "dev", "role": "scraper"}"#,
    )?;
    tenancy::check_team(call.actor, "agent", &body.id, Some(&body.team))?;
    call.details.insert("agent_id".to_string(), body.id.clone());
    call.details.insert("team".to_string(), body.team.clone());
    let (key, digest) = if body.no_key {
        (None, None)
    } else {
        let (key, digest) = clawgress_control::new_secret(KEY_PREFIX);
        (Some(key), Some(digest))
    };
    let spec = NewAgent {
        id: body.id,
        team: body.team,
        project: body.project,
        environment: body.environment,
        role: body.role,
        key_sha256: digest,
        disabled: body.disabled,
        sources: body.sources,
        spiffe_ids: body.spiffe_ids,
    };
    let created = call
        .db()?
        .create_agents(&call.author(), vec![spec], false, "create", &validate)
        .await
        .map_err(store_problem)?;
    let agent = created.agents.first().map(Agent::view).unwrap_or_default();
    let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Agents, created.revision).await;
    let mut answer = serde_json::json!({ "agent": agent });
    if let Some(key) = key {
        // The only time the key exists outside the agent: it is not logged,
        // not audited, not stored.
        answer["api_key"] = key.into();
        answer["note"] = "the key is shown once; only its SHA-256 is kept".into();
    }
    Ok(committed(StatusCode::CREATED, answer, propagation, call.details))
}

async fn import(call: &mut Call<'_>) -> Answer {
    let body: ImportBody = parse(call.body, r#"{"name": "agents.yaml", "text": "agents: ..."}"#)?;
    let name = body.name.unwrap_or_else(|| "agents file".to_string());
    call.details.insert("file".to_string(), name.clone());
    let specs = IdentityResolver::agents_for_import(&body.text, &name).map_err(|e| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agents_file", e.to_string())
            .with("line", e.line().into())
            .with("column", e.column().into())
    })?;
    for spec in &specs {
        tenancy::check_team(call.actor, "agent", &spec.id, Some(&spec.team))?;
    }
    let created = call
        .db()?
        .create_agents(&call.author(), specs, body.skip_existing, "import", &validate)
        .await
        .map_err(store_problem)?;
    call.details
        .insert("imported".to_string(), created.agents.len().to_string());
    call.details
        .insert("skipped".to_string(), created.skipped.len().to_string());
    let answer = serde_json::json!({
        "imported": created.agents.iter().map(Agent::view).collect::<Vec<_>>(),
        "skipped": created.skipped,
        "note": "keys keep their digests from the file; a `jwt:` section stays in the agents file",
    });
    if created.revision == 0 {
        return Ok((StatusCode::OK, answer));
    }
    let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Agents, created.revision).await;
    Ok(committed(StatusCode::CREATED, answer, propagation, call.details))
}

async fn update(call: &mut Call<'_>, id: &str) -> Answer {
    let body: UpdateBody = parse(call.body, r#"{"version": 3, "disabled": true}"#)?;
    let version = call.version(body.version)?;
    call.details.insert("agent_id".to_string(), id.to_string());
    let current = fetch(call, id).await?;
    if let Some(team) = &body.team {
        tenancy::check_team(call.actor, "team", team, Some(team))?;
    }
    call.details.insert("team".to_string(), current.team.clone());
    let mut changed = serde_json::Map::new();
    let (agent, revision) = call
        .db()?
        .update_agent(
            &call.author(),
            id,
            version,
            "update",
            |agent| {
                macro_rules! set {
                    ($field:ident) => {
                        if let Some(value) = body.$field {
                            changed.insert(stringify!($field).to_string(), serde_json::json!(value));
                            agent.$field = value;
                        }
                    };
                }
                set!(team);
                set!(project);
                set!(environment);
                set!(role);
                set!(sources);
                set!(spiffe_ids);
                set!(disabled);
                Ok(serde_json::json!({ "changed": changed.clone() }))
            },
            &validate,
        )
        .await
        .map_err(store_problem)?;
    let changed_fields: Vec<&str> = changed.keys().map(String::as_str).collect();
    call.details.insert("changed".to_string(), changed_fields.join(","));
    let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Agents, revision).await;
    Ok(committed(StatusCode::OK, agent.view(), propagation, call.details))
}

async fn rotate(call: &mut Call<'_>, id: &str) -> Answer {
    let body: RotateBody = parse(call.body, r#"{"version": 3, "grace": "1h"}"#)?;
    let version = call.version(body.version)?;
    let grace_text = body.grace.unwrap_or_else(|| DEFAULT_GRACE.to_string());
    let grace = grace_text
        .parse::<DurationSpec>()
        .map_err(|e| Problem::bad(format!("`grace`: {}", e.problem), e.hint))?
        .duration();
    if grace > MAX_GRACE {
        return Err(Problem::bad(
            format!("`grace` may be at most 30d; got {grace_text}"),
            "the old key should stop soon: 1h is usual, 0s stops it at once",
        ));
    }
    call.details.insert("agent_id".to_string(), id.to_string());
    call.details.insert("grace".to_string(), grace_text.clone());
    let current = fetch(call, id).await?;
    call.details.insert("team".to_string(), current.team.clone());
    let (key, digest) = clawgress_control::new_secret(KEY_PREFIX);
    let until = Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
    let (agent, revision) = call
        .db()?
        .update_agent(
            &call.author(),
            id,
            version,
            "rotate",
            |agent| {
                agent.previous_key_sha256 = agent.key_sha256.take().filter(|_| !grace.is_zero());
                agent.previous_key_until = agent.previous_key_sha256.as_ref().map(|_| until);
                agent.key_sha256 = Some(digest.clone());
                Ok(serde_json::json!({
                    "key_id": clawgress_control::key_id(&digest),
                    "previous_key_until": agent.previous_key_until,
                }))
            },
            &validate,
        )
        .await
        .map_err(store_problem)?;
    let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Agents, revision).await;
    let answer = serde_json::json!({
        "agent": agent.view(),
        "api_key": key,
        "previous_key_until": agent.previous_key_until,
        "note": "the new key is shown once; the old one works until previous_key_until",
    });
    Ok(committed(StatusCode::OK, answer, propagation, call.details))
}
