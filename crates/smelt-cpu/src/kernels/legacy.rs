//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights: 32-value blocks with one f16 scale (and an f16
//! minimum for the `_1` types), against Q8_0 activations (Q8_1 for the `_1` types).
//!
//! Per block, `dot = d_w * d_x * sum(q_w * q_x) [+ m_w * s_x]`, the integer sum exact in i32.
//!
//! The SIMD tiles keep the 4- and 5-bit quants unsigned (0..15, 0..31) so they feed
//! `vpmaddubsw`/`vpdpbusd` directly, and take the zero point out with the activation's block sum:
//! `sum((q - 8) * x) = sum(q * x) - 8 * sum(x)`. That sum depends on the activation only, so it is
//! computed once per block and token and shared by every row of the tile (ggml instead moves the
//! weight's sign onto the activation for every row). On VNNI the correction is the initial value
//! of `vpdpbusd`'s accumulator, so it costs nothing per row. Q8_0 weights use the same idea on
//! VNNI (`w + 128` is unsigned, `- 128 * sum(x)` is shared); AVX2 uses the sign trick there.

use smelt_quant::half::f16_to_f32;

use super::tile::RowDot;

/// The layout of one 32-value weight format.
pub(crate) trait Legacy {
    /// Bytes per weight block.
    const BYTES: usize;
    /// Offset of the packed quants (16 nibble bytes, or 32 signed bytes for Q8_0).
    const QS: usize;
    /// Offset of the u32 of fifth bits (Q5_0, Q5_1).
    const QH: Option<usize>;
    /// Offset of the f16 minimum (Q4_1, Q5_1: value = d * q + m).
    const MIN: Option<usize>;
    /// The zero point subtracted from the stored quant (Q4_0: 8, Q5_0: 16, else 0).
    const BIAS: i32;
    /// Quants are signed bytes (Q8_0).
    const BITS8: bool;
    /// Bytes per activation block: 34 (Q8_0) or 36 (Q8_1, which carries `d * sum(q)`).
    const X_BYTES: usize;
}

macro_rules! legacy_format {
    ($name:ident, $bytes:expr, $qs:expr, $qh:expr, $min:expr, $bias:expr, $bits8:expr, $x:expr) => {
        #[allow(non_camel_case_types)]
        pub(crate) struct $name;
        impl Legacy for $name {
            const BYTES: usize = $bytes;
            const QS: usize = $qs;
            const QH: Option<usize> = $qh;
            const MIN: Option<usize> = $min;
            const BIAS: i32 = $bias;
            const BITS8: bool = $bits8;
            const X_BYTES: usize = $x;
        }
        impl RowDot for $name {
            const W_BLOCK: usize = $bytes;
            const X_BLOCK: usize = $x;
            fn dot(nb: usize, w: &[u8], x: &[u8]) -> f32 {
                dot_scalar::<$name>(nb, w, x)
            }
        }
    };
}

legacy_format!(Q4_0, 18, 2, None, None, 8, false, 34);
legacy_format!(Q4_1, 20, 4, None, Some(2), 0, false, 36);
legacy_format!(Q5_0, 22, 6, Some(2), None, 16, false, 34);
legacy_format!(Q5_1, 24, 8, Some(4), Some(2), 0, false, 36);
legacy_format!(Q8_0, 34, 2, None, None, 0, true, 34);

fn f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Value `j` (0..32) of a weight block, zero point removed.
fn quant<F: Legacy>(wb: &[u8], j: usize) -> i32 {
    let qs = &wb[F::QS..];
    if F::BITS8 {
        return i32::from(qs[j] as i8);
    }
    let nibble = if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    };
    let high = match F::QH {
        Some(at) => {
            let qh = u32::from_le_bytes([wb[at], wb[at + 1], wb[at + 2], wb[at + 3]]);
            (((qh >> j) & 1) << 4) as i32
        }
        None => 0,
    };
    i32::from(nibble) + high - F::BIAS
}

/// The portable kernel: integer sum per block, then its scale.
fn dot_scalar<F: Legacy>(nb: usize, w: &[u8], x: &[u8]) -> f32 {
    let x_qs = F::X_BYTES - 32;
    let mut acc = 0f32;
    for (wb, xb) in w
        .chunks_exact(F::BYTES)
        .zip(x.chunks_exact(F::X_BYTES))
        .take(nb)
    {
        let sumi: i32 = (0..32)
            .map(|j| quant::<F>(wb, j) * i32::from(xb[x_qs + j] as i8))
            .sum();
        acc += f16(wb, 0) * f16(xb, 0) * sumi as f32;
        if let Some(m) = F::MIN {
            acc += f16(wb, m) * f16(xb, 2);
        }
    }
    acc
}

