use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dns::{AddressClass, RestrictedKind as K, classify};

fn class(text: &str) -> AddressClass {
    let ip: IpAddr = text
        .parse()
        .unwrap_or_else(|e| panic!("test address {text:?} does not parse: {e}"));
    classify(ip)
}

fn assert_kind(text: &str, kind: K) {
    assert_eq!(class(text), AddressClass::Restricted(kind), "{text}");
}

fn assert_public(text: &str) {
    assert_eq!(class(text), AddressClass::Public, "{text}");
}

#[test]
fn ipv4_special_purpose_ranges() {
    let cases = [
        ("0.0.0.0", K::Unspecified),
        ("0.255.255.255", K::Unspecified),
        ("10.0.0.1", K::Private),
        ("10.255.255.255", K::Private),
        ("100.64.0.0", K::Cgnat),
        ("100.127.255.255", K::Cgnat),
        ("127.0.0.1", K::Loopback),
        ("127.255.255.254", K::Loopback),
        ("169.254.0.1", K::LinkLocal),
        ("169.254.169.254", K::CloudMetadata),
        ("169.254.170.2", K::CloudMetadata),
        ("100.100.100.200", K::CloudMetadata),
        ("168.63.129.16", K::CloudMetadata),
        ("172.16.0.1", K::Private),
        ("172.31.255.255", K::Private),
        ("192.0.0.1", K::ProtocolAssignment),
        ("192.0.0.255", K::ProtocolAssignment),
        ("192.0.2.1", K::Documentation),
        ("192.88.99.1", K::Relay6to4),
        ("192.168.1.1", K::Private),
        ("198.18.0.1", K::Benchmarking),
        ("198.19.255.255", K::Benchmarking),
        ("198.51.100.7", K::Documentation),
        ("203.0.113.9", K::Documentation),
        ("224.0.0.1", K::Multicast),
        ("239.255.255.255", K::Multicast),
        ("240.0.0.1", K::Reserved),
        ("255.255.255.254", K::Reserved),
        ("255.255.255.255", K::Broadcast),
    ];
    for (text, kind) in cases {
        assert_kind(text, kind);
    }
}

#[test]
fn ipv4_range_edges_are_public() {
    for text in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "192.0.3.1",
        "192.88.98.1",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.101.1",
        "203.0.114.1",
        "223.255.255.255",
        "168.63.129.17",
    ] {
        assert_public(text);
    }
}

#[test]
fn ipv6_special_purpose_ranges() {
    let cases = [
        ("::", K::Unspecified),
        ("::1", K::Loopback),
        ("::2", K::Reserved),
        ("::7f00:1", K::Reserved),
        ("::ffff:0:7f00:1", K::Reserved),
        ("100::1", K::Discard),
        ("2001::1", K::Teredo),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", K::Teredo),
        ("2001:1::1", K::ProtocolAssignment),
        ("2001:2::1", K::Benchmarking),
        ("2001:3::1", K::ProtocolAssignment),
        ("2001:10::1", K::Orchid),
        ("2001:20::1", K::Orchid),
        ("2001:1ff:ffff::1", K::ProtocolAssignment),
        ("2001:db8::1", K::Documentation),
        ("2001:db8:ffff::1", K::Documentation),
        ("3fff::1", K::Documentation),
        ("3fff:fff::1", K::Documentation),
        ("5f00::1", K::Reserved),
        ("fc00::1", K::UniqueLocal),
        ("fd12:3456::1", K::UniqueLocal),
        ("fd00:ec2::254", K::CloudMetadata),
        ("fe80::1", K::LinkLocal),
        ("febf::1", K::LinkLocal),
        ("fec0::1", K::SiteLocal),
        ("feff::1", K::SiteLocal),
        ("ff02::1", K::Multicast),
        ("ff0e::1", K::Multicast),
        ("4000::1", K::Reserved),
        ("1::1", K::Reserved),
        ("e000::1", K::Reserved),
    ];
    for (text, kind) in cases {
        assert_kind(text, kind);
    }
}

#[test]
fn public_ipv6_addresses() {
    for text in [
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001:81b::200e",
        "2001:200::1",
        "2001:db7:ffff::1",
        "2001:db9::1",
        "3fff:1000::1",
        "3ffe::1",
        "2003::1",
    ] {
        assert_public(text);
    }
}

