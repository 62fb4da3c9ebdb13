//! Errors of parsing, querying and writing GGUF files.
//!
//! Every variant says what is wrong and where: `at` is a location such as
//! `metadata key #3 'general.name'`, `tensor info #5 'blk.0.attn_q.weight'` or `header (tensor count)`.

use std::path::PathBuf;

use crate::value::ValueType;

/// Anything that can go wrong reading, querying or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening, mapping, creating or writing a file failed.
    #[error("cannot {op} '{}': {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// Writing to a caller-supplied sink failed.
    #[error("writing GGUF data failed: {0}")]
    Write(#[source] std::io::Error),

    /// The first four bytes are not `GGUF`.
    #[error(
        "not a GGUF file: magic bytes are {found:02x?} ({}), expected \"GGUF\"",
        String::from_utf8_lossy(found)
    )]
    BadMagic { found: [u8; 4] },

    /// A version other than 2 or 3.
    #[error("GGUF version {version} is not supported: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },

    /// The file ends before a fixed-size field.
    #[error(
        "{at}: needs {needed} bytes at offset {offset}, only {remaining} remain (truncated file?)"
    )]
    Truncated {
        at: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },

    /// A string length larger than what is left of the file.
    #[error("{at}: string length {len} exceeds remaining {remaining} bytes")]
    StringTooLong {
        at: String,
        len: u64,
        remaining: u64,
    },

    /// A count (tensors, keys, array elements) that cannot fit in what is left of the file, even if
    /// every item took its smallest possible encoding.
    #[error("{at}: {what} {count} exceeds remaining {remaining} bytes (each needs at least {min_each} bytes)")]
    CountTooLarge {
        at: String,
        what: &'static str,
        count: u64,
        min_each: u64,
        remaining: u64,
    },

    /// A metadata value type id outside 0..=12.
    #[error("{at}: unknown metadata value type id {type_id}")]
    UnknownValueType { at: String, type_id: u32 },

    /// A bool stored as a byte other than 0 or 1.
    #[error("{at}: bool byte is {byte}, expected 0 or 1")]
    InvalidBool { at: String, byte: u8 },

    /// Arrays of arrays nested deeper than [`crate::MAX_ARRAY_DEPTH`].
    #[error("{at}: arrays nested more than {max} levels deep")]
    NestingTooDeep { at: String, max: usize },

    /// A key or tensor name that is not UTF-8 (string *values* may be any bytes).
    #[error("{at}: {what} is not valid UTF-8 ({bytes:02x?})")]
    NotUtf8 {
        at: String,
        what: &'static str,
        bytes: Vec<u8>,
    },

    /// A metadata key of length zero.
    #[error("metadata key #{index}: key is empty")]
    EmptyKey { index: u64 },

    /// The same metadata key twice.
    #[error("metadata key #{index} '{key}': duplicate of key #{first}")]
    DuplicateKey { index: u64, key: String, first: u64 },

    /// `general.alignment` of the wrong type, zero or not a power of two.
    #[error("metadata key 'general.alignment': {reason}")]
    BadAlignment { reason: String },

    /// A tensor name longer than ggml allows (63 bytes).
    #[error("tensor info #{index} '{name}': name is {len} bytes long, at most {max} allowed")]
    TensorNameTooLong {
        index: u64,
        name: String,
        len: usize,
        max: usize,
    },

    /// The same tensor name twice.
    #[error("tensor info #{index} '{name}': duplicate of tensor #{first}")]
    DuplicateTensor {
        index: u64,
        name: String,
        first: u64,
    },

    /// A dimension count outside 1..=4.
    #[error("tensor '{tensor}': {n_dims} dimensions, expected 1 to {max}")]
    BadDimCount {
        tensor: String,
        n_dims: u32,
        max: usize,
    },

    /// A dimension larger than `i64::MAX` (stored as a signed integer by ggml).
    #[error(
        "tensor '{tensor}': dimension {axis} is {value}, larger than {}",
        i64::MAX
    )]
    DimTooLarge {
        tensor: String,
        axis: usize,
        value: u64,
    },

    /// The element count or byte size of a tensor overflows.
    #[error("tensor '{tensor}': {what} of shape {dims:?} overflows")]
    SizeOverflow {
        tensor: String,
        what: &'static str,
        dims: Vec<u64>,
    },

    /// A tensor type id this build does not know (including the removed ids 4 and 5).
    #[error("tensor '{tensor}': unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },

    /// The first dimension is not a whole number of quantisation blocks.
    #[error("tensor '{tensor}': {dtype} rows of {ne0} elements are not a multiple of the block size {block}")]
    RowNotBlockMultiple {
        tensor: String,
        dtype: crate::GgmlType,
        ne0: u64,
        block: usize,
    },

    /// A tensor data offset that is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u32,
    },

    /// A tensor whose bytes lie (partly) outside the file. `start` and `end` are absolute file offsets.
    #[error("tensor '{tensor}': data range {start}..{end} exceeds file size {file_size}")]
    DataOutOfBounds {
        tensor: String,
        start: u128,
        end: u128,
        file_size: u64,
    },

    /// Two tensors whose bytes overlap (offsets relative to the data section).
    #[error("tensor '{second}' (offset {second_offset}) overlaps tensor '{first}' (bytes {first_offset}..{first_end})")]
    OverlappingTensors {
        first: String,
        first_offset: u64,
        first_end: u64,
        second: String,
        second_offset: u64,
    },

    /// Writer: tensor data of the wrong length.
    #[error(
        "tensor '{tensor}': {got} data bytes given, {dtype} of shape {dims:?} needs {expected}"
    )]
    TensorDataSize {
        tensor: String,
        dtype: crate::GgmlType,
        dims: Vec<u64>,
        expected: u64,
        got: usize,
    },

    /// A typed getter found a value of another type.
    #[error("metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: ValueType,
    },

    /// A typed getter found an array of another element type.
    #[error("metadata key '{key}': expected an array of {expected}, found an array of {found}")]
    WrongElementType {
        key: String,
        expected: &'static str,
        found: ValueType,
    },

    /// A typed getter found a number that does not fit the requested type.
    #[error("metadata key '{key}': value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },

    /// A typed string getter found bytes that are not UTF-8.
    #[error("metadata key '{key}'{}: string is not valid UTF-8", index.map(|i| format!(" element {i}")).unwrap_or_default())]
    StringNotUtf8 { key: String, index: Option<usize> },
}
