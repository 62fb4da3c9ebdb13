//! Byte-level BPE: merge the codepoints of each pre-tokenized word by merge rank.
//!
//! Strings are interned once at load: every token text gets its token id as its "piece id",
//! and strings that occur only in merges get ids above the vocabulary. A merge is then a
//! lookup of an id pair, and the hot loop never builds or hashes a string.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::hash::FxMap;

const NO_PIECE: u32 = u32::MAX;

/// The merge table.
pub(crate) struct Bpe {
    /// Strings that appear in merges but are not tokens, with ids from `n_tokens` up.
    extra_pieces: FxMap<Box<[u8]>, u32>,
    /// (left piece, right piece) -> (rank, merged piece).
    merges: FxMap<(u32, u32), (u32, u32)>,
    n_tokens: u32,
}

impl Bpe {
    /// Builds the table; `token_id` finds a token by its text.
    pub fn new(merges: &[Vec<u8>], n_tokens: u32, token_id: &dyn Fn(&[u8]) -> Option<u32>) -> Bpe {
        let mut bpe = Bpe {
            extra_pieces: FxMap::default(),
            merges: FxMap::default(),
            n_tokens,
        };
        let intern = |bpe: &mut Bpe, s: &[u8]| -> u32 {
            if let Some(id) = token_id(s) {
                return id;
            }
            let next = n_tokens + bpe.extra_pieces.len() as u32;
            *bpe.extra_pieces.entry(s.into()).or_insert(next)
        };
        for (rank, m) in merges.iter().enumerate() {
            // "left right", split at the first space after the first byte (a left side may
            // itself be a space in some vocabularies). A line without one merges nothing.
            let Some(sp) = m.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&m[..sp], &m[sp + 1..]);
            let l = intern(&mut bpe, left);
            let r = intern(&mut bpe, right);
            let merged = intern(
                &mut bpe,
                &m[..sp].iter().chain(right).copied().collect::<Vec<u8>>(),
            );
            // The first (best) rank wins when a pair is listed twice.
            bpe.merges.entry((l, r)).or_insert((rank as u32, merged));
        }
        bpe
    }

    fn piece_id(&self, s: &[u8], token_id: &dyn Fn(&[u8]) -> Option<u32>) -> u32 {
        token_id(s)
            .or_else(|| self.extra_pieces.get(s).copied())
            .unwrap_or(NO_PIECE)
    }

    /// Merges one word (already byte-encoded) and appends its tokens to `out`.
    /// `token_id` finds a token by its text.
    pub fn encode_word(
        &self,
        word: &[u8],
        token_id: &dyn Fn(&[u8]) -> Option<u32>,
        out: &mut Vec<u32>,
    ) {
        let mut syms: Vec<Symbol> = Vec::with_capacity(word.len());
        let mut off = 0;
        while off < word.len() {
            let n = utf8_len(word[off]).min(word.len() - off);
            let i = syms.len() as i32;
            syms.push(Symbol {
                start: off as u32,
                len: n as u32,
                piece: self.piece_id(&word[off..off + n], token_id),
                prev: i - 1,
                next: if off + n == word.len() { -1 } else { i + 1 },
            });
            off += n;
        }

        let mut queue = BinaryHeap::with_capacity(syms.len());
        for i in 1..syms.len() {
            self.push_bigram(&syms, i as i32 - 1, i as i32, &mut queue);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (bg.left as usize, bg.right as usize);
            // Skip a pair whose sides changed since it was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[l].piece = bg.merged;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if syms[r].next >= 0 {
                let nx = syms[r].next as usize;
                syms[nx].prev = bg.left;
            }
            self.push_bigram(&syms, syms[l].prev, bg.left, &mut queue);
            self.push_bigram(&syms, bg.left, syms[l].next, &mut queue);
        }

        for s in syms.iter().filter(|s| s.len > 0) {
            if s.piece < self.n_tokens {
                out.push(s.piece);
                continue;
            }
            // Not a token: fall back to single-byte tokens where they exist (as llama.cpp).
            let bytes = &word[s.start as usize..(s.start + s.len) as usize];
            for &b in bytes {
                if let Some(t) = token_id(&[b]) {
                    out.push(t);
                }
            }
        }
    }

    fn push_bigram(&self, syms: &[Symbol], left: i32, right: i32, queue: &mut BinaryHeap<Bigram>) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (&syms[left as usize], &syms[right as usize]);
        if l.piece == NO_PIECE || r.piece == NO_PIECE {
            return;
        }
        if let Some(&(rank, merged)) = self.merges.get(&(l.piece, r.piece)) {
            queue.push(Bigram {
                rank,
                left,
                right,
                size: l.len + r.len,
                merged,
            });
        }
    }
}

/// Length of a UTF-8 sequence from its first byte (continuation bytes count as 1).
pub(crate) fn utf8_len(b: u8) -> usize {
    match b >> 4 {
        0xC | 0xD => 2,
        0xE => 3,
        0xF => 4,
        _ => 1,
    }
}

struct Symbol {
    start: u32,
    len: u32,
    piece: u32,
    prev: i32,
    next: i32,
}

#[derive(PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: i32,
    right: i32,
    size: u32,
    merged: u32,
}

impl Ord for Bigram {
    /// The heap pops the lowest rank first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(tokens: &[&str], merges: &[&str], word: &str) -> Vec<String> {
        let map: HashMap<Vec<u8>, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_bytes().to_vec(), i as u32))
            .collect();
        let lookup = |s: &[u8]| map.get(s).copied();
        let merges: Vec<Vec<u8>> = merges.iter().map(|m| m.as_bytes().to_vec()).collect();
        let bpe = Bpe::new(&merges, tokens.len() as u32, &lookup);
        let mut out = vec![];
        bpe.encode_word(word.as_bytes(), &lookup, &mut out);
        out.iter()
            .map(|&i| tokens[i as usize].to_string())
            .collect()
    }

    #[test]
    fn merges_by_rank_not_position() {
        let toks = ["a", "b", "c", "ab", "bc", "abc"];
        // "b c" outranks "a b": a + bc, then no "a bc" merge.
        assert_eq!(run(&toks, &["b c", "a b"], "abc"), ["a", "bc"]);
        assert_eq!(run(&toks, &["a b", "b c", "ab c"], "abc"), ["abc"]);
    }

    #[test]
    fn equal_rank_pairs_merge_leftmost_first() {
        let toks = ["a", "aa", "aaa"];
        assert_eq!(run(&toks, &["a a"], "aaa"), ["aa", "a"]);
        assert_eq!(run(&toks, &["a a"], "aaaa"), ["aa", "aa"]);
    }

    #[test]
    fn unknown_symbols_fall_back_to_byte_tokens_or_vanish() {
        let toks = ["a", "x"];
        assert_eq!(run(&toks, &[], "a\u{e9}x"), ["a", "x"]);
    }

    #[test]
    fn intermediate_non_token_pieces_still_merge() {
        // "b c" yields "bc", which is not a token, but "a bc" is a merge to a token.
        let toks = ["a", "b", "c", "abc"];
        assert_eq!(run(&toks, &["b c", "a bc"], "abc"), ["abc"]);
    }
}
