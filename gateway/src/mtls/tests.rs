//! The mTLS listener's files, verifier and certificate reading, against a
//! real (rcgen) PKI.

mod pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};

use super::verifier::{RecordingVerifier, problem_of};
use super::{ClientCertificate, MtlsAcceptor, MtlsConfig, MtlsPeer, files};
use crate::identity::CertificateProblem;
use pki::{Ca, ClientSpec, Leaf};

const SPIFFE: &str = "spiffe://cluster.local/ns/crawl/sa/scraper";

struct World {
    dir: tempfile::TempDir,
    ca: Ca,
    by_spiffe: Leaf,
    by_cn: Leaf,
    expired: Leaf,
    revoked: Leaf,
    stranger: Leaf,
    config: MtlsConfig,
}

fn spec<'a>(common_name: &'a str, spiffe_id: Option<&'a str>, serial: u64) -> ClientSpec<'a> {
    ClientSpec {
        common_name,
        spiffe_id,
        serial,
        expired: false,
    }
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("clawgress test client CA");
    let server_ca = Ca::new("clawgress test server CA");
    let server = server_ca.server(&["localhost"]);
    let by_spiffe = ca.client(spec("workload", Some(SPIFFE), 11));
    let by_cn = ca.client(spec("scraper-002", None, 12));
    let expired = ca.client(ClientSpec {
        expired: true,
        ..spec("scraper-003", None, 13)
    });
    let revoked = ca.client(spec("scraper-004", None, 14));
    let stranger = Ca::new("somebody else's CA").client(spec("scraper-002", None, 15));
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let key = write("server-key.pem", &server.key_pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = MtlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        client_ca: write("client-ca.pem", &ca.pem()),
        crl: Some(write("crl.pem", &ca.crl(&[14]))),
        server_cert: Some(write("server.pem", &server.cert_pem)),
        server_key: Some(key),
    };
    World {
        dir,
        ca,
        by_spiffe,
        by_cn,
        expired,
        revoked,
        stranger,
        config,
    }
}

fn der(leaf: &Leaf) -> CertificateDer<'static> {
    CertificateDer::from(leaf.der.clone())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn check(config: &MtlsConfig, leaf: &Leaf) -> Result<(), CertificateProblem> {
    let loaded = files::load(config, &provider()).unwrap_or_else(|e| panic!("{e}"));
    loaded
        .verifier
        .verify_client_cert(&der(leaf), &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| problem_of(&e).unwrap_or_else(|| panic!("not a certificate problem: {e}")))
}

#[test]
fn valid_certificates_pass_and_the_others_are_refused_for_what_they_are() {
    let w = world();
    assert_eq!(check(&w.config, &w.by_spiffe), Ok(()));
    assert_eq!(check(&w.config, &w.by_cn), Ok(()));
    assert_eq!(check(&w.config, &w.expired), Err(CertificateProblem::Expired));
    assert_eq!(check(&w.config, &w.revoked), Err(CertificateProblem::Revoked));
    assert_eq!(check(&w.config, &w.stranger), Err(CertificateProblem::Untrusted));
    // Without a CRL nothing is revoked.
    let no_crl = MtlsConfig {
        crl: None,
        ..w.config.clone()
    };
    assert_eq!(check(&no_crl, &w.revoked), Ok(()));
    assert_eq!(
        problem_of(&rustls::Error::NoCertificatesPresented),
        Some(CertificateProblem::Missing)
    );
    assert_eq!(
        problem_of(&rustls::Error::DecryptError),
        None,
        "not about the certificate"
    );
}

#[test]
fn the_recording_verifier_keeps_the_refused_certificate_and_the_error() {
    let w = world();
    let loaded = files::load(&w.config, &provider()).unwrap();
    let recording = RecordingVerifier::new(loaded.verifier);
    use rustls::server::danger::ClientCertVerifier as _;
    assert!(recording.client_auth_mandatory(), "no certificate, no service");
    assert!(
        recording
            .verify_client_cert(&der(&w.by_cn), &[], UnixTime::now())
            .is_ok()
    );
    assert!(recording.refused().is_none());
    assert!(
        recording
            .verify_client_cert(&der(&w.revoked), &[], UnixTime::now())
            .is_err()
    );
    let (certificate, error) = recording.refused().expect("kept");
    assert_eq!(certificate.as_ref(), w.revoked.der.as_slice());
    assert_eq!(problem_of(&error), Some(CertificateProblem::Revoked));
}

