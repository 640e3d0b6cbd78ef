use chrono::TimeZone;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

/// The diagnostics of a text that must fail to load.
fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str_at(text, "p.yaml", now()) {
        Ok(_) => panic!("loaded but should not:\n{text}"),
        Err(PolicyError::Invalid(all)) => all,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// The single error of `text`, as displayed.
fn error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0].to_string()
}

fn warnings(text: &str) -> Vec<String> {
    match load_str_at(text, "p.yaml", now()) {
        Ok(bundle) => bundle.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("should load:\n{e}"),
    }
}

const RULE_HEAD: &str = "allowlist:\n  g:\n    - domain: a.com\n";

// ------------------------------------------------------------ YAML-level errors

#[test]
fn unknown_key_points_at_the_key_and_suggests_the_close_one() {
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [https]\n      rate_limt: 5/min\n");
    let shown = error(&text);
    assert!(
        shown.starts_with(
            "p.yaml:6:7: unknown key `rate_limt`\n  hint: did you mean `rate_limit`? known keys: domain, ports,"
        ),
        "{shown}"
    );
}

#[test]
fn unknown_top_level_section_is_located_at_line_one() {
    let shown = error("# comment\negres:\n  logging: none\n");
    assert!(
        shown.starts_with("p.yaml:2:1: unknown key `egres`\n  hint: did you mean `egress`?"),
        "{shown}"
    );
}

#[test]
fn bad_domains_point_at_the_value() {
    for (domain, problem) in [
        ("\"*foo.com\"", "a wildcard must be a whole label"),
        ("\"a.*.com\"", "only the leftmost label may be a wildcard"),
        ("\"*\"", "a lone '*' would allow every destination"),
        ("\"a..com\"", "empty label"),
        ("\"10.0.0.1\"", "is an IP address"),
    ] {
        let text = format!("allowlist:\n  g:\n    - domain: {domain}\n      ports: [443]\n      protocols: [https]\n");
        let shown = error(&text);
        assert!(shown.starts_with("p.yaml:3:15: "), "{shown}");
        assert!(shown.contains(problem), "{shown}");
        if domain != "\"*\"" && domain != "\"10.0.0.1\"" {
            assert!(
                shown.ends_with("hint: write an exact name like api.example.com or a wildcard like *.example.com"),
                "{shown}"
            );
        }
    }
}

#[test]
fn out_of_range_port_points_at_the_port() {
    let text = format!("{RULE_HEAD}      ports: [443, 70000]\n      protocols: [https]\n");
    assert_eq!(
        error(&text),
        "p.yaml:4:20: port 70000 is out of range\n  hint: ports are 1-65535"
    );
    let text = format!("{RULE_HEAD}      ports: [0]\n      protocols: [https]\n");
    assert_eq!(
        error(&text),
        "p.yaml:4:15: port 0 is out of range\n  hint: ports are 1-65535"
    );
}

#[test]
fn empty_lists_are_refused_where_they_start() {
    let text = format!("{RULE_HEAD}      ports: []\n      protocols: [https]\n");
    assert_eq!(
        error(&text),
        "p.yaml:4:14: the list of ports is empty\n  hint: list at least one port, e.g. ports: [443]"
    );
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: []\n");
    assert!(error(&text).starts_with("p.yaml:5:18: the list of protocols is empty"));
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [https]\n      roles: []\n");
    assert!(error(&text).starts_with("p.yaml:6:14: the list of roles is empty"));
}

#[test]
fn missing_required_key_points_at_the_rule() {
    let text = format!("{RULE_HEAD}      ports: [443]\n");
    assert_eq!(
        error(&text),
        "p.yaml:3:7: required key `protocols` is missing\n  hint: add `protocols: [https]`"
    );
    // The same in a later rule, written in flow style: the rule's own start.
    let text = format!(
        "{RULE_HEAD}      ports: [443]\n      protocols: [https]\n    - {{domain: b.com, protocols: [http]}}\n"
    );
    assert_eq!(
        error(&text),
        "p.yaml:6:7: required key `ports` is missing\n  hint: add `ports: [443]`"
    );
    let shown = error("allowlist:\n  g:\n    roles: [scraper]\n    description: x\n");
    assert!(
        shown.starts_with("p.yaml:3:5: required key `rules` is missing"),
        "{shown}"
    );
    assert!(error("project_blocklist:\n  - reason: x\n").starts_with("p.yaml:2:5: required key `domain` is missing"));
}

