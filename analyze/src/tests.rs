//! The engine against a recorded trail with planted anomalies: exactly the
//! planted ones fire, with the alert table's severities and actions.

use std::io::Write as _;

use clawgress_policies::model::{AlertAction, Severity};
use serde_json::{Value, json};

use crate::anomaly::Kind;
use crate::engine::{Engine, Settings};
use crate::line::{Line, timestamp_ms};

const T0: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[allow(clippy::too_many_arguments)]
fn egress(
    ms: i64,
    agent: &str,
    decision: &str,
    reason: Option<&str>,
    method: &str,
    domain: &str,
    port: u16,
    asn: u32,
) -> Value {
    let kind = match decision {
        "deny" => "egress_denied",
        "rate_limited" => "egress_rate_limited",
        _ => "egress_request",
    };
    let mut line = json!({
        "timestamp": at(ms), "type": kind, "request_id": format!("r{ms}{agent}"), "agent_id": agent,
        "team_id": "t", "project_id": "p", "environment": "dev",
        "request": {"method": method, "domain": domain, "port": port, "path": "/"},
        "decision": decision, "policy_id": "allowlist.x[0]", "policy_version": "abcdef012345",
        "enforcement_mode": "enforce", "destination_asn": asn, "destination_geo": "NL",
        "protocol": "https", "tunnel": false, "bytes_out": 1000, "bytes_in": 5000, "latency_ms": 3,
        "token_estimate": 100, "dlp_matches": [], "anomaly_score": 0.0,
        "prev_hash": "0".repeat(64), "hash": "1".repeat(64),
    });
    if let Some(reason) = reason {
        line["reason"] = reason.into();
    }
    line
}

/// The trail: twelve minutes of one agent's usual traffic, then one planted
/// anomaly per detector (and per row of the alert table), plus lines the
/// engine must skip or ignore.
fn recorded_trail() -> Vec<String> {
    let mut lines: Vec<Value> = Vec::new();
    let minute = |m: i64| T0 + m * 60_000;
    for m in 0..12 {
        for i in 0..5 {
            lines.push(egress(
                minute(m) + i * 10_000,
                "steady",
                "allow",
                None,
                "GET",
                "api.example.com",
                443,
                64_500,
            ));
        }
    }
    // Unusual traffic (medium): a new domain, a new method, a new port, an ASN change.
    lines.push(egress(
        minute(12),
        "steady",
        "allow",
        None,
        "GET",
        "new.example.org",
        443,
        64_510,
    ));
    lines.push(egress(
        minute(12) + 1000,
        "steady",
        "allow",
        None,
        "DELETE",
        "api.example.com",
        443,
        64_500,
    ));
    lines.push(egress(
        minute(13),
        "steady",
        "allow",
        None,
        "GET",
        "api.example.com",
        8443,
        64_500,
    ));
    lines.push(egress(
        minute(13) + 1000,
        "steady",
        "allow",
        None,
        "GET",
        "api.example.com",
        443,
        64_501,
    ));
    // A request-rate spike: 100 in one minute, usually 5.
    for i in 0..100 {
        lines.push(egress(
            minute(14) + i * 500,
            "steady",
            "allow",
            None,
            "GET",
            "api.example.com",
            443,
            64_501,
        ));
    }
    // A bytes-out spike: 20 MB in one request.
    let mut big = egress(
        minute(15),
        "steady",
        "allow",
        None,
        "GET",
        "api.example.com",
        443,
        64_501,
    );
    big["bytes_out"] = 20_000_000.into();
    lines.push(big);
    // A token surge: 80k tokens in one AI request.
    let mut surge = egress(
        minute(16),
        "steady",
        "allow",
        None,
        "GET",
        "api.example.com",
        443,
        64_501,
    );
    surge["tokens_in"] = 70_000.into();
    surge["tokens_out"] = 10_000.into();
    lines.push(surge);
    // Blocked domain (warning) eleven times in 30 s: repeated blocked (high).
    for i in 0..11 {
        lines.push(egress(
            minute(20) + i * 3000,
            "prober",
            "deny",
            Some("domain_not_in_allowlist"),
            "GET",
            "evil.example",
            443,
            64_666,
        ));
    }
    // Data exfiltration (critical): a DLP block, and an exfiltration-shaped DNS name.
    let mut leak = egress(
        minute(21),
        "leaky",
        "deny",
        Some("dlp_blocked"),
        "POST",
        "paste.example",
        443,
        64_700,
    );
    leak["dlp_matches"] = json!([{"type": "aws_access_key", "class": "secret", "action": "block", "location": "body"}]);
    lines.push(leak);
    lines.push(json!({
        "timestamp": at(minute(21) + 500), "type": "dns_query", "agent_id": "tunneler", "qname": "a9f3k2j5h7g1d8s6.exfil.example",
        "qtype": "A", "decision": "nxdomain", "rcode": "NXDOMAIN", "alert": true, "alert_reason": "high_entropy_label",
    }));
    // Rate limit exceeded (info) and a certificate error (high).
    lines.push(egress(
        minute(22),
        "hasty",
        "rate_limited",
        Some("rate_limit_exceeded"),
        "GET",
        "api.example.com",
        443,
        64_500,
    ));
    lines.push(egress(
        minute(22),
        "tls-agent",
        "deny",
        Some("upstream_certificate_expired"),
        "GET",
        "old.example",
        443,
        64_800,
    ));
    // Lines that are no anomaly at all.
    lines.push(json!({"timestamp": at(minute(23)), "type": "admin_action", "actor": "mia", "role": "maintainer", "action": "restore", "details": {}}));
    lines.push(json!({"timestamp": at(minute(23)), "type": "checkpoint", "sequence": 10, "signature": "…"}));
    let mut text: Vec<String> = lines.iter().map(Value::to_string).collect();
    // Corrupted lines: skipped and counted, never fatal.
    text.insert(70, "{\"timestamp\": \"2026-12-01T00:1".to_string());
    text.insert(
        90,
        json!({"timestamp": "yesterday", "type": "egress_request"}).to_string(),
    );
    text
}

