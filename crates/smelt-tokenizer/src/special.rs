//! Special tokens: attributes, the end-of-generation set, and splitting text at special-token
//! strings before the tokenizer proper sees it.

use std::ops::Range;

use crate::hash::FxMap;
use crate::strtable::StrTable;

/// Token attribute bits (a token may gain CONTROL or UNUSED on top of its file type).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;

    /// The attribute a GGUF `token_type` value stands for (unknown values: none).
    pub fn from_type(t: i32) -> u16 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

// ---- recognising special tokens by their text ----------------------------------------------
//
// GGUF files often lack ids for end-of-turn and fill-in-the-middle tokens; like llama.cpp we
// recognise the usual spellings. Each list is the set of texts llama.cpp looks for.

pub(crate) const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
pub(crate) const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
pub(crate) const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
pub(crate) const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
pub(crate) const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
pub(crate) const FIM_PAD_TEXTS: &[&str] =
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
pub(crate) const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
pub(crate) const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts that end generation whatever the metadata says.
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts always rendered as text (gpt-oss's channel markup).
pub(crate) const ALWAYS_RENDERED_TEXTS: &[&str] =
    &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

// ---- splitting text at special tokens ------------------------------------------------------

/// A piece of the input: raw text (a byte range) or a special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// The special tokens (control, user-defined, unknown), longest text first, with a trie over
/// their texts to find quickly which ones occur in a given text at all.
pub(crate) struct SpecialSplitter {
    /// (token id, its attributes), longest text first; ties by id.
    order: Vec<(u32, u16)>,
    /// Trie: (node, byte) -> child node; node 0 is the root.
    edges: FxMap<(u32, u8), u32>,
    /// For each trie node, the position in `order` of the token whose text ends there.
    terminal: Vec<Option<u32>>,
    /// Bytes that start some special token.
    first_bytes: [bool; 256],
}

impl SpecialSplitter {
    pub fn new(texts: &StrTable, attrs: &[u16]) -> SpecialSplitter {
        let special = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut order: Vec<(u32, u16)> = (0..texts.len())
            .filter(|&i| attrs[i] & special != 0)
            .map(|i| (i as u32, attrs[i]))
            .collect();
        // llama.cpp sorts by length only (unstable); equal-length special tokens that overlap
        // in a text are the only case where the tie order could matter.
        order.sort_by(|a, b| {
            texts
                .get(b.0)
                .len()
                .cmp(&texts.get(a.0).len())
                .then(a.0.cmp(&b.0))
        });

        let mut s = SpecialSplitter {
            order,
            edges: FxMap::default(),
            terminal: vec![None],
            first_bytes: [false; 256],
        };
        for pos in 0..s.order.len() {
            let text = texts.get(s.order[pos].0);
            if text.is_empty() {
                continue;
            }
            s.first_bytes[text[0] as usize] = true;
            let mut node = 0u32;
            for &b in text {
                let next = s.terminal.len() as u32;
                node = *s.edges.entry((node, b)).or_insert_with(|| next);
                if node == next {
                    s.terminal.push(None);
                }
            }
            // A duplicate text keeps the first token in `order`.
            s.terminal[node as usize].get_or_insert(pos as u32);
        }
        s
    }

    /// Splits `text` at special-token strings: longest tokens first, each token taking its
    /// leftmost non-overlapping occurrences in the text no longer token has taken (llama.cpp's
    /// `tokenizer_st_partition`). Without `parse_special`, only user-defined tokens split.
    ///
    /// llama.cpp rescans every remaining fragment once per special token; here one trie pass
    /// lists every occurrence of every special token, and the same rule is applied to that
    /// list: a token's occurrences are taken left to right when they lie wholly in unclaimed
    /// text and start after the token's previous taken occurrence.
    pub fn split(&self, text: &[u8], texts: &StrTable, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        // Start positions of every occurrence, per token (keyed by position in `order`).
        let occ = self.occurrences(text, parse_special);
        let mut tokens: Vec<u32> = occ.keys().copied().collect();
        tokens.sort_unstable();

        let mut claimed = vec![false; text.len()];
        let mut taken: Vec<(usize, usize, u32)> = Vec::new(); // (start, end, token id)
        for pos in tokens {
            let id = self.order[pos as usize].0;
            let len = texts.get(id).len();
            let mut cursor = 0;
            for &start in &occ[&pos] {
                if start >= cursor && !claimed[start..start + len].contains(&true) {
                    claimed[start..start + len].fill(true);
                    taken.push((start, start + len, id));
                    cursor = start + len;
                }
            }
        }
        taken.sort_unstable();

        let mut frags = Vec::with_capacity(2 * taken.len() + 1);
        let mut at = 0;
        for (start, end, id) in taken {
            if start > at {
                frags.push(Fragment::Text(at..start));
            }
            frags.push(Fragment::Token(id));
            at = end;
        }
        if at < text.len() {
            frags.push(Fragment::Text(at..text.len()));
        }
        frags
    }

    /// Where each special token's text occurs in `text` (ascending starts), keyed by the
    /// token's position in `order`; control and unknown tokens only with `parse_special`.
    fn occurrences(&self, text: &[u8], parse_special: bool) -> FxMap<u32, Vec<usize>> {
        let mut occ: FxMap<u32, Vec<usize>> = FxMap::default();
        for start in 0..text.len() {
            if !self.first_bytes[text[start] as usize] {
                continue;
            }
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&n) => node = n,
                    None => break,
                }
                if let Some(pos) = self.terminal[node as usize] {
                    if parse_special
                        || self.order[pos as usize].1 & (attr::CONTROL | attr::UNKNOWN) == 0
                    {
                        occ.entry(pos).or_default().push(start);
                    }
                }
            }
        }
        occ
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (StrTable, Vec<u16>) {
        let texts: StrTable = ["<s>", "a", "<|im_start|>", "<|im", "  ", "   ", "<br>"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        let attrs = vec![
            attr::CONTROL,
            attr::NORMAL,
            attr::CONTROL,
            attr::CONTROL,
            attr::USER_DEFINED,
            attr::USER_DEFINED,
            attr::USER_DEFINED,
        ];
        (texts, attrs)
    }

    #[test]
    fn longest_token_wins_and_text_between_stays() {
        let (texts, attrs) = setup();
        let sp = SpecialSplitter::new(&texts, &attrs);
        let t = b"x<|im_start|>y<|imz";
        assert_eq!(
            sp.split(t, &texts, true),
            vec![
                Fragment::Text(0..1),
                Fragment::Token(2),
                Fragment::Text(13..14),
                Fragment::Token(3),
                Fragment::Text(18..19)
            ]
        );
    }

    #[test]
    fn without_parse_special_only_user_defined_tokens_split() {
        let (texts, attrs) = setup();
        let sp = SpecialSplitter::new(&texts, &attrs);
        let t = b"<s>a     b<br>";
        // Five spaces: the three-space token first, then the two-space one.
        assert_eq!(
            sp.split(t, &texts, false),
            vec![
                Fragment::Text(0..4),
                Fragment::Token(5),
                Fragment::Token(4),
                Fragment::Text(9..10),
                Fragment::Token(6)
            ]
        );
        assert_eq!(sp.split(b"", &texts, true), vec![]);
    }

    /// llama.cpp's algorithm as written: one pass over all fragments per special token.
    fn reference_split(
        sp: &SpecialSplitter,
        text: &[u8],
        texts: &StrTable,
        parse_special: bool,
    ) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0..text.len())];
        if text.is_empty() {
            return vec![];
        }
        for &(id, a) in &sp.order {
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = texts.get(id);
            let mut out = vec![];
            for f in frags {
                let Fragment::Text(r) = f else {
                    out.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(m) = text[start..r.end]
                    .windows(needle.len())
                    .position(|w| w == needle)
                {
                    if m > 0 {
                        out.push(Fragment::Text(start..start + m));
                    }
                    out.push(Fragment::Token(id));
                    start += m + needle.len();
                }
                if start < r.end {
                    out.push(Fragment::Text(start..r.end));
                }
            }
            frags = out;
        }
        frags
    }

    #[test]
    fn single_pass_split_equals_per_token_passes() {
        let words = [
            "<|a|>", "<|a", "a|>", "aa", "aaa", "  ", "   ", "x", " ", "<", "|", ">", "a", "b<|",
        ];
        let texts: StrTable = words.iter().map(|s| s.as_bytes()).collect();
        let attrs: Vec<u16> = (0..words.len())
            .map(|i| match i % 3 {
                0 => attr::CONTROL,
                1 => attr::USER_DEFINED,
                _ => attr::NORMAL,
            })
            .collect();
        let sp = SpecialSplitter::new(&texts, &attrs);
        // A small deterministic generator: overlapping and adjacent candidates everywhere.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut t = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for k in 0..(state % 12) {
                t.extend_from_slice(
                    words[((state >> (5 * k)) % words.len() as u64) as usize].as_bytes(),
                );
            }
            for parse in [false, true] {
                assert_eq!(
                    sp.split(&t, &texts, parse),
                    reference_split(&sp, &t, &texts, parse),
                    "{:?}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
    }

    #[test]
    fn recognised_texts_start_with_the_prefilter_bytes() {
        // tokenizer.rs skips tokens not starting with one of these bytes before comparing.
        let lists = [
            EOT_TEXTS,
            EOM_TEXTS,
            FIM_PRE_TEXTS,
            FIM_SUF_TEXTS,
            FIM_MID_TEXTS,
            FIM_PAD_TEXTS,
            FIM_REP_TEXTS,
            FIM_SEP_TEXTS,
            EOG_TEXTS,
            ALWAYS_RENDERED_TEXTS,
        ];
        for t in lists.iter().flat_map(|l| l.iter()) {
            assert!(matches!(t.as_bytes()[0], b'<' | b'[' | b'_' | 0xE2), "{t}");
        }
    }
}
