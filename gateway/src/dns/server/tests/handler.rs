//! What the handler answers, and what it records, query by query.

use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use serde_json::Value;

use super::{BUILDER, Harness, RETIRED, SCRAPER, STRANGER, TRIAL, addresses, policy, query, upstream};
use crate::audit::DnsTransport;
use crate::control::{ControlItem, TempAllow};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The audit line for `qname`, the `nth` one (0-based).
fn line<'a>(lines: &'a [Value], qname: &str, nth: usize) -> &'a Value {
    lines
        .iter()
        .filter(|l| l["qname"] == qname)
        .nth(nth)
        .unwrap_or_else(|| panic!("no audit line {nth} for {qname} in {lines:#?}"))
}

#[tokio::test]
async fn an_allowlisted_name_is_forwarded_with_its_ttl_capped_and_then_cached() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;

    let first = h.ask(SCRAPER, "allowed.test", RecordType::A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(first.metadata.recursion_available);
    assert_eq!(addresses(&first), [ip("93.184.216.34")]);
    // Upstream said 3600 s; the policy's cache_ttl is 30 s.
    assert_eq!(first.answers[0].ttl, 30);
    // A record TTL below the cap is kept.
    let short = h.ask(SCRAPER, "short.test", RecordType::A).await;
    assert_eq!(short.answers[0].ttl, 5);

    let second = h.ask(SCRAPER, "allowed.test", RecordType::A).await;
    assert_eq!(addresses(&second), [ip("93.184.216.34")]);
    assert!(second.answers[0].ttl <= 30);
    assert_eq!(dns.queries("allowed.test"), 1, "the second answer came from the cache");
    assert_eq!(h.metrics.cache_hits.get(), 1);
    assert_eq!(h.metrics.cache_misses.get(), 2);

    let lines = h.audit().await;
    let first = line(&lines, "allowed.test", 0);
    assert_eq!(first["type"], "dns_query");
    assert_eq!(first["decision"], "answered");
    assert_eq!(first["rcode"], "NOERROR");
    assert_eq!(first["qtype"], "A");
    assert_eq!(first["source"], "upstream");
    assert_eq!(first["policy_id"], "allowlist.core[0]");
    assert_eq!(first["answers"], 1);
    assert_eq!(first["alert"], false);
    assert_eq!(first["transport"], "udp");
    assert_eq!(first["client"], "127.0.0.1:40000");
    assert!(first["request_id"].as_str().is_some_and(|id| id.len() == 32));
    assert_eq!(line(&lines, "allowed.test", 1)["source"], "cache");
}

#[tokio::test]
async fn negative_answers_are_cached_for_the_negative_ttl() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    for _ in 0..2 {
        let reply = h.ask(SCRAPER, "gone.test", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        // The SOA's own TTL (3600) is cut to negative_cache_ttl (5 s).
        let soa = reply.authorities.first().expect("the SOA is passed on");
        assert!(soa.ttl <= 5, "SOA TTL {}", soa.ttl);
    }
    assert_eq!(dns.queries("gone.test"), 1);
    let lines = h.audit().await;
    // Upstream's NXDOMAIN for an allowed name is an answer, not a refusal.
    assert_eq!(line(&lines, "gone.test", 0)["decision"], "answered");
    assert_eq!(line(&lines, "gone.test", 0)["rcode"], "NXDOMAIN");
    assert_eq!(line(&lines, "gone.test", 1)["source"], "cache");
}

#[tokio::test]
async fn names_outside_the_allowlist_and_blocked_patterns_get_nxdomain_without_asking_upstream() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    for name in ["unlisted.test", "hidden.onion", "deep.hidden.onion"] {
        let reply = h.ask(SCRAPER, name, RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(reply.answers.is_empty());
        assert_eq!(dns.queries(name), 0, "{name} must never be forwarded");
    }
    let lines = h.audit().await;
    let unlisted = line(&lines, "unlisted.test", 0);
    assert_eq!(unlisted["decision"], "nxdomain");
    assert_eq!(unlisted["reason"], "domain_not_in_allowlist");
    assert_eq!(unlisted["policy_id"], "default_deny");
    assert_eq!(unlisted["rcode"], "NXDOMAIN");
    // An allow rule for it does not lift the seed's `*.onion` block.
    assert_eq!(line(&lines, "hidden.onion", 0)["reason"], "blocked_pattern");
    assert_eq!(line(&lines, "hidden.onion", 0)["policy_id"], "dns.block_patterns");
}

