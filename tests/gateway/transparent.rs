//! Egress that cannot be bypassed, across network namespaces of the test's
//! own (deploy/lab/net.sh): a `worker` with no proxy settings, an `edge`
//! running the compiled nftables ruleset, the transparent listener, the DNS
//! control server and the explicit proxy, and an `internet` of origins that
//! log who connects and a resolver. Every attempt must have an audit line
//! naming the agent from its source CIDR.

use std::sync::{Arc, Mutex};

use support::netns::{EDGE_IP, EGRESS_IP, Lab, NsRuntime, OTHER_IP, SITE_IP, UNLISTED_IP, WORKER_IP};

use super::*;

const AGENT: (&str, &str) = ("lab-worker", "lab-worker-key");
const TRANSPARENT_PORT: &str = "15001";
const DNS_PORT: &str = "5353";

fn lab_policy() -> String {
    // "The internet" of the lab lives in the benchmarking range, which the
    // gateway otherwise refuses as a reserved address: the rules say so.
    format!(
        r#"egress:
  default_action: deny
  logging: all_requests
allowlist:
  lab_sites:
    - domain: "site.lab"
      ports: [80, 443]
      protocols: [http, https]
      allow_private: true
    - domain: "other.lab"
      ports: [80, 443]
      protocols: [http, https]
      allow_private: true
rate_limits:
  per_agent: {{default: 100000/min, burst: 10000}}
  per_project: {{default: 100000/min, burst: 10000}}
  per_domain: {{default: 100000/min, max: 100000/min}}
dns:
  nameservers: ["{SITE_IP}:53"]
"#
    )
}

fn lab_agents() -> String {
    format!(
        "agents:\n  - id: {}\n    team: lab\n    project: lab\n    environment: dev\n    role: scraper\n    api_key_sha256: \"{}\"\n    sources: [\"{WORKER_IP}/32\"]\n",
        AGENT.0,
        sha256_hex(AGENT.1)
    )
}

/// Who connected to which origin: (origin address, peer address).
type Peers = Arc<Mutex<Vec<(SocketAddr, IpAddr)>>>;

/// HTTP on :80 and HTTPS (site.lab and other.lab, one test CA) on :443 of
/// every internet address, and a plain listener on the unlisted :8080.
fn internet(rt: &NsRuntime) -> (Peers, String) {
    let peers: Peers = Default::default();
    let ca_params = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "lab test CA");
        params
    };
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["site.lab".to_string(), "other.lab".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    for ip in [SITE_IP, OTHER_IP, UNLISTED_IP] {
        for (port, tls) in [(80, false), (443, true), (8080, false)] {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let (peers, acceptor) = (peers.clone(), acceptor.clone());
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind origin");
                while let Ok((stream, peer)) = listener.accept().await {
                    peers.lock().unwrap().push((addr, peer.ip()));
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_req| async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(format!("hello from {addr}")),
                            )))
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        if tls {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        } else {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    });
                }
            });
        }
    }
    rt.spawn(async {
        let dns = support::dns::TestDns::start_on(
            format!("{SITE_IP}:53").parse().unwrap(),
            &[
                ("site.lab", SITE_IP.parse().unwrap()),
                ("other.lab", OTHER_IP.parse().unwrap()),
            ],
        )
        .await;
        // Served until the runtime stops.
        std::future::pending::<()>().await;
        drop(dns);
    });
    (peers, ca.pem())
}

