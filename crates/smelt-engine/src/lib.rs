//! The engine: loaded models, sequences and their KV caches, sampling, the generation loop.
//! Its boundary is message-shaped ([`api`]): requests in, events out.

pub mod api;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod model;
pub mod perplexity;
pub mod runner;
pub mod sampler;
pub mod stop;

pub use api::*;
pub use error::EngineError;
pub use model::{LoadOptions, Model, ModelInfo};
pub use runner::{cuda_available, BackendKind, Runner, RunnerOptions, BACKEND_ENV, DEVICE_ENV};
pub use sampler::Sampler;
pub use smelt_cpu::KvType;
