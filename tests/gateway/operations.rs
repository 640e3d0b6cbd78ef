//! What operators rely on: metrics, health and the audit trail.

use super::*;

#[tokio::test]
async fn metrics_and_health_are_served_with_bounded_labels() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    raw::send(
        w.gw.proxy,
        &get(&format!("http://unlisted.test:{port}/secret-path"), Some(SCRAPER)),
        b"",
    )
    .await;
    let metrics = w.gw.metrics().await;
    for name in [
        "http_client_requests_total",
        "http_client_duration_seconds_bucket",
        "upstream_reset_events",
        "egress_bytes_total",
        "egress_requests_blocked_total",
        "policy_reloads_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("egress_requests_blocked_total{reason=\"domain_not_in_allowlist\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("secret-path"), "a URL became a label");
    // A denied host is a label in one place only, the capped
    // `egress_denied_domain_total` (its registrable part).
    for line in metrics.lines().filter(|l| l.contains("unlisted.test")) {
        assert!(
            line.starts_with(r#"egress_denied_domain_total{domain="unlisted.test"}"#),
            "a host became a label: {line}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        let response = raw::send(w.gw.admin, &format!("GET {path} HTTP/1.1\r\nHost: admin"), b"").await;
        assert_eq!(response.status, 200, "{path}");
    }
}

#[tokio::test]
async fn audit_trail_survives_restart_and_detects_tampering() {
    let mut w = world("enforce").await;
    let port = w.origin.addr.port();
    for i in 0..5 {
        let path = if i % 2 == 0 { "hello" } else { "nope" };
        let host = if i % 2 == 0 { "site.test" } else { "unlisted.test" };
        raw::send(
            w.gw.proxy,
            &get(&format!("http://{host}:{port}/{path}"), Some(SCRAPER)),
            b"",
        )
        .await;
    }
    assert!(w.gw.stop().success(), "clean exit on SIGTERM");
    let audit = w.gw.audit.clone();
    assert_eq!(
        w.gw.audit_lines().len(),
        5,
        "every request has exactly one line after a clean stop"
    );
    let verify = |path: &std::path::Path| {
        std::process::Command::new(support::clawgress_bin())
            .args(["audit", "verify"])
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = verify(&audit);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let text = std::fs::read_to_string(&audit).unwrap();
    let edited = text.replacen("unlisted.test", "harmless.test", 1);
    let tampered = w.gw.dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, edited).unwrap();
    let bad = verify(&tampered);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("tampered.jsonl:2: "),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let removed = verify(&tampered);
    assert!(!removed.status.success());
    assert!(
        String::from_utf8_lossy(&removed.stderr).contains("tampered.jsonl:3: "),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
}