/// The edge: the compiled ruleset, the gateway (explicit and transparent)
/// and the DNS control server.
struct Edge {
    gateway: GatewayProc,
    dns: support::Killed,
    dns_audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn edge(lab: &Lab) -> Edge {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let policy = dir.join("policy.yaml");
    let agents = dir.join("agents.yaml");
    std::fs::write(&policy, lab_policy()).unwrap();
    std::fs::write(&agents, lab_agents()).unwrap();
    let ruleset = dir.join("edge.nft");
    let compiled = std::process::Command::new(support::clawgress_bin())
        .args(["policy", "compile", "--target", "nftables", "--policy"])
        .arg(&policy)
        .args(["--workload-cidr", "198.18.1.0/24", "--egress-ip", EGRESS_IP])
        .args(["--egress-iface", &lab.egress_iface()])
        .args([
            "--transparent-port",
            TRANSPARENT_PORT,
            "--dns-port",
            DNS_PORT,
            "--proxy-port",
            "3128",
        ])
        .arg("--out")
        .arg(&ruleset)
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let loaded = lab.exec(&lab.edge, "nft").arg("-f").arg(&ruleset).output().unwrap();
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let gateway = GatewayProc::start_in(
        &lab.edge,
        &lab_policy(),
        &lab_agents(),
        &[
            "--listen",
            &format!("{EDGE_IP}:3128"),
            "--transparent",
            &format!("0.0.0.0:{TRANSPARENT_PORT}"),
            "--header-timeout-secs",
            "2",
        ],
    );
    let dns_audit = dir.join("dns-audit.jsonl");
    let dns = lab
        .exec(&lab.edge, support::clawgress_bin())
        .args(["dns", "--listen", &format!("{EDGE_IP}:{DNS_PORT}")])
        .args(["--upstream", &format!("{SITE_IP}:53"), "--policy"])
        .arg(&policy)
        .arg("--agents")
        .arg(&agents)
        .arg("--audit")
        .arg(&dns_audit)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("dns.log")).unwrap())
        .spawn()
        .unwrap();
    Edge {
        gateway,
        dns: support::Killed(dns),
        dns_audit,
        _dir: tmp,
    }
}

/// An A query for `name`, as a resolver would send it.
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

/// Asks the worker's resolver (any address: the edge redirects port 53)
/// and returns the answer's rcode and first A record.
async fn resolve(name: &str) -> (u8, Option<IpAddr>) {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let query = dns_query(0x4242, name);
    let mut buf = [0u8; 1500];
    for _ in 0..50 {
        socket.send_to(&query, (EDGE_IP, 53)).await.unwrap();
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await {
            let answer = &buf[..n];
            return (answer[3] & 0x0f, first_a(answer));
        }
    }
    panic!("the DNS control server never answered for {name}");
}

/// The first A record of a DNS answer.
fn first_a(message: &[u8]) -> Option<IpAddr> {
    fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let len = *message.get(at)? as usize;
            match len {
                0 => return Some(at + 1),
                l if l & 0xc0 == 0xc0 => return Some(at + 2),
                l => at += 1 + l,
            }
        }
    }
    let questions = u16::from_be_bytes([*message.get(4)?, *message.get(5)?]);
    let answers = u16::from_be_bytes([*message.get(6)?, *message.get(7)?]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(message, at)?;
        let kind = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
        let len = u16::from_be_bytes([*message.get(at + 8)?, *message.get(at + 9)?]) as usize;
        let data = message.get(at + 10..at + 10 + len)?;
        if kind == 1 && len == 4 {
            return Some(IpAddr::from([data[0], data[1], data[2], data[3]]));
        }
        at += 10 + len;
    }
    None
}

/// A client as a workload would use it; names resolve as the lab's
/// resolver answers them (the DNS control server is tested on its own).
fn client(ca_pem: &str, proxy: Option<&str>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("site.lab", format!("{SITE_IP}:0").parse().unwrap())
        .resolve("other.lab", format!("{OTHER_IP}:0").parse().unwrap())
        .timeout(Duration::from_secs(10));
    let builder = match proxy {
        Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy).unwrap().basic_auth(AGENT.0, AGENT.1)),
        None => builder.no_proxy(),
    };
    builder.build().unwrap()
}

