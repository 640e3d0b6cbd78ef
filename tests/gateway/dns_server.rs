//! `clawgress dns` end to end: the real binary on 127.0.0.1, a local
//! upstream, raw DNS packets over UDP and TCP, the audit trail, the
//! metrics, reloads and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::dns::TestDns;
use crate::support::{clawgress_bin, raw};

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;
const TYPE_A: u16 = 1;

fn policy(extra_rule: &str) -> String {
    format!(
        r#"allowlist:
  core:
    - domain: allowed.test
      ports: [443]
      protocols: [https]
    - domain: rebind.test
      ports: [443]
      protocols: [https]
{extra_rule}dns:
  cache_ttl: 60s
  negative_cache_ttl: 10s
"#
    )
}

fn agents(sources: &str) -> String {
    format!(
        "agents:\n  - id: scraper-001\n    team: data\n    project: crawl\n    environment: dev\n    role: scraper\n    sources: [{sources}]\n"
    )
}

struct DnsProc {
    child: Child,
    dns: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    audit: PathBuf,
    stderr: PathBuf,
}

impl DnsProc {
    fn start(upstream: SocketAddr) -> DnsProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let (policy_path, agents_path) = (dir.path().join("policy.yaml"), dir.path().join("agents.yaml"));
        std::fs::write(&policy_path, policy("")).expect("write policy");
        std::fs::write(&agents_path, agents("\"127.0.0.1/32\"")).expect("write agents");
        let audit = dir.path().join("dns-audit.jsonl");
        let stderr = dir.path().join("dns.log");
        let mut child = Command::new(clawgress_bin())
            .args(["dns", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(["--watch-interval-ms", "100", "--upstream"])
            .arg(upstream.to_string())
            .arg("--policy")
            .arg(&policy_path)
            .arg("--agents")
            .arg(&agents_path)
            .arg("--audit")
            .arg(&audit)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("CLAWGRESS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn clawgress dns");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut dns, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while dns.is_none() || metrics.is_none() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                panic!(
                    "clawgress dns did not start; its log:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            };
            let addr = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            dns = dns.or_else(|| addr("dns listening on "));
            metrics = metrics.or_else(|| addr("metrics listening on "));
        }
        DnsProc {
            child,
            dns: dns.unwrap_or_else(|| unreachable!()),
            metrics: metrics.unwrap_or_else(|| unreachable!()),
            dir,
            audit,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}")))
            .collect()
    }

    async fn metrics(&self) -> String {
        let response = raw::send(
            self.metrics,
            "GET /metrics HTTP/1.1\r\nHost: dns\r\nConnection: close",
            b"",
        )
        .await;
        assert_eq!(response.status, 200);
        String::from_utf8(response.body).expect("metrics are UTF-8")
    }
}

impl Drop for DnsProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A query with a fixed id, RD set, no EDNS.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0]);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet
}

/// What the tests read from a reply.
#[derive(Debug)]
struct Reply {
    id: u16,
    rcode: u8,
    /// (address, TTL) of each A record.
    a: Vec<(Ipv4Addr, u32)>,
}

fn skip_name(packet: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *packet.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l => pos += 1 + usize::from(l),
        }
    }
}

fn parse(packet: &[u8]) -> Reply {
    let u16_at = |pos: usize| u16::from_be_bytes([packet[pos], packet[pos + 1]]);
    assert!(packet.len() >= 12, "reply too short: {packet:02x?}");
    assert_ne!(packet[2] & 0x80, 0, "QR set");
    let (questions, answers) = (u16_at(4), u16_at(6));
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(packet, pos).expect("question name") + 4;
    }
    let mut a = Vec::new();
    for _ in 0..answers {
        pos = skip_name(packet, pos).expect("answer name");
        let (rtype, ttl, len) = (
            u16_at(pos),
            u32::from_be_bytes([packet[pos + 4], packet[pos + 5], packet[pos + 6], packet[pos + 7]]),
            usize::from(u16_at(pos + 8)),
        );
        pos += 10;
        if rtype == TYPE_A && len == 4 {
            a.push((
                Ipv4Addr::new(packet[pos], packet[pos + 1], packet[pos + 2], packet[pos + 3]),
                ttl,
            ));
        }
        pos += len;
    }
    Reply {
        id: u16_at(0),
        rcode: packet[3] & 0x0f,
        a,
    }
}

async fn ask_from(from: Ipv4Addr, server: SocketAddr, id: u16, name: &str) -> Reply {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(from), 0))
        .await
        .expect("client socket");
    socket.send_to(&query(id, name, TYPE_A), server).await.expect("send");
    let mut buf = [0u8; 1500];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no reply for {name}"))
        .expect("recv");
    let reply = parse(&buf[..len]);
    assert_eq!(reply.id, id);
    reply
}

