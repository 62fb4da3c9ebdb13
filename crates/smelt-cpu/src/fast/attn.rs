//! Attention over the KV cache (causal, GQA, optional sliding window), for prompts and decode
//! steps alike: a block of queries of one head against chunks of its keys, with an online
//! softmax (running maximum and sum per query, as FlashAttention does).
//!
//! One code path serves every row count, and chunks lie on a fixed grid of positions, so a
//! query's result does not depend on how the sequence was split into steps: decoding after a
//! cached prefix gives exactly the numbers a full evaluation gives.
//!
//! Each chunk of keys and values is converted to f32 once for the whole query block, keys
//! transposed (`kt[d][j]`; the f16 cache stores them so, see `kv.rs`). Scores are then
//! computed in register tiles of `G` queries x `T` keys (`sum_d q[d] * kt[d][j..j + T]`:
//! multiply-adds across keys, no horizontal sums, each key vector loaded once for several
//! queries; `G` is 4 for prompts, 1 for a decode step), and values are added in tiles of `G`
//! queries x `T` head elements. Keys a query may not see (causal, sliding window) get
//! probability 0. The loops are plain Rust compiled inside `target_feature` functions, so they
//! vectorise at the CPU's width (the crate is built for baseline x86-64). Heads whose size is
//! not a multiple of the tile take a simpler per-query path for the values.
//!
//! Work items are (query block, head) pairs dealt round-robin to the threads: decode splits
//! heads, causal prefill interleaves early (cheap) and late (expensive) blocks.

use smelt_quant::half::f16_to_f32;

use super::exec::Ctx;
use super::f16::F16Isa;
use smelt_graph::KvPart;

use super::kv::KvType;
use super::lower::AttnStep;
use super::FastError;

/// Queries per work item.
pub(crate) const QUERY_BLOCK: usize = 16;
/// Keys per chunk.
pub(crate) const KEY_CHUNK: usize = 128;
/// Queries per register tile.
const QG: usize = 4;
const _: () = assert!(QUERY_BLOCK.is_multiple_of(QG) && KEY_CHUNK.is_multiple_of(64));

/// Floats of scratch a thread needs for heads of `head_dim`.
pub(crate) fn scratch_len(head_dim: usize) -> usize {
    // q (scaled), accumulators, kt, vf, one row, scores, max, sum and correction per query.
    2 * QUERY_BLOCK * head_dim
        + 2 * KEY_CHUNK * head_dim
        + head_dim
        + QUERY_BLOCK * KEY_CHUNK
        + 3 * QUERY_BLOCK
}

/// This thread's share: items are (query block, head) of each sequence in turn, round-robin
/// (blocks interleave, so every thread gets early and late, cheap and expensive blocks). A
/// query block never mixes sequences: its queries share one range of keys.
pub(crate) fn run(
    st: &AttnStep,
    tid: usize,
    ctx: &Ctx,
    scratch: &mut [f32],
) -> Result<(), FastError> {
    let mut i = 0;
    for (s, sp) in ctx.seqs.iter().enumerate() {
        let blocks = sp.rows.div_ceil(QUERY_BLOCK);
        let items = blocks * st.n_head;
        // This thread's first item of the sequence.
        let mut k = (tid + ctx.n_threads - i % ctx.n_threads) % ctx.n_threads;
        i += items;
        while k < items {
            let (b, h) = (k / st.n_head, k % st.n_head);
            k += ctx.n_threads;
            let t0 = sp.start + b * QUERY_BLOCK;
            let t1 = (t0 + QUERY_BLOCK).min(sp.start + sp.rows);
            let q = Queries { s, h, t0, t1 };
            let one = t1 - t0 == 1;
            match ctx.f16 {
                // SAFETY: the level was chosen because the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                F16Isa::Avx512 => unsafe { block_avx512(st, ctx, q, scratch, one) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                F16Isa::Avx2F16c => unsafe { block_avx2(st, ctx, q, scratch, one) },
                F16Isa::Scalar if one => block::<false, 32, 1>(st, ctx, q, scratch),
                F16Isa::Scalar => block::<false, 32, QG>(st, ctx, q, scratch),
            }
        }
    }
    Ok(())
}