/// The gateway's audit line matching `wanted`, waiting for it to be written.
fn wait_line(gateway: &GatewayProc, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = gateway.audit_lines().into_iter().find(|l| wanted(l)) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such audit line: {:#?}",
            gateway.audit_lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn workers_behind_the_edge_leave_only_through_the_gateway() {
    let Some(lab) = Lab::create() else { return };
    let internet_rt = lab.runtime(&lab.internet);
    let (peers, ca_pem) = internet(&internet_rt);
    let edge = edge(&lab);
    let worker = lab.runtime(&lab.worker);

    // (a) HTTP and HTTPS with no proxy settings reach the origin, which
    // sees the fixed egress IP and never the worker.
    let plain = client(&ca_pem, None);
    let (status, body) = worker.run({
        let plain = plain.clone();
        async move {
            let response = plain
                .get("http://site.lab/hello")
                .send()
                .await
                .expect("http through the edge");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    assert_eq!(
        (status, body.as_str()),
        (200, format!("hello from {SITE_IP}:80").as_str())
    );
    // Its own client: the tunnel's line is written when the connection
    // closes, which is when the client (and its pool) goes.
    let (status, body) = worker.run({
        let tls = client(&ca_pem, None);
        async move {
            let response = tls
                .get("https://site.lab/")
                .send()
                .await
                .expect("https through the edge");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    assert_eq!(
        (status, body.as_str()),
        (200, format!("hello from {SITE_IP}:443").as_str())
    );
    let seen: Vec<IpAddr> = peers.lock().unwrap().iter().map(|(_, ip)| *ip).collect();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|ip| *ip == EGRESS_IP.parse::<IpAddr>().unwrap()),
        "the origins saw {seen:?}, not only the egress IP"
    );
    for (method, port) in [("GET", 80), ("CONNECT", 443)] {
        let line = wait_line(&edge.gateway, |l| {
            l["request"]["method"] == method && l["original_destination"] == format!("{SITE_IP}:{port}")
        });
        assert_eq!(line["agent_id"], AGENT.0);
        assert_eq!(line["mode"], "transparent");
        assert_eq!(line["client_ip"], WORKER_IP);
        assert_eq!(line["decision"], "allow");
    }

    // (b) An unlisted address: on a port the edge does not redirect, no
    // answer at all (the client times out); on a redirected one, refused.
    let timed_out = worker.run(async {
        let attempt = tokio::net::TcpStream::connect((UNLISTED_IP, 8080));
        tokio::time::timeout(Duration::from_secs(2), attempt).await.is_err()
    });
    assert!(timed_out, "a direct connection to an unlisted address got an answer");
    let refused = worker.run({
        let plain = plain.clone();
        async move {
            let response = plain.get(format!("http://{UNLISTED_IP}/data")).send().await.unwrap();
            response.status().as_u16()
        }
    });
    assert_eq!(refused, 403);
    assert!(
        peers
            .lock()
            .unwrap()
            .iter()
            .all(|(origin, _)| origin.ip().to_string() != UNLISTED_IP),
        "the unlisted address was reached"
    );

    // ... and through TLS with no server name: nothing to decide on.
    let no_sni = worker.run({
        let plain = plain.clone();
        async move { plain.get(format!("https://{UNLISTED_IP}/")).send().await.is_err() }
    });
    assert!(no_sni, "a TLS connection without SNI got an answer");

    // Bad input on redirected connections: each gets a clear refusal and
    // an audit line, never a crash.
    let answers = worker.run(async {
        let mut answers = Vec::new();
        for (port, bytes) in [
            // HTTP without a Host header.
            (80, &b"GET /no-host HTTP/1.0\r\n\r\n"[..]),
            // A TLS record that is not a ClientHello.
            (443, &[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00][..]),
            // Neither TLS nor HTTP.
            (443, &b"SSH-2.0-OpenSSH_9.2\r\n"[..]),
            // Nothing at all, until the header timeout (2 s here).
            (80, &b""[..]),
        ] {
            let mut stream = tokio::net::TcpStream::connect((SITE_IP, port)).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, bytes).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
            )
            .await;
            assert!(read.is_ok(), "the gateway kept a bad connection open: {bytes:?}");
            answers.push(String::from_utf8_lossy(&answer).to_string());
        }
        answers
    });
    assert!(
        answers[0].starts_with("HTTP/1.0 400") && answers[0].contains("missing_host"),
        "{}",
        answers[0]
    );
    for reason in [
        "missing_host",
        "malformed_client_hello",
        "protocol_not_allowed",
        "header_timeout",
        "missing_sni",
    ] {
        let line = wait_line(&edge.gateway, |l| l["reason"] == reason);
        assert_eq!(line["agent_id"], AGENT.0, "{line}");
        assert_eq!(line["client_ip"], WORKER_IP, "{line}");
    }

    // (d) The explicit proxy still works from the worker, for its agent.
    let proxied = client(&ca_pem, Some(&format!("http://{EDGE_IP}:3128")));
    let status = worker.run(async move {
        proxied
            .get("http://site.lab/hello")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);

    // ... and the worker's key is useless from any other address.
    let elsewhere = lab.runtime(&lab.edge);
    let stolen = client(&ca_pem, Some(&format!("http://{EDGE_IP}:3128")));
    let status = elsewhere.run(async move {
        stolen
            .get("http://site.lab/hello")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 403);

    // (e) Domain fronting: an allowed name sent to another address.
    let fronted = worker.run({
        let plain = plain.clone();
        let other: SocketAddr = format!("{OTHER_IP}:443").parse().unwrap();
        async move {
            let fronting = reqwest::Client::builder()
                .no_proxy()
                .resolve("site.lab", other)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            drop(plain);
            fronting.get("https://site.lab/").send().await.is_err()
        }
    });
    assert!(fronted, "a fronted TLS connection got through");
    assert!(
        peers
            .lock()
            .unwrap()
            .iter()
            .all(|(origin, _)| origin.to_string() != format!("{OTHER_IP}:443")),
        "the fronted connection reached its address"
    );

    // (c) DNS: allowlisted names resolve, others are NXDOMAIN, and an
    // exfiltration-shaped name raises an alert.
    assert_eq!(
        worker.run(resolve_owned("site.lab")),
        (0, Some(SITE_IP.parse().unwrap()))
    );
    assert_eq!(worker.run(resolve_owned("unlisted.example")).0, 3, "NXDOMAIN");
    let exfil = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpjqwezdfmzta.unlisted.example";
    assert_eq!(worker.run(resolve_owned(exfil)).0, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dns_lines = loop {
        let dns_lines = lines(&edge.dns_audit);
        let flagged = dns_lines
            .iter()
            .any(|l| l["qname"].as_str().is_some_and(|q| q.contains("unlisted.example")) && l["alert"] == true);
        if flagged {
            break dns_lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no alert for the exfiltration-shaped name: {dns_lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(dns_lines.iter().all(|l| l["agent_id"] == AGENT.0), "{dns_lines:#?}");

    // (f) A job the scheduler runs inside the worker, with no gateway
    // configured, is scraped through the transparent path.
    scheduled_job_goes_through_the_edge(&lab, &edge, &worker);

    for reason in ["destination_mismatch", "source_mismatch"] {
        wait_line(&edge.gateway, |l| l["reason"] == reason && l["agent_id"] == AGENT.0);
    }
    wait_line(&edge.gateway, |l| {
        l["decision"] == "deny" && l["original_destination"] == format!("{UNLISTED_IP}:80")
    });
    drop(edge.dns);
}

fn scheduled_job_goes_through_the_edge(lab: &Lab, edge: &Edge, worker: &NsRuntime) {
    let Some(nats_binary) = support::nats::binary() else {
        support::skip("(f) needs nats-server (./deploy/local/prereqs.sh nats)");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let nats = support::Killed(
        lab.exec(&lab.worker, &nats_binary)
            .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listening = worker.run(async {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", 4222)).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(listening, "nats-server did not start in the worker namespace");
    let log = store.path().join("scheduler.log");
    let scheduler = support::Killed(
        lab.exec(&lab.worker, support::clawgress_bin())
            .args([
                "scheduler",
                "--nats",
                "nats://127.0.0.1:4222",
                "--gateway",
                "none",
                "--chromium",
                "none",
            ])
            .env("CLAWGRESS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let submitted = lab
        .exec(&lab.worker, support::clawgress_bin())
        .args([
            "submit",
            "--nats",
            "nats://127.0.0.1:4222",
            "--url",
            "http://site.lab/scheduled",
        ])
        .args(["--agent", AGENT.0, "--wait", "--wait-secs", "60", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no result: {}\n{}\nscheduler log:\n{}",
                stdout,
                String::from_utf8_lossy(&submitted.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert_eq!(result["status"], "ok", "{result}");
    let audit = edge.gateway.audit_lines();
    assert!(
        audit.iter().any(|l| l["mode"] == "transparent"
            && l["request"]["path"] == "/scheduled"
            && l["agent_id"] == AGENT.0
            && l["request"]["method"] == "GET"),
        "{audit:#?}"
    );
    drop((scheduler, nats));
}

/// `resolve` with an owned name, for the namespace runtime.
fn resolve_owned(name: &str) -> impl Future<Output = (u8, Option<IpAddr>)> + Send + 'static {
    let name = name.to_string();
    async move { resolve(&name).await }
}
