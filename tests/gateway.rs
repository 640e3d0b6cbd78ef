//! End-to-end tests of the egress gateway: the real binary, real sockets,
//! local origins on 127.0.0.1, and a local DNS server.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::dns::TestDns;
use support::gateway::GatewayProc;
use support::raw;
use support::{basic, sha256_hex, upstream};

const SCRAPER: (&str, &str) = ("scraper-001", "scraper-key-123");
const AI_AGENT: (&str, &str) = ("agent-builder-001", "builder-key-456");
const DISABLED: (&str, &str) = ("retired-001", "retired-key-789");
const JWT_SECRET: &str = "jwt-test-secret-that-is-long-enough-0123456789";

fn agents_yaml() -> String {
    format!(
        r#"agents:
  - id: {s}
    team: data
    project: crawl
    environment: dev
    role: scraper
    api_key_sha256: "{sk}"
  - id: {a}
    team: builders
    project: assistant
    environment: prod
    role: ai-agent
    api_key_sha256: "{ak}"
  - id: {d}
    team: data
    project: crawl
    environment: dev
    role: scraper
    api_key_sha256: "{dk}"
    disabled: true
jwt:
  issuer: "https://idp.test"
  audience: "clawgress"
  keys:
    - algorithm: HS256
      secret_env: CLAWGRESS_TEST_JWT_SECRET
"#,
        s = SCRAPER.0,
        sk = sha256_hex(SCRAPER.1),
        a = AI_AGENT.0,
        ak = sha256_hex(AI_AGENT.1),
        d = DISABLED.0,
        dk = sha256_hex(DISABLED.1),
    )
}

/// The test policy: the seed's shape, pointed at local origins.
fn policy_yaml(origin: u16, tls: u16, echo: u16, dns: SocketAddr, enforcement: &str) -> String {
    format!(
        r#"egress:
  default_action: deny
  logging: all_requests
  monitoring: enabled
  enforcement: {enforcement}
allowlist:
  local_sites:
    - domain: "site.test"
      ports: [{origin}]
      protocols: [http]
      rate_limit: 100/min
    - domain: "*.wild.test"
      ports: [{origin}]
      protocols: [http]
    - domain: "tls.test"
      ports: [{tls}]
      protocols: [https]
    - domain: "echo.test"
      ports: [{echo}]
      protocols: [https]
    - domain: "rebind.test"
      ports: [{origin}]
      protocols: [http]
    - domain: "metadata.test"
      ports: [80]
      protocols: [http]
    - domain: "mixed.test"
      ports: [{origin}]
      protocols: [http]
    - domain: "mapped.test"
      ports: [{origin}]
      protocols: [http]
    - domain: "internal.test"
      ports: [{origin}]
      protocols: [http]
      allow_private: true
    - domain: "internal-meta.test"
      ports: [{origin}]
      protocols: [http]
      allow_private: true
    - domain: "a.blocked.test"
      ports: [{origin}]
      protocols: [http]
  limited:
    - domain: "limited.test"
      ports: [{origin}]
      protocols: [http]
      rate_limit: 60/min
    - domain: "flaky.test"
      ports: [{origin}]
      protocols: [http]
  ai_providers:
    roles: [ai-agent]
    rules:
      - domain: "ai.test"
        ports: [{origin}]
        protocols: [http]
project_allowlist:
  - domain: "expired.test"
    ports: [{origin}]
    protocols: [http]
    justification: "ended"
    approved_by: "maintainer-id"
    expires: "2020-01-01"
project_blocklist:
  - domain: "*.blocked.test"
    reason: "Legal restriction"
# Generous agent limits: the tests below send bursts of their own; the
# `limited` group and the rate-limit test exercise the limiters.
rate_limits:
  per_agent: {{default: 100000/min, burst: 10000}}
  per_project: {{default: 100000/min, burst: 10000}}
  throttle_action: reject
dns:
  resolver: internal
  nameservers: ["{dns}"]
  block_patterns: ["*.onion", "*.i2p", "*.bit"]
  cache_ttl: 300s
  negative_cache_ttl: 60s
  static_hosts:
    site.test: 127.0.0.1
    a.wild.test: 127.0.0.1
    b.c.wild.test: 127.0.0.1
    wild.test: 127.0.0.1
    tls.test: 127.0.0.1
    echo.test: 127.0.0.1
    ai.test: 127.0.0.1
    expired.test: 127.0.0.1
    a.blocked.test: 127.0.0.1
    unlisted.test: 127.0.0.1
    limited.test: 127.0.0.1
    flaky.test: 127.0.0.1
"#
    )
}

