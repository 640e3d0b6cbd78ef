//! TLS through the gateway: interception with the gateway's own CA (and DLP
//! inside it), upstream certificates checked and pinned, and domain fronting
//! refused on both the intercept and the passthrough paths. Every origin is
//! a real rustls server on 127.0.0.1 with its own test CA.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::*;
use support::tls::{Cert, HttpsOrigin, https_origin};

struct Tls {
    gw: GatewayProc,
    /// The gateway's interception CA, as an agent would trust it.
    gateway_ca: CertificateDer<'static>,
    intercepted: HttpsOrigin,
    pinned: HttpsOrigin,
    expired: HttpsOrigin,
    self_signed: HttpsOrigin,
    passthrough: HttpsOrigin,
    originated: HttpsOrigin,
    _dns: TestDns,
    _dir: tempfile::TempDir,
}

async fn tls_world() -> Tls {
    let intercepted = https_origin("itls.test", Cert::Valid).await;
    let pinned = https_origin("pinned.test", Cert::Valid).await;
    let expired = https_origin("old.test", Cert::Expired).await;
    let self_signed = https_origin("self.test", Cert::SelfSigned).await;
    let passthrough = https_origin("pass.test", Cert::Valid).await;
    let originated = https_origin("orig.test", Cert::Valid).await;
    let dns = TestDns::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();

    // The CA is made the way an operator makes it.
    let ca_dir = dir.path().join("ca");
    let init = std::process::Command::new(support::clawgress_bin())
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let again = std::process::Command::new(support::clawgress_bin())
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing CA must not be replaced silently");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let export = std::process::Command::new(support::clawgress_bin())
        .args(["ca", "export", "--dir"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(export.status.success());
    let gateway_ca = CertificateDer::from_pem_slice(&export.stdout).expect("ca export prints a PEM certificate");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key must be private");
    }

    // The upstreams' test CAs are trusted through the bundle, as an
    // operator trusts a private CA.
    let bundle = dir.path().join("upstream-cas.pem");
    let pems: Vec<&str> = [&intercepted, &pinned, &expired, &self_signed, &passthrough, &originated]
        .iter()
        .map(|o| o.ca_pem.as_str())
        .collect();
    std::fs::write(&bundle, pems.join("\n")).unwrap();

    let rule = |name: &str, origin: &HttpsOrigin, mode: &str| {
        format!(
            "    - domain: \"{name}\"\n      ports: [{}]\n      protocols: [https]\n      tls: {mode}\n",
            origin.addr.port()
        )
    };
    let origination = format!(
        "    - domain: \"orig.test\"\n      ports: [{}]\n      protocols: [https]\n      tls_origination: true\n",
        originated.addr.port()
    );
    let policy = format!(
        "egress:\n  default_action: deny\n  logging: all_requests\n  monitoring: enabled\n\
         allowlist:\n  tls_sites:\n{origination}{}{}{}{}{}\
         tls:\n  pins:\n    - domain: itls.test\n      pins: [\"{}\"]\n    - domain: pinned.test\n      pins: [\"sha256/{}\"]\n\
         rate_limits:\n  per_agent: {{default: 100000/min, burst: 10000}}\n  per_project: {{default: 100000/min, burst: 10000}}\n\
         dns:\n  resolver: internal\n  nameservers: [\"{}\"]\n  static_hosts:\n    itls.test: 127.0.0.1\n    pinned.test: 127.0.0.1\n    old.test: 127.0.0.1\n    self.test: 127.0.0.1\n    pass.test: 127.0.0.1\n    orig.test: 127.0.0.1\n",
        rule("itls.test", &intercepted, "intercept"),
        rule("pinned.test", &pinned, "intercept"),
        rule("old.test", &expired, "intercept"),
        rule("self.test", &self_signed, "intercept"),
        rule("pass.test", &passthrough, "passthrough"),
        intercepted.pin,
        "A".repeat(43) + "=",
        dns.addr,
    );
    let gw = GatewayProc::start_with(
        &policy,
        &agents_yaml(),
        &[
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--upstream-ca-bundle",
            bundle.to_str().unwrap(),
        ],
    );
    Tls {
        gw,
        gateway_ca,
        intercepted,
        pinned,
        expired,
        self_signed,
        passthrough,
        originated,
        _dns: dns,
        _dir: dir,
    }
}

/// Opens a tunnel; returns the stream when the gateway answered 200, or its
/// refusal.
async fn tunnel(gw: &GatewayProc, authority: &str) -> Result<TcpStream, raw::RawResponse> {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(format!("{}\r\n\r\n", connect(authority, Some(SCRAPER))).as_bytes())
        .await
        .unwrap();
    let response = raw::read_response(&mut stream).await;
    if response.status == 200 {
        Ok(stream)
    } else {
        Err(response)
    }
}

/// One HTTP/1.1 exchange over TLS that trusts only `ca`, with SNI `sni`.
async fn https_exchange(
    stream: TcpStream,
    sni: &str,
    ca: &CertificateDer<'static>,
    request: &[u8],
) -> std::io::Result<raw::RawResponse> {
    let mut tls = support::tls::connect(stream, sni, ca).await?;
    tls.write_all(request).await?;
    Ok(raw::read_response(&mut tls).await)
}

#[tokio::test]
async fn intercepted_requests_are_inspected_and_recorded_one_by_one() {
    let t = tls_world().await;
    let authority = format!("itls.test:{}", t.intercepted.addr.port());

    // The agent trusts the gateway's CA and talks to "itls.test" through it.
    let stream = tunnel(&t.gw, &authority).await.expect("tunnel");
    let mut tls = support::tls::connect(stream, "itls.test", &t.gateway_ca)
        .await
        .expect("the gateway's leaf for itls.test verifies against its CA");
    tls.write_all(b"GET /headers?page=2 HTTP/1.1\r\nHost: itls.test\r\n\r\n")
        .await
        .unwrap();
    let first = raw::read_response(&mut tls).await;
    assert_eq!(first.status, 200);
    let seen = first.json();
    assert_eq!(seen["_request_target"], "/headers?page=2");
    assert!(seen["via"].as_str().unwrap().contains("clawgress"));

    // Same tunnel, second request: a secret in the body is refused by the
    // gateway, inside the TLS session, and never reaches the origin.
    let before = t.intercepted.requests.load(std::sync::atomic::Ordering::SeqCst);
    let body = r#"{"messages":[{"role":"user","content":"key AKIAIOSFODNN7EXAMPLE"}]}"#;
    tls.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: itls.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let refused = raw::read_response(&mut tls).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.reason(), "dlp_blocked");
    assert_eq!(t.intercepted.requests.load(std::sync::atomic::Ordering::SeqCst), before);

    // A request for another host inside this tunnel is refused.
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: pinned.test\r\n\r\n")
        .await
        .unwrap();
    let misdirected = raw::read_response(&mut tls).await;
    assert_eq!(misdirected.status, 421);
    assert_eq!(misdirected.reason(), "host_mismatch");
    drop(tls);

    // Each request has its own line, with its path and the upstream's
    // verified certificate.
    let line = t.gw.audit_for(first.header("x-request-id").unwrap()).await;
    assert_eq!(line["request"]["method"], "GET");
    assert_eq!(line["request"]["path"], "/headers");
    assert_eq!(line["protocol"], "https");
    assert_eq!(line["tunnel"], false);
    assert_eq!(line["tls"]["mode"], "intercept");
    assert_eq!(line["tls"]["sni"], "itls.test");
    assert_eq!(line["tls"]["upstream_certificate"]["spki_sha256"], t.intercepted.pin);
    assert!(line["tls"]["upstream_version"].as_str().unwrap().starts_with("TLS"));
    let blocked = t.gw.audit_for(refused.header("x-request-id").unwrap()).await;
    assert_eq!(blocked["dlp_matches"][0]["type"], "aws_access_key");
    assert_eq!(blocked["alert"], true);
    let tunnel_line =
        t.gw.wait_audit(|l| l["request"]["method"] == "CONNECT" && l["request"]["domain"] == "itls.test")
            .await;
    assert_eq!(tunnel_line["tls"]["mode"], "intercept");
}

