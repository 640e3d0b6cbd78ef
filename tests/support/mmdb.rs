//! A minimal MaxMind DB (MMDB v2) writer for tests: an IPv4 search tree
//! with 32-bit records, a data section of maps, strings and unsigned
//! integers, and the metadata a reader needs. Real databases cannot be
//! downloaded here, and no crate on crates.io writes MMDB in pure Rust
//! without pulling a network client, so tests build theirs.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>.

use std::net::Ipv4Addr;

/// A value of the MMDB data section.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    U32(u32),
    Map(Vec<(String, Value)>),
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    // Types above 7 are "extended": type 0 in the control byte and the real
    // type minus 7 in the byte right after it, before any size bytes.
    let head = if kind > 7 { 0 } else { kind << 5 };
    let (size_bits, size_bytes): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, Vec::new()),
        29..=284 => (29, vec![(size - 29) as u8]),
        _ => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
    };
    out.push(head | size_bits);
    if kind > 7 {
        out.push(kind - 7);
    }
    out.extend(size_bytes);
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Str(text) => {
            control(out, 2, text.len());
            out.extend(text.as_bytes());
        }
        Value::U32(number) => {
            let bytes = number.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            control(out, 6, 4 - skip);
            out.extend(&bytes[skip..]);
        }
        Value::Map(pairs) => {
            control(out, 7, pairs.len());
            for (key, value) in pairs {
                encode(&Value::Str(key.clone()), out);
                encode(value, out);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(u32),
    Data(u32),
}

/// An IPv4 database of `networks` (address, prefix length, record).
pub fn write_ipv4(database_type: &str, networks: &[(Ipv4Addr, u8, Value)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty, Record::Empty]];
    for (address, prefix, value) in networks {
        let offset = data.len() as u32;
        encode(value, &mut data);
        let bits = u32::from(*address);
        let mut node = 0usize;
        for depth in 0..*prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *prefix {
                nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Record::Node(next) => next as usize,
                _ => {
                    nodes.push([Record::Empty, Record::Empty]);
                    let next = nodes.len() - 1;
                    nodes[node][bit] = Record::Node(next as u32);
                    next
                }
            };
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::new();
    for pair in &nodes {
        for record in pair {
            let value = match *record {
                Record::Empty => node_count,
                Record::Node(next) => next,
                Record::Data(offset) => node_count + 16 + offset,
            };
            out.extend(value.to_be_bytes());
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    let mut metadata = Vec::new();
    let pairs: Vec<(&str, Vec<u8>)> = vec![
        ("node_count", u32_field(node_count)),
        ("record_size", u16_field(32)),
        ("ip_version", u16_field(4)),
        ("database_type", {
            let mut v = Vec::new();
            encode(&Value::Str(database_type.to_string()), &mut v);
            v
        }),
        ("languages", {
            // An empty array: extended type 11.
            let mut v = Vec::new();
            control(&mut v, 11, 0);
            v
        }),
        ("binary_format_major_version", u16_field(2)),
        ("binary_format_minor_version", u16_field(0)),
        ("build_epoch", {
            // uint64: extended type 9.
            let mut v = Vec::new();
            control(&mut v, 9, 4);
            v.extend(1_700_000_000u32.to_be_bytes());
            v
        }),
        ("description", {
            let mut v = Vec::new();
            encode(
                &Value::Map(vec![("en".to_string(), Value::Str("clawgress test".to_string()))]),
                &mut v,
            );
            v
        }),
    ];
    control(&mut metadata, 7, pairs.len());
    for (key, value) in pairs {
        encode(&Value::Str(key.to_string()), &mut metadata);
        metadata.extend(value);
    }
    out.extend(metadata);
    out
}

fn u16_field(number: u16) -> Vec<u8> {
    let mut v = Vec::new();
    control(&mut v, 5, 2);
    v.extend(number.to_be_bytes());
    v
}

fn u32_field(number: u32) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&Value::U32(number), &mut v);
    v
}

/// An ASN database: each network with its `autonomous_system_number`.
pub fn asn_db(networks: &[(Ipv4Addr, u8, u32)]) -> Vec<u8> {
    let records: Vec<_> = networks
        .iter()
        .map(|(address, prefix, asn)| {
            (
                *address,
                *prefix,
                Value::Map(vec![
                    ("autonomous_system_number".to_string(), Value::U32(*asn)),
                    (
                        "autonomous_system_organization".to_string(),
                        Value::Str(format!("AS{asn} test")),
                    ),
                ]),
            )
        })
        .collect();
    write_ipv4("GeoLite2-ASN", &records)
}

/// A country database: each network with its `country.iso_code`.
pub fn country_db(networks: &[(Ipv4Addr, u8, &str)]) -> Vec<u8> {
    let records: Vec<_> = networks
        .iter()
        .map(|(address, prefix, code)| {
            (
                *address,
                *prefix,
                Value::Map(vec![(
                    "country".to_string(),
                    Value::Map(vec![("iso_code".to_string(), Value::Str(code.to_string()))]),
                )]),
            )
        })
        .collect();
    write_ipv4("GeoLite2-Country", &records)
}
