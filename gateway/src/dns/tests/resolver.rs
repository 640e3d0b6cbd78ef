use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dns::test_dns_server::{Behaviour, SOA_NEGATIVE_TTL, TestDnsServer};
use crate::dns::{ResolveError, ResolveSource, Resolver, ResolverConfig};

const WEB_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const WEB_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));

fn answer(addrs: &[IpAddr], ttl: u32) -> Behaviour {
    Behaviour::Answer {
        addrs: addrs.to_vec(),
        ttl,
    }
}

async fn server(zone: &[(&'static str, Behaviour)]) -> TestDnsServer {
    TestDnsServer::start(zone.iter().cloned().collect(), Duration::ZERO).await
}

fn config(server: &TestDnsServer) -> ResolverConfig {
    ResolverConfig {
        nameservers: Some(vec![server.addr()]),
        cache_ttl: Duration::from_millis(300),
        negative_cache_ttl: Duration::from_millis(300),
        timeout: Duration::from_secs(3),
        attempts: 1,
        ..ResolverConfig::default()
    }
}

fn resolver(cfg: ResolverConfig) -> Resolver {
    Resolver::new(cfg).unwrap_or_else(|e| panic!("resolver setup: {e}"))
}

#[tokio::test]
async fn static_hosts_answer_first_and_never_touch_dns() {
    let dns = server(&[("svc.test", answer(&[WEB_V4], 60))]).await;
    let mut cfg = config(&dns);
    cfg.static_hosts = HashMap::from([("Svc.Test.".to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST))]);
    cfg.cache_ttl = Duration::from_millis(1);
    let resolver = resolver(cfg);

    assert!(resolver.is_static("svc.test"));
    assert!(!resolver.is_static("other.test"));
    for _ in 0..3 {
        let resolved = resolver.resolve("svc.test").await;
        let resolved = resolved.unwrap_or_else(|e| panic!("static host: {e}"));
        assert_eq!(resolved.source, ResolveSource::Static);
        assert_eq!(&*resolved.addrs, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(dns.queries("svc.test"), 0);
}

#[tokio::test]
async fn a_positive_answer_is_cached_until_cache_ttl_then_queried_again() {
    let dns = server(&[("web.test", answer(&[WEB_V6, WEB_V4], 3600))]).await;
    let resolver = resolver(config(&dns));

    let first = resolver.resolve("web.test").await;
    let first = first.unwrap_or_else(|e| panic!("first lookup: {e}"));
    assert_eq!(first.source, ResolveSource::Dns);
    assert_eq!(&*first.addrs, &[WEB_V4, WEB_V6], "IPv4 first, no duplicates");
    let after_first = dns.queries("web.test");
    assert!(after_first >= 1);

    let second = resolver.resolve("web.test").await;
    let second = second.unwrap_or_else(|e| panic!("second lookup: {e}"));
    assert_eq!(second.source, ResolveSource::Cache);
    assert_eq!(second.addrs, first.addrs);
    assert_eq!(dns.queries("web.test"), after_first, "a cached answer must not query");

    // The record says an hour; cache_ttl (300 ms) caps it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let third = resolver.resolve("web.test").await;
    let third = third.unwrap_or_else(|e| panic!("third lookup: {e}"));
    assert_eq!(third.source, ResolveSource::Dns);
    assert_eq!(dns.queries("web.test"), 2 * after_first);
}

#[tokio::test]
async fn with_our_cache_disabled_nothing_else_caches() {
    // An hour-long record TTL: if hickory's own cache were on, the second
    // lookup would not reach the server.
    let dns = server(&[("web.test", answer(&[WEB_V4], 3600))]).await;
    let mut cfg = config(&dns);
    cfg.max_cache_entries = 0;
    let resolver = resolver(cfg);

    let first = resolver.resolve("web.test").await.map(|r| r.source);
    assert_eq!(first, Ok(ResolveSource::Dns));
    let per_lookup = dns.queries("web.test");
    let second = resolver.resolve("web.test").await.map(|r| r.source);
    assert_eq!(second, Ok(ResolveSource::Dns));
    assert_eq!(dns.queries("web.test"), 2 * per_lookup);
    assert_eq!(resolver.cached_entries(), 0);
}

#[tokio::test]
async fn a_record_ttl_shorter_than_cache_ttl_wins() {
    let dns = server(&[("zero.test", answer(&[WEB_V4], 0)), ("one.test", answer(&[WEB_V4], 1))]).await;
    let mut cfg = config(&dns);
    cfg.cache_ttl = Duration::from_secs(60);
    let resolver = resolver(cfg);

    let first = resolver.resolve("zero.test").await.map(|r| r.source);
    assert_eq!(first, Ok(ResolveSource::Dns));
    let per_lookup = dns.queries("zero.test");
    assert!(per_lookup >= 1);
    let second = resolver.resolve("zero.test").await.map(|r| r.source);
    assert_eq!(second, Ok(ResolveSource::Dns), "TTL 0 is never cached");
    assert_eq!(dns.queries("zero.test"), 2 * per_lookup);

    let sources = [
        resolver.resolve("one.test").await.map(|r| r.source),
        resolver.resolve("one.test").await.map(|r| r.source),
    ];
    assert_eq!(sources, [Ok(ResolveSource::Dns), Ok(ResolveSource::Cache)]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = resolver.resolve("one.test").await.map(|r| r.source);
    assert_eq!(after, Ok(ResolveSource::Dns), "the 1 s record TTL expired");
    assert_eq!(dns.queries("one.test"), 2 * per_lookup);
}

#[tokio::test]
async fn nxdomain_is_cached_for_negative_cache_ttl() {
    let dns = server(&[]).await;
    let mut cfg = config(&dns);
    cfg.cache_ttl = Duration::from_secs(60);
    cfg.negative_cache_ttl = Duration::from_millis(300);
    let resolver = resolver(cfg);
    let not_found = Err(ResolveError::NotFound {
        host: "missing.test".to_string(),
    });

    assert_eq!(resolver.resolve("missing.test").await, not_found);
    let after_first = dns.queries("missing.test");
    assert!(after_first >= 1);
    assert_eq!(resolver.resolve("missing.test").await, not_found);
    assert_eq!(
        dns.queries("missing.test"),
        after_first,
        "a cached NXDOMAIN must not query"
    );

    // The server's SOA asks for an hour; our negative TTL decides.
    assert!(u64::from(SOA_NEGATIVE_TTL) > 60);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(resolver.resolve("missing.test").await, not_found);
    assert_eq!(dns.queries("missing.test"), 2 * after_first);
}

#[tokio::test]
async fn a_name_without_addresses_is_not_found_and_cached() {
    let dns = server(&[("mx-only.test", answer(&[], 60))]).await;
    let resolver = resolver(config(&dns));
    for _ in 0..2 {
        let outcome = resolver.resolve("mx-only.test").await;
        assert!(matches!(outcome, Err(ResolveError::NotFound { .. })), "{outcome:?}");
    }
    let queries = dns.queries("mx-only.test");
    assert!(
        (1..=2).contains(&queries),
        "second lookup came from the cache: {queries}"
    );
}

#[tokio::test]
async fn server_failures_are_reported_and_not_cached() {
    let dns = server(&[("broken.test", Behaviour::ServFail)]).await;
    let resolver = resolver(config(&dns));

    let outcome = resolver.resolve("broken.test").await;
    assert!(
        matches!(outcome, Err(ResolveError::Failed { ref host, .. }) if host == "broken.test"),
        "{outcome:?}"
    );
    let after_first = dns.queries("broken.test");
    let again = resolver.resolve("broken.test").await;
    assert!(matches!(again, Err(ResolveError::Failed { .. })), "{again:?}");
    assert!(dns.queries("broken.test") > after_first, "a failure must not be cached");
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_deadline() {
    let dns = server(&[("slow.test", Behaviour::Silent)]).await;
    let mut cfg = config(&dns);
    cfg.timeout = Duration::from_millis(300);
    cfg.attempts = 2;
    let resolver = resolver(cfg);

    let started = Instant::now();
    let outcome = resolver.resolve("slow.test").await;
    let elapsed = started.elapsed();
    assert_eq!(
        outcome,
        Err(ResolveError::Timeout {
            host: "slow.test".to_string()
        })
    );
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    let after_first = dns.queries("slow.test");
    assert!(after_first >= 1);
    let _ = resolver.resolve("slow.test").await;
    assert!(dns.queries("slow.test") > after_first, "a timeout must not be cached");
}

#[tokio::test]
async fn concurrent_lookups_of_a_new_name_share_one_query() {
    let zone = HashMap::from([
        ("burst.test", answer(&[WEB_V4], 60)),
        ("single.test", answer(&[WEB_V4], 60)),
    ]);
    let dns = TestDnsServer::start(zone, Duration::from_millis(150)).await;
    let resolver = Arc::new(resolver(config(&dns)));

    let single = resolver.resolve("single.test").await.map(|r| r.addrs);
    assert_eq!(single.as_deref(), Ok(&[WEB_V4][..]));
    let per_lookup = dns.queries("single.test");

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolver.resolve("burst.test").await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap_or_else(|e| panic!("lookup task: {e}"));
        let resolved = outcome.unwrap_or_else(|e| panic!("burst lookup: {e}"));
        assert_eq!(&*resolved.addrs, &[WEB_V4]);
    }
    assert_eq!(dns.queries("burst.test"), per_lookup, "20 lookups, one query");
    assert_eq!(
        resolver.lookups_started(),
        2,
        "one for single.test, one for the whole burst"
    );
    assert_eq!(resolver.in_flight_len(), 0);
}

#[tokio::test]
async fn an_abandoned_lookup_leaves_nothing_in_flight() {
    let zone = HashMap::from([("late.test", answer(&[WEB_V4], 60))]);
    let dns = TestDnsServer::start(zone, Duration::from_millis(400)).await;
    let resolver = Arc::new(resolver(config(&dns)));

    let task = {
        let resolver = resolver.clone();
        tokio::spawn(async move { resolver.resolve("late.test").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(resolver.in_flight_len(), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(resolver.in_flight_len(), 0);
    // The next request starts afresh and succeeds.
    let outcome = resolver.resolve("late.test").await.map(|r| r.source);
    assert_eq!(outcome, Ok(ResolveSource::Dns));
}

#[tokio::test]
async fn the_cache_holds_at_most_max_cache_entries_names() {
    let dns = server(&[
        ("a.test", answer(&[WEB_V4], 60)),
        ("b.test", answer(&[WEB_V4], 60)),
        ("c.test", answer(&[WEB_V4], 60)),
    ])
    .await;
    let mut cfg = config(&dns);
    cfg.cache_ttl = Duration::from_secs(60);
    cfg.max_cache_entries = 2;
    let resolver = resolver(cfg);

    for name in ["a.test", "b.test", "c.test", "nope.test"] {
        let _ = resolver.resolve(name).await;
    }
    assert_eq!(resolver.cached_entries(), 2);
    let sources = [
        resolver.resolve("nope.test").await.map(|r| r.source),
        resolver.resolve("c.test").await.map(|r| r.source),
        resolver.resolve("a.test").await.map(|r| r.source),
    ];
    let not_found = Err(ResolveError::NotFound {
        host: "nope.test".to_string(),
    });
    assert_eq!(sources, [not_found, Ok(ResolveSource::Cache), Ok(ResolveSource::Dns)]);
    assert_eq!(
        dns.queries("nope.test"),
        dns.queries("b.test"),
        "NXDOMAIN came from the cache"
    );
}

#[test]
fn bad_configuration_is_refused_at_setup() {
    let base = || ResolverConfig {
        nameservers: Some(vec!["127.0.0.1:53".parse().unwrap_or_else(|e| panic!("{e}"))]),
        ..ResolverConfig::default()
    };
    let cases = [
        ResolverConfig { attempts: 0, ..base() },
        ResolverConfig { attempts: 6, ..base() },
        ResolverConfig {
            timeout: Duration::ZERO,
            ..base()
        },
        ResolverConfig {
            nameservers: Some(Vec::new()),
            ..base()
        },
        ResolverConfig {
            static_hosts: HashMap::from([("bad..name".to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
            ..base()
        },
    ];
    for cfg in cases {
        let debug = format!("{cfg:?}");
        match Resolver::new(cfg) {
            Err(ResolveError::Setup { message }) => assert!(!message.is_empty()),
            other => panic!("{debug} should fail setup, got {other:?}"),
        }
    }
    assert!(Resolver::new(base()).is_ok());
}

#[test]
fn errors_name_the_host_and_the_remedy() {
    let message = ResolveError::NotFound {
        host: "x.test".to_string(),
    }
    .to_string();
    assert!(
        message.contains("'x.test'") && message.contains("dns.static_hosts"),
        "{message}"
    );
    assert_eq!(ResolveSource::Cache.as_str(), "cache");
}
