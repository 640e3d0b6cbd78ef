//! Issue 15 parts 1-3: no answered request without a record (kill -9 under
//! load), the audit streams across a NATS outage, signed checkpoints and
//! signed policy bundles, with the real binary.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use support::nats::NatsServer;

use super::*;

/// The shared test policy, with room for many concurrent requests of one agent.
async fn load_world() -> (upstream::Origin, TestDns, String) {
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let policy = policy_yaml(origin.addr.port(), 1, 1, dns.addr, "enforce")
        .replace("max_concurrent_requests: 10", "max_concurrent_requests: 1000")
        .replace("max_pending_bytes: 256KB", "max_pending_bytes: 64MB")
        // site.test's own 100/min would make most of the load rate limited.
        .replacen("      rate_limit: 100/min\n", "", 1);
    (origin, dns, policy)
}

fn clawgress(args: &[&str]) -> std::process::Output {
    Command::new(support::clawgress_bin())
        .args(args)
        .output()
        .expect("run clawgress")
}

fn keys(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let out = clawgress(&["keys", "init", "--dir", &dir.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        dir.join("audit.key"),
        dir.join("audit.pub"),
        dir.join("policy.key"),
        dir.join("policy.pub"),
    )
}

/// Clients hammering the gateway until `stop`: allowed and denied requests
/// on kept-alive connections. Each returns the request ids of the answers
/// it received whole (status, `x-request-id` and the complete body).
fn load(
    gw: &GatewayProc,
    origin: u16,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|n| {
            let proxy = reqwest::Proxy::http(gw.proxy_url())
                .expect("proxy")
                .basic_auth(SCRAPER.0, SCRAPER.1);
            let client = reqwest::Client::builder().proxy(proxy).build().expect("client");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    // One in five is denied: refusals must be on record too.
                    let url = if (n + i).is_multiple_of(5) {
                        format!("http://unlisted.test:{origin}/hello")
                    } else {
                        format!("http://site.test:{origin}/big/{}", 64 + (i % 7) * 1000)
                    };
                    let Ok(response) = client.get(&url).send().await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let id = response
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if response.bytes().await.is_ok()
                        && let Some(id) = id
                    {
                        answered.push(id);
                    }
                }
                answered
            })
        })
        .collect()
}

fn request_ids(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .collect()
}

/// Starts the gateway on an existing trail and stops it cleanly.
fn restart_and_stop(gw: &GatewayProc, extra: &[&str]) {
    let mut child = Command::new(support::clawgress_bin())
        .arg("gateway")
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&gw.policy)
        .arg("--agents")
        .arg(&gw.agents)
        .arg("--audit")
        .arg(&gw.audit)
        .arg("--state-dir")
        .arg(gw.dir.path().join("state2"))
        .args(extra)
        .env("CLAWGRESS_TEST_JWT_SECRET", JWT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart");
    let stdout = child.stdout.take().expect("stdout");
    let started = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("proxy listening on"));
    assert!(started, "the gateway did not start again on the crashed trail");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_answered_request_and_the_trail_verifies() {
    let (origin, _dns, policy) = load_world().await;
    let keydir = tempfile::tempdir().expect("tempdir");
    let (audit_key, audit_pub, _, _) = keys(keydir.path());
    let audit_key = audit_key.display().to_string();
    let audit_pub = audit_pub.display().to_string();
    let signing = ["--audit-key", audit_key.as_str(), "--audit-checkpoint-every", "200"];
    let mut gw = GatewayProc::start_with(&policy, &agents_yaml(), &signing);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, origin.addr.port(), 32, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.child.kill().expect("kill -9");
    let _ = gw.child.wait();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.expect("client"));
    }
    assert!(
        answered.len() > 200,
        "too little load to mean anything: {}",
        answered.len()
    );

    let recorded = request_ids(&gw.audit);
    let missing: Vec<&String> = answered.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no audit line, e.g. {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );

    // The crashed file verifies: intact up to any torn tail, which is named.
    let trail = gw.audit.display().to_string();
    let out = clawgress(&["audit", "verify", &trail, "--key", &audit_pub]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("chain intact") && text.contains("checkpoint(s) verified"),
        "{text}"
    );

    // A restart repairs a torn tail and signs what the crash left unsigned.
    restart_and_stop(&gw, &signing);
    let out = clawgress(&["audit", "verify", &trail, "--key", &audit_pub]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !text.contains("torn tail") && !text.contains("not signed yet"),
        "{text}"
    );
}

