use chrono::TimeZone;

use super::*;
use crate::load::load_str_at;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn compile(yaml: &str) -> CompiledPolicy {
    let bundle = load_str_at(yaml, "m.yaml", now()).unwrap_or_else(|e| panic!("{e}"));
    CompiledPolicy::compile(&bundle)
}

fn eval(policy: &CompiledPolicy, host: &str, port: u16, protocol: Protocol, role: &str) -> MatchOutcome {
    policy.evaluate(
        &MatchRequest {
            host,
            port,
            protocol,
            role,
        },
        now(),
    )
}

/// `Ok(policy_id)` of the allowing rule, or `Err((reason, policy_id))`.
fn verdict(
    policy: &CompiledPolicy,
    host: &str,
    port: u16,
    protocol: Protocol,
    role: &str,
) -> Result<String, (&'static str, String)> {
    match eval(policy, host, port, protocol, role) {
        MatchOutcome::Allow(by) => Ok(by.policy_id.to_string()),
        MatchOutcome::Deny(d) => Err((d.reason.as_str(), d.policy_id.to_string())),
    }
}

fn https(policy: &CompiledPolicy, host: &str) -> Result<String, (&'static str, String)> {
    verdict(policy, host, 443, Protocol::Https, "scraper")
}

fn denied(reason: &'static str, policy_id: &str) -> Result<String, (&'static str, String)> {
    Err((reason, policy_id.to_string()))
}

const WEB: &str = "ports: [443]\n      protocols: [https]";

#[test]
fn exact_names_match_only_themselves() {
    let policy = compile(&format!(
        "allowlist:\n  ai:\n    - domain: api.openai.com\n      {WEB}\n"
    ));
    assert_eq!(https(&policy, "api.openai.com"), Ok("allowlist.ai[0]".into()));
    for other in [
        "evilapi.openai.com",
        "x.api.openai.com",
        "api.openai.com.evil.com",
        "openai.com",
        "api.openai.co",
    ] {
        assert_eq!(
            https(&policy, other),
            denied("domain_not_in_allowlist", "default_deny"),
            "{other}"
        );
    }
}

#[test]
fn wildcards_match_below_the_suffix_but_not_the_suffix_itself() {
    let policy = compile(&format!(
        "allowlist:\n  w:\n    - domain: \"*.example.com\"\n      {WEB}\n"
    ));
    assert_eq!(https(&policy, "a.example.com"), Ok("allowlist.w[0]".into()));
    assert_eq!(https(&policy, "a.b.example.com"), Ok("allowlist.w[0]".into()));
    for other in ["example.com", "badexample.com", "a.example.com.evil.net", "com"] {
        assert_eq!(
            https(&policy, other),
            denied("domain_not_in_allowlist", "default_deny"),
            "{other}"
        );
    }
}

#[test]
fn block_patterns_and_the_blocklist_win_over_any_allow() {
    let policy = compile(&format!(
        "allowlist:\n  g:\n    - domain: \"*.onion\"\n      {WEB}\n    - domain: \"*.shop.com\"\n      {WEB}\n    - domain: tracker.net\n      {WEB}\n\
         project_blocklist:\n  - domain: other.com\n  - domain: \"*.shop.com\"\n    reason: legal\n  - domain: \"*.shop.com\"\n\
         dns:\n  block_patterns: [\"*.onion\", exact.evil]\n"
    ));
    assert_eq!(
        https(&policy, "x.onion"),
        denied("blocked_pattern", "dns.block_patterns")
    );
    assert_eq!(
        https(&policy, "exact.evil"),
        denied("blocked_pattern", "dns.block_patterns")
    );
    // An exact block pattern does not reach names below it.
    assert_eq!(
        https(&policy, "a.exact.evil"),
        denied("domain_not_in_allowlist", "default_deny")
    );
    // The first blocklist entry for a pattern is the one reported.
    assert_eq!(
        https(&policy, "a.shop.com"),
        denied("blocklisted", "project_blocklist[1]")
    );
    assert_eq!(https(&policy, "tracker.net"), Ok("allowlist.g[2]".into()));
}

