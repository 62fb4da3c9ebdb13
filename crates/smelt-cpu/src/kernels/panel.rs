//! Prefill gemm for AVX-512 VNNI: weights decoded once into byte panels, activations transposed
//! once into 16-token groups, and a register-blocked `vpdpbusd` microkernel between them.
//!
//! The tiles of `tile.rs` decode every weight block for each group of 4 tokens and spend most
//! of their instructions on that and on per-block scale handling. Here, for a panel of
//! [`PANEL_ROWS`] rows:
//!
//! 1. each row is decoded once into unsigned 8-bit codes `u` (any format: 2..8 bits, offset so
//!    they are non-negative) with, per sub-block `g` of 16 or 32 values, a float scale and a
//!    float minimum: value `= scale_g * u - min_g` (Q4_0: `d * q - 8 d`; Q8_0: `u = q + 128`,
//!    `min = 128 d`; Q4_K: `d sc_g`, `dmin m_g`; Q6_K: `d sc_g`, `32 d sc_g`, ...);
//! 2. the activations of 16 tokens are stored as `x4[k / 4][token]` (four bytes each), so one
//!    64-byte load feeds a `vpdpbusd` for 16 tokens, with per sub-block the token's scale `dx`
//!    and `dx * sum(q)` (for the minimum term);
//! 3. the microkernel keeps one i32 accumulator per row (16 tokens in a zmm register) over a
//!    sub-block: per 4 values it loads one activation vector and issues one `vpdpbusd` per row
//!    with the row's 4 codes broadcast from memory (64 multiply-adds each); at the end of the
//!    sub-block it folds `acc * scale_g * dx - min_g * dx * sum(q)` into a float total.
//!
//! `out[t][r] = sum_g scale_g * dx_g[t] * sum(u * q[t]) - min_g * dx_g[t] * sum_g(q[t])`, exact
//! in the integer part as the tiles are.

use std::arch::x86_64::*;
use std::cell::RefCell;

use smelt_gguf::GgmlType;

use super::k16::q3_scales;
use super::k45::scales_mins;
use super::tile::unroll16;
use super::x86::avx2::{load256, nibbles, u32_at};
use super::x86::vnni::bit_bytes;

/// Rows decoded and multiplied together (one zmm accumulator and one zmm total each).
pub(crate) const PANEL_ROWS: usize = 8;
/// Tokens per activation group: the 16 i32 lanes of a zmm register.
const TOKENS: usize = 16;

/// The weight formats the panel gemm decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub(crate) enum Panel {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl Panel {
    /// The panel format of a weight type, if it has one.
    pub(crate) fn of(wtype: GgmlType) -> Option<Panel> {
        Some(match wtype {
            GgmlType::Q4_0 => Panel::Q4_0,
            GgmlType::Q4_1 => Panel::Q4_1,
            GgmlType::Q5_0 => Panel::Q5_0,
            GgmlType::Q5_1 => Panel::Q5_1,
            GgmlType::Q8_0 => Panel::Q8_0,
            GgmlType::Q2_K => Panel::Q2_K,
            GgmlType::Q3_K => Panel::Q3_K,
            GgmlType::Q4_K => Panel::Q4_K,
            GgmlType::Q5_K => Panel::Q5_K,
            GgmlType::Q6_K => Panel::Q6_K,
            _ => return None,
        })
    }

    fn k_quant(self) -> bool {
        matches!(
            self,
            Panel::Q2_K | Panel::Q3_K | Panel::Q4_K | Panel::Q5_K | Panel::Q6_K
        )
    }

    /// Values per weight block.
    fn block_elems(self) -> usize {
        if self.k_quant() {
            256
        } else {
            32
        }
    }

    /// Values per sub-block (one scale and minimum).
    fn sub(self) -> usize {
        match self {
            Panel::Q2_K | Panel::Q3_K | Panel::Q6_K => 16,
            _ => 32,
        }
    }

    /// Bytes per weight block.
    fn block_bytes(self) -> usize {
        match self {
            Panel::Q4_0 => 18,
            Panel::Q4_1 => 20,
            Panel::Q5_0 => 22,
            Panel::Q5_1 => 24,
            Panel::Q8_0 => 34,
            Panel::Q2_K => 84,
            Panel::Q3_K => 110,
            Panel::Q4_K => 144,
            Panel::Q5_K => 176,
            Panel::Q6_K => 210,
        }
    }

    /// Bytes per activation block (Q8_0, Q8_1 or Q8_K).
    fn act_bytes(self) -> usize {
        match self {
            Panel::Q4_1 | Panel::Q5_1 => 36,
            _ if self.k_quant() => 292,
            _ => 34,
        }
    }
}

