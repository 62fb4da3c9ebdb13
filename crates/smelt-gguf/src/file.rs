//! [`Gguf`]: a parsed file over its bytes (a read-only memory map or a caller's buffer).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::GgufError;
use crate::reader::{parse, Header};
use crate::tensor::TensorInfo;
use crate::value::{Array, GgufString, StringArray, Value};

/// The bytes a [`Gguf`] reads from.
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Box<dyn AsRef<[u8]> + Send + Sync>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(b) => (**b).as_ref(),
        }
    }
}

/// A parsed, validated GGUF file.
///
/// The header (metadata and tensor infos) is decoded into owned values at open time; tensor
/// data stays in the file's bytes and is handed out as zero-copy slices by
/// [`Gguf::tensor_data`]. `Gguf` is `Send + Sync`, so one `Arc<Gguf>` can serve every thread.
pub struct Gguf {
    storage: Storage,
    header: Header,
    path: Option<PathBuf>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .field("file_size", &self.file_size())
            .finish()
    }
}

impl Gguf {
    /// Open and parse a file through a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref();
        let io = |op, source| GgufError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        // SAFETY: the file is opened read-only and the map is private to this `Gguf`, which owns
        // it for as long as any borrowed slice of it lives (every slice handed out borrows `self`).
        // Memory maps cannot guard against another process truncating or rewriting the file while
        // it is mapped (a read of a vanished page raises SIGBUS); like llama.cpp and every
        // mmap-based loader we accept that model files are not modified while in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("memory-map", e))?;
        let header = parse(&map)?;
        Ok(Gguf {
            storage: Storage::Mmap(map),
            header,
            path: Some(path.to_owned()),
        })
    }

    /// Parse a file already in memory: a `Vec<u8>`, `Arc<[u8]>`, `Box<[u8]>`, `&'static [u8]`, ….
    pub fn from_bytes<B: AsRef<[u8]> + Send + Sync + 'static>(bytes: B) -> Result<Gguf, GgufError> {
        let header = parse(bytes.as_ref())?;
        Ok(Gguf {
            storage: Storage::Owned(Box::new(bytes)),
            header,
            path: None,
        })
    }

    /// The path given to [`Gguf::open`]; None for [`Gguf::from_bytes`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// File size in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Format version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Data alignment in bytes (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> u32 {
        self.header.alignment
    }

    /// Absolute file offset of the data section: the end of the header rounded up to the alignment.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    // ---- metadata -------------------------------------------------------------------------

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header
            .key_index
            .get(key)
            .map(|&i| &self.header.metadata[i].1)
    }

    /// `general.architecture` ("llama", "gemma3", …); None when absent or not a UTF-8 string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")?.as_string()?.to_str().ok()
    }

    fn get_integer<T: TryFrom<i128>>(
        &self,
        key: &str,
        target: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let i = v
            .as_integer()
            .ok_or_else(|| wrong_type(key, "an integer", v))?;
        T::try_from(i).map(Some).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: i.to_string(),
            target,
        })
    }

    /// An integer of any stored integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_integer(key, "u32")
    }

    /// An integer of any stored integer type that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_integer(key, "u64")
    }

    /// An integer of any stored integer type that fits in i32.
    pub fn get_i32(&self, key: &str) -> Result<Option<i32>, GgufError> {
        self.get_integer(key, "i32")
    }

    /// An integer of any stored integer type that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get_integer(key, "i64")
    }

    /// An f32, or an f64 rounded to f32.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        Ok(self.get_f64_like(key, "f32")?.map(|x| x as f32))
    }

    /// An f64, or an f32 widened.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get_f64_like(key, "f64")
    }

    fn get_f64_like(&self, key: &str, expected: &'static str) -> Result<Option<f64>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_float()
            .map(Some)
            .ok_or_else(|| wrong_type(key, expected, v))
    }

    /// A bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "bool", v))
    }

    /// A string as raw bytes (lossless; GGUF strings need not be UTF-8).
    pub fn get_string(&self, key: &str) -> Result<Option<&GgufString>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_string()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "str", v))
    }

    /// A string as UTF-8 text; an error when the bytes are not UTF-8.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        let Some(s) = self.get_string(key)? else {
            return Ok(None);
        };
        s.to_str().map(Some).map_err(|_| GgufError::StringNotUtf8 {
            key: key.to_owned(),
            index: None,
        })
    }

    /// An array of any element type.
    pub fn get_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_array()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "arr", v))
    }

    /// An array of strings as raw bytes (lossless).
    pub fn get_string_array(&self, key: &str) -> Result<Option<&StringArray>, GgufError> {
        let Some(a) = self.get_array(key)? else {
            return Ok(None);
        };
        match a {
            Array::String(v) => Ok(Some(v)),
            _ => Err(wrong_elem(key, "str", a)),
        }
    }

    /// An array of strings as UTF-8 text; an error naming the first element that is not UTF-8.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get_string_array(key)? else {
            return Ok(None);
        };
        v.to_strs().map(Some).map_err(|i| GgufError::StringNotUtf8 {
            key: key.to_owned(),
            index: Some(i),
        })
    }

    /// An array of f32 (borrowed) or f64 (rounded to f32).
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Cow<'_, [f32]>>, GgufError> {
        let Some(a) = self.get_array(key)? else {
            return Ok(None);
        };
        match a {
            Array::F32(v) => Ok(Some(Cow::Borrowed(v))),
            Array::F64(v) => Ok(Some(Cow::Owned(v.iter().map(|&x| x as f32).collect()))),
            _ => Err(wrong_elem(key, "f32", a)),
        }
    }

    /// An array of i32 (borrowed) or of any other integer type whose elements all fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Cow<'_, [i32]>>, GgufError> {
        let Some(a) = self.get_array(key)? else {
            return Ok(None);
        };
        match a {
            Array::I32(v) => Ok(Some(Cow::Borrowed(v))),
            _ => convert_ints(key, a, "i32").map(|v| Some(Cow::Owned(v))),
        }
    }

    /// An array of u32 (borrowed) or of any other integer type whose elements all fit in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Option<Cow<'_, [u32]>>, GgufError> {
        let Some(a) = self.get_array(key)? else {
            return Ok(None);
        };
        match a {
            Array::U32(v) => Ok(Some(Cow::Borrowed(v))),
            _ => convert_ints(key, a, "u32").map(|v| Some(Cow::Owned(v))),
        }
    }

    // ---- tensors --------------------------------------------------------------------------

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header
            .tensor_index
            .get(name)
            .map(|&i| &self.header.tensors[i])
    }

    /// The bytes of a tensor of this file: a zero-copy slice of `n_bytes` bytes.
    ///
    /// # Panics
    /// If `info` did not come from this `Gguf` and its range lies outside this file (every
    /// `TensorInfo` this file hands out was checked to lie inside it at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.header.data_offset as usize + info.offset as usize;
        &self.bytes()[start..start + info.n_bytes as usize]
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.value_type(),
    }
}

fn wrong_elem(key: &str, expected: &'static str, found: &Array) -> GgufError {
    GgufError::WrongElementType {
        key: key.to_owned(),
        expected,
        found: found.elem_type(),
    }
}

fn convert_ints<T: TryFrom<i128>>(
    key: &str,
    a: &Array,
    target: &'static str,
) -> Result<Vec<T>, GgufError> {
    let ints = a.integers().ok_or_else(|| wrong_elem(key, target, a))?;
    ints.into_iter()
        .map(|i| {
            T::try_from(i).map_err(|_| GgufError::OutOfRange {
                key: key.to_owned(),
                value: i.to_string(),
                target,
            })
        })
        .collect()
}

// `Gguf` must stay shareable across threads.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<Gguf>();
};
