use super::*;

use http_body_util::BodyExt;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

async fn start(size: usize) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, CannedResponse::of_size(size), None, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn answers_any_path_with_the_sized_body_on_one_keep_alive_connection() {
    let (addr, _stop) = start(1500).await;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    for path in ["/", "/some/other/path?q=1", "http://bench.local:18080/abs"] {
        let request = Request::builder()
            .uri(path)
            .header("host", "bench.local")
            .body(http_body_util::Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_LENGTH], "1500");
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), 1500);
        assert!(body.iter().all(|&byte| byte == b'x'));
    }
}

#[tokio::test]
async fn empty_body_is_allowed() {
    let (addr, _stop) = start(0).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn stops_accepting_after_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, CannedResponse::of_size(1), None, async {
        let _ = stopped.await;
    }));
    stop.send(()).expect("server alive");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server returns")
        .expect("server task");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn the_html_page_has_the_asked_size_a_heading_and_a_script_rendered_price() {
    let page = CannedResponse::page_of_size(4096);
    let body = std::str::from_utf8(&page.body).expect("utf-8");
    assert_eq!(body.len(), 4096);
    assert_eq!(page.content_length, HeaderValue::from(4096));
    assert!(page.content_type.to_str().unwrap().starts_with("text/html"));
    let document = scraper::Html::parse_document(body);
    let h1 = scraper::Selector::parse("h1").unwrap();
    assert_eq!(
        document.select(&h1).next().map(|e| e.text().collect::<String>()),
        Some("Bench page".into())
    );
    // Only a browser finds the price: it is written by the script.
    let price = scraper::Selector::parse(".price").unwrap();
    assert!(document.select(&price).next().is_none());
    assert!(body.contains("'<span class=\"price\">' + (6 * 7)"));
    // Smaller than its frame: the frame, unpadded.
    assert!(CannedResponse::page_of_size(10).body.len() > 10);
}
