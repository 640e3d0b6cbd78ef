//! Bounded shutdown (issue 16 §3): every long-running process (`gateway`,
//! `up`, `scheduler`, `dns`, `analyze`) stops within `--drain-timeout`
//! whatever its dependencies do (NATS killed or hung, an upstream that never
//! answers, a client that never reads), and a second signal ends it at once
//! with exit code 130.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::net::TcpStream;

use support::nats::NatsServer;

use super::*;

/// How late a process may exit after its drain timeout: process start-up
/// of the watchdog's exit, a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A `clawgress` process under test.
pub(super) struct Proc {
    child: Child,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Proc {
    pub(super) fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(support::clawgress_bin())
            .args(args)
            .env("CLAWGRESS_LOG", "info")
            .env("CLAWGRESS_TEST_JWT_SECRET", super::JWT_SECRET)
            .env("TMPDIR", dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn clawgress {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, log }
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first stdout line starting with `prefix`, within 30 s.
    pub(super) fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line '{prefix}...' within 30 s; log:\n{}", self.log()),
            }
        }
    }

    /// The address on the stdout line starting with `prefix`.
    pub(super) fn addr(&mut self, prefix: &str) -> SocketAddr {
        let line = self.line(prefix);
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in '{line}'"))
    }

    /// Waits until the log contains `text` (within 30 s).
    pub(super) fn logged(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "'{text}' never logged; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(super) fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status, which must come within `limit`.
    pub(super) fn exits_within(&mut self, limit: Duration, what: &str) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("{what}: exited {status} after {:?}", started.elapsed());
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{what}: still running {limit:?} later; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then (while it drains) SIGINT: it must end at once, with 130.
    pub(super) fn second_signal_exits_at_once(&mut self, what: &str) {
        self.signal("TERM");
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            self.running(),
            "{what}: exited before the second signal: nothing held its drain; log:\n{}",
            self.log()
        );
        self.signal("INT");
        let status = self.exits_within(Duration::from_secs(2), what);
        assert_eq!(status.code(), Some(130), "{what}: log:\n{}", self.log());
        assert!(self.log().contains("second signal"), "{what}: log:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        support::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
}

/// The pieces every process here is pointed at: NATS, a local origin with
/// `/hold` (answers only when released), the test policy and agents.
pub(super) struct Setup {
    pub(super) nats: NatsServer,
    pub(super) origin: upstream::Origin,
    _dns: TestDns,
    pub(super) dir: tempfile::TempDir,
    pub(super) policy: PathBuf,
    pub(super) agents: PathBuf,
}

impl Setup {
    pub(super) async fn start() -> Option<Setup> {
        let nats = NatsServer::start()?;
        let origin = upstream::origin().await;
        let dns = TestDns::start(&[]).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.yaml");
        let agents = dir.path().join("agents.yaml");
        std::fs::write(&policy, policy_yaml(origin.addr.port(), 1, 1, dns.addr, "enforce")).expect("policy");
        std::fs::write(&agents, agents_yaml()).expect("agents");
        std::fs::write(
            dir.path().join("credentials.yaml"),
            format!("agents:\n  {}: {}\n", SCRAPER.0, SCRAPER.1),
        )
        .expect("credentials");
        Some(Setup {
            nats,
            origin,
            _dns: dns,
            dir,
            policy,
            agents,
        })
    }

    pub(super) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub(super) fn gateway(&self, drain: &str, name: &str) -> (Proc, SocketAddr) {
        let mut gateway = Proc::spawn(
            self.dir.path(),
            name,
            &strings(&[
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--policy",
                &self.policy.display().to_string(),
                "--agents",
                &self.agents.display().to_string(),
                "--audit",
                &self.path(&format!("{name}-audit.jsonl")),
                "--state-dir",
                &self.path(&format!("{name}-state")),
                "--nats",
                &self.nats.url,
                "--drain-timeout",
                drain,
            ]),
        );
        let proxy = gateway.addr("proxy listening on ");
        (gateway, proxy)
    }

    /// A request the origin holds: in flight until the process cuts it.
    pub(super) async fn held_request(&self, proxy: SocketAddr) -> TcpStream {
        let before = self.origin.requests.load(std::sync::atomic::Ordering::SeqCst);
        let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
        let head = get(
            &format!("http://site.test:{}/hold", self.origin.addr.port()),
            Some(SCRAPER),
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, format!("{head}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        wait_until(|| self.origin.requests.load(std::sync::atomic::Ordering::SeqCst) > before).await;
        stream
    }

    /// A client that asks for a big body and never reads it.
    pub(super) async fn client_not_reading(&self, proxy: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
        let head = get(
            &format!("http://site.test:{}/big/400000000", self.origin.addr.port()),
            Some(SCRAPER),
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, format!("{head}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        stream
    }
}

pub(super) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test]
async fn the_gateway_stops_within_its_drain_whatever_nats_upstreams_and_clients_do() {
    let Some(mut s) = Setup::start().await else { return };
    let (mut gateway, proxy) = s.gateway("3s", "gateway");
    let _held = s.held_request(proxy).await;
    let _not_reading = s.client_not_reading(proxy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");
    let status = gateway.exits_within(Duration::from_secs(3) + SLACK, "gateway, NATS gone");
    // Bounded by its own steps, not by the watchdog.
    assert!(status.success(), "log:\n{}", gateway.log());
    assert!(gateway.log().contains("stopping anyway"), "log:\n{}", gateway.log());

    // A hung NATS server (connections open, nothing answers), and a second signal.
    s.nats = NatsServer::start().expect("nats-server again");
    let (mut gateway, proxy) = s.gateway("60s", "gateway-hung");
    let _held = s.held_request(proxy).await;
    signal(s.nats.pid(), "STOP");
    gateway.second_signal_exits_at_once("gateway, NATS hung");
    signal(s.nats.pid(), "CONT");
}

#[tokio::test]
async fn up_stops_within_its_drain_with_nats_gone_and_at_once_on_a_second_signal() {
    let Some(mut s) = Setup::start().await else { return };
    let up = |s: &Setup, drain: &str, name: &str| {
        let port = || support::nats::free_port().to_string();
        let mut up = Proc::spawn(
            s.dir.path(),
            name,
            &strings(&[
                "up",
                "--nats",
                &s.nats.url,
                "--policy",
                &s.policy.display().to_string(),
                "--agents",
                &s.agents.display().to_string(),
                "--credentials",
                &s.path("credentials.yaml"),
                "--admin-tokens",
                "policies/admin-tokens.example.yaml",
                "--listen",
                &format!("127.0.0.1:{}", port()),
                "--admin",
                &format!("127.0.0.1:{}", port()),
                "--scheduler-metrics",
                &format!("127.0.0.1:{}", port()),
                "--state-dir",
                &s.path(&format!("{name}-state")),
                "--drain-timeout",
                drain,
            ]),
        );
        let proxy = up.addr("proxy listening on ");
        up.logged("scheduler pulling jobs");
        (up, proxy)
    };
    let (mut first, proxy) = up(&s, "4s", "up");
    let _held = s.held_request(proxy).await;
    s.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("TERM");
    let status = first.exits_within(Duration::from_secs(4) + SLACK, "up, NATS gone");
    assert!(status.success(), "log:\n{}", first.log());

    s.nats = NatsServer::start().expect("nats-server again");
    let (mut second, proxy) = up(&s, "60s", "up-again");
    let _held = s.held_request(proxy).await;
    s.nats.stop();
    second.second_signal_exits_at_once("up, NATS gone");
}

#[tokio::test]
async fn the_scheduler_stops_within_its_drain_with_a_job_in_flight_and_nats_gone() {
    let Some(mut s) = Setup::start().await else { return };
    let (_gateway, proxy) = s.gateway("60s", "gateway");
    let scheduler = |s: &Setup, drain: &str, name: &str| {
        let scheduler = Proc::spawn(
            s.dir.path(),
            name,
            &strings(&[
                "scheduler",
                "--nats",
                &s.nats.url,
                "--gateway",
                &format!("http://{proxy}"),
                "--credentials",
                &s.path("credentials.yaml"),
                "--chromium",
                "none",
                "--drain-timeout",
                drain,
            ]),
        );
        scheduler.logged("scheduler pulling jobs");
        scheduler
    };
    let hold_job = |s: &Setup, id: &str| {
        let before = s.origin.requests.load(std::sync::atomic::Ordering::SeqCst);
        let job = serde_json::json!({
            "version": 1, "type": "scrape", "id": id, "agent": SCRAPER.0,
            "url": format!("http://site.test:{}/hold", s.origin.addr.port()), "fetch": "http",
        });
        let file = s.dir.path().join(format!("{id}.jsonl"));
        std::fs::File::create(&file)
            .and_then(|mut f| writeln!(f, "{job}"))
            .expect("job file");
        let output = Command::new(support::clawgress_bin())
            .args(["submit", "--nats", &s.nats.url])
            .arg(&file)
            .output()
            .expect("clawgress submit");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        before
    };
    let mut first = scheduler(&s, "3s", "scheduler");
    let before = hold_job(&s, "hold-1");
    wait_until(|| s.origin.requests.load(std::sync::atomic::Ordering::SeqCst) > before).await;
    s.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("TERM");
    let status = first.exits_within(Duration::from_secs(3) + SLACK, "scheduler, NATS gone");
    assert!(status.success(), "log:\n{}", first.log());

    s.nats = NatsServer::start().expect("nats-server again");
    let mut second = scheduler(&s, "60s", "scheduler-again");
    let before = hold_job(&s, "hold-2");
    wait_until(|| s.origin.requests.load(std::sync::atomic::Ordering::SeqCst) > before).await;
    s.nats.stop();
    second.second_signal_exits_at_once("scheduler, NATS gone");
}

/// A DNS query for `name` (type A), as bytes on the wire.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

#[tokio::test]
async fn the_dns_server_stops_within_its_drain_with_its_upstream_silent_and_nats_gone() {
    let Some(mut s) = Setup::start().await else { return };
    // An upstream resolver that takes queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let upstream = silent.local_addr().expect("addr");
    let agents = s.dir.path().join("dns-agents.yaml");
    std::fs::write(
        &agents,
        "agents:\n  - id: scraper-001\n    team: data\n    project: crawl\n    environment: dev\n    role: scraper\n    sources: [\"127.0.0.1/32\"]\n",
    )
    .expect("agents");
    let dns = |s: &Setup, drain: &str, name: &str| {
        let mut dns = Proc::spawn(
            s.dir.path(),
            name,
            &strings(&[
                "dns",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &upstream.to_string(),
                "--policy",
                &s.policy.display().to_string(),
                "--agents",
                &agents.display().to_string(),
                "--audit",
                &s.path(&format!("{name}-audit.jsonl")),
                "--state-dir",
                &s.path(&format!("{name}-state")),
                "--nats",
                &s.nats.url,
                "--drain-timeout",
                drain,
            ]),
        );
        let addr = dns.addr("dns listening on ");
        (dns, addr)
    };
    // other.wild.test is allowlisted (*.wild.test) and has no static
    // address: the query goes upstream and stays in flight.
    let ask = |addr: SocketAddr| {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        client.send_to(&dns_query(7, "other.wild.test"), addr).expect("send");
        client
    };
    let (mut first, addr) = dns(&s, "3s", "dns");
    let _client = ask(addr);
    std::thread::sleep(Duration::from_millis(300));
    s.nats.stop();
    first.signal("TERM");
    let status = first.exits_within(Duration::from_secs(3) + SLACK, "dns, NATS gone");
    assert!(status.success(), "log:\n{}", first.log());

    s.nats = NatsServer::start().expect("nats-server again");
    let (mut second, addr) = dns(&s, "60s", "dns-again");
    let _client = ask(addr);
    std::thread::sleep(Duration::from_millis(300));
    s.nats.stop();
    second.second_signal_exits_at_once("dns, NATS gone");
}

#[tokio::test]
async fn analyze_stops_within_its_drain_with_nats_gone_or_hung() {
    let Some(mut s) = Setup::start().await else { return };
    let analyze = |s: &Setup, drain: &str, name: &str| {
        Proc::spawn(
            s.dir.path(),
            name,
            &strings(&[
                "analyze",
                "--nats",
                &s.nats.url,
                "--durable",
                name,
                "--quiet",
                "--drain-timeout",
                drain,
            ]),
        )
    };
    let mut first = analyze(&s, "3s", "analyze");
    // Reading the audit streams (its consumer exists) before NATS goes.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(first.running(), "log:\n{}", first.log());
    s.nats.stop();
    std::thread::sleep(Duration::from_millis(300));
    first.signal("TERM");
    let status = first.exits_within(Duration::from_secs(3) + SLACK, "analyze, NATS gone");
    assert!(status.success(), "log:\n{}", first.log());

    // Hung before it could connect: stuck in the handshake, still a second
    // signal ends it.
    s.nats = NatsServer::start().expect("nats-server again");
    signal(s.nats.pid(), "STOP");
    let mut second = analyze(&s, "60s", "analyze-hung");
    std::thread::sleep(Duration::from_millis(300));
    second.second_signal_exits_at_once("analyze, NATS hung");
    signal(s.nats.pid(), "CONT");
}
