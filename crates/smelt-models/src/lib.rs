//! Model architectures. Each is one file that reads its hyper-parameters from GGUF metadata,
//! checks every weight's shape once at load, and then builds forward graphs that cannot fail.
//! Registered in one table keyed by `general.architecture`.

mod gemma3;
mod llama;
mod weights;

use smelt_gguf::{Gguf, GgufError};
use smelt_graph::Graph;

pub use weights::{WeightEntry, WeightTable};

/// What a forward graph returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Logits of the last input row only (`[1, n_vocab]`): generation.
    LastLogits,
    /// Logits of the last row of each of `n` sequences evaluated together (`[n, n_vocab]`):
    /// batched generation. The rows' assignment to sequences is an execution input.
    SeqLogits(usize),
    /// Logits of every input row (`[n_tokens, n_vocab]`): perplexity, scoring.
    AllLogits,
    /// Final-normalised hidden states of every row (`[n_tokens, n_embd]`): embeddings.
    Hidden,
}

/// A model architecture with its hyper-parameters and weight table, ready to build graphs.
pub trait Architecture: Send + Sync {
    /// `general.architecture`, e.g. "llama".
    fn arch(&self) -> &str;
    /// The weights the graphs use; `WeightId(i)` is entry i.
    fn weights(&self) -> &WeightTable;
    /// Per layer, the width of one KV-cache row (n_head_kv * head_dim).
    fn kv_widths(&self) -> Vec<usize>;
    fn n_embd(&self) -> usize;
    fn n_vocab(&self) -> usize;
    fn n_layer(&self) -> usize;
    /// The context length the model was trained with.
    fn context_length(&self) -> usize;
    /// The forward graph for `n_tokens` rows.
    fn build(&self, n_tokens: usize, output: Output) -> Graph;
}

/// Why a model cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture '{0}' (supported: {1})")]
    UnsupportedArch(String, String),
    #[error("the file has no general.architecture")]
    NoArch,
    #[error("missing metadata key '{0}'")]
    MissingKey(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<u64>,
        want: Vec<u64>,
    },
    #[error("invalid hyper-parameter: {0}")]
    Invalid(String),
}

type Loader = fn(&Gguf, &str) -> Result<Box<dyn Architecture>, ModelError>;

/// The registry: architecture name -> loader.
const REGISTRY: &[(&str, Loader)] = &[
    ("llama", llama::load),
    ("mistral", llama::load),
    ("qwen2", llama::load),
    ("qwen3", llama::load),
    ("gemma3", gemma3::load),
];

/// Architectures this build can run.
pub fn supported() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

/// Read hyper-parameters and check weight shapes for the file's architecture.
pub fn load(gguf: &Gguf) -> Result<Box<dyn Architecture>, ModelError> {
    let arch = gguf.architecture().ok_or(ModelError::NoArch)?;
    match REGISTRY.iter().find(|(n, _)| *n == arch) {
        Some((_, load)) => load(gguf, arch),
        None => Err(ModelError::UnsupportedArch(
            arch.to_string(),
            supported().join(", "),
        )),
    }
}

/// Typed access to `<arch>.<key>` metadata.
pub(crate) struct Meta<'a> {
    pub gguf: &'a Gguf,
    pub arch: &'a str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{}", self.arch, k)
    }
    pub fn u32_req(&self, k: &str) -> Result<usize, ModelError> {
        let key = self.key(k);
        self.gguf
            .get_u32(&key)?
            .map(|v| v as usize)
            .ok_or(ModelError::MissingKey(key))
    }
    pub fn u32_or(&self, k: &str, default: usize) -> Result<usize, ModelError> {
        Ok(self
            .gguf
            .get_u32(&self.key(k))?
            .map(|v| v as usize)
            .unwrap_or(default))
    }
    pub fn f32_or(&self, k: &str, default: f32) -> Result<f32, ModelError> {
        Ok(self.gguf.get_f32(&self.key(k))?.unwrap_or(default))
    }
    pub fn f32_opt(&self, k: &str) -> Result<Option<f32>, ModelError> {
        Ok(self.gguf.get_f32(&self.key(k))?)
    }
    pub fn str_opt(&self, k: &str) -> Result<Option<&str>, ModelError> {
        Ok(self.gguf.get_str(&self.key(k))?)
    }
    /// head_count_kv may be a per-layer array in some files; we accept a scalar only.
    pub fn positive(&self, name: &str, v: usize) -> Result<usize, ModelError> {
        if v == 0 || v > 1 << 24 {
            return Err(ModelError::Invalid(format!("{name} = {v}")));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
