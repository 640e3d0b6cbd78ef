//! The operator control plane: the `/v1/` API and `clawgress egress`, roles,
//! the audit of every change, two replicas sharing state through a real
//! nats-server, the last-known-good copy, and fail modes.

use std::time::Instant;

use support::nats::{NatsServer, free_port};
use support::raw::RawResponse;

use super::*;

const VIEWER: &str = "viewer-token-1";
const OPERATOR: &str = "operator-token-2";
const MAINTAINER: &str = "maintainer-token-3";

fn tokens_yaml() -> String {
    format!(
        "tokens:\n  - name: vera-viewer\n    role: viewer\n    token_sha256: \"{}\"\n  - name: otto-operator\n    role: operator\n    token_sha256: \"{}\"\n  - name: mia-maintainer\n    role: maintainer\n    token_sha256: \"{}\"\n",
        sha256_hex(VIEWER),
        sha256_hex(OPERATOR),
        sha256_hex(MAINTAINER)
    )
}

struct Plane {
    origin: upstream::Origin,
    echo: std::net::SocketAddr,
    _dns: TestDns,
    policy: String,
    tokens: tempfile::TempDir,
}

impl Plane {
    async fn new(policy_edit: impl Fn(String) -> String) -> Plane {
        let origin = upstream::origin().await;
        let echo = upstream::half_close_echo().await;
        let dns = TestDns::start(&[]).await;
        let policy = policy_edit(policy_yaml(origin.addr.port(), 1, echo.port(), dns.addr, "enforce"));
        let tokens = tempfile::tempdir().unwrap();
        std::fs::write(tokens.path().join("tokens.yaml"), tokens_yaml()).unwrap();
        Plane {
            origin,
            echo,
            _dns: dns,
            policy,
            tokens,
        }
    }

    fn tokens_path(&self) -> String {
        self.tokens.path().join("tokens.yaml").display().to_string()
    }

    fn gateway(&self, extra: &[&str]) -> GatewayProc {
        let tokens = self.tokens_path();
        let mut args = vec!["--admin-tokens", tokens.as_str()];
        args.extend_from_slice(extra);
        GatewayProc::start_with(&self.policy, &agents_yaml(), &args)
    }

    fn unlisted(&self) -> String {
        get(
            &format!("http://unlisted.test:{}/hello", self.origin.addr.port()),
            Some(SCRAPER),
        )
    }
}

async fn api(gw: &GatewayProc, method: &str, path: &str, token: Option<&str>, body: &str) -> RawResponse {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("\r\nAuthorization: Bearer {token}"));
    }
    raw::send(gw.admin, &head, body.as_bytes()).await
}

