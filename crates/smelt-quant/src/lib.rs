//! smelt-quant
