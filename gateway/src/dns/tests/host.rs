use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dns::{Host, HostError, parse_host};

fn domain(name: &str) -> Host {
    Host::Domain(name.to_string())
}

#[test]
fn canonical_ipv4_is_an_address() {
    assert_eq!(
        parse_host("1.2.3.4"),
        Ok(Host::Ip(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))))
    );
    assert_eq!(parse_host("127.0.0.1"), Ok(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))));
    assert_eq!(parse_host("0.0.0.0"), Ok(Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
    assert_eq!(
        parse_host("255.255.255.255"),
        Ok(Host::Ip(IpAddr::V4(Ipv4Addr::BROADCAST)))
    );
}

#[test]
fn non_canonical_ipv4_spellings_are_refused() {
    for raw in [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0x7f000001",
        "0X7F.0.0.1",
        "127.1",
        "127.0.1",
        "127.000.000.001",
        "127.0.0.01",
        "1.2.3.4.",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.256",
        "foo.0x10",
        "foo.0x",
        "foo.0X1f",
        "example.123",
        "example.123.",
        "0",
        "00",
        "1.2.3",
    ] {
        match parse_host(raw) {
            Err(HostError::NonCanonicalIpv4 { host }) => assert_eq!(host, raw),
            other => panic!("{raw:?} should be a non-canonical IPv4 literal, got {other:?}"),
        }
    }
}

#[test]
fn idna_digits_that_become_an_ipv4_literal_are_refused() {
    // Full-width digits and ideographic full stops map to `127.0.0.1`.
    let raw = "\u{ff11}\u{ff12}\u{ff17}\u{3002}\u{ff10}\u{3002}\u{ff10}\u{3002}\u{ff11}";
    assert!(matches!(parse_host(raw), Err(HostError::NonCanonicalIpv4 { .. })));
}

#[test]
fn names_that_only_contain_numbers_in_the_middle_are_names() {
    assert_eq!(parse_host("1.2.3.example"), Ok(domain("1.2.3.example")));
    assert_eq!(parse_host("0x7f.example.com"), Ok(domain("0x7f.example.com")));
    assert_eq!(parse_host("123abc.com"), Ok(domain("123abc.com")));
    assert_eq!(parse_host("foo.0xg"), Ok(domain("foo.0xg")));
    assert_eq!(parse_host("foo.1e"), Ok(domain("foo.1e")));
}

#[test]
fn names_are_normalized() {
    assert_eq!(parse_host("API.OpenAI.com."), Ok(domain("api.openai.com")));
    assert_eq!(parse_host("bücher.example"), Ok(domain("xn--bcher-kva.example")));
    assert_eq!(parse_host("localhost"), Ok(domain("localhost")));
}

#[test]
fn invalid_names_are_refused_with_the_reason() {
    for raw in ["", ".", "a..b", "-a.com", "a b.com", "exa%6dple.com", "a/b"] {
        match parse_host(raw) {
            Err(HostError::InvalidName(_)) => {}
            other => panic!("{raw:?} should be an invalid name, got {other:?}"),
        }
    }
    let message = parse_host("a..b").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("empty label"), "{message}");
}

#[test]
fn ipv6_literals_with_and_without_brackets() {
    assert_eq!(parse_host("[::1]"), Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))));
    assert_eq!(parse_host("::1"), Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))));
    assert_eq!(
        parse_host("[2001:DB8::1]"),
        Ok(Host::Ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))))
    );
    assert_eq!(
        parse_host("[::ffff:127.0.0.1]"),
        Ok(Host::Ip(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())))
    );
}

#[test]
fn malformed_ipv6_literals_are_refused() {
    for raw in [
        "[fe80::1%eth0]",
        "fe80::1%eth0",
        "[fe80::1%25eth0]",
        "[::1",
        "::1]",
        "[1.2.3.4]",
        "[]",
        "[example.com]",
        "[::1]:80",
        "example.com:80",
        "[:::1]",
    ] {
        match parse_host(raw) {
            Err(HostError::MalformedIpv6 { .. }) => {}
            other => panic!("{raw:?} should be a malformed IPv6 literal, got {other:?}"),
        }
    }
}

#[test]
fn errors_say_what_to_do_and_stay_bounded() {
    let message = parse_host("0x7f.1").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("'0x7f.1'") && message.contains("a.b.c.d"), "{message}");
    let message = parse_host("[fe80::1%eth0]")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("zone id"), "{message}");

    let long = format!("{}.1", "9".repeat(5000));
    match parse_host(&long) {
        Err(HostError::NonCanonicalIpv4 { host }) => assert!(host.len() < 300, "{}", host.len()),
        other => panic!("expected a non-canonical IPv4 error, got {other:?}"),
    }
}

#[test]
fn hosts_display_as_they_go_in_a_uri() {
    assert_eq!(domain("example.com").to_string(), "example.com");
    assert_eq!(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)).to_string(), "[::1]");
    assert_eq!(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_string(), "127.0.0.1");
}
