//! smelt-store
