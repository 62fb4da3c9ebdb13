//! [`GgufWriter`]: build a GGUF v3 file from metadata and tensors.
//!
//! The layout is the one llama.cpp's `gguf_write_to_file` and gguf-py produce: header, key/value
//! pairs in insertion order, tensor infos in insertion order with offsets packed one after the
//! other (each tensor padded to the alignment), zero padding up to the data section, then each
//! tensor's bytes followed by zero padding to the alignment (the last one too).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::error::GgufError;
use crate::file::Gguf;
use crate::reader::{alignment_of, ALIGNMENT_KEY, MAX_ARRAY_DEPTH};
use crate::tensor::{align_up, tensor_layout, TensorInfo, MAX_TENSOR_NAME_LEN};
use crate::value::{Array, Value};
use crate::GgmlType;

/// The version written.
const WRITE_VERSION: u32 = 3;

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    n_elements: u64,
    data: Cow<'a, [u8]>,
}

/// Collects metadata and tensors, then writes them as a GGUF v3 file.
///
/// Everything is validated as it is added (key and name rules, shapes, data sizes), so a file
/// this writer produces always parses with [`Gguf`], and with llama.cpp as long as no metadata
/// value is an array of arrays (gguf-py writes those, llama.cpp refuses them). Tensor data may
/// be borrowed (`&'a [u8]`, e.g. from another [`Gguf`]) or owned (`Vec<u8>`).
///
/// ```
/// use smelt_gguf::{GgmlType, Gguf, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama")?;
/// w.add_metadata("llama.block_count", 1u32)?;
/// w.add_tensor("output_norm.weight", &[4], GgmlType::F32, vec![0u8; 16])?;
/// let g = Gguf::from_bytes(w.to_bytes()?)?;
/// assert_eq!(g.get_u32("llama.block_count")?, Some(1));
/// # Ok::<(), smelt_gguf::GgufError>(())
/// ```
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor<'a>>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment())
            .finish()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty writer (alignment 32 unless `general.alignment` is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer holding all of `src`'s metadata and tensors (data borrowed), in file order.
    /// Writing it reproduces `src` byte for byte when `src` was written canonically (tensors
    /// packed in order, zero padding, padding after the last tensor), as llama.cpp and gguf-py do.
    pub fn from_gguf(src: &'a Gguf) -> Result<Self, GgufError> {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata() {
            w.add_metadata(k.clone(), v.clone())?;
        }
        for t in src.tensors() {
            w.add_tensor(t.name.clone(), &t.dims, t.dtype, src.tensor_data(t))?;
        }
        Ok(w)
    }

    /// The data alignment that will be used.
    pub fn alignment(&self) -> u32 {
        // Validated when the key was added.
        alignment_of(self.get(ALIGNMENT_KEY)).unwrap_or(crate::DEFAULT_ALIGNMENT)
    }

    /// The metadata added so far, in order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value added for `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn check_value(key: &str, value: &Value) -> Result<(), GgufError> {
        if let Value::Array(a) = value {
            if a.depth() > MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep {
                    at: format!("metadata key '{key}'"),
                    max: MAX_ARRAY_DEPTH,
                });
            }
        }
        if key == ALIGNMENT_KEY {
            alignment_of(Some(value))?;
        }
        Ok(())
    }

    /// Append a key/value pair; an error if the key is empty or already present.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<&mut Self, GgufError> {
        let (key, value) = (key.into(), value.into());
        let index = self.metadata.len() as u64;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if let Some(&first) = self.key_index.get(&key) {
            return Err(GgufError::DuplicateKey {
                index,
                key,
                first: first as u64,
            });
        }
        Self::check_value(&key, &value)?;
        self.key_index.insert(key.clone(), self.metadata.len());
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Replace the value of `key` where it stands, or append it when absent.
    pub fn set_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<&mut Self, GgufError> {
        let (key, value) = (key.into(), value.into());
        match self.key_index.get(&key) {
            Some(&i) => {
                Self::check_value(&key, &value)?;
                self.metadata[i].1 = value;
                Ok(self)
            }
            None => self.add_metadata(key, value),
        }
    }

    /// Set `general.alignment` (a power of two).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self, GgufError> {
        self.set_metadata(ALIGNMENT_KEY, Value::U32(alignment))
    }

    /// Append a tensor. `dims` are in ggml order (ne0 first); `data` must be exactly
    /// `dtype.bytes_for(product of dims)` bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self, GgufError> {
        let (name, data) = (name.into(), data.into());
        let index = self.tensors.len() as u64;
        if name.len() > MAX_TENSOR_NAME_LEN {
            let len = name.len();
            return Err(GgufError::TensorNameTooLong {
                index,
                name,
                len,
                max: MAX_TENSOR_NAME_LEN,
            });
        }
        if let Some(&first) = self.tensor_index.get(&name) {
            return Err(GgufError::DuplicateTensor {
                index,
                name,
                first: first as u64,
            });
        }
        let (n_elements, n_bytes) = tensor_layout(&name, dims, dtype)?;
        if data.len() as u64 != n_bytes {
            return Err(GgufError::TensorDataSize {
                tensor: name,
                dtype,
                dims: dims.to_vec(),
                expected: n_bytes,
                got: data.len(),
            });
        }
        self.tensor_index.insert(name.clone(), self.tensors.len());
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            dtype,
            n_elements,
            data,
        });
        Ok(self)
    }

    /// The tensor infos as they will be written (offsets relative to the data section).
    pub fn tensor_infos(&self) -> Result<Vec<TensorInfo>, GgufError> {
        let alignment = u64::from(self.alignment());
        let mut offset = 0u64;
        let mut out = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let n_bytes = t.data.len() as u64;
            out.push(TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                dtype: t.dtype,
                offset,
                n_elements: t.n_elements,
                n_bytes,
            });
            offset = offset
                .checked_add(n_bytes)
                .and_then(|end| align_up(end, alignment))
                .ok_or_else(|| GgufError::SizeOverflow {
                    tensor: t.name.clone(),
                    what: "data offset",
                    dims: t.dims.clone(),
                })?;
        }
        Ok(out)
    }

    /// Write the file to `sink`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, sink: W) -> Result<u64, GgufError> {
        let infos = self.tensor_infos()?;
        self.write_with(&infos, sink).map_err(GgufError::Write)
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Create (or truncate) `path` and write the file to it; returns the number of bytes written.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let io = |op, source| GgufError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let infos = self.tensor_infos()?;
        let mut file = BufWriter::new(File::create(path).map_err(|e| io("create", e))?);
        let n = self
            .write_with(&infos, &mut file)
            .map_err(|e| io("write", e))?;
        file.into_inner()
            .map_err(|e| io("write", e.into_error()))?
            .sync_all()
            .map_err(|e| io("sync", e))?;
        Ok(n)
    }

    fn write_with<W: Write>(&self, infos: &[TensorInfo], sink: W) -> io::Result<u64> {
        let alignment = u64::from(self.alignment());
        let mut out = Out { sink, written: 0 };
        out.bytes(b"GGUF")?;
        out.u32(WRITE_VERSION)?;
        out.u64(self.tensors.len() as u64)?;
        out.u64(self.metadata.len() as u64)?;
        for (key, value) in &self.metadata {
            out.string(key.as_bytes())?;
            out.u32(value.value_type().id())?;
            out.value(value)?;
        }
        for t in infos {
            out.string(t.name.as_bytes())?;
            out.u32(t.dims.len() as u32)?;
            for &d in &t.dims {
                out.u64(d)?;
            }
            out.u32(t.dtype.id())?;
            out.u64(t.offset)?;
        }
        out.pad(alignment)?;
        for t in &self.tensors {
            out.bytes(&t.data)?;
            out.pad(alignment)?;
        }
        Ok(out.written)
    }
}

