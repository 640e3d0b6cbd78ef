//! Deciding whether one request's destination is allowed.
//!
//! [`CompiledPolicy::compile`] turns a bundle into hash tables once per load;
//! [`CompiledPolicy::evaluate`] then costs one lookup per label of the host
//! (exact name, then each parent suffix for wildcards), with no regex, no
//! scan over all rules and no allocation.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::load::PolicyBundle;
use crate::model::{AllowRule, PROJECT_GROUP, Roles};
pub use crate::model::{Protocol, TlsMode};
use crate::pattern::DomainPattern;
pub use crate::values::Rate;

/// One request as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct MatchRequest<'a> {
    /// The destination host, already normalized with
    /// [`normalize_domain`](crate::domain::normalize_domain).
    pub host: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    /// The agent's role from its identity (`scraper`, `ai-agent`).
    pub role: &'a str,
}

/// The verdict for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchOutcome {
    Allow(AllowedBy),
    Deny(Denial),
}

/// The rule that let a request through.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedBy {
    /// `allowlist.ai_providers[0]` or `project_allowlist[2]`.
    pub policy_id: Arc<str>,
    /// `ai_providers` or `project_allowlist`.
    pub group: Arc<str>,
    /// The destination may resolve to a private address: the rule says
    /// `allow_private: true` or names `localhost`.
    pub private_ok: bool,
    pub tls: TlsMode,
    /// The gateway may upgrade a plain-HTTP request to this rule's HTTPS.
    pub tls_origination: bool,
    /// The rule's own rate, capped at `rate_limits.per_domain.max`. `None`
    /// when the rule sets none (or rules may not): use
    /// `rate_limits.per_domain.default`.
    pub rate_limit: Option<Rate>,
}

/// Why a request was refused, and by which entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    /// `dns.block_patterns`, `project_blocklist[i]`, the rule that came
    /// closest to allowing, or `default_deny`.
    pub policy_id: Arc<str>,
}

/// The stable reason codes of a policy denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    BlockedPattern,
    Blocklisted,
    DomainNotInAllowlist,
    PortNotAllowed,
    ProtocolNotAllowed,
    RoleNotAllowed,
}

impl DenyReason {
    /// Whether an operator's temporary entry may lift this denial. Blocks
    /// (`blocklisted`, `blocked_pattern`) and role limits never are.
    pub fn is_open_to_temporary(&self) -> bool {
        matches!(
            self,
            DenyReason::DomainNotInAllowlist | DenyReason::PortNotAllowed | DenyReason::ProtocolNotAllowed
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::BlockedPattern => "blocked_pattern",
            DenyReason::Blocklisted => "blocklisted",
            DenyReason::DomainNotInAllowlist => "domain_not_in_allowlist",
            DenyReason::PortNotAllowed => "port_not_allowed",
            DenyReason::ProtocolNotAllowed => "protocol_not_allowed",
            DenyReason::RoleNotAllowed => "role_not_allowed",
        }
    }
}

/// Exact names and `*.` suffixes, each mapped to a value.
struct PatternTable<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, T>,
}

impl<T> Default for PatternTable<T> {
    fn default() -> Self {
        PatternTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> PatternTable<T> {
    fn slot(&mut self, pattern: &DomainPattern) -> std::collections::hash_map::Entry<'_, Box<str>, T> {
        match pattern {
            DomainPattern::Exact(name) => self.exact.entry(name.as_str().into()),
            DomainPattern::Wildcard { suffix } => self.wildcard.entry(suffix.as_str().into()),
        }
    }

    /// Every entry covering `host`, most specific first: the exact name,
    /// then wildcards from the longest suffix to the shortest. A wildcard is
    /// only tried on a proper suffix, so `*.example.com` never covers
    /// `example.com` itself.
    fn covering<'s>(&'s self, host: &'s str) -> impl Iterator<Item = &'s T> + 's {
        let parents = host.match_indices('.').map(move |(dot, _)| &host[dot + 1..]);
        self.exact
            .get(host)
            .into_iter()
            .chain(parents.filter_map(|suffix| self.wildcard.get(suffix)))
    }
}

/// How far a rule got before refusing a request. Checks run port, then
/// protocol, then role; the denial reports the rule that got furthest, so
/// `role_not_allowed` > `protocol_not_allowed` > `port_not_allowed`: the
/// most specific explanation of what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    Port,
    Protocol,
    Role,
}

