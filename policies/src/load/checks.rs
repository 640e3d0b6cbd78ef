//! Checks that need the whole document: things each value cannot know on
//! its own (a rule shadowed by the blocklist, an entry that has expired,
//! two settings that contradict each other).

use chrono::{DateTime, Utc};

use crate::diagnostic::Diagnostic;
use crate::located::Located;
use crate::model::{AllowRule, PROJECT_GROUP, PolicyDocument, SpkiPin};
use crate::pattern::DomainPattern;

/// Problems found after parsing: errors refuse the bundle, warnings ride
/// along with it.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

struct Checker<'a> {
    origin: &'a str,
    findings: Findings,
}

impl Checker<'_> {
    fn error<T>(&mut self, at: &Located<T>, message: String, hint: impl Into<String>) {
        let diagnostic = Diagnostic::new(self.origin, at.line, at.column, message).with_hint(hint);
        self.findings.errors.push(diagnostic);
    }

    fn warn<T>(&mut self, at: &Located<T>, message: String, hint: Option<String>) {
        let mut diagnostic = Diagnostic::new(self.origin, at.line, at.column, message);
        diagnostic.hint = hint;
        self.findings.warnings.push(diagnostic);
    }
}

/// Every rule with its policy id, in document order.
fn rules_with_ids(doc: &PolicyDocument) -> impl Iterator<Item = (String, &AllowRule)> {
    let grouped = doc.allowlist.groups.iter().flat_map(|group| {
        group
            .rules
            .iter()
            .enumerate()
            .map(move |(i, rule)| (format!("allowlist.{}[{i}]", group.name.as_str()), rule))
    });
    let project = doc
        .project_allowlist
        .iter()
        .enumerate()
        .map(|(i, rule)| (format!("{PROJECT_GROUP}[{i}]"), rule));
    grouped.chain(project)
}

pub(crate) fn check(doc: &PolicyDocument, origin: &str, now: DateTime<Utc>) -> Findings {
    let mut checker = Checker {
        origin,
        findings: Findings::default(),
    };
    check_groups(doc, &mut checker);
    for (policy_id, rule) in rules_with_ids(doc) {
        check_rule(doc, &policy_id, rule, now, &mut checker);
    }
    check_tls(doc, &mut checker);
    check_timeouts(doc, &mut checker);
    check_budgets(doc, &mut checker);
    check_monitoring(doc, &mut checker);
    checker.findings.errors.sort_by_key(|d| (d.line, d.column));
    checker.findings.warnings.sort_by_key(|d| (d.line, d.column));
    checker.findings
}

/// A spike factor of 1 or less would call every busy minute a spike.
fn check_monitoring(doc: &PolicyDocument, checker: &mut Checker<'_>) {
    let factor = &doc.monitoring.spike_factor;
    if !(factor.value.is_finite() && factor.value > 1.0 && factor.value <= 1000.0) {
        checker.error(
            factor,
            format!("monitoring.spike_factor is {}; it must be above 1", factor.value),
            "write how many times an agent's usual minute counts as a spike, e.g. `spike_factor: 5`",
        );
    }
}

fn check_budgets(doc: &PolicyDocument, checker: &mut Checker<'_>) {
    let budgets = &doc.budgets;
    for rule in &budgets.rules {
        if rule.tokens.is_none() && rule.cost_usd.is_none() {
            checker.error(
                &rule.window,
                "this budget sets neither `tokens` nor `cost_usd`, so it limits nothing".to_string(),
                "add `tokens: 1000000` or `cost_usd: 50`",
            );
        }
        if let Some(cost) = &rule.cost_usd {
            if !(cost.value.is_finite() && cost.value > 0.0) {
                checker.error(
                    cost,
                    format!("`cost_usd: {}` is not a positive amount", cost.value),
                    "write dollars, e.g. `cost_usd: 50`",
                );
            }
            if budgets.pricing.is_empty() && budgets.pricing_file.is_none() {
                checker.error(
                    cost,
                    "a `cost_usd` budget needs prices, and there is no pricing table".to_string(),
                    "add `pricing_file: pricing.yaml` (shipped in policies/) or a `pricing:` table under `budgets:`",
                );
            }
        }
        if let Some(tokens) = &rule.tokens
            && tokens.value == 0
        {
            checker.error(
                tokens,
                "`tokens: 0` allows nothing".to_string(),
                "write a positive number of tokens, or remove the rule",
            );
        }
    }
}

fn check_groups(doc: &PolicyDocument, checker: &mut Checker<'_>) {
    for group in &doc.allowlist.groups {
        // The YAML layer already refuses a repeated key; the one clash left
        // is with the group the top-level project_allowlist forms.
        if group.name.as_str() == PROJECT_GROUP && !doc.project_allowlist.is_empty() {
            checker.error(
                &group.name,
                format!("duplicate group name `{PROJECT_GROUP}`: the top-level project_allowlist already uses it"),
                "rename this group, or move its rules under the top-level project_allowlist",
            );
        }
        if group.rules.is_empty() {
            checker.warn(
                &group.name,
                format!("group `{}` has no rules and allows nothing", group.name.value),
                None,
            );
        }
    }
}

