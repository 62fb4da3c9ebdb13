//! AVX-512 VNNI operations with the same names as [`super::avx2`]'s: `vpdpbusd` and `vpdpwssd`
//! fuse the multiply, the pairwise add and the accumulation into one instruction, and AVX-512BW
//! mask moves expand bit fields to bytes. Operations that gain nothing are re-exported from AVX2
//! (they inline here: this level's features include AVX2's).
//!
//! The vectors stay 256 bits wide: the kernels interleave several rows, and with AVX-512VL they
//! have 32 registers for the accumulators.

use std::arch::x86_64::*;

pub(crate) use super::avx2::{
    f16_splat, f32_splat, fma_i32, fnma_i32, hsum, load128, load256, neg_times, nibbles,
    prefetch_span, u32_at,
};

/// Byte `j` = `val` where bit `j` of `bits` is set, else 0 (one masked move).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn bit_bytes(bits: u32, val: i8) -> __m256i {
    _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(val))
}

/// `acc` plus, in each i32 lane, the sum of the 4 products of unsigned bytes `u` with signed
/// bytes `s` (exact: no intermediate saturation).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// `acc` plus, in each i32 lane, `p[2i] * q[2i] + p[2i+1] * q[2i+1]` (i16 inputs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn dot_i16(acc: __m256i, p: __m256i, q: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, p, q)
}

/// In each i32 lane, the sum of its 4 signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn sum_i8(s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), s)
}

/// `-128 * sum(x)` per lane: `vpdpbusd` needs an unsigned operand, so [`dot_i8i8`] offsets the
/// weight by 128 (`w ^ 0x80`) and this bias takes the offset back out. Computed once per
/// activation block, shared by every weight row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn i8i8_bias(x: __m256i) -> __m256i {
    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sum_i8(x), 7))
}

/// `bias` plus, in each i32 lane, the sum of the 4 products of signed bytes `w` and `x`, given
/// `bias = i8i8_bias(x)`: `(w + 128) * x - 128 * x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) fn dot_i8i8(bias: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let offset = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
    _mm256_dpbusd_epi32(bias, offset, x)
}
