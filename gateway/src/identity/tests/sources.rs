//! Identity by source address: `sources` CIDRs in the agents file.

use std::net::IpAddr;
use std::path::Path;

use super::support::*;
use crate::identity::{IdentityError, IdentityResolver};

fn agent(id: &str, sources: &str) -> String {
    format!(
        "  - id: {id}\n    team: t\n    project: p\n    environment: dev\n    role: scraper\n    api_key_sha256: \"{}\"\n    sources: {sources}\n",
        sha256_hex(id)
    )
}

fn resolver(agents: &[String]) -> IdentityResolver {
    IdentityResolver::from_str(&format!("agents:\n{}", agents.concat()), "agents.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn an_address_names_the_agent_whose_sources_hold_it() {
    let r = resolver(&[
        agent("crawler", "[198.18.1.0/24, \"fd00:1::/64\"]"),
        agent("builder", "[198.18.2.0/25, 198.18.9.9]"),
        agent("roaming", "[]"),
    ]);
    assert!(r.has_sources());
    for (address, who) in [
        ("198.18.1.0", "crawler"),
        ("198.18.1.255", "crawler"),
        ("::ffff:198.18.1.7", "crawler"),
        ("fd00:1::42", "crawler"),
        ("198.18.2.127", "builder"),
        ("198.18.9.9", "builder"),
    ] {
        assert_eq!(&*r.by_source(ip(address)).unwrap().agent_id, who, "{address}");
    }
    for address in ["198.18.2.128", "198.18.0.255", "198.18.9.10", "fd00:2::1", "10.0.0.1"] {
        assert_eq!(r.by_source(ip(address)), Err(IdentityError::UnknownSource), "{address}");
    }
}

#[test]
fn a_credential_of_an_agent_with_sources_only_works_from_them() {
    let r = resolver(&[agent("crawler", "[198.18.1.0/24]"), agent("roaming", "[]")]);
    let crawler = r.identify(Some(&basic("crawler", "crawler"))).unwrap();
    assert_eq!(r.check_source(&crawler, ip("198.18.1.20")), Ok(()));
    assert_eq!(
        r.check_source(&crawler, ip("127.0.0.1")),
        Err(IdentityError::SourceMismatch)
    );
    assert_eq!(IdentityError::SourceMismatch.reason(), "source_mismatch");
    assert!(IdentityError::SourceMismatch.is_forbidden());
    // No sources: from anywhere, as before.
    let roaming = r.identify(Some(&basic("roaming", "roaming"))).unwrap();
    assert_eq!(r.check_source(&roaming, ip("127.0.0.1")), Ok(()));
}

#[test]
fn a_disabled_agents_address_is_refused_as_disabled() {
    let yaml = format!("agents:\n{}    disabled: true\n", agent("gone", "[198.18.3.0/24]"));
    let r = IdentityResolver::from_str(&yaml, "agents.yaml", Path::new(".")).unwrap();
    assert_eq!(r.by_source(ip("198.18.3.1")), Err(IdentityError::Disabled));
}

#[test]
fn overlapping_sources_of_two_agents_are_refused_with_both_lines() {
    let yaml = format!(
        "agents:\n{}{}",
        agent("wide", "[198.18.0.0/16]"),
        agent("narrow", "[198.18.5.0/24]")
    );
    let error = compile_error(&yaml);
    assert_eq!(error.line(), Some(15), "{error}");
    assert!(
        error.message().contains("`narrow`") && error.message().contains("`wide` (line 8)"),
        "{error}"
    );
    assert!(error.hint().is_some_and(|h| h.contains("disjoint")), "{error}");
    // One agent's own nested ranges are fine.
    let r = resolver(&[agent("one", "[198.18.0.0/16, 198.18.5.0/24]")]);
    assert_eq!(&*r.by_source(ip("198.18.5.1")).unwrap().agent_id, "one");
}

#[test]
fn bad_sources_are_refused_where_they_are_written() {
    for (sources, says, hint) in [
        ("[not-a-cidr]", "is not a CIDR", "198.18.1.0/24"),
        ("[198.18.1.5/24]", "host bits set", "198.18.1.0/24"),
        ("[\"fd00::1/64\"]", "host bits set", "fd00::/64"),
    ] {
        let yaml = format!("agents:\n{}", agent("a", sources));
        let error = compile_error(&yaml);
        assert_eq!(error.line(), Some(8), "{error}");
        assert!(error.message().contains(says), "{error}");
        assert!(error.hint().is_some_and(|h| h.contains(hint)), "{error}");
    }
}
