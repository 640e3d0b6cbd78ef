//! What changed between two policy versions: a unified diff of the YAML a
//! person can read, and the allowlist and blocklist changes as data.

use std::collections::BTreeMap;

use clawgress_policies::model::{PROJECT_GROUP, PolicyDocument};
use serde::Serialize;

/// Lines of context around each change in the unified diff.
const CONTEXT: usize = 3;

/// `--- a` / `+++ b` and the hunks; empty when the texts are equal.
pub fn unified(a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(CONTEXT)
        .header(a_name, b_name)
        .to_string()
}

/// One allow rule, as compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleView {
    pub group: String,
    pub domain: String,
    pub rule: serde_json::Value,
}

/// A rule whose domain stayed and whose settings changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleChange {
    pub group: String,
    pub domain: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// The allowlist and blocklist changes from one version to another.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AllowlistChanges {
    pub added: Vec<RuleView>,
    pub removed: Vec<RuleView>,
    pub changed: Vec<RuleChange>,
    pub blocklist_added: Vec<String>,
    pub blocklist_removed: Vec<String>,
}

impl AllowlistChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.blocklist_added.is_empty()
            && self.blocklist_removed.is_empty()
    }

    /// One line per change: `+ group domain ports protocols`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let show = |rule: &serde_json::Value| {
            format!(
                "ports {} protocols {}{}",
                rule["ports"],
                rule["protocols"],
                rule.get("expires")
                    .filter(|v| !v.is_null())
                    .map_or(String::new(), |e| format!(" expires {e}"))
            )
        };
        for rule in &self.added {
            out.push_str(&format!(
                "+ allow {} {} ({})\n",
                rule.group,
                rule.domain,
                show(&rule.rule)
            ));
        }
        for rule in &self.removed {
            out.push_str(&format!(
                "- allow {} {} ({})\n",
                rule.group,
                rule.domain,
                show(&rule.rule)
            ));
        }
        for change in &self.changed {
            out.push_str(&format!(
                "~ allow {} {} ({} -> {})\n",
                change.group,
                change.domain,
                show(&change.before),
                show(&change.after)
            ));
        }
        for domain in &self.blocklist_added {
            out.push_str(&format!("+ block {domain}\n"));
        }
        for domain in &self.blocklist_removed {
            out.push_str(&format!("- block {domain}\n"));
        }
        if out.is_empty() {
            out.push_str("no allowlist or blocklist change\n");
        }
        out
    }
}

fn rules(doc: &PolicyDocument) -> BTreeMap<(String, String), serde_json::Value> {
    let groups = doc
        .allowlist
        .groups
        .iter()
        .map(|group| (group.name.value.to_string(), &group.rules))
        .chain(std::iter::once((PROJECT_GROUP.to_string(), &doc.project_allowlist)));
    let mut map = BTreeMap::new();
    for (group, rules) in groups {
        for rule in rules {
            let view = serde_json::json!({
                "ports": rule.ports,
                "protocols": rule.protocols,
                "roles": rule.roles,
                "expires": rule.expires.as_ref().map(|e| e.value.ends_at()),
                "allow_private": rule.allow_private,
                "tls": rule.tls,
            });
            map.insert((group.clone(), rule.domain.value.to_string()), view);
        }
    }
    map
}

/// The rule and blocklist changes from `a` to `b`.
pub fn allowlist_changes(a: &PolicyDocument, b: &PolicyDocument) -> AllowlistChanges {
    let (before, after) = (rules(a), rules(b));
    let mut changes = AllowlistChanges::default();
    for ((group, domain), rule) in &after {
        match before.get(&(group.clone(), domain.clone())) {
            None => changes.added.push(RuleView {
                group: group.clone(),
                domain: domain.clone(),
                rule: rule.clone(),
            }),
            Some(old) if old != rule => changes.changed.push(RuleChange {
                group: group.clone(),
                domain: domain.clone(),
                before: old.clone(),
                after: rule.clone(),
            }),
            Some(_) => {}
        }
    }
    for ((group, domain), rule) in &before {
        if !after.contains_key(&(group.clone(), domain.clone())) {
            changes.removed.push(RuleView {
                group: group.clone(),
                domain: domain.clone(),
                rule: rule.clone(),
            });
        }
    }
    let blocked = |doc: &PolicyDocument| -> std::collections::BTreeSet<String> {
        doc.project_blocklist
            .iter()
            .map(|b| b.domain.value.to_string())
            .collect()
    };
    let (block_a, block_b) = (blocked(a), blocked(b));
    changes.blocklist_added = block_b.difference(&block_a).cloned().collect();
    changes.blocklist_removed = block_a.difference(&block_b).cloned().collect();
    changes
}
