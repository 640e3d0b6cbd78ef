//! Names written in a policy: domain patterns (`api.openai.com`,
//! `*.example.com`), exact host names, role names and group names.
//!
//! They are validated and normalized when the file is parsed, so the matcher
//! only ever compares normalized bytes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::domain::normalize_domain;
use crate::values::ValueError;

const DOMAIN_HINT: &str = "write an exact name like api.example.com or a wildcard like *.example.com";

/// Which names a rule, block entry or pin applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// Exactly this normalized name.
    Exact(String),
    /// Any name with at least one more label in front of `suffix`:
    /// `*.example.com` covers `a.example.com` and `a.b.example.com` but not
    /// `example.com` itself.
    Wildcard { suffix: String },
}

impl DomainPattern {
    /// Whether `host` (already normalized) is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            DomainPattern::Exact(name) => host == name,
            DomainPattern::Wildcard { suffix } => host
                .strip_suffix(suffix.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
        }
    }

    /// Whether every name this pattern covers is also covered by `other`.
    pub fn is_covered_by(&self, other: &DomainPattern) -> bool {
        match (self, other) {
            (DomainPattern::Exact(name), _) => other.matches(name),
            (DomainPattern::Wildcard { suffix }, DomainPattern::Wildcard { suffix: outer }) => {
                suffix == outer || DomainPattern::Wildcard { suffix: outer.clone() }.matches(suffix)
            }
            (DomainPattern::Wildcard { .. }, DomainPattern::Exact(_)) => false,
        }
    }

    /// The name the pattern is anchored on: the exact name, or the suffix
    /// after `*.`.
    pub fn base(&self) -> &str {
        match self {
            DomainPattern::Exact(name) => name,
            DomainPattern::Wildcard { suffix } => suffix,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, DomainPattern::Wildcard { .. })
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(name) => f.write_str(name),
            DomainPattern::Wildcard { suffix } => write!(f, "*.{suffix}"),
        }
    }
}

impl FromStr for DomainPattern {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = |problem: String| ValueError {
            problem,
            hint: DOMAIN_HINT.to_string(),
        };
        let trimmed = text.trim();
        if trimmed == "*" || trimmed == "*." {
            return Err(ValueError {
                problem: "a lone '*' would allow every destination".to_string(),
                hint: "list each domain, or a wildcard under a name you control like *.example.com".to_string(),
            });
        }
        for (index, label) in trimmed.split('.').enumerate() {
            if label.contains('*') {
                let problem = if label != "*" {
                    format!("'{trimmed}': a wildcard must be a whole label ('*.example.com'), not part of one")
                } else if index > 0 {
                    format!("'{trimmed}': only the leftmost label may be a wildcard")
                } else {
                    continue;
                };
                return Err(bad(problem));
            }
        }
        let (wildcard, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let unbracketed = rest.trim_start_matches('[').trim_end_matches(']');
        if unbracketed.parse::<std::net::IpAddr>().is_ok() {
            return Err(ip_literal(trimmed));
        }
        if rest.contains('/') || rest.contains(':') {
            return Err(bad(format!(
                "'{trimmed}' is a URL or has a port; only the host name belongs here"
            )));
        }
        let name = normalize_domain(rest).map_err(|e| bad(format!("'{trimmed}': {}", e.problem)))?;
        // An all-digit last label is an IPv4 literal (or a decimal/hex form
        // of one); rules name hosts, addresses are reached via static_hosts.
        let last = name.rsplit('.').next().unwrap_or(&name);
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ip_literal(trimmed));
        }
        Ok(if wildcard {
            DomainPattern::Wildcard { suffix: name }
        } else {
            DomainPattern::Exact(name)
        })
    }
}

fn ip_literal(text: &str) -> ValueError {
    ValueError {
        problem: format!("'{text}' is an IP address, not a domain name"),
        hint: "name the host and map the name to the address in dns.static_hosts".to_string(),
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An exact, normalized host name (no wildcard), as used by
/// `dns.static_hosts`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        match text.parse::<DomainPattern>()? {
            DomainPattern::Exact(name) => Ok(HostName(name)),
            DomainPattern::Wildcard { .. } => Err(ValueError {
                problem: format!("'{text}' is a wildcard; a static host maps one exact name"),
                hint: "write the exact name, like api.example.com".to_string(),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// Checks a short identifier: letters, digits, `_` and `-`, at most 64
/// characters. Used for role and group names, which appear in policy ids
/// and metric labels and so must not contain dots, brackets or spaces.
fn check_identifier(text: &str, what: &str, example: &str) -> Result<(), ValueError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValueError {
            problem: format!("'{text}' is not a valid {what}"),
            hint: format!("use letters, digits, '_' and '-' (at most 64), like {example}"),
        })
    }
}

/// An agent role (`scraper`, `ai-agent`) as the agent registry assigns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RoleName(String);

impl RoleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RoleName {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        check_identifier(text, "role name", "scraper or ai-agent")?;
        Ok(RoleName(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// The name of an allowlist group (`ai_providers`); it becomes part of
/// policy ids such as `allowlist.ai_providers[0]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GroupName(String);

impl GroupName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for GroupName {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        check_identifier(text, "group name", "ai_providers")?;
        Ok(GroupName(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
