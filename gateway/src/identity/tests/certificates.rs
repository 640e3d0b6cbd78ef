//! Identity by client certificate: `spiffe_ids` in the agents file, or the
//! CN as an agent id.

use std::path::Path;

use super::support::*;
use crate::identity::{AuthMethod, CertificateNames, CertificateProblem, IdentityError, IdentityResolver};

const CRAWLER_ID: &str = "spiffe://cluster.local/ns/crawl/sa/crawler";

fn agent(id: &str, extra: &str) -> String {
    format!("  - id: {id}\n    team: t\n    project: p\n    environment: dev\n    role: scraper\n{extra}")
}

fn resolver(agents: &[String]) -> IdentityResolver {
    IdentityResolver::from_str(&format!("agents:\n{}", agents.concat()), "agents.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn names(spiffe_ids: &[&str], common_name: Option<&str>) -> CertificateNames {
    CertificateNames {
        spiffe_ids: spiffe_ids.iter().map(|s| s.to_string()).collect(),
        common_name: common_name.map(str::to_string),
    }
}

fn world() -> IdentityResolver {
    resolver(&[
        agent("crawler", &format!("    spiffe_ids: [\"{CRAWLER_ID}\"]\n")),
        agent("builder", ""),
        agent("gone", "    disabled: true\n"),
    ])
}

#[test]
fn a_spiffe_id_or_a_cn_names_the_agent() {
    let r = world();
    assert_eq!(r.spiffe_id_count(), 1);
    let crawler = r.by_certificate(&names(&[CRAWLER_ID], Some("whatever"))).unwrap();
    assert_eq!(
        (&*crawler.agent_id, crawler.method),
        ("crawler", AuthMethod::Certificate)
    );
    assert_eq!(AuthMethod::Certificate.as_str(), "mtls");
    let builder = r.by_certificate(&names(&[], Some("builder"))).unwrap();
    assert_eq!(&*builder.agent_id, "builder");
    assert_eq!(
        (&*builder.team, &*builder.project, &*builder.role),
        ("t", "p", "scraper")
    );
}

#[test]
fn certificates_that_name_no_agent_are_refused() {
    let r = world();
    for (spiffe, cn, expected) in [
        // A SPIFFE ID nobody lists: never a fallback to the CN.
        (
            &["spiffe://cluster.local/ns/crawl/sa/other"][..],
            Some("builder"),
            IdentityError::UnknownCertificate,
        ),
        // An agent with spiffe_ids is named only by them.
        (&[][..], Some("crawler"), IdentityError::UnknownCertificate),
        (&[][..], Some("nobody"), IdentityError::UnknownCertificate),
        (&[][..], None, IdentityError::UnknownCertificate),
        (
            &[CRAWLER_ID, "spiffe://x/y"][..],
            None,
            IdentityError::AmbiguousCertificate,
        ),
        (&[][..], Some("gone"), IdentityError::Disabled),
    ] {
        assert_eq!(
            r.by_certificate(&names(spiffe, cn)),
            Err(expected.clone()),
            "{spiffe:?} {cn:?}"
        );
    }
    for error in [
        IdentityError::UnknownCertificate,
        IdentityError::AmbiguousCertificate,
        IdentityError::CertificateMismatch,
        IdentityError::ClientCertificate(CertificateProblem::Revoked),
    ] {
        assert!(error.is_forbidden() && error.is_certificate(), "{error:?}");
        assert!(crate::decision::ALL_REASONS.contains(&error.reason()), "{error:?}");
    }
    for problem in CertificateProblem::ALL {
        assert!(crate::decision::ALL_REASONS.contains(&problem.reason()), "{problem:?}");
    }
}

#[test]
fn a_spiffe_id_listed_twice_is_refused_with_both_lines() {
    let yaml = format!(
        "agents:\n{}{}",
        agent("one", &format!("    spiffe_ids: [\"{CRAWLER_ID}\"]\n")),
        agent("two", &format!("    spiffe_ids:\n      - \"{CRAWLER_ID}\"\n"))
    );
    let error = compile_error(&yaml);
    assert_eq!(error.line(), Some(14), "{error}");
    assert!(
        error.message().contains("`two`") && error.message().contains("`one` (line 7)"),
        "{error}"
    );
    assert!(error.hint().is_some_and(|h| h.contains("one agent")), "{error}");
}

#[test]
fn malformed_spiffe_ids_are_refused_where_they_are_written() {
    for (id, says) in [
        ("https://cluster.local/ns/a/sa/b", "must start with spiffe://"),
        ("spiffe://Cluster.Local/ns/a", "lowercase"),
        ("spiffe://cluster.local", "whole trust domain"),
        ("spiffe://cluster.local/", "empty segment"),
        ("spiffe://cluster.local/ns//sa", "empty segment"),
        ("spiffe://cluster.local/ns/../sa", "'..'"),
        ("spiffe://cluster.local/ns/a?x=1", "path segments"),
        ("spiffe:///ns/a", "trust domain is empty"),
    ] {
        let yaml = format!("agents:\n{}", agent("a", &format!("    spiffe_ids: [\"{id}\"]\n")));
        let error = compile_error(&yaml);
        assert_eq!(error.line(), Some(7), "{id}: {error}");
        assert!(error.message().contains(says), "{id}: {error}");
        assert!(error.hint().is_some_and(|h| h.contains("spiffe://")), "{error}");
    }
}
