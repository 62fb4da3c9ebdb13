//! F16: IEEE half floats, little-endian; one value is one "block" (no block struct). The
//! conversions live in [`crate::half`]: exact widening (as gguf-py's `astype(np.float32)`),
//! round-to-nearest-even narrowing (as numpy's `astype(np.float16)` and ggml's FP32_TO_FP16).

use crate::half::{f16_to_f32, f32_to_f16};

/// f16 bytes -> f32 (caller checked `src.len() == 2 * dst.len()`).
pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
        *o = f16_to_f32(u16::from_le_bytes(*b));
    }
}

/// f32 -> f16 bytes.
pub(crate) fn quantize(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
        *o = f32_to_f16(v).to_le_bytes();
    }
}
