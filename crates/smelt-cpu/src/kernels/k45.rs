//! Q4_K and Q5_K weights against Q8_K activations: 256-value super-blocks of eight 32-value
//! groups, each with a 6-bit scale and a 6-bit minimum, under the f16 `d` and `dmin`.
//!
//! Value `= d * sc_g * q - dmin * m_g`, so per super-block
//! `dot = d_x * (d * sum_g sc_g * sum(q * x) - dmin * sum_g m_g * sum_g(x))`. The group sums of
//! `x` come with the activation (Q8_K's `bsums`), so the minimums cost one 8-lane multiply-add
//! per super-block; the scales are applied to i16 pair sums in the integer domain
//! (`vpmaddwd`, or `vpdpwssd` on VNNI), and floats appear once per super-block.

use smelt_quant::half::f16_to_f32;

use super::tile::RowDot;

/// The layout of Q4_K or Q5_K.
pub(crate) trait K45 {
    /// Bytes per block.
    const BYTES: usize;
    /// Offset of the 128 bytes of low nibbles.
    const QS: usize;
    /// Offset of the 32 bytes of fifth bits (Q5_K).
    const QH: Option<usize>;
}

macro_rules! k45_format {
    ($name:ident, $bytes:expr, $qs:expr, $qh:expr) => {
        #[allow(non_camel_case_types)]
        pub(crate) struct $name;
        impl K45 for $name {
            const BYTES: usize = $bytes;
            const QS: usize = $qs;
            const QH: Option<usize> = $qh;
        }
        impl RowDot for $name {
            const W_BLOCK: usize = $bytes;
            const X_BLOCK: usize = 292;
            fn dot(nb: usize, w: &[u8], x: &[u8]) -> f32 {
                dot_scalar::<$name>(nb, w, x)
            }
        }
    };
}

k45_format!(Q4_K, 144, 16, None);
k45_format!(Q5_K, 176, 48, Some(16));

/// The eight 6-bit scales and eight 6-bit minimums packed in 12 bytes, as two little-endian
/// u64s of bytes (scales, mins). Groups 0..4 keep the low 6 bits of bytes 0..4 (scales) and
/// 4..8 (mins); groups 4..8 take their low 4 bits from bytes 8..12 and their top 2 bits from the
/// spare top bits of bytes 0..8.
#[inline(always)]
pub(crate) fn scales_mins(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let scales_lo = a & 0x3f3f_3f3f;
    let mins_lo = b & 0x3f3f_3f3f;
    let scales_hi = (c & 0x0f0f_0f0f) | ((a >> 6) & 0x0303_0303) << 4;
    let mins_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 6) & 0x0303_0303) << 4;
    (
        u64::from(scales_lo) | u64::from(scales_hi) << 32,
        u64::from(mins_lo) | u64::from(mins_hi) << 32,
    )
}

