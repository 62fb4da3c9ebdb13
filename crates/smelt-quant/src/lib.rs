//! smelt-quant: ggml's block formats (F32, F16, BF16, Q4_0 … Q8_1, the K-quants and Q8_K) with
//! scalar reference dequantisers, bit-exact with the `gguf` Python package, and reference
//! quantisers that follow ggml's `quantize_row_*_ref`.
//!
//! The references here are the oracle for the fast kernels that come later: keep them simple
//! and obviously right. Blocks are parsed from bytes field by field, so data need not be aligned.

mod block;
mod error;
pub mod formats;
pub mod half;
mod search;

pub use block::QuantBlock;
pub use error::QuantError;
pub use formats::{
    BlockQ2_K, BlockQ3_K, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K,
    BlockQ6_K, BlockQ8_0, BlockQ8_1, BlockQ8_K,
};
pub use smelt_gguf::GgmlType;

use block::{dequantize_blocks, quantize_blocks};

/// Whether this crate can dequantise and quantise `dtype` (both directions cover the same set).
pub fn is_supported(dtype: GgmlType) -> bool {
    max_abs(dtype).is_some()
}

/// The largest input magnitude [`quantize`] accepts for `dtype` (None: unsupported type).
///
/// The limits come from the f16 fields: a scale or minimum above 65504 would become infinity.
/// Q4_0/Q5_0/Q8_0 keep `amax / 8`, `/ 16`, `/ 127` in f16; Q4_1/Q5_1 keep the minimum itself;
/// Q8_1 keeps `d * sum(q)`, up to 32 times the largest value; the K-quants are held to 65504,
/// where all their f16 scales stay finite. F32, BF16 and Q8_K are bounded by their own range.
pub fn max_abs(dtype: GgmlType) -> Option<f32> {
    const F16_MAX: f32 = 65504.0;
    let limit = match dtype {
        GgmlType::F32 | GgmlType::Q8_K => f32::MAX,
        GgmlType::BF16 => half::bf16_to_f32(0x7f7f),
        GgmlType::F16 => F16_MAX,
        GgmlType::Q4_0 => F16_MAX * 8.0,
        GgmlType::Q5_0 => F16_MAX * 16.0,
        GgmlType::Q8_0 => F16_MAX * 127.0,
        GgmlType::Q8_1 => F16_MAX / 32.0,
        GgmlType::Q4_1 | GgmlType::Q5_1 => F16_MAX,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            F16_MAX
        }
        _ => return None,
    };
    Some(limit)
}

/// The activation type ggml's CPU backend quantises the other operand to before a dot product
/// with weights of `dtype` (`type_traits_cpu[dtype].vec_dot_type`): Q4_0, Q5_0, Q8_0, IQ4_NL and
/// MXFP4 pair with Q8_0; Q4_1, Q5_1 and Q8_1 with Q8_1; the K-, IQ- and TQ-quants with Q8_K;
/// F16 with F16, BF16 with BF16. Types ggml gives no partner (F32, Q8_K, the integer types, F64)
/// answer F32, which is what ggml's zero-initialised table holds.
pub fn vec_dot_type(dtype: GgmlType) -> GgmlType {
    use GgmlType::*;
    match dtype {
        F16 => F16,
        BF16 => BF16,
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | MXFP4 => Q8_0,
        Q4_1 | Q5_1 | Q8_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S
        | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => Q8_K,
        _ => F32,
    }
}

/// Bytes taken by `n_elements` values of `dtype` (a row, or a whole tensor).
pub fn row_size(dtype: GgmlType, n_elements: usize) -> Result<usize, QuantError> {
    quantized_len("row_size", dtype, n_elements)
}

/// Dequantise `dst.len()` values of `dtype` from `src`, which must hold exactly their bytes.
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    const OP: &str = "dequantize";
    if !is_supported(dtype) {
        return Err(QuantError::Unsupported { op: OP, dtype });
    }
    check_len(OP, dtype, dst.len(), src.len())?;
    match dtype {
        GgmlType::F32 => formats::f32::dequantize(src, dst),
        GgmlType::F16 => formats::f16::dequantize(src, dst),
        GgmlType::BF16 => formats::bf16::dequantize(src, dst),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0, 32, 18>(src, dst),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1, 32, 20>(src, dst),
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0, 32, 22>(src, dst),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1, 32, 24>(src, dst),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0, 32, 34>(src, dst),
        GgmlType::Q8_1 => dequantize_blocks::<BlockQ8_1, 32, 36>(src, dst),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2_K, 256, 84>(src, dst),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3_K, 256, 110>(src, dst),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4_K, 256, 144>(src, dst),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5_K, 256, 176>(src, dst),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6_K, 256, 210>(src, dst),
        GgmlType::Q8_K => dequantize_blocks::<BlockQ8_K, 256, 292>(src, dst),
        _ => return Err(QuantError::Unsupported { op: OP, dtype }),
    }
    Ok(())
}

