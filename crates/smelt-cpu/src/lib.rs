//! CPU backends. [`reference`] is the plain f32 oracle: op by op, obviously right, kept forever.
//! Every fast kernel and every fused plan is tested against it.

pub mod reference;

pub use reference::{KvCache, ReferenceBackend};
