//! The engine: loaded models, sequences and their KV caches, sampling, the generation loop.
//! Its boundary is message-shaped ([`api`]): requests in, events out.

pub mod api;
pub mod batch;
mod batcher;
#[cfg(feature = "cuda")]
mod cuda;
mod decoding;
mod error;
pub mod kvpool;
mod model;
mod pacer;
pub mod perplexity;
pub mod runner;
pub mod sampler;
pub mod stop;

pub use api::*;
pub use batch::{BatchOptions, BatchRunner, KvSeq, BLOCK_SIZE};
pub use batcher::{BatchSnapshot, BatchStats};
pub use error::EngineError;
pub use model::{LoadOptions, Model, ModelInfo, STEP_TOKENS};
pub use runner::{
    cuda_available, BackendKind, Runner, RunnerOptions, BACKEND_ENV, DEVICE_ENV, TOP_CANDIDATES,
};
pub use sampler::Sampler;
pub use smelt_cpu::KvType;