#[test]
fn unknown_enum_value_lists_the_valid_ones() {
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [https, FTP]\n");
    assert_eq!(
        error(&text),
        "p.yaml:5:26: `FTP` is not a valid value here\n  hint: write one of: http, https"
    );
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [HTTPS]\n");
    assert!(error(&text).ends_with("hint: did you mean `https`? write one of: http, https"));
}

#[test]
fn default_action_other_than_deny_is_refused_with_the_reason() {
    let shown = error("egress:\n  default_action: allow\n");
    assert!(
        shown.starts_with(
            "p.yaml:2:19: default_action is 'allow', but only `deny` is accepted: default-deny is not negotiable"
        ),
        "{shown}"
    );
    assert!(shown.contains("hint: write `default_action: deny`"), "{shown}");
}

#[test]
fn duplicate_group_name_in_the_allowlist_points_at_the_second() {
    let rule = "    - domain: a.com\n      ports: [443]\n      protocols: [https]\n";
    let text = format!("allowlist:\n  g:\n{rule}  h:\n{rule}  g:\n{rule}");
    let shown = error(&text);
    assert!(
        shown.starts_with("p.yaml:10:3: `g` appears twice in the same mapping"),
        "{shown}"
    );
}

#[test]
fn value_type_errors_are_located() {
    assert_eq!(
        error("rate_limits:\n  per_agent:\n    default: 100/fortnight\n"),
        "p.yaml:3:14: 'fortnight' is not a rate window\n  hint: use /s, /sec, /second, /min, /minute, /h or /hour"
    );
    assert_eq!(
        error("sandbox:\n  timeout: 30\n"),
        "p.yaml:2:12: the duration 30 has no unit\n  hint: write 30s, 30ms or 30m"
    );
    assert_eq!(
        error("rate_limits:\n  per_agent:\n    burst: 0\n"),
        "p.yaml:3:12: '0' is not a whole number of 1 or more\n  hint: write a count like 20"
    );
    assert!(error("compliance_logging:\n  enabled: maybe\n").starts_with("p.yaml:2:12: expected true or false here"));
    assert!(
        error("fault_containment:\n  max_pending_bytes: 10mb\n").starts_with("p.yaml:2:22: 'mb' is not a size unit")
    );
    assert!(
        error("circuit_breaker:\n  thresholds:\n    failure_rate: 150%\n").starts_with("p.yaml:3:19: 150% is outside")
    );
}

#[test]
fn static_hosts_with_invalid_addresses_are_errors() {
    assert_eq!(
        error("dns:\n  static_hosts:\n    db.internal: 10.0.0.300\n"),
        "p.yaml:3:18: '10.0.0.300' is not an IP address\n  hint: write one IPv4 or IPv6 address without a port, like 127.0.0.1 or ::1"
    );
    assert!(
        error("dns:\n  static_hosts:\n    \"*.internal\": 10.0.0.3\n")
            .starts_with("p.yaml:3:5: '*.internal' is a wildcard")
    );
    let doc = load_str_at("dns:\n  static_hosts:\n    DB.Internal.: \"::1\"\n", "p.yaml", now())
        .unwrap()
        .document;
    assert_eq!(doc.dns.static_hosts.get("db.internal"), Some(&"::1".parse().unwrap()));
}

#[test]
fn bad_pins_are_errors_and_the_seed_placeholder_is_a_warning() {
    let shown = error("tls:\n  pins:\n    - domain: a.com\n      pins: [\"sha256/abc\"]\n");
    assert!(
        shown.starts_with("p.yaml:4:14: the pin 'sha256/abc' is not valid base64"),
        "{shown}"
    );
    let short = "sha256/AAAA";
    assert!(
        error(&format!(
            "tls:\n  pins:\n    - domain: a.com\n      pins: [\"{short}\"]\n"
        ))
        .contains("is 3 bytes")
    );
    let warned = warnings("tls:\n  pins:\n    - domain: api.openai.com\n      pins: [\"sha256/...\"]\n");
    assert_eq!(
        warned,
        [
            "p.yaml:4:14: placeholder pin for api.openai.com is ignored\n  hint: write sha256/<base64 of the SPKI SHA-256>"
        ]
    );
    let good = format!("sha256/{}", "A".repeat(43) + "=");
    assert!(
        warnings(&format!(
            "tls:\n  pins:\n    - domain: a.com\n      pins: [\"{good}\"]\n"
        ))
        .is_empty()
    );
}

