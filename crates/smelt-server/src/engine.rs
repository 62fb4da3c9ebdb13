//! The engine side of [`crate::backend`]: `smelt_engine::Model` behind the server's traits.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use smelt_engine::{Event, GenerateRequest, LoadOptions, Model, Usage};

use crate::backend::{LoadedModel, ModelFacts, ModelLoader};
use crate::constrain::TokenTable;

/// Loads GGUF models with the engine.
pub struct EngineLoader;

impl ModelLoader for EngineLoader {
    fn load(
        &self,
        path: &Path,
        num_ctx: usize,
        threads: usize,
    ) -> Result<Arc<dyn LoadedModel>, String> {
        let model =
            Model::load(path, LoadOptions { num_ctx, threads }).map_err(|e| e.to_string())?;
        Ok(Arc::new(EngineModel {
            model,
            table: OnceLock::new(),
        }))
    }

    fn estimate_memory(&self, path: &Path, num_ctx: usize) -> Result<u64, String> {
        // The reference backend holds every weight as f32.
        crate::registry::estimate_memory(path, num_ctx, true)
    }
}

/// A loaded engine model.
pub struct EngineModel {
    model: Model,
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
            memory_bytes: i.memory_bytes,
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
}