/// Every stream's messages, in stream order.
async fn stream_payloads(url: &str) -> HashMap<String, Vec<serde_json::Value>> {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut all = HashMap::new();
    for name in [
        "AUDIT_ALLOWED",
        "AUDIT_DENIED",
        "AUDIT_RATE_LIMITED",
        "AUDIT_ALERT",
        "AUDIT_ADMIN",
        "AUDIT_DNS",
    ] {
        let mut stream = js.get_stream(name).await.expect("stream exists");
        let info = stream.info().await.expect("info");
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut messages = Vec::new();
        for seq in first.max(1)..=last {
            let message = stream.get_raw_message(seq).await.expect("message");
            messages.push(serde_json::from_slice(&message.payload).expect("payload is the audit line"));
        }
        all.insert(name.to_string(), messages);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_streams_get_every_record_once_and_in_order_across_a_nats_outage() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let (origin, _dns, policy) = load_world().await;
    let mut gw = GatewayProc::start_with(&policy, &agents_yaml(), &["--nats", nats.url.as_str()]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&gw, origin.addr.port(), 8, &stop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Records pile up in the file meanwhile; the backlog is measured.
    let metrics = gw.metrics().await;
    assert!(metrics.contains("audit_shipper_up 0"), "{metrics}");
    nats.crash_and_restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    // Everything shipped: the backlog drains once NATS is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = gw.metrics().await;
        if metrics.contains("audit_wal_backlog_bytes 0") && metrics.contains("audit_shipper_up 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog never drained:\n{metrics}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.stop().success());

    let lines: Vec<serde_json::Value> = gw.audit_lines();
    let streams = stream_payloads(&nats.url).await;
    let class = |line: &serde_json::Value| match line["type"].as_str().unwrap_or_default() {
        "egress_request" => "AUDIT_ALLOWED",
        "egress_denied" => "AUDIT_DENIED",
        "egress_rate_limited" => "AUDIT_RATE_LIMITED",
        "dns_query" => "AUDIT_DNS",
        _ => "AUDIT_ADMIN",
    };
    let mut expected: HashMap<&str, Vec<&serde_json::Value>> = HashMap::new();
    for line in &lines {
        expected.entry(class(line)).or_default().push(line);
        if line["alert"] == true {
            expected.entry("AUDIT_ALERT").or_default().push(line);
        }
    }
    let denied = expected.get("AUDIT_DENIED").map_or(0, Vec::len);
    assert!(
        lines.len() > 100 && denied > 10,
        "too little load: {} lines",
        lines.len()
    );
    for (name, messages) in &streams {
        let want: Vec<&serde_json::Value> = expected.get(name.as_str()).cloned().unwrap_or_default();
        let hashes = |v: &[&serde_json::Value]| v.iter().map(|l| l["hash"].to_string()).collect::<Vec<_>>();
        let got: Vec<&serde_json::Value> = messages.iter().collect();
        let (got_hashes, want_hashes) = (hashes(&got), hashes(&want));
        let first_difference = got_hashes.iter().zip(&want_hashes).position(|(a, b)| a != b);
        assert!(
            got_hashes == want_hashes,
            "{name}: the stream must hold exactly the file's lines of its class, once each, in file order: \
             stream {} messages, file {} lines, first difference at {first_difference:?}; reasons {:?}",
            got_hashes.len(),
            want_hashes.len(),
            want.iter()
                .map(|l| l["reason"].as_str().unwrap_or("-"))
                .collect::<HashSet<_>>()
        );
        assert!(
            got.iter().zip(&want).all(|(a, b)| a == b),
            "{name}: payloads are the audit lines"
        );
    }
}

#[tokio::test]
async fn signed_bundles_are_required_and_a_bad_one_is_refused_on_reload_with_an_alert() {
    let (origin, _dns, policy) = load_world().await;
    let keydir = tempfile::tempdir().expect("tempdir");
    let (_, _, policy_key, policy_pub) = keys(keydir.path());
    let (policy_key, policy_pub) = (policy_key.display().to_string(), policy_pub.display().to_string());

    // Unsigned at start: refused, with the file and line.
    let unsigned = keydir.path().join("unsigned.yaml");
    std::fs::write(&unsigned, &policy).expect("write");
    let agents = keydir.path().join("agents.yaml");
    std::fs::write(&agents, agents_yaml()).expect("write");
    let out = clawgress(&[
        "gateway",
        "--policy",
        &unsigned.display().to_string(),
        "--agents",
        &agents.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        &keydir.path().join("state").display().to_string(),
        "--policy-key",
        &policy_pub,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unsigned bundle must not start the gateway");
    assert!(
        stderr.contains(&format!("{}:", unsigned.display())) && stderr.contains("not signed"),
        "{stderr}"
    );

    // Signed: starts and serves.
    let signed = {
        let out = clawgress(&["policy", "sign", "--key", &policy_key, &unsigned.display().to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(&unsigned).expect("read signed")
    };
    let gw = GatewayProc::start_with(&signed, &agents_yaml(), &["--policy-key", &policy_pub]);
    let allowed = get(&format!("http://site.test:{}/hello", origin.addr.port()), Some(SCRAPER));
    assert_eq!(raw::send(gw.proxy, &allowed, b"").await.status, 200);

    // A tampered bundle on reload: refused, the last good one stays, and
    // the refusal is in the log, the metrics and the trail.
    let tampered = signed.replace("domain: \"site.test\"", "domain: \"elsewhere.test\"");
    std::fs::write(&gw.policy, &tampered).expect("tamper");
    let rejected = gw.wait_audit(|line| line["type"] == "policy_rejected").await;
    assert_eq!(rejected["reason"], "bad_signature");
    assert_eq!(rejected["alert"], true);
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match"),
        "{rejected}"
    );
    assert_eq!(
        raw::send(gw.proxy, &allowed, b"").await.status,
        200,
        "the last good bundle stays"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"policy_rejected_total{reason="bad_signature"} 1"#),
        "{metrics}"
    );
    assert!(gw.log().contains("policy reload refused"), "{}", gw.log());

    // Signed by another key: an unknown key, named.
    let other = tempfile::tempdir().expect("tempdir");
    let (_, _, other_key, _) = keys(other.path());
    std::fs::write(&gw.policy, &tampered).expect("write");
    let out = clawgress(&[
        "policy",
        "sign",
        "--key",
        &other_key.display().to_string(),
        &gw.policy.display().to_string(),
    ]);
    assert!(out.status.success());
    gw.wait_audit(|line| line["type"] == "policy_rejected" && line["reason"] == "unknown_key")
        .await;
    let out = clawgress(&[
        "policy",
        "verify",
        "--key",
        &policy_pub,
        &gw.policy.display().to_string(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not trusted here"), "{stderr}");
}
