//! `GET /v1/quotas`: what each budget scope (agent, team, project) has spent
//! in its current window against its limit, from the budget counters every
//! replica shares. Any replica answers (no database involved). A
//! team-bound caller sees its teams' agents, its teams, and the projects
//! its teams' agents belong to.

use http::StatusCode;

use super::{Answer, Call};

pub(super) async fn read(call: &Call<'_>) -> Answer {
    let gateway = call.gateway;
    let policy = gateway.policy.load_full();
    let Some(plan) = policy.budgets.clone() else {
        return Ok((
            StatusCode::OK,
            serde_json::json!({"policy_version": policy.version.as_ref(), "quotas": [], "note": "the policy in force sets no budgets"}),
        ));
    };
    let identities = gateway.identities.load_full();
    let usage = plan.usage(&gateway.budget_store, &identities, chrono::Utc::now()).await;
    let actor = call.actor;
    let visible_projects: std::collections::BTreeSet<&str> = identities
        .identities()
        .filter(|identity| actor.covers(&identity.team))
        .map(|identity| &*identity.project)
        .collect();
    let quotas: Vec<_> = usage
        .into_iter()
        .filter(|quota| match quota.scope {
            "agent" => identities.team_of(&quota.id).is_some_and(|team| actor.covers(team)),
            "team" => actor.covers(&quota.id),
            _ => !actor.is_team_scoped() || visible_projects.contains(quota.id.as_str()),
        })
        .collect();
    Ok((
        StatusCode::OK,
        serde_json::json!({"policy_version": policy.version.as_ref(), "quotas": quotas}),
    ))
}
