//! The mTLS listener (`--listen-tls`) against the real binary: client
//! certificates name agents (SPIFFE ID or CN), bad certificates are refused
//! in the handshake and audited, a CRL reload revokes without a restart, and
//! the http worker fetches through it with its client certificate.

#[path = "../../gateway/src/mtls/tests/pki.rs"]
mod pki;

use std::path::PathBuf;
use std::sync::Arc;

use clawgress_workers::credentials::{ClientIdentity, Credentials};
use clawgress_workers::http::HttpFetcher;
use clawgress_workers::outcome::FetchError;
use pki::{Ca, ClientSpec, Leaf};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::*;

const SPIFFE_ID: &str = "spiffe://clawgress.test/ns/crawl/sa/scraper-001";
const CN_AGENT: &str = "scraper-002";

struct Mtls {
    gw: GatewayProc,
    addr: SocketAddr,
    ca: Ca,
    server_ca: Ca,
    crl: PathBuf,
    by_spiffe: Leaf,
    by_cn: Leaf,
    expired: Leaf,
    revoked: Leaf,
    stranger: Leaf,
    nobody: Leaf,
    origin: upstream::Origin,
    tls: support::tls::TlsOrigin,
    _dns: TestDns,
    _dir: tempfile::TempDir,
}

fn client<'a>(common_name: &'a str, spiffe_id: Option<&'a str>, serial: u64) -> ClientSpec<'a> {
    ClientSpec {
        common_name,
        spiffe_id,
        serial,
        expired: false,
    }
}

fn mtls_agents() -> String {
    format!(
        r#"agents:
  - id: {s}
    team: data
    project: crawl
    environment: dev
    role: scraper
    api_key_sha256: "{sk}"
    spiffe_ids: ["{SPIFFE_ID}"]
  - id: {CN_AGENT}
    team: data
    project: crawl
    environment: dev
    role: scraper
  - id: {a}
    team: builders
    project: assistant
    environment: prod
    role: ai-agent
    api_key_sha256: "{ak}"
"#,
        s = SCRAPER.0,
        sk = sha256_hex(SCRAPER.1),
        a = AI_AGENT.0,
        ak = sha256_hex(AI_AGENT.1),
    )
}