/// The SIMD tile, instantiated once per instruction-set level with that level's operations.
#[cfg(target_arch = "x86_64")]
macro_rules! legacy_tile {
    ($features:literal) => {
        use std::arch::x86_64::*;

        use super::Legacy;
        use crate::kernels::tile::{unroll, TileArgs};

        /// `R` rows x `T` tokens; see [`crate::kernels::tile::TileFn`] for the contract.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn tile<const R: usize, const T: usize, F: Legacy>(a: &TileArgs) {
            let x_qs = F::X_BYTES - 32;
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let prefetch = crate::kernels::tile::prefetch_enabled();
            for b in 0..a.nb {
                if prefetch {
                    // The next row group, as one linear stream at the pace of this one (a
                    // hint only: past the end of the data it is harmless). See
                    // `prefetch_enabled`.
                    prefetch_span(a.w.wrapping_add(R * a.ws + b * R * F::BYTES), R * F::BYTES);
                }
                let mut xv = [_mm256_setzero_si256(); T];
                let mut bias = [_mm256_setzero_si256(); T];
                let mut dx = [_mm256_setzero_ps(); T];
                // Q8_1's d * sum(q), over 8: added to all 8 lanes of the accumulator, the
                // final horizontal sum restores it.
                let mut sx8 = [_mm256_setzero_ps(); T];
                unroll!(T, t, {
                    // SAFETY: t < T and b < nb, so the block is inside activation row t.
                    let xb = unsafe { a.x.add(t * a.xs + b * F::X_BYTES) };
                    // SAFETY: the block has X_BYTES bytes: d at 0, s at 2, 32 quants at x_qs.
                    unsafe {
                        dx[t] = f16_splat(xb);
                        if F::MIN.is_some() {
                            sx8[t] = _mm256_mul_ps(f16_splat(xb.add(2)), _mm256_set1_ps(0.125));
                        }
                        xv[t] = load256(xb.add(x_qs));
                    }
                    bias[t] = if F::BITS8 {
                        i8i8_bias(xv[t])
                    } else if F::BIAS != 0 {
                        neg_times(sum_i8(xv[t]), F::BIAS)
                    } else {
                        _mm256_setzero_si256()
                    };
                });
                unroll!(R, r, {
                    // SAFETY: r < R and b < nb, so the block is inside weight row r.
                    let wb = unsafe { a.w.add(r * a.ws + b * F::BYTES) };
                    // SAFETY: every offset read below lies inside the block's BYTES bytes.
                    let (dw, q) = unsafe {
                        let q = if F::BITS8 {
                            load256(wb.add(F::QS))
                        } else {
                            let low = nibbles(wb.add(F::QS));
                            match F::QH {
                                Some(at) => _mm256_or_si256(low, bit_bytes(u32_at(wb.add(at)), 16)),
                                None => low,
                            }
                        };
                        (f16_splat(wb), q)
                    };
                    unroll!(T, t, {
                        let dot = if F::BITS8 {
                            dot_i8i8(bias[t], q, xv[t])
                        } else {
                            dot_u8i8(bias[t], q, xv[t])
                        };
                        acc[r][t] = fma_i32(acc[r][t], dot, _mm256_mul_ps(dw, dx[t]));
                    });
                    if let Some(at) = F::MIN {
                        // SAFETY: the minimum lies inside the block.
                        let mw = unsafe { f16_splat(wb.add(at)) };
                        unroll!(T, t, {
                            acc[r][t] = _mm256_fmadd_ps(mw, sx8[t], acc[r][t]);
                        });
                    }
                });
            }
            unroll!(R, r, {
                unroll!(T, t, {
                    // SAFETY: the caller vouches for output t * os + r.
                    unsafe { *a.out.add(t * a.os + r) = hsum(acc[r][t]) };
                });
            });
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use crate::kernels::x86::avx2::*;
    legacy_tile!("avx2,fma,f16c");
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::kernels::x86::vnni::*;
    legacy_tile!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
