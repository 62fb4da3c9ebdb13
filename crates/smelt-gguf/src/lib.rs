//! The GGUF container: bounds-checked parse, write, metadata, tensor index, mmap views.

mod types;

pub use types::GgmlType;
