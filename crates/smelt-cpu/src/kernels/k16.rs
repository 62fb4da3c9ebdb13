//! Q2_K, Q3_K and Q6_K weights against Q8_K activations: 256-value super-blocks of sixteen
//! 16-value groups, each with its own scale, under one f16 `d` (Q2_K adds minimums under `dmin`).
//!
//! All three are handled as unsigned quants `u` (2, 3 or 6 bits) so `vpmaddubsw` takes them
//! directly, with the zero point taken out through Q8_K's per-16 activation sums:
//! Q6_K `(u - 32) * sc`, Q3_K `(u - 4) * sc` with `u = low2 | high << 2`, Q2_K `u * sc - m`.
//! `sum_g sc_g * sum((u - z) * x) = sum_g sc_g * sum(u * x) - z * sum_g sc_g * bsum_g`, one
//! 16-lane multiply-add per super-block instead of a correction per chunk.
//!
//! Element layout shared by the three: values `128n + 32k + l` (half n, chunk k, l < 32) sit in
//! byte `l` of half n's quant bytes at bit position `2k` (Q2_K, Q3_K low bits) or in nibble
//! `k / 2` of byte `32 (k % 2) + l` of half n's 64 low-nibble bytes (Q6_K, high bits at `2k` of
//! `qh[32n + l]`); Q3_K's third bit of chunk `4n + k` is bit `4n + k` of `hmask[l]`.

use smelt_quant::half::f16_to_f32;

use super::tile::RowDot;

/// Which of the three formats.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Q2,
    Q3,
    Q6,
}

/// The layout of a 16-value-group K-quant.
pub(crate) trait K16 {
    const KIND: Kind;
    /// Bytes per block.
    const BYTES: usize;
    /// Offset of the f16 `d`.
    const D: usize;
}

