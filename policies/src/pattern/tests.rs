use super::*;

fn pattern(text: &str) -> DomainPattern {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn patterns_are_normalized() {
    assert_eq!(
        pattern("API.OpenAI.com."),
        DomainPattern::Exact("api.openai.com".into())
    );
    assert_eq!(
        pattern("*.Example.COM"),
        DomainPattern::Wildcard {
            suffix: "example.com".into()
        }
    );
    assert_eq!(pattern("*.bücher.example").to_string(), "*.xn--bcher-kva.example");
    assert_eq!(pattern(" localhost ").to_string(), "localhost");
}

#[test]
fn wildcards_must_be_a_whole_leftmost_label() {
    for (bad, problem) in [
        ("*foo.com", "whole label"),
        ("foo*.com", "whole label"),
        ("a.*.com", "only the leftmost label"),
        ("*.*.com", "only the leftmost label"),
        ("a.com.*", "only the leftmost label"),
        ("*", "lone '*'"),
        ("*.", "lone '*'"),
    ] {
        let err = bad.parse::<DomainPattern>().unwrap_err();
        assert!(err.problem.contains(problem), "{bad}: {err}");
    }
}

#[test]
fn urls_ports_and_addresses_are_not_domains() {
    for bad in [
        "https://a.com",
        "a.com:443",
        "a.com/path",
        "10.0.0.1",
        "[::1]",
        "::1",
        "*.10.0.0.1",
        "0x7f000001.1",
        "",
    ] {
        assert!(bad.parse::<DomainPattern>().is_err(), "{bad} accepted");
    }
    assert!(
        "10.0.0.1"
            .parse::<DomainPattern>()
            .unwrap_err()
            .hint
            .contains("static_hosts")
    );
}

#[test]
fn matching_follows_label_boundaries() {
    let wild = pattern("*.example.com");
    assert!(wild.matches("a.example.com"));
    assert!(wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(!wild.matches("badexample.com"));
    assert!(!wild.matches(".example.com"));
    let exact = pattern("api.openai.com");
    assert!(exact.matches("api.openai.com"));
    assert!(!exact.matches("evilapi.openai.com"));
}

#[test]
fn coverage_between_patterns() {
    let block = pattern("*.competitor.com");
    assert!(pattern("www.competitor.com").is_covered_by(&block));
    assert!(pattern("*.shop.competitor.com").is_covered_by(&block));
    assert!(pattern("*.competitor.com").is_covered_by(&block));
    assert!(!pattern("competitor.com").is_covered_by(&block));
    assert!(!pattern("*.com").is_covered_by(&block));
    assert!(!pattern("*.competitor.com").is_covered_by(&pattern("www.competitor.com")));
}

#[test]
fn host_names_are_exact() {
    assert_eq!("DB.Internal".parse::<HostName>().unwrap().as_str(), "db.internal");
    assert!("*.internal".parse::<HostName>().is_err());
}

#[test]
fn role_and_group_names_are_identifiers() {
    assert_eq!("ai-agent".parse::<RoleName>().unwrap().as_str(), "ai-agent");
    assert_eq!("ai_providers".parse::<GroupName>().unwrap().as_str(), "ai_providers");
    for bad in ["", "a.b", "a b", "a[0]", &"x".repeat(65)] {
        assert!(bad.parse::<RoleName>().is_err(), "{bad} accepted as role");
        assert!(bad.parse::<GroupName>().is_err(), "{bad} accepted as group");
    }
}
