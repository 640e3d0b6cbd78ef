use super::window::{Totals, quantile};
use super::*;
use crate::metrics::GatewayMetrics;

#[test]
fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
    // 100 observations: 50 under 0.1 s, 40 in (0.1, 1], 10 in (1, 2].
    let buckets = [(0.1, 50), (1.0, 90), (2.0, 100), (f64::INFINITY, 100)];
    // rank 95 is halfway through the (1, 2] bucket.
    assert_eq!(quantile(0.95, &buckets), Some(1.5));
    // rank 50 is the top of the first bucket, which starts at 0.
    assert_eq!(quantile(0.5, &buckets), Some(0.1));
    assert_eq!(quantile(0.25, &buckets), Some(0.05));
    // A rank in +Inf answers the highest finite bound.
    let slow = [(0.1, 1), (2.0, 2), (f64::INFINITY, 10)];
    assert_eq!(quantile(0.95, &slow), Some(2.0));
    assert_eq!(quantile(0.95, &[(0.1, 0), (f64::INFINITY, 0)]), None);
}

#[test]
fn the_window_is_the_difference_of_two_snapshots() {
    let metrics = GatewayMetrics::new(&[
        "domain_not_in_allowlist",
        "rate_limit_exceeded",
        "upstream_timeout",
        "client_closed",
    ])
    .unwrap();
    let ms = Duration::from_millis;
    metrics.record_request(DecisionLabel::Allow, "none", Some(200), ms(10));
    let before = Totals::from_families(&metrics.registry().gather());
    for _ in 0..8 {
        metrics.record_request(DecisionLabel::Allow, "none", Some(200), ms(30));
    }
    metrics.record_request(DecisionLabel::Allow, "none", Some(503), ms(30));
    metrics.record_request(
        DecisionLabel::Error,
        "upstream_timeout",
        Some(504),
        Duration::from_secs(3),
    );
    metrics.record_request(DecisionLabel::Deny, "domain_not_in_allowlist", Some(403), ms(1));
    // An agent that hung up is not the egress path failing.
    metrics.record_request(DecisionLabel::Error, "client_closed", Some(499), ms(5));
    metrics.record_request(DecisionLabel::RateLimited, "rate_limit_exceeded", Some(429), ms(1));
    metrics.record_bytes(1000, 4000);
    let window = Totals::from_families(&metrics.registry().gather()).since(&before);

    // 8 of the 10 requests the policy let through succeeded; denials and
    // rate limits are not failures of the egress path.
    assert_eq!(window.attempted(), 10);
    assert_eq!(window.success_ratio(), Some(0.8));
    assert_eq!(window.error_ratio(), Some(0.1));
    assert_eq!(window.blocked.get("domain_not_in_allowlist"), Some(&1));
    assert_eq!(window.rate_limited.get("rate_limit_exceeded"), Some(&1));
    // 9 allowed observations in the window, all in (0.025, 0.05].
    let p95 = window.latency_quantile(0.95).unwrap();
    assert!((0.025..=0.05).contains(&p95), "{p95}");
    // 5,000 bytes in 10 s is 500 B/s, 1.296 GB over 30 days.
    let projected = window.projected_month_bytes(10.0).unwrap();
    assert!((projected - 1.296e9).abs() < 1.0, "{projected}");
}

#[test]
fn tiles_say_whether_the_target_is_met() {
    assert_eq!(tile(Some(0.99), 0.98, Better::Above)["status"], "ok");
    assert_eq!(tile(Some(0.98), 0.98, Better::Above)["status"], "breach");
    assert_eq!(tile(Some(2.5), 2.0, Better::Below)["status"], "breach");
    assert_eq!(tile(None, 2.0, Better::Below)["status"], "no_data");
}

#[test]
fn denials_keep_only_the_latest() {
    let dashboard = Dashboard::default();
    for i in 0..(MAX_DENIALS + 5) {
        dashboard.note_denial(Denial {
            at: Utc::now(),
            agent: Some("a".into()),
            claimed_agent: None,
            host: Some(format!("h{i}.example")),
            port: Some(443),
            reason: "domain_not_in_allowlist",
            request_id: format!("r{i}"),
        });
    }
    let denials = dashboard.denials.lock().unwrap();
    assert_eq!(denials.len(), MAX_DENIALS);
    assert_eq!(denials.back().unwrap().request_id, format!("r{}", MAX_DENIALS + 4));
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    // The SVG namespace is a name, not an address anything is fetched from.
    let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
    for external in ["http://", "https://", "//cdn", "<link", "src="] {
        assert!(!page.contains(external), "the page references {external}");
    }
    // Values from traffic are written as text, never as markup.
    assert!(!PAGE.contains("innerHTML"));
}
