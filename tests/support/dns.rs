//! A tiny authoritative DNS server on 127.0.0.1 for tests: answers A and
//! AAAA from a fixed table and NXDOMAIN for everything else, and counts
//! the queries it sees, so tests can prove what the gateway did (or did
//! not) ask.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
}

impl TestDns {
    pub async fn start(table: &[(&str, IpAddr)]) -> TestDns {
        Self::start_on("127.0.0.1:0".parse().expect("address"), table).await
    }

    /// On a given address (a network namespace's "internet" resolver).
    pub async fn start_on(bind: SocketAddr, table: &[(&str, IpAddr)]) -> TestDns {
        let socket = UdpSocket::bind(bind).await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let mut records: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in table {
            records.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some((name, answer)) = answer(&buf[..n], &records) {
                    seen.lock().unwrap().push(name);
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        TestDns { addr, queries }
    }

    /// Names queried so far (one entry per query, A and AAAA separately).
    pub fn queries_for(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|q| q.as_str() == name)
            .count()
    }
}

fn answer(query: &[u8], records: &HashMap<String, Vec<IpAddr>>) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let name = labels.join(".");
    let matching: Vec<IpAddr> = records
        .get(&name)
        .map(|ips| {
            ips.iter()
                .copied()
                .filter(|ip| matches!((qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_))))
                .collect()
        })
        .unwrap_or_default();
    let known = records.contains_key(&name);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied, RA; rcode NXDOMAIN (3) for unknown names.
    let rd = query[2] & 0x01;
    out.push(0x84 | rd);
    out.push(if known { 0x80 } else { 0x83 });
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(matching.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for ip in matching {
        out.extend_from_slice(&[0xC0, 0x0C]);
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 1, 0, 1]);
                out.extend_from_slice(&60u32.to_be_bytes());
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 28, 0, 1]);
                out.extend_from_slice(&60u32.to_be_bytes());
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some((name, out))
}
