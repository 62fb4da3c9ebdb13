//! SentencePiece (BPE-style) as llama.cpp runs it: start from single codepoints and keep
//! merging the adjacent pair whose concatenation is the highest-scoring token.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::bpe::utf8_len;

/// What the merge loop needs from the vocabulary.
pub(crate) trait SpmVocab {
    fn token_id(&self, text: &[u8]) -> Option<u32>;
    fn score(&self, id: u32) -> f32;
    /// The token for a raw byte (`<0xXX>`), if any.
    fn byte_token(&self, b: u8) -> Option<u32>;
}

/// Tokenizes `text` (spaces already replaced by U+2581) and appends the ids to `out`.
pub(crate) fn encode(text: &[u8], vocab: &dyn SpmVocab, out: &mut Vec<u32>) {
    let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
    let mut off = 0;
    while off < text.len() {
        let n = utf8_len(text[off]).min(text.len() - off);
        let i = syms.len() as i32;
        syms.push(Symbol {
            start: off,
            len: n,
            prev: i - 1,
            next: if off + n == text.len() { -1 } else { i + 1 },
        });
        off += n;
    }

    let mut queue = BinaryHeap::with_capacity(syms.len());
    for i in 1..syms.len() {
        push_bigram(text, &syms, i as i32 - 1, i as i32, vocab, &mut queue);
    }
    while let Some(bg) = queue.pop() {
        let (l, r) = (bg.left as usize, bg.right as usize);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        if syms[r].next >= 0 {
            let nx = syms[r].next as usize;
            syms[nx].prev = bg.left;
        }
        push_bigram(text, &syms, syms[l].prev, bg.left, vocab, &mut queue);
        push_bigram(text, &syms, bg.left, syms[l].next, vocab, &mut queue);
    }

    // Every merged symbol is a token by construction; only single codepoints may not be,
    // and those are spelled with byte tokens.
    for s in syms.iter().filter(|s| s.len > 0) {
        let piece = &text[s.start..s.start + s.len];
        match vocab.token_id(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.iter().filter_map(|&b| vocab.byte_token(b))),
        }
    }
}

fn push_bigram(
    text: &[u8],
    syms: &[Symbol],
    left: i32,
    right: i32,
    vocab: &dyn SpmVocab,
    queue: &mut BinaryHeap<Bigram>,
) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (&syms[left as usize], &syms[right as usize]);
    let size = l.len + r.len;
    if let Some(id) = vocab.token_id(&text[l.start..l.start + size]) {
        queue.push(Bigram {
            score: vocab.score(id),
            left,
            right,
            size,
        });
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}

impl Ord for Bigram {
    /// The heap pops the highest score first, then the leftmost pair. Scores compare with `<`
    /// as in C (so -0.0 equals 0.0); a NaN compares equal to everything.
    fn cmp(&self, o: &Self) -> Ordering {
        let by_score = if self.score < o.score {
            Ordering::Less
        } else if self.score > o.score {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        by_score.then(o.left.cmp(&self.left))
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

    struct V(Vec<(&'static str, f32)>);
    impl SpmVocab for V {
        fn token_id(&self, t: &[u8]) -> Option<u32> {
            self.0
                .iter()
                .position(|(s, _)| s.as_bytes() == t)
                .map(|i| i as u32)
        }
        fn score(&self, id: u32) -> f32 {
            self.0[id as usize].1
        }
        fn byte_token(&self, b: u8) -> Option<u32> {
            self.token_id(format!("<0x{b:02X}>").as_bytes())
        }
    }

    fn run(v: &V, text: &str) -> Vec<&'static str> {
        let mut out = vec![];
        encode(text.as_bytes(), v, &mut out);
        out.iter().map(|&i| v.0[i as usize].0).collect()
    }

    #[test]
    fn highest_score_merges_first() {
        let base = [("a", 0.0), ("b", 0.0), ("c", 0.0)];
        let with = |extra: &[(&'static str, f32)]| V(base.iter().chain(extra).copied().collect());
        assert_eq!(
            run(&with(&[("ab", -1.0), ("bc", -0.5)]), "abc"),
            ["a", "bc"]
        );
        assert_eq!(
            run(&with(&[("ab", -0.1), ("bc", -0.5)]), "abc"),
            ["ab", "c"]
        );
        // Once merged, the pair's merge with its neighbour is tried too.
        assert_eq!(
            run(&with(&[("ab", -1.0), ("bc", -0.5), ("abc", -3.0)]), "abc"),
            ["abc"]
        );
    }

    #[test]
    fn missing_codepoints_become_byte_tokens() {
        let v = V(vec![("a", 0.0), ("<0xC3>", 0.0), ("<0xA9>", 0.0)]);
        assert_eq!(run(&v, "a\u{e9}"), ["a", "<0xC3>", "<0xA9>"]);
    }
}
