//! smelt-engine
