use std::sync::Arc;

use super::client_hello::{MAX_HELLO_BYTES, Peek, peek};

/// The first flight of a real rustls client for `name`.
fn real_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    client.write_tls(&mut out).unwrap();
    out
}

#[test]
fn the_server_name_is_read_from_a_real_client_hello() {
    let hello = real_hello("API.Example.COM");
    assert_eq!(
        peek(&hello),
        Peek::ClientHello {
            sni: Some("api.example.com".into())
        }
    );
    // An IP literal sends no SNI.
    assert_eq!(peek(&real_hello("127.0.0.1")), Peek::ClientHello { sni: None });
}

#[test]
fn a_partial_hello_asks_for_more_and_other_protocols_are_not_tls() {
    let hello = real_hello("example.com");
    for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
        assert_eq!(peek(&hello[..cut]), Peek::Incomplete, "cut at {cut}");
    }
    assert_eq!(peek(b"SSH-2.0-OpenSSH_9.6\r\n"), Peek::NotTls);
    assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
    assert_eq!(peek(&[0x16, 0x02, 0x00, 0x00, 0x10]), Peek::NotTls);
}

#[test]
fn malformed_hellos_are_refused_not_trusted() {
    let hello = real_hello("example.com");
    // Not a ClientHello handshake message.
    let mut server_hello = hello.clone();
    server_hello[5] = 2;
    assert_eq!(peek(&server_hello), Peek::Malformed);
    // A handshake length that runs past the record.
    let mut long = hello.clone();
    long[8] = 0xff;
    assert_eq!(peek(&long), Peek::Malformed);
    // A zero-length record.
    assert_eq!(peek(&[0x16, 0x03, 0x01, 0x00, 0x00]), Peek::Malformed);
}

#[test]
fn mutated_hellos_never_panic() {
    // Seeded xorshift: reproducible without a fuzzing dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = real_hello("fuzz.example.net");
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..(next() % 6 + 1) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        let cut = (next() as usize) % (bytes.len() + 1);
        bytes.truncate(cut.max(1));
        assert!(bytes.len() <= MAX_HELLO_BYTES);
        let _ = peek(&bytes);
    }
}
