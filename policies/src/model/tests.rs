//! The seed's YAML blocks, pasted verbatim into `fixtures/seed/`, must
//! parse as written; the defaults of every section are the seed's values.

use chrono::{TimeZone, Utc};

use super::*;
use crate::load::{PolicyBundle, load_str_at};
use crate::pattern::DomainPattern;

fn load(name: &str, text: &str) -> PolicyBundle {
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    load_str_at(text, name, now).unwrap_or_else(|e| panic!("seed block {name} must load:\n{e}"))
}

macro_rules! seed {
    ($file:literal) => {
        load($file, include_str!(concat!("../../fixtures/seed/", $file)))
    };
}

fn domains(rules: &[AllowRule]) -> Vec<String> {
    rules.iter().map(|r| r.domain.to_string()).collect()
}

#[test]
fn seed_default_policy() {
    let bundle = seed!("s1_default_policy.yaml");
    let egress = &bundle.document.egress;
    assert_eq!(egress.default_action, DefaultAction::Deny);
    assert_eq!(egress.logging, Logging::AllRequests);
    assert_eq!(egress.monitoring, Monitoring::Enabled);
    assert_eq!(
        (egress.enforcement, egress.fail_mode),
        (Enforcement::Enforce, FailMode::Closed)
    );
    assert!(bundle.warnings.is_empty());
}

#[test]
fn seed_core_allowlist() {
    let bundle = seed!("s2_1_core_allowlist.yaml");
    let groups = &bundle.document.allowlist.groups;
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["ai_providers", "dev_services", "storage"]);
    assert_eq!(
        domains(&groups[0].rules),
        [
            "api.openai.com",
            "api.anthropic.com",
            "generativelanguage.googleapis.com"
        ]
    );
    assert_eq!(domains(&groups[1].rules), ["api.github.com", "registry.npmjs.org"]);
    let github = &groups[1].rules[0];
    assert_eq!(
        github.rate_limit.as_ref().map(|r| r.to_string()).as_deref(),
        Some("500/min")
    );
    assert_eq!((github.domain.line, github.domain.column), (21, 15));
    let storage = &groups[2].rules[0];
    assert_eq!(
        storage.ports.0.iter().map(|p| p.get()).collect::<Vec<_>>(),
        [3002, 6333]
    );
    assert_eq!(storage.protocols.0, [Protocol::Http]);
    assert_eq!(storage.note.as_deref(), Some("Local Memory MCP and Qdrant"));
    assert!(storage.is_localhost() && !storage.allow_private);
    assert!(bundle.warnings.is_empty());
}

#[test]
fn seed_project_allowlists_load_with_expiry_warnings() {
    for bundle in [
        seed!("s2_2_project_allowlist.yaml"),
        seed!("s11_project_allowlist.yaml"),
    ] {
        let rule = &bundle.document.project_allowlist[0];
        assert!(rule.expires.is_some() && rule.approved_by.is_some());
        assert!(rule.justification.is_some() || rule.reason.is_some());
        assert_eq!(bundle.warnings.len(), 1, "{:?}", bundle.warnings);
        assert!(bundle.warnings[0].message.contains("expired on 2025-0"));
    }
}

#[test]
fn seed_blocklist() {
    let bundle = seed!("s11_project_blocklist.yaml");
    let entry = &bundle.document.project_blocklist[0];
    assert_eq!(
        entry.domain.value,
        DomainPattern::Wildcard {
            suffix: "competitor.com".into()
        }
    );
    assert_eq!(entry.reason.as_deref(), Some("Legal restriction"));
}

#[test]
fn seed_rate_limits_are_the_defaults() {
    let bundle = seed!("s3_2_rate_limits.yaml");
    assert_eq!(bundle.document.rate_limits, RateLimits::default());
    let limits = &bundle.document.rate_limits;
    assert_eq!(limits.per_agent.burst.get(), 20);
    assert_eq!(limits.per_domain.max.to_string(), "500/min");
    assert_eq!(limits.throttle_action, ThrottleAction::Delay);
    // §3.1 table values for what §3.2 leaves out.
    assert_eq!(limits.per_domain.default.to_string(), "200/min");
    assert_eq!(limits.global.default.to_string(), "10000/min");
    assert!(limits.enabled, "limits are on unless switched off");
    let off = load("off.yaml", "rate_limits:\n  enabled: false\n");
    assert!(!off.document.rate_limits.enabled);
}

