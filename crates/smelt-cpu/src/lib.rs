//! CPU backends. [`reference`] is the plain f32 oracle: op by op, obviously right, kept forever.
//! Every fast kernel and every fused plan is tested against it. [`fast`] executes fused plans
//! on a persistent thread pool with quantised kernels chosen for the CPU.

pub mod fast;
pub mod reference;

pub use fast::{ExecStats, FastBackend, FastError, FastKvCache, Program, WeightSpec};
pub use reference::{KvCache, ReferenceBackend};