#[test]
fn syntax_errors_are_located() {
    let shown = error("egress:\n  logging: all_requests\n monitoring: enabled\n");
    assert!(
        shown.starts_with("p.yaml:3:2: while parsing a block mapping, did not find expected key"),
        "{shown}"
    );
    assert!(shown.ends_with("hint: check the YAML syntax (indentation, colons, quotes, brackets) at this position"));
    assert!(error("dns:\n  block_patterns: [\"*.onion\"\n").starts_with("p.yaml:2:19: unclosed bracket"));
    assert!(error("dns:\n  block_patterns: ['*.onion\n").starts_with("p.yaml:2:20: unclosed quote"));
    assert!(error("egress: {}\n---\ndns: {}\n").starts_with("p.yaml:2:1: the file holds more than one YAML document"));
    assert!(error("allowlist:\n  g: *nope\n").starts_with("p.yaml:2:6: this alias refers to an anchor"));
}

#[test]
fn a_non_mapping_document_is_refused() {
    assert!(error("- egress\n- dns\n").starts_with("p.yaml:1:1: expected a mapping"));
}

#[test]
fn empty_documents_are_refused() {
    for text in ["", "\n\n", "# only a comment\n", "~\n"] {
        assert!(
            error(text).starts_with("p.yaml:1:1: the policy file is empty"),
            "{text:?}"
        );
    }
}

// ------------------------------------------------------------ semantic checks

#[test]
fn group_named_like_the_project_allowlist_clashes() {
    let rule = "    - domain: a.com\n      ports: [443]\n      protocols: [https]\n";
    let text = format!(
        "allowlist:\n  project_allowlist:\n{rule}project_allowlist:\n  - domain: b.com\n    ports: [443]\n    protocols: [https]\n"
    );
    assert!(error(&text).starts_with("p.yaml:2:3: duplicate group name `project_allowlist`"));
    // Without a top-level project_allowlist the name is free.
    assert!(load_str_at(&format!("allowlist:\n  project_allowlist:\n{rule}"), "p.yaml", now()).is_ok());
}

#[test]
fn wildcard_localhost_is_refused() {
    let text = "allowlist:\n  g:\n    - domain: \"*.localhost\"\n      ports: [80]\n      protocols: [http]\n";
    assert!(error(text).starts_with("p.yaml:3:15: allowlist.g[0]: `*.localhost` opens loopback for any name"));
}

#[test]
fn several_semantic_errors_are_reported_together_in_file_order() {
    let text = "circuit_breaker:\n  recovery:\n    probe_count: 1\n    success_threshold: 2\n  failure_status_codes: [503, 42]\nfault_containment:\n  request_timeout: 0s\n";
    let all = errors(text);
    let at: Vec<(u32, u32)> = all.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(at, [(4, 24), (5, 31), (7, 20)], "{all:#?}");
    assert!(all[0].message.contains("the breaker could never close"));
    assert!(all[1].message.contains("42 is not an HTTP status code"));
    assert!(all[2].message.contains("request_timeout is 0"));
}

#[test]
fn preferred_tls_version_below_the_minimum_is_an_error() {
    let shown = error("tls:\n  min_version: \"TLS1.3\"\n  preferred_version: \"TLS1.2\"\n");
    assert!(
        shown.starts_with("p.yaml:3:22: preferred_version TLS1.2 is older than min_version TLS1.3"),
        "{shown}"
    );
}

#[test]
fn expired_entries_warn_and_stay_in_the_document() {
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [https]\n      expires: \"2025-03-01\"\n");
    let warned = warnings(&text);
    assert_eq!(warned.len(), 1);
    assert!(
        warned[0].starts_with("p.yaml:6:16: allowlist.g[0] (a.com) expired on 2025-03-01; it is kept but inactive")
    );
    let bundle = load_str_at(&text, "p.yaml", now()).unwrap();
    assert_eq!(bundle.document.allowlist.groups[0].rules.len(), 1);
    // Before the date: no warning.
    let before = Utc.with_ymd_and_hms(2025, 3, 1, 23, 59, 59).unwrap();
    assert!(load_str_at(&text, "p.yaml", before).unwrap().warnings.is_empty());
}