#[test]
fn seed_containment_blocks_are_the_defaults() {
    let sandbox = seed!("s5_1_sandbox.yaml").document.sandbox;
    assert_eq!(sandbox.cpu_limit, Sandbox::default().cpu_limit);
    assert_eq!(sandbox.memory_limit, Sandbox::default().memory_limit);
    assert_eq!(sandbox.timeout.value, Sandbox::default().timeout.value);
    assert_eq!(sandbox.network, SandboxNetwork::default());

    let fault = seed!("s5_2_fault_containment.yaml").document.fault_containment;
    assert_eq!(fault.auto_terminate, AutoTerminate::default());
    assert_eq!(fault.max_concurrent_requests.value, 10);
    assert_eq!(fault.max_pending_bytes.as_u64(), 10_000_000);
    assert_eq!(fault.request_timeout.duration().as_secs(), 30);

    let breaker = seed!("s5_3_circuit_breaker.yaml").document.circuit_breaker;
    assert_eq!(breaker.thresholds, BreakerThresholds::default());
    assert_eq!(breaker.states, BreakerStates::default());
    assert_eq!(breaker.recovery.wait_time, BreakerRecovery::default().wait_time);
    assert_eq!(breaker.recovery.success_threshold.value, 2);
    let codes: Vec<u16> = breaker.failure_status_codes.iter().map(|c| c.value).collect();
    assert_eq!(codes, [502, 503, 504]);
}

#[test]
fn seed_dns_block() {
    let dns = seed!("s6_1_dns.yaml").document.dns;
    assert_eq!(dns.resolver, ResolverKind::Internal);
    assert!(dns.query_logging && dns.response_validation);
    let patterns: Vec<String> = dns.block_patterns.iter().map(|p| p.to_string()).collect();
    assert_eq!(patterns, ["*.onion", "*.i2p", "*.bit"]);
    let defaults: Vec<String> = DnsPolicy::default()
        .block_patterns
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(patterns, defaults);
    assert_eq!(
        (dns.cache_ttl.to_string(), dns.negative_cache_ttl.to_string()),
        ("5m".into(), "1m".into())
    );
}

#[test]
fn seed_tls_block_warns_about_placeholder_pins() {
    let bundle = seed!("s7_1_tls.yaml");
    let tls = &bundle.document.tls;
    assert_eq!(
        (tls.min_version.value, tls.preferred_version.value),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(tls.verify_certificates && !tls.allow_self_signed);
    assert_eq!(tls.pins.len(), 2);
    assert_eq!(tls.pins[0].pins[0].value, SpkiPin::Placeholder);
    let messages: Vec<&str> = bundle.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "placeholder pin for api.openai.com is ignored",
            "placeholder pin for api.anthropic.com is ignored"
        ]
    );
    assert_eq!((bundle.warnings[0].line, bundle.warnings[0].column), (12, 14));
}

#[test]
fn seed_compliance_logging_is_the_default() {
    assert_eq!(
        seed!("s9_2_compliance_logging.yaml").document.compliance_logging,
        ComplianceLogging::default()
    );
}

#[test]
fn all_seed_blocks_combine_into_one_bundle() {
    // §2.2 and §11 both write `project_allowlist`; a file holds one of them.
    let parts = [
        include_str!("../../fixtures/seed/s1_default_policy.yaml"),
        include_str!("../../fixtures/seed/s2_1_core_allowlist.yaml"),
        include_str!("../../fixtures/seed/s3_2_rate_limits.yaml"),
        include_str!("../../fixtures/seed/s5_1_sandbox.yaml"),
        include_str!("../../fixtures/seed/s5_2_fault_containment.yaml"),
        include_str!("../../fixtures/seed/s5_3_circuit_breaker.yaml"),
        include_str!("../../fixtures/seed/s6_1_dns.yaml"),
        include_str!("../../fixtures/seed/s7_1_tls.yaml"),
        include_str!("../../fixtures/seed/s9_2_compliance_logging.yaml"),
        include_str!("../../fixtures/seed/s11_project_allowlist.yaml"),
        include_str!("../../fixtures/seed/s11_project_blocklist.yaml"),
    ];
    let bundle = load("seed.yaml", &parts.join("\n"));
    assert_eq!(bundle.warnings.len(), 3, "{:#?}", bundle.warnings);
}

#[test]
fn a_group_may_be_a_map_limited_to_roles() {
    let text = "allowlist:\n  scraping:\n    roles: [scraper]\n    description: \"Sites to fetch\"\n    rules:\n      - domain: \"*.example.com\"\n        ports: [443]\n        protocols: [https]\n";
    let group = &load("g.yaml", text).document.allowlist.groups[0];
    assert_eq!(group.roles.as_ref().map(|r| r.allows("scraper")), Some(true));
    assert_eq!(group.description.as_deref(), Some("Sites to fetch"));
    assert_eq!(group.rules.len(), 1);
    let warned = load("g.yaml", "allowlist:\n  empty: []\n").warnings;
    assert!(warned[0].message.contains("group `empty` has no rules"));
}

