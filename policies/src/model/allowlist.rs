//! `allowlist:`, `project_allowlist:` and `project_blocklist:` (seed §2, §11).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::diagnostic::{hinted, missing_key};
use crate::located::Located;
use crate::pattern::{DomainPattern, GroupName, RoleName};
use crate::values::{Expiry, Port, Rate};

/// The protocol a request uses towards its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Plain HTTP forwarded by the proxy (`GET http://...`).
    Http,
    /// HTTPS through a `CONNECT` tunnel.
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// What the gateway does with TLS inside an allowed `CONNECT` tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Relay the encrypted bytes untouched (default).
    #[default]
    Passthrough,
    /// Terminate TLS with the gateway's CA to inspect the requests.
    Intercept,
}

/// One allowlist entry: a destination and the ports, protocols and roles
/// through which it may be reached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct AllowRule {
    /// `api.openai.com` (exactly this name) or `*.example.com` (any name
    /// below example.com, not example.com itself).
    pub domain: Located<DomainPattern>,
    /// Destination ports, e.g. `[443]`. Required, at least one, 1-65535.
    pub ports: Ports,
    /// `[https]`, `[http]` or both. Required, at least one.
    pub protocols: Protocols,
    /// Most requests per window to this destination, e.g. `100/min`;
    /// capped at `rate_limits.per_domain.max`.
    pub rate_limit: Option<Located<Rate>>,
    /// Free text for readers of the policy.
    pub note: Option<String>,
    /// Why the destination is needed (seed §2.2).
    pub justification: Option<String>,
    /// Why the destination is needed (seed §11).
    pub reason: Option<String>,
    /// Who approved the entry.
    pub approved_by: Option<String>,
    /// After this date (end of day, UTC) or RFC 3339 time the entry no
    /// longer applies. It stays in the file, inactive, with a warning.
    pub expires: Option<Located<Expiry>>,
    /// Only agents with one of these roles may use the rule. Unset: any
    /// role the group allows.
    pub roles: Option<Roles>,
    /// Allow the name to resolve to a private, loopback or link-local
    /// address. Off by default so DNS cannot point an allowed name inside
    /// the network. `localhost` rules imply it.
    pub allow_private: bool,
    /// `passthrough` (default) or `intercept` for HTTPS tunnels.
    pub tls: TlsMode,
    /// Let the gateway open TLS to the destination for plain-HTTP requests
    /// from the agent.
    pub tls_origination: bool,
}

/// [`AllowRule`] as parsed, before the required keys are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    domain: Option<Located<DomainPattern>>,
    ports: Option<Ports>,
    protocols: Option<Protocols>,
    #[serde(default)]
    rate_limit: Option<Located<Rate>>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    justification: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    approved_by: Option<String>,
    #[serde(default)]
    expires: Option<Located<Expiry>>,
    #[serde(default)]
    roles: Option<Roles>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    tls_origination: bool,
}

impl TryFrom<RawRule> for AllowRule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, String> {
        Ok(AllowRule {
            domain: missing_key(
                raw.domain,
                "domain",
                "domain: api.example.com` or `domain: \"*.example.com\"",
            )?,
            ports: missing_key(raw.ports, "ports", "ports: [443]")?,
            protocols: missing_key(raw.protocols, "protocols", "protocols: [https]")?,
            rate_limit: raw.rate_limit,
            note: raw.note,
            justification: raw.justification,
            reason: raw.reason,
            approved_by: raw.approved_by,
            expires: raw.expires,
            roles: raw.roles,
            allow_private: raw.allow_private,
            tls: raw.tls,
            tls_origination: raw.tls_origination,
        })
    }
}

impl AllowRule {
    /// Whether the rule still applies at `now`.
    pub fn is_active(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires.as_ref().is_none_or(|e| !e.is_past(now))
    }

    /// Whether the rule opens a loopback name (`localhost` or a name under
    /// `.localhost`), which always resolves to this machine.
    pub fn is_localhost(&self) -> bool {
        let base = self.domain.base();
        base == "localhost" || base.ends_with(".localhost")
    }
}

/// A list that must not be empty; `what` names it in the error.
fn non_empty<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
    hint: &'static str,
) -> Result<Vec<T>, D::Error> {
    struct NonEmpty<T> {
        what: &'static str,
        hint: &'static str,
        marker: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for NonEmpty<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of {}", self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            if items.is_empty() {
                return Err(hinted(format!("the list of {} is empty", self.what), self.hint));
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(NonEmpty {
        what,
        hint,
        marker: std::marker::PhantomData,
    })
}

/// The ports of a rule: at least one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ports(pub Vec<Port>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(deserializer, "ports", "list at least one port, e.g. ports: [443]").map(Ports)
    }
}

