//! Outbound DLP through the real gateway: what is refused, what is
//! rewritten, what the origin receives, and what the audit keeps (kinds and
//! digests, never the data).

use std::io::Write as _;

use super::*;

const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const GITHUB_TOKEN: &str = "ghp_R8vT2kQ9mZ4xL7nB3cW6yH1jD5fG0sA8pE2u";
const EMAIL: &str = "ada.lovelace@example.org";
const CARD: &str = "4111 1111 1111 1111";

fn post(url: &str, content_type: &str, extra: &str, length: usize) -> String {
    format!(
        "POST {url} HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {length}",
        basic(SCRAPER.0, SCRAPER.1)
    )
}

fn chat(content: &str) -> Vec<u8> {
    serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}],
    })
    .to_string()
    .into_bytes()
}

/// The whole audit file, as written: no finding may ever appear in it.
fn audit_text(gw: &GatewayProc) -> String {
    gw.audit_lines()
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn secrets_are_blocked_and_personal_data_redacted_by_default() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let echo = format!("http://site.test:{port}/echo");
    let seen = || w.origin.requests.load(std::sync::atomic::Ordering::SeqCst);

    // A key in a JSON body: refused, nothing reaches the origin, and the
    // answer names the kind of data but never repeats it.
    let body = chat(&format!("deploy with aws_access_key_id={AWS_KEY} please"));
    let before = seen();
    let refused = raw::send(w.gw.proxy, &post(&echo, "application/json", "", body.len()), &body).await;
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.reason(), "dlp_blocked");
    assert_eq!(refused.json()["policy_id"], "dlp.actions.secrets");
    assert_eq!(refused.json()["dlp_matches"], serde_json::json!(["aws_access_key"]));
    assert!(!String::from_utf8_lossy(&refused.body).contains(AWS_KEY));
    assert_eq!(seen(), before, "a blocked body must not reach the origin");
    let request_id = refused.header("x-request-id").unwrap().to_string();
    let line = w.gw.audit_for(&request_id).await;
    assert_eq!(line["type"], "egress_denied");
    assert_eq!(line["alert"], true);
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(line["dlp_matches"][0]["type"], "aws_access_key");
    assert_eq!(line["dlp_matches"][0]["class"], "secret");
    assert_eq!(line["dlp_matches"][0]["action"], "block");
    assert_eq!(line["dlp_matches"][0]["location"], "body");
    assert!(line["dlp_matches"][0].get("sha256").is_none(), "{line}");
    // compliance_logging.hash_sensitive: the body's digest, not the body.
    assert_eq!(
        line["request"]["body_sha256"],
        sha256_hex(std::str::from_utf8(&body).unwrap())
    );

    // The same key hidden by JSON escapes and gzip is still found.
    let escaped = br#"{"messages":[{"role":"user","content":"\u0041KIAIOSFODNN7EXAMPLE"}]}"#;
    let zipped = gzip(escaped);
    let refused = raw::send(
        w.gw.proxy,
        &post(&echo, "application/json", "Content-Encoding: gzip\r\n", zipped.len()),
        &zipped,
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["dlp_matches"], serde_json::json!(["aws_access_key"]));

    // A chunked body (no declared length) is held and scanned the same way.
    let token = format!("token: {GITHUB_TOKEN}");
    let head = format!(
        "POST {echo} HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked",
        basic(SCRAPER.0, SCRAPER.1)
    );
    let chunked = format!("{:x}\r\n{token}\r\n0\r\n\r\n", token.len());
    let refused = raw::send(w.gw.proxy, &head, chunked.as_bytes()).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["dlp_matches"], serde_json::json!(["github_token"]));

    // Personal data is redacted: the origin gets valid JSON with the
    // values replaced, and a Content-Length that matches the new body.
    let body = chat(&format!("write to {EMAIL}, card {CARD}, thanks"));
    let served = raw::send(w.gw.proxy, &post(&echo, "application/json", "", body.len()), &body).await;
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    let received = served.json();
    let content = received["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        content,
        "write to [REDACTED:email], card [REDACTED:credit_card], thanks"
    );
    let line = w.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["type"], "egress_request");
    let kinds: Vec<&str> = line["dlp_matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["email", "credit_card"]);
    assert!(
        line["dlp_matches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["action"] == "redact")
    );
    assert_eq!(
        line["request"]["size_bytes"].as_u64().unwrap(),
        served.body.len() as u64
    );

    // Query strings: a token is refused, an email is redacted in place.
    let headers = format!("http://site.test:{port}/headers");
    let refused = raw::send(
        w.gw.proxy,
        &get(&format!("{headers}?access_token={GITHUB_TOKEN}"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(refused.status, 403);
    let line = w.gw.audit_for(refused.header("x-request-id").unwrap()).await;
    assert_eq!(line["dlp_matches"][0]["location"], "query");
    let served = raw::send(
        w.gw.proxy,
        &get(&format!("{headers}?to={EMAIL}&page=2"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.json()["_request_target"],
        "/headers?to=%5BREDACTED%3Aemail%5D&page=2"
    );

    // Nothing that was found is anywhere in the audit trail (the card in
    // any spacing; a bare "4111" would also match inside a SHA-256 hex).
    let audit = audit_text(&w.gw);
    for secret in [AWS_KEY, GITHUB_TOKEN, EMAIL, CARD, "4111111111111111", "4111-1111"] {
        assert!(!audit.contains(secret), "{secret} leaked into the audit:\n{audit}");
    }
}

fn dlp_policy(w: &World, dlp: &str) -> String {
    policy_yaml(
        w.origin.addr.port(),
        w.tls.addr.port(),
        w.echo.port(),
        w.dns.addr,
        "enforce",
    ) + dlp
}

#[tokio::test]
async fn hash_log_alert_and_oversize_follow_the_policy() {
    let w = world("enforce").await;
    let policy = dlp_policy(
        &w,
        "dlp:\n  max_inspect_bytes: 64KB\n  oversize: alert\n  actions:\n    secrets: hash-log\n    pii: alert\n",
    );
    let gw = GatewayProc::start(&policy, &agents_yaml());
    let echo = format!("http://site.test:{}/echo", w.origin.addr.port());

    // hash-log: the request passes untouched and the audit keeps the
    // SHA-256 of the match, so a leak can be confirmed later.
    let body = format!("key={AWS_KEY}");
    let served = raw::send(
        gw.proxy,
        &post(&echo, "application/x-www-form-urlencoded", "", body.len()),
        body.as_bytes(),
    )
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, body.as_bytes());
    let line = gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["dlp_matches"][0]["action"], "hash-log");
    assert_eq!(line["dlp_matches"][0]["sha256"], sha256_hex(AWS_KEY));
    assert!(line.get("alert").is_none(), "hash-log alone raises no alert: {line}");

    // alert: passes untouched, the line raises an alert.
    let body = chat(&format!("mail {EMAIL}"));
    let served = raw::send(gw.proxy, &post(&echo, "application/json", "", body.len()), &body).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, body);
    let line = gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["alert"], true);
    assert_eq!(line["dlp_matches"][0]["action"], "alert");

    // Too large to inspect, `oversize: alert`: streamed on, flagged.
    let big = vec![b'a'; 100 * 1024];
    let served = raw::send(gw.proxy, &post(&echo, "text/plain", "", big.len()), &big).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body.len(), big.len());
    let line = gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["dlp_skipped"], "body_too_large");
    assert_eq!(line["alert"], true);

    // The default (`oversize: block`) fails closed, with a clear answer.
    let strict = GatewayProc::start(&dlp_policy(&w, "dlp:\n  max_inspect_bytes: 64KB\n"), &agents_yaml());
    let refused = raw::send(strict.proxy, &post(&echo, "text/plain", "", big.len()), &big).await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.reason(), "dlp_uninspectable");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("dlp.max_inspect_bytes")
    );

    // An encoding the gateway cannot read is not waved through.
    let refused = raw::send(
        w.gw.proxy,
        &post(&echo, "text/plain", "Content-Encoding: zstd\r\n", 5),
        b"hello",
    )
    .await;
    assert_eq!(refused.status, 415);
    assert_eq!(refused.reason(), "dlp_uninspectable");
}