#[test]
fn a_certificate_says_its_spiffe_id_cn_and_serial_and_nothing_secret() {
    let w = world();
    let spiffe = ClientCertificate::parse(&der(&w.by_spiffe)).expect("parses");
    assert_eq!(spiffe.names.spiffe_ids, vec![SPIFFE.to_string()]);
    assert_eq!(spiffe.record.spiffe_id.as_deref(), Some(SPIFFE));
    assert_eq!(spiffe.record.serial, format!("{:02X}", 11u64));
    assert_eq!(spiffe.record.issuer, "CN=clawgress test client CA");
    let cn = ClientCertificate::parse(&der(&w.by_cn)).expect("parses");
    assert!(cn.names.spiffe_ids.is_empty());
    assert_eq!(cn.names.common_name.as_deref(), Some("scraper-002"));
    let json = serde_json::to_string(&cn.record).unwrap();
    assert!(json.contains("\"subject\":\"CN=scraper-002\""), "{json}");
    assert!(!json.contains("PRIVATE") && !json.contains("BEGIN"), "{json}");
    assert!(ClientCertificate::parse(&CertificateDer::from(b"garbage".to_vec())).is_none());
}

fn load_error(config: &MtlsConfig) -> String {
    match files::load(config, &provider()) {
        Ok(_) => panic!("expected an error"),
        Err(error) => error,
    }
}

#[test]
fn broken_files_are_refused_with_the_flag_the_file_and_the_fix() {
    let w = world();
    let at = |name: &str, text: &str| {
        let path = w.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let garbage = MtlsConfig {
        crl: Some(at(
            "garbage.pem",
            "-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n",
        )),
        ..w.config.clone()
    };
    assert!(load_error(&garbage).starts_with("--crl "), "{}", load_error(&garbage));
    let empty = MtlsConfig {
        crl: Some(at("empty.pem", "")),
        ..w.config.clone()
    };
    assert!(
        load_error(&empty).contains("openssl ca -gencrl"),
        "{}",
        load_error(&empty)
    );
    let foreign = MtlsConfig {
        crl: Some(at("foreign.pem", &Ca::new("another CA").crl(&[14]))),
        ..w.config.clone()
    };
    let message = load_error(&foreign);
    assert!(
        message.contains("CN=another CA") && message.contains("no CA in --client-ca"),
        "{message}"
    );
    let no_ca = MtlsConfig {
        client_ca: w.dir.path().join("missing.pem"),
        ..w.config.clone()
    };
    assert!(load_error(&no_ca).starts_with("--client-ca "), "{}", load_error(&no_ca));
    let other_key = MtlsConfig {
        server_key: Some(at("other-key.pem", &w.by_cn.key_pem)),
        ..w.config.clone()
    };
    let message = load_error(&other_key);
    assert!(message.contains("does not go with --server-cert"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "never the key: {message}");
    let half = MtlsConfig {
        server_key: None,
        ..w.config.clone()
    };
    assert!(load_error(&half).contains("go together"), "{}", load_error(&half));
}

fn acceptor(config: MtlsConfig) -> Arc<MtlsAcceptor> {
    let tls = Arc::new(crate::tls::TlsKit::new(None, None).expect("tls kit"));
    Arc::new(MtlsAcceptor::load(config, tls, &prometheus::Registry::new()).expect("acceptor"))
}

fn peer(acceptor: &Arc<MtlsAcceptor>, leaf: &Leaf) -> MtlsPeer {
    let certificate = ClientCertificate::parse(&der(leaf)).expect("parses");
    MtlsPeer::new(
        certificate,
        vec![der(leaf)],
        acceptor.material().generation,
        acceptor.clone(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_crl_reload_reaches_open_connections_and_a_broken_one_changes_nothing() {
    let w = world();
    let crl = w.config.crl.clone().unwrap();
    let acceptor = acceptor(w.config.clone());
    let connected = peer(&acceptor, &w.by_cn);
    assert_eq!(connected.revalidate(), Ok(()));
    assert!(acceptor.handshake("127.0.0.1".parse().unwrap()).is_ok());

    // A broken CRL: refused, the old one stays, nothing is re-checked.
    write(&crl, "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    assert!(!acceptor.reload());
    assert_eq!(acceptor.material().generation, 0);
    assert_eq!(connected.revalidate(), Ok(()));

    // The CRL now revokes the connected certificate too.
    write(&crl, &w.ca.crl(&[14, 12]));
    assert!(acceptor.reload());
    assert_eq!(acceptor.material().generation, 1);
    assert_eq!(connected.revalidate(), Err(CertificateProblem::Revoked));
    assert!(connected.is_refused(), "the connection is closed after its answer");
    let other = peer(&acceptor, &w.by_spiffe);
    assert_eq!(other.revalidate(), Ok(()), "verified under the new generation");
}

#[test]
fn without_server_files_the_listener_needs_the_interception_ca() {
    let w = world();
    let config = MtlsConfig {
        server_cert: None,
        server_key: None,
        ..w.config.clone()
    };
    let tls = Arc::new(crate::tls::TlsKit::new(None, None).expect("tls kit"));
    let error = MtlsAcceptor::load(config, tls, &prometheus::Registry::new()).unwrap_err();
    assert!(
        error.to_string().contains("--server-cert") && error.to_string().contains("clawgress ca init"),
        "{error}"
    );
}