/// The protocols of a rule: at least one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protocols(pub Vec<Protocol>);

impl Protocols {
    pub fn contains(&self, protocol: Protocol) -> bool {
        self.0.contains(&protocol)
    }
}

impl<'de> Deserialize<'de> for Protocols {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(
            deserializer,
            "protocols",
            "write protocols: [https], [http] or [http, https]",
        )
        .map(Protocols)
    }
}

/// A role restriction: at least one role (an empty list would let no agent
/// through, which is better written by removing the rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Roles(pub Vec<RoleName>);

impl Roles {
    pub fn allows(&self, role: &str) -> bool {
        self.0.iter().any(|r| r.as_str() == role)
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        non_empty(
            deserializer,
            "roles",
            "list the roles that may use it, e.g. roles: [scraper, ai-agent], or remove `roles` to allow every role",
        )
        .map(Roles)
    }
}

/// A named set of rules, optionally limited to some agent roles.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowGroup {
    /// The group's key under `allowlist:`.
    pub name: Located<GroupName>,
    /// Only agents with one of these roles may use any rule of the group.
    pub roles: Option<Roles>,
    /// Free text for readers of the policy.
    pub description: Option<String>,
    pub rules: Vec<AllowRule>,
}

/// The map form of a group: `{roles: [..], description: "..", rules: [..]}`.
#[derive(Deserialize)]
#[serde(try_from = "RawGroupSpec")]
struct GroupSpec {
    roles: Option<Roles>,
    description: Option<String>,
    rules: Vec<AllowRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupSpec {
    #[serde(default)]
    roles: Option<Roles>,
    #[serde(default)]
    description: Option<String>,
    rules: Option<Vec<AllowRule>>,
}

impl TryFrom<RawGroupSpec> for GroupSpec {
    type Error = String;

    fn try_from(raw: RawGroupSpec) -> Result<Self, String> {
        let rules = missing_key(raw.rules, "rules", "rules:` with the group's rules below it")?;
        Ok(GroupSpec {
            roles: raw.roles,
            description: raw.description,
            rules,
        })
    }
}

/// Reads one group in either form: the seed's plain list of rules, or the
/// map form that adds a role limit. A visitor (rather than an untagged enum)
/// keeps the parser's position, so errors inside still point at their line.
struct GroupBody;

impl<'de> DeserializeSeed<'de> for GroupBody {
    type Value = GroupSpec;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<GroupSpec, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GroupBody {
    type Value = GroupSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of rules, or a map with `roles`, `description` and `rules`")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<GroupSpec, A::Error> {
        let rules = Vec::<AllowRule>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(GroupSpec {
            roles: None,
            description: None,
            rules,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<GroupSpec, A::Error> {
        GroupSpec::deserialize(de::value::MapAccessDeserializer::new(map))
    }

    fn visit_unit<E: de::Error>(self) -> Result<GroupSpec, E> {
        Err(hinted(
            "the group is empty",
            "list its rules below it (`- domain: ...`), or remove the group",
        ))
    }
}

/// `allowlist:` — groups of rules in the order they are written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allowlist {
    pub groups: Vec<AllowGroup>,
}

impl<'de> Deserialize<'de> for Allowlist {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Groups;
        impl<'de> Visitor<'de> for Groups {
            type Value = Allowlist;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of group names to groups of rules")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Allowlist, A::Error> {
                // Duplicate keys are refused by the YAML layer with their
                // location, so every name here is unique.
                let mut groups = Vec::new();
                while let Some(name) = map.next_key::<Located<GroupName>>()? {
                    let spec = map.next_value_seed(GroupBody)?;
                    groups.push(AllowGroup {
                        name,
                        roles: spec.roles,
                        description: spec.description,
                        rules: spec.rules,
                    });
                }
                Ok(Allowlist { groups })
            }

            fn visit_unit<E: de::Error>(self) -> Result<Allowlist, E> {
                Ok(Allowlist::default())
            }
        }
        deserializer.deserialize_any(Groups)
    }
}

/// One `project_blocklist` entry: a destination no rule may open.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawBlockEntry")]
pub struct BlockEntry {
    /// `bad.example.com` or `*.example.com` (names below example.com).
    pub domain: Located<DomainPattern>,
    /// Why it is blocked, e.g. "Legal restriction".
    pub reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlockEntry {
    domain: Option<Located<DomainPattern>>,
    #[serde(default)]
    reason: Option<String>,
}

impl TryFrom<RawBlockEntry> for BlockEntry {
    type Error = String;

    fn try_from(raw: RawBlockEntry) -> Result<Self, String> {
        let domain = missing_key(raw.domain, "domain", "domain: \"*.example.com\"` or an exact name")?;
        Ok(BlockEntry {
            domain,
            reason: raw.reason,
        })
    }
}
