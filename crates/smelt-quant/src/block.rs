//! The shape every block format shares, and the loops that apply a block function to a row.

use smelt_gguf::GgmlType;

/// One block of a block-quantised ggml type: `ELEMS` values stored in `BYTES` bytes.
///
/// Blocks are read from and written to bytes explicitly (little-endian fields), so a block may
/// sit at any address: GGUF aligns tensor data, not the rows or blocks inside it.
pub trait QuantBlock<const ELEMS: usize, const BYTES: usize>: Sized {
    /// The ggml type this block belongs to.
    const DTYPE: GgmlType;

    /// The activation type ggml pairs with this weight type in dot products (its
    /// `vec_dot_type`; see [`crate::vec_dot_type`]).
    const VEC_DOT_TYPE: GgmlType;

    /// Parse one block from its stored bytes.
    fn from_bytes(bytes: &[u8; BYTES]) -> Self;

    /// The stored bytes of this block.
    fn to_bytes(&self) -> [u8; BYTES];

    /// The scalar reference dequantiser: expands the block to f32.
    fn dequantize(&self, out: &mut [f32; ELEMS]);

    /// The scalar reference quantiser (ggml's `quantize_row_*_ref` for this type). Inputs must be
    /// finite and within [`crate::max_abs`] of the type; [`crate::quantize`] checks that.
    fn quantize(x: &[f32; ELEMS]) -> Self;
}

/// Dequantise whole blocks; the caller has checked `src` and `dst` describe the same block count.
pub(crate) fn dequantize_blocks<B, const E: usize, const N: usize>(src: &[u8], dst: &mut [f32])
where
    B: QuantBlock<E, N>,
{
    let (blocks, _) = src.as_chunks::<N>();
    let (outs, _) = dst.as_chunks_mut::<E>();
    for (bytes, out) in blocks.iter().zip(outs) {
        B::from_bytes(bytes).dequantize(out);
    }
}

/// Quantise whole blocks; the caller has checked `src` and `dst` describe the same block count.
pub(crate) fn quantize_blocks<B, const E: usize, const N: usize>(src: &[f32], dst: &mut [u8])
where
    B: QuantBlock<E, N>,
{
    let (xs, _) = src.as_chunks::<E>();
    let (outs, _) = dst.as_chunks_mut::<N>();
    for (x, out) in xs.iter().zip(outs) {
        *out = B::quantize(x).to_bytes();
    }
}

/// `M` bytes of a block starting at `at` (constant offsets inside each format's parser).
#[inline(always)]
pub(crate) fn take<const M: usize>(bytes: &[u8], at: usize) -> [u8; M] {
    let mut out = [0u8; M];
    out.copy_from_slice(&bytes[at..at + M]);
    out
}

/// A little-endian u16 at `at`.
#[inline(always)]
pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(take(bytes, at))
}
