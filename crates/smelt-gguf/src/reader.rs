//! The bounds-checked header parser.
//!
//! Layout (all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 key count;
//! key/value pairs (string key, u32 type, value); tensor infos (string name, u32 n_dims,
//! n_dims × u64 dims, u32 ggml type, u64 offset); zero padding to the alignment; tensor data.
//! A string is a u64 byte length and the bytes; an array is a u32 element type, a u64 count and
//! the elements.
//!
//! Every length and count is checked against the bytes that remain before anything is
//! allocated, and locations are only formatted when an error is returned.

use std::collections::HashMap;

use crate::error::GgufError;
use crate::tensor::{align_up, tensor_layout, TensorInfo, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use crate::value::{Array, GgufString, StringArray, Value, ValueType};
use crate::GgmlType;

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// Deepest nesting of arrays of arrays accepted (1 = an array of scalars). llama.cpp accepts no
/// nesting at all; gguf-py writes it, so a little is allowed, bounded to keep recursion shallow.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The metadata key holding the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

// Smallest encodings, used to reject absurd counts before allocating:
// a key/value pair is a key length (8), at least one key byte, a type (4) and a 1-byte value;
// a tensor info is a name length (8), n_dims (4), one dim (8), a type (4) and an offset (8).
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u32,
    pub data_offset: u64,
}

/// A location, formatted only when an error needs it.
type At<'c> = &'c dyn Fn() -> String;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(bytes);
    a
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, at: At) -> Result<&'a [u8], GgufError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(GgufError::Truncated {
                at: at(),
                offset: self.pos as u64,
                needed: n,
                remaining,
            });
        }
        // n <= remaining, which is a usize.
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self, at: At) -> Result<u8, GgufError> {
        Ok(self.take(1, at)?[0])
    }

    fn u32(&mut self, at: At) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(le(self.take(4, at)?)))
    }

    fn u64(&mut self, at: At) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(le(self.take(8, at)?)))
    }

    /// A length-prefixed string's bytes.
    fn string(&mut self, at: At) -> Result<&'a [u8], GgufError> {
        let len = self.u64(at)?;
        let remaining = self.remaining();
        if len > remaining {
            return Err(GgufError::StringTooLong {
                at: at(),
                len,
                remaining,
            });
        }
        self.take(len, at)
    }

    /// A u64 count of items that each take at least `min_each` bytes, checked against what remains.
    fn count(&mut self, at: At, what: &'static str, min_each: u64) -> Result<usize, GgufError> {
        let count = self.u64(at)?;
        let remaining = self.remaining();
        match count.checked_mul(min_each) {
            // The product is at most the remaining length, itself a usize.
            Some(need) if need <= remaining => Ok(count as usize),
            _ => Err(GgufError::CountTooLarge {
                at: at(),
                what,
                count,
                min_each,
                remaining,
            }),
        }
    }

    fn value_type(&mut self, at: At) -> Result<ValueType, GgufError> {
        let type_id = self.u32(at)?;
        ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType { at: at(), type_id })
    }

    fn bool(&mut self, at: At) -> Result<bool, GgufError> {
        match self.u8(at)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(GgufError::InvalidBool { at: at(), byte }),
        }
    }

    fn value(&mut self, ty: ValueType, at: At) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(at)?),
            ValueType::I8 => Value::I8(self.u8(at)? as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(le(self.take(2, at)?))),
            ValueType::I16 => Value::I16(i16::from_le_bytes(le(self.take(2, at)?))),
            ValueType::U32 => Value::U32(self.u32(at)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(le(self.take(4, at)?))),
            ValueType::F32 => Value::F32(f32::from_le_bytes(le(self.take(4, at)?))),
            ValueType::Bool => Value::Bool(self.bool(at)?),
            ValueType::String => Value::String(GgufString::from(self.string(at)?)),
            ValueType::Array => Value::Array(self.array(at, 1)?),
            ValueType::U64 => Value::U64(self.u64(at)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(le(self.take(8, at)?))),
            ValueType::F64 => Value::F64(f64::from_le_bytes(le(self.take(8, at)?))),
        })
    }

    /// An array's element type, count and elements; `depth` is 1 for a top-level array.
    fn array(&mut self, at: At, depth: usize) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                at: at(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let ty = self.value_type(at)?;
        let n = self.count(at, "array count", ty.min_size())?;

        // Fixed-size elements are decoded in bulk from one checked slice.
        macro_rules! bulk {
            ($t:ty, $variant:ident) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let bytes = self.take((n * SIZE) as u64, at)?;
                Array::$variant(
                    bytes
                        .chunks_exact(SIZE)
                        .map(|c| <$t>::from_le_bytes(le(c)))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n as u64, at)?.to_vec()),
            ValueType::I8 => bulk!(i8, I8),
            ValueType::U16 => bulk!(u16, U16),
            ValueType::I16 => bulk!(i16, I16),
            ValueType::U32 => bulk!(u32, U32),
            ValueType::I32 => bulk!(i32, I32),
            ValueType::F32 => bulk!(f32, F32),
            ValueType::U64 => bulk!(u64, U64),
            ValueType::I64 => bulk!(i64, I64),
            ValueType::F64 => bulk!(f64, F64),
            ValueType::Bool => {
                let bytes = self.take(n as u64, at)?;
                let mut out = Vec::with_capacity(n);
                for (i, &byte) in bytes.iter().enumerate() {
                    match byte {
                        0 | 1 => out.push(byte == 1),
                        _ => {
                            return Err(GgufError::InvalidBool {
                                at: format!("{} element {i}", at()),
                                byte,
                            })
                        }
                    }
                }
                Array::Bool(out)
            }
            ValueType::String => {
                let mut out = StringArray::with_capacity(n, 0);
                for i in 0..n {
                    out.push(self.string(&|| format!("{} element {i}", at()))?);
                }
                Array::String(out)
            }
            ValueType::Array => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(self.array(&|| format!("{} element {i}", at()), depth + 1)?);
                }
                Array::Array(out)
            }
        })
    }
}

