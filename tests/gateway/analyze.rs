//! Issue 15 parts 4-6 end to end: `clawgress analyze` quarantining an
//! agent on two real replicas sharing one nats-server, the audit streams
//! and `alerts.<severity>`, `destination_asn`/`destination_geo` from an
//! MMDB built here, and audit search, evidence and policy diff.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use futures_util::StreamExt;
use support::Killed;
use support::nats::NatsServer;

use super::*;

const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const OPERATOR: &str = "operator-token-2";
const MAINTAINER: &str = "maintainer-token-3";

fn tokens_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens.yaml"),
        format!(
            "tokens:\n  - name: analyzer\n    role: operator\n    token_sha256: \"{}\"\n  - name: mia-maintainer\n    role: maintainer\n    token_sha256: \"{}\"\n",
            sha256_hex(OPERATOR),
            sha256_hex(MAINTAINER)
        ),
    )
    .unwrap();
    dir
}

fn plain_get(port: u16) -> String {
    get(&format!("http://site.test:{port}/hello"), Some(SCRAPER))
}

fn leaky_post(port: u16, body: &[u8]) -> String {
    format!(
        "POST http://site.test:{port}/echo HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}",
        basic(SCRAPER.0, SCRAPER.1),
        body.len()
    )
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(support::clawgress_bin())
        .args(args)
        .output()
        .expect("run clawgress")
}