#[tokio::test]
async fn a_rule_allows_the_name_whatever_its_ports_protocols_and_roles() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    // `*.wild.test` is for ai-agent only, on 443: the scraper still
    // resolves it (the gateway checks role and port on connection).
    let reply = h.ask(SCRAPER, "a.wild.test", RecordType::A).await;
    assert_eq!(addresses(&reply), [ip("93.184.216.36")]);
    // The wildcard does not cover its own suffix.
    let bare = h.ask(SCRAPER, "wild.test", RecordType::A).await;
    assert_eq!(bare.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn an_answer_that_rebinds_a_public_name_to_an_internal_address_is_refused() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    for (name, qtype) in [
        ("rebind.test", RecordType::A),
        ("mixed.test", RecordType::A),
        ("mapped.test", RecordType::AAAA),
        ("meta.test", RecordType::A),
    ] {
        let reply = h.ask(SCRAPER, name, qtype).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(reply.answers.is_empty(), "{name}: no address leaks out");
    }
    // `allow_private: true` opens private ranges (never metadata, above).
    let internal = h.ask(SCRAPER, "internal.test", RecordType::A).await;
    assert_eq!(addresses(&internal), [ip("10.1.2.3")]);

    let lines = h.audit().await;
    let rebind = line(&lines, "rebind.test", 0);
    assert_eq!(rebind["decision"], "refused");
    assert_eq!(rebind["reason"], "private_address");
    assert_eq!(rebind["restricted"], "loopback");
    assert_eq!(rebind["rcode"], "REFUSED");
    assert_eq!(line(&lines, "mixed.test", 0)["restricted"], "private");
    assert_eq!(line(&lines, "mapped.test", 0)["restricted"], "loopback");
    assert_eq!(line(&lines, "meta.test", 0)["restricted"], "cloud_metadata");
    assert_eq!(line(&lines, "internal.test", 0)["decision"], "answered");
}

#[tokio::test]
async fn static_hosts_are_answered_from_the_policy() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let reply = h.ask(SCRAPER, "pinned.test", RecordType::A).await;
    assert_eq!(addresses(&reply), [ip("10.9.9.9")], "a pin may point anywhere");
    assert_eq!(reply.answers[0].ttl, 30);
    let v6 = h.ask(SCRAPER, "pinned.test", RecordType::AAAA).await;
    assert_eq!(v6.metadata.response_code, ResponseCode::NoError);
    assert!(v6.answers.is_empty(), "NODATA for the other family");
    assert_eq!(dns.queries("pinned.test"), 0);
    let lines = h.audit().await;
    assert_eq!(line(&lines, "pinned.test", 0)["source"], "static");
}

#[tokio::test]
async fn any_and_zone_transfers_are_refused() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let any = h.ask(SCRAPER, "allowed.test", RecordType::ANY).await;
    assert_eq!(any.metadata.response_code, ResponseCode::Refused);
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let reply = h.ask(SCRAPER, "allowed.test", qtype).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp, "{qtype}");
    }
    assert_eq!(dns.queries("allowed.test"), 0);
    let lines = h.audit().await;
    let any = lines.iter().find(|l| l["qtype"] == "ANY").expect("ANY audited");
    assert_eq!(any["decision"], "refused");
    assert_eq!(any["reason"], "any_query");
    let axfr = lines.iter().find(|l| l["qtype"] == "AXFR").expect("AXFR audited");
    assert_eq!(axfr["decision"], "not_implemented");
    assert_eq!(axfr["reason"], "zone_transfer");
    assert_eq!(axfr["rcode"], "NOTIMP");
}