#[test]
fn rules_shadowed_by_blocks_warn() {
    let text = "allowlist:\n  g:\n    - domain: www.competitor.com\n      ports: [443]\n      protocols: [https]\n    - domain: \"*.shop.competitor.com\"\n      ports: [443]\n      protocols: [https]\n    - domain: competitor.com\n      ports: [443]\n      protocols: [https]\n    - domain: x.onion\n      ports: [443]\n      protocols: [https]\nproject_blocklist:\n  - domain: \"*.competitor.com\"\n    reason: \"Legal restriction\"\n";
    let warned = warnings(text);
    assert_eq!(warned.len(), 3, "{warned:#?}");
    assert!(warned[0].starts_with("p.yaml:3:15: allowlist.g[0] (www.competitor.com) is blocked by project_blocklist[0] (*.competitor.com): Legal restriction; the block wins"));
    assert!(
        warned[1].starts_with("p.yaml:6:15: allowlist.g[1] (*.shop.competitor.com) is blocked by project_blocklist[0]")
    );
    // competitor.com itself is not under *.competitor.com: no warning for it.
    assert!(warned[2].starts_with("p.yaml:12:15: allowlist.g[3] (x.onion) is blocked by dns.block_patterns (*.onion)"));
}

#[test]
fn rate_limits_above_the_domain_maximum_warn() {
    let text = format!("{RULE_HEAD}      ports: [443]\n      protocols: [https]\n      rate_limit: 10/s\n");
    let warned = warnings(&text);
    assert_eq!(warned.len(), 1);
    assert!(warned[0].starts_with("p.yaml:6:19: allowlist.g[0]: rate_limit 10/s is above rate_limits.per_domain.max"));
    let fixed = format!("{text}rate_limits:\n  per_domain:\n    customizable: false\n");
    assert!(warnings(&fixed)[0].contains("rate_limit is ignored"));
}

#[test]
fn top_level_wildcards_warn() {
    let warned = warnings("allowlist:\n  g:\n    - domain: \"*.com\"\n      ports: [443]\n      protocols: [https]\n");
    assert!(
        warned[0].starts_with("p.yaml:3:15: allowlist.g[0]: `*.com` allows every name in a whole top-level domain")
    );
}

// ------------------------------------------------------------ limits and files

#[test]
fn alias_bombs_are_refused_with_a_location() {
    let rule = "{domain: a.com, ports: [443], protocols: [https]}";
    let rules = vec![rule; 200].join(", ");
    let mut text = format!("allowlist:\n  g0: &r [{rules}]\n");
    for i in 1..=600 {
        text.push_str(&format!("  g{i}: *r\n"));
    }
    let all = errors(&text);
    assert!(
        all[0].message.contains("too much data") || all[0].message.contains("too complex"),
        "{all:#?}"
    );
    assert!(all[0].line >= 2);
}

#[test]
fn mass_aliases_and_deep_nesting_are_refused() {
    let mut text = String::from("project_blocklist:\n  - &b {domain: a.com}\n");
    for _ in 0..1500 {
        text.push_str("  - *b\n");
    }
    let shown = error(&text);
    assert!(
        shown.contains("too complex to load safely") && shown.contains("aliases"),
        "{shown}"
    );
    let deep = format!("dns:\n  block_patterns: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let all = errors(&deep);
    assert!(all[0].line == 2, "{all:#?}");
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let text = format!("# {}\n", "x".repeat(MAX_POLICY_BYTES as usize));
    match load_str_at(&text, "big.yaml", now()) {
        Err(PolicyError::TooLarge { size, limit, .. }) => assert!(size > limit),
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_utf8_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, b"egress:\n  logging: n\xffne\n").unwrap();
    let err = load_file_at(&path, now()).unwrap_err();
    let first = &err.diagnostics()[0];
    assert_eq!((first.line, first.column), (2, 13));
    assert!(err.to_string().contains("not valid UTF-8"));
}

#[test]
fn files_load_and_missing_files_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "egress:\n  enforcement: report\n").unwrap();
    let bundle = load_file_at(&path, now()).unwrap();
    assert_eq!(bundle.source, path.display().to_string());
    assert_eq!(bundle.document.egress.enforcement, crate::model::Enforcement::Report);
    let missing = dir.path().join("nope.yaml");
    let err = load_file(&missing).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read the policy file", missing.display()))
    );
}

