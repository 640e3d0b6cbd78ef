//! End-to-end tests of the egress gateway: the real binary, real sockets,
//! local origins on 127.0.0.1, and a local DNS server.

#[path = "../support/mod.rs"]
mod support;

mod analyze;
mod audit_durability;
mod browser;
mod cluster;
mod console;
mod control;
mod control_store;
mod dashboard;
mod deploy;
mod dns_server;
mod edge;
mod fetch;
mod inspect;
mod intercept;
mod limits;
mod malformed;
mod mtls;
mod operations;
mod orphans;
mod pipeline;
mod policy;
mod politeness;
mod proxy;
mod resources;
mod shutdown;
mod steel;
mod synthetic;
mod traces;
mod transparent;
mod ubuntu;

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
# Small enough that the containment test can fill it quickly.
fault_containment:
  max_concurrent_requests: 10
  max_pending_bytes: 256KB
rate_limits:
  per_agent: {{default: 100000/min, burst: 10000}}
  per_project: {{default: 100000/min, burst: 10000}}
  per_domain: {{default: 100000/min, max: 100000/min}}
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
