//! smelt-tokenizer
