//! The GGUF container: bounds-checked parse, write, metadata, tensor index, mmap views.
//!
//! ```no_run
//! # fn main() -> Result<(), smelt_gguf::GgufError> {
//! let gguf = smelt_gguf::Gguf::open("model.gguf")?;
//! let arch = gguf.architecture().unwrap_or("?");
//! let n_layer = gguf.get_u32(&format!("{arch}.block_count"))?;
//! for t in gguf.tensors() {
//!     let bytes: &[u8] = gguf.tensor_data(t); // zero-copy view of the mapped file
//!     println!("{} {:?} {} {} bytes", t.name, t.dims, t.dtype, bytes.len());
//! }
//! # let _ = n_layer; Ok(()) }
//! ```
//!
//! # Reading
//! Versions 2 and 3 are read (v1 and big-endian files are refused with a clear error). Parsing
//! never panics and never allocates from an unchecked count: string lengths and array counts are
//! checked against the bytes that remain, shape products use checked arithmetic, and array
//! nesting is bounded by [`MAX_ARRAY_DEPTH`]. Rejected, each with a [`GgufError`] naming the key
//! or tensor: empty or duplicate keys, unknown value or tensor type ids, bools other than 0/1,
//! a `general.alignment` that is not a u32 power of two, 0 or more than 4 dimensions, element
//! counts above `i64::MAX`, rows that are not whole blocks, names over 63 bytes, duplicate
//! tensor names, misaligned offsets, data outside the file, and overlapping tensors.
//! llama.cpp additionally requires tensors to be packed in file order; this reader only needs
//! them aligned, inside the file and disjoint.
//!
//! # Strings
//! GGUF does not promise UTF-8 and some vocabularies hold raw bytes, so string values are kept
//! as bytes ([`GgufString`], [`StringArray`]): lossless access always works, `get_str` and
//! `get_str_array` validate and return an error naming the key (and element) otherwise. Keys and
//! tensor names are identifiers and must be UTF-8.
//!
//! # Tensor data
//! [`Gguf::tensor_data`] returns a slice of the memory-mapped file. With [`Gguf::open`] the map
//! is page-aligned, so every slice is aligned to [`Gguf::alignment`] in memory (32 by default);
//! with [`Gguf::from_bytes`] slices are only as aligned as the caller's buffer.
//!
//! # Writing
//! [`GgufWriter`] writes version 3 in the canonical layout of llama.cpp and gguf-py. Reading a
//! canonically written file and writing it again reproduces it byte for byte (tested on both
//! real models and on a gguf-py fixture).

mod error;
mod file;
mod reader;
mod tensor;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use file::Gguf;
pub use reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH};
pub use tensor::{TensorInfo, MAX_DIMS, MAX_TENSOR_NAME_LEN};
pub use types::GgmlType;
pub use value::{Array, GgufString, StringArray, Value, ValueType};
pub use writer::GgufWriter;
