use super::*;

#[test]
fn openings_are_told_apart_from_their_first_bytes() {
    assert_eq!(opening(b""), Opening::Incomplete);
    assert_eq!(opening(b"GET / HTTP/1.1\r\n"), Opening::Http);
    assert_eq!(opening(b"OPTIONS "), Opening::Http);
    assert_eq!(opening(b"GE"), Opening::Incomplete);
    assert_eq!(opening(b"SSH-2.0-OpenSSH_9.2\r\n"), Opening::Other);
    assert_eq!(opening(b"get / HTTP/1.1\r\n"), Opening::Other);
    assert_eq!(opening(b" GET"), Opening::Other);
    assert_eq!(opening(&[b'A'; 40]), Opening::Other);
    // A TLS record header that promises more than has come.
    assert_eq!(opening(&[0x16, 0x03, 0x01, 0x02, 0x00]), Opening::Incomplete);
    // A handshake record that is not a ClientHello.
    assert_eq!(
        opening(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
        Opening::MalformedTls
    );
    // A hello that never completes within the largest record.
    let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    huge.resize(client_hello::MAX_HELLO_BYTES, 0x01);
    assert_eq!(opening(&huge), Opening::MalformedTls);
}

#[test]
fn host_headers_give_their_host() {
    assert_eq!(host_of("example.test"), Some("example.test"));
    assert_eq!(host_of("example.test:8080"), Some("example.test"));
    assert_eq!(host_of("[::1]:80"), Some("[::1]"));
    assert_eq!(host_of("[::1]"), Some("[::1]"));
    assert_eq!(host_of("[::1"), None);
}

#[test]
fn random_first_bytes_never_panic_and_always_decide_within_the_cap() {
    let mut rng = crate::testing::Rng::new(0x7A_2A_5E);
    for _ in 0..20_000 {
        let len = rng.range(0, 600);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.range(0, 256) as u8).collect();
        if rng.range(0, 3) == 0 && !bytes.is_empty() {
            bytes[0] = 0x16;
        }
        let opened = opening(&bytes);
        if bytes.len() > MAX_METHOD && bytes.first() != Some(&0x16) {
            assert_ne!(opened, Opening::Incomplete, "{bytes:?}");
        }
    }
}

#[tokio::test]
async fn replayed_bytes_come_first_then_the_stream() {
    let (mut near, far) = tokio::io::duplex(64);
    let mut replayed = Replayed::new(b"hello ".to_vec(), far);
    tokio::io::AsyncWriteExt::write_all(&mut near, b"world").await.unwrap();
    drop(near);
    let mut all = String::new();
    replayed.read_to_string(&mut all).await.unwrap();
    assert_eq!(all, "hello world");
}