/// Per-thread scratch: the decoded panel and the transposed activations, reused across calls.
#[derive(Default)]
struct Scratch {
    codes: Vec<u8>,
    scale: Vec<f32>,
    min: Vec<f32>,
    x4: Vec<u8>,
    xd: Vec<f32>,
    xsum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `out[t * os + r] = dot(row r, token t)` for `n_rows` rows and `n_tokens` tokens.
///
/// # Safety
/// As [`super::tile::gemm`]: `w` points at `n_rows` rows `ws` bytes apart of `nb` blocks of
/// format `p`, `x` at `n_tokens` activation rows `xs` bytes apart of the matching activation
/// type, every output element is writable, and the CPU supports AVX-512 VNNI.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn gemm(
    p: Panel,
    nb: usize,
    w: *const u8,
    ws: usize,
    n_rows: usize,
    x: *const u8,
    xs: usize,
    n_tokens: usize,
    out: *mut f32,
    os: usize,
) {
    let k = nb * p.block_elems();
    // Tokens per pass: their transposed activations (k bytes each) stay in L2 while every row
    // panel of the thread streams past; each pass decodes the panels again (cheap next to the
    // multiply-adds of 128 or more tokens).
    let chunk = (ACT_BUDGET / k.max(1) / TOKENS * TOKENS).max(TOKENS);
    let mut t0 = 0;
    while t0 < n_tokens {
        let count = chunk.min(n_tokens - t0);
        // SAFETY: tokens t0..t0+count are inside the caller's n_tokens activation rows, and the
        // outputs of those tokens inside its output region.
        unsafe {
            gemm_chunk(
                p,
                nb,
                w,
                ws,
                n_rows,
                x.add(t0 * xs),
                xs,
                count,
                out.add(t0 * os),
                os,
            )
        };
        t0 += count;
    }
}

/// Activation bytes of one pass of [`gemm`].
const ACT_BUDGET: usize = 512 * 1024;

