//! Constrained decoding: JSON schemas, any JSON object, and forced tool calls, as
//! [`smelt_engine::TokenConstraint`]s over a model's vocabulary.

pub mod grammar;
pub mod matcher;
pub mod ordered;
pub mod token;

pub use grammar::{Grammar, SchemaError};
pub use ordered::OrderedJson;
pub use token::{GrammarConstraint, TokenTable};
