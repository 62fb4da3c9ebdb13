//! Tensor descriptions and the shape rules shared by the reader and the writer.

use crate::error::GgufError;
use crate::GgmlType;

/// Most dimensions a ggml tensor can have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Longest tensor name ggml accepts, in bytes (`GGML_MAX_NAME` is 64 including the NUL).
pub const MAX_TENSOR_NAME_LEN: usize = 63;

/// One tensor as described in the file's tensor-info section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order: `dims[0]` (ne0) is the innermost, contiguous dimension. 1 to 4 entries,
    /// exactly as many as the file stores (trailing 1s are kept).
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: GgmlType,
    /// Byte offset of the data, relative to the start of the data section ([`crate::Gguf::data_offset`]).
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Size of the data in bytes (`dtype.bytes_for(n_elements)`).
    pub n_bytes: u64,
}

/// Check a shape and type the way ggml does and return `(n_elements, n_bytes)`.
///
/// Rules: 1 to 4 dimensions, each at most `i64::MAX` (ggml stores them signed), an element count
/// that fits in i64, a first dimension that is a whole number of blocks, and a byte size that
/// fits in u64.
pub(crate) fn tensor_layout(
    name: &str,
    dims: &[u64],
    dtype: GgmlType,
) -> Result<(u64, u64), GgufError> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            tensor: name.to_owned(),
            n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
            max: MAX_DIMS,
        });
    }
    let overflow = |what| GgufError::SizeOverflow {
        tensor: name.to_owned(),
        what,
        dims: dims.to_vec(),
    };
    let mut n_elements: u64 = 1;
    for (axis, &d) in dims.iter().enumerate() {
        if d > i64::MAX as u64 {
            return Err(GgufError::DimTooLarge {
                tensor: name.to_owned(),
                axis,
                value: d,
            });
        }
        n_elements = n_elements
            .checked_mul(d)
            .ok_or_else(|| overflow("element count"))?;
    }
    if n_elements > i64::MAX as u64 {
        return Err(overflow("element count"));
    }
    let block = dtype.block_size();
    if !dims[0].is_multiple_of(block as u64) {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_owned(),
            dtype,
            ne0: dims[0],
            block,
        });
    }
    let n_bytes = dtype
        .bytes_for(n_elements)
        .ok_or_else(|| overflow("byte size"))?;
    Ok((n_elements, n_bytes))
}

/// `x` rounded up to a multiple of `alignment` (a power of two), None on overflow.
pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}
