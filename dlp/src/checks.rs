//! Validators that turn a format match into a finding: checksums and
//! number rules where a pattern alone would flag ordinary numbers, and an
//! entropy floor where a pattern alone would flag ordinary words.

/// Luhn checksum over the digits of `text` (separators ignored).
pub fn luhn(text: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    let mut digits = 0;
    for &byte in text.iter().rev() {
        if !byte.is_ascii_digit() {
            continue;
        }
        let mut digit = u32::from(byte - b'0');
        if double {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
        double = !double;
        digits += 1;
    }
    digits > 0 && sum.is_multiple_of(10)
}

/// Whether the card number's leading digits belong to a card network, so a
/// Luhn-valid order number is not taken for a card.
pub fn card_network(digits: &[u8]) -> bool {
    let prefix = |n: usize| -> u32 { digits.iter().take(n).fold(0, |acc, d| acc * 10 + u32::from(d - b'0')) };
    let len = digits.len();
    match digits.first() {
        Some(b'4') => matches!(len, 13 | 16 | 19),
        Some(b'5') => (51..=55).contains(&prefix(2)) && len == 16,
        Some(b'2') => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(b'3') => {
            let two = prefix(2);
            (matches!(two, 34 | 37) && len == 15)
                || (two == 35 && (16..=19).contains(&len))
                || (matches!(two, 30 | 36 | 38 | 39) && (14..=19).contains(&len))
        }
        Some(b'6') => {
            let four = prefix(4);
            (four == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3))) && (16..=19).contains(&len)
        }
        _ => false,
    }
}

/// US Social Security number rules for `AAA-GG-SSSS` (digits only given):
/// no area 000, 666 or 900–999, no group 00, no serial 0000, and not one of
/// the numbers famously printed as examples.
pub fn ssn(digits: &[u8]) -> bool {
    if digits.len() != 9 {
        return false;
    }
    let number =
        |range: std::ops::Range<usize>| digits[range].iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let (area, group, serial) = (number(0..3), number(3..5), number(5..9));
    let advertised = matches!((area, group, serial), (78, 5, 1120) | (219, 9, 9999) | (123, 45, 6789));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !advertised
}

/// IBAN check: country letters, two check digits, 11–30 alphanumerics, and
/// the mod-97 remainder 1 (ISO 13616). Spaces are ignored.
pub fn iban(text: &[u8]) -> bool {
    let compact: Vec<u8> = text.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        || !IBAN_COUNTRIES.contains(&[compact[0], compact[1]])
    {
        return false;
    }
    let mut remainder = 0u32;
    for &byte in compact[4..].iter().chain(&compact[..4]) {
        let value = if byte.is_ascii_digit() {
            u32::from(byte - b'0')
        } else {
            u32::from(byte - b'A') + 10
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// The countries that issue IBANs (SWIFT registry), so `AB12...` words are not.
const IBAN_COUNTRIES: &[[u8; 2]] = &[
    *b"AD", *b"AE", *b"AL", *b"AT", *b"AZ", *b"BA", *b"BE", *b"BG", *b"BH", *b"BI", *b"BR", *b"BY", *b"CH", *b"CR",
    *b"CY", *b"CZ", *b"DE", *b"DJ", *b"DK", *b"DO", *b"EE", *b"EG", *b"ES", *b"FI", *b"FK", *b"FO", *b"FR", *b"GB",
    *b"GE", *b"GI", *b"GL", *b"GR", *b"GT", *b"HN", *b"HR", *b"HU", *b"IE", *b"IL", *b"IQ", *b"IS", *b"IT", *b"JO",
    *b"KW", *b"KZ", *b"LB", *b"LC", *b"LI", *b"LT", *b"LU", *b"LV", *b"LY", *b"MC", *b"MD", *b"ME", *b"MK", *b"MN",
    *b"MR", *b"MT", *b"MU", *b"NI", *b"NL", *b"NO", *b"OM", *b"PK", *b"PL", *b"PS", *b"PT", *b"QA", *b"RO", *b"RS",
    *b"RU", *b"SA", *b"SC", *b"SD", *b"SE", *b"SI", *b"SK", *b"SM", *b"SO", *b"ST", *b"SV", *b"TL", *b"TN", *b"TR",
    *b"UA", *b"VA", *b"VG", *b"XK", *b"YE",
];

/// Shannon entropy in bits per byte.
pub fn entropy(text: &[u8]) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &byte in text {
        counts[usize::from(byte)] += 1;
    }
    let len = text.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// A credential-looking value: long, mixed letters and digits, and random
/// enough that it is not a word or a name.
pub fn random_secret(value: &[u8]) -> bool {
    let letters = value.iter().any(u8::is_ascii_alphabetic);
    let digits = value.iter().any(u8::is_ascii_digit);
    letters && digits && value.len() >= 16 && entropy(value) >= 3.5
}

/// A JWT: its first segment is base64url JSON with an `alg`.
pub fn jwt(token: &[u8]) -> bool {
    use base64::Engine;
    let header = token.split(|b| *b == b'.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|value| value.get("alg").is_some())
}
