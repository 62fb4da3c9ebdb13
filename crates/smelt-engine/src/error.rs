//! Engine errors.

use smelt_gguf::GgufError;
use smelt_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the prompt needs {needed} positions but the context holds {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("{0}")]
    Invalid(String),
}