/// Dequantise all of `src` (whole blocks of `dtype`) into a new vector.
pub fn dequantize_to_vec(dtype: GgmlType, src: &[u8]) -> Result<Vec<f32>, QuantError> {
    const OP: &str = "dequantize";
    if !is_supported(dtype) {
        return Err(QuantError::Unsupported { op: OP, dtype });
    }
    let type_size = dtype.type_size();
    if !src.len().is_multiple_of(type_size) {
        return Err(QuantError::PartialBlockBytes {
            op: OP,
            dtype,
            n_bytes: src.len(),
            type_size,
        });
    }
    // The count is bounded by the input's own length (at most 4 values per byte, for Q2_K's
    // 256 values in 84 bytes), so this allocation is never sized by an unchecked number.
    let n_elements = src.len() / type_size * dtype.block_size();
    let mut out = vec![0f32; n_elements];
    dequantize(dtype, src, &mut out)?;
    Ok(out)
}

/// Dequantise row `row` of a matrix of `dtype` with `n_per_row` values per row stored in
/// `data` (rows back to back), into `dst` (`n_per_row` long).
pub fn dequantize_row(
    dtype: GgmlType,
    data: &[u8],
    n_per_row: usize,
    row: usize,
    dst: &mut [f32],
) -> Result<(), QuantError> {
    const OP: &str = "dequantize_row";
    let row_bytes = quantized_len(OP, dtype, n_per_row)?;
    let range = row
        .checked_mul(row_bytes)
        .and_then(|start| Some(start..start.checked_add(row_bytes)?))
        .filter(|r| r.end <= data.len());
    let Some(range) = range else {
        return Err(QuantError::RowOutOfRange {
            dtype,
            row,
            row_bytes,
            n_bytes: data.len(),
        });
    };
    if dst.len() != n_per_row {
        return Err(QuantError::OutputLength {
            op: OP,
            expected: n_per_row,
            actual: dst.len(),
        });
    }
    dequantize(dtype, &data[range], dst)
}

/// Quantise `src` to `dtype` into `dst`, which must have exactly the bytes `src.len()` values
/// take. Values must be finite and within [`max_abs`] of the type.
pub fn quantize(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    const OP: &str = "quantize";
    let Some(limit) = max_abs(dtype) else {
        return Err(QuantError::Unsupported { op: OP, dtype });
    };
    check_len(OP, dtype, src.len(), dst.len())?;
    // `is_finite` first: NaN compares false with everything.
    if let Some(index) = src.iter().position(|v| !v.is_finite() || v.abs() > limit) {
        return Err(QuantError::OutOfRange {
            dtype,
            index,
            value: src[index],
            max_abs: limit,
        });
    }
    match dtype {
        GgmlType::F32 => formats::f32::quantize(src, dst),
        GgmlType::F16 => formats::f16::quantize(src, dst),
        GgmlType::BF16 => formats::bf16::quantize(src, dst),
        GgmlType::Q4_0 => quantize_blocks::<BlockQ4_0, 32, 18>(src, dst),
        GgmlType::Q4_1 => quantize_blocks::<BlockQ4_1, 32, 20>(src, dst),
        GgmlType::Q5_0 => quantize_blocks::<BlockQ5_0, 32, 22>(src, dst),
        GgmlType::Q5_1 => quantize_blocks::<BlockQ5_1, 32, 24>(src, dst),
        GgmlType::Q8_0 => quantize_blocks::<BlockQ8_0, 32, 34>(src, dst),
        GgmlType::Q8_1 => quantize_blocks::<BlockQ8_1, 32, 36>(src, dst),
        GgmlType::Q2_K => quantize_blocks::<BlockQ2_K, 256, 84>(src, dst),
        GgmlType::Q3_K => quantize_blocks::<BlockQ3_K, 256, 110>(src, dst),
        GgmlType::Q4_K => quantize_blocks::<BlockQ4_K, 256, 144>(src, dst),
        GgmlType::Q5_K => quantize_blocks::<BlockQ5_K, 256, 176>(src, dst),
        GgmlType::Q6_K => quantize_blocks::<BlockQ6_K, 256, 210>(src, dst),
        GgmlType::Q8_K => quantize_blocks::<BlockQ8_K, 256, 292>(src, dst),
        _ => return Err(QuantError::Unsupported { op: OP, dtype }),
    }
    Ok(())
}

/// Quantise `src` to `dtype` into a new byte vector.
pub fn quantize_to_vec(dtype: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let mut out = vec![0u8; quantized_len("quantize", dtype, src.len())?];
    quantize(dtype, src, &mut out)?;
    Ok(out)
}

/// Bytes for `n_elements` values, which must fill whole blocks.
fn quantized_len(
    op: &'static str,
    dtype: GgmlType,
    n_elements: usize,
) -> Result<usize, QuantError> {
    let block_size = dtype.block_size();
    if !n_elements.is_multiple_of(block_size) {
        return Err(QuantError::PartialBlock {
            op,
            dtype,
            n_elements,
            block_size,
        });
    }
    (n_elements / block_size)
        .checked_mul(dtype.type_size())
        .ok_or(QuantError::Overflow {
            op,
            dtype,
            n_elements,
        })
}

/// `n_bytes` must be exactly the size of `n_elements` values, in whole blocks.
fn check_len(
    op: &'static str,
    dtype: GgmlType,
    n_elements: usize,
    n_bytes: usize,
) -> Result<(), QuantError> {
    let expected = quantized_len(op, dtype, n_elements)?;
    if n_bytes != expected {
        return Err(QuantError::ByteLength {
            op,
            dtype,
            n_elements,
            expected,
            actual: n_bytes,
        });
    }
    Ok(())
}
