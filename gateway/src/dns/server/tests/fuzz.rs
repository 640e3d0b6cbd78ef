//! Seeded fuzz-style properties of the handler: thousands of random and
//! mutated packets, from known and unknown sources, over UDP and TCP. Any
//! input must leave the handler alive, produce a bounded, well-formed reply
//! (or none), and one audit line each, with the hash chain intact.

use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::RecordType;

use super::{Harness, SCRAPER, STRANGER, policy, query, upstream};
use crate::audit::DnsTransport;
use crate::testing::Rng;

const SEED: u64 = 0x646e_735f_7175;
const CASES: usize = 4000;
/// What one reply may take: the handler never sends more than it advertises.
const MAX_UDP_REPLY: usize = 1232;

/// Queries on the handler's different paths: forwarded, cached, static,
/// refused, NXDOMAIN, exfil-shaped, rebinding.
fn seeds() -> Vec<Vec<u8>> {
    let long = format!("{}.wild.test", "q".repeat(60));
    let mut seeds = Vec::new();
    for (name, qtype) in [
        ("allowed.test", RecordType::A),
        ("allowed.test", RecordType::AAAA),
        ("pinned.test", RecordType::A),
        ("gone.test", RecordType::A),
        ("rebind.test", RecordType::A),
        ("unlisted.test", RecordType::TXT),
        ("x.onion", RecordType::A),
        ("allowed.test", RecordType::ANY),
        ("allowed.test", RecordType::AXFR),
        (long.as_str(), RecordType::A),
        ("a.wild.test", RecordType::HTTPS),
    ] {
        seeds.push(query(name, qtype, false));
        seeds.push(query(name, qtype, true));
    }
    seeds
}

/// Bytes the parser branches on: label lengths, compression pointers,
/// record types, counts, the OPT type.
const DICTIONARY: &[u8] = &[
    0, 1, 2, 3, 5, 6, 12, 15, 16, 28, 41, 63, 64, 0x80, 0xc0, 0xc0, 0xff, b'.',
];

#[tokio::test]
async fn no_packet_crashes_or_stalls_the_handler_and_every_one_is_audited() {
    let dns = upstream().await;
    let h = Harness::new(&policy(""), dns.addr()).await;
    let seeds = seeds();
    let mut rng = Rng::new(SEED);
    let mut replies = 0;
    for case in 0..CASES {
        let packet = match rng.below(4) {
            0 => {
                let len = rng.range(0, 64);
                rng.bytes(len)
            }
            _ => {
                let mut packet = rng.pick(&seeds).clone();
                rng.mutate(&mut packet, DICTIONARY, 6);
                packet
            }
        };
        let client = if rng.one_in(8) { STRANGER } else { SCRAPER };
        let transport = if rng.one_in(4) {
            DnsTransport::Tcp
        } else {
            DnsTransport::Udp
        };
        let answered = tokio::time::timeout(Duration::from_secs(5), h.raw(client, &packet, transport)).await;
        let reply = answered.unwrap_or_else(|_| panic!("case {case} stalled; packet {packet:02x?}"));
        let Some(reply) = reply else {
            // Only a packet without a readable query header goes unanswered.
            assert!(
                packet.len() < 12 || packet[2] & 0x80 != 0,
                "case {case}: no reply to {packet:02x?}"
            );
            continue;
        };
        replies += 1;
        assert!(reply.len() >= 12, "case {case}: reply shorter than a header");
        if transport == DnsTransport::Udp {
            assert!(reply.len() <= MAX_UDP_REPLY, "case {case}: {} bytes", reply.len());
        }
        assert_eq!(reply[..2], packet[..2], "case {case}: the reply carries the query's id");
        let parsed = Message::from_vec(&reply).unwrap_or_else(|e| panic!("case {case}: reply does not parse: {e}"));
        assert_eq!(parsed.metadata.message_type, MessageType::Response);
        assert!(
            parsed.queries.len() <= 1,
            "case {case}: at most the one question is echoed"
        );
    }
    assert!(replies > CASES / 2, "most inputs have a header to answer: {replies}");
    let lines = h.audit().await;
    assert_eq!(lines.len(), CASES, "one audit line per packet");
    assert!(
        lines.iter().all(|l| l["qname"].as_str().is_none_or(|q| q.len() <= 255)),
        "names in the audit are bounded"
    );
    // The mutations reach every stage, not just the parser.
    for decision in ["answered", "nxdomain", "refused", "formerr", "dropped"] {
        let seen = lines.iter().filter(|l| l["decision"] == decision).count();
        assert!(seen > 0, "no {decision} among {CASES} cases");
    }
}
