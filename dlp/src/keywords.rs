//! The keyword prefilter: where in the text a detector's regex is worth
//! running.
//!
//! One case-insensitive automaton over every keyword used to read every
//! byte of the text: words like `token` start with common letters in both
//! cases, so its prefilter could skip little. The keywords are now found
//! in three groups, each its own fast way:
//!
//! - token prefixes (`AKIA`, `ghp_`, `sk-ant-`), which match exactly: a
//!   case-sensitive packed (Teddy, SIMD) searcher, which skips most of the
//!   text on the prefixes' first bytes;
//! - the words that name a value (`password`), which match in any case: the
//!   same kind of searcher over a lowercased copy of the text, made a block
//!   at a time;
//! - single bytes (`@`): `memchr`, since a one-byte pattern would make the
//!   packed searcher stop at every byte that shares a bucket with it.
//!
//! Every position where a keyword starts is reported, with the longest
//! keyword there (`sk-ant-` over `sk-`). Hits may overlap, so no keyword is
//! hidden inside another's match.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Input, MatchKind, Span, packed};

use crate::detectors::{Detector, Shape};

/// How much text is lowercased at a time for the case-insensitive words:
/// small enough to stay in L1, large enough that a search's setup is noise.
const BLOCK: usize = 4096;

/// A keyword found: its detector and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub detector: usize,
    pub start: usize,
    pub end: usize,
}

/// The keywords of every detector, grouped by how they are found.
pub(crate) struct Keywords {
    /// Token prefixes, matched exactly, and each one's detector.
    prefixes: Option<Finder>,
    prefix_owner: Vec<usize>,
    /// Words matched in any case (lowercased here), and their detectors.
    words: Option<Finder>,
    word_owner: Vec<usize>,
    longest_word: usize,
    /// Single-byte keywords and their detectors.
    bytes: Vec<(u8, usize)>,
}

impl Keywords {
    pub fn new(detectors: &[Detector]) -> Keywords {
        let mut prefixes = Vec::new();
        let mut prefix_owner = Vec::new();
        let mut words = Vec::new();
        let mut word_owner = Vec::new();
        let mut bytes = Vec::new();
        for (index, detector) in detectors.iter().enumerate() {
            for keyword in detector.keywords {
                if matches!(detector.shape, Shape::Named) {
                    words.push(keyword.to_ascii_lowercase());
                    word_owner.push(index);
                } else if let [byte] = keyword.as_bytes() {
                    bytes.push((*byte, index));
                } else {
                    prefixes.push(keyword.to_string());
                    prefix_owner.push(index);
                }
            }
        }
        assert!(bytes.len() <= 3, "memchr looks for at most three single-byte keywords");
        Keywords {
            prefixes: Finder::new(&prefixes),
            prefix_owner,
            longest_word: words.iter().map(String::len).max().unwrap_or(0),
            words: Finder::new(&words),
            word_owner,
            bytes,
        }
    }

    /// Every keyword in `text`, grouped by kind rather than in order.
    pub fn find(&self, text: &[u8], mut hit: impl FnMut(Hit)) {
        if let Some(prefixes) = &self.prefixes {
            prefixes.each(text, |pattern, start, end| {
                hit(Hit {
                    detector: self.prefix_owner[pattern],
                    start,
                    end,
                })
            });
        }
        if let Some(words) = &self.words {
            self.find_words(words, text, &mut hit);
        }
        let mut byte_hit = |at: usize| {
            if let Some(&(_, detector)) = self.bytes.iter().find(|(byte, _)| *byte == text[at]) {
                hit(Hit {
                    detector,
                    start: at,
                    end: at + 1,
                });
            }
        };
        match *self.bytes.as_slice() {
            [] => {}
            [(a, _)] => memchr::memchr_iter(a, text).for_each(&mut byte_hit),
            [(a, _), (b, _)] => memchr::memchr2_iter(a, b, text).for_each(&mut byte_hit),
            [(a, _), (b, _), (c, _), ..] => memchr::memchr3_iter(a, b, c, text).for_each(&mut byte_hit),
        }
    }

