//! Tenancy of the control API: a token bound to teams (`teams:` in the
//! tokens file, or a store token made with `--team`) sees and changes only
//! its teams' agents, temporary allows and requests, and nothing that
//! applies to every agent (the emergency block, the policy, tokens). The
//! checks live here so every route asks the same questions.

use http::StatusCode;

use super::auth::Actor;
use super::problem::Problem;
use crate::Gateway;

fn other_team(what: &str, id: &str, team: Option<&str>) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "team_not_allowed",
        match team {
            Some(team) => format!("{what} {id} belongs to team {team}, which this token is not bound to"),
            None => format!("{what} {id} applies to every team; a team-bound token may not change it"),
        },
    )
    .hint("ask someone whose token covers that team")
}

/// Refuses a change to something of another team (or of every team).
pub(super) fn check_team(actor: &Actor, what: &str, id: &str, team: Option<&str>) -> Result<(), Problem> {
    match team {
        Some(team) if actor.covers(team) => Ok(()),
        None if !actor.is_team_scoped() => Ok(()),
        _ => Err(other_team(what, id, team)),
    }
}

/// Whether a listing shows an item of `team` (`None`: every team's) to
/// the caller: a team-bound caller sees its own teams' items only.
pub(super) fn visible(actor: &Actor, team: Option<&str>) -> bool {
    match team {
        Some(team) => actor.covers(team),
        None => !actor.is_team_scoped(),
    }
}

/// The team a new temporary entry or request belongs to: for a team-bound
/// caller, the team it names (one of its own) or its only team; for
/// anyone else, the team it names or none (every agent).
pub(super) fn team_for_new(actor: &Actor, named: Option<&str>) -> Result<Option<String>, Problem> {
    match (named.map(str::trim).filter(|t| !t.is_empty()), actor.teams.as_slice()) {
        (Some(team), _) if actor.covers(team) => Ok(Some(team.to_string())),
        (Some(team), _) => Err(other_team("team", team, Some(team))),
        (None, []) => Ok(None),
        (None, [only]) => Ok(Some(only.clone())),
        (None, _) => Err(Problem::bad(
            "this token is bound to several teams: say which one in `team`",
            format!("one of {}", actor.teams.join(", ")),
        )),
    }
}

/// Refuses what applies to every agent to a team-bound caller.
pub(super) fn check_global(actor: &Actor, what: &str) -> Result<(), Problem> {
    if actor.is_team_scoped() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "team_not_allowed",
            format!("{what} applies to every team; a team-bound token may not do it"),
        )
        .hint("ask someone whose token is not bound to teams"));
    }
    Ok(())
}

/// Refuses a change to an agent of another team; the agent's team is read
/// from the registry in force.
pub(super) fn check_agent(gateway: &Gateway, actor: &Actor, agent_id: &str) -> Result<(), Problem> {
    if !actor.is_team_scoped() {
        return Ok(());
    }
    let identities = gateway.identities.load();
    match identities.team_of(agent_id) {
        Some(team) => check_team(actor, "agent", agent_id, Some(team)),
        None => Err(other_team("agent", agent_id, None)),
    }
}
