//! BF16: bfloat16, little-endian; one value is one "block" (no block struct). Widening is a
//! shift (gguf-py: `int16 -> int32 << 16`, viewed as f32); narrowing rounds to nearest even and
//! quiets NaN (ggml's `ggml_compute_fp32_to_bf16`, gguf-py's `BF16.quantize_blocks`).

use crate::half::{bf16_to_f32, f32_to_bf16};

/// bf16 bytes -> f32 (caller checked `src.len() == 2 * dst.len()`).
pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
        *o = bf16_to_f32(u16::from_le_bytes(*b));
    }
}

/// f32 -> bf16 bytes.
pub(crate) fn quantize(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
        *o = f32_to_bf16(v).to_le_bytes();
    }
}