    /// The case-insensitive words, found in a lowercased copy made a block
    /// at a time in one small buffer (a copy of the whole text cost page
    /// faults and cache misses). Each block is searched with the bytes
    /// after it that a word starting in it may need; a word starting in
    /// those bytes is left to the next block. Lowercasing moves no offsets.
    fn find_words(&self, words: &Finder, text: &[u8], hit: &mut impl FnMut(Hit)) {
        let mut lower = Vec::with_capacity(BLOCK + self.longest_word);
        let mut block = 0;
        while block < text.len() {
            let own = BLOCK.min(text.len() - block);
            let end = text.len().min(block + own + self.longest_word.saturating_sub(1));
            lower.clear();
            lower.extend(text[block..end].iter().map(u8::to_ascii_lowercase));
            words.each(&lower, |pattern, start, end| {
                if start < own {
                    hit(Hit {
                        detector: self.word_owner[pattern],
                        start: block + start,
                        end: block + end,
                    });
                }
            });
            block += own;
        }
    }
}

/// A multi-pattern searcher for the longest pattern at each position: the
/// packed SIMD searcher where the CPU has one, else an Aho-Corasick DFA.
enum Finder {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Finder {
    fn new(patterns: &[String]) -> Option<Finder> {
        if patterns.is_empty() {
            return None;
        }
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build();
        Some(packed.map_or_else(|| Finder::automaton(patterns), Finder::Packed))
    }

    fn automaton(patterns: &[String]) -> Finder {
        Finder::Automaton(
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(Some(AhoCorasickKind::DFA))
                .build(patterns)
                .expect("the keyword set is small and valid"),
        )
    }

    /// Calls `f(pattern, start, end)` for each position where a pattern
    /// starts, with the longest pattern there.
    fn each(&self, text: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        let mut from = 0;
        while from < text.len() {
            let found = match self {
                Finder::Packed(searcher) => searcher.find_in(text, Span::from(from..text.len())),
                Finder::Automaton(automaton) => automaton.find(Input::new(text).range(from..)),
            };
            let Some(found) = found else { break };
            f(found.pattern().as_usize(), found.start(), found.end());
            // On from the next byte, not from the end of this keyword, so
            // that overlapping keywords are all seen.
            from = found.start() + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(finder: &Finder, text: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut hits = Vec::new();
        finder.each(text, |pattern, start, end| hits.push((pattern, start, end)));
        hits
    }

    #[test]
    fn the_packed_searcher_and_the_automaton_agree() {
        let patterns: Vec<String> = ["sk-", "sk-ant-", "-----BEGIN ", "AKIA", "eyJ", "ghp_"]
            .iter()
            .map(|p| p.to_string())
            .collect();
        let text = b"sk-ant-x sk-----BEGIN AKIAAKIA eyJeyJ ghp_sk- task-force ".repeat(9);
        let packed = Finder::new(&patterns).expect("patterns");
        let automaton = Finder::automaton(&patterns);
        let found = hits(&automaton, &text);
        assert_eq!(hits(&packed, &text), found);
        // The longest keyword at a place, and overlapping ones.
        assert_eq!(found[0], (1, 0, 7));
        assert!(found.contains(&(0, 9, 12)) && found.contains(&(2, 11, 22)), "{found:?}");
    }

    #[test]
    fn words_are_found_in_any_case_across_blocks() {
        let detectors = crate::detectors::keyword_detectors();
        let keywords = Keywords::new(&detectors);
        let mut text = vec![b'x'; 3 * BLOCK];
        // A word on each side of a block boundary, across one, and at the end.
        for (at, word) in [
            (BLOCK - 8, "PassWord"),
            (2 * BLOCK - 3, "TOKEN"),
            (3 * BLOCK - 6, "secret"),
        ] {
            text[at..at + word.len()].copy_from_slice(word.as_bytes());
        }
        let mut found = Vec::new();
        keywords.find(&text, |hit| found.push((hit.start, hit.end)));
        found.sort_unstable();
        assert_eq!(
            found,
            vec![
                (BLOCK - 8, BLOCK),
                (2 * BLOCK - 3, 2 * BLOCK + 2),
                (3 * BLOCK - 6, 3 * BLOCK)
            ]
        );
    }
}
