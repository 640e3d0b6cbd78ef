//! A synthetic trail for the benchmark (`clawgress bench-analyze`): lines
//! in the gateway's own shape and size (about 750 bytes, hash-chained
//! fields included), from many agents to many hosts, mostly allowed, some
//! denied, rate-limited, AI requests with tokens, and DNS queries. The
//! chain's hashes are made up: the engine does not verify them.

use std::io::Write;

/// Writes `events` lines to `out`, `gap_us` microseconds apart.
pub fn write_trail(out: &mut impl Write, events: u64, agents: u32, gap_us: u64) -> std::io::Result<()> {
    let start_ms: i64 = 1_796_083_200_000;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        // xorshift: reproducible and far cheaper than the lines it feeds.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut line = String::with_capacity(1024);
    for i in 0..events {
        let r = next();
        let at = chrono::DateTime::from_timestamp_millis(start_ms + (i * gap_us / 1000) as i64)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let agent = r % u64::from(agents.max(1));
        let host = (r >> 16) % 200;
        let roll = (r >> 32) % 100;
        line.clear();
        use std::fmt::Write as _;
        if roll < 3 {
            let _ = write!(
                line,
                r#"{{"timestamp":"{at}","type":"dns_query","request_id":"{i:032x}","client":"10.42.0.7:41234","transport":"udp","agent_id":"agent-{agent:04}","team_id":"data","project_id":"crawl","environment":"prod","qname":"site-{host}.example.com","qtype":"A","decision":"answered","rcode":"NOERROR","policy_id":"allowlist.sites[0]","policy_version":"7370c68315bd","enforcement_mode":"enforce","source":"cache","answers":1,"latency_ms":0,"alert":false,"prev_hash":"{:064x}","hash":"{:064x}"}}"#,
                r,
                r.rotate_left(7)
            );
        } else {
            let (kind, decision, extra) = match roll {
                3..=10 => (
                    "egress_denied",
                    "deny",
                    r#""reason":"domain_not_in_allowlist","action":"blocked","alert":true,"#,
                ),
                11..=13 => (
                    "egress_rate_limited",
                    "rate_limited",
                    r#""reason":"rate_limit_exceeded","action":"throttled","alert":false,"#,
                ),
                _ => ("egress_request", "allow", r#""allowed_by":"sites","#),
            };
            let ai = roll >= 90;
            let tokens = if ai {
                format!(
                    r#""token_estimate":{},"provider":"openai","model":"gpt-4o","tokens_in":{},"tokens_out":{},"#,
                    r % 4000,
                    r % 3000,
                    r % 500
                )
            } else {
                r#""token_estimate":null,"#.to_string()
            };
            let _ = write!(
                line,
                r#"{{"timestamp":"{at}","type":"{kind}","request_id":"{i:032x}","agent_id":"agent-{agent:04}","team_id":"data","project_id":"crawl","environment":"prod","request":{{"method":"{}","domain":"site-{host}.example.com","port":443,"path":"/items/{}"}},"response":{{"status":200,"latency_ms":12,"size_bytes":{}}},"trace_id":"{:032x}",{extra}"decision":"{decision}","policy_id":"allowlist.sites[{host}]","policy_version":"7370c68315bd","enforcement_mode":"enforce","destination_ip":"203.0.113.{}","destination_asn":{},"destination_geo":"NL","protocol":"https","tunnel":true,"bytes_out":{},"bytes_in":{},"latency_ms":40,{tokens}"dlp_matches":[],"anomaly_score":0.0,"prev_hash":"{:064x}","hash":"{:064x}"}}"#,
                if roll % 5 == 0 { "POST" } else { "GET" },
                r % 10_000,
                r % 65_536,
                r,
                host % 250,
                64_500 + host % 20,
                r % 4096,
                r % 65_536,
                r.rotate_left(3),
                r.rotate_left(11),
            );
        }
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