/// One work item: query rows `t0..t1` (of sequence `s`) of head `h`.
#[derive(Clone, Copy)]
struct Queries {
    s: usize,
    h: usize,
    t0: usize,
    t1: usize,
}

/// # Safety
/// The CPU supports AVX-512F, AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn block_avx512(st: &AttnStep, ctx: &Ctx, q: Queries, s: &mut [f32], one: bool) {
    // 4 queries x 64 floats: 16 of the 32 zmm registers. A decode step has one query.
    if one {
        block::<true, 64, 1>(st, ctx, q, s)
    } else {
        block::<true, 64, QG>(st, ctx, q, s)
    }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2(st: &AttnStep, ctx: &Ctx, q: Queries, s: &mut [f32], one: bool) {
    // 4 queries x 16 floats: 8 of the 16 ymm registers.
    if one {
        block::<true, 16, 1>(st, ctx, q, s)
    } else {
        block::<true, 16, QG>(st, ctx, q, s)
    }
}

/// `a + b * c`, fused where the caller runs with FMA (where `mul_add` is one instruction;
/// without it, a library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        b.mul_add(c, a)
    } else {
        a + b * c
    }
}

/// The slices of one thread's scratch.
struct Bufs<'a> {
    qs: &'a mut [f32],
    acc: &'a mut [f32],
    kt: &'a mut [f32],
    vf: &'a mut [f32],
    row: &'a mut [f32],
    /// `[QUERY_BLOCK][KEY_CHUNK]` scores, then probabilities.
    p: &'a mut [f32],
    mx: &'a mut [f32],
    sum: &'a mut [f32],
    corr: &'a mut [f32],
}

fn bufs(scratch: &mut [f32], hd: usize) -> Bufs<'_> {
    let (qs, rest) = scratch.split_at_mut(QUERY_BLOCK * hd);
    let (acc, rest) = rest.split_at_mut(QUERY_BLOCK * hd);
    let (kt, rest) = rest.split_at_mut(KEY_CHUNK * hd);
    let (vf, rest) = rest.split_at_mut(KEY_CHUNK * hd);
    let (row, rest) = rest.split_at_mut(hd);
    let (p, rest) = rest.split_at_mut(QUERY_BLOCK * KEY_CHUNK);
    let (mx, rest) = rest.split_at_mut(QUERY_BLOCK);
    let (sum, rest) = rest.split_at_mut(QUERY_BLOCK);
    let corr = &mut rest[..QUERY_BLOCK];
    Bufs {
        qs,
        acc,
        kt,
        vf,
        row,
        p,
        mx,
        sum,
        corr,
    }
}

