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
//! Versions 2 and 3 are read; files are written as version 3. Parsing never panics and never
//! allocates from an unchecked count: see [`GgufError`] for everything that is rejected.

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