fn f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The portable kernel.
fn dot_scalar<F: K45>(nb: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (wb, xb) in w.chunks_exact(F::BYTES).zip(x.chunks_exact(292)).take(nb) {
        let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
        let xq = &xb[4..260];
        let bsum = |i: usize| i32::from(i16::from_le_bytes([xb[260 + 2 * i], xb[261 + 2 * i]]));
        let (scales, mins) = scales_mins(&wb[4..16]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for g in 0..8 {
            let qs = &wb[F::QS + 32 * (g / 2)..][..32];
            let shift = 4 * (g % 2);
            let mut s = 0i32;
            for l in 0..32 {
                let mut q = (qs[l] >> shift) & 0x0f;
                if let Some(at) = F::QH {
                    q |= ((wb[at + l] >> g) & 1) << 4;
                }
                s += i32::from(q) * i32::from(xq[32 * g + l] as i8);
            }
            sumi += (scales >> (8 * g) & 0xff) as i32 * s;
            summ += (mins >> (8 * g) & 0xff) as i32 * (bsum(2 * g) + bsum(2 * g + 1));
        }
        acc += dx * (f16(wb, 0) * sumi as f32 - f16(wb, 2) * summ as f32);
    }
    acc
}

/// The SIMD tile, instantiated once per instruction-set level with that level's operations.
#[cfg(target_arch = "x86_64")]
macro_rules! k45_tile {
    ($features:literal) => {
        use std::arch::x86_64::*;

        use super::{scales_mins, K45};
        use crate::kernels::tile::{unroll, TileArgs};

        /// `R` rows x `T` tokens; see [`crate::kernels::tile::TileFn`] for the contract.
        // The running shifts of the unrolled chunk loop leave a final, unused shift.
        #[allow(unused_assignments)]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn tile<const R: usize, const T: usize, F: K45>(a: &TileArgs) {
            let m4 = _mm256_set1_epi8(0x0f);
            let m_fifth = _mm256_set1_epi8(0x10);
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let prefetch = crate::kernels::tile::prefetch_enabled();
            for b in 0..a.nb {
                if prefetch {
                    // The next row group, as one linear stream at the pace of this one (a
                    // hint only: past the end of the data it is harmless). See
                    // `prefetch_enabled`.
                    prefetch_span(a.w.wrapping_add(R * a.ws + b * R * F::BYTES), R * F::BYTES);
                }
                let mut xb = [a.x; T];
                let mut dx = [_mm256_setzero_ps(); T];
                let mut bsums = [_mm_setzero_si128(); T];
                unroll!(T, t, {
                    // SAFETY: t < T and b < nb, so the 292-byte block is inside activation
                    // row t: d at 0, quants at 4..260, sums at 260..292.
                    unsafe {
                        xb[t] = a.x.add(t * a.xs + b * 292);
                        dx[t] = f32_splat(xb[t]);
                        let s = load256(xb[t].add(260));
                        // Sixteen sums of 16 -> eight sums of 32, one per group.
                        bsums[t] = _mm_hadd_epi16(
                            _mm256_castsi256_si128(s),
                            _mm256_extracti128_si256(s, 1),
                        );
                    }
                });
                unroll!(R, r, {
                    // SAFETY: r < R and b < nb, so the block is inside weight row r.
                    let wb = unsafe { a.w.add(r * a.ws + b * F::BYTES) };
                    // SAFETY: d, dmin and the 12 scale bytes are the block's first 16 bytes.
                    let (d, dmin, (scales, mins)) = unsafe {
                        let s = std::slice::from_raw_parts(wb.add(4), 12);
                        (f16_splat(wb), f16_splat(wb.add(2)), scales_mins(s))
                    };
                    let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64));
                    let scales = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64));
                    let scales = _mm256_set_m128i(scales, scales);
                    let mut sumi = [_mm256_setzero_si256(); T];
                    unroll!(T, t, {
                        let m = _mm256_zextsi128_si256(_mm_madd_epi16(mins, bsums[t]));
                        acc[r][t] = fnma_i32(acc[r][t], m, _mm256_mul_ps(dmin, dx[t]));
                    });
                    // SAFETY: Q5_K's 32 bytes of fifth bits lie inside the block.
                    let mut qh = match F::QH {
                        Some(at) => unsafe { load256(wb.add(at)) },
                        None => _mm256_setzero_si256(),
                    };
                    unroll!(4, c, {
                        // SAFETY: 32 bytes of quants at QS + 32c, inside the block.
                        let qv = unsafe { load256(wb.add(F::QS + 32 * c)) };
                        let mut lo = _mm256_and_si256(qv, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                        if F::QH.is_some() {
                            // Bits 2c and 2c+1 of each qh byte, moved to bit 4 (qh is shifted
                            // down by 2 after each chunk, so the shifts stay constant).
                            lo = _mm256_or_si256(
                                lo,
                                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m_fifth),
                            );
                            hi = _mm256_or_si256(
                                hi,
                                _mm256_and_si256(_mm256_slli_epi16(qh, 3), m_fifth),
                            );
                            qh = _mm256_srli_epi16(qh, 2);
                        }
                        // Group scales 2c and 2c+1 broadcast to every i16 lane.
                        let s_lo = _mm256_shuffle_epi8(
                            scales,
                            _mm256_set1_epi16(((4 * c + 1) << 8 | 4 * c) as i16),
                        );
                        let s_hi = _mm256_shuffle_epi8(
                            scales,
                            _mm256_set1_epi16(((4 * c + 3) << 8 | (4 * c + 2)) as i16),
                        );
                        unroll!(T, t, {
                            // SAFETY: quants 64c..64c+64 of the activation block.
                            let (x0, x1) = unsafe {
                                (
                                    load256(xb[t].add(4 + 64 * c)),
                                    load256(xb[t].add(36 + 64 * c)),
                                )
                            };
                            sumi[t] = dot_i16(sumi[t], _mm256_maddubs_epi16(lo, x0), s_lo);
                            sumi[t] = dot_i16(sumi[t], _mm256_maddubs_epi16(hi, x1), s_hi);
                        });
                    });
                    unroll!(T, t, {
                        acc[r][t] = fma_i32(acc[r][t], sumi[t], _mm256_mul_ps(d, dx[t]));
                    });
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
    k45_tile!("avx2,fma,f16c");
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::kernels::x86::vnni::*;
    k45_tile!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