async fn ask(server: SocketAddr, id: u16, name: &str) -> Reply {
    ask_from(Ipv4Addr::LOCALHOST, server, id, name).await
}

async fn ask_tcp(server: SocketAddr, id: u16, name: &str) -> Reply {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let packet = query(id, name, TYPE_A);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await.expect("send");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.expect("length");
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.expect("reply");
    parse(&reply)
}

/// Polls until `name` gets `rcode` from `from`, or fails after 10 s.
async fn wait_for(proc: &DnsProc, from: Ipv4Addr, name: &str, rcode: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 0x7000;
    loop {
        id += 1;
        if ask_from(from, proc.dns, id, name).await.rcode == rcode {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} from {from} never got rcode {rcode}; log:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_dns_server_answers_by_policy_audits_every_query_and_reloads() {
    let upstream = TestDns::start(&[
        ("allowed.test", "93.184.216.34".parse().expect("ip")),
        ("rebind.test", "127.0.0.1".parse().expect("ip")),
        ("later.test", "93.184.216.35".parse().expect("ip")),
    ])
    .await;
    let mut proc = DnsProc::start(upstream.addr);

    let allowed = ask(proc.dns, 1, "allowed.test").await;
    assert_eq!(allowed.rcode, NOERROR);
    // The upstream's TTL is 60 s, the policy's cap too.
    assert_eq!(allowed.a, [(Ipv4Addr::new(93, 184, 216, 34), 60)]);
    let again = ask_tcp(proc.dns, 2, "allowed.test").await;
    assert_eq!(again.a.len(), 1, "TCP answers too");
    assert_eq!(upstream.queries_for("allowed.test"), 1, "the second answer was cached");

    assert_eq!(ask(proc.dns, 3, "later.test").await.rcode, NXDOMAIN);
    assert_eq!(
        upstream.queries_for("later.test"),
        0,
        "an unlisted name is never forwarded"
    );
    assert_eq!(ask(proc.dns, 4, "rebind.test").await.rcode, REFUSED);
    // 127.0.0.2 is in no agent's sources.
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(ask_from(stranger, proc.dns, 5, "allowed.test").await.rcode, REFUSED);

    let metrics = proc.metrics().await;
    for line in [
        "dns_queries_total{result=\"answered\"} 2",
        "dns_queries_total{result=\"nxdomain\"} 1",
        "dns_queries_total{result=\"refused\"} 2",
        "dns_cache_hits_total 1",
        "dns_upstream_duration_seconds_count{transport=\"udp\"} 2",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }

    // Reloads: the policy file changes, then the agents file.
    let later = "    - domain: later.test\n      ports: [443]\n      protocols: [https]\n";
    std::fs::write(proc.dir.path().join("policy.yaml"), policy(later)).expect("write policy");
    wait_for(&proc, Ipv4Addr::LOCALHOST, "later.test", NOERROR).await;
    std::fs::write(
        proc.dir.path().join("agents.yaml"),
        agents("\"127.0.0.1/32\", \"127.0.0.2/32\""),
    )
    .expect("write agents");
    wait_for(&proc, stranger, "allowed.test", NOERROR).await;
    let metrics = proc.metrics().await;
    assert!(metrics.contains("dns_reloads_total{file=\"policy\",result=\"success\"} 1"));
    assert!(metrics.contains("dns_reloads_total{file=\"agents\",result=\"success\"} 1"));

    // SIGTERM: a clean stop within the drain, the trail flushed.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(proc.child.id().to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Ok(Some(exit)) = proc.child.try_wait() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop; log:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit {exit}; log:\n{}", proc.log());

    let verify = Command::new(clawgress_bin())
        .args(["audit", "verify"])
        .arg(&proc.audit)
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "the chain verifies: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let lines = proc.audit_lines();
    assert!(lines.iter().all(|l| l["type"] == "dns_query"));
    let first = &lines[0];
    assert_eq!(first["qname"], "allowed.test");
    assert_eq!(first["agent_id"], "scraper-001");
    assert_eq!(first["decision"], "answered");
    assert_eq!(first["rcode"], "NOERROR");
    assert_eq!(lines[1]["transport"], "tcp");
    let refused: Vec<_> = lines.iter().filter(|l| l["decision"] == "refused").collect();
    assert_eq!(refused[0]["reason"], "private_address");
    assert_eq!(refused[1]["reason"], "unknown_source");
    assert!(
        lines
            .iter()
            .any(|l| l["qname"] == "later.test" && l["decision"] == "nxdomain"),
        "the query before the reload"
    );
}
