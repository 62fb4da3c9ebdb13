//! Q6_K: a 256-value super-block of sixteen 16-value groups, 6-bit signed quants and a signed
//! 8-bit scale per group, scaled by the f16 `d`.
//!
//! Layout (210 bytes): `ql[128]` (low nibbles), `qh[64]` (high two bits), `scales[16]` (i8), `d`
//! (f16). In half `n` (0..2), value `128n + 32k + l` (k = 0..4, l = 0..32) has its low nibble in
//! `ql[64n + 32(k % 2) + l]` at bit `4 (k / 2)` and its high bits in `qh[32n + l]` at bit `2k`.
//! Value = `(d * sc) * (q - 32)`.
//!
//! Float order: gguf-py computes `d * sc` in f32, then `* q`; ggml's `d * sc[is] * q` is the
//! same left-to-right product.

use smelt_gguf::GgmlType;

use crate::block::{le_u16, take, QuantBlock};
use crate::half::{f16_to_f32, f32_to_f16};
use crate::search::{make_qx_quants, nearest_int};

/// One Q6_K block (ggml's `block_q6_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6_K {
    /// Low four bits of the quants.
    pub ql: [u8; 128],
    /// High two bits of the quants.
    pub qh: [u8; 64],
    /// Group scales.
    pub scales: [i8; 16],
    /// Super-block scale, f16 bits.
    pub d: u16,
}

impl BlockQ6_K {
    /// Values per block.
    pub const ELEMS: usize = 256;
    /// Bytes per block.
    pub const BYTES: usize = 210;
}

const _: () = assert!(size_of::<BlockQ6_K>() == BlockQ6_K::BYTES);

impl QuantBlock<{ BlockQ6_K::ELEMS }, { BlockQ6_K::BYTES }> for BlockQ6_K {
    const DTYPE: GgmlType = GgmlType::Q6_K;
    const VEC_DOT_TYPE: GgmlType = GgmlType::Q8_K;

    fn from_bytes(b: &[u8; 210]) -> Self {
        Self {
            ql: take(b, 0),
            qh: take(b, 128),
            scales: take::<16>(b, 192).map(|s| s as i8),
            d: le_u16(b, 208),
        }
    }

    fn to_bytes(&self) -> [u8; 210] {
        let mut b = [0u8; 210];
        b[..128].copy_from_slice(&self.ql);
        b[128..192].copy_from_slice(&self.qh);
        for (dst, &s) in b[192..208].iter_mut().zip(&self.scales) {
            *dst = s as u8;
        }
        b[208..].copy_from_slice(&self.d.to_le_bytes());
        b
    }

    fn dequantize(&self, out: &mut [f32; 256]) {
        let d = f16_to_f32(self.d);
        let dl = self.scales.map(|s| d * f32::from(s));
        for (chunk, out) in out.chunks_exact_mut(32).enumerate() {
            let (n, k) = (chunk / 4, chunk % 4);
            let ql = &self.ql[64 * n + 32 * (k % 2)..][..32];
            let qh = &self.qh[32 * n..32 * n + 32];
            let (lshift, hshift) = (4 * (k / 2), 2 * k);
            for (l, o) in out.iter_mut().enumerate() {
                let q = ((ql[l] >> lshift) & 0x0f) | (((qh[l] >> hshift) & 3) << 4);
                *o = dl[2 * chunk + l / 16] * (i32::from(q) - 32) as f32;
            }
        }
    }

    /// ggml's `quantize_row_q6_K_ref`: per group an `x^2`-weighted symmetric search
    /// ([`make_qx_quants`]), 8-bit group scales relative to the one of largest magnitude, then
    /// requantisation with the rounded scales.
    fn quantize(x: &[f32; 256]) -> Self {
        const GROUP_MAX_EPS: f32 = 1e-15;
        let mut levels = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (g, scale) in scales.iter_mut().enumerate() {
            let range = 16 * g..16 * g + 16;
            *scale = make_qx_quants(&x[range.clone()], 32, &mut levels[range]);
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = *scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            return Self {
                ql: [0; 128],
                qh: [0; 64],
                scales: [0; 16],
                d: f32_to_f16(0.0),
            };
        }

        let iscale = -128.0 / max_scale;
        let d = f32_to_f16(1.0 / iscale);
        // |iscale * scale| <= 128, so the rounded value fits i8 once capped at 127.
        let group_scales = scales.map(|s| nearest_int(iscale * s).min(127) as i8);
        let d_all = f16_to_f32(d);
        for (g, &sc) in group_scales.iter().enumerate() {
            let dg = d_all * f32::from(sc);
            if dg == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                levels[i] = (nearest_int(x[i] / dg).clamp(-32, 31) + 32) as i8;
            }
        }

        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for n in 0..2 {
            let lv = &levels[128 * n..128 * n + 128];
            for l in 0..32 {
                let q = [lv[l], lv[l + 32], lv[l + 64], lv[l + 96]].map(|v| v as u8);
                ql[64 * n + l] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
                ql[64 * n + 32 + l] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
                qh[32 * n + l] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        Self {
            ql,
            qh,
            scales: group_scales,
            d,
        }
    }
}
