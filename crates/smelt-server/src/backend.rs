//! What the server needs from the engine and from the model store, as two small traits.
//!
//! The engine boundary is message-shaped (load, render, tokenize, generate -> events, embed), so
//! the server never reaches into engine internals; [`crate::engine`] implements it with
//! `smelt_engine::Model`, [`crate::registry`] implements the store side.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use smelt_engine::{Event, GenerateRequest, Usage};

use crate::constrain::TokenTable;
use crate::request::ChatMessage;

/// Facts about a loaded model (for /api/show, /api/ps, memory accounting).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelFacts {
    pub architecture: String,
    pub n_params: u64,
    pub context_length_train: usize,
    /// e.g. "Q4_K_M".
    pub quantization: String,
    pub file_size: u64,
    pub n_embd: usize,
    /// Bytes the loaded model occupies (weights, KV cache, buffers).
    pub memory_bytes: u64,
    /// Where it runs: `cpu`, or `cuda: <GPU>` (then its weights and KV cache are in GPU
    /// memory: `/api/ps` reports them as `size_vram`).
    pub device: String,
}

/// How to load a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSpec {
    /// Longest sequence (a request's context).
    pub num_ctx: usize,
    pub threads: usize,
    /// Requests generating at once.
    pub parallel: usize,
    /// Positions of the KV pool the running requests share (at least `num_ctx`).
    pub kv_positions: usize,
}

/// The KV pool of a loaded model, live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvCacheInfo {
    pub bytes: u64,
    pub block_positions: u64,
    pub blocks_total: u64,
    /// Held by running requests.
    pub blocks_used: u64,
    /// Holding cached prefixes (reusable by a request with the same prefix).
    pub blocks_cached: u64,
    pub running: u64,
    pub waiting: u64,
}

