//! smelt-server
