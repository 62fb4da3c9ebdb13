//! The tokenizer: built once from a [`Vocab`], then text <-> token ids.
//!
//! Behaviour follows llama.cpp's `llama_vocab` (the project's oracle) down to its quirks, so the
//! same text gives the same ids: special-token splitting, BOS/EOS defaults per tokenizer model,
//! end-of-generation tokens recognised by their text, and the detokeniser's space handling.

use std::collections::BTreeSet;

use crate::bpe::Bpe;
use crate::hash::FxMap;
use crate::pretokenize::{self, PreConfig};
use crate::special::{self, attr, Fragment, SpecialSplitter};
use crate::strtable::{StrIndex, StrTable};
use crate::unicode::BYTE_TO_CHAR;
use crate::{decode, spm, SpecialIds, TokenizerError, Vocab};

/// Which algorithm turns text fragments into ids.
enum Algorithm {
    /// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
    Bpe { bpe: Bpe, pre: PreConfig },
    /// SentencePiece (`tokenizer.ggml.model = llama`).
    Spm,
}

/// The kind of vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Byte-level BPE (GPT-2 style).
    Bpe,
    /// SentencePiece.
    Spm,
}

/// A tokenizer for one model's vocabulary. Cheap to share (`&Tokenizer` is `Sync`).
pub struct Tokenizer {
    algorithm: Algorithm,
    pub(crate) texts: StrTable,
    scores: Vec<f32>,
    pub(crate) attrs: Vec<u16>,
    token_to_id: StrIndex,
    /// Every token's piece with special tokens rendered (llama.cpp's piece cache).
    pub(crate) pieces: StrTable,
    splitter: SpecialSplitter,
    ids: SpecialIds,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) clean_spaces: bool,
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(g: &smelt_gguf::Gguf) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(&Vocab::from_gguf(g)?)
    }

    /// Builds the tokenizer from a vocabulary description.
    pub fn new(v: &Vocab) -> Result<Tokenizer, TokenizerError> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= u32::MAX as usize {
            return Err(TokenizerError::TooManyTokens(n));
        }
        let check_len = |what: &'static str, got: Option<usize>| match got {
            Some(got) if got < n => Err(TokenizerError::ArrayTooShort {
                what,
                got,
                n_tokens: n,
            }),
            _ => Ok(()),
        };
        check_len("tokenizer.ggml.scores", v.scores.as_ref().map(Vec::len))?;
        check_len(
            "tokenizer.ggml.token_type",
            v.token_types.as_ref().map(Vec::len),
        )?;

        // Defaults per tokenizer model, before the metadata has its say.
        let kind;
        let (mut add_bos, mut add_eos, mut add_space_prefix, clean_spaces);
        let mut pre = None;
        match v.model.as_str() {
            "llama" => {
                kind = TokenizerKind::Spm;
                (add_bos, add_eos, add_space_prefix, clean_spaces) = (true, false, true, false);
            }
            "gpt2" => {
                kind = TokenizerKind::Bpe;
                // llama.cpp falls back to "default" (with a loud warning) when the name is absent.
                let name = v.pre.as_deref().unwrap_or("default");
                let cfg = pretokenize::pre_config(name)
                    .ok_or_else(|| TokenizerError::UnknownPreTokenizer(name.into()))?;
                (add_bos, add_eos, add_space_prefix, clean_spaces) =
                    (cfg.add_bos, false, false, cfg.clean_spaces);
                pre = Some(cfg);
            }
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        }
        if let Some(b) = v.add_space_prefix {
            add_space_prefix = b;
        }

        // Token texts (an empty one gets a placeholder, as llama.cpp), attributes, lookup.
        let mut texts = StrTable::default();
        let mut attrs = Vec::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            let placeholder;
            let t: &[u8] = if t.is_empty() {
                placeholder = format!("[EMPTY_{i}]");
                placeholder.as_bytes()
            } else {
                t
            };
            texts.push(t);
            attrs.push(
                v.token_types
                    .as_ref()
                    .map_or(attr::NORMAL, |tt| attr::from_type(tt[i])),
            );
        }
        let scores = v
            .scores
            .as_ref()
            .map_or_else(|| vec![0.0; n], |s| s[..n].to_vec());

        let mut ids = resolve_special_ids(&v.model, &v.special, n);
        add_bos = v.add_bos.unwrap_or(add_bos);
        add_eos = v.add_eos.unwrap_or(add_eos);

        let token_to_id = StrIndex::new(&texts);
        let eog = detect_special_tokens(&texts, &mut attrs, &mut ids);

        let algorithm = match (kind, pre) {
            (TokenizerKind::Bpe, Some(pre)) => {
                let merges = v.merges.as_deref().ok_or(TokenizerError::MissingMerges)?;
                let lookup = |s: &[u8]| token_to_id.get(&texts, s);
                Algorithm::Bpe {
                    bpe: Bpe::new(merges, n as u32, &lookup),
                    pre,
                }
            }
            _ => Algorithm::Spm,
        };
        let splitter = SpecialSplitter::new(&texts, &attrs);
        let pieces = decode::render_pieces(kind, &texts, &attrs);
        Ok(Tokenizer {
            algorithm,
            texts,
            scores,
            attrs,
            token_to_id,
            pieces,
            splitter,
            ids,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
        })
    }

    // ---- encoding ---------------------------------------------------------------------------

    /// Text to token ids. `add_special` adds BOS/EOS where the model asks for them;
    /// `parse_special` turns control-token text (`<|im_start|>`) into that token, otherwise
    /// such text is tokenized as plain text (user-defined tokens always match).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.ids.bos);
        }
        let frags = self
            .splitter
            .split(text.as_bytes(), &self.texts, parse_special);
        let lookup = |s: &[u8]| self.token_to_id.get(&self.texts, s);
        match &self.algorithm {
            Algorithm::Spm => {
                // A space goes in front of text that starts the input or follows a special token.
                let mut prev_special = true;
                let mut buf = Vec::new();
                for f in frags {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.extend_from_slice("\u{2581}".as_bytes());
                            }
                            escape_spaces(&text.as_bytes()[r], &mut buf);
                            spm::encode(&buf, self, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
            Algorithm::Bpe { bpe, pre } => {
                let mut word = Vec::new();
                for f in frags {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => {
                            let frag = &text[r];
                            for w in pretokenize::split(frag, pre.steps) {
                                word.clear();
                                for &b in &frag.as_bytes()[w] {
                                    let mut utf8 = [0u8; 4];
                                    word.extend_from_slice(
                                        BYTE_TO_CHAR[b as usize].encode_utf8(&mut utf8).as_bytes(),
                                    );
                                }
                                if pre.ignore_merges {
                                    if let Some(id) = lookup(&word) {
                                        out.push(id);
                                        continue;
                                    }
                                }
                                bpe.encode_word(&word, &lookup, &mut out);
                            }
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.ids.eos);
        }
        out
    }

    // ---- vocabulary queries -----------------------------------------------------------------

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The kind of vocabulary.
    pub fn kind(&self) -> TokenizerKind {
        match self.algorithm {
            Algorithm::Bpe { .. } => TokenizerKind::Bpe,
            Algorithm::Spm => TokenizerKind::Spm,
        }
    }

    /// The id of the token whose stored text is exactly `text` (`"<|im_end|>"`, `"Ġthe"`, `"▁the"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(&self.texts, text.as_bytes())
    }

    /// The stored text of a token (byte-level or `▁`-escaped as in the file).
    pub fn token_text(&self, id: u32) -> Option<&[u8]> {
        self.valid(id).then(|| self.texts.get(id))
    }

    /// The resolved special token ids (metadata, llama.cpp defaults, and recognised texts).
    pub fn special_ids(&self) -> &SpecialIds {
        &self.ids
    }

    pub fn bos(&self) -> Option<u32> {
        self.ids.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.ids.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.ids.eot
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS / ends with EOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating this token ends the turn (EOS, EOT, EOM, `<|im_end|>`, `<end_of_turn>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether a token is a control token (rendered only on request).
    pub fn is_control(&self, id: u32) -> bool {
        self.valid(id) && self.attrs[id as usize] & attr::CONTROL != 0
    }

    pub(crate) fn valid(&self, id: u32) -> bool {
        (id as usize) < self.texts.len()
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("special_ids", &self.ids)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

impl spm::SpmVocab for Tokenizer {
    fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.token_to_id.get(&self.texts, text)
    }
    fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }
    fn byte_token(&self, b: u8) -> Option<u32> {
        // `<0xXX>`, else the byte itself as a token, else the unknown token.
        let hex = format!("<0x{b:02X}>");
        self.token_to_id
            .get(&self.texts, hex.as_bytes())
            .or_else(|| self.token_to_id.get(&self.texts, &[b]))
            .or(self.ids.unk)
    }
}

/// The special ids of a vocabulary of `n_tokens` tokens: the metadata's where they are in
/// range, else llama.cpp's defaults for the tokenizer model (SentencePiece: BOS 1, EOS 2,
/// UNK 0; byte-level BPE: BOS = EOS = 11) where those are in range.
pub(crate) fn resolve_special_ids(model: &str, meta: &SpecialIds, n_tokens: usize) -> SpecialIds {
    let mut ids = SpecialIds::default();
    match model {
        "llama" => (ids.bos, ids.eos, ids.unk) = (Some(1), Some(2), Some(0)),
        "gpt2" => (ids.bos, ids.eos) = (Some(11), Some(11)),
        _ => {}
    }
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n_tokens);
    let set =
        |slot: &mut Option<u32>, meta: Option<u32>| *slot = in_range(meta).or(in_range(*slot));
    set(&mut ids.bos, meta.bos);
    set(&mut ids.eos, meta.eos);
    set(&mut ids.eot, meta.eot);
    set(&mut ids.eom, meta.eom);
    set(&mut ids.unk, meta.unk);
    set(&mut ids.sep, meta.sep);
    set(&mut ids.pad, meta.pad);
    set(&mut ids.mask, meta.mask);
    set(&mut ids.fim_pre, meta.fim_pre);
    set(&mut ids.fim_suf, meta.fim_suf);
    set(&mut ids.fim_mid, meta.fim_mid);
    set(&mut ids.fim_pad, meta.fim_pad);
    set(&mut ids.fim_rep, meta.fim_rep);
    set(&mut ids.fim_sep, meta.fim_sep);
    ids
}

/// SentencePiece sees spaces as U+2581.
fn escape_spaces(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        if b == b' ' {
            out.extend_from_slice("\u{2581}".as_bytes());
        } else {
            out.push(b);
        }
    }
}

/// Recognises end-of-turn, fill-in-the-middle and end-of-generation tokens by their text where
/// the metadata does not name them (marking them as control tokens), and returns the set of
/// end-of-generation ids.
fn detect_special_tokens(
    texts: &StrTable,
    attrs: &mut [u16],
    ids: &mut SpecialIds,
) -> BTreeSet<u32> {
    // Every recognised text starts with one of these bytes; most tokens are rejected by that.
    let may_match = |id: u32| matches!(texts.get(id).first(), Some(b'<' | b'[' | b'_' | 0xE2));
    let text_is = |id: u32, list: &[&str]| {
        may_match(id) && list.iter().any(|t| t.as_bytes() == texts.get(id))
    };
    let n = texts.len() as u32;
    // Where several texts of a list occur, the earliest in the list wins (llama.cpp takes
    // whichever its hash map yields first; the list order puts the usual spelling first).
    let mut by_text: FxMap<&[u8], u32> = FxMap::default();
    for id in 0..n {
        if may_match(id) {
            by_text.insert(texts.get(id), id);
        }
    }
    for (slot, list) in [
        (&mut ids.eot, special::EOT_TEXTS),
        (&mut ids.eom, special::EOM_TEXTS),
        (&mut ids.fim_pre, special::FIM_PRE_TEXTS),
        (&mut ids.fim_suf, special::FIM_SUF_TEXTS),
        (&mut ids.fim_mid, special::FIM_MID_TEXTS),
        (&mut ids.fim_pad, special::FIM_PAD_TEXTS),
        (&mut ids.fim_rep, special::FIM_REP_TEXTS),
        (&mut ids.fim_sep, special::FIM_SEP_TEXTS),
    ] {
        if slot.is_none() {
            if let Some(&id) = list.iter().find_map(|t| by_text.get(t.as_bytes())) {
                *slot = Some(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
    }
    // Control tokens named "unused" are unused.
    for id in 0..n {
        let a = &mut attrs[id as usize];
        if *a & attr::CONTROL != 0 && texts.get(id).windows(6).any(|w| w == b"unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: BTreeSet<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for id in 0..n {
        if text_is(id, special::EOG_TEXTS) {
            eog.insert(id);
            attrs[id as usize] |= attr::CONTROL;
        }
        if text_is(id, special::ALWAYS_RENDERED_TEXTS) {
            attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());

    // gpt-oss and solar-open end a message with <|end|> but only stop on <|return|>/<|call|>.
    let has = |eog: &BTreeSet<u32>, t: &str| {
        eog.iter()
            .find(|&&id| texts.get(id) == t.as_bytes())
            .copied()
    };
    if let Some(end) = has(&eog, "<|end|>") {
        let call = has(&eog, "<|call|>").or(has(&eog, "<|calls|>")).is_some();
        if call && (has(&eog, "<|return|>").is_some() || has(&eog, "<|flush|>").is_some()) {
            eog.remove(&end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Where </s> is an ordinary token (Gemma 4, PLaMo 2), it does not end generation.
    if let Some(s) = has(&eog, "</s>") {
        if has(&eog, "<|tool_response>").is_some() || has(&eog, "<|plamo:eos|>").is_some() {
            eog.remove(&s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
    eog
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(model: &str, pre: Option<&str>, tokens: &[&str]) -> Vocab {
        Vocab {
            model: model.into(),
            pre: pre.map(Into::into),
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
            merges: Some(vec![]),
            ..Vocab::default()
        }
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<crate::ChatTemplate>();
    }

    #[test]
    fn bad_vocabularies_are_clear_errors() {
        let err = |v: &Vocab| {
            Tokenizer::new(v)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(&vocab("bert", None, &["a"])).contains("unsupported tokenizer model 'bert'"));
        assert!(
            err(&vocab("gpt2", Some("nope"), &["a"])).contains("unknown BPE pre-tokenizer 'nope'")
        );
        assert!(err(&vocab("llama", None, &[])).contains("empty"));
        let mut v = vocab("llama", None, &["a", "b"]);
        v.scores = Some(vec![0.0]);
        assert!(err(&v).contains("'tokenizer.ggml.scores' has 1 entries, fewer than the 2 tokens"));
        let mut v = vocab("gpt2", Some("gpt-2"), &["a"]);
        v.merges = None;
        assert!(err(&v).contains("no 'tokenizer.ggml.merges'"));
    }

    #[test]
    fn defaults_follow_the_tokenizer_model() {
        // SentencePiece: BOS 1, EOS 2, UNK 0 when the file names none; a BOS is added.
        let t = Tokenizer::new(&vocab(
            "llama",
            None,
            &["<unk>", "<s>", "</s>", "\u{2581}a"],
        ))
        .unwrap();
        assert_eq!(
            (t.bos(), t.eos(), t.special_ids().unk),
            (Some(1), Some(2), Some(0))
        );
        assert!(t.adds_bos() && !t.adds_eos());
        // The space prefix makes "a" into "▁a".
        assert_eq!(t.encode("a", true, false), vec![1, 3]);
        // Out-of-range metadata ids are ignored; the "</s>" text marks an end of generation.
        let mut v = vocab("llama", None, &["<unk>", "<s>", "</s>"]);
        v.special.bos = Some(99);
        let t = Tokenizer::new(&v).unwrap();
        assert_eq!(t.bos(), Some(1));
        assert!(t.is_eog(2));
        // Byte-level BPE: ids 11 don't exist in a 2-token vocabulary, so no BOS/EOS.
        let t = Tokenizer::new(&vocab("gpt2", Some("gpt-2"), &["a", "b"])).unwrap();
        assert_eq!((t.bos(), t.eos()), (None, None));
        assert_eq!(t.encode("ab", true, true), vec![0, 1]);
    }
}
