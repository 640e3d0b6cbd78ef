//! Identity and policy: credentials, every reason code, SSRF, report mode,
//! reload and `policy check`.

use super::*;

#[tokio::test]
async fn missing_bad_unknown_and_disabled_credentials_get_407() {
    let w = world("enforce").await;
    let target = format!("http://site.test:{}/hello", w.origin.addr.port());
    let cases: [(Option<(&str, &str)>, &str); 4] = [
        (None, "missing_credentials"),
        (Some((SCRAPER.0, "wrong-key")), "bad_api_key"),
        (Some(("nobody", "whatever")), "unknown_agent"),
        (Some(DISABLED), "agent_disabled"),
    ];
    for (auth, reason) in cases {
        let response = raw::send(w.gw.proxy, &get(&target, auth), b"").await;
        assert_eq!(response.status, 407, "{reason}");
        assert!(
            response
                .headers_named("proxy-authenticate")
                .contains(&"Basic realm=\"clawgress\""),
            "407 without Proxy-Authenticate: {:?}",
            response.headers
        );
        assert_eq!(response.reason(), reason);
        assert!(!String::from_utf8_lossy(&response.body).contains("wrong-key"));
        // The audit line says where the request was going and whom the
        // credential claimed to be (unverified, so not as agent_id).
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let line = w.gw.audit_for(body["request_id"].as_str().unwrap()).await;
        assert_eq!(line["request"]["domain"], "site.test", "{line}");
        assert_eq!(line["request"]["port"], w.origin.addr.port(), "{line}");
        assert_eq!(line["request"]["path"], "/hello", "{line}");
        assert_eq!(
            line["claimed_agent_id"].as_str(),
            auth.map(|(agent, _)| agent),
            "{line}"
        );
        assert!(line.get("agent_id").is_none(), "{line}");
    }
    let malformed = raw::send(
        w.gw.proxy,
        &format!("GET {target} HTTP/1.1\r\nProxy-Authorization: Basic !!!"),
        b"",
    )
    .await;
    assert_eq!(malformed.status, 407);
    assert_eq!(
        w.origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing may reach the origin"
    );
    let audit = std::fs::read_to_string(&w.gw.audit).unwrap_or_default();
    assert!(
        !audit.contains("wrong-key") && !audit.contains("whatever"),
        "a presented key reached the audit trail"
    );
}

