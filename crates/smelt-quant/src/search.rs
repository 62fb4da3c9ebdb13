//! Shared pieces of the reference quantisers: block statistics and ggml's scale searches for the
//! K-quants (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` in ggml-quants.c).
//!
//! The searches are reimplemented with the same arithmetic in the same order (each `a*b + c`
//! rounded twice, sums accumulated left to right) so that our files quantise the way llama.cpp's
//! `llama-quantize` does without an importance matrix, decision for decision: tests/ggml_quantize.rs
//! checks the bytes against ggml-quants.c built without floating-point contraction (as ggml-base
//! is on x86-64; a build that fuses `a*b + c` into FMAs flips a rare rounding decision).

/// Below this magnitude ggml treats a group as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, for |x| < 2^22 (ggml's `nearest_int`: adding 1.5 * 2^23 puts
/// the integer in the low mantissa bits). Out-of-range inputs give a meaningless but safe value.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value of largest magnitude, with its sign (the first one on ties; 0 for all zeros).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The largest magnitude.
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if m > v.abs() { m } else { v.abs() })
}

/// (min, max) of a non-empty block.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (Q6_K's search):
/// symmetric quants `L[i] in 0..2*nmax` (offset by `nmax`), weighted by `x^2`, trying 18 scales
/// around `nmax / max` and keeping the one with the best weighted least-squares fit.
/// Returns the scale.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = clamp(nearest_int(iscale * v)) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_levels = |levels: &mut [i8], iscale: f32| {
        for (dst, &v) in levels.iter_mut().zip(x) {
            *dst = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
    };

    let iscale = -(nmax as f32) / max;
    set_levels(levels, iscale);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_levels(levels, iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse` (Q3_K's search): symmetric quants in `-nmax..nmax`
/// from `nmax / max`, then up to five passes that move single quants when that improves the
/// `x^2`-weighted fit. Writes `L[i] + nmax` and returns the scale.
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (dst, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *dst = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (dst, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*dst);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*dst) {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *dst = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for dst in levels.iter_mut() {
        *dst += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The knobs of one [`make_qkx2_quants`] search.
pub(crate) struct Qkx2 {
    /// Largest quant.
    pub nmax: u8,
    /// First trial offset to `nmax` for the inverse scale.
    pub rmin: f32,
    /// Step between trial offsets.
    pub rdelta: f32,
    /// Number of steps (`nstep + 1` trials).
    pub nstep: u32,
    /// Weigh absolute errors (true) or squared errors (false).
    pub use_mad: bool,
}

/// ggml's `make_qkx2_quants` (Q2_K, Q4_K, Q5_K): asymmetric quants `0..=nmax` with a scale and
/// a minimum. Starts from the min..max mapping, then tries `nstep + 1` inverse scales; for each,
/// solves the weighted least-squares scale and minimum for the rounded quants and keeps the
/// trial with the smallest weighted error. Returns `(scale, -min)`; `min` is never positive.
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    p: &Qkx2,
    levels: &mut [u8],
    aux: &mut [u8],
) -> (f32, f32) {
    let nmax = i32::from(p.nmax);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((dst, &v), &w) in levels.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
        *dst = l as u8;
        let diff = scale * l as f32 + min - v;
        best_error += w * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for step in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((dst, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *dst = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&l, &v), &w) in aux.iter().zip(x).zip(weights) {
                let diff = this_scale * f32::from(l) + this_min - v;
                cur_error += w * err(diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(&aux[..levels.len()]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Scale and minimum `j` (0..8) of a Q4_K / Q5_K block, from their 12-byte packing of eight 6-bit
/// pairs (ggml's `get_scale_min_k4`): pairs 0..4 in the low six bits of bytes 0..4 (scales) and
/// 4..8 (mins); pairs 4..8 split into a low nibble in bytes 8..12 and two high bits on top of
/// bytes 0..8.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`scale_min_k4`] for eight 6-bit scales and mins.
pub(crate) fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(-63.7), -64);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let scales = [0, 1, 17, 63, 5, 40, 63, 32];
        let mins = [63, 2, 0, 33, 63, 0, 21, 1];
        let q = pack_scale_min_k4(&scales, &mins);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (scales[j], mins[j]));
        }
    }
}
