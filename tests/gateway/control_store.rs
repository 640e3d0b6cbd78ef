//! The control plane's store (issue 17) end to end: a gateway holding the
//! store (`--database`), the `/v1/` API and `clawgress control`, agents
//! whose keys work through the proxy, rotation with a grace period, policy
//! versions uploaded, activated and rolled back, compare-and-set, tenancy,
//! two replicas applying the store's snapshots from a real nats-server,
//! and the holder (or its PostgreSQL) going away while traffic goes on.

mod replicas;

use support::raw::RawResponse;

use super::*;

const VIEWER: &str = "store-viewer-token";
const OPERATOR: &str = "store-operator-token";
const MAINTAINER: &str = "store-maintainer-token";
/// An operator bound to team `data`.
const DATA_OPERATOR: &str = "store-data-operator-token";

fn tokens_yaml() -> String {
    format!(
        "tokens:\n  - {{name: vera, role: viewer, token_sha256: \"{}\"}}\n  - {{name: otto, role: operator, token_sha256: \"{}\"}}\n  - {{name: mia, role: maintainer, token_sha256: \"{}\"}}\n  - {{name: dana, role: operator, teams: [data], token_sha256: \"{}\"}}\n",
        sha256_hex(VIEWER),
        sha256_hex(OPERATOR),
        sha256_hex(MAINTAINER),
        sha256_hex(DATA_OPERATOR)
    )
}

/// Origins, DNS, the policy text and the tokens file shared by a test's gateways.
struct Site {
    origin: upstream::Origin,
    _dns: TestDns,
    policy: String,
    tokens: tempfile::TempDir,
}

impl Site {
    async fn new() -> Site {
        let origin = upstream::origin().await;
        let dns = TestDns::start(&[]).await;
        let policy = policy_yaml(origin.addr.port(), 1, 1, dns.addr, "enforce");
        let tokens = tempfile::tempdir().unwrap();
        std::fs::write(tokens.path().join("tokens.yaml"), tokens_yaml()).unwrap();
        Site {
            origin,
            _dns: dns,
            policy,
            tokens,
        }
    }

    /// A gateway with the tokens file and `extra` flags.
    fn gateway(&self, extra: &[&str]) -> GatewayProc {
        let tokens = self.tokens.path().join("tokens.yaml").display().to_string();
        let mut args = vec!["--admin-tokens", tokens.as_str()];
        args.extend_from_slice(extra);
        GatewayProc::start_with(&self.policy, &agents_yaml(), &args)
    }

    /// The test policy plus a rule for `unlisted.test`.
    fn policy_with_unlisted(&self) -> String {
        self.policy.replacen(
            "allowlist:\n  local_sites:\n",
            &format!(
                "allowlist:\n  local_sites:\n    - domain: \"unlisted.test\"\n      ports: [{}]\n      protocols: [http]\n",
                self.origin.addr.port()
            ),
            1,
        )
    }

    fn get(&self, host: &str, auth: (&str, &str)) -> String {
        get(&format!("http://{host}:{}/hello", self.origin.addr.port()), Some(auth))
    }
}

async fn api(gw: &GatewayProc, method: &str, path: &str, token: &str, body: &serde_json::Value) -> RawResponse {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {token}",
        body.len()
    );
    raw::send(gw.admin, &head, body.as_bytes()).await
}

fn text(response: &RawResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn control_cli(gw: &GatewayProc, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::clawgress_bin())
        .arg("control")
        .args(args)
        .args(["--admin", &format!("http://{}", gw.admin), "--token", token])
        .output()
        .expect("run clawgress control")
}

fn new_agent(id: &str, team: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "team": team, "project": "crawl", "environment": "dev", "role": "scraper"})
}

/// Creates an agent; returns its key.
async fn create_agent(gw: &GatewayProc, token: &str, id: &str, team: &str) -> String {
    let created = api(gw, "POST", "/v1/agents", token, &new_agent(id, team)).await;
    assert_eq!(created.status, 201, "{}", text(&created));
    created.json()["api_key"].as_str().unwrap().to_string()
}

