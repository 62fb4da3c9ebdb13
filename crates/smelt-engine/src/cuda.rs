//! The runner's CUDA side: a `smelt-cuda` backend, its device KV cache and programs per shape.

use std::collections::HashMap;
use std::sync::Arc;

use smelt_cuda::{CudaBackend, CudaKvCache, CudaProgram};
use smelt_gguf::Gguf;
use smelt_models::{Architecture, Output};

use crate::EngineError;

/// Programs kept; a decode program holds its captured CUDA graph.
const MAX_PROGRAMS: usize = 8;

/// Fields drop in order: programs (graphs, modules) and the KV cache before the backend
/// that owns the device.
pub(crate) struct CudaExec {
    programs: HashMap<(usize, Output), CudaProgram>,
    pub kv: CudaKvCache,
    pub backend: CudaBackend,
}

fn err(e: smelt_cuda::CudaError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

impl CudaExec {
    pub fn load(
        gguf: &Arc<Gguf>,
        arch: &dyn Architecture,
        n_ctx: usize,
    ) -> Result<CudaExec, EngineError> {
        let backend = CudaBackend::new(Arc::clone(gguf), &arch.weights().specs()).map_err(err)?;
        let kv = backend.new_kv(n_ctx, &arch.kv_widths()).map_err(err)?;
        Ok(CudaExec {
            backend,
            kv,
            programs: HashMap::new(),
        })
    }

    /// Evaluate `chunk` at positions `start..`; the output stays valid until the next call.
    pub fn eval(
        &mut self,
        arch: &dyn Architecture,
        chunk: &[u32],
        start: u32,
        mode: Output,
    ) -> Result<&[f32], EngineError> {
        let key = (chunk.len(), mode);
        if self.programs.len() >= MAX_PROGRAMS && !self.programs.contains_key(&key) {
            self.programs.retain(|k, _| k.0 == 1);
        }
        if !self.programs.contains_key(&key) {
            let prog = self
                .backend
                .lower(&arch.build(chunk.len(), mode), &self.kv)
                .map_err(err)?;
            self.programs.insert(key, prog);
        }
        let positions: Vec<u32> = (start..start + chunk.len() as u32).collect();
        self.backend
            .execute(&self.programs[&key], chunk, &positions, &mut self.kv)
            .map_err(err)
    }
}