#[tokio::test]
async fn jwt_bearer_identity_is_accepted() {
    let w = world("enforce").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.test", "aud": "clawgress", "sub": SCRAPER.0,
        "exp": now + 600, "nbf": now - 10,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let target = format!("http://site.test:{}/hello", w.origin.addr.port());
    let head = format!("GET {target} HTTP/1.1\r\nProxy-Authorization: Bearer {token}");
    let response = raw::send(w.gw.proxy, &head, b"").await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));

    let expired =
        serde_json::json!({"iss": "https://idp.test", "aud": "clawgress", "sub": SCRAPER.0, "exp": now - 600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &expired,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nProxy-Authorization: Bearer {token}");
    let response = raw::send(w.gw.proxy, &head, b"").await;
    assert_eq!(response.status, 407);
}

#[tokio::test]
async fn every_policy_reason_code_is_answered_and_audited() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let cases = [
        (
            get(&format!("http://unlisted.test:{port}/"), Some(SCRAPER)),
            403,
            "domain_not_in_allowlist",
            "default_deny",
        ),
        (
            get("http://hidden.onion/", Some(SCRAPER)),
            403,
            "blocked_pattern",
            "dns.block_patterns",
        ),
        (
            get(&format!("http://a.blocked.test:{port}/"), Some(SCRAPER)),
            403,
            "blocklisted",
            "project_blocklist[0]",
        ),
        (
            get("http://site.test:1/", Some(SCRAPER)),
            403,
            "port_not_allowed",
            "allowlist.local_sites[0]",
        ),
        (
            connect(&format!("site.test:{port}"), Some(SCRAPER)),
            403,
            "protocol_not_allowed",
            "allowlist.local_sites[0]",
        ),
        (
            get(&format!("http://ai.test:{port}/"), Some(SCRAPER)),
            403,
            "role_not_allowed",
            "allowlist.ai_providers[0]",
        ),
        (
            get(&format!("http://expired.test:{port}/"), Some(SCRAPER)),
            403,
            "domain_not_in_allowlist",
            "default_deny",
        ),
        (
            get(&format!("http://wild.test:{port}/"), Some(SCRAPER)),
            403,
            "domain_not_in_allowlist",
            "default_deny",
        ),
        (
            get(&format!("http://evilsite.test:{port}/"), Some(SCRAPER)),
            403,
            "domain_not_in_allowlist",
            "default_deny",
        ),
        (
            "GET /hello HTTP/1.1\r\nHost: site.test".to_string(),
            400,
            "not_a_proxy_request",
            "request",
        ),
        (
            get("https://site.test/", Some(SCRAPER)),
            400,
            "unsupported_url_scheme",
            "request",
        ),
    ];
    for (head, status, reason, policy_id) in cases {
        let response = raw::send(w.gw.proxy, &head, b"").await;
        assert_eq!(
            response.status,
            status,
            "{head}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.reason(), reason, "{head}");
        let body = response.json();
        assert_eq!(body["policy_id"], policy_id, "{head}");
        let decision = response.header("x-clawgress-decision").unwrap_or_default();
        assert!(
            decision.contains(&format!("reason={reason}")),
            "{head}: header {decision}"
        );
        let request_id = body["request_id"].as_str().unwrap().to_string();
        let line = w.gw.audit_for(&request_id).await;
        assert_eq!(line["type"], "egress_denied");
        assert_eq!(line["reason"], reason);
        assert_eq!(line["action"], "blocked");
        if status == 403 {
            assert_eq!(line["alert"], true, "{head}");
            assert_eq!(line["agent_id"], SCRAPER.0);
        }
    }
    // Allowed neighbours of the denied names still pass.
    for host in ["a.wild.test", "b.c.wild.test"] {
        let response = raw::send(
            w.gw.proxy,
            &get(&format!("http://{host}:{port}/hello"), Some(SCRAPER)),
            b"",
        )
        .await;
        assert_eq!(response.status, 200, "{host}");
    }
    let ai = raw::send(
        w.gw.proxy,
        &get(&format!("http://ai.test:{port}/hello"), Some(AI_AGENT)),
        b"",
    )
    .await;
    assert_eq!(ai.status, 200, "the ai-agent role may use the ai_providers group");
    // Only the three allowed requests reached the origin.
    assert_eq!(w.origin.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Denied names are never resolved (seed §6.2).
    assert_eq!(w.dns.queries_for("hidden.onion"), 0);
    assert_eq!(w.dns.queries_for("evilsite.test"), 0);
}

#[tokio::test]
async fn private_addresses_in_every_form_are_denied() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    // Non-canonical IPv4 literals are malformed, never interpreted.
    for host in [
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "127.0.1",
        "127.000.000.001",
    ] {
        let response = raw::send(w.gw.proxy, &get(&format!("http://{host}:{port}/"), Some(SCRAPER)), b"").await;
        assert_eq!(response.status, 400, "{host}");
        assert_eq!(response.reason(), "malformed_host", "{host}");
    }
    // Literal private addresses, and their IPv6 encodings.
    for host in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:10.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:7f00:1::]",
        "[fd00::1]",
        "[fe80::1]",
        "[::]",
        "[ff02::1]",
    ] {
        let response = raw::send(w.gw.proxy, &get(&format!("http://{host}:{port}/"), Some(SCRAPER)), b"").await;
        assert_eq!(
            response.status,
            403,
            "{host}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.reason(), "private_address", "{host}");
    }
    // Names that resolve to private addresses, including one that mixes a
    // public and a private answer (a rebinding attempt).
    for host in ["rebind.test", "metadata.test", "mixed.test", "mapped.test"] {
        let port = if host == "metadata.test" { 80 } else { port };
        let response = raw::send(
            w.gw.proxy,
            &get(&format!("http://{host}:{port}/hello"), Some(SCRAPER)),
            b"",
        )
        .await;
        assert_eq!(
            response.status,
            403,
            "{host}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.reason(), "private_address", "{host}");
    }
    assert_eq!(w.origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // allow_private opens private ranges, never cloud metadata.
    let meta = raw::send(
        w.gw.proxy,
        &get(&format!("http://internal-meta.test:{port}/"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(meta.status, 403);
    assert_eq!(meta.reason(), "private_address");
    // allow_private: true is an explicit allowance.
    let response = raw::send(
        w.gw.proxy,
        &get(&format!("http://internal.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    // DNS answers are cached: a second request does not query again.
    let again = raw::send(
        w.gw.proxy,
        &get(&format!("http://internal.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        w.dns.queries_for("internal.test"),
        2,
        "one A and one AAAA query, then the cache"
    );
}

#[tokio::test]
async fn report_mode_lets_policy_denials_through_but_not_private_addresses() {
    let w = world("report").await;
    let port = w.origin.addr.port();
    let response = raw::send(
        w.gw.proxy,
        &get(&format!("http://unlisted.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("x-clawgress-decision")
            .unwrap_or_default()
            .starts_with("would_deny")
    );
    let line = w.gw.wait_audit(|l| l["request"]["domain"] == "unlisted.test").await;
    assert_eq!(line["decision"], "would_deny");
    assert_eq!(line["reason"], "domain_not_in_allowlist");
    assert_eq!(line["enforcement_mode"], "report");
    let private = raw::send(
        w.gw.proxy,
        &get(&format!("http://10.0.0.1:{port}/"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(private.status, 403, "the SSRF guard is enforced in report mode too");
    let anonymous = raw::send(w.gw.proxy, &get(&format!("http://unlisted.test:{port}/"), None), b"").await;
    assert_eq!(anonymous.status, 407, "identity is mandatory in report mode too");
}

#[tokio::test]
async fn policy_reloads_on_change_and_refuses_a_broken_file() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let target = get(&format!("http://unlisted.test:{port}/hello"), Some(SCRAPER));
    assert_eq!(raw::send(w.gw.proxy, &target, b"").await.status, 403);

    let current = std::fs::read_to_string(&w.gw.policy).unwrap();
    let widened = current.replace(
        "  ai_providers:",
        &format!(
            "  extra:\n    - domain: \"unlisted.test\"\n      ports: [{port}]\n      protocols: [http]\n  ai_providers:"
        ),
    );
    std::fs::write(&w.gw.policy, &widened).unwrap();
    wait_for_status(&w.gw, &target, 200).await;

    // A broken file is refused and the last good policy stays in force.
    std::fs::write(
        &w.gw.policy,
        widened.replace("protocols: [http]", "protocols: [gopher]"),
    )
    .unwrap();
    wait_until(|| w.gw.log().contains("policy reload refused")).await;
    let log = w.gw.log();
    assert!(log.contains("policy.yaml:"), "the error names the file and line: {log}");
    assert_eq!(raw::send(w.gw.proxy, &target, b"").await.status, 200);
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains("policy_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // SIGHUP reloads too: put the original back and signal.
    std::fs::write(&w.gw.policy, &current).unwrap();
    w.gw.signal("HUP");
    wait_for_status(&w.gw, &target, 403).await;
}

#[test]
fn policy_check_summarizes_the_default_bundle_and_locates_errors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = std::process::Command::new(support::clawgress_bin())
        .args(["policy", "check"])
        .arg(root.join("policies/default.yaml"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary = String::from_utf8_lossy(&ok.stdout);
    for group in ["ai_providers", "dev_services", "storage", "project_allowlist"] {
        assert!(summary.contains(group), "{group} missing from:\n{summary}");
    }
    assert!(summary.to_lowercase().contains("expired"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "egress:\n  default_action: deny\nallowlist:\n  g:\n    - domain: \"a.com\"\n      ports: [443]\n      protocols: [https]\n      rate_limt: 5/min\n").unwrap();
    let bad = std::process::Command::new(support::clawgress_bin())
        .args(["policy", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(message.contains("broken.yaml:8:"), "{message}");
    assert!(
        message.contains("rate_limit"),
        "the hint names the right key: {message}"
    );
}
