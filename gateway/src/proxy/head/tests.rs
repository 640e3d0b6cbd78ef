use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::check::{Checked, Malformed, check};
use super::{Framing, Guarded, HeadGuard};

fn malformed(head: &[u8]) -> Malformed {
    match check(head) {
        Checked::Malformed(problem) => problem,
        other => panic!("{:?} passed: {other:?}", String::from_utf8_lossy(head)),
    }
}

fn framing(head: &[u8]) -> Framing {
    match check(head) {
        Checked::Head { len, then } => {
            assert_eq!(len, head.len());
            then
        }
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
    }
}

#[test]
fn heads_hyper_accepts_pass_with_their_framing() {
    assert_eq!(
        framing(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        Framing::Head
    );
    assert_eq!(framing(b"GET http://a.test/ HTTP/1.0\n\n"), Framing::Head);
    assert_eq!(framing(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n"), Framing::Opaque);
    assert_eq!(
        framing(b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
        Framing::Length(5)
    );
    assert_eq!(
        framing(b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
        Framing::Length(5)
    );
    assert_eq!(
        framing(b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n"),
        Framing::Chunked
    );
    assert_eq!(
        framing(b"GET http://a/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
        Framing::Opaque
    );
    // Leading empty lines are skipped, as by hyper; obs-text values pass.
    assert_eq!(
        framing(b"\r\nGET http://a/ HTTP/1.1\r\nX: caf\xe9\r\n\r\n"),
        Framing::Head
    );
    assert_eq!(check(b"GET http://a/ HTTP/1.1\r\nHost: a"), Checked::Partial);
}

#[test]
fn heads_hyper_refuses_are_named() {
    assert_eq!(
        malformed(b"GET http://%31%32%37.0.0.1/ HTTP/1.1\r\n\r\n"),
        Malformed::Target
    );
    assert_eq!(
        malformed("GET http://exämple.test/ HTTP/1.1\r\n\r\n".as_bytes()),
        Malformed::Target
    );
    assert_eq!(malformed(b"GET http://[::1/ HTTP/1.1\r\n\r\n"), Malformed::Target);
    assert_eq!(malformed(b"G(T http://a/ HTTP/1.1\r\n\r\n"), Malformed::Method);
    assert_eq!(malformed(b"GET http://a/ HTTP/2.0\r\n\r\n"), Malformed::Version);
    assert_eq!(
        malformed(b"GET http://a/ HTTP/1.1\r\nBad Name: x\r\n\r\n"),
        Malformed::HeaderName
    );
    assert_eq!(
        malformed(b"GET http://a/ HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
        Malformed::HeaderValue
    );
    assert_eq!(
        malformed(b"GET http://a/ HTTP/1.1\rX: y\r\n\r\n"),
        Malformed::LineEnding
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
        Malformed::ContentLength
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
        Malformed::ContentLength
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Malformed::ContentLength
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"),
        Malformed::ContentLength
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
        Malformed::TransferEncoding
    );
    assert_eq!(
        malformed(b"POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Malformed::TransferEncoding
    );
    let many: String = (0..101).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        malformed(format!("GET http://a/ HTTP/1.1\r\n{many}\r\n").as_bytes()),
        Malformed::TooManyHeaders
    );
    let big = format!("GET http://a/ HTTP/1.1\r\nX: {}\r\n", "y".repeat(70_000));
    assert_eq!(malformed(big.as_bytes()), Malformed::TooLarge);
    assert_eq!(Malformed::TooLarge.status(), 431);
    assert_eq!(Malformed::Target.status(), 400);
}

/// Everything hyper would read from `input`, through the guard.
async fn through(input: &[u8]) -> (Vec<u8>, Arc<HeadGuard>) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let guard = HeadGuard::new();
    let mut guarded = Guarded::new(server, guard.clone());
    client.write_all(input).await.unwrap();
    drop(client);
    let mut seen = Vec::new();
    // After a refusal the guard never reports the end: stop at the stand-in.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), guarded.read_to_end(&mut seen)).await;
    (seen, guard)
}

#[tokio::test]
async fn valid_traffic_passes_unchanged_bodies_included() {
    let input: &[u8] = b"POST http://a/ HTTP/1.1\r\nContent-Length: 22\r\n\r\nGET http://%31/ HTTP/1\
        POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nTrailer: t\r\n\r\n\
        GET http://a/ HTTP/1.1\r\n\r\n";
    let (seen, guard) = through(input).await;
    assert_eq!(seen, input, "a body that looks like a bad head is a body");
    let request = http::Request::builder().body(()).unwrap();
    assert_eq!(guard.refusal(&request), None);
}

#[tokio::test]
async fn a_bad_head_becomes_a_stand_in_that_only_its_guard_recognizes() {
    let good = b"GET http://a/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let mut input = good.to_vec();
    input.extend_from_slice(b"GET http://%31%32%37.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\nGET http://a/ HTTP/1.1\r\n\r\n");
    let (seen, guard) = through(&input).await;
    assert!(seen.starts_with(good));
    let stand_in = String::from_utf8_lossy(&seen[good.len()..]).to_string();
    assert!(
        stand_in.starts_with("GET http://clawgress.invalid/ HTTP/1.1\r\n"),
        "{stand_in}"
    );
    assert!(stand_in.contains("connection: close"));
    assert!(!stand_in.contains("%31"), "nothing after the bad head reaches hyper");
    let token = stand_in
        .lines()
        .find_map(|l| l.strip_prefix("x-clawgress-malformed: "))
        .unwrap()
        .trim()
        .to_string();
    let request = http::Request::builder()
        .header("x-clawgress-malformed", token.as_str())
        .body(())
        .unwrap();
    let refused = guard.refusal(&request).unwrap();
    assert_eq!(refused.problem, Malformed::Target);
    assert_eq!(refused.method, Some(http::Method::GET));
    // Another connection's token, or none, is an ordinary request.
    let forged = http::Request::builder()
        .header("x-clawgress-malformed", "0".repeat(32))
        .body(())
        .unwrap();
    assert_eq!(guard.refusal(&forged), None);
    assert_eq!(HeadGuard::new().refusal(&request), None);
}

#[tokio::test]
async fn a_tunnel_is_not_checked() {
    let input: &[u8] = b"CONNECT a:443 HTTP/1.1\r\n\r\n\x16\x03\x01GET http://%31/ HTTP/1.1\r\n\r\n";
    let (seen, _) = through(input).await;
    assert_eq!(seen, input);
}
