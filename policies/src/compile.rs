//! The policy compiled for the network layers under the gateway: pure
//! functions from a loaded bundle to the text a tool loads (issue 13 §3).
//!
//! ```text
//! "nftables".parse::<Target>()  ->  Target::Nftables
//! nftables::render(&bundle, &EdgeSettings)  ->  a ruleset for `nft -f`
//! cilium::render(&bundle, &CiliumSettings)  ->  file name -> Cilium manifest
//! ```
//!
//! The gateway stays the place where a policy is decided; a compiled target
//! only keeps traffic from going around it. Each target has its own module
//! and its own settings (what the policy cannot know: subnets, interfaces,
//! the gateway's ports). The command line reads and writes files.

pub mod cilium;
pub mod nftables;

use std::fmt;
use std::str::FromStr;

use crate::diagnostic::PolicyError;

/// What a policy can be compiled to (`clawgress policy compile --target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The host edge: one nftables ruleset for a gateway host in front of a
    /// workload subnet.
    Nftables,
    /// Kubernetes with Cilium: network policies and the egress gateway
    /// policy, a directory of manifests (`cilium/`).
    Cilium,
}

impl Target {
    /// Every target, in the order they are listed to people.
    pub const ALL: [Target; 2] = [Target::Nftables, Target::Cilium];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Nftables => "nftables",
            Target::Cilium => "cilium",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wanted = text.trim().to_ascii_lowercase();
        Target::ALL
            .into_iter()
            .find(|target| target.as_str() == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = Target::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown target '{text}'; the known targets are: {}", known.join(", "))
            })
    }
}

/// Why a policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A setting is wrong or contradicts another. The message names the
    /// `clawgress policy compile` flag that sets it and what to write.
    #[error("{0}")]
    Setting(String),
    /// Policy entries the target cannot express, each at its place in the
    /// file (`PolicyError::Invalid`), reported like a load error.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

#[cfg(test)]
mod tests;
