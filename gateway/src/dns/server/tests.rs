//! Tests of the DNS control server: the handler fed packets directly (the
//! agent is the address they claim to come from), a real upstream on
//! 127.0.0.1, and the audit trail read back.

mod fuzz;
mod handler;
mod name;
mod sockets;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::sync::watch;

use super::handler::DnsHandler;
use super::metrics::DnsMetrics;
use super::policy::DnsSnapshot;
use super::upstream::Upstream;
use crate::audit::{AuditWriterHandle, DnsTransport, start_writer};
use crate::control::ControlStore;
use crate::dns::test_dns_server::{Behaviour, TestDnsServer};
use crate::identity::IdentityResolver;

/// The registry: each agent identified by its loopback address alone.
const AGENTS: &str = r#"agents:
  - id: scraper-001
    team: data
    project: crawl
    environment: dev
    role: scraper
    sources: ["127.0.0.1/32"]
  - id: builder-001
    team: platform
    project: assistant
    environment: prod
    role: ai-agent
    sources: ["127.0.0.2/32"]
  - id: retired-001
    team: data
    project: crawl
    environment: dev
    role: scraper
    disabled: true
    sources: ["127.0.0.3/32"]
  - id: trial-001
    team: data
    project: crawl
    environment: staging
    role: scraper
    sources: ["127.0.0.4/32"]
"#;

const SCRAPER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const BUILDER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const RETIRED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const TRIAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));
const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9));

/// The seed's shape; `staging` agents run in report mode.
fn policy(extra_dns: &str) -> String {
    format!(
        r#"egress:
  default_action: deny
  environments:
    staging: {{enforcement: report}}
allowlist:
  core:
    - domain: allowed.test
      ports: [443]
      protocols: [https]
    - domain: short.test
      ports: [443]
      protocols: [https]
    - domain: "*.wild.test"
      ports: [443]
      protocols: [https]
      roles: [ai-agent]
    - domain: gone.test
      ports: [443]
      protocols: [https]
    - domain: flaky.test
      ports: [443]
      protocols: [https]
    - domain: silent.test
      ports: [443]
      protocols: [https]
    - domain: rebind.test
      ports: [443]
      protocols: [https]
    - domain: mixed.test
      ports: [443]
      protocols: [https]
    - domain: mapped.test
      ports: [443]
      protocols: [https]
    - domain: pinned.test
      ports: [8080]
      protocols: [http]
    - domain: big.test
      ports: [443]
      protocols: [https]
    - domain: hidden.onion
      ports: [443]
      protocols: [https]
  internal:
    - domain: internal.test
      ports: [5432]
      protocols: [http]
      allow_private: true
    - domain: meta.test
      ports: [80]
      protocols: [http]
      allow_private: true
dns:
  cache_ttl: 30s
  negative_cache_ttl: 5s
  static_hosts:
    pinned.test: 10.9.9.9
{extra_dns}"#
    )
}

fn answer(addrs: &[&str], ttl: u32) -> Behaviour {
    Behaviour::Answer {
        addrs: addrs
            .iter()
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
            .collect(),
        ttl,
    }
}

/// The upstream every handler test uses.
async fn upstream() -> TestDnsServer {
    let zone: HashMap<&str, Behaviour> = HashMap::from([
        ("allowed.test", answer(&["93.184.216.34"], 3600)),
        ("short.test", answer(&["93.184.216.35"], 5)),
        ("a.wild.test", answer(&["93.184.216.36"], 60)),
        ("flaky.test", Behaviour::ServFail),
        ("silent.test", Behaviour::Silent),
        ("rebind.test", answer(&["127.0.0.1"], 60)),
        ("mixed.test", answer(&["1.1.1.1", "10.1.2.3"], 60)),
        ("mapped.test", answer(&["::ffff:127.0.0.1"], 60)),
        ("internal.test", answer(&["10.1.2.3"], 60)),
        ("meta.test", answer(&["169.254.169.254"], 60)),
        ("unlisted.test", answer(&["93.184.216.37"], 60)),
        ("hidden.onion", answer(&["93.184.216.38"], 60)),
        ("temp.test", answer(&["93.184.216.39"], 60)),
    ]);
    TestDnsServer::start(zone, Duration::ZERO).await
}

struct Harness {
    handler: Arc<DnsHandler>,
    metrics: Arc<DnsMetrics>,
    control: Arc<ControlStore>,
    audit_path: PathBuf,
    writer: AuditWriterHandle,
    _stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new(policy_yaml: &str, upstream: SocketAddr) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_path = dir.path().join("policy.yaml");
        let agents_path = dir.path().join("agents.yaml");
        std::fs::write(&policy_path, policy_yaml).expect("write policy");
        std::fs::write(&agents_path, AGENTS).expect("write agents");
        let (snapshot, _) = DnsSnapshot::load(&policy_path).unwrap_or_else(|e| panic!("test policy: {e}"));
        let identities = IdentityResolver::load(&agents_path).unwrap_or_else(|e| panic!("test agents: {e}"));
        let metrics = Arc::new(DnsMetrics::new().expect("metrics"));
        let audit_path = dir.path().join("dns-audit.jsonl");
        let (audit, writer) = start_writer(&audit_path, 16_384, metrics.audit()).expect("audit writer");
        let (stop, stopped) = watch::channel(false);
        let control = ControlStore::start(None, &dir.path().join("state"), stopped).expect("control store");
        let mut upstream = Upstream::new(upstream);
        upstream.udp_timeout = Duration::from_millis(200);
        upstream.tcp_timeout = Duration::from_secs(2);
        let handler = Arc::new(DnsHandler {
            policy: ArcSwap::from_pointee(snapshot),
            identities: ArcSwap::from_pointee(identities),
            control: control.clone(),
            audit,
            metrics: metrics.clone(),
            upstream,
        });
        Harness {
            handler,
            metrics,
            control,
            audit_path,
            writer,
            _stop: stop,
            dir,
        }
    }

    /// Asks `name` as `client` over UDP with EDNS, and decodes the reply.
    async fn ask(&self, client: IpAddr, name: &str, qtype: RecordType) -> Message {
        let packet = query(name, qtype, true);
        let reply = self
            .raw(client, &packet, DnsTransport::Udp)
            .await
            .unwrap_or_else(|| panic!("no reply for {name}"));
        Message::from_vec(&reply).unwrap_or_else(|e| panic!("reply for {name} does not parse: {e}"))
    }

    async fn raw(&self, client: IpAddr, packet: &[u8], transport: DnsTransport) -> Option<Vec<u8>> {
        self.handler
            .answer(packet, SocketAddr::new(client, 40_000), transport)
            .await
    }

    /// Stops the writer and reads every line it wrote.
    async fn audit(self) -> Vec<serde_json::Value> {
        drop(self.handler);
        self.writer.shutdown().await.expect("audit flush");
        let text = std::fs::read_to_string(&self.audit_path).expect("audit file");
        let report = crate::audit::verify_file(&self.audit_path).expect("audit chain verifies");
        assert!(report.torn_lines.is_empty());
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line {line}: {e}")))
            .collect()
    }
}

/// A query for `name`, optionally with an EDNS OPT record.
fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::new(rand::random::<u16>(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    message.add_query(Query::query(name, qtype));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        message.set_edns(opt);
    }
    message.to_vec().expect("encode query")
}

/// The A/AAAA addresses of a reply, in order.
fn addresses(message: &Message) -> Vec<IpAddr> {
    message.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}
