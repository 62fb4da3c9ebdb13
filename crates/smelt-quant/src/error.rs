//! The one error type of this crate.

use smelt_gguf::GgmlType;

/// Why a quantise or dequantise call was refused. Every variant names the operation and the values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// The type has no reference (de)quantiser in this crate (see [`crate::is_supported`]).
    #[error("[{op}] type {dtype} is not supported")]
    Unsupported { op: &'static str, dtype: GgmlType },

    /// The element count does not fill whole blocks.
    #[error("[{op}] {n_elements} elements of {dtype} are not a whole number of {block_size}-element blocks")]
    PartialBlock {
        op: &'static str,
        dtype: GgmlType,
        n_elements: usize,
        block_size: usize,
    },

    /// The byte count does not fill whole blocks.
    #[error("[{op}] {n_bytes} bytes of {dtype} are not a whole number of {type_size}-byte blocks")]
    PartialBlockBytes {
        op: &'static str,
        dtype: GgmlType,
        n_bytes: usize,
        type_size: usize,
    },

    /// The quantised buffer does not have the size the element count implies.
    #[error(
        "[{op}] {n_elements} elements of {dtype} take {expected} bytes, the buffer has {actual}"
    )]
    ByteLength {
        op: &'static str,
        dtype: GgmlType,
        n_elements: usize,
        expected: usize,
        actual: usize,
    },

    /// A row index past the end of the data.
    #[error("[dequantize_row] row {row} of {row_bytes}-byte {dtype} rows is outside the {n_bytes} bytes given")]
    RowOutOfRange {
        dtype: GgmlType,
        row: usize,
        row_bytes: usize,
        n_bytes: usize,
    },

    /// The output buffer has the wrong number of values.
    #[error("[{op}] output has {actual} values, expected {expected}")]
    OutputLength {
        op: &'static str,
        expected: usize,
        actual: usize,
    },

    /// The byte size of the request does not fit in memory addresses.
    #[error("[{op}] {n_elements} elements of {dtype}: size overflows")]
    Overflow {
        op: &'static str,
        dtype: GgmlType,
        n_elements: usize,
    },

    /// An input value is NaN, infinite, or too large for the type's f16 scales (see [`crate::max_abs`]).
    #[error("[quantize] {dtype}: element {index} is {value}, outside the representable range +-{max_abs}")]
    OutOfRange {
        dtype: GgmlType,
        index: usize,
        value: f32,
        max_abs: f32,
    },
}
