//! Q8_K: a 256-value block of signed 8-bit quants with an f32 scale and per-16 sums. Only an
//! activation type: the partner of every K-quant in ggml's dot products (the sums serve the
//! minimum terms). gguf-py has no dequantiser for it; value = `d * q` as ggml's.
//!
//! Layout (292 bytes): `d` (f32), `qs[256]` (i8), `bsums[16]` (i16, sum of each 16 quants).

use smelt_gguf::GgmlType;

use crate::block::{take, QuantBlock};
use crate::search::{nearest_int, signed_absmax};

/// One Q8_K block (ggml's `block_q8_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; 256],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; 16],
}

impl BlockQ8_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 292;
}

const _: () = assert!(size_of::<BlockQ8_K>() == BlockQ8_K::BYTES);

impl QuantBlock<{ BlockQ8_K::ELEMS }, { BlockQ8_K::BYTES }> for BlockQ8_K {
    const DTYPE: GgmlType = GgmlType::Q8_K;
    // ggml gives Q8_K no partner; its zero-initialised table entry reads as F32.
    const VEC_DOT_TYPE: GgmlType = GgmlType::F32;

    fn from_bytes(b: &[u8; 292]) -> Self {
        Self {
            d: f32::from_le_bytes(take(b, 0)),
            qs: take::<256>(b, 4).map(|q| q as i8),
            bsums: std::array::from_fn(|i| i16::from_le_bytes(take(b, 260 + 2 * i))),
        }
    }

    fn to_bytes(&self) -> [u8; 292] {
        let mut b = [0u8; 292];
        b[..4].copy_from_slice(&self.d.to_le_bytes());
        for (dst, &q) in b[4..260].iter_mut().zip(&self.qs) {
            *dst = q as u8;
        }
        for (dst, s) in b[260..].chunks_exact_mut(2).zip(&self.bsums) {
            dst.copy_from_slice(&s.to_le_bytes());
        }
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = self.d * f32::from(q);
        }
    }

    /// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude maps to -127 (not -128,
    /// which ggml's IQ kernels cannot take), `d = 1 / iscale` kept in f32.
    fn quantize(x: &[f32; 256]) -> Self {
        let max = signed_absmax(x);
        if max == 0.0 {
            // ggml leaves `bsums` of an all-zero block unwritten; zeros are the consistent value.
            return Self {
                d: 0.0,
                qs: [0; 256],
                bsums: [0; 16],
            };
        }
        let iscale = -127.0 / max;
        let qs = x.map(|v| nearest_int(iscale * v).min(127) as i8);
        let bsums =
            std::array::from_fn(|g| qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum());
        Self {
            d: 1.0 / iscale,
            qs,
            bsums,
        }
    }
}
