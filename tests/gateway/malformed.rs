//! Bad input at the HTTP parser (issue 16 §5): request heads that hyper
//! would answer with a bare `400` get problem+json with `malformed_request`,
//! an audit line naming the peer, and a metric; and a seeded fuzz of request
//! lines and headers through the real listener never gets a bare 400 or a
//! hang.

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::*;

/// Sends raw bytes (a whole head, its blank line included) and reads one
/// response; `None` if the connection closed without one.
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Option<raw::RawResponse> {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    // Peek: a close without a byte is no answer (read_response would panic).
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first))
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s to {:?}", String::from_utf8_lossy(bytes)))
        .ok()?;
    if n == 0 {
        return None;
    }
    let mut response = raw::read_response(&mut stream).await;
    // `Expect: 100-continue` gets an interim answer first.
    while (100..200).contains(&response.status) {
        response = raw::read_response(&mut stream).await;
    }
    Some(response)
}

#[tokio::test]
async fn heads_hyper_cannot_parse_get_a_reason_an_audit_line_and_a_metric() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let auth = basic(SCRAPER.0, SCRAPER.1);
    let cases: Vec<(String, u16)> = vec![
        // A percent-encoded host, a host that is not ASCII.
        (
            format!("GET http://%31%32%37.0.0.1:{port}/ HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"),
            400,
        ),
        (
            format!("GET http://sité.test:{port}/ HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"),
            400,
        ),
        (
            "GET http://site.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n".to_string(),
            400,
        ),
        (
            "POST http://site.test/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_string(),
            400,
        ),
        (
            format!("GET http://site.test/ HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000)),
            431,
        ),
    ];
    for (head, status) in cases {
        let shown = head.chars().take(80).collect::<String>();
        let response = exchange(w.gw.proxy, head.as_bytes()).await.expect("an answer");
        assert_eq!(response.status, status, "{shown}");
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json"),
            "{shown}"
        );
        let body = response.json();
        assert_eq!(body["reason"], "malformed_request", "{shown}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        // The answer never echoes the request.
        assert!(!String::from_utf8_lossy(&response.body).contains("%31"));
        let line = w.gw.audit_for(body["request_id"].as_str().unwrap()).await;
        assert_eq!(line["reason"], "malformed_request", "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "the audit line names the peer: {line}");
    }
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("http_client_requests_total")
            && l.contains("reason=\"malformed_request\"")
            && !l.ends_with(" 0")),
        "no malformed_request in the metrics"
    );
    // Valid traffic on the same listener, keep-alive and a body, is untouched.
    let ok = raw::send(
        w.gw.proxy,
        &format!("POST http://site.test:{port}/echo HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: {auth}\r\nContent-Length: 5"),
        b"hello",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, b"hello");
}

/// A small seeded generator (xorshift64*): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes a mutation puts in: the ones parsers trip on.
const NASTY: &[&[u8]] = &[
    b"%",
    b"%31",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\0",
    b"\x7f",
    b"\xff",
    "é".as_bytes(),
    b"@",
    b"[",
    b"]",
    b":",
    b"\"",
    b"{",
    b"/",
    b"?",
    b"#",
    b"\\",
    b"..",
    b"HTTP/1.1",
    b"\x01",
];

const HEADERS: &[&str] = &[
    "Content-Length: abc",
    "Content-Length: 1, 2",
    "Content-Length: -1",
    "Transfer-Encoding: gzip",
    "Transfer-Encoding: chunked, gzip",
    "Host: exämple.test",
    "X-Long: ",
    "Upgrade: h2c",
    "Expect: 100-continue",
    "Via: 1.1 clawgress",
    ": no-name",
    "No-Colon",
];

