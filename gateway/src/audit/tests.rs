use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};

use super::chain_file::find_chain_end;
use super::event::audit_path;
use super::*;

fn fixed_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 12, 4, 10, 30, 0)
        .single()
        .expect("valid date")
        + chrono::Duration::milliseconds(123)
}

fn allowed_event(n: u64) -> EgressEvent {
    let identity = AuditIdentity {
        agent_id: Some("agent-builder-001".into()),
        team_id: Some("team-a".into()),
        project_id: Some("proj-x".into()),
        environment: Some("prod".into()),
        session_id: Some("session-abc123".into()),
        task_slug: Some("feat-user-auth".into()),
    };
    let mut request = RequestSummary::new("POST", "api.openai.com", Some(443), Some("/v1/chat/completions"));
    request.size_bytes = Some(1234);
    let mut event = EgressEvent::new(
        new_request_id(),
        identity,
        request,
        Verdict::Allow {
            allowed_by: Some("core_allowlist".into()),
        },
        "allowlist.ai_providers[0]",
        EnforcementMode::Enforce,
    );
    event.timestamp = fixed_time();
    event.response = Some(ResponseSummary {
        status: 200,
        latency_ms: 1523,
        size_bytes: 5678,
    });
    event.trace_id = Some("trace-12345".into());
    event.policy_version = Some("ab12".into());
    event.destination_ip = Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
    event.protocol = Some(Protocol::Https);
    event.tunnel = true;
    event.bytes_out = 1234 + n;
    event.bytes_in = 5678;
    event.latency_ms = 1523;
    event
}

fn denied_event() -> EgressEvent {
    let identity = AuditIdentity {
        agent_id: Some("agent-builder-001".into()),
        ..AuditIdentity::default()
    };
    let mut event = EgressEvent::new(
        new_request_id(),
        identity,
        RequestSummary::new("GET", "malicious-site.com", None, Some("/data?token=s3cr3t")),
        Verdict::Deny {
            reason: "domain_not_in_allowlist",
            alert: true,
        },
        "default_deny",
        EnforcementMode::Enforce,
    );
    event.timestamp = fixed_time();
    event
}

/// Top-level keys in the order they appear (`serde_json::Value` would sort them).
fn keys(line: &str) -> Vec<String> {
    struct KeysInOrder(Vec<String>);
    impl<'de> serde::de::Visitor<'de> for KeysInOrder {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
            while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                self.0.push(key);
            }
            Ok(self.0)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    serde::Deserializer::deserialize_map(&mut de, KeysInOrder(Vec::new())).expect("object")
}

fn to_line(event: impl Into<AuditEvent>) -> String {
    serde_json::to_string(&event.into()).expect("serialize")
}

