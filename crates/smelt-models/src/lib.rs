//! smelt-models
