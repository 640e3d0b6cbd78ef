//! Test-only helpers shared by the fuzz-style property tests: a tiny seeded PRNG
//! and byte mutators. Deterministic on purpose: a failing case prints its seed and
//! input and reproduces on every run, with no dependency beyond std.

/// xorshift64* (Vigna): tiny, fast, and good enough to pick mutations. Not for
/// anything that needs real randomness.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // A zero state would stay zero forever; splitmix the seed so nearby seeds
        // do not start out correlated.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 1 } else { z })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n`; `n` must be non-zero.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        // The high bits of xorshift64* are the good ones.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Inclusive range.
    pub(crate) fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True with probability `1 / n`.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub(crate) fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A string of `len` characters drawn from `alphabet`.
    pub(crate) fn string_from(&mut self, alphabet: &[char], len: usize) -> String {
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }

    /// Applies 1..=`max_edits` random edits to `data`: bit flips, byte
    /// replacements (random or from `dictionary`), insertions, deletions,
    /// duplicated or swapped ranges, and truncation.
    pub(crate) fn mutate(&mut self, data: &mut Vec<u8>, dictionary: &[u8], max_edits: usize) {
        for _ in 0..self.range(1, max_edits.max(1)) {
            self.mutate_once(data, dictionary);
        }
    }

    fn mutate_once(&mut self, data: &mut Vec<u8>, dictionary: &[u8]) {
        let len = data.len();
        let interesting = |rng: &mut Rng| {
            if dictionary.is_empty() || rng.one_in(4) {
                rng.byte()
            } else {
                *rng.pick(dictionary)
            }
        };
        match self.below(7) {
            0 if len > 0 => {
                let at = self.below(len);
                data[at] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let at = self.below(len);
                data[at] = interesting(self);
            }
            2 => {
                let at = self.below(len + 1);
                let byte = interesting(self);
                data.insert(at, byte);
            }
            3 if len > 0 => {
                let start = self.below(len);
                let end = self.range(start + 1, len.min(start + 8));
                data.drain(start..end);
            }
            4 if len > 0 => {
                let start = self.below(len);
                let end = self.range(start + 1, len.min(start + 16));
                let copy = data[start..end].to_vec();
                let at = self.below(len + 1);
                data.splice(at..at, copy);
            }
            5 if len > 1 => {
                let (a, b) = (self.below(len), self.below(len));
                data.swap(a, b);
            }
            6 if len > 0 => {
                let keep = self.below(len);
                data.truncate(keep);
            }
            _ => data.push(interesting(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_different_seeds_differ() {
        let stream = |seed| {
            let mut rng = Rng::new(seed);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(stream(7), stream(7));
        assert_ne!(stream(7), stream(8));
        assert!(stream(0).iter().all(|&x| x != 0), "seed 0 must not stick at zero");
    }

    #[test]
    fn below_covers_its_range_and_stays_in_it() {
        let mut rng = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn mutate_changes_or_keeps_bytes_without_panicking_on_empty_input() {
        let mut rng = Rng::new(3);
        let mut changed = 0;
        for _ in 0..1000 {
            let mut data = b"abc".to_vec();
            if rng.one_in(10) {
                data.clear();
            }
            let before = data.clone();
            rng.mutate(&mut data, b".:[]", 3);
            changed += usize::from(data != before);
        }
        assert!(changed > 900, "{changed}");
    }
}