#[tokio::test]
async fn exfiltration_shaped_names_raise_an_alert_whatever_the_answer() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let long = format!("{}.wild.test", "a".repeat(55));
    let encoded = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dz.wild.test";
    let hex = "3f9a1c02b7e4d5a6f8091b2c3d4e5f60.unlisted.test";
    for name in [long.as_str(), encoded, hex, "a.wild.test"] {
        h.ask(SCRAPER, name, RecordType::A).await;
    }
    assert_eq!(h.metrics.alerts.get(), 3);
    let lines = h.audit().await;
    assert_eq!(line(&lines, &long, 0)["alert"], true);
    assert_eq!(line(&lines, &long, 0)["alert_reason"], "long_label");
    assert_eq!(line(&lines, encoded, 0)["alert_reason"], "high_entropy_label");
    // Not allowlisted (NXDOMAIN, never forwarded), and still an alert.
    assert_eq!(line(&lines, hex, 0)["decision"], "nxdomain");
    assert_eq!(line(&lines, hex, 0)["alert"], true);
    assert_eq!(line(&lines, "a.wild.test", 0)["alert"], false);
}

#[tokio::test]
async fn the_agent_is_the_one_whose_sources_hold_the_client_address() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let ok = h.ask(BUILDER, "allowed.test", RecordType::A).await;
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    for client in [STRANGER, RETIRED] {
        let reply = h.ask(client, "allowed.test", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused, "{client}");
    }
    let lines = h.audit().await;
    let by = |client: &str| {
        lines
            .iter()
            .find(|l| l["client"].as_str().is_some_and(|c| c.starts_with(client)))
            .unwrap_or_else(|| panic!("no line for {client}"))
    };
    let builder = by("127.0.0.2:");
    assert_eq!(builder["agent_id"], "builder-001");
    assert_eq!(builder["team_id"], "platform");
    assert_eq!(builder["environment"], "prod");
    let stranger = by("127.0.0.9:");
    assert_eq!(stranger["reason"], "unknown_source");
    assert_eq!(stranger["decision"], "refused");
    assert!(stranger.get("agent_id").is_none());
    assert_eq!(stranger["qname"], "allowed.test", "refused queries still show the name");
    assert_eq!(by("127.0.0.3:")["reason"], "agent_disabled");
}

#[tokio::test]
async fn report_mode_answers_what_enforcement_would_refuse_and_says_so() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let reply = h.ask(TRIAL, "unlisted.test", RecordType::A).await;
    assert_eq!(addresses(&reply), [ip("93.184.216.37")]);
    let lines = h.audit().await;
    let reported = line(&lines, "unlisted.test", 0);
    assert_eq!(reported["decision"], "reported");
    assert_eq!(reported["reason"], "domain_not_in_allowlist");
    assert_eq!(reported["enforcement_mode"], "report");
}

#[tokio::test]
async fn a_live_temporary_allow_opens_a_name() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let before = h.ask(SCRAPER, "temp.test", RecordType::A).await;
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    let now = chrono::Utc::now();
    let entry = TempAllow {
        id: "tmp-1".to_string(),
        domain: "temp.test".to_string(),
        ports: vec![443],
        expires_at: now + chrono::Duration::hours(1),
        reason: "test".to_string(),
        task: None,
        created_by: "tester".to_string(),
        created_at: now,
        request_id: None,
        team: None,
    };
    h.control
        .create(ControlItem::Allow(entry))
        .await
        .expect("temporary allow");
    let after = h.ask(SCRAPER, "temp.test", RecordType::A).await;
    assert_eq!(addresses(&after), [ip("93.184.216.39")]);
    let lines = h.audit().await;
    assert_eq!(line(&lines, "temp.test", 1)["policy_id"], "control.allow.tmp-1");
}

