//! Q4_1: 32 values, an f16 scale and an f16 minimum, 4-bit unsigned quants.
//!
//! Layout (20 bytes): `d` (f16), `m` (f16), `qs[16]` (value `j` low nibble of `qs[j]`, value
//! `j + 16` high nibble). Value = `q * d + m`.
//!
//! Float order: gguf-py computes `(d * q) + m` in f32, two separately rounded operations; ggml
//! computes `q*d + m` the same way. Rust never fuses the two into an FMA, so this matches.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::min_max;

/// One Q4_1 block (ggml's `block_q4_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum (the value of quant 0), f16 bits.
    pub m: u16,
    /// Nibbles: low = values 0..16, high = values 16..32.
    pub qs: [u8; 16],
}

impl BlockQ4_1 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 20;
}

const _: () = assert!(size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);

impl QuantBlock<{ BlockQ4_1::ELEMS }, { BlockQ4_1::BYTES }> for BlockQ4_1 {
    const DTYPE: GgmlType = GgmlType::Q4_1;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_1;

    fn from_bytes(b: &[u8; 20]) -> Self {
        Self {
            d: le_u16(b, 0),
            m: le_u16(b, 2),
            qs: take(b, 4),
        }
    }

    fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_le_bytes());
        b[4..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let (lo, hi) = out.split_at_mut(16);
        for ((&q, lo), hi) in self.qs.iter().zip(lo).zip(hi) {
            *lo = d * f32::from(q & 0x0f) + m;
            *hi = d * f32::from(q >> 4) + m;
        }
    }

    /// ggml's `quantize_row_q4_1_ref`: min and max of the block map to quants 0 and 15.
    fn quantize(x: &[f32; 32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        let mut qs = [0u8; 16];
        for (j, byte) in qs.iter_mut().enumerate() {
            *byte = q(x[j]) | (q(x[j + 16]) << 4);
        }
        Self {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qs,
        }
    }
}
