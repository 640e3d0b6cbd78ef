//! The agents listed in the agents file, with prebuilt identities.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Identity, IdentityError};

pub(super) type KeyDigest = [u8; 32];

#[derive(Debug)]
pub(super) struct RegisteredAgent {
    /// Built once at load so that API-key requests only clone an `Arc`.
    pub identity: Arc<Identity>,
    /// `None`: the agent can only authenticate with a JWT.
    pub key_digest: Option<KeyDigest>,
    /// The key before a rotation in the control store, accepted until the
    /// end of its grace period (checked at each request, so it stops on
    /// time on every replica without another publish).
    pub previous_key: Option<(KeyDigest, std::time::SystemTime)>,
    pub disabled: bool,
    /// Where the agent may connect from; empty: anywhere.
    pub sources: Vec<ipnet::IpNet>,
    /// The same identity, proven by a client certificate (mTLS listener).
    pub cert_identity: Arc<Identity>,
    /// The agent lists `spiffe_ids`: then only those name it, never its
    /// certificate's CN.
    pub has_spiffe_ids: bool,
}

#[derive(Debug, Default)]
pub(super) struct AgentRegistry {
    agents: HashMap<Arc<str>, RegisteredAgent>,
}

impl AgentRegistry {
    /// The caller (the agents-file compiler) has already rejected duplicates.
    pub fn insert(&mut self, agent: RegisteredAgent) {
        self.agents.insert(agent.identity.agent_id.clone(), agent);
    }

    pub fn get(&self, agent_id: &str) -> Option<&RegisteredAgent> {
        self.agents.get(agent_id)
    }

    pub fn get_mut(&mut self, agent_id: &str) -> Option<&mut RegisteredAgent> {
        self.agents.get_mut(agent_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegisteredAgent> {
        self.agents.values()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn disabled_count(&self) -> usize {
        self.agents.values().filter(|a| a.disabled).count()
    }

    pub fn verify_api_key(&self, agent_id: &str, api_key: &[u8]) -> Result<Arc<Identity>, IdentityError> {
        // Hash before the lookup so that an unknown agent costs the same as a known one.
        let presented: KeyDigest = Sha256::digest(api_key).into();
        let agent = self.agents.get(agent_id).ok_or(IdentityError::UnknownAgent)?;
        let current = agent
            .key_digest
            .as_ref()
            .is_some_and(|stored| digests_equal(&presented, stored));
        let previous = || {
            agent.previous_key.as_ref().is_some_and(|(stored, until)| {
                std::time::SystemTime::now() < *until && digests_equal(&presented, stored)
            })
        };
        if !current && !previous() {
            return Err(IdentityError::BadApiKey);
        }
        // Checked after the key so that "disabled" is only revealed to the key's holder.
        if agent.disabled {
            return Err(IdentityError::Disabled);
        }
        Ok(agent.identity.clone())
    }
}

/// Constant-time comparison: the time taken must not depend on where the digests differ.
fn digests_equal(a: &KeyDigest, b: &KeyDigest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}
