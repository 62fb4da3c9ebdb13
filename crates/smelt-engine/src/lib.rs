//! The engine: loaded models, sequences and their KV caches, sampling, the generation loop.
//! Its boundary is message-shaped ([`api`]): requests in, events out.

pub mod api;
mod error;
pub mod runner;
pub mod sampler;

pub use api::*;
pub use error::EngineError;
pub use runner::Runner;
pub use sampler::Sampler;
