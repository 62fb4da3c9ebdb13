//! Q5_0: 32 values, one f16 scale, 5-bit quants centred on 16.
//!
//! Layout (22 bytes): `d` (f16), `qh` (u32 LE: bit `j` is the fifth bit of value `j`), `qs[16]`
//! (low four bits: value `j` low nibble of `qs[j]`, value `j + 16` high nibble).
//! Value = `(q - 16) * d`.
//!
//! Float order: `d * q` in f32, one rounding, as in gguf-py and ggml.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::signed_absmax;

/// One Q5_0 block (ggml's `block_q5_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Fifth bits, a little-endian u32 (bytes, so the block stays 2-aligned and 22 bytes).
    pub qh: [u8; 4],
    /// Low nibbles: low = values 0..16, high = values 16..32.
    pub qs: [u8; 16],
}

impl BlockQ5_0 {
    /// Values per block.
    pub const ELEMS: usize = 32;
    /// Bytes per block.
    pub const BYTES: usize = 22;
}

const _: () = assert!(size_of::<BlockQ5_0>() == BlockQ5_0::BYTES);

impl QuantBlock<{ BlockQ5_0::ELEMS }, { BlockQ5_0::BYTES }> for BlockQ5_0 {
    const DTYPE: GgmlType = GgmlType::Q5_0;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_0;

    fn from_bytes(b: &[u8; 22]) -> Self {
        Self {
            d: le_u16(b, 0),
            qh: take(b, 2),
            qs: take(b, 6),
        }
    }

    fn to_bytes(&self) -> [u8; 22] {
        let mut b = [0u8; 22];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..6].copy_from_slice(&self.qh);
        b[6..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let lo = i32::from(q & 0x0f) | (((qh >> j) & 1) << 4) as i32;
            let hi = i32::from(q >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
            out[j] = (lo - 16) as f32 * d;
            out[j + 16] = (hi - 16) as f32 * d;
        }
    }

    /// ggml's `quantize_row_q5_0_ref`: the value of largest magnitude maps to -16.
    fn quantize(x: &[f32; 32]) -> Self {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        let mut qs = [0u8; 16];
        let mut qh = 0u32;
        for (j, byte) in qs.iter_mut().enumerate() {
            let (lo, hi) = (q(x[j]), q(x[j + 16]));
            *byte = (lo & 0x0f) | ((hi & 0x0f) << 4);
            qh |= u32::from(lo >> 4) << j | u32::from(hi >> 4) << (j + 16);
        }
        Self {
            d: f32_to_f16(d),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}
