//! The CUDA backend: every fused kernel of a plan becomes CUDA C specialised to its shapes and
//! weight types, compiled by NVRTC for the GPU on first use and cached on disk; decode steps
//! replay as one CUDA graph each. The driver and NVRTC are loaded at run time, so this crate
//! builds, and its tests run (skipping), on machines without CUDA.

mod backend;
mod codegen;
mod cublas;
mod device;
mod layout;
mod profile;

#[cfg(test)]
mod tests;

pub use backend::{
    BatchSeq, CudaBackend, CudaKvCache, CudaProgram, CudaStats, TopRows, GREEDY_IN_FLIGHT,
    GREEDY_MAX_STEPS, SAMPLE_NONE, TOP_INF, TOP_K, TOP_NAN, TOP_OVERFLOW,
};
pub use codegen::{KV_BLOCK, MAX_DECODE_ROWS};
pub use device::{available, Device};
pub use smelt_graph::WeightSpec;

/// Why the CUDA backend cannot run a model or a request.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("[cuda] no usable GPU: {0}")]
    NoDriver(String),
    #[error("[cuda] driver: {0}")]
    Driver(String),
    #[error("[cuda] kernel compilation failed: {0}")]
    Compile(String),
    #[error("[cuda] unsupported: {0}")]
    Unsupported(String),
    #[error("[cuda] {0}")]
    Invalid(String),
}