#[test]
fn a_rule_applies_only_to_its_ports_protocols_and_roles() {
    let policy = compile(
        "allowlist:\n  g:\n    - domain: a.com\n      ports: [443, 8443]\n      protocols: [https]\n      roles: [ai-agent]\n",
    );
    assert_eq!(
        verdict(&policy, "a.com", 8443, Protocol::Https, "ai-agent"),
        Ok("allowlist.g[0]".into())
    );
    assert_eq!(
        verdict(&policy, "a.com", 80, Protocol::Https, "ai-agent"),
        denied("port_not_allowed", "allowlist.g[0]")
    );
    assert_eq!(
        verdict(&policy, "a.com", 443, Protocol::Http, "ai-agent"),
        denied("protocol_not_allowed", "allowlist.g[0]")
    );
    assert_eq!(
        verdict(&policy, "a.com", 443, Protocol::Https, "scraper"),
        denied("role_not_allowed", "allowlist.g[0]")
    );
}

#[test]
fn group_roles_and_rule_roles_must_both_allow() {
    let policy = compile(
        "allowlist:\n  g:\n    roles: [scraper, ai-agent]\n    description: both\n    rules:\n\
         \x20     - domain: a.com\n        ports: [443]\n        protocols: [https]\n        roles: [scraper, auditor]\n\
         \x20     - domain: b.com\n        ports: [443]\n        protocols: [https]\n",
    );
    assert_eq!(
        verdict(&policy, "a.com", 443, Protocol::Https, "scraper"),
        Ok("allowlist.g[0]".into())
    );
    // In the rule's list but not the group's, and the other way round.
    assert_eq!(
        verdict(&policy, "a.com", 443, Protocol::Https, "auditor")
            .unwrap_err()
            .0,
        "role_not_allowed"
    );
    assert_eq!(
        verdict(&policy, "a.com", 443, Protocol::Https, "ai-agent")
            .unwrap_err()
            .0,
        "role_not_allowed"
    );
    assert_eq!(
        verdict(&policy, "b.com", 443, Protocol::Https, "ai-agent"),
        Ok("allowlist.g[1]".into())
    );
    assert_eq!(
        verdict(&policy, "b.com", 443, Protocol::Https, "other").unwrap_err().0,
        "role_not_allowed"
    );
}

