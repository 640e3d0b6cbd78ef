//! Agents from the control store (`clawgress control agents ...`), held to
//! exactly the agents file's rules: each agent goes through the same
//! checks (ids, labels, key digests, `sources` overlaps, duplicate
//! `spiffe_ids`) as if it had been written in the file, so the store can
//! never hold a registry the file would refuse. Errors name the agent
//! instead of a line.

use std::time::{Duration, SystemTime};

use clawgress_control::Agent;
use serde_saphyr::{Location, Spanned};

use super::agents_file::{Compiled, Reporter, compile_agents};
use super::file_error::AgentsFileError;
use super::schema::AgentDoc;

/// What errors about store agents are said to be in.
pub const ORIGIN: &str = "control store";

fn unlocated<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// Compiles the store's registry (no JWT section: that stays in the agents
/// file, next to the key files it names).
pub(super) fn compile(agents: &[Agent]) -> Result<Compiled, AgentsFileError> {
    let docs = agents
        .iter()
        .map(|agent| {
            unlocated(AgentDoc {
                id: unlocated(agent.id.clone()),
                team: unlocated(agent.team.clone()),
                project: unlocated(agent.project.clone()),
                environment: unlocated(agent.environment.clone()),
                role: unlocated(agent.role.clone()),
                api_key_sha256: agent.key_sha256.clone().map(unlocated),
                disabled: agent.disabled,
                sources: agent.sources.iter().cloned().map(unlocated).collect(),
                spiffe_ids: agent.spiffe_ids.iter().cloned().map(unlocated).collect(),
            })
        })
        .collect();
    let at = Reporter { origin: ORIGIN };
    let (mut registry, sources, spiffe) = compile_agents(&at, docs)?;
    for agent in agents {
        let (Some(digest), Some(until)) = (&agent.previous_key_sha256, agent.previous_key_until) else {
            continue;
        };
        let mut parsed = [0u8; 32];
        if hex::decode_to_slice(digest, &mut parsed).is_err() {
            return Err(AgentsFileError::unlocated(
                ORIGIN,
                format!(
                    "agent `{}` has a previous key digest that is not 64 hex characters",
                    agent.id
                ),
            ));
        }
        let until = SystemTime::UNIX_EPOCH + Duration::from_millis(until.timestamp_millis().max(0) as u64);
        if let Some(registered) = registry.get_mut(&agent.id) {
            registered.previous_key = Some((parsed, until));
        }
    }
    Ok(Compiled {
        registry,
        jwt: None,
        sources,
        spiffe,
    })
}

/// The agents of an agents file, for `clawgress control import-agents`:
/// the file is checked as the gateway checks it at load (errors at
/// `file:line:column`), its `jwt:` section is left where it is (it names
/// key files on the gateway's disk), and each agent keeps its key digest.
pub(super) fn from_file_text(text: &str, origin: &str) -> Result<Vec<clawgress_control::NewAgent>, AgentsFileError> {
    let at = Reporter { origin };
    let options = serde_saphyr::options! { with_snippet: false };
    let doc: super::schema::AgentsFileDoc =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| at.yaml(&e))?;
    let agents: Vec<clawgress_control::NewAgent> = doc
        .agents
        .iter()
        .map(|agent| {
            let agent = &agent.value;
            clawgress_control::NewAgent {
                id: agent.id.value.clone(),
                team: agent.team.value.clone(),
                project: agent.project.value.clone(),
                environment: agent.environment.value.clone(),
                role: agent.role.value.clone(),
                key_sha256: agent.api_key_sha256.as_ref().map(|d| d.value.to_ascii_lowercase()),
                disabled: agent.disabled,
                sources: agent.sources.iter().map(|s| s.value.clone()).collect(),
                spiffe_ids: agent.spiffe_ids.iter().map(|s| s.value.clone()).collect(),
            }
        })
        .collect();
    // The file's own rules, with its lines.
    compile_agents(&at, doc.agents)?;
    if agents.is_empty() {
        return Err(AgentsFileError::unlocated(
            origin,
            "the file lists no agents under `agents:`",
        ));
    }
    Ok(agents)
}