/// Polls `gw` with `head` until it answers `status` with `reason`; how long that took.
async fn until(gw: &GatewayProc, head: &str, status: u16, reason: &str, since: Instant) -> Duration {
    loop {
        let response = raw::send(gw.proxy, head, b"").await;
        let got = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        if response.status == status && (reason.is_empty() || got == reason) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "never {status} {reason}; last {} {got}",
            response.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_exfiltration_attempt_quarantines_the_agent_on_every_replica_until_released() {
    let Some(nats) = NatsServer::start() else { return };
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let port = origin.addr.port();
    let policy = policy_yaml(port, 1, 1, dns.addr, "enforce");
    let tokens = tokens_file();
    let tokens_path = tokens.path().join("tokens.yaml").display().to_string();
    let args = ["--nats", nats.url.as_str(), "--admin-tokens", tokens_path.as_str()];
    let a = GatewayProc::start_with(&policy, &agents_yaml(), &args);
    let b = GatewayProc::start_with(&policy, &agents_yaml(), &args);
    assert_eq!(raw::send(a.proxy, &plain_get(port), b"").await.status, 200);
    assert_eq!(raw::send(b.proxy, &plain_get(port), b"").await.status, 200);

    // The analyzer follows replica A's trail and acts through A's API.
    let anomalies = a.dir.path().join("anomalies.jsonl");
    let admin = format!("http://{}", a.admin);
    let _analyzer = Killed(
        Command::new(support::clawgress_bin())
            .args(["analyze", "--follow", "--trail"])
            .arg(&a.audit)
            .args(["--admin", &admin, "--token", OPERATOR, "--out"])
            .arg(&anomalies)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clawgress analyze"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = serde_json::json!({"messages": [{"role": "user", "content": format!("key {AWS_KEY}")}]})
        .to_string()
        .into_bytes();
    let refused = raw::send(a.proxy, &leaky_post(port, &body), &body).await;
    assert_eq!(refused.reason(), "dlp_blocked");
    let blocked_at = Instant::now();
    let on_a = until(&a, &plain_get(port), 403, "agent_quarantined", blocked_at).await;
    let on_b = until(&b, &plain_get(port), 403, "agent_quarantined", blocked_at).await;
    eprintln!("quarantine after the DLP block: replica A {on_a:?}, replica B {on_b:?}");
    assert!(
        on_a < Duration::from_secs(1) && on_b < Duration::from_secs(1),
        "A {on_a:?}, B {on_b:?}"
    );
    let refusal = raw::send(b.proxy, &plain_get(port), b"").await;
    assert!(refusal.json()["detail"].as_str().unwrap().contains("release-agent"));
    // Another agent is not affected.
    let other = get(&format!("http://ai.test:{port}/hello"), Some(AI_AGENT));
    assert_eq!(raw::send(b.proxy, &other, b"").await.status, 200);

    // The anomaly says what happened and what was done.
    wait_until(|| std::fs::read_to_string(&anomalies).is_ok_and(|t| t.contains("dlp_block"))).await;
    let text = std::fs::read_to_string(&anomalies).unwrap();
    let anomaly: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a["kind"] == "dlp_block")
        .unwrap();
    assert_eq!(anomaly["severity"], "critical");
    assert_eq!(anomaly["enforcement"]["outcome"], "ok");
    let held = a
        .wait_audit(|l| l["type"] == "admin_action" && l["action"] == "quarantine_agent")
        .await;
    assert_eq!(held["actor"], "analyzer");
    assert_eq!(held["details"]["anomaly_id"], anomaly["id"]);

    // The analyzer's operator token cannot release; a maintainer can, on any replica.
    let b_admin = format!("http://{}", b.admin);
    let release = |token: &str| {
        cli(&[
            "egress",
            "release-agent",
            SCRAPER.0,
            "--reason",
            "key rotated, checked",
            "--admin",
            &b_admin,
            "--token",
            token,
        ])
    };
    assert!(!release(OPERATOR).status.success());
    let listed = cli(&["egress", "quarantined", "--admin", &b_admin, "--token", OPERATOR]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(SCRAPER.0));
    let released = release(MAINTAINER);
    assert!(
        released.status.success(),
        "{}",
        String::from_utf8_lossy(&released.stderr)
    );
    let lifted = Instant::now();
    until(&a, &plain_get(port), 200, "", lifted).await;
    until(&b, &plain_get(port), 200, "", lifted).await;
    let line = b
        .wait_audit(|l| {
            l["type"] == "admin_action" && l["action"] == "release_agent" && l["details"]["outcome"] == "ok"
        })
        .await;
    assert_eq!(line["actor"], "mia-maintainer");
    assert_eq!(line["details"]["reason"], "key rotated, checked");
    let denied = a.wait_audit(|l| l["reason"] == "agent_quarantined").await;
    assert_eq!(denied["policy_id"], "control.quarantine");
}

#[tokio::test]
async fn the_analyzer_reads_the_audit_streams_and_publishes_on_alerts() {
    let Some(nats) = NatsServer::start() else { return };
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // The audit streams' contract (issue 15 parts 1-3): `audit.<kind>`, one trail line per message.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "AUDIT".to_string(),
        subjects: vec!["audit.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut alerts = client.subscribe("alerts.>").await.unwrap();
    let _analyzer = Killed(
        Command::new(support::clawgress_bin())
            .args(["analyze", "--quiet", "--nats", &nats.url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    js.publish("audit.denied", "{\"not\": json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let line = serde_json::json!({
        "timestamp": now, "type": "egress_denied", "request_id": "r1", "agent_id": "scraper-001",
        "request": {"method": "POST", "domain": "paste.test", "port": 443}, "decision": "deny",
        "reason": "dlp_blocked", "policy_id": "dlp.actions.secrets", "bytes_out": 0,
        "dlp_matches": [{"type": "aws_access_key", "class": "secret", "action": "block", "location": "body"}],
    });
    js.publish("audit.denied", line.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(15), alerts.next())
        .await
        .expect("an anomaly on alerts.>")
        .unwrap();
    assert_eq!(message.subject.as_str(), "alerts.critical");
    let anomaly: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(anomaly["type"], "anomaly");
    assert_eq!(anomaly["agent_id"], "scraper-001");
    assert_eq!(anomaly["condition"], "data_exfiltration");
    assert_eq!(
        anomaly["enforcement"]["outcome"], "dry_run",
        "no --admin: nothing changed"
    );
    // Kept in the stream ALERTS for the dashboard and whoever reads later.
    let stored = js
        .get_stream("ALERTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn audit_lines_carry_the_destination_asn_and_country() {
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let port = origin.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let (asn, country) = (dir.path().join("asn.mmdb"), dir.path().join("country.mmdb"));
    let loopback = std::net::Ipv4Addr::new(127, 0, 0, 0);
    std::fs::write(&asn, support::mmdb::asn_db(&[(loopback, 8, 64_512)])).unwrap();
    std::fs::write(&country, support::mmdb::country_db(&[(loopback, 8, "NL")])).unwrap();
    let policy = format!(
        "{}geoip:\n  asn_db: {}\n  country_db: {}\n",
        policy_yaml(port, 1, 1, dns.addr, "enforce"),
        asn.display(),
        country.display()
    );
    let gw = GatewayProc::start(&policy, &agents_yaml());
    let served = raw::send(gw.proxy, &plain_get(port), b"").await;
    assert_eq!(served.status, 200);
    let line = gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["destination_ip"], "127.0.0.1");
    assert_eq!(line["destination_asn"], 64_512);
    assert_eq!(line["destination_geo"], "NL");
    // A denied request dialed nothing: no address, so no ASN or country.
    let denied = raw::send(
        gw.proxy,
        &get(&format!("http://unlisted.test:{port}/"), Some(SCRAPER)),
        b"",
    )
    .await;
    let line = gw.audit_for(denied.header("x-request-id").unwrap()).await;
    assert!(
        line.get("destination_asn").is_none() && line.get("destination_geo").is_none(),
        "{line}"
    );

    // A database that cannot be read refuses the policy at its line.
    let broken = policy.replace("asn.mmdb", "missing.mmdb");
    let policy_file = dir.path().join("broken.yaml");
    std::fs::write(&policy_file, broken).unwrap();
    let check = cli(&[
        "gateway",
        "--policy",
        policy_file.to_str().unwrap(),
        "--agents",
        gw.agents.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("geoip.asn_db"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn search_evidence_export_and_diff_from_the_command_line() {
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let port = origin.addr.port();
    let tokens = tokens_file();
    let tokens_path = tokens.path().join("tokens.yaml").display().to_string();
    let gw = GatewayProc::start_with(
        &policy_yaml(port, 1, 1, dns.addr, "enforce"),
        &agents_yaml(),
        &["--admin-tokens", &tokens_path],
    );
    for _ in 0..3 {
        assert_eq!(raw::send(gw.proxy, &plain_get(port), b"").await.status, 200);
        assert_eq!(
            raw::send(
                gw.proxy,
                &get(&format!("http://unlisted.test:{port}/"), Some(SCRAPER)),
                b""
            )
            .await
            .status,
            403
        );
    }
    wait_until(|| gw.audit_lines().len() >= 6).await;
    // A corrupted line in the trail is named, never fatal.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&gw.audit)
        .unwrap()
        .write_all(b"{torn\n")
        .unwrap();
    let trail = gw.audit.to_str().unwrap();

    let csv = cli(&[
        "audit",
        "search",
        "--trail",
        trail,
        "--agent",
        SCRAPER.0,
        "--decision",
        "deny",
        "--format",
        "csv",
    ]);
    assert!(csv.status.success(), "{}", String::from_utf8_lossy(&csv.stderr));
    let rows: Vec<String> = String::from_utf8_lossy(&csv.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[1].contains("unlisted.test") && rows[1].contains("domain_not_in_allowlist"));
    assert!(String::from_utf8_lossy(&csv.stderr).contains("audit.jsonl:7: skipped"));
    let array = cli(&[
        "audit",
        "search",
        "--trail",
        trail,
        "--domain",
        "site.test",
        "--format",
        "json",
    ]);
    let array: serde_json::Value = serde_json::from_slice(&array.stdout).unwrap();
    assert_eq!(array.as_array().unwrap().len(), 3);
    let admin = format!("http://{}", gw.admin);
    let api = cli(&[
        "audit",
        "search",
        "--admin",
        &admin,
        "--token",
        OPERATOR,
        "--decision",
        "deny",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&api.stdout).lines().count(),
        3,
        "{}",
        String::from_utf8_lossy(&api.stderr)
    );
    let exported = cli(&[
        "egress", "export", "--format", "json", "--agent", SCRAPER.0, "--admin", &admin, "--token", OPERATOR,
    ]);
    let exported: serde_json::Value = serde_json::from_slice(&exported.stdout).expect("--format json is one array");
    assert_eq!(exported.as_array().unwrap().len(), 6);

    let bundle = gw.dir.path().join("evidence");
    let evidence = cli(&[
        "audit",
        "evidence",
        "--from",
        "1h",
        "--out",
        bundle.to_str().unwrap(),
        "--trail",
        trail,
        "--policy",
        gw.policy.to_str().unwrap(),
    ]);
    assert!(
        evidence.status.success(),
        "{}",
        String::from_utf8_lossy(&evidence.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["records"].as_u64().unwrap() >= 6);
    assert!(
        manifest["policy_versions"][0]["file"]
            .as_str()
            .unwrap()
            .starts_with("policies/")
    );
    let sums = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&bundle)
        .output();
    if let Ok(sums) = sums {
        assert!(sums.status.success(), "{}", String::from_utf8_lossy(&sums.stdout));
    }

    let candidate = gw.dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        policy_yaml(port, 1, 1, dns.addr, "enforce").replace("domain: \"site.test\"", "domain: \"unlisted.test\""),
    )
    .unwrap();
    let diff = cli(&[
        "policy",
        "diff",
        "--since",
        "1h",
        "--trail",
        trail,
        "--agents",
        gw.agents.to_str().unwrap(),
        candidate.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stderr));
    let (denied, allowed) = text.split_once("newly allowed").unwrap();
    assert!(denied.contains(&format!("site.test:{port}")), "{text}");
    assert!(allowed.contains(&format!("unlisted.test:{port}")), "{text}");
}
