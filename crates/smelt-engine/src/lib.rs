//! The engine: loaded models, sequences and their KV caches, sampling, the generation loop.
//! Its boundary is message-shaped ([`api`]): requests in, events out.

pub mod api;

pub use api::*;
