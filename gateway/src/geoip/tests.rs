use std::net::{IpAddr, Ipv4Addr};

use super::*;

#[path = "../../../tests/support/mmdb.rs"]
#[allow(dead_code)]
mod mmdb;

fn bundle_with(dir: &std::path::Path, geoip: &str) -> Result<Option<GeoIp>, String> {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, format!("geoip:\n{geoip}")).unwrap();
    let bundle = clawgress_policies::load_file(&policy).unwrap();
    GeoIp::load(&bundle)
}

#[test]
fn addresses_get_their_asn_and_country_from_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("asn.mmdb"),
        mmdb::asn_db(&[
            (Ipv4Addr::new(203, 0, 113, 0), 24, 64_500),
            (Ipv4Addr::new(10, 0, 0, 0), 8, 1),
        ]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("country.mmdb"),
        mmdb::country_db(&[(Ipv4Addr::new(203, 0, 113, 0), 25, "nl")]),
    )
    .unwrap();
    let geo = bundle_with(dir.path(), "  asn_db: asn.mmdb\n  country_db: country.mmdb\n")
        .unwrap()
        .unwrap();
    let at = |ip: &str| geo.lookup(ip.parse::<IpAddr>().unwrap());
    let found = at("203.0.113.7");
    assert_eq!(found.asn, Some(64_500));
    assert_eq!(found.country.map(|c| c.as_str().to_string()).as_deref(), Some("NL"));
    // In the ASN network but past the country's /25.
    assert_eq!(
        at("203.0.113.200"),
        GeoInfo {
            asn: Some(64_500),
            country: None
        }
    );
    assert_eq!(at("10.9.9.9").asn, Some(1));
    assert_eq!(at("192.0.2.1"), GeoInfo::default());
    // IPv4-mapped IPv6 is the IPv4 address; other IPv6 is unknown, not an error.
    assert_eq!(at("::ffff:203.0.113.7").asn, Some(64_500));
    assert_eq!(at("2001:db8::1"), GeoInfo::default());
    assert_eq!(
        serde_json::to_string(&found.country).unwrap(),
        "\"NL\"",
        "a country code is written as text"
    );
}

#[test]
fn no_databases_means_no_lookups_and_a_bad_one_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    assert!(bundle_with(dir.path(), "  {}\n").unwrap().is_none());
    let missing = bundle_with(dir.path(), "  country_db: nowhere.mmdb\n").unwrap_err();
    assert!(missing.contains("policy.yaml:2:"), "{missing}");
    assert!(missing.contains("nowhere.mmdb"), "{missing}");
    std::fs::write(dir.path().join("junk.mmdb"), b"not a database").unwrap();
    let junk = bundle_with(dir.path(), "  asn_db: junk.mmdb\n").unwrap_err();
    assert!(junk.contains("geoip.asn_db"), "{junk}");
}
