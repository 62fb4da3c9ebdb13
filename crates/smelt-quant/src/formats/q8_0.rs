//! Q8_0: 32 values, one f16 scale, signed 8-bit quants. Also the activation partner of Q4_0,
//! Q5_0 and Q8_0 in ggml's dot products.
//!
//! Layout (34 bytes): `d` (f16), `qs[32]` (i8). Value = `q * d`.
//!
//! Float order: `q * d` in f32, one rounding, as in gguf-py and ggml.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::abs_max;

/// One Q8_0 block (ggml's `block_q8_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Quants.
    pub qs: [i8; 32],
}

impl BlockQ8_0 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 34;
}

const _: () = assert!(size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);

impl QuantBlock<{ BlockQ8_0::ELEMS }, { BlockQ8_0::BYTES }> for BlockQ8_0 {
    const DTYPE: GgmlType = GgmlType::Q8_0;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_0;

    fn from_bytes(b: &[u8; 34]) -> Self {
        Self {
            d: le_u16(b, 0),
            qs: take::<32>(b, 2).map(|q| q as i8),
        }
    }

    fn to_bytes(&self) -> [u8; 34] {
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        for (dst, &q) in b[2..].iter_mut().zip(&self.qs) {
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

    /// ggml's `quantize_row_q8_0_ref`: `d = amax / 127`, quants rounded half away from zero.
    fn quantize(x: &[f32; 32]) -> Self {
        let d = abs_max(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        Self {
            d: f32_to_f16(d),
            qs: x.map(|v| (v * id).round() as i8),
        }
    }
}