/// Query rows `t0..t1` of head `h`, over the keys of their sequence.
#[inline(always)]
fn block<const FMA: bool, const T: usize, const G: usize>(
    st: &AttnStep,
    ctx: &Ctx,
    q: Queries,
    scratch: &mut [f32],
) {
    let Queries { s: seq, h, t0, t1 } = q;
    let hd = st.head_dim;
    let nq = t1 - t0;
    let qcols = st.n_head * hd;
    let hk = h / (st.n_head / st.n_head_kv);
    let lay = ctx.kv_layers[st.layer];
    let hr = ctx.kv_type.head_row(hd);
    let b = bufs(scratch, hd);
    let range = |t: usize| {
        let pos = ctx.positions[t] as usize;
        (
            st.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
            pos + 1,
        )
    };
    let (mut klo, mut khi) = (usize::MAX, 0);
    // Queries beyond the block's rows stay zero: tiles compute them and nothing reads them.
    b.qs.fill(0.0);
    for t in t0..t1 {
        let (lo, hi) = range(t);
        klo = klo.min(lo);
        khi = khi.max(hi);
        // SAFETY: q was written by an earlier kernel.
        let q = unsafe { ctx.arena.get(st.q_off + t * qcols + h * hd, hd) };
        b.qs[(t - t0) * hd..(t - t0 + 1) * hd]
            .iter_mut()
            .zip(q)
            .for_each(|(d, &v)| *d = v * st.scale);
    }
    b.acc.fill(0.0);
    b.mx.fill(f32::NEG_INFINITY);
    b.sum.fill(0.0);
    let tiled = hd.is_multiple_of(T);
    // Chunks on a fixed grid of positions (not relative to this block), so a query's numbers
    // do not depend on which block it is in.
    let mut c0 = klo / KEY_CHUNK * KEY_CHUNK;
    while c0 < khi {
        let c1 = (c0 + KEY_CHUNK).min(khi);
        let nk = c1 - c0;
        // Keys transposed, values as rows, both f32, a run of positions within one KV block
        // at a time.
        let mut p = c0;
        while p < c1 {
            let (boff, in_blk) = ctx.kv_block(&lay, seq, p);
            let run = (c1 - p).min(ctx.block - in_blk);
            let j0 = p - c0;
            let idx = |part, col| boff + ctx.kv_type.index(part, ctx.block, hd, in_blk, col);
            if ctx.kv_type.keys_transposed() {
                for d in 0..hd {
                    let at = lay.k + idx(KvPart::K, hk * hd + d);
                    // SAFETY: positions up to the block's last were written by earlier kernels.
                    let src = unsafe { ctx.kv16.get(at, run) };
                    let dst = d * KEY_CHUNK + j0;
                    ctx.f16.convert(src, &mut b.kt[dst..dst + run]);
                }
            } else {
                let k_at = lay.k + idx(KvPart::K, hk * hd);
                for j in 0..run {
                    load_row(ctx, k_at + j * hr, hd, b.row);
                    for (d, &v) in b.row.iter().enumerate() {
                        b.kt[d * KEY_CHUNK + j0 + j] = v;
                    }
                }
            }
            let v_at = lay.v + idx(KvPart::V, hk * hd);
            for j in 0..run {
                let dst = (j0 + j) * hd;
                load_row(ctx, v_at + j * hr, hd, &mut b.vf[dst..dst + hd]);
            }
            p += run;
        }
        // Scores of every query of the block for every key of the chunk (whole tiles).
        let nk_tiles = nk.div_ceil(T) * T;
        for qg in (0..nq.next_multiple_of(G)).step_by(G) {
            let mut j0 = 0;
            while j0 < nk_tiles {
                let mut a = [[0f32; T]; G];
                for d in 0..hd {
                    let at = d * KEY_CHUNK + j0;
                    let k: &[f32; T] = b.kt[at..at + T].try_into().expect("tile");
                    for (r, ar) in a.iter_mut().enumerate() {
                        let qd = b.qs[(qg + r) * hd + d];
                        for i in 0..T {
                            ar[i] = madd::<FMA>(ar[i], qd, k[i]);
                        }
                    }
                }
                for (r, ar) in a.iter().enumerate() {
                    let at = (qg + r) * KEY_CHUNK + j0;
                    b.p[at..at + T].copy_from_slice(ar);
                }
                j0 += T;
            }
        }
        // Online softmax per query over the keys it may see.
        for qi in 0..nq.next_multiple_of(G) {
            let p = &mut b.p[qi * KEY_CHUNK..qi * KEY_CHUNK + nk];
            let (a, z) = if qi < nq {
                let (lo, hi) = range(t0 + qi);
                (lo.max(c0).min(c1) - c0, hi.min(c1).max(c0) - c0)
            } else {
                (0, 0)
            };
            if a >= z {
                p.fill(0.0);
                b.corr[qi] = 1.0;
                continue;
            }
            let m_new = p[a..z].iter().fold(b.mx[qi], |m, &v| m.max(v));
            let corr = exp_neg(b.mx[qi] - m_new);
            p[..a].fill(0.0);
            p[z..].fill(0.0);
            p[a..z].iter_mut().for_each(|v| *v = exp_neg(*v - m_new));
            b.sum[qi] = b.sum[qi] * corr + p[a..z].iter().sum::<f32>();
            b.mx[qi] = m_new;
            b.corr[qi] = corr;
        }
        // Values: acc = acc * corr + sum_j p_j v_j.
        if tiled {
            for qg in (0..nq.next_multiple_of(G)).step_by(G) {
                for dt in (0..hd).step_by(T) {
                    let mut a = [[0f32; T]; G];
                    for (r, ar) in a.iter_mut().enumerate() {
                        let at = (qg + r) * hd + dt;
                        let c = b.corr[qg + r];
                        ar.iter_mut()
                            .zip(&b.acc[at..at + T])
                            .for_each(|(x, &v)| *x = v * c);
                    }
                    for j in 0..nk {
                        let at = j * hd + dt;
                        let v: &[f32; T] = b.vf[at..at + T].try_into().expect("tile");
                        for (r, ar) in a.iter_mut().enumerate() {
                            let pj = b.p[(qg + r) * KEY_CHUNK + j];
                            for i in 0..T {
                                ar[i] = madd::<FMA>(ar[i], pj, v[i]);
                            }
                        }
                    }
                    for (r, ar) in a.iter().enumerate() {
                        let at = (qg + r) * hd + dt;
                        b.acc[at..at + T].copy_from_slice(ar);
                    }
                }
            }
        } else {
            for qi in 0..nq {
                let o = &mut b.acc[qi * hd..(qi + 1) * hd];
                let c = b.corr[qi];
                o.iter_mut().for_each(|v| *v *= c);
                for j in 0..nk {
                    let pj = b.p[qi * KEY_CHUNK + j];
                    o.iter_mut()
                        .zip(&b.vf[j * hd..(j + 1) * hd])
                        .for_each(|(o, &v)| *o = madd::<FMA>(*o, pj, v));
                }
            }
        }
        c0 = c1;
    }
    for qi in 0..nq {
        let t = t0 + qi;
        let inv = 1.0 / b.sum[qi];
        // SAFETY: item (block, h) is this thread's alone; its outputs are head h of its rows.
        let out = unsafe { ctx.arena.get_mut(st.out_off + t * qcols + h * hd, hd) };
        out.iter_mut()
            .zip(&b.acc[qi * hd..(qi + 1) * hd])
            .for_each(|(o, &a)| *o = a * inv);
    }
}