/// The IPv4-mapped, NAT64 and 6to4 spellings of an IPv4 address.
fn encodings(v4: Ipv4Addr) -> [(&'static str, Ipv6Addr); 3] {
    let [a, b, c, d] = v4.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    [
        ("ipv4-mapped", v4.to_ipv6_mapped()),
        ("nat64", Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo)),
        ("6to4", Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)),
    ]
}

#[test]
fn embedded_ipv4_addresses_are_judged_by_the_ipv4_address() {
    let cases = [
        (Ipv4Addr::new(127, 0, 0, 1), K::Loopback),
        (Ipv4Addr::new(10, 0, 0, 1), K::Private),
        (Ipv4Addr::new(169, 254, 169, 254), K::CloudMetadata),
        (Ipv4Addr::new(100, 64, 0, 1), K::Cgnat),
        (Ipv4Addr::new(0, 0, 0, 0), K::Unspecified),
    ];
    for (v4, kind) in cases {
        for (form, v6) in encodings(v4) {
            assert_eq!(
                classify(IpAddr::V6(v6)),
                AddressClass::Restricted(kind),
                "{form} {v6} of {v4}"
            );
        }
    }
    // Written the way an attacker would in a URL.
    assert_kind("::ffff:127.0.0.1", K::Loopback);
    assert_kind("::ffff:7f00:1", K::Loopback);
    assert_kind("64:ff9b::127.0.0.1", K::Loopback);
    assert_kind("64:ff9b::a9fe:a9fe", K::CloudMetadata);
    assert_kind("2002:a00:1::", K::Private);
}

#[test]
fn embedded_public_ipv4_addresses_are_public() {
    for v4 in [Ipv4Addr::new(93, 184, 216, 34), Ipv4Addr::new(8, 8, 8, 8)] {
        for (form, v6) in encodings(v4) {
            assert_eq!(classify(IpAddr::V6(v6)), AddressClass::Public, "{form} {v6} of {v4}");
        }
    }
}

#[test]
fn local_use_nat64_is_always_restricted() {
    // The /96 layout's embedded address gives the clearer reason...
    assert_kind("64:ff9b:1::7f00:1", K::Loopback);
    assert_kind("64:ff9b:1::a00:1", K::Private);
    assert_kind("64:ff9b:1:abcd::a9fe:a9fe", K::CloudMetadata);
    // ...and other layouts cannot be decoded, so public-looking ones are
    // refused too: a loopback address in the /64 layout reads as 1.0.0.0.
    assert_kind("64:ff9b:1::5db8:d822", K::LocalNat64);
    assert_kind("64:ff9b:1:0:7f:0:100:0", K::LocalNat64);
    // Outside the /96 well-known prefix and the /48 local-use one.
    assert_kind("64:ff9b:2::808:808", K::Reserved);
}

#[test]
fn kind_codes_are_stable_and_distinct() {
    let kinds = [
        K::Loopback,
        K::Private,
        K::LinkLocal,
        K::CloudMetadata,
        K::Cgnat,
        K::Multicast,
        K::Unspecified,
        K::Broadcast,
        K::Reserved,
        K::Documentation,
        K::Benchmarking,
        K::UniqueLocal,
        K::SiteLocal,
        K::ProtocolAssignment,
        K::Relay6to4,
        K::Teredo,
        K::Discard,
        K::Orchid,
        K::LocalNat64,
    ];
    let codes: std::collections::HashSet<&str> = kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(codes.len(), kinds.len());
    assert!(codes.iter().all(|c| {
        c.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
    }));
    assert_eq!(K::CloudMetadata.as_str(), "cloud_metadata");
    assert_eq!(K::Loopback.as_str(), "loopback");
}

#[test]
fn refused_target_opens_private_ranges_on_request_but_never_metadata() {
    use crate::dns::refused_target;
    let ip = |text: &str| text.parse::<IpAddr>().unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(refused_target(ip("93.184.216.34"), false), None);
    assert_eq!(refused_target(ip("127.0.0.1"), false), Some(K::Loopback));
    assert_eq!(refused_target(ip("::ffff:10.0.0.1"), false), Some(K::Private));
    assert_eq!(refused_target(ip("127.0.0.1"), true), None);
    assert_eq!(refused_target(ip("10.1.2.3"), true), None);
    assert_eq!(refused_target(ip("169.254.169.254"), true), Some(K::CloudMetadata));
    assert_eq!(refused_target(ip("fd00:ec2::254"), true), Some(K::CloudMetadata));
}
