//! The lazy graph IR and the fusion pass.
//!
//! Model code describes a forward pass by calling methods on a [`Graph`]; nothing executes while
//! building. Activations are 2-D `[rows, cols]` f32 tensors: rows are tokens, cols are features
//! (heads are packed along cols, `[n_head * head_dim]`). Runtime values (token ids, positions,
//! KV lengths) are graph inputs bound at execution, so one graph serves every step of its shape
//! class. The reference backend executes a graph op by op; [`fuse`] cuts it into a [`Plan`] of
//! fused kernels for the fast backends.

mod fuse;
mod graph;
mod plan;

pub use fuse::{fuse, fuse_with, FuseOptions};
pub use graph::{Graph, Node, NodeId, Op, WeightId, WeightSpec};
pub use plan::{BufId, Buffer, Bundle, Dest, Kernel, KernelKind, KvPart, Placement, Plan, Stage};
