//! smelt-graph
