//! The engine side of [`crate::backend`]: `smelt_engine::Model` behind the server's traits.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use smelt_engine::{BackendKind, Event, GenerateRequest, LoadOptions, Model, Usage, BLOCK_SIZE};

use crate::backend::{KvCacheInfo, LoadSpec, LoadedModel, ModelFacts, ModelLoader};
use crate::constrain::TokenTable;

/// Loads GGUF models with the engine.
pub struct EngineLoader;

impl ModelLoader for EngineLoader {
    fn load(&self, path: &Path, spec: LoadSpec) -> Result<Arc<dyn LoadedModel>, String> {
        let opts = LoadOptions {
            num_ctx: spec.num_ctx,
            threads: spec.threads,
            parallel: spec.parallel.max(1),
            kv_positions: spec.kv_positions,
        };
        let model = Model::load(path, opts).map_err(|e| e.to_string())?;
        // Weights read through the file mapping occupy memory too (page cache), though the
        // engine does not allocate them.
        let mapped = model.mapped_weight_bytes() as u64;
        Ok(Arc::new(EngineModel {
            model,
            mapped,
            table: OnceLock::new(),
        }))
    }

    fn estimate_memory(&self, path: &Path, num_ctx: usize) -> Result<u64, String> {
        match BackendKind::from_env().map_err(|e| e.to_string())? {
            // Every weight as f32, and an f32 KV cache.
            BackendKind::Reference => crate::registry::estimate_memory(path, num_ctx, true, 4),
            // Weights mapped as stored, an f16 KV cache.
            BackendKind::Fast | BackendKind::Cuda | BackendKind::Auto => {
                crate::registry::estimate_memory(path, num_ctx, false, 2)
            }
        }
    }

    fn estimate_pool_memory(
        &self,
        path: &Path,
        num_ctx: usize,
        kv_positions: usize,
    ) -> Result<u64, String> {
        match BackendKind::from_env().map_err(|e| e.to_string())? {
            // One sequence's cache: the pool is not used.
            BackendKind::Reference => self.estimate_memory(path, num_ctx),
            // The batch engine runs on the CPU fast backend (the CUDA backend serves one
            // sequence: `smelt run`, `smelt bench`).
            BackendKind::Fast | BackendKind::Cuda | BackendKind::Auto => {
                let extra = kv_positions.saturating_sub(num_ctx) as u64;
                let per = crate::registry::kv_position_bytes(path, 2)?;
                Ok(self
                    .estimate_memory(path, num_ctx)?
                    .saturating_add(per.saturating_mul(extra)))
            }
        }
    }
}

/// A loaded engine model.
pub struct EngineModel {
    model: Model,
    /// Bytes of weights used through the file mapping.
    mapped: u64,
    /// The vocabulary for constrained decoding, built on first use.
    table: OnceLock<Arc<TokenTable>>,
}

impl LoadedModel for EngineModel {
    fn facts(&self) -> ModelFacts {
        let i = self.model.info();
        ModelFacts {
            architecture: i.architecture.clone(),
            n_params: i.n_params,
            context_length_train: i.context_length_train,
            quantization: i.quantization.clone(),
            file_size: i.file_size,
            n_embd: i.n_embd,
            memory_bytes: i.memory_bytes + self.mapped,
            device: i.device.clone(),
        }
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn chat_template_source(&self) -> Option<String> {
        Some(self.model.chat_template().source().to_string())
    }

    fn render_chat(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.model
            .chat_template()
            .render(messages, tools, add_generation_prompt)
            .map_err(|e| e.to_string())
    }

    fn encode_prompt(&self, text: &str) -> Vec<u32> {
        self.model.encode_prompt(text)
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.model
            .tokenizer()
            .encode(text, add_special, parse_special)
    }

    fn detokenize(&self, tokens: &[u32]) -> String {
        self.model.tokenizer().decode(tokens)
    }

    fn token_table(&self) -> Arc<TokenTable> {
        self.table
            .get_or_init(|| {
                let t = self.model.tokenizer();
                let bytes: Vec<Vec<u8>> = (0..t.vocab_size() as u32)
                    .map(|id| t.piece(id, false).to_vec())
                    .collect();
                Arc::new(TokenTable::new(
                    bytes,
                    |id| !t.is_control(id),
                    t.eog_ids().collect(),
                ))
            })
            .clone()
    }

    fn generate(
        &self,
        req: GenerateRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Usage, String> {
        self.model
            .generate(req, on_event)
            .map_err(|e| e.to_string())
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, String> {
        self.model.embed(tokens).map_err(|e| e.to_string())
    }

    fn kv_cache(&self) -> Option<KvCacheInfo> {
        let bytes = self.model.kv_bytes() as u64;
        Some(match self.model.batch_stats() {
            Some(s) => KvCacheInfo {
                bytes,
                block_positions: BLOCK_SIZE as u64,
                blocks_total: s.blocks_total,
                blocks_used: s.blocks_used,
                blocks_cached: s.blocks_cached,
                running: s.running,
                waiting: s.waiting,
            },
            // One sequence's contiguous cache (the reference backend).
            None => KvCacheInfo {
                bytes,
                block_positions: self.model.context_length() as u64,
                blocks_total: 1,
                ..KvCacheInfo::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_context_follows_the_memory_budget() {
        let path = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
        let l = EngineLoader;
        assert_eq!(
            l.default_context(&path, 64 << 30).unwrap(),
            8192,
            "trained context"
        );
        assert_eq!(
            l.default_context(&path, 100 << 20).unwrap(),
            2048,
            "never below 2048"
        );
        let mid = l
            .default_context(&path, 2 * l.estimate_memory(&path, 4096).unwrap())
            .unwrap();
        assert_eq!(mid, 4096);
    }

    #[test]
    fn batch_shape_follows_the_memory_budget() {
        let path = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
        let l = EngineLoader;
        // Room for everything: 8 requests of the whole context.
        assert_eq!(
            l.batch_shape(&path, 4096, 0, 64 << 30).unwrap(),
            (8, 8 * 4096)
        );
        // Room for one request's context only: the pool holds two of 2048.
        let one = l.estimate_pool_memory(&path, 4096, 4096).unwrap();
        assert_eq!(l.batch_shape(&path, 4096, 0, 2 * one).unwrap(), (2, 4096));
        // A configured parallelism is kept; the pool still fits the budget.
        let (p, positions) = l.batch_shape(&path, 4096, 3, 2 * one).unwrap();
        assert_eq!((p, positions), (3, 4096));
        // The pool's keys and values, not its activations, scale with its positions.
        let two = l.estimate_pool_memory(&path, 4096, 8192).unwrap();
        assert_eq!(two - one, 4096 * 30 * 3 * 128 * 2);
    }
}
