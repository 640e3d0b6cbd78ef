use chrono::TimeZone;

use super::*;
use crate::load::load_str_at;

#[test]
fn summary_counts_groups_rules_and_blocks() {
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let text = include_str!("../../default.yaml");
    let bundle = load_str_at(text, "default.yaml", now).unwrap();
    let s = summary_at(&bundle, now);
    let groups: Vec<(&str, usize, usize)> = s.groups.iter().map(|g| (g.name.as_str(), g.rules, g.expired)).collect();
    assert_eq!(
        groups,
        [
            ("ai_providers", 3, 0),
            ("dev_services", 2, 0),
            ("storage", 1, 0),
            ("synthetic_checks", 1, 0),
            ("project_allowlist", 2, 2)
        ]
    );
    assert_eq!((s.active_rules, s.expired_rules), (7, 2));
    assert_eq!((s.blocklist_entries, s.block_patterns, s.static_hosts), (1, 3, 0));
    assert_eq!(s.warnings.len(), 4);

    let shown = s.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines[0],
        format!("default.yaml: OK with 4 warnings (version {})", bundle.version)
    );
    assert_eq!(
        lines[1],
        "  default action: deny; enforcement: enforce; fail mode: closed"
    );
    assert_eq!(lines[2], "  allowlist: 5 groups with 9 rules (7 active, 2 expired)");
    assert_eq!(lines[3], "    ai_providers       3 rules");
    assert_eq!(lines[6], "    synthetic_checks   1 rule  roles: scraper");
    assert_eq!(lines[7], "    project_allowlist  2 rules (2 expired)");
    assert_eq!(
        lines[8],
        "  blocked: 1 entry in project_blocklist, 3 patterns in dns.block_patterns"
    );
    assert!(lines[10].starts_with("warning: default.yaml:"), "{shown}");
    assert_eq!(lines.len(), 10 + 4 * 2, "{shown}");
}

#[test]
fn summary_of_a_clean_bundle_says_ok_and_shows_roles() {
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let text = "allowlist:\n  crawl:\n    roles: [scraper]\n    rules:\n      - {domain: a.com, ports: [443], protocols: [https]}\n";
    let bundle = load_str_at(text, "p.yaml", now).unwrap();
    let shown = summary_at(&bundle, now).to_string();
    assert!(
        shown.starts_with(&format!("p.yaml: OK (version {})\n", bundle.version)),
        "{shown}"
    );
    assert!(shown.contains("    crawl  1 rule  roles: scraper\n"), "{shown}");
    assert_eq!(summary(&bundle).groups[0].active, 1);
}