#[tokio::test]
async fn report_mode_records_what_dlp_would_block() {
    let w = world("report").await;
    let echo = format!("http://site.test:{}/echo", w.origin.addr.port());
    let body = chat(&format!("the key is {AWS_KEY}"));
    let served = raw::send(w.gw.proxy, &post(&echo, "application/json", "", body.len()), &body).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, body);
    assert!(served.header("x-clawgress-decision").unwrap().contains("dlp_blocked"));
    let line = w.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["decision"], "would_deny");
    assert_eq!(line["reason"], "dlp_blocked");
    assert_eq!(line["dlp_matches"][0]["type"], "aws_access_key");
}

fn ai_post(url: &str, body: &[u8]) -> String {
    format!(
        "POST {url} HTTP/1.1\r\nHost: ai.test\r\nProxy-Authorization: {}\r\nAuthorization: Bearer sk-test-key\r\nAccept-Encoding: gzip\r\nContent-Type: application/json\r\nContent-Length: {}",
        basic(AI_AGENT.0, AI_AGENT.1),
        body.len()
    )
}

#[tokio::test]
async fn ai_requests_are_read_and_their_usage_recorded() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();

    // OpenAI chat completions, JSON answer.
    let body = serde_json::json!({
        "model": "gpt-4o",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "What is the weather in Paris today?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    })
    .to_string();
    let served = raw::send(
        w.gw.proxy,
        &ai_post(&format!("http://ai.test:{port}/v1/chat/completions"), body.as_bytes()),
        body.as_bytes(),
    )
    .await;
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    let line = w.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["provider"], "openai");
    assert_eq!(line["model"], "gpt-4o");
    let estimate = line["token_estimate"].as_u64().unwrap();
    assert!((20..200).contains(&estimate), "estimate {estimate}: {line}");
    assert_eq!(line["tokens_in"], 30);
    assert_eq!(line["tokens_out"], 12);
    assert_eq!(line["ai"]["api"], "chat_completions");
    assert_eq!(line["ai"]["max_tokens"], 300);
    assert_eq!(line["ai"]["tools"], serde_json::json!(["get_weather"]));
    assert_eq!(line["ai"]["estimate_method"], "o200k_base");

    // Anthropic messages, streamed: the bytes reach the agent unchanged,
    // the latest cumulative output count is kept (not the sum), and the
    // tool the model called is recorded.
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": true,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    })
    .to_string();
    let served = raw::send(
        w.gw.proxy,
        &ai_post(&format!("http://ai.test:{port}/v1/messages"), body.as_bytes()),
        body.as_bytes(),
    )
    .await;
    assert_eq!(served.status, 200);
    let text = String::from_utf8(served.body.clone()).unwrap();
    assert!(text.starts_with("event: message_start\n") && text.ends_with("{\"type\":\"message_stop\"}\n\n"));
    let line = w.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["provider"], "anthropic");
    assert_eq!(line["model"], "claude-sonnet-4-5");
    assert_eq!(line["tokens_in"], 25);
    assert_eq!(line["tokens_out"], 25);
    assert_eq!(line["tool_calls"], serde_json::json!(["get_weather"]));
    assert_eq!(line["ai"]["stream"], true);
    assert!(
        line["ai"]["estimate_method"]
            .as_str()
            .unwrap()
            .contains("approximation")
    );

    // A body the analyzer cannot read is forwarded and recorded as such.
    let broken = b"{\"model\": 42";
    let served = raw::send(
        w.gw.proxy,
        &ai_post(&format!("http://ai.test:{port}/v1/chat/completions"), broken),
        broken,
    )
    .await;
    let line = w.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert!(line["ai"]["unparsed"].as_str().unwrap().contains("JSON"), "{line}");
}