struct World {
    gw: GatewayProc,
    origin: upstream::Origin,
    tls: support::tls::TlsOrigin,
    echo: SocketAddr,
    dns: TestDns,
}

async fn world(enforcement: &str) -> World {
    let origin = upstream::origin().await;
    let tls = support::tls::origin("tls.test").await;
    let echo = upstream::half_close_echo().await;
    let dns = TestDns::start(&[
        ("rebind.test", "127.0.0.1".parse::<IpAddr>().unwrap()),
        ("metadata.test", "169.254.169.254".parse().unwrap()),
        ("mixed.test", "1.1.1.1".parse().unwrap()),
        ("mixed.test", "10.1.2.3".parse().unwrap()),
        ("mapped.test", "::ffff:127.0.0.1".parse().unwrap()),
        ("internal.test", "127.0.0.1".parse().unwrap()),
        ("internal-meta.test", "169.254.169.254".parse().unwrap()),
    ])
    .await;
    let policy = policy_yaml(origin.addr.port(), tls.addr.port(), echo.port(), dns.addr, enforcement);
    let gw = GatewayProc::start(&policy, &agents_yaml());
    World {
        gw,
        origin,
        tls,
        echo,
        dns,
    }
}

fn get(target: &str, auth: Option<(&str, &str)>) -> String {
    let host = target
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: {host}");
    if let Some((agent, key)) = auth {
        head.push_str(&format!("\r\nProxy-Authorization: {}", basic(agent, key)));
    }
    head
}

fn connect(authority: &str, auth: Option<(&str, &str)>) -> String {
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}");
    if let Some((agent, key)) = auth {
        head.push_str(&format!("\r\nProxy-Authorization: {}", basic(agent, key)));
    }
    head
}

#[tokio::test]
async fn allowed_request_is_forwarded_streamed_and_audited() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(w.gw.proxy_url())
                .unwrap()
                .basic_auth(SCRAPER.0, SCRAPER.1),
        )
        .build()
        .unwrap();
    let response = client
        .get(format!("http://site.test:{port}/hello?token=secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.text().await.unwrap(), "hello from upstream");

    let line = w.gw.wait_audit(|l| l["type"] == "egress_request").await;
    assert_eq!(line["agent_id"], SCRAPER.0);
    assert_eq!(line["team_id"], "data");
    assert_eq!(line["project_id"], "crawl");
    assert_eq!(line["environment"], "dev");
    assert_eq!(line["request"]["domain"], "site.test");
    assert_eq!(line["request"]["method"], "GET");
    assert_eq!(
        line["request"]["path"], "/hello",
        "the query string must never reach the audit trail"
    );
    assert_eq!(line["response"]["status"], 200);
    assert_eq!(line["bytes_in"], 19);
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["allowed_by"], "local_sites");
    assert_eq!(line["policy_id"], "allowlist.local_sites[0]");
    assert_eq!(line["enforcement_mode"], "enforce");
    assert!(line["latency_ms"].is_number());
    assert_eq!(line["hash"].as_str().map(str::len), Some(64));
    assert!(!std::fs::read_to_string(&w.gw.audit).unwrap().contains("secret"));
}

