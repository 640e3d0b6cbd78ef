use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::job::{FetchMode, RetryPolicy};

fn pool(servers: &[&str], queue_per_server: usize) -> SteelPool {
    SteelPool::new(
        SteelConfig {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            gateway: "http://127.0.0.1:3128".to_string(),
            queue_per_server,
            witness: None,
        },
        Credentials::from_pairs([("scraper-001".to_string(), "k y".to_string())]),
    )
    .unwrap()
}

fn job(url: &str) -> ScrapeJob {
    ScrapeJob {
        id: "steel-1".into(),
        agent: "scraper-001".into(),
        url: url.into(),
        method: "GET".into(),
        headers: BTreeMap::new(),
        body: None,
        fetch: FetchMode::Steel,
        extract: BTreeMap::new(),
        wait_for: None,
        screenshot: false,
        timeout: Duration::from_secs(5),
        priority: Default::default(),
        retry: RetryPolicy::default(),
    }
}

/// A loopback port with nothing listening (bound, then released).
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_server_is_leased_to_one_job_at_a_time() {
    let pool = pool(&["http://127.0.0.1:3000", "http://127.0.0.1:3001"], 4);
    let first = pool.try_lease().expect("a free server");
    let second = pool.try_lease().expect("the other free server");
    assert_ne!(first.server().url(), second.server().url());
    assert!(pool.try_lease().is_none(), "both are leased");
    assert_eq!(pool.stats().busy, 2);
    drop(first);
    assert_eq!(pool.stats().free, 1);
    assert!(pool.try_lease().is_some());
}

#[tokio::test]
async fn a_waiting_job_gets_the_server_when_it_is_released() {
    let pool = std::sync::Arc::new(pool(&["http://127.0.0.1:3000"], 4));
    let held = pool.try_lease().unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.lease(&[]).await.map(|l| l.server().url().to_string()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "the job waits while the server is leased");
    assert_eq!(pool.stats().waiting, 1);
    drop(held);
    let url = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(url.unwrap(), "http://127.0.0.1:3000");
    assert_eq!(pool.stats().waiting, 0);
}

#[tokio::test]
async fn a_full_queue_sends_the_job_back_instead_of_waiting() {
    let pool = std::sync::Arc::new(pool(&["http://127.0.0.1:3000"], 1));
    let _held = pool.try_lease().unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.lease(&[]).await.is_ok() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pool.has_room());
    assert!(matches!(pool.lease(&[]).await, Err(FetchError::SteelBusy)));
    assert_eq!(FetchError::SteelBusy.code(), "steel_busy");
    waiter.abort();
}

#[tokio::test]
async fn a_dead_server_is_steel_unavailable_with_its_url_and_the_next_one_is_tried() {
    let (one, two) = (dead_address(), dead_address());
    let pool = pool(&[&one, &two], 4);
    let error = pool.fetch(&job("http://example.test/")).await.unwrap_err();
    let FetchError::SteelUnavailable { server, .. } = &error else {
        panic!("{error:?}");
    };
    // Both were tried, the last one's failure is reported.
    assert!(server == &one || server == &two, "{server}");
    assert_eq!(error.code(), "steel_unavailable");
    assert!(error.to_string().contains(server.as_str()), "{error}");
    let stats = pool.stats();
    assert_eq!(stats.session_failures, 2);
    assert_eq!((stats.busy, stats.down), (0, 2), "{stats:?}");
    // Recently failed servers are not offered to `auto`.
    assert!(pool.try_lease().is_none());
}

#[tokio::test]
async fn a_healthy_server_is_preferred_over_one_that_just_failed() {
    let dead = dead_address();
    let pool = pool(&[&dead, "http://127.0.0.1:3000"], 4);
    pool.mark(0, Some(Instant::now() + DOWN_FOR));
    let lease = pool.lease(&[]).await.unwrap();
    assert_eq!(lease.server().url(), "http://127.0.0.1:3000");
    drop(lease);
    // With nothing healthy left to try, the failed one is tried again.
    let lease = pool.lease(&[1]).await.unwrap();
    assert_eq!(lease.server().url(), dead);
}

#[test]
fn bad_server_addresses_are_refused_with_the_fix() {
    let config = |servers: Vec<&str>| SteelConfig {
        servers: servers.into_iter().map(str::to_string).collect(),
        gateway: "http://127.0.0.1:3128".to_string(),
        queue_per_server: 4,
        witness: None,
    };
    let error = SteelPool::new(config(vec![]), Credentials::default()).unwrap_err();
    assert!(error.contains("no Steel"), "{error}");
    let error = SteelPool::new(config(vec!["127.0.0.1:3000"]), Credentials::default()).unwrap_err();
    assert!(error.contains("http://127.0.0.1:3000"), "{error}");
}

#[test]
fn the_proxy_url_carries_the_agents_credential() {
    let credentials = Credentials::from_pairs([("scraper-001".to_string(), "k y".to_string())]);
    assert_eq!(
        proxy_url("http://127.0.0.1:3128", &credentials, "scraper-001").unwrap(),
        "http://scraper-001:k%20y@127.0.0.1:3128/"
    );
    assert!(proxy_url("http://127.0.0.1:3128", &credentials, "nobody").is_err());
}

#[test]
fn a_refusal_shown_as_the_page_is_read_back() {
    let page = r#"<html><body><pre>{"type":"https://clawgress.dev/problems/domain_not_in_allowlist","title":"Forbidden","status":403,"reason":"domain_not_in_allowlist","policy_id":"default_deny"}</pre></body></html>"#;
    assert!(matches!(refusal_in(page), Some(FetchError::Denied { reason, .. }) if reason == "domain_not_in_allowlist"));
    assert!(refusal_in("<html><body>fine</body></html>").is_none());
}