/// A model the engine has loaded.
pub trait LoadedModel: Send + Sync {
    fn facts(&self) -> ModelFacts;
    /// The context window it was loaded with.
    fn context_length(&self) -> usize;
    /// The chat template source (the file's or a built-in one), if any.
    fn chat_template_source(&self) -> Option<String>;
    /// Render a conversation (HF-style JSON messages) with the chat template.
    fn render_chat(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, String>;
    /// Tokenize a rendered prompt: special-token text parsed, BOS added as the model wants
    /// (once, even when the template wrote it).
    fn encode_prompt(&self, text: &str) -> Vec<u32>;
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32>;
    fn detokenize(&self, tokens: &[u32]) -> String;
    /// The vocabulary for constrained decoding (built once, shared).
    fn token_table(&self) -> Arc<TokenTable>;
    /// Generate (blocking; the caller runs it on a blocking thread).
    fn generate(
        &self,
        req: GenerateRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Usage, String>;
    /// A pooled, normalised embedding of `tokens`.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, String>;
    /// Whether the model produces embeddings (rather than only generating).
    fn can_embed(&self) -> bool {
        true
    }
    /// Its KV cache, when the engine reports one.
    fn kv_cache(&self) -> Option<KvCacheInfo> {
        None
    }
}

/// The smallest context picked automatically.
pub const MIN_DEFAULT_CONTEXT: usize = 2048;

/// Loads models (blocking).
pub trait ModelLoader: Send + Sync {
    fn load(&self, path: &Path, spec: LoadSpec) -> Result<Arc<dyn LoadedModel>, String>;
    /// Bytes loading `path` with `num_ctx` positions of KV cache would take, estimated
    /// without loading.
    fn estimate_memory(&self, path: &Path, num_ctx: usize) -> Result<u64, String>;
    /// Bytes loading `path` for requests of up to `num_ctx` positions with a KV pool of
    /// `kv_positions` would take (activations follow one request, the KV cache the pool).
    fn estimate_pool_memory(
        &self,
        path: &Path,
        num_ctx: usize,
        kv_positions: usize,
    ) -> Result<u64, String> {
        let _ = num_ctx;
        self.estimate_memory(path, kv_positions)
    }
    /// The context to load `path` with when nothing asks for one: its trained context, halved
    /// until the model fits in half of `budget` bytes, never below 2048 (or the trained context).
    fn default_context(&self, path: &Path, budget: u64) -> Result<usize, String> {
        let trained = crate::registry::trained_context(path)?;
        let mut n = trained.max(1);
        while n > MIN_DEFAULT_CONTEXT && self.estimate_memory(path, n)? > budget / 2 {
            n /= 2;
        }
        Ok(n.max(MIN_DEFAULT_CONTEXT.min(trained)))
    }
    /// Requests to run at once and the KV pool they share, for requests of up to `num_ctx`
    /// positions: `parallel` sequences of `num_ctx` (0: [`DEFAULT_PARALLEL`], the pool at most
    /// [`DEFAULT_POOL_POSITIONS`] or one request), the pool halved while it does not fit in
    /// half of `budget` (never below one full-length request). The default parallelism is what
    /// the pool holds at 2048 positions a request, at most [`DEFAULT_PARALLEL`]; admission by
    /// KV blocks queues what does not fit at a given moment.
    fn batch_shape(
        &self,
        path: &Path,
        num_ctx: usize,
        parallel: usize,
        budget: u64,
    ) -> Result<(usize, usize), String> {
        let num_ctx = num_ctx.max(1);
        let want = if parallel == 0 {
            DEFAULT_PARALLEL
        } else {
            parallel
        };
        let mut positions = num_ctx.saturating_mul(want);
        if parallel == 0 {
            // Eight requests of the whole context are rare with long contexts: the default
            // pool stops at DEFAULT_POOL_POSITIONS (one full-length request always fits).
            positions = positions.min(num_ctx.max(DEFAULT_POOL_POSITIONS));
        }
        while positions > num_ctx
            && self.estimate_pool_memory(path, num_ctx, positions)? > budget / 2
        {
            positions = (positions / 2).max(num_ctx);
        }
        let parallel = if parallel == 0 {
            (positions / num_ctx.min(MIN_DEFAULT_CONTEXT)).clamp(1, DEFAULT_PARALLEL)
        } else {
            parallel
        };
        Ok((parallel, positions))
    }
}

/// Requests a model runs at once when memory allows and nothing else is configured.
pub const DEFAULT_PARALLEL: usize = 8;

/// The largest KV pool picked automatically (positions), unless one request needs more.
pub const DEFAULT_POOL_POSITIONS: usize = 65536;

/// Ollama's `details` object.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelDetails {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Vec<String>,
    pub parameter_size: String,
    pub quantization_level: String,
}

/// A model as the store describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRecord {
    /// The canonical name (`smollm2:latest`), or the path for a plain file.
    pub name: String,
    pub path: PathBuf,
    /// sha256 hex of the manifest (or of the file's identity for a plain file).
    pub digest: String,
    pub size: u64,
    pub modified: SystemTime,
    /// A Modelfile TEMPLATE (Go-template syntax), if the model has one.
    pub template: Option<String>,
    /// A Modelfile SYSTEM prompt.
    pub system: Option<String>,
    /// Default options (Modelfile PARAMETER lines).
    pub params: serde_json::Map<String, Value>,
    pub license: Vec<String>,
    /// Modelfile MESSAGE history, put before the request's messages.
    pub messages: Vec<ChatMessage>,
    pub details: ModelDetails,
    pub modelfile: String,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// Progress of a pull.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullStatus {
    pub status: String,
    pub digest: Option<String>,
    pub total: Option<u64>,
    pub completed: Option<u64>,
}

/// What a new model is made of (Ollama's /api/create body; `from` may also be a path to a GGUF
/// file on the server's machine).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CreateModel {
    pub from: String,
    pub template: Option<String>,
    pub system: Option<String>,
    pub parameters: serde_json::Map<String, Value>,
    pub license: Vec<String>,
    /// (role, content) pairs.
    pub messages: Vec<(String, String)>,
}

/// The model store as the server sees it.
pub trait ModelRegistry: Send + Sync {
    fn resolve(&self, name: &str) -> Result<ModelRecord, RegistryError>;
    fn list(&self) -> Result<Vec<ModelRecord>, RegistryError>;
    fn copy(&self, source: &str, destination: &str) -> Result<(), RegistryError>;
    fn delete(&self, name: &str) -> Result<(), RegistryError>;
    fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(PullStatus),
        cancel: &AtomicBool,
    ) -> Result<(), RegistryError>;
    fn create(
        &self,
        name: &str,
        spec: &CreateModel,
        progress: &mut dyn FnMut(PullStatus),
    ) -> Result<(), RegistryError>;
}
