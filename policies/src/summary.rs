//! What `clawgress policy check FILE` prints: the shape of a bundle at a
//! glance, then its warnings.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::diagnostic::Diagnostic;
use crate::load::PolicyBundle;
use crate::model::{AllowRule, PROJECT_GROUP};

/// Counts for one allowlist group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub name: String,
    /// The roles the group is limited to, empty when open to all.
    pub roles: Vec<String>,
    pub rules: usize,
    pub active: usize,
    pub expired: usize,
}

/// A bundle's shape, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    pub source: String,
    pub version: String,
    pub enforcement: &'static str,
    pub fail_mode: &'static str,
    /// In document order; `project_allowlist` last when present.
    pub groups: Vec<GroupSummary>,
    pub active_rules: usize,
    pub expired_rules: usize,
    pub blocklist_entries: usize,
    pub block_patterns: usize,
    pub static_hosts: usize,
    pub warnings: Vec<Diagnostic>,
}

/// The summary of `bundle`, judging expiry by the clock.
pub fn summary(bundle: &PolicyBundle) -> PolicySummary {
    summary_at(bundle, Utc::now())
}

/// The summary of `bundle`, judging expiry at `now`.
pub fn summary_at(bundle: &PolicyBundle, now: DateTime<Utc>) -> PolicySummary {
    let doc = &bundle.document;
    let count = |name: &str, roles: Vec<String>, rules: &[AllowRule]| {
        let active = rules.iter().filter(|r| r.is_active(now)).count();
        GroupSummary {
            name: name.to_string(),
            roles,
            rules: rules.len(),
            active,
            expired: rules.len() - active,
        }
    };
    let mut groups: Vec<GroupSummary> = doc
        .allowlist
        .groups
        .iter()
        .map(|g| {
            let roles = g
                .roles
                .as_ref()
                .map(|r| r.0.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default();
            count(g.name.as_str(), roles, &g.rules)
        })
        .collect();
    if !doc.project_allowlist.is_empty() {
        groups.push(count(PROJECT_GROUP, Vec::new(), &doc.project_allowlist));
    }
    PolicySummary {
        source: bundle.source.clone(),
        version: bundle.version.clone(),
        enforcement: doc.egress.enforcement.as_str(),
        fail_mode: doc.egress.fail_mode.as_str(),
        active_rules: groups.iter().map(|g| g.active).sum(),
        expired_rules: groups.iter().map(|g| g.expired).sum(),
        groups,
        blocklist_entries: doc.project_blocklist.len(),
        block_patterns: doc.dns.block_patterns.len(),
        static_hosts: doc.dns.static_hosts.len(),
        warnings: bundle.warnings.clone(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.warnings.len() {
            0 => "OK".to_string(),
            n => format!("OK with {}", plural(n, "warning", "warnings")),
        };
        writeln!(f, "{}: {verdict} (version {})", self.source, self.version)?;
        writeln!(
            f,
            "  default action: deny; enforcement: {}; fail mode: {}",
            self.enforcement, self.fail_mode
        )?;
        writeln!(
            f,
            "  allowlist: {} with {} ({} active, {} expired)",
            plural(self.groups.len(), "group", "groups"),
            plural(self.active_rules + self.expired_rules, "rule", "rules"),
            self.active_rules,
            self.expired_rules
        )?;
        let width = self.groups.iter().map(|g| g.name.len()).max().unwrap_or(0);
        for group in &self.groups {
            write!(
                f,
                "    {:<width$}  {}",
                group.name,
                plural(group.rules, "rule", "rules")
            )?;
            if group.expired > 0 {
                write!(f, " ({} expired)", group.expired)?;
            }
            if !group.roles.is_empty() {
                write!(f, "  roles: {}", group.roles.join(", "))?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  blocked: {} in project_blocklist, {} in dns.block_patterns",
            plural(self.blocklist_entries, "entry", "entries"),
            plural(self.block_patterns, "pattern", "patterns")
        )?;
        writeln!(f, "  static hosts: {}", self.static_hosts)?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