fn replay(settings: Settings, lines: &[String]) -> (Engine, Vec<crate::Anomaly>) {
    let mut engine = Engine::new(settings);
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        crate::run::observe(&mut engine, line.as_bytes(), &mut found, || format!("trail:{}", n + 1));
    }
    (engine, found)
}

#[test]
fn exactly_the_planted_anomalies_fire_with_their_severities() {
    let (engine, found) = replay(Settings::default(), &recorded_trail());
    let mut fired: Vec<(Kind, &str, Severity, AlertAction)> = found
        .iter()
        .map(|a| (a.kind, a.agent_id.as_str(), a.severity, a.action))
        .collect();
    fired.sort_by_key(|(kind, agent, ..)| (kind.as_str(), agent.to_string()));
    let mut want = vec![
        (Kind::NewDomain, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::UnusualMethod, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::UnusualPort, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::AsnChange, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::RequestSpike, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::BytesOutSpike, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::TokenSurge, "steady", Severity::Medium, AlertAction::Notify),
        (Kind::BlockedRequest, "prober", Severity::Warning, AlertAction::Notify),
        (Kind::RepeatedBlocked, "prober", Severity::High, AlertAction::Alert),
        (Kind::DlpBlock, "leaky", Severity::Critical, AlertAction::Quarantine),
        (
            Kind::DnsExfiltration,
            "tunneler",
            Severity::Critical,
            AlertAction::Quarantine,
        ),
        (Kind::RateLimited, "hasty", Severity::Info, AlertAction::Log),
        (Kind::CertificateError, "tls-agent", Severity::High, AlertAction::Alert),
    ];
    want.sort_by_key(|(kind, agent, ..)| (kind.as_str(), agent.to_string()));
    assert_eq!(fired, want, "{found:#?}");
    assert_eq!(engine.stats.skipped, 2);
    assert_eq!(engine.stats.anomalies, 13);
    assert_eq!(engine.stats.by_severity, [1, 1, 7, 2, 2]);

    // Scores stay in their severity's band; a spike is scored by how far past.
    for anomaly in &found {
        let base = crate::anomaly::base_score(anomaly.severity);
        assert!(
            anomaly.anomaly_score >= base && anomaly.anomaly_score < base + 0.3,
            "{anomaly:?}"
        );
        assert_eq!(anomaly.subject_name(), format!("alerts.{}", anomaly.severity.as_str()));
    }
    let spike = found.iter().find(|a| a.kind == Kind::RequestSpike).unwrap();
    assert_eq!(spike.observed, Some(61.0));
    assert!(spike.anomaly_score > 0.5);
    // The blocked-domain warning stands for all eleven once its cooldown ends;
    // until then the later ones are folded into it, not reported again.
    let warning = found.iter().find(|a| a.kind == Kind::BlockedRequest).unwrap();
    assert_eq!((warning.count, warning.subject.as_str()), (1, "evil.example"));
    let leak = found.iter().find(|a| a.kind == Kind::DlpBlock).unwrap();
    assert!(leak.detail.contains("aws_access_key"), "{}", leak.detail);
    assert_eq!(leak.destination.as_ref().and_then(|d| d.asn), Some(64_700));
}

