//! F32: plain little-endian floats; one value is one "block". No block struct: the value is the
//! block. gguf-py's `dequantize` is a view of the bytes, so this is a copy.

/// Little-endian f32 bytes -> f32 (caller checked `src.len() == 4 * dst.len()`).
pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (o, b) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
        *o = f32::from_le_bytes(*b);
    }
}

/// f32 -> little-endian bytes.
pub(crate) fn quantize(src: &[f32], dst: &mut [u8]) {
    for (o, &v) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
        *o = v.to_le_bytes();
    }
}
