//! Q8_1: 32 values, an f16 scale, an f16 `s = d * sum(q)`, signed 8-bit quants. Only an
//! activation type: ggml's partner of Q4_1 and Q5_1, whose dot products need the sum for the
//! minimum term. gguf-py has no dequantiser for it; value = `q * d` as in ggml's quantiser.
//!
//! Layout (36 bytes): `d` (f16), `s` (f16), `qs[32]` (i8).

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::abs_max;

/// One Q8_1 block (ggml's `block_q8_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// `d * sum(qs)`, f16 bits.
    pub s: u16,
    /// Quants.
    pub qs: [i8; 32],
}

impl BlockQ8_1 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 36;
}

const _: () = assert!(size_of::<BlockQ8_1>() == BlockQ8_1::BYTES);

impl QuantBlock<{ BlockQ8_1::ELEMS }, { BlockQ8_1::BYTES }> for BlockQ8_1 {
    const DTYPE: GgmlType = GgmlType::Q8_1;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_1;

    fn from_bytes(b: &[u8; 36]) -> Self {
        Self {
            d: le_u16(b, 0),
            s: le_u16(b, 2),
            qs: take::<32>(b, 4).map(|q| q as i8),
        }
    }

    fn to_bytes(&self) -> [u8; 36] {
        let mut b = [0u8; 36];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.s.to_le_bytes());
        for (dst, &q) in b[4..].iter_mut().zip(&self.qs) {
            *dst = q as u8;
        }
        b
    }

    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }

    /// ggml's `quantize_row_q8_1_ref`: as Q8_0, plus `s = f16(sum(q) * d)`.
    fn quantize(x: &[f32; 32]) -> Self {
        let d = abs_max(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let qs = x.map(|v| (v * id).round() as i8);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        Self {
            d: f32_to_f16(d),
            s: f32_to_f16(sum as f32 * d),
            qs,
        }
    }
}