/// [`gemm`] for one pass of tokens.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_chunk(
    p: Panel,
    nb: usize,
    w: *const u8,
    ws: usize,
    n_rows: usize,
    x: *const u8,
    xs: usize,
    n_tokens: usize,
    out: *mut f32,
    os: usize,
) {
    let k = nb * p.block_elems();
    let groups = k / p.sub();
    let n_tb = n_tokens.div_ceil(TOKENS);
    SCRATCH.with_borrow_mut(|s| {
        s.codes.resize(PANEL_ROWS * k, 0);
        s.scale.resize(PANEL_ROWS * groups, 0.0);
        s.min.resize(PANEL_ROWS * groups, 0.0);
        s.x4.resize(n_tb * k * TOKENS, 0);
        s.xd.resize(n_tb * groups * TOKENS, 0.0);
        s.xsum.resize(n_tb * groups * TOKENS, 0.0);
        for tb in 0..n_tb {
            let count = TOKENS.min(n_tokens - tb * TOKENS);
            let at = tb * groups * TOKENS;
            // SAFETY: tokens tb*16 .. tb*16+count are inside the caller's n_tokens rows; the
            // scratch slices were sized for n_tb groups just above.
            unsafe {
                prep_tokens(
                    p,
                    nb,
                    x.add(tb * TOKENS * xs),
                    xs,
                    count,
                    &mut s.x4[tb * k * TOKENS..(tb + 1) * k * TOKENS],
                    &mut s.xd[at..at + groups * TOKENS],
                    &mut s.xsum[at..at + groups * TOKENS],
                )
            };
        }
        let mut r0 = 0;
        while r0 < n_rows {
            let rows = PANEL_ROWS.min(n_rows - r0);
            for r in 0..PANEL_ROWS {
                let codes = &mut s.codes[r * k..(r + 1) * k];
                let scale = &mut s.scale[r * groups..(r + 1) * groups];
                let min = &mut s.min[r * groups..(r + 1) * groups];
                if r < rows {
                    // SAFETY: row r0 + r < n_rows is inside the caller's weight rows.
                    unsafe { decode_row(p, w.add((r0 + r) * ws), nb, codes, scale, min) };
                } else {
                    // Padding rows contribute nothing and their outputs are dropped.
                    codes.fill(0);
                    scale.fill(0.0);
                    min.fill(0.0);
                }
            }
            for tb in 0..n_tb {
                let at = tb * groups * TOKENS;
                // SAFETY: all pointers index the scratch buffers within the sizes set above.
                let tot = unsafe {
                    micro::<PANEL_ROWS>(
                        p.sub() / 4,
                        groups,
                        s.codes.as_ptr(),
                        k,
                        s.scale.as_ptr(),
                        s.min.as_ptr(),
                        s.x4[tb * k * TOKENS..].as_ptr(),
                        s.xd[at..].as_ptr(),
                        s.xsum[at..].as_ptr(),
                    )
                };
                let count = TOKENS.min(n_tokens - tb * TOKENS);
                for (r, v) in tot.iter().enumerate().take(rows) {
                    let mut lanes = [0f32; TOKENS];
                    // SAFETY: lanes holds 16 floats.
                    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                    for (t, &value) in lanes.iter().enumerate().take(count) {
                        // SAFETY: token tb*16 + t < n_tokens and row r0 + r < n_rows.
                        unsafe { *out.add((tb * TOKENS + t) * os + r0 + r) = value };
                    }
                }
            }
            r0 += rows;
        }
    });
}

/// The microkernel: `RM` decoded rows against one 16-token group over the whole row.
///
/// # Safety
/// `codes` holds RM rows of `kstride` codes, `scale`/`min` RM rows of `groups` floats, `x4`
/// `groups * kb_per_group` vectors of 64 bytes, `xd`/`xsum` `groups` vectors of 16 floats.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn micro<const RM: usize>(
    kb_per_group: usize,
    groups: usize,
    codes: *const u8,
    kstride: usize,
    scale: *const f32,
    min: *const f32,
    x4: *const u8,
    xd: *const f32,
    xsum: *const f32,
) -> [__m512; RM] {
    let mut tot = [_mm512_setzero_ps(); RM];
    for g in 0..groups {
        let mut acc = [_mm512_setzero_si512(); RM];
        for j in 0..kb_per_group {
            let kb = g * kb_per_group + j;
            // SAFETY (this block): kb < groups * kb_per_group, inside x4 and each codes row.
            let xv = unsafe { _mm512_loadu_si512(x4.add(64 * kb).cast()) };
            unroll16!(RM, r, {
                let wv = unsafe {
                    codes
                        .add(r * kstride + 4 * kb)
                        .cast::<i32>()
                        .read_unaligned()
                };
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(wv), xv);
            });
        }
        // SAFETY (this block): g < groups, inside xd, xsum and each scale/min row.
        let (dx, sx) = unsafe {
            (
                _mm512_loadu_ps(xd.add(16 * g)),
                _mm512_loadu_ps(xsum.add(16 * g)),
            )
        };
        unroll16!(RM, r, {
            // SAFETY: r < RM and g < groups, inside the scale and min rows.
            let (sc, mn) = unsafe { (*scale.add(r * groups + g), *min.add(r * groups + g)) };
            let s = _mm512_mul_ps(_mm512_set1_ps(sc), dx);
            tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), s, tot[r]);
            tot[r] = _mm512_fnmadd_ps(_mm512_set1_ps(mn), sx, tot[r]);
        });
    }
    tot
}