#[tokio::test]
async fn bad_upstream_certificates_are_refused_with_the_certificate_on_record() {
    let t = tls_world().await;
    let cases = [
        (
            &t.pinned,
            "pinned.test",
            "upstream_certificate_pin_mismatch",
            "tls.pins",
        ),
        (
            &t.expired,
            "old.test",
            "upstream_certificate_expired",
            "tls.verify_certificates",
        ),
        (
            &t.self_signed,
            "self.test",
            "upstream_certificate_untrusted",
            "tls.verify_certificates",
        ),
    ];
    for (origin, name, reason, policy_id) in cases {
        let refused = tunnel(&t.gw, &format!("{name}:{}", origin.addr.port()))
            .await
            .expect_err("a bad certificate must not open a tunnel");
        assert_eq!(refused.status, 502, "{name}");
        assert_eq!(
            refused.reason(),
            reason,
            "{name}: {}",
            String::from_utf8_lossy(&refused.body)
        );
        assert_eq!(refused.json()["policy_id"], policy_id);
        assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0, "{name}");
        let line = t.gw.audit_for(refused.header("x-request-id").unwrap()).await;
        assert_eq!(line["type"], "egress_denied");
        assert_eq!(line["alert"], true, "a certificate failure raises an alert: {line}");
        let cert = &line["tls"]["upstream_certificate"];
        assert_eq!(cert["spki_sha256"], origin.pin, "{line}");
        assert!(cert["subject"].as_str().is_some() && cert["not_after"].as_str().is_some());
        assert!(line["tls"]["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let line =
        t.gw.wait_audit(|l| l["reason"] == "upstream_certificate_untrusted")
            .await;
    assert_eq!(line["tls"]["upstream_certificate"]["self_signed"], true);
}

#[tokio::test]
async fn domain_fronting_is_refused_on_both_paths() {
    let t = tls_world().await;

    // Passthrough: the gateway peeks at the ClientHello without decrypting.
    // The matching name passes end to end, with the origin's own certificate.
    let pass = format!("pass.test:{}", t.passthrough.addr.port());
    let pass_ca = CertificateDer::from_pem_slice(t.passthrough.ca_pem.as_bytes()).unwrap();
    let stream = tunnel(&t.gw, &pass).await.expect("tunnel");
    let ok = https_exchange(
        stream,
        "pass.test",
        &pass_ca,
        b"GET /hello HTTP/1.1\r\nHost: pass.test\r\n\r\n",
    )
    .await
    .expect("TLS to the allowed name");
    assert_eq!(ok.status, 200);
    let line =
        t.gw.wait_audit(|l| l["request"]["method"] == "CONNECT" && l["tls"]["sni"] == "pass.test")
            .await;
    assert_eq!(line["tls"]["mode"], "passthrough");

    // Another name in the SNI: the tunnel is closed before a byte leaves.
    let before = t.passthrough.requests.load(std::sync::atomic::Ordering::SeqCst);
    let stream = tunnel(&t.gw, &pass).await.expect("tunnel");
    let fronted = https_exchange(
        stream,
        "evil.test",
        &pass_ca,
        b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    )
    .await;
    assert!(fronted.is_err(), "a fronted handshake must fail");
    let line = t.gw.wait_audit(|l| l["reason"] == "sni_mismatch").await;
    assert_eq!(line["alert"], true);
    assert_eq!(line["tls"]["sni"], "evil.test");
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(t.passthrough.requests.load(std::sync::atomic::Ordering::SeqCst), before);

    // Intercept: the same check on the ClientHello the gateway terminates.
    let stream = tunnel(&t.gw, &format!("itls.test:{}", t.intercepted.addr.port()))
        .await
        .expect("tunnel");
    let fronted = https_exchange(
        stream,
        "evil.test",
        &t.gateway_ca,
        b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    )
    .await;
    assert!(fronted.is_err());
    t.gw.wait_audit(|l| l["reason"] == "sni_mismatch" && l["request"]["domain"] == "itls.test")
        .await;
}

#[tokio::test]
async fn an_intercept_rule_without_a_ca_stops_the_gateway_at_start() {
    let dns = TestDns::start(&[]).await;
    let policy = format!(
        "egress:\n  default_action: deny\n  logging: all_requests\n  monitoring: enabled\n\
         allowlist:\n  ai:\n    - domain: api.openai.com\n      ports: [443]\n      protocols: [https]\n      tls: intercept\n\
         dns:\n  resolver: internal\n  nameservers: [\"{}\"]\n",
        dns.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let (policy_path, agents_path) = (dir.path().join("p.yaml"), dir.path().join("a.yaml"));
    std::fs::write(&policy_path, policy).unwrap();
    std::fs::write(&agents_path, agents_yaml()).unwrap();
    let out = std::process::Command::new(support::clawgress_bin())
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--policy",
        ])
        .arg(&policy_path)
        .arg("--agents")
        .arg(&agents_path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.yaml:7"), "{err}");
    assert!(err.contains("clawgress ca init"), "{err}");
}

#[tokio::test]
async fn plain_http_is_sent_over_verified_tls_where_the_rule_originates_it() {
    let t = tls_world().await;
    let port = t.originated.addr.port();
    // The agent speaks plain HTTP; the rule allows only https, with
    // tls_origination: the gateway opens verified TLS itself.
    let served = raw::send(
        t.gw.proxy,
        &get(&format!("http://orig.test:{port}/hello"), Some(SCRAPER)),
        b"",
    )
    .await;
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    assert_eq!(served.body, b"hello from upstream");
    assert_eq!(t.originated.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let line = t.gw.audit_for(served.header("x-request-id").unwrap()).await;
    assert_eq!(line["protocol"], "https");
    assert_eq!(line["tls"]["mode"], "originate");
    assert_eq!(line["tls"]["upstream_certificate"]["spki_sha256"], t.originated.pin);

    // A rule without tls_origination still refuses plain HTTP.
    let refused = raw::send(
        t.gw.proxy,
        &get(
            &format!("http://pass.test:{}/hello", t.passthrough.addr.port()),
            Some(SCRAPER),
        ),
        b"",
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.reason(), "protocol_not_allowed");
}
