//! Reading question names, and the exfiltration heuristics on their own.

use hickory_server::proto::rr::Name;

use crate::dns::server::name::{HIGH_ENTROPY_BITS, QueryName, label_alert, shannon_bits};

fn read(labels: &[&[u8]]) -> QueryName {
    let name = Name::from_labels(labels.iter().copied()).unwrap_or_else(|e| panic!("{labels:?}: {e}"));
    QueryName::read(&name)
}

#[test]
fn host_names_are_lowercased_for_the_policy() {
    let name = read(&[b"API", b"Example", b"com"]);
    assert_eq!(name.host.as_deref(), Some("api.example.com"));
    assert_eq!(name.text, "api.example.com");
    assert_eq!(name.alert, None);
}

#[test]
fn odd_bytes_are_escaped_for_the_audit_and_make_no_host() {
    let name = read(&[b"a b", b"ex\"ample", b"com"]);
    assert_eq!(name.host, None);
    assert_eq!(name.text, "a\\032b.ex\\034ample.com");
    let root = QueryName::read(&Name::root());
    assert_eq!((root.host, root.text.as_str()), (None, "."));
    // Labels the policy's own rules refuse (leading hyphen) are no host either.
    assert_eq!(read(&[b"-bad", b"test"]).host, None);
}

#[test]
fn long_and_random_labels_alert_and_ordinary_ones_do_not() {
    let ordinary: [&[u8]; 6] = [
        b"storage-account-westeurope",
        b"thisisaverylongdomainlabel",
        b"cdn-assets-production-eu",
        b"internal-my-lb-1234567890",
        b"www",
        b"xn--bcher-kva",
    ];
    for label in ordinary {
        assert_eq!(label_alert(label), None, "{}", String::from_utf8_lossy(label));
    }
    assert_eq!(label_alert(&[b'a'; 51]), Some("long_label"));
    assert_eq!(label_alert(&[b'a'; 50]), None);
    // base32 of random bytes, and hex of random bytes.
    assert_eq!(
        label_alert(b"mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dz"),
        Some("high_entropy_label")
    );
    assert_eq!(
        label_alert(b"3f9a1c02b7e4d5a6f8091b2c3d4e5f60"),
        Some("high_entropy_label")
    );
    // Random, but too short to tell.
    assert_eq!(label_alert(b"x7k2q9z4w1"), None);
}

#[test]
fn shannon_entropy_is_bits_per_character() {
    assert_eq!(shannon_bits(b"aaaa"), 0.0);
    assert!((shannon_bits(b"abab") - 1.0).abs() < 1e-9);
    assert!((shannon_bits(b"0123456789abcdef") - 4.0).abs() < 1e-9);
    assert!(shannon_bits(b"abcdefghijklmnopqrstuvwxyz012345") >= HIGH_ENTROPY_BITS);
}
