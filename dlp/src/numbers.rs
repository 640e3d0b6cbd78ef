//! Numbers with no keyword to find them by: cards, SSNs and phone numbers
//! (runs of digits with the separators people write them with, confirmed
//! by Luhn and the networks' prefixes, the SSN number rules, or a phone
//! layout) and IBANs (two capitals and two check digits, confirmed by
//! mod-97).
//!
//! Both are found from their digits, so one pass over the text serves
//! both (a separate IBAN pass stopped at every digit of the text, and cost
//! as much as the rest of the number scan): an IBAN's check digits follow a
//! capital letter, so they start a digit run, and the scan stops at every
//! run's start.

use crate::checks;
use crate::detectors::word;

/// A number-shaped finding from the byte scanner.
pub(crate) struct NumberMatch {
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// The first ASCII digit at or after `from`. Eight bytes at a time: most
/// of a body has no digits, and this is the scanner's inner loop.
fn next_digit(text: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = text.get(i..i + 8) {
        let flags = digit_flags(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        if flags != 0 {
            return Some(i + flags.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    text.get(i..)?.iter().position(u8::is_ascii_digit).map(|p| i + p)
}

/// The high bit of each byte of `word` set when that byte is an ASCII
/// digit (Bit Twiddling Hacks' hasbetween for 0x30..=0x39). With the high
/// bits masked off no byte borrows from or carries into its neighbour, so
/// every flag is exact and the lowest is the first digit (a plain
/// `hasbetween` only promises that some byte is in range).
fn digit_flags(word: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    let low = word & (ONES * 127);
    (ONES * (127 + 0x3A) - low) & !word & (low + ONES * (127 - 0x2F)) & (ONES * 128)
}

/// Every card, SSN, phone number and IBAN in `text`, in order of where
/// their scan found them.
pub(crate) fn numbers(text: &[u8], out: &mut Vec<NumberMatch>) {
    let mut from = 0;
    // IBAN candidates start at or after this digit (none inside an IBAN).
    let mut iban_from = 2;
    while let Some(digit) = next_digit(text, from) {
        // `+1 415…` and `(415) …` start one byte before their first digit.
        let i = if digit > 0 && matches!(text[digit - 1], b'+' | b'(') {
            digit - 1
        } else {
            digit
        };
        let byte = text[i];
        if i > 0 && (word(text[i - 1]) || text[i - 1] == b'.') {
            // An IBAN's check digits follow its country's capitals, so its
            // candidates are among these runs.
            if text[i - 1].is_ascii_uppercase()
                && digit >= iban_from
                && let Some(end) = iban(text, digit, out)
            {
                iban_from = end;
            }
            // Inside a word or a decimal: skip the rest of this digit run.
            from = digit + text[digit..].iter().take_while(|b| b.is_ascii_digit()).count().max(1);
            continue;
        }
        // The run: digits, and single separators between them.
        let mut end = i + 1;
        let mut digits = usize::from(byte.is_ascii_digit());
        while end < text.len() {
            let b = text[end];
            if b.is_ascii_digit() {
                digits += 1;
                end += 1;
            } else if matches!(b, b' ' | b'-' | b'.' | b')')
                && text.get(end + 1).is_some_and(|n| n.is_ascii_digit() || *n == b' ')
            {
                end += 1;
            } else {
                break;
            }
        }
        while end > i && !text[end - 1].is_ascii_digit() {
            end -= 1;
        }
        if (9..=19).contains(&digits)
            && !text.get(end).is_some_and(|b| word(*b))
            && let Some((kind, confidence)) = classify_number(&text[i..end])
        {
            out.push(NumberMatch {
                kind,
                start: i,
                end,
                confidence,
            });
        }
        from = end.max(digit + 1);
    }
}

fn classify_number(run: &[u8]) -> Option<(&'static str, f32)> {
    let mut digits = [0u8; 19];
    let mut count = 0;
    let mut separator = None;
    let mut mixed = false;
    for &b in run {
        if b.is_ascii_digit() {
            if count == digits.len() {
                return None;
            }
            digits[count] = b;
            count += 1;
        } else {
            mixed |= separator.is_some_and(|s| s != b);
            separator = Some(b);
        }
    }
    let digits = &digits[..count];
    // Cards: 13-19 digits, ungrouped or grouped by one kind of separator.
    if (13..=19).contains(&count)
        && run[0].is_ascii_digit()
        && !mixed
        && separator.is_none_or(|s| matches!(s, b' ' | b'-'))
        && checks::card_network(digits)
        && checks::luhn(digits)
    {
        return Some(("credit_card", 0.9));
    }
    // SSN: AAA-GG-SSSS (or with spaces), valid by the number rules.
    if count == 9 && run.len() == 11 && matches!(run[3], b'-' | b' ') && run[6] == run[3] && checks::ssn(digits) {
        return Some(("us_ssn", 0.8));
    }
    // Phones: +E.164 (8-15 digits), or a North American (NNN) NNN-NNNN /
    // NNN-NNN-NNNN layout.
    if run[0] == b'+' && (8..=15).contains(&count) && run[1] != b'0' {
        return Some(("phone", 0.7));
    }
    if count == 10 && nanp_layout(run) {
        return Some(("phone", 0.6));
    }
    None
}

fn nanp_layout(run: &[u8]) -> bool {
    let layouts: [&[u8]; 4] = [b"(ddd) ddd-dddd", b"ddd-ddd-dddd", b"ddd.ddd.dddd", b"(ddd)ddd-dddd"];
    layouts.iter().any(|layout| {
        layout.len() == run.len()
            && layout
                .iter()
                .zip(run)
                .all(|(l, r)| if *l == b'd' { r.is_ascii_digit() } else { l == r })
    }) && !matches!(run.iter().find(|b| b.is_ascii_digit()), Some(b'0' | b'1'))
}

/// The IBAN whose check digits start at `digit`, if there is one: two
/// capitals at a word start, two digits, then groups of letters and digits
/// (optionally in fours separated by spaces). Returns where it ends.
fn iban(text: &[u8], digit: usize, out: &mut Vec<NumberMatch>) -> Option<usize> {
    if digit < 2 || digit + 13 > text.len() {
        return None;
    }
    let i = digit - 2;
    let candidate = text[i].is_ascii_uppercase()
        && text[i + 1].is_ascii_uppercase()
        && text[i + 3].is_ascii_digit()
        && (i == 0 || !word(text[i - 1]));
    if !candidate {
        return None;
    }
    let mut end = i + 4;
    while end < text.len() && end - i < 42 {
        let b = text[end];
        let alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
        // Letters and digits, and single spaces between groups.
        if alnum(&b) || (b == b' ' && text.get(end + 1).is_some_and(alnum)) {
            end += 1;
        } else {
            break;
        }
    }
    // A trailing group may belong to the next word: try the longest first.
    let mut stop = end;
    while stop >= i + 15 {
        if (stop == text.len() || !word(text[stop])) && checks::iban(&text[i..stop]) {
            out.push(NumberMatch {
                kind: "iban",
                start: i,
                end: stop,
                confidence: 0.95,
            });
            return Some(stop);
        }
        match text[i..stop].iter().rposition(|b| *b == b' ') {
            Some(space) if i + space >= i + 15 => stop = i + space,
            _ => break,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_flags_are_exact() {
        for byte in 0..=255u8 {
            for k in 0..8 {
                let flag = if byte.is_ascii_digit() { 0x80 << (8 * k) } else { 0 };
                // Next to non-digits and next to digits, to catch a borrow or
                // carry between bytes.
                for other in [b'x', b'7', 0xff, 0x2f, 0x3a] {
                    let mut word = [other; 8];
                    word[k] = byte;
                    let others = if other.is_ascii_digit() {
                        !(0xff << (8 * k)) & (u64::MAX / 255 * 128)
                    } else {
                        0
                    };
                    assert_eq!(
                        digit_flags(u64::from_le_bytes(word)),
                        flag | others,
                        "{byte:#x} at {k} among {other:#x}"
                    );
                }
            }
        }
        let pattern = b"a1b22c333 \xff9x/:";
        let text: Vec<u8> = (0..300).map(|i| pattern[i * 7 % pattern.len()]).collect();
        for from in 0..=text.len() + 1 {
            let expect = text.iter().skip(from).position(u8::is_ascii_digit).map(|p| from + p);
            assert_eq!(next_digit(&text, from), expect, "from {from}");
        }
    }
}