#[test]
fn a_replay_finds_the_same_thing_twice_and_auto_terminate_can_be_off() {
    let trail = recorded_trail();
    let first: Vec<_> = replay(Settings::default(), &trail)
        .1
        .into_iter()
        .map(|a| (a.kind, a.agent_id))
        .collect();
    let second: Vec<_> = replay(Settings::default(), &trail)
        .1
        .into_iter()
        .map(|a| (a.kind, a.agent_id))
        .collect();
    assert_eq!(first, second, "time is the trail's, never the clock's");

    let mut policy = clawgress_policies::model::PolicyDocument::default();
    policy.fault_containment.auto_terminate.on_data_exfiltration = false;
    let (_, found) = replay(Settings::from_policy(&policy), &trail);
    let leak = found.iter().find(|a| a.kind == Kind::DlpBlock).unwrap();
    assert_eq!((leak.severity, leak.action), (Severity::Critical, AlertAction::Alert));
}

#[test]
fn nothing_is_new_during_the_learning_period() {
    let lines: Vec<String> = (0..50)
        .map(|i| {
            egress(
                T0 + i * 1000,
                "fresh",
                "allow",
                None,
                ["GET", "PUT"][i as usize % 2],
                &format!("d{i}.example"),
                443 + i as u16,
                1,
            )
            .to_string()
        })
        .collect();
    let (engine, found) = replay(Settings::default(), &lines);
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(engine.stats.egress, 50);
}

#[test]
fn trail_timestamps_parse_fast_and_exactly() {
    assert_eq!(timestamp_ms("2026-12-01T00:00:00.000Z"), Some(T0));
    assert_eq!(timestamp_ms("2026-12-01T01:02:03.456Z"), Some(T0 + 3_723_456));
    assert_eq!(timestamp_ms("2026-12-01T02:02:03.456+01:00"), Some(T0 + 3_723_456));
    assert_eq!(timestamp_ms("2024-02-29T00:00:00.000Z"), Some(1_709_164_800_000));
    assert_eq!(timestamp_ms("2026-13-01T00:00:00.000Z"), None);
    assert_eq!(timestamp_ms("soon"), None);
    let line = Line::parse(br#"{"timestamp":"2026-12-01T00:00:00.000Z","type":"x","extra":{"deep":[1,2]}}"#).unwrap();
    assert_eq!(line.at_ms(), T0);
    assert!(Line::parse(b"[1,2]").is_err());
}

#[tokio::test]
async fn the_run_reads_a_trail_file_and_names_what_it_skips() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    let mut file = std::fs::File::create(&trail).unwrap();
    for line in recorded_trail() {
        writeln!(file, "{line}").unwrap();
    }
    // A torn last line, as a crash leaves it.
    write!(file, "{{\"timestamp\":\"2026-12-01T00:30:00.000Z\",\"type\":\"egr").unwrap();
    drop(file);
    let out = dir.path().join("anomalies.jsonl");
    let summary = crate::run::run(crate::run::Options {
        trail: Some(trail),
        follow: false,
        nats: None,
        durable: "test".to_string(),
        settings: Settings::default(),
        control: None,
        out: Some(Box::new(std::fs::File::create(&out).unwrap())),
        stop: None,
    })
    .await
    .unwrap();
    assert_eq!(summary.stats.skipped, 3);
    assert_eq!(summary.stats.anomalies, 13);
    let anomalies: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(anomalies.len(), 13);
    let leak = anomalies.iter().find(|a| a["kind"] == "dlp_block").unwrap();
    assert_eq!(leak["type"], "anomaly");
    assert_eq!(leak["condition"], "data_exfiltration");
    assert_eq!(leak["severity"], "critical");
    assert_eq!(leak["anomaly_score"], 1.0);
    assert_eq!(
        leak["enforcement"],
        json!({"action": "quarantine", "outcome": "dry_run"})
    );
    assert!(
        anomalies
            .iter()
            .all(|a| a.get("enforcement").is_none() || a["action"] == "quarantine")
    );
}

fn trail_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("audit.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for line in recorded_trail() {
        writeln!(file, "{line}").unwrap();
    }
    path
}

