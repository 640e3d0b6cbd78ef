//! The listeners on real sockets (127.0.0.1): UDP and TCP on one port, a
//! truncated upstream answer fetched again over TCP, a truncated reply to
//! the client, and queries in flight finishing on shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use super::{Harness, addresses, policy, query};
use crate::dns::server::listen;

/// How many addresses `big.test` has: too many for 512 bytes.
const BIG: u8 = 40;

/// An upstream that answers `big.test` truncated over UDP and in full over
/// TCP, counting each.
struct TruncatingUpstream {
    addr: SocketAddr,
    udp: Arc<AtomicUsize>,
    tcp: Arc<AtomicUsize>,
}

fn big_answer(query: &[u8], truncated: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut reply = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.clone());
    if truncated {
        reply.metadata.truncation = true;
    } else {
        let name = request.queries.first()?.name().clone();
        for last in 1..=BIG {
            reply.add_answer(Record::from_rdata(
                name.clone(),
                600,
                RData::A(A(Ipv4Addr::new(93, 184, 217, last))),
            ));
        }
    }
    reply.to_vec().ok()
}

async fn truncating_upstream() -> TruncatingUpstream {
    let udp_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream udp");
    let addr = udp_socket.local_addr().expect("upstream addr");
    let tcp_listener = TcpListener::bind(addr).await.expect("bind upstream tcp");
    let (udp, tcp) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let udp_count = udp.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = udp_socket.recv_from(&mut buf).await {
            udp_count.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = big_answer(&buf[..len], true) {
                let _ = udp_socket.send_to(&reply, peer).await;
            }
        }
    });
    let tcp_count = tcp.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp_listener.accept().await {
            tcp_count.fetch_add(1, Ordering::SeqCst);
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).await.is_err() {
                continue;
            }
            if let Some(reply) = big_answer(&query, false) {
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                let _ = stream.write_all(&framed).await;
            }
        }
    });
    TruncatingUpstream { addr, udp, tcp }
}

/// The handler behind the real listeners on 127.0.0.1.
struct Served {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    udp_slots: Arc<Semaphore>,
}

fn serve(h: &Harness, udp: UdpSocket, tcp: TcpListener) -> Served {
    let addr = udp.local_addr().expect("dns addr");
    let (stop, stopped) = watch::channel(false);
    let udp_slots = Arc::new(Semaphore::new(listen::MAX_IN_FLIGHT as usize));
    let tcp_slots = Arc::new(Semaphore::new(listen::MAX_TCP_CONNECTIONS as usize));
    tokio::spawn(listen::serve_udp(
        Arc::new(udp),
        h.handler.clone(),
        udp_slots.clone(),
        stopped.clone(),
    ));
    tokio::spawn(listen::serve_tcp(tcp, h.handler.clone(), tcp_slots, stopped));
    Served { addr, stop, udp_slots }
}

async fn over_tcp(addr: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.expect("send");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.expect("reply length");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("reply");
    Message::from_vec(&reply).expect("reply parses")
}

async fn over_udp(addr: SocketAddr, packet: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    socket.send_to(packet, addr).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a reply in time")
        .expect("recv");
    Message::from_vec(&buf[..len]).expect("reply parses")
}

#[tokio::test]
async fn truncated_answers_go_over_tcp_upstream_and_to_the_client() {
    let upstream = truncating_upstream().await;
    let h = Harness::new(&policy(""), upstream.addr).await;
    let (udp, tcp) = listen::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind UDP and TCP on one port");
    assert_eq!(udp.local_addr().ok(), tcp.local_addr().ok());
    let served = serve(&h, udp, tcp);

    // Without EDNS the client gets 512 bytes at most: cut, with TC set.
    let cut = over_udp(served.addr, &query("big.test", RecordType::A, false)).await;
    assert_eq!(cut.metadata.response_code, ResponseCode::NoError);
    assert!(cut.metadata.truncation, "TC tells the client to retry over TCP");
    assert!(cut.answers.len() < usize::from(BIG));
    assert_eq!(upstream.udp.load(Ordering::SeqCst), 1);
    assert_eq!(
        upstream.tcp.load(Ordering::SeqCst),
        1,
        "upstream's TC made us ask over TCP"
    );

    let full = over_tcp(served.addr, &query("big.test", RecordType::A, false)).await;
    assert!(!full.metadata.truncation);
    assert_eq!(addresses(&full).len(), usize::from(BIG));
    assert!(full.answers.iter().all(|r| r.ttl <= 30));
    assert_eq!(
        upstream.tcp.load(Ordering::SeqCst),
        1,
        "the TCP query was answered from the cache"
    );

    // An unlisted name over TCP, on the same connection semantics.
    let refused = over_tcp(served.addr, &query("unlisted.test", RecordType::A, false)).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::NXDomain);

    let _ = served.stop.send(true);
    let lines = h.audit().await;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["transport"], "tcp");
    assert_eq!(lines[1]["source"], "cache");
}

#[tokio::test]
async fn queries_in_flight_finish_during_the_drain() {
    use crate::dns::test_dns_server::{Behaviour, TestDnsServer};
    let slow = TestDnsServer::start(
        std::collections::HashMap::from([(
            "allowed.test",
            Behaviour::Answer {
                addrs: vec![IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))],
                ttl: 60,
            },
        )]),
        Duration::from_millis(300),
    )
    .await;
    let h = Harness::new(&policy(""), slow.addr()).await;
    let (udp, tcp) = listen::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let served = serve(&h, udp, tcp);
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    client
        .send_to(&query("allowed.test", RecordType::A, true), served.addr)
        .await
        .expect("send");
    // The query is waiting on the slow upstream when the stop comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = served.stop.send(true);
    let drained = listen::drained(&served.udp_slots, listen::MAX_IN_FLIGHT, Duration::from_secs(3)).await;
    assert!(drained, "the query in flight finished");
    let mut buf = [0u8; 1500];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf))
        .await
        .expect("the reply was sent before the drain ended")
        .expect("recv");
    let reply = Message::from_vec(&buf[..len]).expect("parses");
    assert_eq!(addresses(&reply).len(), 1);
    assert_eq!(h.audit().await.len(), 1);
}