/// Transpose up to 16 activation rows into `x4[k / 4][token]` (4 bytes each) with per
/// sub-block `xd = dx` and `xsum = dx * sum(q)`; missing tokens are zeros.
///
/// # Safety
/// `count` activation rows of `nb` blocks of `p`'s activation type at `x`, `xs` apart; the
/// slices are sized `k * 16` and `groups * 16`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn prep_tokens(
    p: Panel,
    nb: usize,
    x: *const u8,
    xs: usize,
    count: usize,
    x4: &mut [u8],
    xd: &mut [f32],
    xsum: &mut [f32],
) {
    x4.fill(0);
    xd.fill(0.0);
    xsum.fill(0.0);
    let ab = p.act_bytes();
    for t in 0..count {
        // SAFETY: t < count, so the row is the caller's.
        let row = unsafe { std::slice::from_raw_parts(x.add(t * xs), nb * ab) };
        for (b, blk) in row.chunks_exact(ab).enumerate() {
            let (d, qs) = if p.k_quant() {
                (
                    f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
                    &blk[4..260],
                )
            } else {
                (f16(blk, 0), &blk[ab - 32..])
            };
            let base = b * qs.len() / 4;
            for (j, word) in qs.chunks_exact(4).enumerate() {
                let at = ((base + j) * TOKENS + t) * 4;
                x4[at..at + 4].copy_from_slice(word);
            }
            if p.k_quant() {
                let bsum =
                    |i: usize| f32::from(i16::from_le_bytes([blk[260 + 2 * i], blk[261 + 2 * i]]));
                let per = 16 / (p.sub() / 16);
                for g in 0..per {
                    let sum = if p.sub() == 16 {
                        bsum(g)
                    } else {
                        bsum(2 * g) + bsum(2 * g + 1)
                    };
                    xd[(b * per + g) * TOKENS + t] = d;
                    xsum[(b * per + g) * TOKENS + t] = d * sum;
                }
            } else {
                let sum: i32 = qs.iter().map(|&q| i32::from(q as i8)).sum();
                xd[b * TOKENS + t] = d;
                xsum[b * TOKENS + t] = d * sum as f32;
            }
        }
    }
}