#[test]
fn version_is_the_sha256_prefix_of_the_bytes() {
    let text = "egress:\n  logging: none\n";
    let bundle = load_str_at(text, "p.yaml", now()).unwrap();
    // sha256("egress:\n  logging: none\n"), first 6 bytes
    let expected = hex::encode(&Sha256::digest(text.as_bytes())[..6]);
    assert_eq!(bundle.version, expected);
    let other = load_str_at("egress:\n  logging: none\n\n", "p.yaml", now()).unwrap();
    assert_ne!(other.version, bundle.version, "a changed file must get a new version");
}

#[test]
fn the_dlp_section_is_typed_and_located() {
    let doc = load_str_at(
        "dlp:\n  max_inspect_bytes: 2MB\n  oversize: alert\n  actions:\n    secrets: hash-log\n    pii: block\n",
        "p.yaml",
        now(),
    )
    .unwrap()
    .document;
    assert_eq!(doc.dlp.max_inspect_bytes.as_u64(), 2_000_000);
    assert_eq!(doc.dlp.oversize, crate::model::OversizeAction::Alert);
    assert_eq!(doc.dlp.actions.secrets, crate::model::DlpAction::HashLog);
    assert_eq!(doc.dlp.actions.pii, crate::model::DlpAction::Block);
    assert!(doc.dlp.enabled, "on unless turned off");
    assert!(error("dlp:\n  actions:\n    secrets: shred\n").starts_with("p.yaml:3:14:"));
    assert!(error("dlp:\n  max_inspect: 1MB\n").starts_with("p.yaml:2:3:"));
}

#[test]
fn budgets_need_a_limit_and_cost_budgets_need_prices() {
    let no_limit = error("budgets:\n  rules:\n    - scope: agent\n      window: day\n");
    assert!(
        no_limit.starts_with("p.yaml:4:15: this budget sets neither `tokens` nor `cost_usd`"),
        "{no_limit}"
    );
    let unpriced = error("budgets:\n  rules:\n    - scope: team\n      window: month\n      cost_usd: 50\n");
    assert!(
        unpriced.starts_with("p.yaml:5:17: a `cost_usd` budget needs prices"),
        "{unpriced}"
    );
    let negative = error("budgets:\n  pricing:\n    m: {input_per_mtok: -1, output_per_mtok: 1}\n");
    assert!(negative.contains("is not a price"), "{negative}");
    let unknown = error("budgets:\n  rules:\n    - scope: agent\n      window: fortnight\n      tokens: 5\n");
    assert!(unknown.starts_with("p.yaml:4:15:"), "{unknown}");
}

#[test]
fn the_shipped_pricing_file_loads_beside_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/pricing.yaml"),
        dir.path().join("pricing.yaml"),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "budgets:\n  pricing_file: pricing.yaml\n  pricing:\n    gpt-4o: {input_per_mtok: 9, output_per_mtok: 9}\n  rules:\n    - {scope: project, window: month, cost_usd: 100}\n",
    )
    .unwrap();
    let bundle = crate::load_file(&policy).expect("loads");
    let pricing = &bundle.document.budgets.pricing;
    assert!(pricing.len() > 10);
    assert_eq!(pricing["gpt-4o"].input_per_mtok, 9.0, "the policy's own entry wins");
    assert_eq!(pricing["claude-sonnet-4"].output_per_mtok, 15.0);
    std::fs::write(&policy, "budgets:\n  pricing_file: missing.yaml\n").unwrap();
    let Err(crate::PolicyError::Invalid(errors)) = crate::load_file(&policy) else {
        panic!("a missing pricing file must not load")
    };
    assert!(
        errors[0].to_string().contains(":2:17: cannot read the pricing file"),
        "{}",
        errors[0]
    );
}

#[test]
fn monitoring_settings_are_checked_at_their_line() {
    let shown = error("monitoring:\n  spike_factor: 1\n");
    assert!(shown.contains(":2:"), "{shown}");
    assert!(shown.contains("spike_factor"), "{shown}");
    let unknown = error("monitoring:\n  alerts:\n    blocked_domain: {severity: loud, action: log}\n");
    assert!(unknown.contains(":3:"), "{unknown}");
    let typo = error("geoip:\n  asn_database: x.mmdb\n");
    assert!(typo.contains("asn_database"), "{typo}");
}