#[tokio::test]
async fn upstream_failures_are_servfail_and_not_cached() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    for _ in 0..2 {
        let reply = h.ask(SCRAPER, "flaky.test", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(dns.queries("flaky.test"), 2);
    let silent = h.ask(SCRAPER, "silent.test", RecordType::A).await;
    assert_eq!(silent.metadata.response_code, ResponseCode::ServFail);
    let lines = h.audit().await;
    assert_eq!(line(&lines, "flaky.test", 0)["reason"], "upstream_failure");
    assert_eq!(line(&lines, "silent.test", 0)["reason"], "upstream_timeout");
    assert_eq!(line(&lines, "silent.test", 0)["decision"], "servfail");
}

#[tokio::test]
async fn malformed_packets_get_formerr_when_a_header_is_readable_and_are_dropped_otherwise() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    // Too short for a header: nothing to answer to.
    assert_eq!(h.raw(SCRAPER, &[0x12, 0x34, 0x01], DnsTransport::Udp).await, None);
    // A header promising a question that is not there.
    let mut cut = query("allowed.test", RecordType::A, false);
    cut.truncate(20);
    let reply = h.raw(SCRAPER, &cut, DnsTransport::Tcp).await.expect("FORMERR");
    let reply = hickory_server::proto::op::Message::from_vec(&reply).expect("FORMERR parses");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, u16::from_be_bytes([cut[0], cut[1]]));
    // Two questions in one query.
    let mut two = query("allowed.test", RecordType::A, false);
    two[5] = 2;
    let question = two[12..].to_vec();
    two.extend_from_slice(&question);
    let reply = h.raw(SCRAPER, &two, DnsTransport::Udp).await.expect("reply");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    // A response sent to us is never answered (no reflection loops).
    let mut response = query("allowed.test", RecordType::A, false);
    response[2] |= 0x80;
    assert_eq!(h.raw(SCRAPER, &response, DnsTransport::Udp).await, None);
    assert_eq!(dns.queries("allowed.test"), 0);

    let lines = h.audit().await;
    assert_eq!(lines.len(), 4, "every packet is audited: {lines:#?}");
    assert_eq!(lines[0]["decision"], "dropped");
    assert_eq!(lines[0]["reason"], "no_header");
    assert_eq!(lines[0]["rcode"], Value::Null);
    assert_eq!(lines[1]["decision"], "formerr");
    assert_eq!(lines[1]["reason"], "malformed");
    assert_eq!(lines[1]["transport"], "tcp");
    assert_eq!(lines[2]["reason"], "question_count");
    assert_eq!(lines[3]["reason"], "not_a_query");
}

#[tokio::test]
async fn the_question_is_echoed_with_its_letter_case() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let packet = query("AlLoWeD.TeSt", RecordType::A, true);
    let reply = h.raw(SCRAPER, &packet, DnsTransport::Udp).await.expect("reply");
    let question_end = 12 + "AlLoWeD.TeSt".len() + 2 + 4;
    assert_eq!(reply[12..question_end], packet[12..question_end]);
    let reply = hickory_server::proto::op::Message::from_vec(&reply).expect("parses");
    assert_eq!(addresses(&reply), [ip("93.184.216.34")]);
}

#[tokio::test]
async fn without_query_logging_routine_answers_are_counted_but_not_written() {
    let dns = upstream().await;
    let h = Harness::new(&policy("  query_logging: false\n"), dns.addr()).await;
    h.ask(SCRAPER, "allowed.test", RecordType::A).await;
    h.ask(SCRAPER, "unlisted.test", RecordType::A).await;
    let lines = h.audit().await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["qname"], "unlisted.test");
}

#[tokio::test]
async fn a_reloaded_policy_applies_to_the_next_query() {
    use crate::reload::Reload as _;
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let before = h.ask(SCRAPER, "unlisted.test", RecordType::A).await;
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);
    let path = h.dir.path().join("policy.yaml");
    let wider = policy("").replace(
        "  internal:\n",
        "    - domain: unlisted.test\n      ports: [443]\n      protocols: [https]\n  internal:\n",
    );
    std::fs::write(&path, wider).expect("write policy");
    assert!(h.handler.reload_policy(&path));
    let after = h.ask(SCRAPER, "unlisted.test", RecordType::A).await;
    assert_eq!(addresses(&after), [ip("93.184.216.37")]);
    // A broken file is refused; the last good policy stays.
    std::fs::write(&path, "allowlist: [").expect("write policy");
    assert!(!h.handler.reload_policy(&path));
    let still = h.ask(SCRAPER, "unlisted.test", RecordType::A).await;
    assert_eq!(still.metadata.response_code, ResponseCode::NoError);
}
