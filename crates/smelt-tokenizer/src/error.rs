//! Errors of building a tokenizer and of rendering chat templates.

/// A vocabulary that cannot be turned into a tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("[tokenizer] unsupported tokenizer model '{0}' (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")]
    UnsupportedModel(String),

    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this crate does not implement.
    #[error("[tokenizer] unknown BPE pre-tokenizer '{0}'")]
    UnknownPreTokenizer(String),

    /// The vocabulary has no tokens.
    #[error("[tokenizer] the vocabulary is empty")]
    EmptyVocab,

    /// More tokens than ids can address.
    #[error("[tokenizer] {0} tokens do not fit in 32-bit token ids")]
    TooManyTokens(usize),

    /// A per-token array shorter than the token list.
    #[error("[tokenizer] '{what}' has {got} entries, fewer than the {n_tokens} tokens")]
    ArrayTooShort {
        what: &'static str,
        got: usize,
        n_tokens: usize,
    },

    /// A BPE vocabulary without merges.
    #[error("[tokenizer] BPE vocabulary has no 'tokenizer.ggml.merges'")]
    MissingMerges,

    /// The GGUF metadata could not be read.
    #[error("[tokenizer] reading GGUF metadata: {0}")]
    Gguf(#[from] smelt_gguf::GgufError),

    /// A required GGUF key is absent.
    #[error("[tokenizer] GGUF metadata lacks '{0}'")]
    MissingKey(&'static str),
}

/// A chat template that cannot be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("[chat_template] syntax error: {0:#}")]
    Syntax(minijinja::Error),

    /// Rendering failed (an undefined filter, a type error, ...).
    #[error("[chat_template] render failed: {0:#}")]
    Render(minijinja::Error),

    /// The template called `raise_exception(message)`.
    #[error("[chat_template] template raised: {0}")]
    Raised(String),

    /// `messages` is not a JSON array.
    #[error("[chat_template] messages must be a JSON array, got {0}")]
    MessagesNotArray(&'static str),

    /// The GGUF metadata could not be read.
    #[error("[chat_template] reading GGUF metadata: {0}")]
    Gguf(#[from] smelt_gguf::GgufError),

    /// No built-in template is known for this architecture or name.
    #[error("[chat_template] no built-in chat template for '{0}'")]
    NoBuiltin(String),
}
