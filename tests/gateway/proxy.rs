//! Forwarding and tunnelling: streaming, keep-alive, half-close, what
//! travels upstream, and recording every exchange.

use super::*;

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
    let open = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("egress_tunnels_open "))
            .map(str::to_string)
    };
    assert_eq!(
        open(&w.gw.metrics().await).as_deref(),
        Some("egress_tunnels_open 1"),
        "the tunnel is counted while it is open"
    );
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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open(&w.gw.metrics().await).as_deref() != Some("egress_tunnels_open 0") {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended tunnel is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    // Upload: with DLP off, a chunked body is echoed back chunk by chunk.
    // (With DLP on, the default, a body is held until it is inspected.)
    let policy =
        policy_yaml(port, w.tls.addr.port(), w.echo.port(), w.dns.addr, "enforce") + "dlp:\n  enabled: false\n";
    let gw = GatewayProc::start(&policy, &agents_yaml());
    let mut up = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
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
    let line = gw.wait_audit(|l| l["request"]["path"] == "/echo").await;
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
    assert!(w.gw.wait_exit().success());
    let line = w.gw.wait_audit(|l| l["request"]["method"] == "CONNECT").await;
    assert_eq!(line["bytes_out"], 8);
    assert_eq!(line["bytes_in"], 11);
}
