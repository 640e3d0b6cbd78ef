//! Enforcement under load: rate limits, circuit breakers and containment.

use super::*;

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

#[tokio::test]
async fn one_agent_flooding_the_gateway_does_not_starve_another() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let hold = get(&format!("http://a.wild.test:{port}/hold"), Some(SCRAPER));

    // The scraper floods: ten exchanges held open upstream, then a burst more.
    let mut held = Vec::new();
    for _ in 0..10 {
        let proxy = w.gw.proxy;
        let hold = hold.clone();
        held.push(tokio::spawn(async move { raw::send(proxy, &hold, b"").await }));
    }
    wait_until(|| w.origin.requests.load(std::sync::atomic::Ordering::SeqCst) >= 10).await;
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let (proxy, hold) = (w.gw.proxy, hold.clone());
            tokio::spawn(async move { raw::send(proxy, &hold, b"").await })
        })
        .collect();

    // Meanwhile the other agent is served as usual.
    let other = get(&format!("http://ai.test:{port}/hello"), Some(AI_AGENT));
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let response = raw::send(w.gw.proxy, &other, b"").await;
        latencies.push(started.elapsed());
        assert_eq!(
            response.status,
            200,
            "the other agent must not be contained: {}",
            String::from_utf8_lossy(&response.body)
        );
    }
    latencies.sort();
    println!(
        "other agent during the flood: p50 {:?}, max {:?}",
        latencies[25], latencies[49]
    );

    let mut refused = 0;
    for response in flood {
        let response = response.await.unwrap();
        assert_eq!(response.status, 429);
        let body = response.json();
        assert_eq!(body["reason"], "max_concurrent_requests_exceeded");
        assert_eq!(body["policy_id"], "fault_containment.max_concurrent_requests");
        assert_eq!(response.header("retry-after"), Some("1"));
        refused += 1;
    }
    assert_eq!(refused, 100);
    assert_eq!(
        w.origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        10 + 50,
        "no refused request reached the upstream"
    );

    // Releasing the held exchanges gives the scraper its share back.
    w.origin.release.notify_waiters();
    for response in held {
        assert_eq!(response.await.unwrap().status, 200);
    }
    let after = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(after.status, 200);
    let line =
        w.gw.wait_audit(|l| l["reason"] == "max_concurrent_requests_exceeded")
            .await;
    assert_eq!(line["agent_id"], SCRAPER.0);
    assert_eq!(line["type"], "egress_rate_limited");
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains(
            r#"http_client_requests_total{decision="rate_limited",reason="max_concurrent_requests_exceeded",status_class="4xx"} 100"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_bodies_past_the_agents_pending_bytes_are_refused() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let target = format!("http://site.test:{port}/hold");

    // A declared length over the limit by itself can never pass: 413, at once.
    let post = |length: usize| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Length: {length}",
            support::basic(SCRAPER.0, SCRAPER.1)
        )
    };
    let response = raw::send(w.gw.proxy, &post(300_000), b"").await;
    assert_eq!(response.status, 413);
    assert_eq!(response.reason(), "request_body_too_large");
    assert!(response.header("retry-after").is_none());
    assert_eq!(w.origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Two bodies that fit alone but not together: the second waits its turn (429).
    let (proxy, first) = (w.gw.proxy, post(200_000));
    let held = tokio::spawn(async move { raw::send(proxy, &first, &vec![b'a'; 200_000]).await });
    wait_until(|| w.origin.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1).await;
    let busy = raw::send(w.gw.proxy, &post(100_000), &vec![b'b'; 100_000]).await;
    assert_eq!(busy.status, 429);
    assert_eq!(busy.reason(), "max_pending_bytes_exceeded");
    assert_eq!(busy.header("retry-after"), Some("1"));
    w.origin.release.notify_waiters();
    assert_eq!(held.await.unwrap().status, 200);
    // Its share comes back once the exchange is recorded.
    w.gw.wait_audit(|l| l["request"]["method"] == "POST" && l["response"]["status"] == 200)
        .await;

    // A chunked body is charged as it streams and cut once it passes the limit.
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        support::basic(SCRAPER.0, SCRAPER.1)
    );
    let stream = tokio::net::TcpStream::connect(w.gw.proxy).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..64 {
            writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let response = raw::read_response(&mut reader).await;
    assert_eq!(response.status, 413, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.reason(), "request_body_too_large");
    let _ = writing.await;
    // DLP holds a body for inspection before it leaves, so the cut comes
    // while it is held: nothing reached the origin.
    let before = w.origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    let too_large = |l: &serde_json::Value| l["reason"] == "request_body_too_large";
    // The second such line: the first was the declared-length refusal.
    wait_until(|| w.gw.audit_lines().iter().filter(|l| too_large(l)).count() == 2).await;
    let line = w.gw.audit_lines().into_iter().rfind(too_large).unwrap();
    assert_eq!(line["agent_id"], SCRAPER.0);
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(w.origin.requests.load(std::sync::atomic::Ordering::SeqCst), before);

    // The agent's share is whole again afterwards.
    let ok = raw::send(
        w.gw.proxy,
        &get(&format!("http://site.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn rate_limits_can_be_switched_off_while_containment_stays() {
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let port = origin.addr.port();
    let policy =
        policy_yaml(port, 1, 1, dns.addr, "enforce").replace("rate_limits:\n", "rate_limits:\n  enabled: false\n");
    let gw = GatewayProc::start(&policy, &agents_yaml());
    // limited.test allows 60/min (a burst of 6) while limits are on.
    let target = get(&format!("http://limited.test:{port}/hello"), Some(SCRAPER));
    for _ in 0..12 {
        assert_eq!(raw::send(gw.proxy, &target, b"").await.status, 200);
    }
    // Containment still applies: a body over max_pending_bytes is refused.
    let head = format!(
        "POST http://site.test:{port}/echo HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Length: 300000",
        support::basic(SCRAPER.0, SCRAPER.1)
    );
    assert_eq!(raw::send(gw.proxy, &head, b"").await.status, 413);
}
