//! F32, F16 and BF16 weights against f32 activations.
//!
//! ggml converts the activations to F16/BF16 for these weights; we keep them in f32 (the weights
//! are what streams from memory, and widening them costs one instruction per 8 values: `vcvtph2ps`
//! for F16, a zero-extend and shift for BF16, whose bits are the top half of an f32).

use smelt_quant::half::{bf16_to_f32, f16_to_f32};

use super::tile::RowDot;

/// Which float format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    F32,
    F16,
    Bf16,
}

/// A float weight format.
pub(crate) trait Float {
    const KIND: Kind;
    /// Bytes per value.
    const BYTES: usize;
}

macro_rules! float_format {
    ($name:ident, $kind:ident, $bytes:expr) => {
        #[allow(non_camel_case_types)]
        pub(crate) struct $name;
        impl Float for $name {
            const KIND: Kind = Kind::$kind;
            const BYTES: usize = $bytes;
        }
        impl RowDot for $name {
            const W_BLOCK: usize = $bytes;
            const X_BLOCK: usize = 4;
            fn dot(nb: usize, w: &[u8], x: &[u8]) -> f32 {
                dot_scalar::<$name>(nb, w, x)
            }
        }
    };
}

float_format!(F32, F32, 4);
float_format!(F16, F16, 2);
float_format!(BF16, Bf16, 2);

/// Weight value `i`.
#[inline(always)]
fn value<F: Float>(w: &[u8], i: usize) -> f32 {
    match F::KIND {
        Kind::F32 => f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]),
        Kind::F16 => f16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])),
        Kind::Bf16 => bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])),
    }
}

/// The portable kernel: eight partial sums, so the compiler can vectorise it.
fn dot_scalar<F: Float>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, xv) in x.chunks_exact(4).take(n).enumerate() {
        acc[i % 8] += value::<F>(w, i) * f32::from_le_bytes([xv[0], xv[1], xv[2], xv[3]]);
    }
    acc.iter().sum()
}

/// The SIMD tile, instantiated once per instruction-set level.
#[cfg(target_arch = "x86_64")]
macro_rules! float_tile {
    ($features:literal) => {
        use std::arch::x86_64::*;

        use super::{value, Float, Kind};
        use crate::kernels::tile::{unroll, TileArgs};

        /// 8 weights of row `w` from value `i`, widened.
        ///
        /// # Safety
        /// Values i..i+8 lie inside the row.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load8<F: Float>(w: *const u8, i: usize) -> __m256 {
            // SAFETY: forwarded to the caller.
            unsafe {
                let p = w.add(i * F::BYTES);
                match F::KIND {
                    Kind::F32 => _mm256_loadu_ps(p.cast()),
                    Kind::F16 => _mm256_cvtph_ps(load128(p)),
                    Kind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                        _mm256_cvtepu16_epi32(load128(p)),
                        16,
                    )),
                }
            }
        }

        /// `R` rows x `T` tokens; `nb` counts values. See [`crate::kernels::tile::TileFn`].
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn tile<const R: usize, const T: usize, F: Float>(a: &TileArgs) {
            let n = a.nb;
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut i = 0;
            while i + 8 <= n {
                let mut xv = [_mm256_setzero_ps(); T];
                unroll!(T, t, {
                    // SAFETY: values i..i+8 < n of activation row t.
                    xv[t] = unsafe { _mm256_loadu_ps(a.x.add(t * a.xs + 4 * i).cast()) };
                });
                unroll!(R, r, {
                    // SAFETY: values i..i+8 < n of weight row r.
                    let wv = unsafe { load8::<F>(a.w.add(r * a.ws), i) };
                    unroll!(T, t, {
                        acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
                    });
                });
                i += 8;
            }
            unroll!(R, r, {
                unroll!(T, t, {
                    let mut sum = hsum(acc[r][t]);
                    if i < n {
                        // SAFETY: the last n - i values of weight row r and activation row t.
                        let (w, x) = unsafe {
                            (
                                std::slice::from_raw_parts(a.w.add(r * a.ws), n * F::BYTES),
                                std::slice::from_raw_parts(a.x.add(t * a.xs), 4 * n),
                            )
                        };
                        for j in i..n {
                            let xj = f32::from_le_bytes([
                                x[4 * j],
                                x[4 * j + 1],
                                x[4 * j + 2],
                                x[4 * j + 3],
                            ]);
                            sum += value::<F>(w, j) * xj;
                        }
                    }
                    // SAFETY: the caller vouches for output t * os + r.
                    unsafe { *a.out.add(t * a.os + r) = sum };
                });
            });
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use crate::kernels::x86::avx2::*;
    float_tile!("avx2,fma,f16c");
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::kernels::x86::vnni::*;
    float_tile!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
