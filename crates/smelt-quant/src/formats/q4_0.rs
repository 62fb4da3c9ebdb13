//! Q4_0: 32 values, one f16 scale, 4-bit quants centred on 8.
//!
//! Layout (18 bytes): `d` (f16), then `qs[16]`: value `j` in the low nibble of `qs[j]`, value
//! `j + 16` in the high nibble. Value = `(q - 8) * d`.
//!
//! Float order: gguf-py widens `d` to f32 and computes `d * q` in f32 (one rounding of an exact
//! integer times an f32); ggml computes `q * d`. Multiplication commutes, so both are matched.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::signed_absmax;

/// One Q4_0 block (ggml's `block_q4_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Nibbles: low = values 0..16, high = values 16..32.
    pub qs: [u8; 16],
}

impl BlockQ4_0 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 18;
}

const _: () = assert!(size_of::<BlockQ4_0>() == BlockQ4_0::BYTES);

impl QuantBlock<{ BlockQ4_0::ELEMS }, { BlockQ4_0::BYTES }> for BlockQ4_0 {
    const DTYPE: GgmlType = GgmlType::Q4_0;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_0;

    fn from_bytes(b: &[u8; 18]) -> Self {
        Self {
            d: le_u16(b, 0),
            qs: take(b, 2),
        }
    }

    fn to_bytes(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_to_f32(self.d);
        let (lo, hi) = out.split_at_mut(16);
        for ((&q, lo), hi) in self.qs.iter().zip(lo).zip(hi) {
            *lo = (i32::from(q & 0x0f) - 8) as f32 * d;
            *hi = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }

    /// ggml's `quantize_row_q4_0_ref` (and gguf-py's `Q4_0.quantize_blocks`): the value of largest
    /// magnitude maps to -8, so its sign decides the sign of `d` and the full range -8..7 is used.
    fn quantize(x: &[f32; 32]) -> Self {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // Truncation of (v + 8.5) rounds to nearest; the `as i8` then `min` mirrors ggml's casts.
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let mut qs = [0u8; 16];
        for (j, byte) in qs.iter_mut().enumerate() {
            *byte = q(x[j]) | (q(x[j + 16]) << 4);
        }
        Self {
            d: f32_to_f16(d),
            qs,
        }
    }
}
