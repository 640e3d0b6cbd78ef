//! Asking the upstream resolver: our own query (never the client's bytes),
//! over UDP from a fresh port with a random id, then TCP when the answer
//! comes back truncated.
//!
//! An answer is taken only if it comes from the upstream's address (the UDP
//! socket is connected), carries our id and echoes our question; anything
//! else is ignored while we keep waiting, so a spoofed packet has to guess
//! both the port and the id, and even then names the question we asked.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::audit::DnsTransport;

/// The EDNS buffer we advertise upstream: the DNS Flag Day 2020 value,
/// which avoids IP fragmentation on common paths.
pub(super) const EDNS_PAYLOAD: u16 = 1232;
/// Longest UDP answer read; larger datagrams are cut by the kernel, fail to
/// parse and are ignored.
const MAX_UDP_ANSWER: usize = 4096;

/// Where queries for allowed names go.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Per UDP try; a lost datagram is sent again after it.
    pub udp_timeout: Duration,
    pub udp_attempts: usize,
    /// For the whole TCP exchange after a truncated answer.
    pub tcp_timeout: Duration,
}

impl Upstream {
    /// Two UDP tries of 1.5 s and 3 s over TCP: a query finishes (or
    /// fails) within 6 s, under a stub resolver's usual patience.
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            udp_timeout: Duration::from_millis(1500),
            udp_attempts: 2,
            tcp_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UpstreamError {
    Timeout,
    Failed(String),
}

impl UpstreamError {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Failed(_) => "upstream_error",
        }
    }
}

/// One exchange's outcome and what it cost, for the latency metric.
pub(super) struct Exchange {
    pub result: Result<(Message, usize), UpstreamError>,
    /// Each transport tried, with its time.
    pub timings: Vec<(DnsTransport, Duration)>,
}

impl Upstream {
    /// Resolves one question. `Ok` carries the answer and its size on the wire.
    pub(super) async fn query(&self, name: &Name, qtype: RecordType) -> Exchange {
        let id = rand::random::<u16>();
        let mut timings = Vec::new();
        let query = match encode_query(id, name, qtype) {
            Ok(query) => query,
            Err(message) => {
                return Exchange {
                    result: Err(UpstreamError::Failed(message)),
                    timings,
                };
            }
        };
        let expect = Expected { id, name, qtype };
        let started = Instant::now();
        let udp = self.udp(&query, &expect).await;
        timings.push((DnsTransport::Udp, started.elapsed()));
        let result = match udp {
            Ok((message, _)) if message.metadata.truncation => {
                let started = Instant::now();
                let tcp = self.tcp(&query, &expect).await;
                timings.push((DnsTransport::Tcp, started.elapsed()));
                tcp
            }
            other => other,
        };
        Exchange { result, timings }
    }

    async fn udp(&self, query: &[u8], expect: &Expected<'_>) -> Result<(Message, usize), UpstreamError> {
        let local: SocketAddr = if self.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(failed)?;
        socket.connect(self.addr).await.map_err(failed)?;
        let mut buf = vec![0u8; MAX_UDP_ANSWER];
        for _ in 0..self.udp_attempts.max(1) {
            socket.send(query).await.map_err(failed)?;
            let deadline = Instant::now() + self.udp_timeout;
            loop {
                match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    // ICMP port unreachable: nothing listens there.
                    Ok(Err(error)) => return Err(failed(error)),
                    Ok(Ok(len)) => {
                        if let Some(message) = expect.accepts(&buf[..len]) {
                            return Ok((message, len));
                        }
                    }
                }
            }
        }
        Err(UpstreamError::Timeout)
    }

    async fn tcp(&self, query: &[u8], expect: &Expected<'_>) -> Result<(Message, usize), UpstreamError> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await.map_err(failed)?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&u16::try_from(query.len()).unwrap_or(u16::MAX).to_be_bytes());
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.map_err(failed)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.map_err(failed)?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await.map_err(failed)?;
            let size = answer.len();
            expect
                .accepts(&answer)
                .map(|message| (message, size))
                .ok_or_else(|| UpstreamError::Failed("the TCP answer does not match the question".to_string()))
        };
        tokio::time::timeout(self.tcp_timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// What a genuine answer to our query looks like.
struct Expected<'a> {
    id: u16,
    name: &'a Name,
    qtype: RecordType,
}

impl Expected<'_> {
    fn accepts(&self, bytes: &[u8]) -> Option<Message> {
        let message = Message::from_vec(bytes).ok()?;
        let metadata = &message.metadata;
        if metadata.id != self.id || metadata.message_type != MessageType::Response {
            return None;
        }
        let [question] = message.queries.as_slice() else {
            return None;
        };
        let same = question.query_type() == self.qtype
            && question.query_class() == DNSClass::IN
            && question.name().to_lowercase() == self.name.to_lowercase();
        same.then_some(message)
    }
}

fn encode_query(id: u16, name: &Name, qtype: RecordType) -> Result<Vec<u8>, String> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    message.set_edns(edns);
    message
        .to_vec()
        .map_err(|e| format!("cannot encode the upstream query: {e}"))
}

fn failed(error: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Failed(error.to_string())
}
