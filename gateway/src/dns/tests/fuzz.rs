//! Seeded fuzz-style properties of `parse_host`: thousands of random and mutated
//! hosts, checked against what any answer must satisfy rather than against a list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::dns::{Host, HostError, parse_host};
use crate::testing::Rng;

const SEED: u64 = 0x686f_7374;
const CASES: usize = 6000;

/// Spellings that sit on the edges between a name, an IPv4 literal in one of its
/// many forms, an IPv6 literal, and an internationalized name.
const SEEDS: &[&str] = &[
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "127.1",
    "0x7f.1",
    "0x7f000001",
    "0177.0.0.1",
    "2130706433",
    "127.0.0.1.",
    "1.2.3.4.5",
    "foo.0x",
    "example.123",
    "1.2.3.example",
    "[::ffff:127.0.0.1]",
    "::ffff:7f00:1",
    "[::1]",
    "[fe80::1%eth0]",
    "[2001:db8::1]",
    "API.OpenAI.com.",
    "api.openai.com",
    "bücher.example",
    "xn--bcher-kva.example",
    "\u{ff11}\u{ff12}\u{ff17}\u{3002}\u{ff10}\u{3002}\u{ff10}\u{3002}\u{ff11}",
    "ｅｘａｍｐｌｅ．ｃｏｍ",
    "ß.de",
    "Ⅸ.example",
    "a_b.example",
    "localhost",
];

const LABELS: &[&str] = &[
    "a",
    "bücher",
    "xn--bcher-kva",
    "0x7f",
    "127",
    "ïüöäëÿçñ",
    "abcdefghijklmnopqrstuvwxyz0123456789-abcdefghijklmnopqrstuvwxyz0",
    "\u{ff11}\u{ff12}",
];

/// Characters that steer the parser into its different branches.
const ALPHABET: &[char] = &[
    '0', '1', '2', '5', '7', '9', 'x', 'X', 'a', 'f', 'F', 'g', 'z', 'Z', '.', '.', '.', ':', ':', '[', ']', '%', '-',
    '_', ' ', '/', '\u{3002}', '\u{ff0e}', '\u{ff11}', 'ü', 'ß', 'İ', '\u{200d}', '\u{0301}', '\u{fffd}',
];

/// Bytes the mutator prefers: separators, digits, hex markers and the lead bytes
/// of multi-byte UTF-8 sequences.
const DICTIONARY: &[u8] = b"..::[]0123456789xX-_%aAfFzZ\xc3\xe3\xef\x80\xbc";

fn random_host(rng: &mut Rng) -> String {
    match rng.below(7) {
        0 => {
            let len = rng.range(0, 24);
            rng.string_from(ALPHABET, len)
        }
        1 => {
            let len = rng.range(0, 24);
            String::from_utf8_lossy(&rng.bytes(len)).into_owned()
        }
        2 => {
            // Number-shaped: 1 to 5 labels of decimal, octal-looking or hex numbers.
            let labels = rng.range(1, 5);
            let parts: Vec<String> = (0..labels)
                .map(|_| match rng.below(4) {
                    0 => format!("0x{:x}", rng.next_u64() >> rng.range(32, 63)),
                    1 => format!("0{:o}", rng.below(512)),
                    2 => rng.below(300).to_string(),
                    _ => (rng.next_u64() >> rng.range(16, 63)).to_string(),
                })
                .collect();
            parts.join(".")
        }
        3 => {
            let quad = Ipv4Addr::from(rng.next_u64() as u32).to_string();
            mutate_sometimes(rng, quad)
        }
        4 => {
            // Small groups, so that `::` compression and embedded IPv4 show up.
            let ip = Ipv6Addr::from(u128::from(rng.next_u64() & 0xffff_0000_ffff) << rng.below(80));
            let text = if rng.one_in(2) {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            mutate_sometimes(rng, text)
        }
        5 => {
            // Near the 63-byte label and 253-byte name limits, where IDNA can make
            // the ASCII form longer than the Unicode input.
            let labels = rng.range(1, 40);
            let parts: Vec<&str> = (0..labels).map(|_| *rng.pick(LABELS)).collect();
            mutate_sometimes(rng, parts.join("."))
        }
        _ => {
            let mut bytes = rng.pick(SEEDS).as_bytes().to_vec();
            rng.mutate(&mut bytes, DICTIONARY, 4);
            // Most mutations keep valid UTF-8; the rest are repaired, not dropped.
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

fn mutate_sometimes(rng: &mut Rng, text: String) -> String {
    if rng.one_in(2) {
        return text;
    }
    let mut bytes = text.into_bytes();
    rng.mutate(&mut bytes, DICTIONARY, 2);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The properties every answer must have; returns what is wrong, if anything.
fn check(raw: &str) -> Result<(), String> {
    match parse_host(raw) {
        Ok(Host::Ip(IpAddr::V4(ip))) => {
            // Only the one canonical spelling may become an address.
            if ip.to_string() != raw {
                return Err(format!("accepted {raw:?} as {ip}: not the canonical dotted quad"));
            }
        }
        Ok(Host::Ip(IpAddr::V6(ip))) => {
            let inner = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(raw);
            if inner.parse::<Ipv6Addr>().ok() != Some(ip) {
                return Err(format!("accepted {raw:?} as [{ip}], which it does not spell"));
            }
        }
        Ok(Host::Domain(name)) => check_domain(raw, &name)?,
        Err(error) => check_error(raw, &error)?,
    }
    Ok(())
}

fn check_domain(raw: &str, name: &str) -> Result<(), String> {
    let shaped = !name.is_empty()
        && !name.ends_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if !shaped {
        return Err(format!(
            "{raw:?} became {name:?}: not lowercase ASCII without a trailing dot"
        ));
    }
    if name.parse::<Ipv4Addr>().is_ok() || name.parse::<IpAddr>().is_ok() {
        return Err(format!("{raw:?} became the name {name:?}, which is an address"));
    }
    match parse_host(name) {
        Ok(Host::Domain(again)) if again == name => Ok(()),
        other => Err(format!("not idempotent: {raw:?} -> {name:?} -> {other:?}")),
    }
}

fn check_error(raw: &str, error: &HostError) -> Result<(), String> {
    // The error goes back to the client: bounded, whatever came in.
    let shown = match error {
        HostError::NonCanonicalIpv4 { host } | HostError::MalformedIpv6 { host } => host.len(),
        HostError::InvalidName(_) => 0,
    };
    if shown > 300 {
        return Err(format!("error for a {}-byte host quotes {shown} bytes", raw.len()));
    }
    let _ = error.to_string();
    Ok(())
}

#[test]
fn random_and_mutated_hosts_never_panic_and_keep_the_invariants() {
    let mut rng = Rng::new(SEED);
    let mut kinds = [0usize; 4];
    for case in 0..CASES {
        let raw = random_host(&mut rng);
        if let Err(problem) = check(&raw) {
            panic!("case {case} (seed {SEED:#x}): {problem}");
        }
        let kind = match parse_host(&raw) {
            Ok(Host::Ip(IpAddr::V4(_))) => 0,
            Ok(Host::Ip(IpAddr::V6(_))) => 1,
            Ok(Host::Domain(_)) => 2,
            Err(_) => 3,
        };
        kinds[kind] += 1;
    }
    // Guard against a generator that only ever exercises one branch.
    assert!(kinds.iter().all(|&n| n >= 50), "outcomes v4/v6/domain/error: {kinds:?}");
}

#[test]
fn every_seed_keeps_the_invariants_unmutated() {
    for raw in SEEDS {
        if let Err(problem) = check(raw) {
            panic!("{problem}");
        }
    }
}