#[test]
fn search_filters_by_agent_domain_decision_and_time() {
    use crate::search::{Filter, parse_when, search_trail};
    let dir = tempfile::tempdir().unwrap();
    let trail = trail_file(dir.path());
    let filter = Filter {
        agent: Some("prober".to_string()),
        domain: Some("EVIL.example".to_string()),
        decision: Some("deny".to_string()),
        limit: 100,
        ..Filter::default()
    };
    let found = search_trail(&trail, &filter).unwrap();
    assert_eq!(found.matched, 11);
    assert_eq!(found.skipped.len(), 2, "{:?}", found.skipped);
    assert!(found.skipped[0].contains("audit.jsonl:71"), "{:?}", found.skipped);
    let limited = search_trail(
        &trail,
        &Filter {
            limit: 3,
            ..filter.clone()
        },
    )
    .unwrap();
    assert_eq!((limited.matched, limited.truncated), (3, true));
    let now = chrono::DateTime::from_timestamp_millis(T0 + 21 * 60_000).unwrap();
    let window = Filter {
        from: Some(parse_when("10m", now).unwrap()),
        to: Some(parse_when("now", now).unwrap()),
        limit: 1000,
        ..Filter::default()
    };
    let recent = search_trail(&trail, &window).unwrap();
    // Minutes 11 to 20: five usual requests, the planted ones and the prober's.
    assert_eq!(recent.matched, 5 + 4 + 100 + 2 + 11);
    assert!(parse_when("fortnight", now).is_err());
    let dns = search_trail(
        &trail,
        &Filter {
            domain: Some("a9f3k2j5h7g1d8s6.exfil.example".into()),
            limit: 9,
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(dns.matched, 1);
}

#[test]
fn an_evidence_bundle_has_records_checkpoints_policies_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let trail = trail_file(dir.path());
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "egress: {default_action: deny}\n").unwrap();
    let out = dir.path().join("bundle");
    let from = chrono::DateTime::from_timestamp_millis(T0 + 20 * 60_000).unwrap();
    let to = chrono::DateTime::from_timestamp_millis(T0 + 24 * 60_000).unwrap();
    let manifest = crate::evidence::write(&crate::evidence::Request {
        trail: &trail,
        from,
        to,
        out: &out,
        policies: std::slice::from_ref(&policy),
    })
    .unwrap();
    assert_eq!(manifest.records, 11 + 2 + 2 + 1);
    assert_eq!((manifest.admin_actions, manifest.checkpoints), (1, 1));
    assert_eq!(manifest.policy_versions.len(), 1);
    assert_eq!(manifest.policy_versions[0].version, "abcdef012345");
    assert!(
        manifest.policy_versions[0].file.is_none(),
        "no given file has that version"
    );
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (digest, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(out.join(name)).unwrap();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), digest, "{name}");
    }
    assert!(sums.contains("  records.jsonl") && sums.contains("  manifest.json"));
    let again = crate::evidence::write(&crate::evidence::Request {
        trail: &trail,
        from,
        to,
        out: &out,
        policies: &[],
    });
    assert!(again.unwrap_err().to_string().contains("not empty"));
}

#[test]
fn a_policy_diff_lists_the_pairs_that_change() {
    let dir = tempfile::tempdir().unwrap();
    let trail = trail_file(dir.path());
    let candidate = dir.path().join("new.yaml");
    std::fs::write(
        &candidate,
        "allowlist:\n  apis:\n    - domain: \"api.example.com\"\n      ports: [443]\n      protocols: [https]\n    - domain: \"evil.example\"\n      ports: [443]\n      protocols: [https]\n",
    )
    .unwrap();
    let bundle = clawgress_policies::load_file(&candidate).unwrap();
    let since = chrono::DateTime::from_timestamp_millis(T0).unwrap();
    let diff = crate::replay::diff(&trail, &bundle, since, &Default::default(), chrono::Utc::now()).unwrap();
    let pairs = |changes: &[crate::replay::Change]| -> Vec<(String, String, u16)> {
        changes
            .iter()
            .map(|c| (c.agent_id.clone(), c.domain.clone(), c.port))
            .collect()
    };
    assert_eq!(
        pairs(&diff.newly_allowed),
        vec![("prober".into(), "evil.example".into(), 443)]
    );
    assert_eq!(diff.newly_allowed[0].requests, 11);
    let denied = pairs(&diff.newly_denied);
    assert!(
        denied.contains(&("steady".into(), "new.example.org".into(), 443)),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("steady".into(), "api.example.com".into(), 8443)),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("tls-agent".into(), "old.example".into(), 443)),
        "{denied:?}"
    );
    assert!(
        !denied.iter().any(|(_, d, p)| d == "api.example.com" && *p == 443),
        "{denied:?}"
    );
    assert!(crate::replay::render(&diff).contains("newly denied"));
}