/// Polls until the proxy answers `head` with `status` (and `reason`, if
/// given); returns how long that took.
async fn until_answer(gw: &GatewayProc, head: &str, status: u16, reason: Option<&str>) -> Duration {
    let started = Instant::now();
    loop {
        let response = raw::send(gw.proxy, head, b"").await;
        if response.status == status && reason.is_none_or(|r| response.json()["reason"] == r) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered {status} {reason:?}; last {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn egress_cli(gw: &GatewayProc, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::clawgress_bin())
        .arg("egress")
        .args(args)
        .args(["--admin", &format!("http://{}", gw.admin), "--token", token])
        .output()
        .expect("run clawgress egress")
}

#[tokio::test]
async fn roles_are_enforced_and_every_change_is_audited() {
    let plane = Plane::new(|p| p).await;
    let gw = plane.gateway(&[]);
    let port = plane.origin.addr.port();
    let temp = &format!(
        r#"{{"domain": "unlisted.test", "duration": "1h", "reason": "Testing integration", "task": "feat-x", "ports": [{port}]}}"#
    );

    let none = api(&gw, "POST", "/v1/allowlist/temporary", None, temp).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"clawgress-admin\"")
    );
    assert_eq!(
        api(&gw, "GET", "/v1/allowlist", Some("nope"), "").await.reason(),
        "unknown_token"
    );
    let viewer = api(&gw, "POST", "/v1/allowlist/temporary", Some(VIEWER), temp).await;
    assert_eq!(viewer.status, 403);
    assert_eq!(viewer.reason(), "role_not_allowed");
    assert_eq!(raw::send(gw.proxy, &plane.unlisted(), b"").await.status, 403);

    // An operator opens the domain; the proxy lets it through at once.
    let added = api(&gw, "POST", "/v1/allowlist/temporary", Some(OPERATOR), temp).await;
    assert_eq!(added.status, 201, "{}", String::from_utf8_lossy(&added.body));
    let id = added.json()["id"].as_str().unwrap().to_string();
    let ok = raw::send(gw.proxy, &plane.unlisted(), b"").await;
    assert_eq!(ok.status, 200);
    let line = gw.audit_for(ok.header("x-request-id").unwrap()).await;
    assert_eq!(line["policy_id"], format!("control.allow.{id}"));
    assert_eq!(line["allowed_by"], "temporary");

    // Blocks still win, and bad input says what to send.
    let blocked = api(
        &gw,
        "POST",
        "/v1/allowlist/temporary",
        Some(OPERATOR),
        r#"{"domain": "x.blocked.test", "duration": "1h", "reason": "r"}"#,
    )
    .await;
    assert_eq!(blocked.status, 409);
    assert!(blocked.json()["detail"].as_str().unwrap().contains("project_blocklist"));
    let typo = api(
        &gw,
        "POST",
        "/v1/allowlist/temporary",
        Some(OPERATOR),
        r#"{"domian": "a.test", "duration": "1h", "reason": "r"}"#,
    )
    .await;
    assert_eq!(typo.status, 400);
    assert!(
        typo.json()["detail"].as_str().unwrap().contains("domian"),
        "{}",
        typo.json()
    );
    assert!(typo.json()["hint"].as_str().is_some());
    let forever = api(
        &gw,
        "POST",
        "/v1/allowlist/temporary",
        Some(OPERATOR),
        r#"{"domain": "a.test", "duration": "400d", "reason": "r"}"#,
    )
    .await;
    assert_eq!(forever.status, 400);

    // The request and approval flow: viewers ask, only maintainers approve.
    let filed = api(
        &gw,
        "POST",
        "/v1/requests",
        Some(VIEWER),
        r#"{"domain": "*.other.test", "reason": "New integration requirement", "project": "feat-integration"}"#,
    )
    .await;
    assert_eq!(filed.status, 201);
    let request_id = filed.json()["id"].as_str().unwrap().to_string();
    assert!(request_id.starts_with("req-"));
    let approve_path = format!("/v1/requests/{request_id}/approve");
    assert_eq!(api(&gw, "POST", &approve_path, Some(OPERATOR), "").await.status, 403);
    let approved = api(&gw, "POST", &approve_path, Some(MAINTAINER), "").await;
    assert_eq!(approved.status, 200, "{}", String::from_utf8_lossy(&approved.body));
    assert_eq!(approved.json()["request"]["status"], "approved");
    assert_eq!(api(&gw, "POST", &approve_path, Some(MAINTAINER), "").await.status, 409);

    // `clawgress egress list` shows the policy and both temporary entries.
    let listed = egress_cli(&gw, VIEWER, &["list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("site.test"), "{text}");
    assert!(text.contains("unlisted.test") && text.contains(&id), "{text}");
    assert!(text.contains("*.other.test"), "{text}");
    let refused = egress_cli(&gw, VIEWER, &["emergency-block", "--reason", "x"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("maintainer"));

    // Every change, and every refused attempt, is an admin_action line naming the actor.
    let admin: Vec<_> = gw
        .audit_lines()
        .into_iter()
        .filter(|l| l["type"] == "admin_action")
        .collect();
    let by = |actor: &str, action: &str, outcome: &str| {
        admin
            .iter()
            .any(|l| l["actor"] == actor && l["action"] == action && l["details"]["outcome"] == outcome)
    };
    assert!(by("otto-operator", "allow_temp", "ok"), "{admin:?}");
    assert!(by("vera-viewer", "request", "ok"), "{admin:?}");
    assert!(by("mia-maintainer", "approve", "ok"), "{admin:?}");
    assert!(by("unauthenticated", "allow_temp", "refused"), "{admin:?}");
    assert!(by("otto-operator", "allow_temp", "failed"), "{admin:?}");

    // `clawgress egress export` returns those records.
    let exported = egress_cli(&gw, VIEWER, &["export", "--format", "jsonl", "--from", "1 hour ago"]);
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["action"] == "approve"));
    // Reading the trail is itself on the trail.
    let export = gw
        .wait_audit(|l| l["type"] == "admin_action" && l["action"] == "export")
        .await;
    assert_eq!(export["actor"], "vera-viewer");
    assert!(lines.iter().any(|l| l["type"] == "egress_request"));
    let later = egress_cli(&gw, VIEWER, &["export", "--from", "2999-01-01T00:00:00Z"]);
    assert!(later.stdout.is_empty());
}

#[tokio::test]
async fn a_change_through_one_replica_takes_effect_on_the_other() {
    let Some(nats) = NatsServer::start() else { return };
    let plane = Plane::new(|p| p).await;
    let a = plane.gateway(&["--nats", &nats.url]);
    let b = plane.gateway(&["--nats", &nats.url]);
    let unlisted = plane.unlisted();
    let site = get(
        &format!("http://site.test:{}/hello", plane.origin.addr.port()),
        Some(AI_AGENT),
    );
    assert_eq!(raw::send(b.proxy, &unlisted, b"").await.status, 403);

    let added = api(
        &a,
        "POST",
        "/v1/allowlist/temporary",
        Some(OPERATOR),
        &format!(
            r#"{{"domain": "unlisted.test", "duration": "10m", "reason": "Testing integration", "ports": [{}]}}"#,
            plane.origin.addr.port()
        ),
    )
    .await;
    assert_eq!(added.status, 201, "{}", String::from_utf8_lossy(&added.body));
    let took = until_answer(&b, &unlisted, 200, None).await;
    println!("temporary allow reached replica B in {took:?}");
    let listed = api(&b, "GET", "/v1/allowlist", Some(VIEWER), "").await.json();
    assert_eq!(listed["temporary"][0]["domain"], "unlisted.test");

    // The emergency block through A denies every agent on B.
    let blocked = api(
        &a,
        "POST",
        "/v1/emergency-block",
        Some(MAINTAINER),
        r#"{"reason": "Security incident"}"#,
    )
    .await;
    assert_eq!(blocked.status, 201, "{}", String::from_utf8_lossy(&blocked.body));
    let incident = blocked.json()["incident_id"].as_str().unwrap().to_string();
    let took = until_answer(&b, &site, 403, Some("emergency_block")).await;
    println!("emergency block reached replica B in {took:?}");
    let denied = raw::send(b.proxy, &unlisted, b"").await;
    assert_eq!(denied.reason(), "emergency_block");
    assert_eq!(
        denied.json()["policy_id"],
        format!("control.emergency_block.{incident}")
    );
    let line = b.audit_for(denied.json()["request_id"].as_str().unwrap()).await;
    assert_eq!(line["type"], "egress_denied");
    assert_eq!(line["alert"], true);
    assert!(b.metrics().await.contains("clawgress_emergency_block 1"));

    // Restore names the incident; through B this time.
    let wrong = api(
        &b,
        "POST",
        "/v1/restore",
        Some(MAINTAINER),
        r#"{"incident_id": "inc-nope"}"#,
    )
    .await;
    assert_eq!(wrong.status, 409);
    let body = format!(r#"{{"incident_id": "{incident}"}}"#);
    assert_eq!(
        api(&b, "POST", "/v1/restore", Some(MAINTAINER), &body).await.status,
        200
    );
    until_answer(&a, &site, 200, None).await;
    until_answer(&a, &unlisted, 200, None).await;
    let restore = a.wait_audit(|l| l["action"] == "emergency_block").await;
    assert_eq!(restore["actor"], "mia-maintainer");
    let status = api(&a, "GET", "/v1/status", Some(VIEWER), "").await.json();
    assert_eq!(status["control_store"], "synced");
}

#[tokio::test]
async fn a_replica_restarted_without_nats_still_enforces_its_last_known_good_state() {
    let Some(mut nats) = NatsServer::start() else { return };
    let plane = Plane::new(|p| p).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let site = get(
        &format!("http://site.test:{}/hello", plane.origin.addr.port()),
        Some(SCRAPER),
    );
    let mut a = plane.gateway(&["--nats", &nats.url, "--state-dir", &state_dir]);
    let blocked = api(
        &a,
        "POST",
        "/v1/emergency-block",
        Some(MAINTAINER),
        r#"{"reason": "Security incident"}"#,
    )
    .await;
    assert_eq!(blocked.status, 201);
    assert!(a.stop().success());
    nats.stop();

    let a = plane.gateway(&["--nats", &nats.url, "--state-dir", &state_dir]);
    let denied = raw::send(a.proxy, &site, b"").await;
    assert_eq!(denied.status, 403, "{}", a.log());
    assert_eq!(denied.reason(), "emergency_block");
    assert!(
        a.metrics()
            .await
            .contains(r#"clawgress_control_store_status{status="last_known_good"} 1"#)
    );
    // Changes cannot reach the other replicas now, so none is made.
    let refused = api(
        &a,
        "POST",
        "/v1/allowlist/temporary",
        Some(OPERATOR),
        r#"{"domain": "unlisted.test", "duration": "1h", "reason": "r"}"#,
    )
    .await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.reason(), "control_store_unavailable");
}

#[tokio::test]
async fn an_unknown_control_state_fails_closed_unless_the_environment_fails_open() {
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let plane = Plane::new(|p| p).await;
    let closed = plane.gateway(&["--nats", &unreachable]);
    let site = get(
        &format!("http://site.test:{}/hello", plane.origin.addr.port()),
        Some(SCRAPER),
    );
    let refused = raw::send(closed.proxy, &site, b"").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.reason(), "control_store_unavailable");

    // The scraper's environment (dev) fails open: served, audited, counted.
    let plane = Plane::new(|p| {
        p.replace(
            "  enforcement: enforce\n",
            "  enforcement: enforce\n  fail_mode: closed\n  environments:\n    dev: {fail_mode: open}\n",
        )
    })
    .await;
    let open = plane.gateway(&["--nats", &unreachable]);
    let site = get(
        &format!("http://site.test:{}/hello", plane.origin.addr.port()),
        Some(SCRAPER),
    );
    let served = raw::send(open.proxy, &site, b"").await;
    assert_eq!(served.status, 200);
    let line = open.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["fail_open"], "control_store");
    assert!(
        open.metrics()
            .await
            .contains(r#"egress_fail_open_total{dependency="control_store"} 1"#)
    );
    // Another environment (prod) still fails closed.
    let ai = get(
        &format!("http://ai.test:{}/hello", plane.origin.addr.port()),
        Some(AI_AGENT),
    );
    assert_eq!(
        raw::send(open.proxy, &ai, b"").await.reason(),
        "control_store_unavailable"
    );
}

#[test]
fn a_broken_tokens_file_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - name: a\n    role: admin\n    token_sha256: \"00\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(support::clawgress_bin())
        .args([
            "gateway",
            "--policy",
            "policies/default.yaml",
            "--agents",
            "policies/agents.example.yaml",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--admin-tokens"])
        .arg(&tokens)
        .arg("--state-dir")
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tokens.yaml:3:"), "{stderr}");
    assert!(stderr.contains("viewer"), "{stderr}");
}

#[tokio::test]
async fn a_full_audit_trail_fails_closed_unless_the_environment_fails_open() {
    let plane = Plane::new(|p| {
        p.replace(
            "  enforcement: enforce\n",
            "  enforcement: enforce\n  environments:\n    dev: {fail_mode: open}\n",
        )
    })
    .await;
    // One audit slot: a held request takes it, so the trail is "full".
    let gw = plane.gateway(&["--audit-queue", "1"]);
    let port = plane.origin.addr.port();
    let hold = get(&format!("http://ai.test:{port}/hold"), Some(AI_AGENT));
    let proxy = gw.proxy;
    let held = tokio::spawn(async move { raw::send(proxy, &hold, b"").await });
    wait_until(|| plane.origin.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1).await;

    // prod (the AI agent) fails closed.
    let closed = raw::send(
        gw.proxy,
        &get(&format!("http://ai.test:{port}/hello"), Some(AI_AGENT)),
        b"",
    )
    .await;
    assert_eq!(closed.status, 503);
    assert_eq!(closed.reason(), "audit_unavailable");
    // dev (the scraper) fails open: served, its record in the log, counted.
    let open = raw::send(
        gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(open.status, 200);
    let request_id = open.header("x-request-id").unwrap().to_string();
    plane.origin.release.notify_waiters();
    assert_eq!(held.await.unwrap().status, 200);
    let fallback = gw
        .log()
        .lines()
        .find(|l| l.contains("audit_fallback") && l.contains(&request_id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no fallback record for {request_id}:\n{}", gw.log()));
    assert!(fallback.contains(r#""fail_open":"audit_sink""#), "{fallback}");
    assert!(
        gw.metrics()
            .await
            .contains(r#"egress_fail_open_total{dependency="audit_sink"} 1"#)
    );
    assert!(gw.audit_lines().iter().all(|l| l["request_id"] != request_id.as_str()));
}

#[tokio::test]
async fn an_emergency_block_cuts_open_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let plane = Plane::new(|p| p).await;
    let gw = plane.gateway(&[]);
    let mut tunnel = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let head = connect(&format!("echo.test:{}", plane.echo.port()), Some(SCRAPER));
    tunnel.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut tunnel).await.status, 200);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    let blocked = api(
        &gw,
        "POST",
        "/v1/emergency-block",
        Some(MAINTAINER),
        r#"{"reason": "exfiltration"}"#,
    )
    .await;
    assert_eq!(blocked.status, 201);
    // The gateway closes the tunnel: the agent reads end-of-stream (the echo
    // server, which answers a half-close with "bye", never saw one).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stayed open after the block");
    assert!(rest.is_empty(), "{rest:?}");
    let line = gw.wait_audit(|l| l["request"]["method"] == "CONNECT").await;
    assert_eq!(line["error"], "emergency_block");
    assert_eq!(line["bytes_out"], 4);
}

/// The control bucket deleted and made again while the replicas run (an
/// operator's `nats kv rm` and `add`, a rebuilt cluster): its revisions
/// start over at 1, and the replicas read it again instead of taking every
/// new change for one they already applied.
#[tokio::test]
async fn a_control_bucket_deleted_and_made_again_is_read_again() {
    let Some(nats) = NatsServer::start() else { return };
    let plane = Plane::new(|p| p).await;
    let a = plane.gateway(&["--nats", &nats.url]);
    let b = plane.gateway(&["--nats", &nats.url]);
    let site = get(
        &format!("http://site.test:{}/hello", plane.origin.addr.port()),
        Some(AI_AGENT),
    );
    let block = || {
        api(
            &a,
            "POST",
            "/v1/emergency-block",
            Some(MAINTAINER),
            r#"{"reason": "drill"}"#,
        )
    };
    // Blocks and restores: the bucket's revision is well above 1.
    for _ in 0..3 {
        let blocked = block().await;
        assert_eq!(blocked.status, 201, "{}", String::from_utf8_lossy(&blocked.body));
        let incident = blocked.json()["incident_id"].as_str().unwrap().to_string();
        let body = format!(r#"{{"incident_id": "{incident}"}}"#);
        let restored = api(&a, "POST", "/v1/restore", Some(MAINTAINER), &body).await;
        assert_eq!(restored.status, 200, "{}", String::from_utf8_lossy(&restored.body));
    }
    until_answer(&b, &site, 200, None).await;

    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.delete_key_value("clawgress-control").await.unwrap();
    // Made again at once (whoever is first: this or a replica).
    let _ = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "clawgress-control".into(),
            history: 5,
            ..Default::default()
        })
        .await;

    // A block now is revision 1 of the new bucket: both replicas enforce it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let blocked = block().await;
        match blocked.status {
            201 => break,
            // While A reads the new bucket: unavailable, or unconfirmed.
            503 => assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&blocked.body)),
            other => panic!("{other}: {}", String::from_utf8_lossy(&blocked.body)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A confirmed it once it was in force there.
    let on_a = raw::send(a.proxy, &site, b"").await;
    assert_eq!(
        (on_a.status, on_a.reason()),
        (403, "emergency_block".to_string()),
        "A answered 201 before enforcing the block\n{}",
        a.log()
    );
    let took = until_answer(&b, &site, 403, Some("emergency_block")).await;
    println!("the block in the new bucket reached B in {took:?}");
}