impl Miss {
    fn reason(self) -> DenyReason {
        match self {
            Miss::Port => DenyReason::PortNotAllowed,
            Miss::Protocol => DenyReason::ProtocolNotAllowed,
            Miss::Role => DenyReason::RoleNotAllowed,
        }
    }
}

struct CompiledRule {
    allowed: AllowedBy,
    ports: Box<[u16]>,
    http: bool,
    https: bool,
    group_roles: Option<Arc<[Box<str>]>>,
    rule_roles: Option<Box<[Box<str>]>>,
    ends_at: Option<DateTime<Utc>>,
}

impl CompiledRule {
    fn check(&self, req: &MatchRequest<'_>) -> Result<(), Miss> {
        if !self.ports.contains(&req.port) {
            return Err(Miss::Port);
        }
        let protocol_ok = match req.protocol {
            Protocol::Http => self.http,
            Protocol::Https => self.https,
        };
        if !protocol_ok {
            return Err(Miss::Protocol);
        }
        let role_in = |roles: &[Box<str>]| roles.iter().any(|r| **r == *req.role);
        if !self.group_roles.as_deref().is_none_or(role_in) || !self.rule_roles.as_deref().is_none_or(role_in) {
            return Err(Miss::Role);
        }
        Ok(())
    }

    fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.ends_at.is_none_or(|ends| now < ends)
    }
}

/// A policy bundle prepared for fast matching. Build it once per load.
pub struct CompiledPolicy {
    version: Arc<str>,
    rules: Vec<CompiledRule>,
    /// Indices into `rules`, in document order within each entry.
    allow: PatternTable<Vec<usize>>,
    block_patterns: PatternTable<()>,
    blocklist: PatternTable<Arc<str>>,
    static_hosts: HashMap<Box<str>, IpAddr>,
    block_patterns_id: Arc<str>,
    default_deny_id: Arc<str>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .finish()
    }
}

fn role_list(roles: &Roles) -> impl Iterator<Item = Box<str>> + '_ {
    roles.0.iter().map(|r| Box::from(r.as_str()))
}

impl CompiledPolicy {
    pub fn compile(bundle: &PolicyBundle) -> CompiledPolicy {
        let doc = &bundle.document;
        let mut compiled = CompiledPolicy {
            version: Arc::from(bundle.version.as_str()),
            rules: Vec::new(),
            allow: PatternTable::default(),
            block_patterns: PatternTable::default(),
            blocklist: PatternTable::default(),
            static_hosts: doc
                .dns
                .static_hosts
                .iter()
                .map(|(name, ip)| (Box::from(name.as_str()), *ip))
                .collect(),
            block_patterns_id: Arc::from("dns.block_patterns"),
            default_deny_id: Arc::from("default_deny"),
        };
        let per_domain = &doc.rate_limits.per_domain;
        let rate_for = |rule: &AllowRule| {
            // Compare per second so 10/s and 500/min are capped correctly.
            let own = rule
                .rate_limit
                .as_ref()
                .map(|r| r.value)
                .filter(|_| per_domain.customizable)?;
            Some(if own.per_second() > per_domain.max.per_second() {
                per_domain.max
            } else {
                own
            })
        };
        let mut add = |group: &Arc<str>, group_roles: &Option<Arc<[Box<str>]>>, policy_id: String, rule: &AllowRule| {
            let protocols = &rule.protocols;
            compiled
                .allow
                .slot(&rule.domain)
                .or_default()
                .push(compiled.rules.len());
            compiled.rules.push(CompiledRule {
                allowed: AllowedBy {
                    policy_id: Arc::from(policy_id),
                    group: group.clone(),
                    private_ok: rule.allow_private || rule.is_localhost(),
                    tls: rule.tls,
                    tls_origination: rule.tls_origination,
                    rate_limit: rate_for(rule),
                },
                ports: rule.ports.0.iter().map(|p| p.get()).collect(),
                http: protocols.contains(Protocol::Http),
                https: protocols.contains(Protocol::Https),
                group_roles: group_roles.clone(),
                rule_roles: rule.roles.as_ref().map(|r| role_list(r).collect()),
                ends_at: rule.expires.as_ref().map(|e| e.ends_at()),
            });
        };
        for group in &doc.allowlist.groups {
            let name: Arc<str> = Arc::from(group.name.as_str());
            let roles = group.roles.as_ref().map(|r| role_list(r).collect());
            for (i, rule) in group.rules.iter().enumerate() {
                add(&name, &roles, format!("allowlist.{name}[{i}]"), rule);
            }
        }
        let project: Arc<str> = Arc::from(PROJECT_GROUP);
        for (i, rule) in doc.project_allowlist.iter().enumerate() {
            add(&project, &None, format!("{PROJECT_GROUP}[{i}]"), rule);
        }
        for pattern in &doc.dns.block_patterns {
            compiled.block_patterns.slot(pattern).or_insert(());
        }
        for (i, entry) in doc.project_blocklist.iter().enumerate() {
            // The first entry for a pattern names the denial.
            compiled
                .blocklist
                .slot(&entry.domain)
                .or_insert_with(|| Arc::from(format!("project_blocklist[{i}]")));
        }
        compiled
    }

