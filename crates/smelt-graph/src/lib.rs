//! The lazy graph IR.
//!
//! Model code describes a forward pass by calling methods on a [`Graph`]; nothing executes while
//! building. Activations are 2-D `[rows, cols]` f32 tensors: rows are tokens, cols are features
//! (heads are packed along cols, `[n_head * head_dim]`). Runtime values (token ids, positions,
//! KV lengths) are graph inputs bound at execution, so one graph serves every step of its shape
//! class. Backends execute a graph; the reference backend does so op by op.

mod graph;

pub use graph::{Graph, Node, NodeId, Op, WeightId};
