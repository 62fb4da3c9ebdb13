//! CPU backends. [`reference`] is the plain f32 oracle: op by op, obviously right, kept forever.
//! Every fast kernel and every fused plan is tested against it. [`kernels`] holds the SIMD
//! building blocks of the fast backend: activation quantisers and quantised dot products, chosen
//! at run time for the CPU's instruction set. [`fast`] executes fused plans with them on a
//! persistent thread pool.

pub mod fast;
pub mod kernels;
pub mod reference;

pub use fast::{
    ExecStats, FastBackend, FastError, FastKvCache, KvType, Program, SeqRows, WeightSpec,
};
pub use reference::{KvCache, ReferenceBackend};
