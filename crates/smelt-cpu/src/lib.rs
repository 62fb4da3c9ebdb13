//! smelt-cpu