/// One mutated head, always ending with its blank line and never promising
/// a body it does not carry.
fn mutate(rng: &mut Rng, base: &str) -> Vec<u8> {
    let mut head = base.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 => {
                let at = rng.below(head.len());
                head[at] = rng.next() as u8;
            }
            1 => {
                let at = rng.below(head.len());
                let nasty = rng.pick(NASTY);
                head.splice(at..at, nasty.iter().copied());
            }
            2 if head.len() > 4 => {
                let at = rng.below(head.len() - 1);
                let len = 1 + rng.below(3.min(head.len() - at));
                head.drain(at..at + len);
            }
            3 => {
                let mut header = rng.pick(HEADERS).to_string();
                if header == "X-Long: " {
                    header.push_str(&"x".repeat(rng.below(80_000)));
                }
                head.extend_from_slice(format!("\r\n{header}").as_bytes());
            }
            4 => {
                // The host percent-encoded or not ASCII.
                let host = *rng.pick(&["%73ite.test", "sïte.test", "site%2Etest", "[site.test]"]);
                let text = String::from_utf8_lossy(&head).replacen("site.test", host, 1);
                head = text.into_bytes();
            }
            _ => {
                let at = rng.below(head.len());
                head.insert(at, *rng.pick(b"\r\n "));
            }
        }
    }
    // Whatever the mutations did to line ends, the head ends here.
    while head.ends_with(b"\r") || head.ends_with(b"\n") {
        head.pop();
    }
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[tokio::test]
async fn fuzzed_request_heads_get_a_proxied_answer_or_a_reason_never_a_bare_400() {
    let w = world("enforce").await;
    let port = w.origin.addr.port();
    let auth = basic(SCRAPER.0, SCRAPER.1);
    let bases = [
        format!("GET http://site.test:{port}/hello HTTP/1.1\r\nHost: site.test:{port}\r\nProxy-Authorization: {auth}"),
        format!("GET http://site.test:{port}/page?q=1 HTTP/1.1\r\nHost: site.test\r\nAccept: */*"),
        format!("GET http://site.test:{port}/hello HTTP/1.0\r\nProxy-Authorization: {auth}"),
        format!("CONNECT site.test:{port} HTTP/1.1\r\nHost: site.test:{port}\r\nProxy-Authorization: {auth}"),
        format!("OPTIONS http://unlisted.test:{port}/ HTTP/1.1\r\nProxy-Authorization: {auth}"),
    ];
    let seed: u64 = std::env::var("CLAWGRESS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C1_A3C1_A3C1_A3C1);
    let rounds: usize = std::env::var("CLAWGRESS_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = Rng(seed);
    let (mut refused, mut malformed, mut proxied) = (Vec::new(), 0, 0);
    for round in 0..rounds {
        let base = rng.pick(&bases).clone();
        let head = mutate(&mut rng, &base);
        let shown = format!(
            "seed {seed:#x} round {round}: {:?}",
            String::from_utf8_lossy(&head).chars().take(200).collect::<String>()
        );
        let Some(response) = exchange(w.gw.proxy, &head).await else {
            panic!("{shown}: the connection closed without an answer");
        };
        let problem = response.header("content-type") == Some("application/problem+json");
        let tunnel = head.starts_with(b"CONNECT") && (200..300).contains(&response.status);
        assert!(
            problem || tunnel || response.header("x-request-id").is_some(),
            "{shown}: an answer that is neither proxied nor a refusal (a bare {}?): {response:?}",
            response.status
        );
        if matches!(response.status, 400 | 414 | 431) {
            assert!(problem, "{shown}: a bare {}: {response:?}", response.status);
        }
        if problem {
            let body = response.json();
            let reason = body["reason"].as_str().unwrap_or_default().to_string();
            assert!(!reason.is_empty(), "{shown}: no reason: {body}");
            malformed += usize::from(reason == "malformed_request");
            refused.push((
                body["request_id"].as_str().unwrap_or_default().to_string(),
                reason,
                shown,
            ));
        } else {
            proxied += 1;
        }
    }
    eprintln!(
        "fuzz: {rounds} heads, seed {seed:#x}: {} refused ({malformed} malformed_request), {proxied} proxied",
        refused.len()
    );
    assert!(
        malformed > rounds / 10,
        "the fuzz reaches the parser: {malformed} of {rounds}"
    );
    // Every refusal is in the audit trail, with its reason.
    for (request_id, reason, shown) in refused {
        let line = w.gw.audit_for(&request_id).await;
        assert_eq!(line["reason"], reason.as_str(), "{shown}: {line}");
    }
}
