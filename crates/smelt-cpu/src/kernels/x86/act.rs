//! AVX2 activation quantisers, bit-exact with the reference block quantisers (ggml's
//! `quantize_row_q8_*_ref`) on finite input. The AVX-512 level uses them too: a row is quantised
//! once per matmul and is small next to the weights it meets.
//!
//! Two details keep them exact. Q8_0 and Q8_1 round half away from zero (`f32::round`), which no
//! SSE/AVX rounding mode does: `trunc(t + copysign(0.49999997, t))` does, for |t| < 2^23 (a tie
//! lands exactly on the next integer; anything below a tie stays below it, because adding the
//! largest float under 0.5 cannot round up across an integer there). Q8_K keeps the sign of the
//! first element of largest magnitude, so after the vector max a short scan finds it.
//! (ggml's own AVX2 Q8_0 quantiser uses `127 / amax` and round-to-even, so it is not bit-exact
//! with its reference; ours is.)

use std::arch::x86_64::*;

use smelt_quant::half::f32_to_f16;

use super::avx2::hsum_i32;
use crate::kernels::{ActType, Isa};

/// Quantise a row with AVX2.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (`isa >= Avx2` was checked against the CPU), and `out`
/// holds exactly the blocks of `x` for `act`.
pub(crate) unsafe fn quantize_row(act: ActType, isa: Isa, x: &[f32], out: &mut [u8]) {
    debug_assert!(isa >= Isa::Avx2);
    // SAFETY (all arms): the caller vouches for the CPU; each function walks whole blocks of x
    // and out, whose lengths match.
    unsafe {
        match act {
            ActType::F32 => {
                for (dst, v) in out.chunks_exact_mut(4).zip(x) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
            ActType::Q8_0 => q8_0::<false>(x, out),
            ActType::Q8_1 => q8_0::<true>(x, out),
            ActType::Q8_K => q8_k(x, out),
        }
    }
}

/// Q8_0 blocks (34 bytes: f16 d, 32 i8), or with `WITH_SUM` Q8_1 blocks (36 bytes: f16 d,
/// f16 d * sum(q), 32 i8).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0<const WITH_SUM: bool>(x: &[f32], out: &mut [u8]) {
    let block_bytes = if WITH_SUM { 36 } else { 34 };
    let qs_at = block_bytes - 32;
    let sign = _mm256_set1_ps(-0.0);
    let below_half = _mm256_set1_ps(f32::from_bits(0x3eff_ffff));
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(block_bytes)) {
        // SAFETY: xb holds 32 floats, read as four groups of 8.
        let v: [__m256; 4] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * k)) });
        let abs = v.map(|v| _mm256_andnot_ps(sign, v));
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let amax = hmax(m);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let scale = _mm256_set1_ps(id);
        let q = v.map(|v| {
            let t = _mm256_mul_ps(v, scale);
            let half = _mm256_or_ps(_mm256_and_ps(t, sign), below_half);
            _mm256_cvttps_epi32(_mm256_add_ps(t, half))
        });
        ob[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        if WITH_SUM {
            let sum = hsum_i32(_mm256_add_epi32(
                _mm256_add_epi32(q[0], q[1]),
                _mm256_add_epi32(q[2], q[3]),
            ));
            ob[2..4].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
        }
        // SAFETY: ob[qs_at..] is 32 bytes.
        unsafe { store_i8(ob[qs_at..].as_mut_ptr(), q) };
    }
}

/// Q8_K blocks (292 bytes: f32 d, 256 i8, 16 i16 sums of 16).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_k(x: &[f32], out: &mut [u8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        let p = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            // SAFETY: k < 32, so the 8 floats at 8k are inside the 256 of xb.
            m = _mm256_max_ps(
                m,
                _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(p.add(8 * k)) }),
            );
        }
        let amax = hmax(m);
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        // The reference keeps the first element of largest magnitude, with its sign.
        let max = xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let scale = _mm256_set1_ps(iscale);
        ob[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for g in 0..8 {
            // SAFETY: g < 8, so the 32 floats at 32g are inside xb.
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let v = unsafe { _mm256_loadu_ps(p.add(32 * g + 8 * k)) };
                // Round to nearest even, as the reference's `nearest_int`.
                let t = _mm256_round_ps(
                    _mm256_mul_ps(v, scale),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                _mm256_cvtps_epi32(t)
            });
            for h in 0..2 {
                let s = hsum_i32(_mm256_add_epi32(q[2 * h], q[2 * h + 1])) as i16;
                let at = 260 + 2 * (2 * g + h);
                ob[at..at + 2].copy_from_slice(&s.to_le_bytes());
            }
            // SAFETY: 4 + 32g + 32 <= 260, inside ob.
            unsafe { store_i8(ob[4 + 32 * g..].as_mut_ptr(), q) };
        }
    }
}

/// The largest lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(m: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// Narrow 32 i32 (in order) to i8 with saturation and store them at `dst`.
///
/// # Safety
/// 32 writable bytes at `dst`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_i8(dst: *mut u8, q: [__m256i; 4]) {
    // The packs work per 128-bit lane, leaving 4-byte groups in the order 0 2 4 6 1 3 5 7;
    // the permute puts them back.
    let a = _mm256_packs_epi32(q[0], q[1]);
    let b = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(a, b);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: the caller vouches for 32 bytes at dst.
    unsafe { _mm256_storeu_si256(dst.cast(), ordered) };
}
