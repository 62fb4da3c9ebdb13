//! The tokenizer description a model file carries: a plain struct, filled from GGUF metadata by
//! [`Vocab::from_gguf`] or by hand (tests, other containers).

use smelt_gguf::Gguf;

use crate::TokenizerError;

/// Everything a tokenizer is built from; the fields mirror the GGUF `tokenizer.*` keys.
/// `None` means "absent from the file": the tokenizer then uses llama.cpp's default for the
/// tokenizer model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer name (`"smollm"`, `"llama-bpe"`, `"qwen2"`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token texts by id, raw bytes as stored.
    pub tokens: Vec<Vec<u8>>,
    /// `tokenizer.ggml.scores`: SentencePiece piece scores by id.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges `"left right"`, highest priority first.
    pub merges: Option<Vec<Vec<u8>>>,
    /// Special token ids (`tokenizer.ggml.*_token_id`).
    pub special: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `general.architecture` (selects a built-in chat template when the file has none).
    pub architecture: Option<String>,
}

/// Special token ids as the metadata gives them (unchecked; out-of-range ids are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

impl SpecialIds {
    /// Reads the `tokenizer.ggml.*_token_id` keys.
    pub fn from_gguf(g: &Gguf) -> Result<SpecialIds, smelt_gguf::GgufError> {
        let id = |key: &str| g.get_u32(key);
        // llama.cpp reads the deprecated FIM keys after the current ones, so they win.
        let either = |new: &str, old: &str| -> Result<Option<u32>, smelt_gguf::GgufError> {
            Ok(id(old)?.or(id(new)?))
        };
        Ok(SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            sep: id("tokenizer.ggml.seperator_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            mask: id("tokenizer.ggml.mask_token_id")?,
            fim_pre: either(
                "tokenizer.ggml.fim_pre_token_id",
                "tokenizer.ggml.prefix_token_id",
            )?,
            fim_suf: either(
                "tokenizer.ggml.fim_suf_token_id",
                "tokenizer.ggml.suffix_token_id",
            )?,
            fim_mid: either(
                "tokenizer.ggml.fim_mid_token_id",
                "tokenizer.ggml.middle_token_id",
            )?,
            fim_pad: id("tokenizer.ggml.fim_pad_token_id")?,
            fim_rep: id("tokenizer.ggml.fim_rep_token_id")?,
            fim_sep: id("tokenizer.ggml.fim_sep_token_id")?,
        })
    }
}

impl Vocab {
    /// Reads the tokenizer keys of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<Vocab, TokenizerError> {
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?
            .to_owned();
        let tokens: Vec<Vec<u8>> = g
            .get_string_array("tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?
            .iter()
            .map(<[u8]>::to_vec)
            .collect();
        let merges = g
            .get_string_array("tokenizer.ggml.merges")?
            .map(|a| a.iter().map(<[u8]>::to_vec).collect());
        let special = SpecialIds::from_gguf(g)?;
        Ok(Vocab {
            model,
            pre: g.get_str("tokenizer.ggml.pre")?.map(str::to_owned),
            tokens,
            scores: scores(g)?,
            token_types: g
                .get_i32_array("tokenizer.ggml.token_type")?
                .map(|c| c.into_owned()),
            merges,
            special,
            add_bos: g.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: g.get_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_owned),
            architecture: g.architecture().map(str::to_owned),
        })
    }
}

/// Scores are f32, but some converters wrote them as i32.
fn scores(g: &Gguf) -> Result<Option<Vec<f32>>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    match g.get_array(KEY)? {
        Some(smelt_gguf::Array::I32(v)) => Ok(Some(v.iter().map(|&x| x as f32).collect())),
        Some(_) => Ok(g.get_f32_array(KEY)?.map(|c| c.into_owned())),
        None => Ok(None),
    }
}