#[test]
fn missing_sections_take_the_seed_defaults_and_lists_start_empty() {
    let doc = load("min.yaml", "egress:\n  default_action: deny\n").document;
    assert_eq!(doc.rate_limits, RateLimits::default());
    assert_eq!(doc.compliance_logging, ComplianceLogging::default());
    assert!(doc.allowlist.groups.is_empty() && doc.project_allowlist.is_empty() && doc.project_blocklist.is_empty());
    assert_eq!(doc.dns.block_patterns.len(), 3);
    assert!(doc.tls.pins.is_empty());
    // A partly written section keeps the defaults of what it leaves out.
    let doc = load("p.yaml", "rate_limits:\n  per_agent:\n    default: 50/min\n").document;
    assert_eq!(doc.rate_limits.per_agent.burst.get(), 20);
    assert_eq!(doc.rate_limits.per_project, ProjectLimit::default());
}

#[test]
fn environments_override_enforcement_and_fail_mode() {
    let text = "egress:\n  enforcement: enforce\n  fail_mode: closed\n  environments:\n    staging: {enforcement: report}\n    lab: {fail_mode: open}\n";
    let egress = load("e.yaml", text).document.egress;
    assert_eq!(egress.enforcement_for("staging"), Enforcement::Report);
    assert_eq!(egress.fail_mode_for("staging"), FailMode::Closed);
    assert_eq!(egress.fail_mode_for("lab"), FailMode::Open);
    assert_eq!(egress.enforcement_for("production"), Enforcement::Enforce);
    assert_eq!(egress.environments.len(), 2);
}

#[test]
fn nameservers_accept_addresses_with_or_without_port() {
    let text = "dns:\n  resolver: internal\n  nameservers: [\"127.0.0.1:5353\", \"10.0.0.2\", \"[::1]:53\"]\n";
    let dns = load("n.yaml", text).document.dns;
    let shown: Vec<String> = dns.nameservers.iter().map(|n| n.to_string()).collect();
    assert_eq!(shown, ["127.0.0.1:5353", "10.0.0.2:53", "[::1]:53"]);
}

#[test]
fn sections_written_with_nothing_under_them_take_the_defaults() {
    let text = "egress:\nallowlist:\nproject_allowlist:\nrate_limits:\n  per_agent:\ndns:\n  block_patterns:\n  nameservers:\n  static_hosts:\ntls:\n  pins:\nsandbox:\n  network:\ncircuit_breaker:\n  recovery:\n";
    let doc = load("null.yaml", text).document;
    assert_eq!(doc.rate_limits, RateLimits::default());
    assert_eq!(
        doc.dns.block_patterns.len(),
        3,
        "an empty block_patterns key keeps the seed's patterns"
    );
    assert!(doc.allowlist.groups.is_empty() && doc.tls.pins.is_empty() && doc.dns.nameservers.is_empty());
    assert_eq!(doc.circuit_breaker.recovery.probe_count, 3);
    // An explicit empty list is how the patterns are dropped.
    assert!(
        load("e.yaml", "dns:\n  block_patterns: []\n")
            .document
            .dns
            .block_patterns
            .is_empty()
    );
}

#[test]
fn monitoring_defaults_are_the_seed_alert_table() {
    let bundle = load("empty.yaml", "egress: {default_action: deny}\n");
    let alerts = bundle.document.monitoring.alerts;
    assert_eq!(alerts.blocked_domain.severity, Severity::Warning);
    assert_eq!(alerts.repeated_blocked.severity, Severity::High);
    assert_eq!(alerts.certificate_error.severity, Severity::High);
    assert_eq!(alerts.rate_limit_exceeded.severity, Severity::Info);
    assert_eq!(alerts.unusual_traffic.severity, Severity::Medium);
    assert_eq!(alerts.data_exfiltration.severity, Severity::Critical);
    assert_eq!(alerts.data_exfiltration.action, AlertAction::Quarantine);
    assert!(bundle.document.fault_containment.auto_terminate.on_data_exfiltration);
    assert_eq!(bundle.document.geoip, GeoIpPolicy::default());
}

#[test]
fn monitoring_and_geoip_settings_load_with_their_lines() {
    let text = "monitoring:\n  spike_factor: 3\n  alerts:\n    unusual_traffic: {severity: high, action: rate_reduction}\ngeoip:\n  asn_db: asn.mmdb\n";
    let bundle = load("m.yaml", text);
    let monitoring = &bundle.document.monitoring;
    assert_eq!(monitoring.spike_factor.value, 3.0);
    assert_eq!(monitoring.alerts.unusual_traffic.action, AlertAction::RateReduction);
    let asn = bundle.document.geoip.asn_db.as_ref().unwrap();
    assert_eq!((asn.value.as_str(), asn.line), ("asn.mmdb", 6));
}