/// The first bytes of an invalid name, for the error message.
fn preview(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len().min(32)].to_vec()
}

fn check_version(version: u32) -> Result<(), GgufError> {
    let reason = match version {
        2 | 3 => return Ok(()),
        0 => "version 0 does not exist",
        1 => "GGUF v1 is obsolete (2023); convert the model again with a current tool",
        // A v2/v3 file written big-endian reads as 0x02000000 / 0x03000000 here.
        v if v & 0xFFFF == 0 => "the file looks big-endian, which is not supported",
        _ => "only versions 2 and 3 are supported",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

/// `general.alignment` if present: it must be a u32 power of two (as llama.cpp requires).
pub(crate) fn alignment_of(value: Option<&Value>) -> Result<u32, GgufError> {
    match value {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(*a),
        Some(Value::U32(a)) => Err(GgufError::BadAlignment {
            reason: format!("{a} is not a power of two"),
        }),
        Some(v) => Err(GgufError::BadAlignment {
            reason: format!("type is {}, must be u32", v.value_type()),
        }),
    }
}

/// Parse and validate the header of a whole GGUF file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Header, GgufError> {
    let mut cur = Cursor { buf, pos: 0 };
    let magic = le::<4>(cur.take(4, &|| "header (magic)".into())?);
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "header (version)".into())?;
    check_version(version)?;
    let n_tensors = cur.u64(&|| "header (tensor count)".into())?;
    let n_kv = cur.u64(&|| "header (metadata key count)".into())?;
    let remaining = cur.remaining();
    for (what, count, min_each) in [
        ("tensor count", n_tensors, MIN_TENSOR_INFO_BYTES),
        ("metadata key count", n_kv, MIN_KV_BYTES),
    ] {
        if count
            .checked_mul(min_each)
            .is_none_or(|need| need > remaining)
        {
            return Err(GgufError::CountTooLarge {
                at: "header".into(),
                what,
                count,
                min_each,
                remaining,
            });
        }
    }
    // Both counts are now bounded by the file length, so they fit in usize.
    let (n_tensors, n_kv) = (n_tensors as usize, n_kv as usize);

    let mut metadata = Vec::with_capacity(n_kv);
    let mut key_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let raw = cur.string(&|| format!("metadata key #{i}"))?;
        if raw.is_empty() {
            return Err(GgufError::EmptyKey { index: i as u64 });
        }
        let key = std::str::from_utf8(raw).map_err(|_| GgufError::NotUtf8 {
            at: format!("metadata key #{i}"),
            what: "key",
            bytes: preview(raw),
        })?;
        if let Some(&first) = key_index.get(key) {
            return Err(GgufError::DuplicateKey {
                index: i as u64,
                key: key.to_owned(),
                first: first as u64,
            });
        }
        let at = || format!("metadata key #{i} '{key}'");
        let ty = cur.value_type(&at)?;
        let value = cur.value(ty, &at)?;
        key_index.insert(key.to_owned(), i);
        metadata.push((key.to_owned(), value));
    }
    let alignment = alignment_of(key_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1))?;

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let raw = cur.string(&|| format!("tensor info #{i}"))?;
        let name = std::str::from_utf8(raw).map_err(|_| GgufError::NotUtf8 {
            at: format!("tensor info #{i}"),
            what: "tensor name",
            bytes: preview(raw),
        })?;
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                index: i as u64,
                name: name.to_owned(),
                len: name.len(),
                max: MAX_TENSOR_NAME_LEN,
            });
        }
        if let Some(&first) = tensor_index.get(name) {
            return Err(GgufError::DuplicateTensor {
                index: i as u64,
                name: name.to_owned(),
                first: first as u64,
            });
        }
        let at = || format!("tensor info #{i} '{name}'");
        let n_dims = cur.u32(&at)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name.to_owned(),
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64(&at)?);
        }
        let type_id = cur.u32(&at)?;
        let dtype = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.to_owned(),
            type_id,
        })?;
        let (n_elements, n_bytes) = tensor_layout(name, &dims, dtype)?;
        let offset = cur.u64(&at)?;
        tensor_index.insert(name.to_owned(), i);
        tensors.push(TensorInfo {
            name: name.to_owned(),
            dims,
            dtype,
            offset,
            n_elements,
            n_bytes,
        });
    }

    // The header end is at most the file length, so aligning it cannot overflow a u64.
    let data_offset = align_up(cur.pos as u64, alignment.into()).unwrap_or(u64::MAX);
    check_tensor_ranges(&tensors, data_offset, alignment, buf.len() as u64)?;
    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// Every tensor aligned, inside the file, and not overlapping another.
///
/// llama.cpp is stricter (tensors must be packed in order, each padded to the alignment); this
/// accepts any aligned, disjoint placement.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    data_offset: u64,
    alignment: u32,
    file_size: u64,
) -> Result<(), GgufError> {
    for t in tensors {
        if !t.offset.is_multiple_of(u64::from(alignment)) {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        // u128 holds every sum of three u64 values without overflow.
        let start = u128::from(data_offset) + u128::from(t.offset);
        let end = start + u128::from(t.n_bytes);
        if end > u128::from(file_size) {
            return Err(GgufError::DataOutOfBounds {
                tensor: t.name.clone(),
                start,
                end,
                file_size,
            });
        }
    }
    // In range, so offset + n_bytes cannot overflow below.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.n_bytes {
            return Err(GgufError::OverlappingTensors {
                first: a.name.clone(),
                first_offset: a.offset,
                first_end: a.offset + a.n_bytes,
                second: b.name.clone(),
                second_offset: b.offset,
            });
        }
    }
    Ok(())
}