macro_rules! k16_format {
    ($name:ident, $kind:ident, $bytes:expr, $d:expr) => {
        #[allow(non_camel_case_types)]
        pub(crate) struct $name;
        impl K16 for $name {
            const KIND: Kind = Kind::$kind;
            const BYTES: usize = $bytes;
            const D: usize = $d;
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

k16_format!(Q2_K, Q2, 84, 80);
k16_format!(Q3_K, Q3, 110, 108);
k16_format!(Q6_K, Q6, 210, 208);

/// Q3_K's sixteen 6-bit group scales, minus their offset of 32: low nibbles from bytes 0..8
/// (groups 0..8 low, 8..16 high), top two bits from bytes 8..12 (group g at bits 2 (g / 4) of
/// byte 8 + g % 4).
#[inline(always)]
pub(crate) fn q3_scales(s: &[u8]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let parts = [
        (a & 0x0f0f_0f0f) | (c & 0x0303_0303) << 4,
        (b & 0x0f0f_0f0f) | ((c >> 2) & 0x0303_0303) << 4,
        ((a >> 4) & 0x0f0f_0f0f) | ((c >> 4) & 0x0303_0303) << 4,
        ((b >> 4) & 0x0f0f_0f0f) | ((c >> 6) & 0x0303_0303) << 4,
    ];
    let mut out = [0u8; 16];
    for (dst, part) in out.chunks_exact_mut(4).zip(parts) {
        dst.copy_from_slice(&part.to_le_bytes());
    }
    out.map(|v| v.wrapping_sub(32))
}

/// Group scales of a block as i8 (Q2_K's are 0..15, the minimums are separate).
fn group_scales<F: K16>(wb: &[u8]) -> [i8; 16] {
    match F::KIND {
        Kind::Q2 => std::array::from_fn(|g| (wb[g] & 0x0f) as i8),
        Kind::Q3 => q3_scales(&wb[96..108]).map(|v| v as i8),
        Kind::Q6 => std::array::from_fn(|g| wb[192 + g] as i8),
    }
}

/// The unsigned quant of element `128n + 32k + l`.
fn quant<F: K16>(wb: &[u8], n: usize, k: usize, l: usize) -> i32 {
    let u = match F::KIND {
        Kind::Q2 => (wb[16 + 32 * n + l] >> (2 * k)) & 3,
        Kind::Q3 => {
            let low = (wb[32 + 32 * n + l] >> (2 * k)) & 3;
            low | ((wb[l] >> (4 * n + k)) & 1) << 2
        }
        Kind::Q6 => {
            let low = (wb[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0f;
            low | ((wb[128 + 32 * n + l] >> (2 * k)) & 3) << 4
        }
    };
    i32::from(u)
}

/// The zero point of the unsigned quants.
const fn zero_point(kind: Kind) -> i32 {
    match kind {
        Kind::Q2 => 0,
        Kind::Q3 => 4,
        Kind::Q6 => 32,
    }
}

/// The portable kernel.
fn dot_scalar<F: K16>(nb: usize, w: &[u8], x: &[u8]) -> f32 {
    let z = zero_point(F::KIND);
    let mut acc = 0f32;
    for (wb, xb) in w.chunks_exact(F::BYTES).zip(x.chunks_exact(292)).take(nb) {
        let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
        let xq = &xb[4..260];
        let bsum = |g: usize| i32::from(i16::from_le_bytes([xb[260 + 2 * g], xb[261 + 2 * g]]));
        let scales = group_scales::<F>(wb);
        let mut sumi = 0i32;
        for (j, &sc) in scales.iter().enumerate() {
            let (n, k, half) = (j / 8, (j / 2) % 4, j % 2);
            let s: i32 = (16 * half..16 * half + 16)
                .map(|l| {
                    (quant::<F>(wb, n, k, l) - z) * i32::from(xq[16 * j + l - 16 * half] as i8)
                })
                .sum();
            sumi += i32::from(sc) * s;
        }
        acc += dx * f16(wb, F::D) * sumi as f32;
        if F::KIND == Kind::Q2 {
            let summ: i32 = (0..16).map(|g| i32::from(wb[g] >> 4) * bsum(g)).sum();
            acc -= dx * f16(wb, 82) * summ as f32;
        }
    }
    acc
}

fn f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The SIMD tile, instantiated once per instruction-set level with that level's operations.
#[cfg(target_arch = "x86_64")]
macro_rules! k16_tile {
    ($features:literal) => {
        use std::arch::x86_64::*;

        use super::{q3_scales, zero_point, Kind, K16};
        use crate::kernels::tile::{unroll, TileArgs};

        /// `R` rows x `T` tokens; see [`crate::kernels::tile::TileFn`] for the contract.
        // The running shifts of the unrolled chunk loop leave a final, unused shift.
        #[allow(unused_assignments)]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn tile<const R: usize, const T: usize, F: K16>(a: &TileArgs) {
            let m4 = _mm256_set1_epi8(0x0f);
            let m2 = _mm256_set1_epi8(0x03);
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
                let mut bsums = [_mm256_setzero_si256(); T];
                unroll!(T, t, {
                    // SAFETY: t < T and b < nb, so the 292-byte block is inside activation
                    // row t: d at 0, quants at 4..260, sums at 260..292.
                    unsafe {
                        xb[t] = a.x.add(t * a.xs + b * 292);
                        dx[t] = f32_splat(xb[t]);
                        bsums[t] = load256(xb[t].add(260));
                    }
                });
                unroll!(R, r, {
                    // SAFETY: r < R and b < nb, so the block is inside weight row r.
                    let wb = unsafe { a.w.add(r * a.ws + b * F::BYTES) };
                    // SAFETY (this block): every offset read lies inside the block's bytes.
                    let (d, scales) = unsafe {
                        let scales = match F::KIND {
                            Kind::Q2 => _mm_and_si128(load128(wb), _mm_set1_epi8(0x0f)),
                            Kind::Q3 => {
                                let s = q3_scales(std::slice::from_raw_parts(wb.add(96), 12));
                                load128(s.as_ptr())
                            }
                            Kind::Q6 => load128(wb.add(192)),
                        };
                        (f16_splat(wb.add(F::D)), scales)
                    };
                    let mut sumi = [_mm256_setzero_si256(); T];
                    if F::KIND == Kind::Q2 {
                        // SAFETY: the scale bytes (mins in the high nibbles) and dmin.
                        let (mins, dmin) = unsafe { (load128(wb), f16_splat(wb.add(82))) };
                        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(
                            _mm_srli_epi16(mins, 4),
                            _mm_set1_epi8(0x0f),
                        ));
                        unroll!(T, t, {
                            let m = _mm256_madd_epi16(mins, bsums[t]);
                            acc[r][t] = fnma_i32(acc[r][t], m, _mm256_mul_ps(dmin, dx[t]));
                        });
                    } else {
                        let wide = _mm256_cvtepi8_epi16(scales);
                        unroll!(T, t, {
                            sumi[t] =
                                neg_times(_mm256_madd_epi16(wide, bsums[t]), zero_point(F::KIND));
                        });
                    }
                    // SAFETY: Q3_K's 32 bytes of third bits are the block's first bytes.
                    let mut hm = match F::KIND {
                        Kind::Q3 => unsafe { load256(wb) },
                        _ => _mm256_setzero_si256(),
                    };
                    unroll!(2, n, {
                        // SAFETY: each load is 32 bytes inside the block (Q2_K quants at 16,
                        // Q3_K at 32, Q6_K low nibbles at 0 and high bits at 128).
                        let (v0, v1, mut vh) = unsafe {
                            match F::KIND {
                                Kind::Q2 => (
                                    load256(wb.add(16 + 32 * n)),
                                    _mm256_setzero_si256(),
                                    _mm256_setzero_si256(),
                                ),
                                Kind::Q3 => (
                                    load256(wb.add(32 + 32 * n)),
                                    _mm256_setzero_si256(),
                                    _mm256_setzero_si256(),
                                ),
                                Kind::Q6 => (
                                    load256(wb.add(64 * n)),
                                    load256(wb.add(64 * n + 32)),
                                    load256(wb.add(128 + 32 * n)),
                                ),
                            }
                        };
                        let mut low2 = v0;
                        unroll!(4, k, {
                            let q = match F::KIND {
                                Kind::Q2 => _mm256_and_si256(low2, m2),
                                Kind::Q3 => {
                                    let third = _mm256_and_si256(
                                        _mm256_slli_epi16(hm, 2),
                                        _mm256_set1_epi8(0x04),
                                    );
                                    hm = _mm256_srli_epi16(hm, 1);
                                    _mm256_or_si256(_mm256_and_si256(low2, m2), third)
                                }
                                Kind::Q6 => {
                                    let low = match k {
                                        0 => _mm256_and_si256(v0, m4),
                                        1 => _mm256_and_si256(v1, m4),
                                        2 => _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4),
                                        _ => _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4),
                                    };
                                    let high = _mm256_and_si256(
                                        _mm256_slli_epi16(vh, 4),
                                        _mm256_set1_epi8(0x30),
                                    );
                                    vh = _mm256_srli_epi16(vh, 2);
                                    _mm256_or_si256(low, high)
                                }
                            };
                            low2 = _mm256_srli_epi16(low2, 2);
                            // Group scales 2j and 2j+1 (j = 4n + k), eight i16 lanes each.
                            let j = (4 * n + k) as i8;
                            let pick = _mm_setr_epi8(
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                                2 * j + 1,
                            );
                            let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                            unroll!(T, t, {
                                // SAFETY: quants 128n + 32k .. +32 of the activation block.
                                let xv = unsafe { load256(xb[t].add(4 + 128 * n + 32 * k)) };
                                sumi[t] = dot_i16(sumi[t], _mm256_maddubs_epi16(q, xv), sc);
                            });
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
    k16_tile!("avx2,fma,f16c");
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::kernels::x86::vnni::*;
    k16_tile!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
