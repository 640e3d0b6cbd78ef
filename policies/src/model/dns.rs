//! `dns:` — how destination names are resolved and which are never
//! resolved (seed §6.1).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::diagnostic::hinted;
use crate::located::Located;
use crate::pattern::{DomainPattern, HostName};
use crate::values::DurationSpec;

/// `dns:` — the gateway resolves every destination itself, so the address
/// it checks is the address it dials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsPolicy {
    /// `internal` (default): the gateway's own resolver, using the system's
    /// nameservers unless `nameservers` is set. `system`: the operating
    /// system's resolver.
    pub resolver: ResolverKind,
    /// Upstream nameservers for the internal resolver, e.g.
    /// `["127.0.0.1:5353", "10.0.0.2"]` (port 53 when none is given). Empty:
    /// the system's nameservers.
    #[serde(deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// Record every lookup in the audit trail (DNS exfiltration shows up as
    /// many odd names).
    pub query_logging: bool,
    /// Refuse answers that do not match the question.
    pub response_validation: bool,
    /// Names that are never resolved nor forwarded, whatever the allowlist
    /// says: `*.onion` (any name below onion) or an exact name.
    #[serde(deserialize_with = "block_patterns")]
    pub block_patterns: Vec<Located<DomainPattern>>,
    /// How long a positive answer is reused (capped by the record's TTL).
    pub cache_ttl: DurationSpec,
    /// How long a "no such name" answer is reused.
    pub negative_cache_ttl: DurationSpec,
    /// Fixed answers, `name: address`, used instead of DNS. A mapped name
    /// may point at a private address: mapping it is the explicit allow.
    #[serde(deserialize_with = "static_hosts")]
    pub static_hosts: BTreeMap<String, IpAddr>,
}

/// The seed's §6.1 block patterns.
fn seed_block_patterns() -> Vec<Located<DomainPattern>> {
    ["onion", "i2p", "bit"]
        .into_iter()
        .map(|suffix| {
            Located::unlocated(DomainPattern::Wildcard {
                suffix: suffix.to_string(),
            })
        })
        .collect()
}

/// `block_patterns:` with nothing under it keeps the seed's patterns; an
/// explicit `[]` is needed to drop them.
fn block_patterns<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Located<DomainPattern>>, D::Error> {
    Ok(Option::deserialize(deserializer)?.unwrap_or_else(seed_block_patterns))
}

impl Default for DnsPolicy {
    fn default() -> Self {
        DnsPolicy {
            resolver: ResolverKind::Internal,
            nameservers: Vec::new(),
            query_logging: true,
            response_validation: true,
            block_patterns: seed_block_patterns(),
            cache_ttl: DurationSpec::from_secs(300),
            negative_cache_ttl: DurationSpec::from_secs(60),
            static_hosts: BTreeMap::new(),
        }
    }
}

/// Which resolver answers name lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolverKind {
    #[default]
    Internal,
    System,
}

/// An upstream nameserver address.
struct Nameserver(SocketAddr);

impl<'de> Deserialize<'de> for Nameserver {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let trimmed = text.trim();
        if let Ok(addr) = trimmed.parse::<SocketAddr>() {
            return Ok(Nameserver(addr));
        }
        let bare = trimmed.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|ip| Nameserver(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                hinted(
                    format!("'{text}' is not a nameserver address"),
                    "write an IP address with an optional port, like 127.0.0.1:5353, 10.0.0.2 or [::1]:53",
                )
            })
    }
}

fn nameservers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let listed: Option<Vec<Nameserver>> = Option::deserialize(deserializer)?;
    Ok(listed.unwrap_or_default().into_iter().map(|n| n.0).collect())
}

/// An address in `static_hosts`, with a message that names the mistake.
struct StaticAddress(IpAddr);

impl<'de> Deserialize<'de> for StaticAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bare = text.trim().trim_start_matches('[').trim_end_matches(']');
        bare.parse().map(StaticAddress).map_err(|_| {
            hinted(
                format!("'{text}' is not an IP address"),
                "write one IPv4 or IPv6 address without a port, like 127.0.0.1 or ::1",
            )
        })
    }
}

/// Reads `static_hosts`, normalizing every name.
fn static_hosts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, IpAddr>, D::Error> {
    struct Hosts;
    impl<'de> Visitor<'de> for Hosts {
        type Value = BTreeMap<String, IpAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of host names to IP addresses")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut hosts = BTreeMap::new();
            while let Some(name) = map.next_key::<HostName>()? {
                let StaticAddress(ip) = map.next_value()?;
                // Two spellings of one name (`API.example.com` and
                // `api.example.com`) are distinct YAML keys but the same host.
                if hosts.insert(name.as_str().to_string(), ip).is_some() {
                    return Err(hinted(
                        format!("static_hosts maps {name} twice (names are compared case-insensitively)"),
                        "keep one entry per name",
                    ));
                }
            }
            Ok(hosts)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }
    deserializer.deserialize_any(Hosts)
}
