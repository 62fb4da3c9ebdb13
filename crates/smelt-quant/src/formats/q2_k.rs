//! Q2_K: a 256-value super-block of sixteen 16-value groups, 2-bit quants, a 4-bit scale and a
//! 4-bit minimum per group, both scaled by the f16 super-block `d` and `dmin`.
//!
//! Layout (84 bytes): `scales[16]` (group `g`: scale in the low nibble, min in the high),
//! `qs[64]`, `d` (f16), `dmin` (f16). Values are stored in two halves of 128; in half `n`, byte
//! `qs[32n + l]` holds values `128n + 32j + l` in bits `2j..2j+2` (j = 0..4).
//! Value = `(d * sc) * q - (dmin * m)`.
//!
//! Float order: gguf-py computes `dl = d * sc` and `ml = dmin * m` in f32, then `dl * q - ml`
//! (two roundings); ggml's `dequantize_row_q2_K` does the same.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::{make_qkx2_quants, nearest_int, Qkx2};

/// One Q2_K block (ggml's `block_q2_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2_K {
    /// Per group: 4-bit scale (low nibble) and 4-bit minimum (high nibble).
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; 64],
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
}

impl BlockQ2_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 84;
}

const _: () = assert!(size_of::<BlockQ2_K>() == BlockQ2_K::BYTES);

impl QuantBlock<{ BlockQ2_K::ELEMS }, { BlockQ2_K::BYTES }> for BlockQ2_K {
    const DTYPE: GgmlType = GgmlType::Q2_K;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_K;

    fn from_bytes(b: &[u8; 84]) -> Self {
        Self {
            scales: take(b, 0),
            qs: take(b, 16),
            d: le_u16(b, 80),
            dmin: le_u16(b, 82),
        }
    }

    fn to_bytes(&self) -> [u8; 84] {
        let mut b = [0u8; 84];
        b[..16].copy_from_slice(&self.scales);
        b[16..80].copy_from_slice(&self.qs);
        b[80..82].copy_from_slice(&self.d.to_le_bytes());
        b[82..].copy_from_slice(&self.dmin.to_le_bytes());
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        for (group, out) in out.chunks_exact_mut(16).enumerate() {
            let sc = self.scales[group];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            // Group g covers values 16g..16g+16: half n = g/8, shift 2*((g/2)%4), bytes from
            // 32n + 16*(g%2).
            let shift = 2 * ((group / 2) % 4);
            let start = 32 * (group / 8) + 16 * (group % 2);
            for (o, &q) in out.iter_mut().zip(&self.qs[start..start + 16]) {
                *o = dl * f32::from((q >> shift) & 3) - ml;
            }
        }
    }

    /// ggml's `quantize_row_q2_K_ref`: per group a |x|-weighted scale+min search (absolute
    /// errors), 4-bit group scales and mins relative to the largest, then requantisation of every
    /// value with the rounded scales.
    fn quantize(x: &[f32; 256]) -> Self {
        const Q4SCALE: f32 = 15.0;
        let params = Qkx2 {
            nmax: 3,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut levels = [0u8; 256];
        let mut aux = [0u8; 16];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for g in 0..16 {
            let xg = &x[16 * g..16 * g + 16];
            let weights: [f32; 16] = std::array::from_fn(|l| xg[l].abs());
            let lv = &mut levels[16 * g..16 * g + 16];
            (scales[g], mins[g]) = make_qkx2_quants(xg, &weights, &params, lv, &mut aux);
            if scales[g] > max_scale {
                max_scale = scales[g];
            }
            if mins[g] > max_min {
                max_min = mins[g];
            }
        }

        // ggml stores the rounded ints with C's narrowing conversion; `as u8` is the same.
        let mut block = BlockQ2_K {
            scales: [0; 16],
            qs: [0; 64],
            d: 0,
            dmin: 0,
        };
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (sc, &s) in block.scales.iter_mut().zip(&scales) {
                *sc = nearest_int(iscale * s) as u8;
            }
            block.d = f32_to_f16(max_scale / Q4SCALE);
        } else {
            block.d = f32_to_f16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (sc, &m) in block.scales.iter_mut().zip(&mins) {
                *sc |= (nearest_int(iscale * m) << 4) as u8;
            }
            block.dmin = f32_to_f16(max_min / Q4SCALE);
        } else {
            block.dmin = f32_to_f16(0.0);
        }

        let d_all = f16_to_f32(block.d);
        let dmin_all = f16_to_f32(block.dmin);
        for g in 0..16 {
            let sc = block.scales[g];
            let d = d_all * f32::from(sc & 0x0f);
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * f32::from(sc >> 4);
            for i in 16 * g..16 * g + 16 {
                levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        block.qs = pack_2bit(&levels);
        block
    }
}

/// Pack 256 two-bit values: in half `n`, byte `32n + l` holds `128n + 32j + l` at bits `2j`.
pub(crate) fn pack_2bit(levels: &[u8; 256]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for n in 0..2 {
        let lv = &levels[128 * n..128 * n + 128];
        for l in 0..32 {
            qs[32 * n + l] = lv[l] | (lv[l + 32] << 2) | (lv[l + 64] << 4) | (lv[l + 96] << 6);
        }
    }
    qs
}
