//! smelt-tokenizer: vocabularies from GGUF metadata, text <-> token ids, streaming
//! detokenisation and chat templates.
//!
//! - [`Vocab`] is the tokenizer part of a model file as a plain struct ([`Vocab::from_gguf`]).
//! - [`Tokenizer`] encodes and decodes exactly as llama.cpp does for byte-level BPE
//!   (`gpt2`, with the pre-tokenizers `default`, `gpt-2`, `smollm`/`starcoder`, `llama-bpe`,
//!   `qwen2`, `qwen35` and their aliases) and SentencePiece (`llama`) vocabularies.
//! - [`StreamDecoder`] turns generated ids into text without ever splitting a character
//!   ([`Utf8Stream`] is the same for raw bytes, without a borrowed tokenizer).
//! - [`ChatTemplate`] renders a model's Jinja chat template with Hugging Face semantics, or a
//!   built-in one ([`ChatTemplate::builtin_for`]) for files without a template.

mod bpe;
mod builtin_templates;
mod decode;
mod error;
mod hash;
mod pretokenize;
mod pyfmt;
mod special;
mod spm;
mod strtable;
mod template;
mod tokenizer;
mod unicode;
mod unicode_table;
mod vocab;

pub use builtin_templates::{builtin_source, CHATML, GEMMA3, LLAMA3, PLAIN};
pub use decode::{StreamDecoder, Utf8Stream};
pub use error::{TemplateError, TokenizerError};
pub use template::ChatTemplate;
pub use tokenizer::{Tokenizer, TokenizerKind};
pub use vocab::{SpecialIds, Vocab};