#[test]
fn any_matching_rule_that_allows_wins() {
    let policy = compile(
        "allowlist:\n  a:\n    - domain: x.com\n      ports: [443]\n      protocols: [https]\n\
         \x20 b:\n    - domain: \"*.com\"\n      ports: [8080]\n      protocols: [http]\n\
         project_allowlist:\n  - domain: x.com\n    ports: [80]\n    protocols: [http]\n",
    );
    assert_eq!(
        verdict(&policy, "x.com", 443, Protocol::Https, "r"),
        Ok("allowlist.a[0]".into())
    );
    assert_eq!(
        verdict(&policy, "x.com", 80, Protocol::Http, "r"),
        Ok("project_allowlist[0]".into())
    );
    assert_eq!(
        verdict(&policy, "x.com", 8080, Protocol::Http, "r"),
        Ok("allowlist.b[0]".into())
    );
    match eval(&policy, "x.com", 80, Protocol::Http, "r") {
        MatchOutcome::Allow(by) => assert_eq!(&*by.group, "project_allowlist"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_closest_rule_explains_a_denial() {
    // Rule 0 fails on the port, rule 1 on the protocol, rule 2 on the role:
    // role_not_allowed > protocol_not_allowed > port_not_allowed.
    let rules = "    - domain: x.com\n      ports: [1]\n      protocols: [https]\n\
                 \x20   - domain: x.com\n      ports: [443]\n      protocols: [http]\n\
                 \x20   - domain: x.com\n      ports: [443]\n      protocols: [https]\n      roles: [ai-agent]\n";
    let policy = compile(&format!("allowlist:\n  g:\n{rules}"));
    assert_eq!(https(&policy, "x.com"), denied("role_not_allowed", "allowlist.g[2]"));
    let policy = compile(&format!(
        "allowlist:\n  g:\n{}",
        &rules[..rules
            .find("    - domain: x.com\n      ports: [443]\n      protocols: [https]")
            .unwrap()]
    ));
    assert_eq!(
        https(&policy, "x.com"),
        denied("protocol_not_allowed", "allowlist.g[1]")
    );
    // Equally close rules: the first (most specific, then document order) is named.
    let policy = compile(
        "allowlist:\n  g:\n    - domain: \"*.x.com\"\n      ports: [1]\n      protocols: [https]\n    - domain: a.x.com\n      ports: [2]\n      protocols: [https]\n",
    );
    assert_eq!(https(&policy, "a.x.com"), denied("port_not_allowed", "allowlist.g[1]"));
}

#[test]
fn expired_rules_are_treated_as_absent() {
    let policy = compile(&format!(
        "allowlist:\n  g:\n    - domain: old.com\n      {WEB}\n      expires: \"2025-03-01\"\n\
         \x20   - domain: mixed.com\n      ports: [443]\n      protocols: [https]\n      roles: [ai-agent]\n\
         \x20   - domain: mixed.com\n      {WEB}\n      expires: 2025-01-01T00:00:00Z\n\
         \x20   - domain: fresh.com\n      {WEB}\n      expires: \"2026-11-23\"\n"
    ));
    assert_eq!(
        https(&policy, "old.com"),
        denied("domain_not_in_allowlist", "default_deny")
    );
    // The expired rule would allow, but only the live one counts.
    assert_eq!(
        https(&policy, "mixed.com"),
        denied("role_not_allowed", "allowlist.g[1]")
    );
    // A date means the whole day, UTC.
    assert_eq!(https(&policy, "fresh.com"), Ok("allowlist.g[3]".into()));
    let tomorrow = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let req = MatchRequest {
        host: "fresh.com",
        port: 443,
        protocol: Protocol::Https,
        role: "x",
    };
    assert!(matches!(policy.evaluate(&req, tomorrow), MatchOutcome::Deny(_)));
}

#[test]
fn allowed_by_carries_the_rule_settings() {
    let policy = compile(
        "allowlist:\n  g:\n    - domain: db.internal\n      ports: [5432]\n      protocols: [http]\n      allow_private: true\n\
         \x20   - domain: localhost\n      ports: [6333]\n      protocols: [http]\n\
         \x20   - domain: api.x.com\n      ports: [443]\n      protocols: [https]\n      tls: intercept\n      rate_limit: 10/s\n\
         \x20   - domain: api.y.com\n      ports: [443]\n      protocols: [https]\n      rate_limit: 50/min\n",
    );
    let allowed = |host, port, protocol| match eval(&policy, host, port, protocol, "r") {
        MatchOutcome::Allow(by) => by,
        other => panic!("{host}: {other:?}"),
    };
    assert!(allowed("db.internal", 5432, Protocol::Http).private_ok);
    assert!(allowed("localhost", 6333, Protocol::Http).private_ok);
    let x = allowed("api.x.com", 443, Protocol::Https);
    assert!(!x.private_ok);
    assert_eq!(x.tls, TlsMode::Intercept);
    // 10/s is above the default per_domain.max of 500/min: capped.
    assert_eq!(x.rate_limit.map(|r| r.to_string()).as_deref(), Some("500/min"));
    let y = allowed("api.y.com", 443, Protocol::Https);
    assert_eq!(y.rate_limit.map(|r| r.to_string()).as_deref(), Some("50/min"));
    assert_eq!(y.tls, TlsMode::Passthrough);
    assert_eq!(allowed("db.internal", 5432, Protocol::Http).rate_limit, None);
}

#[test]
fn rule_rates_are_dropped_when_domains_are_not_customizable() {
    let policy = compile(&format!(
        "allowlist:\n  g:\n    - domain: a.com\n      {WEB}\n      rate_limit: 5/min\nrate_limits:\n  per_domain:\n    customizable: false\n"
    ));
    match eval(&policy, "a.com", 443, Protocol::Https, "r") {
        MatchOutcome::Allow(by) => assert_eq!(by.rate_limit, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn static_hosts_and_version_are_exposed() {
    let yaml = "dns:\n  static_hosts:\n    Test.Local: 127.0.0.1\n    v6.local: \"::1\"\n";
    let bundle = load_str_at(yaml, "m.yaml", now()).unwrap();
    let policy = CompiledPolicy::compile(&bundle);
    assert_eq!(policy.static_host("test.local"), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(policy.static_host("v6.local"), Some("::1".parse().unwrap()));
    assert_eq!(policy.static_host("other.local"), None);
    assert_eq!(policy.version(), bundle.version);
    // Nothing is allowed by a policy without an allowlist.
    assert_eq!(
        https(&policy, "test.local"),
        denied("domain_not_in_allowlist", "default_deny")
    );
}

#[test]
fn reason_codes_are_stable() {
    let all = [
        (DenyReason::BlockedPattern, "blocked_pattern"),
        (DenyReason::Blocklisted, "blocklisted"),
        (DenyReason::DomainNotInAllowlist, "domain_not_in_allowlist"),
        (DenyReason::PortNotAllowed, "port_not_allowed"),
        (DenyReason::ProtocolNotAllowed, "protocol_not_allowed"),
        (DenyReason::RoleNotAllowed, "role_not_allowed"),
    ];
    for (reason, code) in all {
        assert_eq!(reason.as_str(), code);
    }
}

#[test]
fn many_rules_compile_into_lookups() {
    // Every rule of a large group is indexed under its own name, with the
    // right policy id.
    let mut yaml = String::from("allowlist:\n  bulk:\n");
    for i in 0..2_000 {
        yaml.push_str(&format!(
            "    - {{domain: \"host{i}.example.com\", ports: [443], protocols: [https]}}\n"
        ));
    }
    let policy = compile(&yaml);
    for i in (0..2_000).step_by(97) {
        assert_eq!(
            https(&policy, &format!("host{i}.example.com")),
            Ok(format!("allowlist.bulk[{i}]"))
        );
    }
    assert_eq!(
        https(&policy, "host2000.example.com"),
        denied("domain_not_in_allowlist", "default_deny")
    );
}

#[test]
fn a_bare_name_is_allowed_by_any_live_rule_whatever_its_ports_protocols_and_roles() {
    let policy = compile(&format!(
        "allowlist:\n  g:\n    - domain: api.x.com\n      ports: [8443]\n      protocols: [http]\n      roles: [ai-agent]\n\
         \x20   - domain: \"*.corp.test\"\n      {WEB}\n\
         \x20   - domain: \"*.corp.test\"\n      {WEB}\n      allow_private: true\n\
         \x20   - domain: old.com\n      {WEB}\n      expires: \"2025-03-01\"\n\
         \x20   - domain: \"*.onion\"\n      {WEB}\n\
         project_blocklist:\n  - domain: bad.corp.test\n"
    ));
    let name = |host| match policy.evaluate_name(host, now()) {
        MatchOutcome::Allow(by) => Ok((by.policy_id.to_string(), by.private_ok)),
        MatchOutcome::Deny(d) => Err((d.reason.as_str(), d.policy_id.to_string())),
    };
    assert_eq!(name("api.x.com"), Ok(("allowlist.g[0]".into(), false)));
    // The rule that allows private targets is preferred.
    assert_eq!(name("db.corp.test"), Ok(("allowlist.g[2]".into(), true)));
    assert_eq!(name("old.com"), Err(("domain_not_in_allowlist", "default_deny".into())));
    assert_eq!(name("x.onion"), Err(("blocked_pattern", "dns.block_patterns".into())));
    assert_eq!(
        name("bad.corp.test"),
        Err(("blocklisted", "project_blocklist[0]".into()))
    );
    assert_eq!(
        name("other.com"),
        Err(("domain_not_in_allowlist", "default_deny".into()))
    );
}
