//! Q3_K: a 256-value super-block of sixteen 16-value groups, 3-bit signed quants and a signed
//! 6-bit scale per group, all scaled by the f16 `d`.
//!
//! Layout (110 bytes): `hmask[32]` (the third bit of value `e` is bit `e / 32` of
//! `hmask[e % 32]`; when it is SET the quant is not shifted, when clear 4 is subtracted),
//! `qs[64]` (low two bits, packed as in Q2_K), `scales[12]` (sixteen 6-bit values: low nibbles in
//! bytes 0..8, groups 0..8 in the low and 8..16 in the high nibbles; the two high bits of group
//! `g` at bits `2 * (g / 4)` of byte `8 + g % 4`; stored with +32 offset), `d` (f16).
//! Value = `(d * (sc - 32)) * (q - 4 * !hbit)`.
//!
//! Float order: gguf-py computes `dl = d * sc` in f32 then `dl * q`; ggml the same.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::formats::q2_k::pack_2bit;
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::{make_q3_quants, nearest_int};

/// One Q3_K block (ggml's `block_q3_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3_K {
    /// Third (high) bits of the quants.
    pub hmask: [u8; 32],
    /// Low two bits of the quants, four per byte.
    pub qs: [u8; 64],
    /// Sixteen 6-bit group scales, offset by 32.
    pub scales: [u8; 12],
    /// Super-block scale, f16 bits.
    pub d: u16,
}

impl BlockQ3_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 110;

    /// The sixteen signed group scales (`-32..=31`).
    pub fn group_scales(&self) -> [i8; 16] {
        let s = &self.scales;
        std::array::from_fn(|g| {
            let low = if g < 8 { s[g] & 0x0f } else { s[g - 8] >> 4 };
            let high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }
}

const _: () = assert!(size_of::<BlockQ3_K>() == BlockQ3_K::BYTES);

impl QuantBlock<{ BlockQ3_K::ELEMS }, { BlockQ3_K::BYTES }> for BlockQ3_K {
    const DTYPE: GgmlType = GgmlType::Q3_K;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_K;

    fn from_bytes(b: &[u8; 110]) -> Self {
        Self {
            hmask: take(b, 0),
            qs: take(b, 32),
            scales: take(b, 96),
            d: le_u16(b, 108),
        }
    }

    fn to_bytes(&self) -> [u8; 110] {
        let mut b = [0u8; 110];
        b[..32].copy_from_slice(&self.hmask);
        b[32..96].copy_from_slice(&self.qs);
        b[96..108].copy_from_slice(&self.scales);
        b[108..].copy_from_slice(&self.d.to_le_bytes());
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        let d = f16_to_f32(self.d);
        let dl = self.group_scales().map(|sc| d * f32::from(sc));
        for (chunk, out) in out.chunks_exact_mut(32).enumerate() {
            // Values 32c..32c+32: half n = c/4 and shift 2*(c%4) in qs; high bit c of hmask.
            let (n, shift) = (chunk / 4, 2 * (chunk % 4));
            let qs = &self.qs[32 * n..32 * n + 32];
            for (l, o) in out.iter_mut().enumerate() {
                let low = i32::from((qs[l] >> shift) & 3);
                let unshifted = (self.hmask[l] >> chunk) & 1 != 0;
                let q = if unshifted { low } else { low - 4 };
                *o = dl[2 * chunk + l / 16] * q as f32;
            }
        }
    }

    /// ggml's `quantize_row_q3_K_ref`: per group an `x^2`-weighted symmetric search
    /// ([`make_q3_quants`]), 6-bit group scales relative to the one of largest magnitude, then
    /// requantisation with the rounded scales.
    fn quantize(x: &[f32; 256]) -> Self {
        let mut levels = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (g, scale) in scales.iter_mut().enumerate() {
            let range = 16 * g..16 * g + 16;
            *scale = make_q3_quants(&x[range.clone()], 4, &mut levels[range]);
            if scale.abs() > amax {
                amax = scale.abs();
                max_scale = *scale;
            }
        }

        let mut block = BlockQ3_K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: 0,
        };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (g, &s) in scales.iter().enumerate() {
                let l = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
                if g < 8 {
                    block.scales[g] = l & 0x0f;
                } else {
                    block.scales[g - 8] |= (l & 0x0f) << 4;
                }
                block.scales[8 + g % 4] |= (l >> 4) << (2 * (g / 4));
            }
            block.d = f32_to_f16(1.0 / iscale);
        } else {
            block.d = f32_to_f16(0.0);
        }

        let d_all = f16_to_f32(block.d);
        for (g, &sc) in block.group_scales().iter().enumerate() {
            let d = d_all * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                levels[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }

        // Levels are 0..8 now; the bit 4 goes to hmask, the low two bits to qs.
        let mut low = [0u8; 256];
        for (i, (&l, lo)) in levels.iter().zip(low.iter_mut()).enumerate() {
            let mut l = l as u8;
            if l > 3 {
                block.hmask[i % 32] |= 1 << (i / 32);
                l -= 4;
            }
            *lo = l;
        }
        block.qs = pack_2bit(&low);
        block
    }
}
