use super::*;

#[test]
fn connect_request_names_the_target_twice_and_carries_the_credential() {
    let head = TunnelPlan::connect_request("bench.local:18080", Some(b"Basic abc="));
    assert_eq!(
        head,
        b"CONNECT bench.local:18080 HTTP/1.1\r\nHost: bench.local:18080\r\n\
          Proxy-Authorization: Basic abc=\r\n\r\n"
            .as_slice()
    );
    let anonymous = TunnelPlan::connect_request("[::1]:443", None);
    assert_eq!(
        anonymous,
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n".as_slice()
    );
}

#[test]
fn head_end_is_found_only_after_the_blank_line() {
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n"), None);
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\n"), Some(19));
    assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nextra"), Some(19));
}

#[test]
fn status_line_parsing() {
    let ok = parse_status_line(b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(ok.expect("valid"), StatusCode::OK);
    let denied = parse_status_line(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n");
    assert_eq!(denied.expect("valid"), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    let bare = parse_status_line(b"HTTP/1.1 403\r\n\r\n");
    assert_eq!(bare.expect("valid"), StatusCode::FORBIDDEN);
    assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    assert!(parse_status_line(b"HTTP/1.1 20\r\n\r\n").is_err());
    assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    assert!(parse_status_line(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
}