fn f16(b: &[u8], at: usize) -> f32 {
    smelt_quant::half::f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Decode one weight row into codes, sub-block scales and minimums.
///
/// # Safety
/// `w` points at `nb` blocks of `p`; `codes` is `nb * block_elems` long, `scale`/`min`
/// `nb * block_elems / sub` long.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_row(
    p: Panel,
    w: *const u8,
    nb: usize,
    codes: &mut [u8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    let bb = p.block_bytes();
    let m4 = _mm256_set1_epi8(0x0f);
    for b in 0..nb {
        // SAFETY (this loop body): block b < nb is inside the row; every offset read below is
        // inside its block (see each format's layout in smelt-quant).
        let blk = unsafe { std::slice::from_raw_parts(w.add(b * bb), bb) };
        let wb = blk.as_ptr();
        let c = codes[b * p.block_elems()..].as_mut_ptr();
        let store = |at: usize, v: __m256i| unsafe { _mm256_storeu_si256(c.add(at).cast(), v) };
        match p {
            Panel::Q4_0 | Panel::Q4_1 | Panel::Q5_0 | Panel::Q5_1 | Panel::Q8_0 => {
                let d = f16(blk, 0);
                // SAFETY: the offsets read are inside the block (its layout in smelt-quant).
                let (q, mn) = unsafe {
                    match p {
                        Panel::Q4_0 => (nibbles(wb.add(2)), 8.0 * d),
                        Panel::Q4_1 => (nibbles(wb.add(4)), -f16(blk, 2)),
                        Panel::Q5_0 => (
                            _mm256_or_si256(nibbles(wb.add(6)), bit_bytes(u32_at(wb.add(2)), 16)),
                            16.0 * d,
                        ),
                        Panel::Q5_1 => (
                            _mm256_or_si256(nibbles(wb.add(8)), bit_bytes(u32_at(wb.add(4)), 16)),
                            -f16(blk, 2),
                        ),
                        _ => (
                            _mm256_xor_si256(load256(wb.add(2)), _mm256_set1_epi8(-128)),
                            128.0 * d,
                        ),
                    }
                };
                store(0, q);
                scale[b] = d;
                min[b] = mn;
            }
            Panel::Q4_K | Panel::Q5_K => {
                let (d, dmin) = (f16(blk, 0), f16(blk, 2));
                let (sc, mn) = scales_mins(&blk[4..16]);
                let qs = if p == Panel::Q5_K { 48 } else { 16 };
                let mut qh = if p == Panel::Q5_K {
                    // SAFETY: Q5_K's fifth bits, bytes 16..48 of the block.
                    unsafe { load256(wb.add(16)) }
                } else {
                    _mm256_setzero_si256()
                };
                for ch in 0..4 {
                    // SAFETY: 32 bytes of quants at qs + 32 ch, inside the block.
                    let qv = unsafe { load256(wb.add(qs + 32 * ch)) };
                    let mut lo = _mm256_and_si256(qv, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                    if p == Panel::Q5_K {
                        let fifth = _mm256_set1_epi8(0x10);
                        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), fifth));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), fifth));
                        qh = _mm256_srli_epi16(qh, 2);
                    }
                    store(64 * ch, lo);
                    store(64 * ch + 32, hi);
                }
                for g in 0..8 {
                    scale[8 * b + g] = d * (sc >> (8 * g) & 0xff) as f32;
                    min[8 * b + g] = dmin * (mn >> (8 * g) & 0xff) as f32;
                }
            }
            Panel::Q2_K | Panel::Q3_K | Panel::Q6_K => {
                let (d, sc): (f32, [i8; 16]) = match p {
                    Panel::Q2_K => (f16(blk, 80), std::array::from_fn(|g| (blk[g] & 0x0f) as i8)),
                    Panel::Q3_K => (f16(blk, 108), q3_scales(&blk[96..108]).map(|v| v as i8)),
                    _ => (f16(blk, 208), std::array::from_fn(|g| blk[192 + g] as i8)),
                };
                let mut hm = if p == Panel::Q3_K {
                    // SAFETY: Q3_K's high-bit mask, the block's first 32 bytes.
                    unsafe { load256(wb) }
                } else {
                    _mm256_setzero_si256()
                };
                for n in 0..2 {
                    // SAFETY: the quant bytes of half n, inside the block.
                    let (v0, v1, mut vh) = unsafe {
                        match p {
                            Panel::Q2_K => (load256(wb.add(16 + 32 * n)), m4, m4),
                            Panel::Q3_K => (load256(wb.add(32 + 32 * n)), m4, m4),
                            _ => (
                                load256(wb.add(64 * n)),
                                load256(wb.add(64 * n + 32)),
                                load256(wb.add(128 + 32 * n)),
                            ),
                        }
                    };
                    for k in 0..4 {
                        let low2 = _mm256_and_si256(
                            _mm256_srl_epi16(v0, _mm_cvtsi32_si128(2 * k as i32)),
                            _mm256_set1_epi8(3),
                        );
                        let q = match p {
                            Panel::Q2_K => low2,
                            Panel::Q3_K => {
                                let third =
                                    _mm256_and_si256(_mm256_slli_epi16(hm, 2), _mm256_set1_epi8(4));
                                hm = _mm256_srli_epi16(hm, 1);
                                _mm256_or_si256(low2, third)
                            }
                            _ => {
                                let src = if k % 2 == 0 { v0 } else { v1 };
                                let low = if k < 2 {
                                    src
                                } else {
                                    _mm256_srli_epi16(src, 4)
                                };
                                let high = _mm256_and_si256(
                                    _mm256_slli_epi16(vh, 4),
                                    _mm256_set1_epi8(0x30),
                                );
                                vh = _mm256_srli_epi16(vh, 2);
                                _mm256_or_si256(_mm256_and_si256(low, m4), high)
                            }
                        };
                        store(128 * n + 32 * k, q);
                    }
                }
                let zero = match p {
                    Panel::Q3_K => 4.0,
                    Panel::Q6_K => 32.0,
                    _ => 0.0,
                };
                let dmin = if p == Panel::Q2_K { f16(blk, 82) } else { 0.0 };
                for g in 0..16 {
                    scale[16 * b + g] = d * f32::from(sc[g]);
                    min[16 * b + g] = if p == Panel::Q2_K {
                        dmin * f32::from(blk[g] >> 4)
                    } else {
                        zero * d * f32::from(sc[g])
                    };
                }
            }
        }
    }
}
