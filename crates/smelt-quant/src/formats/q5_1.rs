//! Q5_1: 32 values, an f16 scale and an f16 minimum, 5-bit unsigned quants.
//!
//! Layout (24 bytes): `d` (f16), `m` (f16), `qh` (u32 LE: bit `j` is the fifth bit of value
//! `j`), `qs[16]` (value `j` low nibble of `qs[j]`, value `j + 16` high nibble).
//! Value = `q * d + m`.
//!
//! Float order: `(d * q) + m` in f32, two roundings, as in gguf-py and ggml.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::min_max;

/// One Q5_1 block (ggml's `block_q5_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum (the value of quant 0), f16 bits.
    pub m: u16,
    /// Fifth bits, a little-endian u32.
    pub qh: [u8; 4],
    /// Low nibbles: low = values 0..16, high = values 16..32.
    pub qs: [u8; 16],
}

impl BlockQ5_1 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 24;
}

const _: () = assert!(size_of::<BlockQ5_1>() == BlockQ5_1::BYTES);

impl QuantBlock<{ BlockQ5_1::ELEMS }, { BlockQ5_1::BYTES }> for BlockQ5_1 {
    const DTYPE: GgmlType = GgmlType::Q5_1;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_1;

    fn from_bytes(b: &[u8; 24]) -> Self {
        Self {
            d: le_u16(b, 0),
            m: le_u16(b, 2),
            qh: take(b, 4),
            qs: take(b, 8),
        }
    }

    fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_le_bytes());
        b[4..8].copy_from_slice(&self.qh);
        b[8..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let lo = u32::from(q & 0x0f) | (((qh >> j) & 1) << 4);
            let hi = u32::from(q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            out[j] = d * lo as f32 + m;
            out[j + 16] = d * hi as f32 + m;
        }
    }

    /// ggml's `quantize_row_q5_1_ref`: min and max of the block map to quants 0 and 31. The clamp
    /// to 31 (gguf-py has it, ggml relies on rounding) only matters for degenerate rounding.
    fn quantize(x: &[f32; 32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| (((v - min) * id + 0.5) as u8).min(31);
        let mut qs = [0u8; 16];
        let mut qh = 0u32;
        for (j, byte) in qs.iter_mut().enumerate() {
            let (lo, hi) = (q(x[j]), q(x[j + 16]));
            *byte = (lo & 0x0f) | ((hi & 0x0f) << 4);
            qh |= u32::from(lo >> 4) << j | u32::from(hi >> 4) << (j + 16);
        }
        Self {
            d: f32_to_f16(d),
            m: f32_to_f16(min),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}
