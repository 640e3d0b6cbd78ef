//! Whole-crate tests: the shipped default bundle, and a fuzz-style test of
//! the loader on mutated inputs.

use chrono::{DateTime, TimeZone, Utc};

use crate::PolicyError;
use crate::load::{load_file_at, load_str_at};
use crate::matcher::{CompiledPolicy, DenyReason, MatchOutcome, MatchRequest, Protocol};
use crate::model::TlsMode;

const DEFAULT_YAML: &str = include_str!("../default.yaml");

fn today() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn request<'a>(host: &'a str, port: u16, protocol: Protocol, role: &'a str) -> MatchRequest<'a> {
    MatchRequest {
        host,
        port,
        protocol,
        role,
    }
}

#[test]
fn default_bundle_loads_with_only_the_expected_warnings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default.yaml");
    let bundle = load_file_at(&path, today()).unwrap_or_else(|e| panic!("default.yaml must load:\n{e}"));
    let warnings: Vec<String> = bundle.warnings.iter().map(|w| w.message.clone()).collect();
    assert_eq!(bundle.warnings.len(), 4, "{warnings:#?}");
    assert!(warnings[0].starts_with("project_allowlist[0] (api.custom-service.com) expired on 2025-03-01"));
    assert!(warnings[1].starts_with("project_allowlist[1] (api.your-service.com) expired on 2025-06-01"));
    assert_eq!(warnings[2], "placeholder pin for api.openai.com is ignored");
    assert_eq!(warnings[3], "placeholder pin for api.anthropic.com is ignored");
    assert!(
        bundle
            .warnings
            .iter()
            .all(|w| w.line > 0 && w.origin.ends_with("default.yaml"))
    );
    assert_eq!(bundle.version.len(), 12);
    assert!(bundle.version.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn warnings_are_summed_up_in_one_line_with_the_command_that_lists_them() {
    let bundle = load_str_at(DEFAULT_YAML, "policies/default.yaml", today()).unwrap();
    let summary = bundle.warnings_summary().unwrap();
    assert!(
        summary.starts_with("policies/default.yaml: 4 policy warnings"),
        "{summary}"
    );
    assert!(summary.ends_with("`clawgress policy check policies/default.yaml` lists them with their lines and fixes"));
    assert!(!summary.contains('\n'));
    let clean = load_str_at("egress:\n  default_action: deny\n", "clean.yaml", today()).unwrap();
    assert_eq!(clean.warnings_summary(), None);
}

#[test]
fn default_bundle_decides_the_seeded_cases() {
    let bundle = load_str_at(DEFAULT_YAML, "default.yaml", today()).unwrap();
    let policy = CompiledPolicy::compile(&bundle);
    let now = today();

    match policy.evaluate(&request("api.openai.com", 443, Protocol::Https, "ai-agent"), now) {
        MatchOutcome::Allow(by) => {
            assert_eq!(&*by.policy_id, "allowlist.ai_providers[0]");
            assert_eq!(&*by.group, "ai_providers");
            assert!(!by.private_ok);
            assert_eq!(by.tls, TlsMode::Passthrough);
            assert_eq!(by.rate_limit.map(|r| r.to_string()).as_deref(), Some("100/min"));
        }
        other => panic!("api.openai.com denied: {other:?}"),
    }
    match policy.evaluate(&request("localhost", 6333, Protocol::Http, "scraper"), now) {
        MatchOutcome::Allow(by) => {
            assert_eq!(&*by.policy_id, "allowlist.storage[0]");
            assert!(by.private_ok, "a localhost rule must allow the loopback address");
        }
        other => panic!("localhost:6333 denied: {other:?}"),
    }
    let denied = |host, port, protocol| match policy.evaluate(&request(host, port, protocol, "scraper"), now) {
        MatchOutcome::Deny(denial) => (denial.reason, denial.policy_id.to_string()),
        MatchOutcome::Allow(by) => panic!("{host} allowed by {}", by.policy_id),
    };
    assert_eq!(
        denied("hidden.onion", 443, Protocol::Https),
        (DenyReason::BlockedPattern, "dns.block_patterns".into())
    );
    assert_eq!(
        denied("unknown.example.org", 443, Protocol::Https),
        (DenyReason::DomainNotInAllowlist, "default_deny".into())
    );
    assert_eq!(
        denied("www.competitor.com", 443, Protocol::Https),
        (DenyReason::Blocklisted, "project_blocklist[0]".into())
    );
    // The seeded project entries expired in 2025: inactive, hence unknown.
    assert_eq!(
        denied("api.custom-service.com", 443, Protocol::Https).0,
        DenyReason::DomainNotInAllowlist
    );
    assert_eq!(
        denied("localhost", 22, Protocol::Http),
        (DenyReason::PortNotAllowed, "allowlist.storage[0]".into())
    );
    assert_eq!(
        denied("api.openai.com", 443, Protocol::Http).0,
        DenyReason::ProtocolNotAllowed
    );
}

#[test]
fn default_bundle_keeps_the_seed_values() {
    let doc = load_str_at(DEFAULT_YAML, "default.yaml", today()).unwrap().document;
    assert_eq!(doc.rate_limits.per_agent.default.to_string(), "100/min");
    assert_eq!(doc.rate_limits.per_project.burst.get(), 100);
    assert_eq!(doc.fault_containment.max_pending_bytes.as_u64(), 10_000_000);
    assert_eq!(doc.sandbox.memory_limit.as_u64(), 256 * 1024 * 1024);
    assert_eq!(doc.sandbox.cpu_limit.millicores(), 100);
    assert_eq!(doc.circuit_breaker.thresholds.failure_rate.fraction(), 0.5);
    assert_eq!(doc.dns.cache_ttl.duration().as_secs(), 300);
    // The seed's three groups, and the synthetic checks' fixture sites.
    assert_eq!(doc.allowlist.groups.len(), 4);
    assert_eq!(doc.project_allowlist.len(), 2);
}

// ---------------------------------------------------------------- fuzz

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that tend to break YAML structure or values.
const GARBAGE: &[&[u8]] = &[
    b":",
    b"-",
    b" ",
    b"\n",
    b"\t",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'",
    b"*",
    b"&a",
    b"*a",
    b"!",
    b"|",
    b">",
    b"#",
    b"%",
    b"@",
    b"`",
    b",",
    b"?",
    b"0",
    b"70000",
    b"-1",
    b"\xc3\xa9",
    b"\xff",
    b"~",
    b"null",
    b"---",
    b"\\",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(5) {
            // delete a run
            0 => {
                let end = (at + 1 + rng.below(40)).min(bytes.len());
                bytes.drain(at..end);
            }
            // duplicate a run (often a whole line or key)
            1 => {
                let end = (at + 1 + rng.below(80)).min(bytes.len());
                let run = bytes[at..end].to_vec();
                bytes.splice(at..at, run);
            }
            // flip one byte
            2 => bytes[at] = rng.next() as u8,
            // insert a structural token
            3 => {
                let token = GARBAGE[rng.below(GARBAGE.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            // swap two lines' worth of bytes
            _ => {
                let other = rng.below(bytes.len());
                bytes.swap(at, other);
            }
        }
    }
    bytes
}

/// default.yaml cut at its top-level keys: mutating one section at a time
/// keeps each input small, so thousands of them run in a second or two.
fn sections() -> Vec<&'static str> {
    let mut starts: Vec<usize> = DEFAULT_YAML
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .filter(|&i| DEFAULT_YAML[i..].starts_with(|c: char| c.is_ascii_lowercase()))
        .collect();
    starts.insert(0, 0);
    starts.push(DEFAULT_YAML.len());
    starts.windows(2).map(|w| &DEFAULT_YAML[w[0]..w[1]]).collect()
}

fn check_one(text: &str, counts: &mut (usize, usize)) {
    match load_str_at(text, "fuzz.yaml", today()) {
        Ok(bundle) => {
            counts.0 += 1;
            // Whatever loaded must also compile and evaluate.
            let policy = CompiledPolicy::compile(&bundle);
            let _ = policy.evaluate(&request("api.openai.com", 443, Protocol::Https, "x"), today());
        }
        Err(PolicyError::Invalid(diagnostics)) => {
            counts.1 += 1;
            assert!(!diagnostics.is_empty());
            for d in &diagnostics {
                assert!(d.line >= 1 && d.column >= 1, "unlocated: {d}\n--- input ---\n{text}");
                assert!(!d.message.is_empty(), "empty message\n{text}");
                assert!(
                    d.to_string()
                        .starts_with(&format!("fuzz.yaml:{}:{}: ", d.line, d.column))
                );
            }
        }
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

#[test]
fn mutated_inputs_never_panic_and_errors_are_located() {
    let sections = sections();
    assert!(sections.len() >= 10, "{} sections", sections.len());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut counts = (0, 0);
    for round in 0..3000 {
        // Mostly one section at a time; every 20th round the whole file.
        let source = if round % 20 == 0 {
            DEFAULT_YAML
        } else {
            sections[rng.below(sections.len())]
        };
        let bytes = mutate(&mut rng, source.as_bytes());
        // load_str takes text; invalid UTF-8 is covered by the load tests.
        check_one(&String::from_utf8_lossy(&bytes), &mut counts);
    }
    // Both outcomes must occur, or the mutations are not exercising anything.
    let (ok, invalid) = counts;
    assert!(ok > 300 && invalid > 300, "ok={ok} invalid={invalid}");
}
