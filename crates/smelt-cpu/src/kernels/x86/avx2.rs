//! AVX2 (+FMA, F16C) operations: loads, nibble and bit unpacking, integer dot products via
//! `vpmaddubsw`/`vpmaddwd`, horizontal sums.

use std::arch::x86_64::*;

/// Every f16 bit pattern as f32: 256 KiB, of which a kernel touches the few lines its scales
/// fall in (block scales of one tensor cluster in a narrow range), so lookups hit L1.
static F16_TO_F32: [f32; 65536] = {
    let mut t = [0f32; 65536];
    let mut h = 0;
    while h < 65536 {
        t[h] = f16_bits_to_f32(h as u16);
        h += 1;
    }
    t
};

/// IEEE half to single, exact (as `smelt_quant::half::f16_to_f32`, usable in a constant).
const fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x03ff) as u32;
    let bits = match exp {
        0 => sign | (mant as f32 * (1.0 / 16_777_216.0)).to_bits(),
        0x1f => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// The f16 at `p` (2 bytes, any alignment), widened and broadcast to 8 lanes.
///
/// Through a table: `vbroadcastss` from memory is a pure load, where widening in registers
/// (`vpbroadcastw` + `vcvtph2ps`) takes two shuffle-port µops per scale, the port the nibble
/// unpacking also needs; with one or two scales per 32-weight block that port was the limit of
/// the 4- and 5-bit gemv in cache (`docs/kernel-lab/cpu-gemv.md`, v6). Never a scalar load
/// into a vector register: that lowers to `vpinsrw`, which merges into whatever register LLVM
/// picks, often an accumulator, chaining every block's scale onto the previous block's FMA.
///
/// # Safety
/// 2 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_splat(p: *const u8) -> __m256 {
    // SAFETY: the caller vouches for 2 bytes at p; x86 is little-endian like the file format.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    _mm256_set1_ps(F16_TO_F32[h as usize])
}

/// The f32 at `p` (4 bytes, any alignment), broadcast to 8 lanes.
///
/// # Safety
/// 4 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_splat(p: *const u8) -> __m256 {
    // SAFETY: the caller vouches for 4 bytes at p.
    _mm256_set1_ps(unsafe { p.cast::<f32>().read_unaligned() })
}

/// 32 bytes at `p`.
///
/// # Safety
/// 32 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: the caller vouches for 32 bytes at p; loadu takes any alignment.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// 16 bytes at `p`.
///
/// # Safety
/// 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn load128(p: *const u8) -> __m128i {
    // SAFETY: the caller vouches for 16 bytes at p; loadu takes any alignment.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// The 32 nibbles of the 16 bytes at `p` as bytes 0..15: low nibbles in bytes 0..16 (the first
/// half of a 32-value block), high nibbles in bytes 16..32 (the second half).
///
/// # Safety
/// 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: forwarded to the caller; loadu takes any alignment.
    let v = unsafe { _mm_loadu_si128(p.cast()) };
    // The 16 bytes in both halves (`vbroadcasti128` from memory is a pure load, where inserting
    // a shifted copy is a shuffle-port µop), the upper half shifted by 4 per dword: the bits
    // that cross from the next byte are masked off with the rest of the high nibble.
    let both = _mm256_broadcastsi128_si256(v);
    let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// Byte `j` = `val` where bit `j` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn bit_bytes(bits: u32, val: i8) -> __m256i {
    // Spread byte k of `bits` over bytes 8k..8k+8 (each 128-bit lane holds all four bytes),
    // then test bit j % 8 of each.
    let all = _mm256_set1_epi32(bits as i32);
    let spread = _mm256_shuffle_epi8(
        all,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let hit = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(hit, _mm256_set1_epi8(val))
}

/// `acc` plus, in each i32 lane, the sum of the 4 products of unsigned bytes `u` with signed
/// bytes `s`. `vpmaddubsw` saturates pairs at i16, so callers keep `u <= 127` (4-, 5- and 6-bit
/// quants are at most 63: 2 * 63 * 128 fits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// `acc` plus, in each i32 lane, `p[2i] * q[2i] + p[2i+1] * q[2i+1]` (i16 inputs).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_i16(acc: __m256i, p: __m256i, q: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(p, q))
}

/// In each i32 lane, the sum of its 4 signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn sum_i8(s: __m256i) -> __m256i {
    dot_u8i8(_mm256_setzero_si256(), _mm256_set1_epi8(1), s)
}

/// The part of a signed-by-signed byte dot product that depends on the activation only, computed
/// once per activation block and shared by every weight row ([`dot_i8i8`]'s `bias`). AVX2 needs
/// none: it moves the weight's sign onto the activation instead.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn i8i8_bias(_x: __m256i) -> __m256i {
    _mm256_setzero_si256()
}

/// `bias` plus, in each i32 lane, the sum of the 4 products of signed bytes `w` and `x`:
/// `|w| * (x with w's sign)`, so `vpmaddubsw` sees an unsigned operand (2 * 128 * 128 saturates
/// only for w = x = -128, which the quantisers never produce).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_i8i8(bias: __m256i, w: __m256i, x: __m256i) -> __m256i {
    dot_u8i8(bias, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    hsum128(s)
}

/// The sum of the 4 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// `acc + i * scale` with the i32 lanes of `i` converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fma_i32(acc: __m256, i: __m256i, scale: __m256) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, acc)
}

/// `acc - i * scale` with the i32 lanes of `i` converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fnma_i32(acc: __m256, i: __m256i, scale: __m256) -> __m256 {
    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(i), scale, acc)
}

/// `-bias * v` per i32 lane (a shift for the power-of-two zero points every format uses).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn neg_times(v: __m256i, bias: i32) -> __m256i {
    let scaled = if bias > 0 && (bias as u32).is_power_of_two() {
        _mm256_sll_epi32(v, _mm_cvtsi32_si128(bias.trailing_zeros() as i32))
    } else {
        _mm256_mullo_epi32(v, _mm256_set1_epi32(bias))
    };
    _mm256_sub_epi32(_mm256_setzero_si256(), scaled)
}

/// The little-endian u32 at `p`.
///
/// # Safety
/// 4 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn u32_at(p: *const u8) -> u32 {
    // SAFETY: the caller vouches for 4 bytes at p.
    u32::from_le_bytes(unsafe { p.cast::<[u8; 4]>().read_unaligned() })
}

/// Prefetch (into L1) the cache lines of `len` bytes from `p`. A hint: any address is allowed,
/// nothing is read architecturally, so `p` may point past the data.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn prefetch_span(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch(p.wrapping_add(off).cast::<i8>(), _MM_HINT_T0);
        off += 64;
    }
}
