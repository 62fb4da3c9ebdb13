//! Q5_K: a 256-value super-block of eight 32-value groups, 5-bit quants, a 6-bit scale and a
//! 6-bit minimum per group, scaled by the f16 super-block `d` and `dmin`.
//!
//! Layout (176 bytes): `d` (f16), `dmin` (f16), `scales[12]` (as Q4_K), `qh[32]` (the fifth bit
//! of value `e` is bit `e / 32` of `qh[e % 32]`), `qs[128]` (low nibbles, packed as Q4_K).
//! Value = `(d * sc) * q - (dmin * m)`.
//!
//! Float order: as Q4_K (gguf-py and ggml compute `d*sc`, `dmin*m`, then `(d*sc)*q - dm`).

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::formats::q4_k::quantize_scale_min_groups;
use crate::half::f16_to_f32;
use crate::search::{scale_min_k4, Qkx2};

/// One Q5_K block (ggml's `block_q5_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_K {
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
    /// Eight 6-bit scales and eight 6-bit minimums, packed.
    pub scales: [u8; 12],
    /// Fifth bits of the quants.
    pub qh: [u8; 32],
    /// Low four bits of the quants.
    pub qs: [u8; 128],
}

impl BlockQ5_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 176;
}

const _: () = assert!(size_of::<BlockQ5_K>() == BlockQ5_K::BYTES);

impl QuantBlock<{ BlockQ5_K::ELEMS }, { BlockQ5_K::BYTES }> for BlockQ5_K {
    const DTYPE: GgmlType = GgmlType::Q5_K;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_K;

    fn from_bytes(b: &[u8; 176]) -> Self {
        Self {
            d: le_u16(b, 0),
            dmin: le_u16(b, 2),
            scales: take(b, 4),
            qh: take(b, 16),
            qs: take(b, 48),
        }
    }

    fn to_bytes(&self) -> [u8; 176] {
        let mut b = [0u8; 176];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        b[4..16].copy_from_slice(&self.scales);
        b[16..48].copy_from_slice(&self.qh);
        b[48..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        for (g, out) in out.chunks_exact_mut(32).enumerate() {
            // Group g: nibble (g % 2) of bytes 32*(g/2).., fifth bit g of qh.
            let qs = &self.qs[32 * (g / 2)..32 * (g / 2) + 32];
            let shift = 4 * (g % 2);
            let (sc, m) = scale_min_k4(g, &self.scales);
            let (dg, mg) = (d * f32::from(sc), dmin * f32::from(m));
            for ((o, &q), &h) in out.iter_mut().zip(qs).zip(&self.qh) {
                let q = ((q >> shift) & 0x0f) | (((h >> g) & 1) << 4);
                *o = dg * f32::from(q) - mg;
            }
        }
    }

    /// ggml's `quantize_row_q5_K_ref`: Q4_K's search with 31 levels and its own trial range.
    fn quantize(x: &[f32; 256]) -> Self {
        let params = Qkx2 {
            nmax: 31,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (d, dmin, scales, levels) = quantize_scale_min_groups(x, &params);
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for c in 0..4 {
            for l in 0..32 {
                let (a, b) = (levels[64 * c + l], levels[64 * c + 32 + l]);
                qh[l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
                qs[32 * c + l] = (a & 0x0f) | ((b & 0x0f) << 4);
            }
        }
        Self {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }
}
