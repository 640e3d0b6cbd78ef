//! Identity by source address: each agent's `sources` (CIDRs) in the agents
//! file. On the transparent listener the source address is the only
//! identity a redirected connection has; on the explicit proxy an agent
//! with `sources` must also send its credential from one of them, so a
//! stolen key is useless elsewhere.
//!
//! CIDRs of different agents may not overlap (refused at load with both
//! places), so an address names at most one agent and the lookup is a
//! binary search.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

/// One agent's CIDR, where it was written.
pub(super) struct SourceEntry {
    pub net: IpNet,
    pub agent: Arc<str>,
    pub at: Location,
}

/// Every agent's CIDRs, sorted by network address, none overlapping.
#[derive(Debug, Default)]
pub(super) struct SourceMap {
    nets: Vec<(IpNet, Arc<str>)>,
}

/// Why a `sources` entry is refused: the entry's place, the message and a
/// hint.
pub(super) type SourceProblem = (Location, String, String);

impl SourceMap {
    /// Checks and indexes the entries; the first overlap between two agents
    /// is an error naming both lines.
    pub fn build(mut entries: Vec<SourceEntry>) -> Result<SourceMap, SourceProblem> {
        // Sorted by first address, widest first: a CIDR that overlaps an
        // earlier one starts inside it (CIDRs nest or are disjoint).
        // (IPv4 sorts before IPv6.)
        entries.sort_by_key(|e| (e.net.network(), e.net.prefix_len()));
        let mut covering: Option<&SourceEntry> = None;
        for entry in &entries {
            if let Some(earlier) = covering
                && earlier.net.contains(&entry.net.network())
            {
                if earlier.agent != entry.agent {
                    return Err((
                        entry.at,
                        format!(
                            "source {} of agent `{}` overlaps {} of agent `{}`{}",
                            entry.net,
                            entry.agent,
                            earlier.net,
                            earlier.agent,
                            at_line(earlier.at)
                        ),
                        "an address must name one agent: give each agent its own, disjoint CIDRs".to_string(),
                    ));
                }
                // The same agent twice: the wider one covers it.
                continue;
            }
            covering = Some(entry);
        }
        let mut nets: Vec<(IpNet, Arc<str>)> = entries.into_iter().map(|e| (e.net, e.agent)).collect();
        // Within one agent a narrower CIDR inside a wider one adds nothing.
        nets.dedup_by(|later, earlier| earlier.1 == later.1 && earlier.0.contains(&later.0));
        Ok(SourceMap { nets })
    }

    /// The agent whose CIDR holds `ip` (IPv4-mapped IPv6 read as IPv4).
    pub fn agent_for(&self, ip: IpAddr) -> Option<&Arc<str>> {
        let ip = ip.to_canonical();
        let after = self.nets.partition_point(|(net, _)| net.network() <= ip);
        let (net, agent) = self.nets.get(after.checked_sub(1)?)?;
        net.contains(&ip).then_some(agent)
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }
}

/// ` (line N)` where the entry was written; nothing for agents that come
/// from the control store, which have no lines.
pub(super) fn at_line(at: Location) -> String {
    if at.line() > 0 {
        format!(" (line {})", at.line())
    } else {
        String::new()
    }
}

/// Parses one `sources` entry: a CIDR (or a single address) with no host
/// bits set, so `10.0.0.5/24` is caught as the likely typo it is.
pub(super) fn parse(value: &Spanned<String>) -> Result<IpNet, SourceProblem> {
    let text = value.value.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err((
                    value.referenced,
                    format!("`{text}` is not a CIDR"),
                    "write an address range like 198.18.1.0/24 or fd00::/64, or one address".to_string(),
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err((
            value.referenced,
            format!("`{text}` has host bits set"),
            format!("did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}