#[tokio::test]
async fn credentials_are_never_forwarded_and_host_names_the_origin() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let response = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/headers"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = response.json();
    assert!(
        seen.get("proxy-authorization").is_none(),
        "credential leaked upstream: {seen}"
    );
    assert_eq!(seen["host"], format!("site.test:{port}"));
    assert_eq!(seen["_request_target"], "/headers", "upstream must get origin-form");
    assert!(seen["via"].as_str().unwrap_or_default().contains("clawgress"));
}

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
async fn connect_tunnels_carry_tls_end_to_end_and_count_bytes() {
    let w = world("enforce").await;
    let authority = format!("tls.test:{}", w.tls.addr.port());
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("{}\r\n\r\n", connect(&authority, Some(SCRAPER))).as_bytes())
        .await
        .unwrap();
    let response = raw::read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    let mut tls = support::tls::connect(stream, "tls.test", &w.tls.ca_der)
        .await
        .expect("TLS through the tunnel");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).ends_with("hello over tls"));
    drop(tls);
    let line =
        w.gw.wait_audit(|l| l["type"] == "egress_request" && l["request"]["method"] == "CONNECT")
            .await;
    assert_eq!(line["request"]["domain"], "tls.test");
    assert_eq!(line["protocol"], "https");
    assert!(
        line["bytes_out"].as_u64().unwrap() > 100,
        "ClientHello and request went out: {line}"
    );
    assert!(
        line["bytes_in"].as_u64().unwrap() > 100,
        "certificate and answer came in: {line}"
    );
}

#[tokio::test]
async fn connect_tunnels_half_close() {
    let w = world("enforce").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let head = connect(&format!("echo.test:{}", w.echo.port()), Some(SCRAPER));
    stream.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut stream).await.status, 200);
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rest, b"pingbye",
        "the server's answer after our half-close must come back"
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Download: the first chunk arrives while the origin is still holding the last.
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let head = get(&format!("http://site.test:{port}/slow-stream"), Some(SCRAPER));
    stream.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the first chunk must arrive before the body is complete")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    w.origin.release.notify_one();

    // Upload: a chunked body is echoed back chunk by chunk.
    let mut up = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let head = format!(
        "POST http://site.test:{port}/echo HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        basic(SCRAPER.0, SCRAPER.1)
    );
    up.write_all(head.as_bytes()).await.unwrap();
    up.write_all(b"5\r\nhello\r\n").await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), up.read(&mut buf))
            .await
            .expect("the echoed first chunk must arrive before the upload ends")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    up.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let line = w.gw.wait_audit(|l| l["request"]["path"] == "/echo").await;
    assert_eq!(line["bytes_out"], 11);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    for _ in 0..3 {
        let head = get(&format!("http://site.test:{port}/hello"), Some(SCRAPER));
        stream.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
        let response = raw::read_response(&mut stream).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello from upstream");
    }
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