async fn start() -> Mtls {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("clawgress e2e client CA");
    let server_ca = Ca::new("clawgress e2e server CA");
    let server = server_ca.server(&["localhost", "127.0.0.1"]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let client_ca = write("client-ca.pem", &ca.pem());
    let crl = write("client-ca.crl", &ca.crl(&[24]));
    let server_cert = write("server.pem", &server.cert_pem);
    let server_key = write("server-key.pem", &server.key_pem);
    let origin = upstream::origin().await;
    let tls = support::tls::origin("tls.test").await;
    let echo = upstream::half_close_echo().await;
    let dns = TestDns::start(&[]).await;
    let policy = policy_yaml(origin.addr.port(), tls.addr.port(), echo.port(), dns.addr, "enforce");
    // A free port for the listener: the start lines the harness reads name
    // the proxy and admin ports only.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let flags = [
        "--listen-tls".to_string(),
        addr.to_string(),
        "--client-ca".into(),
        client_ca.display().to_string(),
        "--crl".into(),
        crl.display().to_string(),
        "--server-cert".into(),
        server_cert.display().to_string(),
        "--server-key".into(),
        server_key.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gw = GatewayProc::start_with(&policy, &mtls_agents(), &flags);
    let stranger_ca = Ca::new("somebody else's CA");
    Mtls {
        by_spiffe: ca.client(client("workload", Some(SPIFFE_ID), 21)),
        by_cn: ca.client(client(CN_AGENT, None, 22)),
        expired: ca.client(ClientSpec {
            expired: true,
            ..client(CN_AGENT, None, 23)
        }),
        revoked: ca.client(client(CN_AGENT, None, 24)),
        stranger: stranger_ca.client(client(CN_AGENT, None, 25)),
        nobody: ca.client(client("nobody", None, 26)),
        gw,
        addr,
        ca,
        server_ca,
        crl,
        origin,
        tls,
        _dns: dns,
        _dir: dir,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client that trusts the server CA and presents `leaf`, if any.
async fn tls_connect(m: &Mtls, leaf: Option<&Leaf>) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(m.server_ca.pem().as_bytes()).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(leaf.der.clone())],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(m.addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One request on a new connection: the answer, or why there was none.
async fn ask(m: &Mtls, leaf: Option<&Leaf>, head: &str) -> Result<raw::RawResponse, String> {
    let mut stream = tls_connect(m, leaf).await.map_err(|e| format!("handshake: {e}"))?;
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // With TLS 1.3 the client finishes first; a refusal arrives as an alert
    // on the first read.
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    if bytes.windows(4).any(|w| w == b"\r\n\r\n") && complete(&bytes) {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no answer within 10 s".to_string())?;
    read.map_err(|e| format!("read: {e}"))?;
    if bytes.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(raw::read_response(&mut bytes.as_slice()).await)
}

/// Whether the bytes hold a whole response (Content-Length bodies).
fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

fn page(m: &Mtls) -> String {
    get(&format!("http://site.test:{}/page", m.origin.addr.port()), None)
}

#[tokio::test]
async fn valid_certificates_get_through_as_their_agents() {
    let m = start().await;
    let answer = ask(&m, Some(&m.by_spiffe), &page(&m)).await.expect("served");
    assert_eq!(answer.status, 200, "{}", m.gw.log());
    let line = m.gw.audit_for(answer.header("x-request-id").unwrap()).await;
    assert_eq!(line["agent_id"], SCRAPER.0, "the SPIFFE ID names the agent: {line}");
    assert_eq!(line["mode"], "mtls");
    assert_eq!(line["tls"]["client_certificate"]["spiffe_id"], SPIFFE_ID);
    assert_eq!(line["tls"]["client_certificate"]["serial"], format!("{:02X}", 21u64));

    let answer = ask(&m, Some(&m.by_cn), &page(&m)).await.expect("served");
    assert_eq!(answer.status, 200);
    let line = m.gw.audit_for(answer.header("x-request-id").unwrap()).await;
    assert_eq!(line["agent_id"], CN_AGENT, "the CN names the agent: {line}");
    assert_eq!(line["tls"]["client_certificate"]["common_name"], CN_AGENT);
    assert!(
        line["tls"].get("mode").is_none(),
        "no upstream TLS on a plain request: {line}"
    );

    // CONNECT works as on the explicit port; the line is a tunnel's.
    let authority = format!("tls.test:{}", m.tls.addr.port());
    let answer = ask(&m, Some(&m.by_cn), &connect(&authority, None))
        .await
        .expect("tunnel");
    assert_eq!(answer.status, 200);
    let line =
        m.gw.wait_audit(|l| l["request"]["method"] == "CONNECT" && l["mode"] == "mtls")
            .await;
    assert_eq!(
        (line["agent_id"].as_str(), line["tunnel"].as_bool()),
        (Some(CN_AGENT), Some(true))
    );

    // The certificate decides: a key of the same agent is accepted, one of
    // another agent is refused, and a trusted certificate naming nobody too.
    let same = ask(&m, Some(&m.by_spiffe), &page_with(&m, SCRAPER))
        .await
        .expect("answer");
    assert_eq!(same.status, 200);
    let other = ask(&m, Some(&m.by_cn), &page_with(&m, AI_AGENT)).await.expect("answer");
    assert_eq!(
        (other.status, other.reason()),
        (403, "certificate_mismatch".to_string())
    );
    let nobody = ask(&m, Some(&m.nobody), &page(&m)).await.expect("answer");
    assert_eq!(
        (nobody.status, nobody.reason()),
        (403, "unknown_certificate".to_string())
    );
    // The explicit port is unchanged.
    let explicit = raw::send(m.gw.proxy, &page_with(&m, SCRAPER), b"").await;
    assert_eq!(explicit.status, 200);
}

fn page_with(m: &Mtls, agent: (&str, &str)) -> String {
    get(&format!("http://site.test:{}/page", m.origin.addr.port()), Some(agent))
}

#[tokio::test]
async fn expired_revoked_unknown_and_missing_certificates_are_refused_in_the_handshake_and_audited() {
    let m = start().await;
    for (leaf, reason, serial) in [
        (Some(&m.expired), "client_certificate_expired", Some(23u64)),
        (Some(&m.revoked), "client_certificate_revoked", Some(24)),
        (Some(&m.stranger), "client_certificate_untrusted", Some(25)),
        (None, "client_certificate_missing", None),
    ] {
        let refused = ask(&m, leaf, &page(&m)).await;
        assert!(refused.is_err(), "{reason}: served {refused:?}");
        let line = m.gw.wait_audit(|l| l["reason"] == reason).await;
        assert_eq!(line["type"], "egress_denied", "{line}");
        assert_eq!(line["mode"], "mtls", "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
        assert_eq!(line["request"]["method"], "HANDSHAKE", "{line}");
        assert!(
            line.get("agent_id").is_none(),
            "an unverified certificate names no agent: {line}"
        );
        let certificate = &line["tls"]["client_certificate"];
        match serial {
            Some(serial) => {
                assert_eq!(certificate["serial"], format!("{serial:02X}"), "{line}");
                assert_eq!(certificate["subject"], format!("CN={CN_AGENT}"), "{line}");
            }
            None => assert!(certificate.get("serial").is_none(), "{line}"),
        }
        assert!(certificate["error"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
        assert!(!line.to_string().contains("PRIVATE KEY"), "{line}");
    }
    let metrics = m.gw.metrics().await;
    for reason in ["client_certificate_revoked", "client_certificate_untrusted"] {
        assert!(
            metrics.contains(&format!("mtls_handshakes_total{{result=\"{reason}\"}} 1")),
            "{reason}:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("mtls_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let revoked = m.gw.wait_audit(|l| l["reason"] == "client_certificate_revoked").await;
    assert_eq!(revoked["alert"], true, "a revoked certificate in use is worth a look");
}

#[tokio::test]
async fn a_crl_reload_revokes_a_certificate_that_worked_before_without_a_restart() {
    let m = start().await;
    // A kept-alive connection, and a new one: both served.
    let mut kept = tls_connect(&m, Some(&m.by_cn)).await.expect("handshake");
    kept.write_all(format!("{}\r\n\r\n", page(&m)).as_bytes())
        .await
        .unwrap();
    assert_eq!(raw::read_response(&mut kept).await.status, 200);
    assert_eq!(ask(&m, Some(&m.by_cn), &page(&m)).await.map(|a| a.status), Ok(200));

    // A broken CRL is refused; the one in force stays (24 still revoked,
    // 22 still served).
    std::fs::write(&m.crl, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    wait_until(|| m.gw.log().contains("mTLS reload refused")).await;
    assert!(ask(&m, Some(&m.revoked), &page(&m)).await.is_err());
    assert_eq!(ask(&m, Some(&m.by_cn), &page(&m)).await.map(|a| a.status), Ok(200));

    // The CRL now revokes serial 22 too: new connections are refused ...
    std::fs::write(&m.crl, m.ca.crl(&[24, 22])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ask(&m, Some(&m.by_cn), &page(&m)).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "never revoked; log:\n{}",
            m.gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and so is the next request on the connection opened before,
    // which is then closed.
    kept.write_all(format!("{}\r\n\r\n", page(&m)).as_bytes())
        .await
        .unwrap();
    let answer = raw::read_response(&mut kept).await;
    assert_eq!(
        (answer.status, answer.reason()),
        (403, "client_certificate_revoked".to_string())
    );
    assert_eq!(answer.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is closed after the refusal");
    let metrics = m.gw.metrics().await;
    assert!(metrics.contains("mtls_reloads_total{result=\"failure\"}"), "{metrics}");
    assert!(
        !metrics.contains("mtls_reloads_total{result=\"success\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_http_worker_fetches_through_the_tls_port_with_its_certificate() {
    let m = start().await;
    // The worker trusts the gateway's server CA, and (for the https page,
    // TLS inside the tunnel) the origin's test CA.
    let mut roots = m.server_ca.pem();
    roots.push_str(&der_to_pem(&m.tls.ca_der));
    let credentials = Credentials::default()
        .with_identity(
            CN_AGENT,
            ClientIdentity::from_pem(m.by_cn.cert_pem.as_bytes(), m.by_cn.key_pem.as_bytes()),
        )
        .with_gateway_ca(roots.as_bytes());
    let fetcher = HttpFetcher::new(format!("https://localhost:{}", m.addr.port()), credentials, 64 * 1024);
    assert!(fetcher.serves(CN_AGENT));
    assert!(!fetcher.serves(SCRAPER.0), "no certificate for it here");

    let page = fetcher
        .fetch(&job_for(
            CN_AGENT,
            format!("http://site.test:{}/page", m.origin.addr.port()),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", m.gw.log()));
    assert_eq!(page.status, 200);
    let line = m.gw.audit_for(page.request_id.as_deref().unwrap()).await;
    assert_eq!(
        (line["agent_id"].as_str(), line["mode"].as_str()),
        (Some(CN_AGENT), Some("mtls"))
    );

    // https: CONNECT over the mTLS connection, the origin's TLS inside it.
    let tls_page = fetcher
        .fetch(&job_for(CN_AGENT, format!("https://tls.test:{}/", m.tls.addr.port())))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", m.gw.log()));
    assert_eq!((tls_page.status, tls_page.body.as_str()), (200, "hello over tls"));

    // A refused https destination is a denial with the gateway's reason,
    // read over the mTLS listener.
    let denied = fetcher
        .fetch(&job_for(
            CN_AGENT,
            format!("https://unlisted.test:{}/", m.tls.addr.port()),
        ))
        .await;
    match denied {
        Err(FetchError::Denied { reason, .. }) => assert_eq!(reason, "domain_not_in_allowlist"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn job_for(agent: &str, url: String) -> clawgress_workers::job::ScrapeJob {
    use clawgress_workers::job::{FetchMode, RetryPolicy, ScrapeJob};
    ScrapeJob {
        id: "mtls-1".into(),
        agent: agent.into(),
        url,
        method: "GET".into(),
        headers: Default::default(),
        body: None,
        fetch: FetchMode::Http,
        extract: Default::default(),
        wait_for: None,
        screenshot: false,
        timeout: Duration::from_secs(10),
        priority: Default::default(),
        retry: RetryPolicy::default(),
    }
}

fn der_to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}
