use super::*;

#[test]
fn target_yields_absolute_origin_and_connect_forms() {
    let target = parse_target("http://bench.local:18080/data?x=1").expect("valid target");
    assert_eq!(target.host, "bench.local");
    assert_eq!(target.port, 18080);
    assert_eq!(target.connect_authority, "bench.local:18080");
    assert_eq!(target.host_header, "bench.local:18080");
    assert_eq!(target.absolute.to_string(), "http://bench.local:18080/data?x=1");
    assert_eq!(target.origin_form.to_string(), "/data?x=1");
}

#[test]
fn target_without_port_or_path_defaults_to_80_and_slash() {
    let target = parse_target("http://example.test").expect("valid target");
    assert_eq!(target.port, 80);
    assert_eq!(target.host_header, "example.test");
    assert_eq!(target.connect_authority, "example.test:80");
    assert_eq!(target.origin_form.to_string(), "/");
    assert_eq!(target.absolute.to_string(), "http://example.test/");
}

#[test]
fn ipv6_target_is_dialled_without_brackets() {
    let target = parse_target("http://[::1]:8080/").expect("valid target");
    assert_eq!(target.host, "::1");
    assert_eq!(target.connect_authority, "[::1]:8080");
    assert_eq!(target.host_header, "[::1]:8080");
}

#[test]
fn target_rejects_other_schemes_and_relative_urls() {
    // https is a target for --reqwest (the plan checks the mode), on 443 by default.
    assert_eq!(parse_target("https://bench.local/").expect("https target").port, 443);
    assert!(parse_target("ftp://bench.local/").is_err());
    assert!(
        parse_proxy("https://127.0.0.1:3128").is_err(),
        "the proxy itself is plain HTTP"
    );
    assert!(parse_target("/only/a/path").is_err());
    assert!(parse_target("not a url").is_err());
    assert!(parse_target("http://user:pw@bench.local/").is_err());
}

#[test]
fn proxy_accepts_host_port_and_trailing_slash() {
    let proxy = parse_proxy("http://127.0.0.1:13128/").expect("valid proxy");
    assert_eq!((proxy.host.as_str(), proxy.port), ("127.0.0.1", 13128));
    assert_eq!(proxy.display, "http://127.0.0.1:13128");
}

#[test]
fn proxy_errors_never_echo_a_credential() {
    let error = parse_proxy("http://agent:s3cret@127.0.0.1:3128")
        .expect_err("userinfo refused")
        .to_string();
    assert!(!error.contains("s3cret"), "{error}");
    let error = parse_proxy("s3cret garbage").expect_err("not a URL").to_string();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(parse_proxy("http://127.0.0.1:3128/path").is_err());
    assert!(parse_proxy("socks5://127.0.0.1:1080").is_err());
}

#[test]
fn basic_credentials_encode_agent_and_key() {
    let value = basic_credentials("bench-agent:bench-key").expect("valid credential");
    assert_eq!(value, "Basic YmVuY2gtYWdlbnQ6YmVuY2gta2V5");
    assert!(value.is_sensitive());
    assert!(!format!("{value:?}").contains("YmVu"));
}

#[test]
fn basic_credentials_need_an_agent_and_a_colon() {
    assert!(basic_credentials("no-colon").is_err());
    assert!(basic_credentials(":key-only").is_err());
    assert!(basic_credentials("agent:").is_ok());
}