    /// The verdict for `req` at time `now` (rules past `expires` are
    /// ignored). Block patterns, then the blocklist, win over every allow.
    /// Among rules covering the host, any one that allows wins (exact names
    /// first, then wildcards from the most specific, in document order).
    pub fn evaluate(&self, req: &MatchRequest<'_>, now: DateTime<Utc>) -> MatchOutcome {
        if self.block_patterns.covering(req.host).next().is_some() {
            return deny(DenyReason::BlockedPattern, &self.block_patterns_id);
        }
        if let Some(policy_id) = self.blocklist.covering(req.host).next() {
            return deny(DenyReason::Blocklisted, policy_id);
        }
        let mut closest: Option<(Miss, &CompiledRule)> = None;
        for rule in self.allow.covering(req.host).flatten().map(|&i| &self.rules[i]) {
            if !rule.is_active(now) {
                continue;
            }
            match rule.check(req) {
                Ok(()) => return MatchOutcome::Allow(rule.allowed.clone()),
                Err(miss) => {
                    if closest.is_none_or(|(best, _)| miss > best) {
                        closest = Some((miss, rule));
                    }
                }
            }
        }
        match closest {
            Some((miss, rule)) => deny(miss.reason(), &rule.allowed.policy_id),
            None => deny(DenyReason::DomainNotInAllowlist, &self.default_deny_id),
        }
    }

    /// The verdict for a bare name, as the DNS control server needs it: a
    /// DNS question carries no port, protocol or role, so any active rule
    /// covering `host` allows it (the gateway checks the rest when the agent
    /// connects). Block patterns and the blocklist win first, as in
    /// [`evaluate`](Self::evaluate). Among covering rules, one that allows
    /// private targets is preferred, so the name may resolve wherever some
    /// rule lets the agent go.
    pub fn evaluate_name(&self, host: &str, now: DateTime<Utc>) -> MatchOutcome {
        if self.block_patterns.covering(host).next().is_some() {
            return deny(DenyReason::BlockedPattern, &self.block_patterns_id);
        }
        if let Some(policy_id) = self.blocklist.covering(host).next() {
            return deny(DenyReason::Blocklisted, policy_id);
        }
        let mut active = self
            .allow
            .covering(host)
            .flatten()
            .map(|&i| &self.rules[i])
            .filter(|rule| rule.is_active(now));
        let Some(first) = active.next() else {
            return deny(DenyReason::DomainNotInAllowlist, &self.default_deny_id);
        };
        let chosen = if first.allowed.private_ok {
            first
        } else {
            active.find(|rule| rule.allowed.private_ok).unwrap_or(first)
        };
        MatchOutcome::Allow(chosen.allowed.clone())
    }

    /// The address `dns.static_hosts` maps `host` (normalized) to.
    pub fn static_host(&self, host: &str) -> Option<IpAddr> {
        self.static_hosts.get(host).copied()
    }

    /// The bundle's version (first 12 hex digits of its SHA-256).
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn deny(reason: DenyReason, policy_id: &Arc<str>) -> MatchOutcome {
    MatchOutcome::Deny(Denial {
        reason,
        policy_id: policy_id.clone(),
    })
}

#[cfg(test)]
mod tests;
