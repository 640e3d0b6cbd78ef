//! A tiny authoritative DNS server on 127.0.0.1 for the resolver tests.
//!
//! Hand-written wire format, just enough for A/AAAA questions: it counts the
//! queries it receives per name, so tests can prove that a cached answer did
//! not reach the network and that an expired one did.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;
const CLASS_IN: u16 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
/// The SOA minimum the server sends with NXDOMAIN: much longer than any test
/// negative TTL, so a test passing proves our own negative TTL is used.
pub(super) const SOA_NEGATIVE_TTL: u32 = 3600;

/// How the server answers one name.
#[derive(Debug, Clone)]
pub(super) enum Behaviour {
    /// A and AAAA answers with this TTL (seconds); a type with no address is
    /// an empty NOERROR (NODATA).
    Answer {
        addrs: Vec<IpAddr>,
        ttl: u32,
    },
    ServFail,
    /// Never answers, to exercise timeouts.
    Silent,
}

pub(super) struct TestDnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl TestDnsServer {
    /// Names not in `zone` get NXDOMAIN. Every reply is sent after `delay`.
    pub(super) async fn start(zone: HashMap<&str, Behaviour>, delay: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind test DNS socket");
        let addr = socket.local_addr().expect("test DNS socket address");
        let socket = Arc::new(socket);
        let zone: Arc<HashMap<String, Behaviour>> =
            Arc::new(zone.into_iter().map(|(name, b)| (name.to_string(), b)).collect());
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let counter = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Some(query) = Query::parse(&buf[..len]) else {
                    continue;
                };
                *counter
                    .lock()
                    .expect("query counter")
                    .entry(query.name.clone())
                    .or_insert(0) += 1;
                let Some(reply) = reply(&query, zone.get(&query.name)) else {
                    continue;
                };
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply, peer).await;
                });
            }
        });
        TestDnsServer { addr, queries, task }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received for `name` (A and AAAA together).
    pub(super) fn queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .expect("query counter")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for TestDnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Query {
    id: [u8; 2],
    recursion_desired: bool,
    /// Lowercase, without the trailing dot.
    name: String,
    qtype: u16,
    /// The question section exactly as received, echoed in the reply.
    question: Vec<u8>,
}

impl Query {
    fn parse(packet: &[u8]) -> Option<Query> {
        let header = packet.get(..12)?;
        let qdcount = u16::from_be_bytes([header[4], header[5]]);
        if qdcount != 1 {
            return None;
        }
        let mut pos = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*packet.get(pos)?);
            pos += 1;
            if len == 0 {
                break;
            }
            let label = packet.get(pos..pos + len)?;
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
            pos += len;
        }
        let tail = packet.get(pos..pos + 4)?;
        let qtype = u16::from_be_bytes([tail[0], tail[1]]);
        Some(Query {
            id: [header[0], header[1]],
            recursion_desired: header[2] & 0x01 != 0,
            name: labels.join("."),
            qtype,
            question: packet[12..pos + 4].to_vec(),
        })
    }
}

fn reply(query: &Query, behaviour: Option<&Behaviour>) -> Option<Vec<u8>> {
    let (rcode, answers, ttl) = match behaviour {
        None => (RCODE_NXDOMAIN, Vec::new(), 0),
        Some(Behaviour::Silent) => return None,
        Some(Behaviour::ServFail) => (RCODE_SERVFAIL, Vec::new(), 0),
        Some(Behaviour::Answer { addrs, ttl }) => {
            let rdata = addrs
                .iter()
                .filter_map(|ip| match (ip, query.qtype) {
                    (IpAddr::V4(v4), TYPE_A) => Some(v4.octets().to_vec()),
                    (IpAddr::V6(v6), TYPE_AAAA) => Some(v6.octets().to_vec()),
                    _ => None,
                })
                .collect::<Vec<_>>();
            (0, rdata, *ttl)
        }
    };
    let with_soa = rcode == RCODE_NXDOMAIN;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query.id);
    // QR=1, opcode 0, AA=1, RD echoed; RA=1 and the response code.
    out.push(0x84 | u8::from(query.recursion_desired));
    out.push(0x80 | rcode);
    for count in [1, answers.len() as u16, u16::from(with_soa), 0] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(&query.question);
    for rdata in &answers {
        record_header(&mut out, query.qtype, ttl, rdata.len());
        out.extend_from_slice(rdata);
    }
    if with_soa {
        let mut soa = Vec::new();
        encode_name(&mut soa, "ns.test");
        encode_name(&mut soa, "admin.test");
        for value in [1, 3600, 600, 86400, SOA_NEGATIVE_TTL] {
            soa.extend_from_slice(&value.to_be_bytes());
        }
        record_header(&mut out, TYPE_SOA, SOA_NEGATIVE_TTL, soa.len());
        out.extend_from_slice(&soa);
    }
    Some(out)
}

/// Owner name as a pointer to the question name (offset 12).
fn record_header(out: &mut Vec<u8>, rtype: u16, ttl: u32, rdlen: usize) {
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdlen as u16).to_be_bytes());
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}
