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

    /// Splits `text` at special-token strings, longest tokens first, each token splitting all
    /// remaining text leftmost-first. Without `parse_special`, only user-defined tokens split.
    pub fn split(&self, text: &[u8], texts: &StrTable, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0..text.len()));
        for pos in self.occurring(text) {
            let (id, a) = self.order[pos];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = texts.get(id);
            let mut out = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    out.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(m) = find(&text[start..r.end], needle) {
                    let at = start + m;
                    if at > start {
                        out.push(Fragment::Text(start..at));
                    }
                    out.push(Fragment::Token(id));
                    start = at + needle.len();
                }
                if start < r.end {
                    out.push(Fragment::Text(start..r.end));
                }
            }
            frags = out;
        }
        frags
    }

    /// Positions in `order` of the special tokens whose text occurs somewhere in `text`, in
    /// `order`. Only those can split anything, and the scan is one pass over the text.
    fn occurring(&self, text: &[u8]) -> Vec<usize> {
        let mut seen = vec![false; self.order.len()];
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
                    seen[pos as usize] = true;
                }
            }
        }
        (0..self.order.len()).filter(|&p| seen[p]).collect()
    }
}

/// The first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        let p = hay[i..=last_start].iter().position(|&b| b == first)?;
        i += p;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
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

    #[test]
    fn find_is_a_substring_search() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaa", b"aa"), Some(0));
    }
}