fn check_rule(doc: &PolicyDocument, policy_id: &str, rule: &AllowRule, now: DateTime<Utc>, checker: &mut Checker<'_>) {
    let domain = &rule.domain;
    if rule.is_localhost() && domain.is_wildcard() {
        checker.error(
            domain,
            format!(
                "{policy_id}: `{}` opens loopback for any name; localhost rules must name one host",
                domain.value
            ),
            "write `domain: localhost` with the explicit ports of the local service, e.g. ports: [6333]",
        );
    }
    if let DomainPattern::Wildcard { suffix } = &domain.value
        && !suffix.contains('.')
    {
        checker.warn(
            domain,
            format!(
                "{policy_id}: `{}` allows every name in a whole top-level domain",
                domain.value
            ),
            Some("allow the specific names or a wildcard under a domain you trust, like *.example.com".to_string()),
        );
    }
    if let Some(expires) = &rule.expires
        && expires.is_past(now)
    {
        checker.warn(
            expires,
            format!(
                "{policy_id} ({}) expired on {}; it is kept but inactive",
                domain.value, expires.value
            ),
            Some("renew `expires` if the access is still needed, or remove the entry".to_string()),
        );
    }
    if let Some((blocker, reason)) = blocked_by(doc, &domain.value) {
        checker.warn(
            domain,
            format!(
                "{policy_id} ({}) is blocked by {blocker}{reason}; the block wins",
                domain.value
            ),
            Some("remove the rule, or the block entry if the access is intended".to_string()),
        );
    }
    if let Some(rate) = &rule.rate_limit {
        let per_domain = &doc.rate_limits.per_domain;
        if !per_domain.customizable {
            checker.warn(
                rate,
                format!("{policy_id}: rate_limit is ignored because rate_limits.per_domain.customizable is false"),
                Some(format!("remove it; every domain gets {}", per_domain.default)),
            );
        } else if rate.per_second() > per_domain.max.per_second() {
            checker.warn(
                rate,
                format!(
                    "{policy_id}: rate_limit {} is above rate_limits.per_domain.max and is capped",
                    rate.value
                ),
                Some(format!("write at most {}, or raise per_domain.max", per_domain.max)),
            );
        }
    }
}

/// The block entry or pattern that covers every name `pattern` covers.
fn blocked_by(doc: &PolicyDocument, pattern: &DomainPattern) -> Option<(String, String)> {
    if let Some(block) = doc.dns.block_patterns.iter().find(|b| pattern.is_covered_by(b)) {
        return Some((format!("dns.block_patterns ({})", block.value), String::new()));
    }
    doc.project_blocklist
        .iter()
        .enumerate()
        .find(|(_, b)| pattern.is_covered_by(&b.domain))
        .map(|(i, b)| {
            let reason = b.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            (format!("project_blocklist[{i}] ({})", b.domain.value), reason)
        })
}

fn check_tls(doc: &PolicyDocument, checker: &mut Checker<'_>) {
    let tls = &doc.tls;
    if tls.preferred_version.value < tls.min_version.value {
        checker.error(
            &tls.preferred_version,
            format!(
                "preferred_version {} is older than min_version {}",
                tls.preferred_version.as_str(),
                tls.min_version.as_str()
            ),
            "prefer a version at or above min_version, e.g. preferred_version: \"TLS1.3\"",
        );
    }
    for set in &tls.pins {
        for pin in &set.pins {
            if pin.value == SpkiPin::Placeholder {
                checker.warn(
                    pin,
                    format!("placeholder pin for {} is ignored", set.domain.value),
                    Some("write sha256/<base64 of the SPKI SHA-256>".to_string()),
                );
            }
        }
    }
}

fn check_timeouts(doc: &PolicyDocument, checker: &mut Checker<'_>) {
    for (name, timeout) in [
        (
            "fault_containment.request_timeout",
            &doc.fault_containment.request_timeout,
        ),
        ("sandbox.timeout", &doc.sandbox.timeout),
    ] {
        if timeout.duration().is_zero() {
            checker.error(
                timeout,
                format!("{name} is 0, which would fail every request"),
                "write a timeout like 30s",
            );
        }
    }
    let concurrent = &doc.fault_containment.max_concurrent_requests;
    if concurrent.value == 0 {
        checker.error(
            concurrent,
            "max_concurrent_requests is 0, which would refuse every request".into(),
            "write 1 or more",
        );
    }
    let breaker = &doc.circuit_breaker;
    let success = &breaker.recovery.success_threshold;
    if success.value > breaker.recovery.probe_count {
        checker.error(
            success,
            format!(
                "success_threshold {} is above probe_count {}: the breaker could never close",
                success.value, breaker.recovery.probe_count
            ),
            "make success_threshold at most probe_count",
        );
    }
    for code in &breaker.failure_status_codes {
        if !(100..=599).contains(&code.value) {
            checker.error(
                code,
                format!("{} is not an HTTP status code", code.value),
                "write a status from 100 to 599, like 503",
            );
        }
    }
}