#[tokio::test]
async fn two_replicas_sharing_nats_never_overspend_a_token_budget() {
    let Some(nats) = support::nats::NatsServer::start() else {
        return;
    };
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    let port = origin.addr.port();
    const BUDGET: u64 = 2000;
    // Containment would refuse part of the burst first; this test is about budgets.
    let policy = policy_yaml(port, 1, 1, dns.addr, "enforce")
        .replace("max_concurrent_requests: 10", "max_concurrent_requests: 500")
        + &format!(
            "budgets:\n  rules:\n    - scope: agent\n      window: day\n      tokens: {BUDGET}\n      mode: hard-stop\n"
        );
    let replicas = [
        GatewayProc::start_with(&policy, &agents_yaml(), &["--nats", &nats.url]),
        GatewayProc::start_with(&policy, &agents_yaml(), &["--nats", &nats.url]),
    ];
    let body = serde_json::json!({
        "model": "gpt-4o",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
    .to_string();
    let url = format!("http://ai.test:{port}/v1/chat/completions");

    // 80 at once, alternating replicas; each reserves its estimate plus 50
    // and really uses 42 (the fake provider's usage).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..80 {
        let (proxy, head, body) = (replicas[i % 2].proxy, ai_post(&url, body.as_bytes()), body.clone());
        tasks.spawn(async move { raw::send(proxy, &head, body.as_bytes()).await });
    }
    let (mut served, mut refused) = (0u64, Vec::new());
    while let Some(response) = tasks.join_next().await {
        let response = response.unwrap();
        match response.status {
            200 => served += 1,
            429 => refused.push(response),
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&response.body)),
        }
    }
    assert!(
        served > 0 && !refused.is_empty(),
        "served {served}, refused {}",
        refused.len()
    );

    // In-flight reservations refuse part of a burst; one at a time, the
    // rest of the budget is usable until what is left is less than one
    // request's reservation.
    'sequential: for i in 0..100 {
        // Settling is asynchronous (a KV write per replica): a refusal is
        // final only once the earlier reservations have had time to settle,
        // however slow the machine is.
        let mut response = raw::send(replicas[i % 2].proxy, &ai_post(&url, body.as_bytes()), body.as_bytes()).await;
        for _ in 0..10 {
            if response.status != 429 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            response = raw::send(replicas[i % 2].proxy, &ai_post(&url, body.as_bytes()), body.as_bytes()).await;
        }
        if response.status == 429 {
            refused.push(response);
            break 'sequential;
        }
        assert_eq!(response.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What the provider reports as used, from both replicas' audit lines.
    let mut used = 0;
    let mut reservation = 0;
    for gw in &replicas {
        for line in gw.audit_lines() {
            if line["decision"] == "allow" && line["request"]["path"] == "/v1/chat/completions" {
                used += line["tokens_in"].as_u64().unwrap() + line["tokens_out"].as_u64().unwrap();
                reservation = line["budget"]["tokens"].as_u64().unwrap();
            }
        }
    }
    assert_eq!(used, served * 42);
    assert!(
        used <= BUDGET + reservation,
        "{used} tokens used across replicas, budget {BUDGET} + one reservation {reservation}"
    );
    // Nearly all of it is usable: reservations are settled to usage.
    assert!(used + 2 * reservation > BUDGET, "only {used} of {BUDGET} used");

    // The refusal says which budget, what is spent, and when it resets.
    assert!(refused.iter().all(|r| r.reason() == "budget_exceeded"));
    let refusal = refused[0].json();
    assert_eq!(refusal["reason"], "budget_exceeded");
    assert_eq!(refusal["budget"]["scope"], "agent");
    assert_eq!(refusal["budget"]["id"], AI_AGENT.0);
    assert_eq!(refusal["budget"]["window"], "day");
    assert_eq!(refusal["budget"]["limit_tokens"], BUDGET);
    assert!(refusal["budget"]["resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));
    assert!(refused[0].header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
}

#[tokio::test]
async fn a_soft_stop_budget_lets_the_request_through_and_says_so() {
    let w = world("enforce").await;
    let gw = GatewayProc::start(
        &dlp_policy(
            &w,
            "budgets:\n  rules:\n    - {scope: team, window: hour, tokens: 10, mode: soft-stop}\n",
        ),
        &agents_yaml(),
    );
    let body = serde_json::json!({
        "model": "gpt-4o",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
    .to_string();
    let url = format!("http://ai.test:{}/v1/chat/completions", w.origin.addr.port());
    let served = raw::send(gw.proxy, &ai_post(&url, body.as_bytes()), body.as_bytes()).await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.header("x-clawgress-budget"),
        Some("exceeded; mode=soft-stop; policy_id=budgets.rules[0]")
    );
    let line = gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["alert"], true);
    assert_eq!(line["budget"]["budgets"][0]["over"], true);
    assert_eq!(line["budget"]["budgets"][0]["mode"], "soft-stop");
}