/// A sink that counts what it has written (for padding).
struct Out<W> {
    sink: W,
    written: u64,
}

impl<W: Write> Out<W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.sink.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn u32(&mut self, x: u32) -> io::Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    fn u64(&mut self, x: u64) -> io::Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    fn string(&mut self, s: &[u8]) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s)
    }

    fn pad(&mut self, alignment: u64) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut n = self.written.next_multiple_of(alignment) - self.written;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.bytes(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    /// A value without its type id.
    fn value(&mut self, v: &Value) -> io::Result<()> {
        match v {
            Value::U8(x) => self.bytes(&[*x]),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.u32(*x),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[u8::from(*x)]),
            Value::String(s) => self.string(s.as_bytes()),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.u64(*x),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
        }
    }

    /// An array's element type, count and elements.
    fn array(&mut self, a: &Array) -> io::Result<()> {
        self.u32(a.elem_type().id())?;
        self.u64(a.len() as u64)?;
        macro_rules! each {
            ($v:expr) => {{
                for x in $v {
                    self.bytes(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match a {
            Array::U8(v) => self.bytes(v),
            Array::I8(v) => each!(v),
            Array::U16(v) => each!(v),
            Array::I16(v) => each!(v),
            Array::U32(v) => each!(v),
            Array::I32(v) => each!(v),
            Array::F32(v) => each!(v),
            Array::U64(v) => each!(v),
            Array::I64(v) => each!(v),
            Array::F64(v) => each!(v),
            Array::Bool(v) => {
                let bytes: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
                self.bytes(&bytes)
            }
            Array::String(v) => {
                for s in v.iter() {
                    self.string(s)?;
                }
                Ok(())
            }
            Array::Array(v) => {
                for inner in v {
                    self.array(inner)?;
                }
                Ok(())
            }
        }
    }
}