/// `e^x` for the softmax's `x <= 0`, within a few ulp; plain arithmetic, so loops over it
/// vectorise (the library `exp` is a call per element). `x = n ln2 + r` with `n` an integer
/// (set in the exponent bits) and `|r| <= ln2 / 2`, `ln2` split in two parts so `r` is exact
/// (Cody and Waite), and `e^r` by its Taylor series to degree 7.
#[inline]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    // Round to nearest with the 1.5 * 2^23 trick (vectorises, unlike `round`).
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// One head's row at storage offset `at` of the cache, as f32.
#[inline(always)]
fn load_row(ctx: &Ctx, at: usize, hd: usize, dst: &mut [f32]) {
    match ctx.kv_type {
        KvType::F16 => {
            // SAFETY: rows up to the block's last position were written by earlier kernels.
            let src = unsafe { ctx.kv16.get(at, hd) };
            ctx.f16.convert(src, dst);
        }
        KvType::Q8_0 => {
            // SAFETY: as above.
            let src = unsafe { ctx.kv8.get(at, hd / 32 * 34) };
            for (ob, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                ob.iter_mut()
                    .zip(&b[2..])
                    .for_each(|(o, &x)| *o = d * f32::from(x as i8));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (want, got) = (x.exp(), exp_neg(x));
            assert!((want - got).abs() <= 3e-7 * want, "{x}: {want} vs {got}");
            x -= 0.0137;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    }
}
