//! One model's weights, backend and KV cache for a single sequence: evaluates tokens.

use std::collections::HashMap;

use smelt_cpu::{KvCache, ReferenceBackend};
use smelt_gguf::Gguf;
use smelt_graph::Graph;
use smelt_models::{Architecture, Output};

use crate::EngineError;

/// Longest chunk of prompt evaluated in one graph.
pub const PREFILL_CHUNK: usize = 512;

/// Graphs kept per runner; a graph is a few hundred small nodes, cheap to rebuild.
const MAX_CACHED_GRAPHS: usize = 8;

/// Evaluates tokens for one sequence whose KV cache holds `tokens()` at positions 0..len.
pub struct Runner {
    arch: Box<dyn Architecture>,
    backend: ReferenceBackend,
    kv: KvCache,
    tokens: Vec<u32>,
    graphs: HashMap<(usize, Output), Graph>,
}

impl Runner {
    /// Dequantise the weights of `gguf` for the reference backend and allocate `n_ctx` positions of KV.
    pub fn load(gguf: &Gguf, n_ctx: usize, threads: usize) -> Result<Runner, EngineError> {
        let arch = smelt_models::load(gguf)?;
        if n_ctx == 0 {
            return Err(EngineError::Invalid("num_ctx must be at least 1".into()));
        }
        let mut weights = Vec::with_capacity(arch.weights().entries().len());
        for e in arch.weights().entries() {
            let t = gguf
                .tensor(&e.name)
                .ok_or_else(|| EngineError::Invalid(format!("tensor {} vanished", e.name)))?;
            let data = smelt_quant::dequantize_to_vec(t.dtype, gguf.tensor_data(t))
                .map_err(|err| EngineError::Invalid(format!("tensor {}: {err}", e.name)))?;
            weights.push(data);
        }
        let kv = KvCache::new(n_ctx, &arch.kv_widths());
        Ok(Runner {
            arch,
            backend: ReferenceBackend::new(weights, threads),
            kv,
            tokens: Vec::new(),
            graphs: HashMap::new(),
        })
    }

    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    /// Positions the KV cache holds.
    pub fn n_ctx(&self) -> usize {
        self.kv.capacity()
    }

    /// Tokens whose keys and values are cached, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Bytes of weights and KV cache held.
    pub fn memory_bytes(&self) -> usize {
        self.backend.weight_bytes() + self.kv.bytes()
    }

    /// Keep only the first `n` cached tokens (later positions are overwritten when evaluated again).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Forget the cached sequence.
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Reuse the cached tokens that `prompt` starts with, keeping at least one prompt token to
    /// evaluate (its logits start generation). Returns how many prompt tokens are cached.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let n = common.min(prompt.len().saturating_sub(1));
        self.truncate(n);
        n
    }

    /// Evaluate `tokens` after the cached ones. Returns the logits of the last token
    /// (`Output::LastLogits`), of every token (`AllLogits`, `[n, n_vocab]`) or the final
    /// hidden states (`Hidden`, `[n, n_embd]`).
    pub fn eval(&mut self, tokens: &[u32], output: Output) -> Result<Vec<f32>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Invalid("nothing to evaluate".into()));
        }
        let n_vocab = self.arch.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({n_vocab})"
            )));
        }
        if self.tokens.len() + tokens.len() > self.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: self.tokens.len() + tokens.len(),
                n_ctx: self.n_ctx(),
            });
        }
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mode = match output {
                Output::LastLogits if !last => Output::Hidden,
                m => m,
            };
            let start = self.tokens.len() as u32;
            let positions: Vec<u32> = (start..start + chunk.len() as u32).collect();
            if self.graphs.len() >= MAX_CACHED_GRAPHS
                && !self.graphs.contains_key(&(chunk.len(), mode))
            {
                self.graphs.retain(|k, _| k.0 == 1);
            }
            let arch = &self.arch;
            let graph = self
                .graphs
                .entry((chunk.len(), mode))
                .or_insert_with(|| arch.build(chunk.len(), mode));
            let res = self.backend.execute(graph, chunk, &positions, &mut self.kv);
            self.tokens.extend_from_slice(chunk);
            if output != Output::LastLogits || last {
                out.extend(res);
            }
        }
        Ok(out)
    }
}