/// Polls the proxy until `head` is answered `status`.
async fn until_status(gw: &GatewayProc, head: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = raw::send(gw.proxy, head, b"").await;
        if response.status == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {status}; last {} {}\nlog:\n{}",
            response.status,
            text(&response),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn store_agents_work_through_the_proxy_and_a_rotated_key_stops_after_its_grace() {
    let site = Site::new().await;
    let gw = site.gateway(&["--database"]);

    // The empty store starts with the agents file's agents: nobody the
    // file lets in is locked out by the first agent the store gets.
    assert_eq!(
        raw::send(gw.proxy, &site.get("site.test", SCRAPER), b"").await.status,
        200
    );
    let seeded = api(&gw, "GET", "/v1/agents/scraper-001", OPERATOR, &serde_json::Value::Null).await;
    assert_eq!(seeded.status, 200, "{}", text(&seeded));
    let history = api(&gw, "GET", "/v1/history?kind=agent", OPERATOR, &serde_json::Value::Null).await;
    assert!(text(&history).contains("import"), "{}", text(&history));

    // Created through the CLI: the key is printed once, the store keeps its digest.
    let out = control_cli(
        &gw,
        OPERATOR,
        &[
            "agents",
            "create",
            "store-001",
            "--team",
            "data",
            "--project",
            "crawl",
            "--environment",
            "dev",
            "--role",
            "scraper",
        ],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("agent store-001 created"), "{printed}");
    let key = printed
        .split_whitespace()
        .find(|word| word.starts_with("cgk_"))
        .unwrap_or_else(|| panic!("no key in {printed}"))
        .to_string();
    assert!(printed.contains("in force (store revision 2)"), "{printed}");
    let db = std::fs::read(gw.dir.path().join("state/control.db")).unwrap();
    assert!(
        !db.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key itself is stored"
    );

    let ok = raw::send(gw.proxy, &site.get("site.test", ("store-001", &key)), b"").await;
    assert_eq!(ok.status, 200, "{}", text(&ok));
    let line = gw.audit_for(ok.header("x-request-id").unwrap()).await;
    assert_eq!(line["agent_id"], "store-001");
    assert_eq!(line["team_id"], "data");
    assert!(line["policy_version"].is_string());
    // The file's agents are the store's now, and still in force.
    assert_eq!(
        raw::send(gw.proxy, &site.get("site.test", SCRAPER), b"").await.status,
        200
    );

    // A stale version is refused with the current one; nothing changes.
    let rotate = serde_json::json!({"version": 1, "grace": "2s"});
    let rotated_at = std::time::Instant::now();
    let rotated = api(&gw, "POST", "/v1/agents/store-001/rotate", OPERATOR, &rotate).await;
    assert_eq!(rotated.status, 200, "{}", text(&rotated));
    let new_key = rotated.json()["api_key"].as_str().unwrap().to_string();
    let stale = api(&gw, "POST", "/v1/agents/store-001/rotate", OPERATOR, &rotate).await;
    assert_eq!(stale.status, 409, "{}", text(&stale));
    assert_eq!(stale.reason(), "version_conflict");
    assert_eq!(stale.json()["current_version"], 2);
    assert!(stale.json()["detail"].as_str().unwrap().contains("version 2, not 1"));
    let missing = api(
        &gw,
        "PATCH",
        "/v1/agents/store-001",
        OPERATOR,
        &serde_json::json!({"disabled": true}),
    )
    .await;
    assert_eq!((missing.status, missing.reason().as_str()), (428, "version_required"));

    // Both keys work during the grace period; then only the new one.
    let old = raw::send(gw.proxy, &site.get("site.test", ("store-001", &key)), b"").await;
    assert_eq!(old.status, 200, "{}", text(&old));
    assert_eq!(
        raw::send(gw.proxy, &site.get("site.test", ("store-001", &new_key)), b"")
            .await
            .status,
        200
    );
    // (Waited out rather than polled: site.test's rate limit is 100/min.)
    tokio::time::sleep((rotated_at + Duration::from_millis(2300)).saturating_duration_since(std::time::Instant::now()))
        .await;
    let old = raw::send(gw.proxy, &site.get("site.test", ("store-001", &key)), b"").await;
    assert_eq!((old.status, old.reason().as_str()), (407, "bad_api_key"));
    assert_eq!(
        raw::send(gw.proxy, &site.get("site.test", ("store-001", &new_key)), b"")
            .await
            .status,
        200
    );

    // Disabled by If-Match, refused at once.
    let head = format!(
        "PATCH /v1/agents/store-001 HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 18\r\nIf-Match: \"2\"\r\nAuthorization: Bearer {OPERATOR}"
    );
    let disabled = raw::send(gw.admin, &head, br#"{"disabled": true}"#).await;
    assert_eq!(disabled.status, 200, "{}", text(&disabled));
    let refused = raw::send(gw.proxy, &site.get("site.test", ("store-001", &new_key)), b"").await;
    assert_eq!((refused.status, refused.reason().as_str()), (407, "agent_disabled"));

    // Overlapping sources are refused as the agents file refuses them.
    let mut first = new_agent("edge-a", "data");
    first["sources"] = serde_json::json!(["198.18.5.0/24"]);
    assert_eq!(api(&gw, "POST", "/v1/agents", OPERATOR, &first).await.status, 201);
    let mut second = new_agent("edge-b", "data");
    second["sources"] = serde_json::json!(["198.18.5.128/25"]);
    let overlap = api(&gw, "POST", "/v1/agents", OPERATOR, &second).await;
    assert_eq!(overlap.status, 422, "{}", text(&overlap));
    assert!(
        text(&overlap).contains("198.18.5.128/25 of agent `edge-b` overlaps 198.18.5.0/24 of agent `edge-a`"),
        "{}",
        text(&overlap)
    );

    // Every change is in the history and on the audit trail; viewers read, not write.
    let history = api(
        &gw,
        "GET",
        "/v1/history?target=store-001",
        VIEWER,
        &serde_json::Value::Null,
    )
    .await;
    let actions: Vec<String> = history.json()["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["update", "rotate", "create"]);
    assert_eq!(
        api(&gw, "POST", "/v1/agents", VIEWER, &new_agent("x", "data"))
            .await
            .status,
        403
    );
    for action in ["agent_create", "agent_rotate", "agent_update"] {
        let line = gw
            .wait_audit(|l| l["type"] == "admin_action" && l["action"] == action && l["details"]["outcome"] == "ok")
            .await;
        assert_eq!(line["details"]["agent_id"], "store-001");
        assert!(line["details"]["store_revision"].is_string());
    }
    let trail = std::fs::read_to_string(&gw.audit).unwrap();
    assert!(
        !trail.contains(&key) && !trail.contains(&new_key),
        "a key reached the audit trail"
    );
    assert!(!gw.log().contains(&new_key), "a key reached the log");
}

#[tokio::test]
async fn policy_versions_are_validated_activated_and_rolled_back() {
    let site = Site::new().await;
    let gw = site.gateway(&["--database"]);
    let unlisted = site.get("unlisted.test", SCRAPER);
    assert_eq!(raw::send(gw.proxy, &unlisted, b"").await.status, 403);

    // Refused exactly like `policy check`: file:line:column.
    let broken = site
        .policy
        .replacen("  default_action: deny\n", "  default_action: maybe\n", 1);
    let refused = api(
        &gw,
        "POST",
        "/v1/policies",
        OPERATOR,
        &serde_json::json!({"name": "broken.yaml", "body": broken}),
    )
    .await;
    assert_eq!(refused.status, 422, "{}", text(&refused));
    assert_eq!(refused.reason(), "invalid_policy");
    let detail = refused.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.starts_with("broken.yaml:2:19:"), "{detail}");
    assert_eq!(refused.json()["errors"][0]["line"], 2);

    let dir = tempfile::tempdir().unwrap();
    let (base, wider) = (dir.path().join("base.yaml"), dir.path().join("wider.yaml"));
    std::fs::write(&base, &site.policy).unwrap();
    std::fs::write(&wider, site.policy_with_unlisted()).unwrap();
    for (file, id) in [(&base, "1"), (&wider, "2")] {
        let out = control_cli(
            &gw,
            OPERATOR,
            &["policy", "upload", file.to_str().unwrap(), "--comment", "test"],
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(printed.contains(&format!("uploaded as version {id}")), "{printed}");
    }
    // Uploaded is not in force.
    assert_eq!(raw::send(gw.proxy, &unlisted, b"").await.status, 403);
    let again = control_cli(&gw, OPERATOR, &["policy", "upload", wider.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already kept as version 2"));

    let diff = control_cli(&gw, VIEWER, &["policy", "diff", "1", "2"]);
    let printed = String::from_utf8_lossy(&diff.stdout);
    assert!(printed.contains("+ allow local_sites unlisted.test"), "{printed}");
    assert!(
        printed.contains("--- v1 base.yaml") && printed.contains("+    - domain: \"unlisted.test\""),
        "{printed}"
    );

    // Operators upload; maintainers activate, naming the activation version.
    let activate = |id: &str, version: i64| {
        let path = format!("/v1/policies/{id}/activate");
        let gw = &gw;
        async move { api(gw, "POST", &path, MAINTAINER, &serde_json::json!({"version": version})).await }
    };
    assert_eq!(
        api(
            &gw,
            "POST",
            "/v1/policies/2/activate",
            OPERATOR,
            &serde_json::json!({"version": 0})
        )
        .await
        .status,
        403
    );
    assert_eq!(activate("1", 0).await.status, 200);
    let on = activate("2", 1).await;
    assert_eq!(on.status, 200, "{}", text(&on));
    let digest = on.json()["policy"]["digest"].as_str().unwrap().to_string();
    let allowed = raw::send(gw.proxy, &unlisted, b"").await;
    assert_eq!(allowed.status, 200, "{}", text(&allowed));
    let line = gw.audit_for(allowed.header("x-request-id").unwrap()).await;
    assert_eq!(line["policy_version"], digest.as_str());
    let stale = activate("1", 1).await;
    assert_eq!((stale.status, stale.reason().as_str()), (409, "version_conflict"));

    // The file changing does not override the store's version.
    std::fs::write(&gw.policy, site.policy.replace("limited.test", "limited2.test")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(raw::send(gw.proxy, &unlisted, b"").await.status, 200);

    let out = control_cli(&gw, MAINTAINER, &["policy", "rollback", "--version", "2"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("version 1 ") && printed.contains("in force"),
        "{printed}"
    );
    assert_eq!(raw::send(gw.proxy, &unlisted, b"").await.status, 403);
    let history = control_cli(&gw, VIEWER, &["policy", "history"]);
    let printed = String::from_utf8_lossy(&history.stdout);
    assert!(printed.contains("active: 1   activation version: 3"), "{printed}");
    assert!(
        printed.contains("rollback v1") && printed.contains("activate v2"),
        "{printed}"
    );
    gw.wait_audit(|l| l["action"] == "policy_rollback" && l["details"]["outcome"] == "ok")
        .await;
}

#[tokio::test]
async fn a_gateway_that_takes_signed_bundles_refuses_an_unsigned_upload() {
    let site = Site::new().await;
    let keys = tempfile::tempdir().unwrap();
    let bin = support::clawgress_bin();
    let ok = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ok(std::process::Command::new(&bin)
        .args(["keys", "init", "--dir"])
        .arg(keys.path()));
    let signed = keys.path().join("policy.yaml");
    std::fs::write(&signed, &site.policy).unwrap();
    ok(std::process::Command::new(&bin)
        .args(["policy", "sign", "--key"])
        .arg(keys.path().join("policy.key"))
        .arg(&signed));
    let signed_text = std::fs::read_to_string(&signed).unwrap();
    let tokens = site.tokens.path().join("tokens.yaml").display().to_string();
    let public = keys.path().join("policy.pub").display().to_string();
    let gw = GatewayProc::start_with(
        &signed_text,
        &agents_yaml(),
        &["--admin-tokens", &tokens, "--database", "--policy-key", &public],
    );
    let unsigned = api(
        &gw,
        "POST",
        "/v1/policies",
        OPERATOR,
        &serde_json::json!({"name": "unsigned.yaml", "body": site.policy}),
    )
    .await;
    assert_eq!(unsigned.status, 422, "{}", text(&unsigned));
    assert_eq!(unsigned.reason(), "unsigned_policy");
    let accepted = api(
        &gw,
        "POST",
        "/v1/policies",
        OPERATOR,
        &serde_json::json!({"name": "policy.yaml", "body": signed_text}),
    )
    .await;
    assert_eq!(accepted.status, 201, "{}", text(&accepted));
    assert!(accepted.json()["signed_by"].is_string());
}