#[test]
fn fresh_traceparents_are_w3c_and_distinct() {
    let (a, b) = (new_traceparent(), new_traceparent());
    assert_ne!(a, b);
    assert!(clawgress_telemetry::parse(&a).is_some(), "{a}");
    assert_eq!(a.len(), 55);
}

fn navigation() -> Navigation<'static> {
    Navigation {
        agent: "scraper-001",
        url: "http://site.test:8080/page",
        since: chrono::Utc::now(),
        trace_id: "0af7651916cd43dd8448eb211c80319c",
    }
}

#[test]
fn the_audit_line_of_the_navigation_is_recognised() {
    let nav = navigation();
    let allowed = json!({"agent_id": "scraper-001", "request_id": "r-1", "decision": "allow",
        "trace_id": nav.trace_id, "request": {"method": "GET", "domain": "site.test", "path": "/page"}});
    assert_eq!(
        witness::sighting(&allowed, &nav, "site.test"),
        Some(Sighting::Allowed {
            request_id: "r-1".into()
        })
    );
    // A tunnel is known by its CONNECT to the host.
    let tunnel = json!({"agent_id": "scraper-001", "request_id": "r-2", "decision": "allow",
        "request": {"method": "CONNECT", "domain": "SITE.test"}});
    assert!(matches!(
        witness::sighting(&tunnel, &nav, "site.test"),
        Some(Sighting::Allowed { .. })
    ));
    let denied = json!({"agent_id": "scraper-001", "decision": "deny", "reason": "domain_not_in_allowlist",
        "policy_id": "default_deny", "request": {"method": "CONNECT", "domain": "site.test"}});
    assert!(matches!(
        witness::sighting(&denied, &nav, "site.test"),
        Some(Sighting::Refused(FetchError::Denied { reason, .. })) if reason == "domain_not_in_allowlist"
    ));
}

#[test]
fn other_requests_are_not_taken_for_the_navigation() {
    let nav = navigation();
    let other_trace = json!({"agent_id": "scraper-001", "decision": "allow", "trace_id": "ffff",
        "request": {"method": "GET", "domain": "site.test", "path": "/page"}});
    let other_agent = json!({"agent_id": "scraper-002", "decision": "allow", "trace_id": nav.trace_id,
        "request": {"method": "GET", "domain": "site.test"}});
    let other_host = json!({"agent_id": "scraper-001", "decision": "allow", "trace_id": nav.trace_id,
        "request": {"method": "GET", "domain": "elsewhere.test"}});
    for line in [other_trace, other_agent, other_host] {
        assert_eq!(witness::sighting(&line, &nav, "site.test"), None, "{line}");
    }
}

#[test]
fn a_witness_needs_a_token_and_an_address() {
    assert!(Witness::new(&["http://127.0.0.1:9128".into()], " ".into()).is_err());
    assert!(Witness::new(&[], "t".into()).is_err());
    assert!(Witness::new(&["not a url".into()], "t".into()).is_err());
    assert!(Witness::new(&["http://127.0.0.1:9128/".into()], "t".into()).is_ok());
}

#[tokio::test]
async fn an_unreadable_audit_trail_fails_the_check_with_its_address() {
    let dead = dead_address();
    let witness = Witness::new(std::slice::from_ref(&dead), "t".into()).unwrap();
    let error = witness.look(&navigation()).await.unwrap_err();
    assert!(error.to_string().contains(&dead), "{error}");
    assert!(error.to_string().contains("cannot confirm"), "{error}");
}

#[test]
fn steel_addresses_are_fixed_or_every_address_of_a_name() {
    assert_eq!(
        Source::parse("http://127.0.0.1:3000/").unwrap(),
        Source::Fixed("http://127.0.0.1:3000".into())
    );
    assert_eq!(
        Source::parse("dns+http://steel.scraping.svc:3000").unwrap(),
        Source::EveryAddress {
            scheme: "http".into(),
            host: "steel.scraping.svc".into(),
            port: 3000
        }
    );
    for bad in ["dns+ftp://steel:3000", "steel:3000", "dns+", "http://"] {
        let error = Source::parse(bad).unwrap_err();
        assert!(error.contains("dns+http://NAME:PORT"), "{bad}: {error}");
    }
}

#[tokio::test]
async fn every_address_of_a_name_becomes_a_server_and_a_vanished_one_is_not_leased() {
    let pool = pool(&["dns+http://localhost:3999", "http://127.0.0.1:3000"], 4);
    // Before the names are looked up, only the fixed server is known.
    assert_eq!(pool.servers().len(), 1);
    pool.discover(true).await;
    let urls: Vec<String> = pool.servers().iter().map(|s| s.url().to_string()).collect();
    assert!(urls.contains(&"http://127.0.0.1:3999".to_string()), "{urls:?}");
    assert!(urls.contains(&"http://127.0.0.1:3000".to_string()), "{urls:?}");
    // An address that leaves the name is never leased again.
    {
        let mut state = pool.lock();
        let index = state
            .iter()
            .position(|s| s.server.url() == "http://127.0.0.1:3999")
            .unwrap();
        state[index].gone = true;
    }
    let mut leased = Vec::new();
    while let Some(lease) = pool.try_lease() {
        leased.push(lease.server().url().to_string());
        std::mem::forget(lease);
    }
    assert!(!leased.contains(&"http://127.0.0.1:3999".to_string()), "{leased:?}");
}
