use std::time::Duration;

use super::*;

fn metrics() -> GatewayMetrics {
    GatewayMetrics::new(&["domain_not_in_allowlist", "private_address"]).expect("metrics")
}

#[test]
fn recorded_requests_render_with_bounded_labels() {
    let m = metrics();
    m.record_request(DecisionLabel::Allow, NO_REASON, Some(200), Duration::from_millis(3));
    m.record_request(
        DecisionLabel::Deny,
        "domain_not_in_allowlist",
        Some(403),
        Duration::from_millis(1),
    );
    m.record_request(
        DecisionLabel::Deny,
        "not_registered_reason",
        Some(403),
        Duration::from_millis(1),
    );
    m.record_upstream_reset();
    m.record_bytes(10, 20);
    let text = m.render();
    assert!(
        text.contains(r#"http_client_requests_total{decision="allow",reason="none",status_class="2xx"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"egress_requests_blocked_total{reason="domain_not_in_allowlist"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"egress_requests_blocked_total{reason="other"} 1"#),
        "an unknown code must not become a label: {text}"
    );
    assert!(!text.contains("not_registered_reason"));
    assert!(text.contains("upstream_reset_events 1"), "{text}");
    assert!(text.contains(r#"egress_bytes_total{direction="out"} 10"#), "{text}");
    assert!(text.contains(r#"egress_bytes_total{direction="in"} 20"#), "{text}");
    assert!(text.contains("http_client_duration_seconds_bucket"), "{text}");
}

#[test]
fn only_the_current_policy_version_is_exported() {
    let m = metrics();
    m.record_policy_reload_success("aaaa1111");
    m.record_policy_reload_success("bbbb2222");
    m.record_policy_reload_failure();
    let text = m.render();
    assert!(!text.contains(r#"version="aaaa1111""#), "{text}");
    assert!(text.contains(r#"policy_version_info{version="bbbb2222"} 1"#), "{text}");
    assert!(text.contains(r#"policy_reloads_total{result="failure"} 1"#), "{text}");
    assert!(text.contains("policy_last_reload_success 0"), "{text}");
}

#[test]
fn connection_guards_track_open_connections() {
    let m = metrics();
    let a = m.connection_opened(ListenerLabel::Proxy);
    let b = m.connection_opened(ListenerLabel::Proxy);
    assert!(m.render().contains(r#"connections_active{listener="proxy"} 2"#));
    drop(a);
    drop(b);
    assert!(m.render().contains(r#"connections_active{listener="proxy"} 0"#));
}

#[test]
fn agents_and_denied_hosts_are_counted_under_a_cap() {
    let m = metrics();
    m.record_parties(DecisionLabel::Allow, Some("scraper-001"), Some("ok.example"));
    m.record_parties(DecisionLabel::Deny, Some("scraper-001"), Some("evil.example"));
    m.record_parties(DecisionLabel::Deny, None, Some("c2VjcmV0.evil.example"));
    // Label values from traffic with odd bytes are never labels.
    m.record_parties(DecisionLabel::Deny, Some("x\"} 1\n"), Some("a b"));
    for i in 0..300 {
        m.record_parties(
            DecisionLabel::Deny,
            Some(&format!("agent-{i}")),
            Some(&format!("h{i}.example")),
        );
    }
    let text = m.render();
    assert!(
        text.contains(r#"egress_agent_requests_total{agent="scraper-001",decision="allow"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"egress_agent_requests_total{agent="anonymous",decision="deny"} 1"#));
    assert!(text.contains(r#"egress_denied_domain_total{domain="evil.example"} 2"#));
    assert!(!text.contains("c2VjcmV0"), "smuggled data in a label: {text}");
    // Allowed hosts are not denial series.
    assert!(!text.contains(r#"domain="ok.example""#));
    let agents: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("egress_agent_requests_total{agent=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    let agents = agents.len();
    let hosts = text
        .lines()
        .filter(|l| l.starts_with("egress_denied_domain_total{"))
        .count();
    assert!(agents <= 256 + 1, "{agents} agent series");
    assert!(hosts <= 100 + 1, "{hosts} host series");
    assert!(text.contains(r#"egress_denied_domain_total{domain="other"}"#));
    let top = m.top_denied_domains(3);
    assert_eq!(top[0].0, "other");
    assert_eq!(top[1], ("evil.example".to_string(), 2));
}

#[test]
fn only_the_registrable_part_of_a_denied_name_is_a_label() {
    assert_eq!(registrable_part("a.b.evil.example"), "evil.example");
    assert_eq!(registrable_part("evil.example."), "evil.example");
    assert_eq!(registrable_part("localhost"), "localhost");
    assert_eq!(registrable_part("10.1.2.3"), "10.1.2.3");
    assert_eq!(registrable_part("::1"), "::1");
}

#[test]
fn throttled_requests_are_counted_by_reason() {
    let m = metrics();
    m.record_request(
        DecisionLabel::RateLimited,
        "rate_limit_exceeded",
        Some(429),
        Duration::ZERO,
    );
    assert!(
        m.render()
            .contains(r#"egress_requests_rate_limited_total{reason="other"} 1"#)
    );
}

/// A series born at 1 hides its first event from `increase()`: the alert
/// for the first blocked request would never fire.
#[test]
fn blocked_and_throttled_series_start_at_zero() {
    let m = GatewayMetrics::new(&["domain_not_in_allowlist", "rate_limit_exceeded"]).expect("metrics");
    let text = m.render();
    assert!(
        text.contains(r#"egress_requests_blocked_total{reason="domain_not_in_allowlist"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"egress_requests_rate_limited_total{reason="rate_limit_exceeded"} 0"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"egress_requests_rate_limited_total{reason="domain_not_in_allowlist"}"#),
        "{text}"
    );
}