#[test]
fn allowed_event_has_the_documented_fields_in_order() {
    let line = to_line(allowed_event(0));
    let expected = [
        "timestamp",
        "type",
        "request_id",
        "agent_id",
        "team_id",
        "project_id",
        "environment",
        "session_id",
        "task_slug",
        "request",
        "response",
        "trace_id",
        "allowed_by",
        "decision",
        "policy_id",
        "policy_version",
        "enforcement_mode",
        "destination_ip",
        "protocol",
        "tunnel",
        "bytes_out",
        "bytes_in",
        "latency_ms",
        "token_estimate",
        "dlp_matches",
        "anomaly_score",
    ];
    assert_eq!(keys(&line), expected);
    assert!(line.starts_with(r#"{"timestamp":"2025-12-04T10:30:00.123Z","type":"egress_request","request_id":""#));
    assert!(line.contains(
        r#""request":{"method":"POST","domain":"api.openai.com","port":443,"path":"/v1/chat/completions","size_bytes":1234},"response":{"status":200,"latency_ms":1523,"size_bytes":5678}"#
    ));
    assert!(line.contains(r#""decision":"allow","policy_id":"allowlist.ai_providers[0]","policy_version":"ab12","enforcement_mode":"enforce","destination_ip":"1.2.3.4","protocol":"https","tunnel":true"#));
    assert!(
        line.ends_with(r#""token_estimate":null,"dlp_matches":[],"anomaly_score":0.0}"#),
        "{line}"
    );
}

#[test]
fn denied_event_omits_unknown_fields_and_drops_the_query() {
    let line = to_line(denied_event());
    let value: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(value["type"], "egress_denied");
    assert_eq!(value["decision"], "deny");
    assert_eq!(value["action"], "blocked");
    assert_eq!(value["alert"], true);
    assert_eq!(value["reason"], "domain_not_in_allowlist");
    assert_eq!(value["policy_id"], "default_deny");
    assert_eq!(
        value["request"],
        serde_json::json!({"method": "GET", "domain": "malicious-site.com", "path": "/data"})
    );
    assert!(!line.contains("s3cr3t"));
    for absent in [
        "team_id",
        "response",
        "allowed_by",
        "destination_ip",
        "policy_version",
        "session_id",
    ] {
        assert!(value.get(absent).is_none(), "{absent} should be omitted: {line}");
    }
    let order = keys(&line);
    let pos = |k: &str| order.iter().position(|x| x == k).expect(k);
    assert!(pos("request") < pos("reason") && pos("reason") < pos("action") && pos("alert") < pos("decision"));
}

#[test]
fn would_deny_is_a_reported_egress_request() {
    let mut event = allowed_event(0);
    event.verdict = Verdict::WouldDeny {
        reason: "domain_not_in_allowlist",
        alert: false,
    };
    event.enforcement_mode = EnforcementMode::Report;
    event.upstream_error = Some("upstream_reset");
    let value: serde_json::Value = serde_json::from_str(&to_line(event)).expect("json");
    assert_eq!(value["type"], "egress_request");
    assert_eq!(value["decision"], "would_deny");
    assert_eq!(value["action"], "reported");
    assert_eq!(value["reason"], "domain_not_in_allowlist");
    assert_eq!(value["enforcement_mode"], "report");
    assert_eq!(value["error"], "upstream_reset");
    assert!(value.get("allowed_by").is_none());
}

#[test]
fn admin_event_shape() {
    let mut event = AdminEvent::new("alice", "maintainer", "allowlist.approve");
    event.timestamp = fixed_time();
    event.details.insert("domain".into(), "example.org".into());
    let line = to_line(event);
    assert_eq!(
        line,
        r#"{"timestamp":"2025-12-04T10:30:00.123Z","type":"admin_action","actor":"alice","role":"maintainer","action":"allowlist.approve","details":{"domain":"example.org"}}"#
    );
}

#[test]
fn audit_path_keeps_only_the_path() {
    assert_eq!(audit_path("/v1/x?key=secret#frag"), "/v1/x");
    assert_eq!(audit_path("/a#b?c"), "/a");
    assert_eq!(audit_path("http://user:pass@host:8080/p/q?x=1"), "/p/q");
    assert_eq!(audit_path("https://host?token=1"), "/");
    assert_eq!(audit_path("http://host"), "/");
    assert_eq!(audit_path("/redirect?to=http://evil/x"), "/redirect");
    assert_eq!(audit_path("*"), "*");
}

#[test]
fn audit_path_is_truncated_on_a_char_boundary() {
    // 'é' is two bytes: 511 ASCII bytes then 'é' would straddle the 512 limit.
    let long = format!("/{}é{}", "a".repeat(510), "b".repeat(100));
    let cut = audit_path(&long);
    assert_eq!(cut.len(), 511);
    assert!(cut.ends_with('a'));
    let exact = format!("/{}", "c".repeat(1000));
    assert_eq!(audit_path(&exact).len(), MAX_PATH_BYTES);
    let summary = RequestSummary::new(&"M".repeat(100), &"d".repeat(300), None, None);
    assert_eq!(summary.method().len(), 32);
    assert_eq!(summary.domain().len(), 255);
    assert_eq!(summary.path(), None);
}

#[test]
fn request_ids_are_random_w3c_trace_ids() {
    let ids: Vec<String> = (0..10_000).map(|_| new_request_id().to_string()).collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    for id in &ids {
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, &"0".repeat(32), "W3C forbids the all-zero trace id");
    }
    // Random, not a prefix and a counter: no shared prefix, no run of zeros,
    // and each hex digit about equally common.
    assert_ne!(ids[0][..16], ids[1][..16]);
    assert!(
        ids.iter().all(|id| !id.contains("000000000000")),
        "a zero run as from a counter"
    );
    let mut digits = [0usize; 16];
    for b in ids.iter().flat_map(|id| id.bytes()) {
        digits[char::from(b).to_digit(16).unwrap() as usize] += 1;
    }
    let expected = ids.len() * 32 / 16;
    assert!(
        digits.iter().all(|&n| n.abs_diff(expected) < expected / 10),
        "{digits:?}"
    );
    // Other threads draw their own ids.
    let other = std::thread::spawn(|| new_request_id().to_string()).join().unwrap();
    assert!(!unique.contains(&other));
}

// ---- writer and verifier ----

fn metrics() -> AuditMetrics {
    AuditMetrics::detached().expect("metrics")
}

async fn write_events(path: &Path, count: u64) -> AuditMetrics {
    let metrics = metrics();
    let (sink, handle) = start_writer(path, 16, metrics.clone()).expect("start");
    for n in 0..count {
        // Reserve-then-record, as a request does; wait out a full queue.
        let slot = loop {
            match sink.reserve() {
                Ok(slot) => break slot,
                Err(AuditUnavailable::QueueFull) => tokio::task::yield_now().await,
                Err(e) => panic!("writer stopped: {e}"),
            }
        };
        slot.record(allowed_event(n));
    }
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    metrics
}

fn temp_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

fn bad_line(path: &Path) -> (u64, LineProblem) {
    match verify_file(path) {
        Err(VerifyError::BadLine { line, problem }) => (line, problem),
        other => panic!("expected a bad line, got {other:?}"),
    }
}

#[tokio::test]
async fn hundred_events_verify_and_follow_the_documented_hash() {
    let (_dir, path) = temp_log();
    let metrics = write_events(&path, 100).await;
    assert_eq!(metrics.lines_written.get(), 100);
    assert_eq!(metrics.queue_depth.get(), 0);

    let report = verify_file(&path).expect("valid chain");
    assert_eq!(report.lines, 100);
    assert!(report.torn_lines.is_empty());

    // Recompute the chain from the documented definition alone.
    let mut prev = "0".repeat(64);
    for line in read_lines(&path) {
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["prev_hash"], prev.as_str());
        let hashed = &line[..line.find(r#","hash":"#).expect("hash field")];
        assert!(hashed.ends_with(&format!(r#","prev_hash":"{prev}""#)));
        let hash = hex::encode(Sha256::digest(hashed.as_bytes()));
        assert_eq!(value["hash"], hash.as_str());
        assert!(line.ends_with(&format!(r#","hash":"{hash}"}}"#)));
        prev = hash;
    }
    assert_eq!(report.last_hash, prev);
}

#[tokio::test]
async fn an_edited_byte_is_reported_on_its_line() {
    let (_dir, path) = temp_log();
    write_events(&path, 100).await;
    let mut lines = read_lines(&path);
    lines[49] = lines[49].replacen("api.openai.com", "api.openai.con", 1);
    write_lines(&path, &lines);
    assert_eq!(bad_line(&path), (50, LineProblem::Edited));
}

#[tokio::test]
async fn a_deleted_line_is_reported_at_the_line_after_the_gap() {
    let (_dir, path) = temp_log();
    write_events(&path, 100).await;
    let mut lines = read_lines(&path);
    lines.remove(29);
    write_lines(&path, &lines);
    assert_eq!(bad_line(&path), (30, LineProblem::ChainBroken));
}

#[tokio::test]
async fn swapped_lines_are_reported_at_the_first_of_them() {
    let (_dir, path) = temp_log();
    write_events(&path, 100).await;
    let mut lines = read_lines(&path);
    lines.swap(9, 10);
    write_lines(&path, &lines);
    assert_eq!(bad_line(&path), (10, LineProblem::ChainBroken));
}

#[tokio::test]
async fn an_inserted_junk_line_is_not_mistaken_for_a_torn_write() {
    let (_dir, path) = temp_log();
    write_events(&path, 20).await;
    let mut lines = read_lines(&path);
    lines.insert(5, "{\"timestamp\":".into());
    write_lines(&path, &lines);
    assert!(matches!(bad_line(&path), (6, LineProblem::NotJson { .. })));
}

#[tokio::test]
async fn a_restart_continues_the_chain() {
    let (_dir, path) = temp_log();
    write_events(&path, 60).await;
    let first_run_last = verify_file(&path).expect("valid").last_hash;
    write_events(&path, 40).await;
    let report = verify_file(&path).expect("valid across the restart");
    assert_eq!(report.lines, 100);
    let line61: serde_json::Value = serde_json::from_str(&read_lines(&path)[60]).expect("json");
    assert_eq!(line61["prev_hash"], first_run_last.as_str());
}

#[tokio::test]
async fn a_torn_last_line_is_reported_then_recovered_on_restart() {
    let (_dir, path) = temp_log();
    write_events(&path, 10).await;
    let text = std::fs::read(&path).expect("read");
    let torn_len = text.len() - 40;
    std::fs::write(&path, &text[..torn_len]).expect("tear");
    // Reported, not refused: the nine records before it are intact.
    let report = verify_file(&path).expect("a torn tail is what a crash leaves");
    assert_eq!(
        report.torn_tail,
        Some(TornTail {
            first_line: 10,
            lines: 1,
            bytes: torn_len as u64
                - text[..torn_len]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i as u64 + 1),
        })
    );
    assert_eq!(report.lines, 10);

    write_events(&path, 5).await;
    let report = verify_file(&path).expect("recovered chain verifies");
    assert_eq!(report.torn_lines, vec![10]);
    assert_eq!(report.lines, 16);
    let lines = read_lines(&path);
    let marker: serde_json::Value = serde_json::from_str(&lines[10]).expect("json");
    assert_eq!(marker["type"], "audit_chain_resumed");
    assert_eq!(marker["torn_lines"], 1);
    let line9: serde_json::Value = serde_json::from_str(&lines[8]).expect("json");
    assert_eq!(marker["prev_hash"], line9["hash"], "chains from the last complete line");
}

#[tokio::test]
async fn lines_slipped_in_or_removed_next_to_a_resume_marker_are_reported() {
    let (_dir, path) = temp_log();
    write_events(&path, 3).await;
    let text = std::fs::read(&path).expect("read");
    std::fs::write(&path, &text[..text.len() - 40]).expect("tear");
    write_events(&path, 2).await;
    let lines = read_lines(&path);
    assert_eq!(verify_file(&path).expect("recovered").torn_lines, vec![3]);

    // A forged record placed among the unhashed fragments.
    let mut forged = lines.clone();
    forged.insert(
        3,
        r#"{"type":"egress_request","agent_id":"agent-builder-001","decision":"allow"}"#.to_string(),
    );
    write_lines(&path, &forged);
    assert_eq!(bad_line(&path), (3, LineProblem::TornMismatch));

    // The fragment removed: the marker still says one line was torn.
    let mut removed = lines.clone();
    removed.remove(2);
    write_lines(&path, &removed);
    assert_eq!(bad_line(&path), (3, LineProblem::TornMismatch));
}

#[tokio::test]
async fn a_complete_last_line_missing_only_its_newline_is_kept() {
    let (_dir, path) = temp_log();
    write_events(&path, 10).await;
    let text = std::fs::read(&path).expect("read");
    std::fs::write(&path, &text[..text.len() - 1]).expect("cut newline");
    assert_eq!(verify_file(&path).expect("still a valid record").lines, 10);
    write_events(&path, 5).await;
    let report = verify_file(&path).expect("valid");
    assert_eq!((report.lines, report.torn_lines.len()), (15, 0));
}

#[tokio::test]
async fn a_crash_during_recovery_is_recovered_too() {
    let (_dir, path) = temp_log();
    write_events(&path, 3).await;
    let mut text = std::fs::read(&path).expect("read");
    // A torn line, then a torn resume marker behind it.
    text.extend_from_slice(b"{\"timestamp\":\"2025\n{\"timestamp\":\"20");
    std::fs::write(&path, &text).expect("write");
    write_events(&path, 2).await;
    let report = verify_file(&path).expect("valid");
    assert_eq!(report.torn_lines, vec![4, 5]);
    assert_eq!(report.lines, 8);
}

#[tokio::test]
async fn the_writer_refuses_to_chain_onto_an_edited_last_line() {
    let (_dir, path) = temp_log();
    write_events(&path, 3).await;
    let mut lines = read_lines(&path);
    lines[2] = lines[2].replacen("agent-builder-001", "agent-builder-002", 1);
    write_lines(&path, &lines);
    let started = start_writer(&path, 4, metrics());
    assert!(matches!(
        started,
        Err(AuditError::CorruptTail {
            problem: LineProblem::Edited,
            ..
        })
    ));
}

#[tokio::test]
async fn a_full_queue_refuses_and_counts() {
    let (_dir, path) = temp_log();
    let metrics = metrics();
    let (sink, handle) = start_writer(&path, 2, metrics.clone()).expect("start");
    let first = sink.reserve().expect("slot 1");
    let second = sink.reserve().expect("slot 2");
    assert_eq!(metrics.queue_depth.get(), 2);
    assert_eq!(sink.reserve().err(), Some(AuditUnavailable::QueueFull));
    assert_eq!(sink.reserve().err(), Some(AuditUnavailable::QueueFull));
    assert_eq!(metrics.queue_full.get(), 2);
    first.record(allowed_event(1));
    second.record(denied_event());
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    assert_eq!(verify_file(&path).expect("valid").lines, 2);
}

#[tokio::test]
async fn shutdown_waits_for_reserved_slots_and_then_refuses_new_ones() {
    let (_dir, path) = temp_log();
    let metrics = metrics();
    let (sink, handle) = start_writer(&path, 4, metrics.clone()).expect("start");
    let in_flight = sink.reserve().expect("slot");
    let shutdown = tokio::spawn(handle.shutdown());
    // Let the writer see the stop request and close the queue.
    while sink.reserve().is_ok() {
        tokio::task::yield_now().await;
    }
    assert_eq!(sink.reserve().err(), Some(AuditUnavailable::WriterStopped));
    assert!(!shutdown.is_finished());
    in_flight.record(allowed_event(7));
    shutdown.await.expect("join").expect("shutdown");
    assert_eq!(verify_file(&path).expect("valid").lines, 1);
    assert_eq!(metrics.lines_written.get(), 1);
}

#[tokio::test]
async fn an_abandoned_slot_is_counted_and_writes_nothing() {
    let (_dir, path) = temp_log();
    let metrics = metrics();
    let (sink, handle) = start_writer(&path, 4, metrics.clone()).expect("start");
    drop(sink.reserve().expect("slot"));
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    assert_eq!(metrics.slots_abandoned.get(), 1);
    assert_eq!(verify_file(&path).expect("valid").lines, 0);
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_refused() {
    let (_dir, path) = temp_log();
    let (sink, handle) = start_writer(&path, 4, metrics()).expect("start");
    assert!(matches!(
        start_writer(&path, 4, metrics()),
        Err(AuditError::Locked { .. })
    ));
    drop(sink);
    handle.shutdown().await.expect("shutdown");
    let (_sink, again) = start_writer(&path, 4, metrics()).expect("lock released");
    again.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn zero_capacity_is_refused() {
    let (_dir, path) = temp_log();
    assert!(matches!(
        start_writer(&path, 0, metrics()),
        Err(AuditError::ZeroCapacity)
    ));
}

#[test]
fn the_writer_runs_on_its_own_thread_without_a_runtime_of_the_caller() {
    let (_dir, path) = temp_log();
    let (sink, handle) = start_writer(&path, 4, metrics()).expect("start");
    sink.reserve().expect("slot").record(denied_event());
    drop(sink);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not stop with its last sink"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(verify_file(&path).expect("valid").lines, 1);
}

#[test]
fn an_empty_file_verifies() {
    let (_dir, path) = temp_log();
    std::fs::write(&path, b"").expect("write");
    let report = verify_file(&path).expect("valid");
    assert_eq!((report.lines, report.last_hash), (0, "0".repeat(64)));
}

#[test]
fn the_tail_scan_starts_from_genesis_only_when_it_saw_the_whole_file() {
    let fragments = b"{\"times\n{\"ti";
    let end = find_chain_end(fragments, true).expect("whole file of fragments");
    assert_eq!(end.last_hash, GENESIS_HASH);
    assert!(end.unterminated);
    assert_eq!(end.torn.map(|t| t.lines), Some(2));
    assert!(find_chain_end(fragments, false).is_err());
    let empty = find_chain_end(b"", true).expect("empty");
    assert_eq!(
        (empty.last_hash, empty.unterminated, empty.torn),
        (GENESIS_HASH, false, None)
    );
}

mod confirm;
mod fuzz;
mod signed;
