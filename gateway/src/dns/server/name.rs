//! A question's name, read once: the host the policy compares, the text the
//! audit shows, and whether the name is shaped like DNS exfiltration.
//!
//! Exfiltration over DNS hides data in labels: long ones (up to the 63-byte
//! limit), encoded so they look random. Two signals, per label: longer than
//! [`LONG_LABEL`] bytes, or an unbroken run (no `-` or `_`) of at least
//! [`ENTROPY_MIN_LABEL`] bytes that is base32 / base64-like (Shannon
//! entropy of [`HIGH_ENTROPY_BITS`] bits per character or more) or mixed
//! hex digits. Measured on names people choose, like
//! `thisisaverylongdomainlabel` (3.8 bits) and `productionkubernetescluster`
//! (3.6), against random base32 of 24+ characters (3.9 to 4.5) and hex (3.3
//! to 3.9, hence its own test): a signal for an alert, not a verdict.

use hickory_server::proto::rr::Name;

use clawgress_policies::domain::normalize_domain;

/// Longer labels are an alert on their own (the limit is 63).
pub(super) const LONG_LABEL: usize = 50;
/// Shorter labels carry too few characters for entropy to mean anything.
pub(super) const ENTROPY_MIN_LABEL: usize = 24;
pub(super) const HIGH_ENTROPY_BITS: f64 = 4.0;

/// The name of one question.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct QueryName {
    /// Normalized for the policy (lowercase, no trailing dot); `None` when
    /// the name is not a host name at all (odd bytes, empty, the root).
    pub host: Option<String>,
    /// For the audit: lowercase, other bytes as `\DDD` (zone-file escapes).
    pub text: String,
    /// `long_label` or `high_entropy_label`.
    pub alert: Option<&'static str>,
}

impl QueryName {
    pub(super) fn read(name: &Name) -> QueryName {
        let mut text = String::with_capacity(name.len());
        let mut plain = true;
        let mut alert = None;
        for (i, label) in name.iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            for &byte in label {
                let byte = byte.to_ascii_lowercase();
                if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                    text.push(char::from(byte));
                } else {
                    plain = false;
                    text.push_str(&format!("\\{byte:03}"));
                }
            }
            alert = alert.or_else(|| label_alert(label));
        }
        if text.is_empty() {
            // The root, as zone files write it.
            return QueryName {
                host: None,
                text: ".".to_string(),
                alert,
            };
        }
        let host = plain.then(|| normalize_domain(&text).ok()).flatten();
        QueryName { host, text, alert }
    }
}

/// Why a label looks like encoded data, if it does.
pub(super) fn label_alert(label: &[u8]) -> Option<&'static str> {
    if label.len() > LONG_LABEL {
        return Some("long_label");
    }
    // Encoders emit unbroken runs; hyphens and underscores separate words
    // people chose (`internal-my-lb-1234567890` has plenty of distinct
    // characters, but no long run of them).
    let run = label
        .split(|b| *b == b'-' || *b == b'_')
        .max_by_key(|run| run.len())
        .unwrap_or(label);
    if run.len() < ENTROPY_MIN_LABEL {
        return None;
    }
    let bits = shannon_bits(run);
    (bits >= HIGH_ENTROPY_BITS || looks_like_hex(run, bits)).then_some("high_entropy_label")
}

/// Bits per byte of the label's own byte distribution.
pub(super) fn shannon_bits(label: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &byte in label {
        counts[usize::from(byte.to_ascii_lowercase())] += 1;
    }
    let len = label.len() as f64;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f64::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

/// Hex caps entropy at 4 bits, so random hex scores below base32; a long
/// label of hex digits mixing numbers and letters is encoded data.
fn looks_like_hex(label: &[u8], bits: f64) -> bool {
    let digits = label.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = label.len() - digits;
    label.iter().all(u8::is_ascii_hexdigit) && digits * 4 >= label.len() && letters * 4 >= label.len() && bits >= 3.0
}
