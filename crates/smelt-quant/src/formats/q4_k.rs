//! Q4_K: a 256-value super-block of eight 32-value groups, 4-bit quants, a 6-bit scale and a
//! 6-bit minimum per group, scaled by the f16 super-block `d` and `dmin`.
//!
//! Layout (144 bytes): `d` (f16), `dmin` (f16), `scales[12]` (eight 6-bit scale/min pairs,
//! see [`crate::search`]'s `scale_min_k4`), `qs[128]`: in chunk `c` (0..4), byte `qs[32c + l]`
//! holds value `64c + l` in its low nibble and `64c + 32 + l` in its high nibble.
//! Value = `(d * sc) * q - (dmin * m)`.
//!
//! Float order: gguf-py computes `d * sc` and `dmin * m` in f32, then `(d*sc) * q - dm` (two
//! roundings); ggml's `dequantize_row_q4_K` the same.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::{make_qkx2_quants, nearest_int, pack_scale_min_k4, scale_min_k4, Qkx2};

/// One Q4_K block (ggml's `block_q4_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_K {
    /// Super-block scale for the group scales, f16 bits.
    pub d: u16,
    /// Super-block scale for the group minimums, f16 bits.
    pub dmin: u16,
    /// Eight 6-bit scales and eight 6-bit minimums, packed.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; 128],
}

impl BlockQ4_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 144;
}

const _: () = assert!(size_of::<BlockQ4_K>() == BlockQ4_K::BYTES);

impl QuantBlock<{ BlockQ4_K::ELEMS }, { BlockQ4_K::BYTES }> for BlockQ4_K {
    const DTYPE: GgmlType = GgmlType::Q4_K;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_K;

    fn from_bytes(b: &[u8; 144]) -> Self {
        Self {
            d: le_u16(b, 0),
            dmin: le_u16(b, 2),
            scales: take(b, 4),
            qs: take(b, 16),
        }
    }

    fn to_bytes(&self) -> [u8; 144] {
        let mut b = [0u8; 144];
        b[..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        b[4..16].copy_from_slice(&self.scales);
        b[16..].copy_from_slice(&self.qs);
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        for (c, out) in out.chunks_exact_mut(64).enumerate() {
            let qs = &self.qs[32 * c..32 * c + 32];
            let (lo, hi) = out.split_at_mut(32);
            let (sc, m) = scale_min_k4(2 * c, &self.scales);
            let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
            for (o, &q) in lo.iter_mut().zip(qs) {
                *o = d1 * f32::from(q & 0x0f) - m1;
            }
            let (sc, m) = scale_min_k4(2 * c + 1, &self.scales);
            let (d2, m2) = (d * f32::from(sc), dmin * f32::from(m));
            for (o, &q) in hi.iter_mut().zip(qs) {
                *o = d2 * f32::from(q >> 4) - m2;
            }
        }
    }

    /// ggml's `quantize_row_q4_K_ref`: per group a scale+min search weighted by
    /// `rms(group) + |x|`, 6-bit scales and mins relative to the largest, then requantisation.
    fn quantize(x: &[f32; 256]) -> Self {
        let params = Qkx2 {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (d, dmin, scales, levels) = quantize_scale_min_groups(x, &params);
        let mut qs = [0u8; 128];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
            }
        }
        Self {
            d,
            dmin,
            scales,
            qs,
        }
    }
}

/// The part of Q4_K's and Q5_K's reference quantisers they share: eight 32-value groups searched
/// with [`make_qkx2_quants`], the 6-bit packing of their scales and mins, the f16 super-block
/// scales, and the requantised levels (`0..=params.nmax`). Returns `(d, dmin, scales, levels)`.
pub(crate) fn quantize_scale_min_groups(
    x: &[f32; 256],
    params: &Qkx2,
) -> (u16, u16, [u8; 12], [u8; 256]) {
    let mut levels = [0u8; 256];
    let mut aux = [0u8; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for g in 0..8 {
        let xg = &x[32 * g..32 * g + 32];
        let mut sum_x2 = 0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xg[l].abs());
        let lv = &mut levels[32 * g..32 * g + 32];
        (scales[g], mins[g]) = make_qkx2_quants(xg, &weights, params, lv, &mut aux);
        if scales[g] > max_scale {
            max_scale = scales[g];
        }
        if mins[g] > max_min {
            max_min = mins[g];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml narrows the rounded ints to u8 before clamping; `as u8` is the same narrowing.
    let ls: [u8; 8] = std::array::from_fn(|g| (nearest_int(inv_scale * scales[g]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|g| (nearest_int(inv_min * mins[g]) as u8).min(63));
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);

    let (d_all, dmin_all) = (f16_to_f32(d), f16_to_f32(dmin));
    let nmax = i32::from(params.nmax);
    for g in 0..8 {
        let (sc, m) = scale_min_k4(g, &packed);
        let dg = d_all * f32::from(sc);
        if dg == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for i in 32 * g..32 * g + 32 {
            levels[i] = nearest_int((x[i] + dm) / dg).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}