async fn wait_for_status(gw: &GatewayProc, head: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if raw::send(gw.proxy, head, b"").await.status == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status {status} never came; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "condition never became true");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    assert!(
        !metrics.contains("secret-path") && !metrics.contains("unlisted.test"),
        "a URL became a label"
    );
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
        String::from_utf8_lossy(&bad.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let removed = verify(&tampered);
    assert!(!removed.status.success());
    assert!(
        String::from_utf8_lossy(&removed.stderr).contains("line 3"),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
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

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_still_audited_with_its_bytes() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let head = format!(
        "POST http://site.test:{port}/hold HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Length: 11\r\n\r\nsecret-data",
        basic(SCRAPER.0, SCRAPER.1)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    wait_until(|| w.origin.requests.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    let line = w.gw.wait_audit(|l| l["request"]["path"] == "/hold").await;
    w.origin.release.notify_one();
    assert_eq!(line["error"], "client_closed", "{line}");
    assert_eq!(
        line["bytes_out"], 11,
        "the body reached the upstream and must be on the record: {line}"
    );
    assert_eq!(line["decision"], "allow");
    let metrics = w.gw.metrics().await;
    assert!(metrics.contains("audit_slots_abandoned_total 0"), "{metrics}");
}

#[tokio::test]
async fn an_upstream_cannot_forge_the_gateways_headers() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let response = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/forge"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        response.header("x-clawgress-decision").is_none(),
        "{:?}",
        response.headers
    );
    let id = response.header("x-request-id").unwrap_or_default().to_string();
    assert_ne!(id, "spoofed");
    let line = w.gw.audit_for(&id).await;
    assert_eq!(line["request"]["path"], "/forge");
}

#[tokio::test]
async fn shutdown_waits_for_open_tunnels_and_records_them() {
    let mut w = world("enforce").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let head = connect(&format!("echo.test:{}", w.echo.port()), Some(SCRAPER));
    stream.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(raw::read_response(&mut stream).await.status, 200);
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    w.gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.gw.child.try_wait().unwrap().is_none(),
        "the gateway must wait for the open tunnel"
    );
    stream.write_all(b"pong").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"pongbye");
    assert!(w.gw.stop().success());
    let line = w.gw.wait_audit(|l| l["request"]["method"] == "CONNECT").await;
    assert_eq!(line["bytes_out"], 8);
    assert_eq!(line["bytes_in"], 11);
}

#[tokio::test]
async fn rate_limits_answer_429_with_the_seed_body_and_a_real_retry_after() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let target = get(&format!("http://limited.test:{port}/hello"), Some(SCRAPER));
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = raw::send(w.gw.proxy, &target, b"").await;
        statuses.push(response.status);
        if response.status == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    // 60/min on the rule gives the domain a burst of 6 (six seconds' worth).
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 6, "{statuses:?}");
    let limited = limited.expect("a 429");
    let body = limited.json();
    assert_eq!(body["error"], "rate_limit_exceeded");
    assert_eq!(body["reason"], "rate_limit_exceeded");
    assert_eq!(body["limit"], 60);
    assert_eq!(body["window"], "1m");
    assert_eq!(body["scope"], "domain");
    assert_eq!(body["agent_id"], SCRAPER.0);
    assert_eq!(body["domain"], "limited.test");
    assert_eq!(body["policy_id"], "rate_limits.per_domain");
    // One request per second refills: the wait is about a second, not the minute window.
    assert_eq!(body["retry_after"], 1, "{body}");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited.header("ratelimit-limit").is_some(), "{:?}", limited.headers);
    let line = w.gw.audit_for(body["request_id"].as_str().unwrap()).await;
    assert_eq!(line["type"], "egress_rate_limited");
    assert_eq!(line["reason"], "rate_limit_exceeded");
    // Another destination is not affected.
    let other = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(other.status, 200);
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains(
            r#"http_client_requests_total{decision="rate_limited",reason="rate_limit_exceeded",status_class="4xx"} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_destination_opens_its_breaker_and_fails_fast() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let target = get(&format!("http://flaky.test:{port}/status/503"), Some(SCRAPER));
    for _ in 0..10 {
        let response = raw::send(w.gw.proxy, &target, b"").await;
        assert_eq!(response.status, 503);
        assert!(
            response.header("x-clawgress-decision").is_none(),
            "the upstream's own 503 is passed through"
        );
    }
    let before = w.origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    let fast = raw::send(w.gw.proxy, &target, b"").await;
    assert_eq!(fast.status, 503);
    assert_eq!(fast.reason(), "circuit_open");
    let retry: u64 = fast
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(
        w.origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no request reached the upstream"
    );
    // Other destinations are unaffected, and the state is exported for the allowlisted name.
    let ok = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(ok.status, 200);
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains(r#"circuit_breaker_state{domain="flaky.test"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"circuit_breaker_state{domain="site.test"} 0"#),
        "{metrics}"
    );
}
