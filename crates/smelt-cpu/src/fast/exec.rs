//! Executing a program's steps on one thread. Every thread runs every step on its own share;
//! the caller puts a barrier after each step.

use smelt_gguf::GgmlType;
use smelt_graph::KvPart;
use smelt_quant::half::f32_to_f16;

use super::attn;
use super::f16::F16Isa;
use super::kv::{KvType, LayerOffsets};
use super::lower::{Dst, In, MatMulStep, RowOp, Src, Step, TIn, TileCompute};
use super::rowops::{eval, SegEnv};
use super::shared::SharedSlice;
use super::{FastError, Span, Weights};

/// Everything a step reads, shared by the threads of one execution.
pub(crate) struct Ctx<'a> {
    pub w: &'a Weights,
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// The sequences the rows belong to, in row order.
    pub seqs: &'a [Span<'a>],
    pub arena: &'a SharedSlice<'a, f32>,
    pub kv16: &'a SharedSlice<'a, u16>,
    pub kv8: &'a SharedSlice<'a, u8>,
    pub kv_type: KvType,
    pub kv_layers: &'a [LayerOffsets],
    /// Positions per KV block.
    pub block: usize,
    pub n_threads: usize,
    pub f16: F16Isa,
}

impl Ctx<'_> {
    /// The input row (token and position) that row `r` of a `rows`-row value belongs to: its
    /// own, or for values after a last-row selection (one row per sequence) the last row of
    /// sequence `r`.
    pub(crate) fn input_row(&self, rows: usize, r: usize) -> usize {
        if rows == self.tokens.len() {
            r
        } else {
            self.last_row_of(r)
        }
    }

    /// Whether row `r` of a `rows`-row matmul input is multiplied by the panel gemm: rows of a
    /// sequence that has several rows in this step (prompt chunks) are, a sequence's single
    /// row (a decode step, or the last prompt token, which the engine evaluates alone) is not.
    /// Choosing by the row's role rather than by how many rows the step has keeps every
    /// token's numbers independent of what it was batched with (the two algorithms sum in
    /// different orders).
    pub(crate) fn panel_row(&self, rows: usize, r: usize) -> bool {
        self.seqs[self.seq_of(self.input_row(rows, r))].rows >= 2
    }

    /// The last input row of sequence `s`.
    pub(crate) fn last_row_of(&self, s: usize) -> usize {
        let sp = &self.seqs[s];
        sp.start + sp.rows - 1
    }

    /// The sequence input row `row` belongs to.
    pub(crate) fn seq_of(&self, row: usize) -> usize {
        if self.seqs.len() == 1 {
            0
        } else {
            self.seqs.partition_point(|s| s.start + s.rows <= row)
        }
    }

    /// Storage offset, from the start of the layer's part, of the block holding position
    /// `pos` of sequence `s`, and the position within the block.
    #[inline]
    pub(crate) fn kv_block(&self, lay: &LayerOffsets, s: usize, pos: usize) -> (usize, usize) {
        let blk = self.seqs[s].blocks[pos / self.block] as usize;
        (blk * lay.block, pos % self.block)
    }
}

/// One thread's scratch, sized when programs are lowered and reused by every execution.
#[derive(Default)]
pub(crate) struct Scratch {
    pub regs: Vec<f32>,
    pub acts: Vec<u8>,
    pub tiles: Vec<f32>,
    pub wrow: Vec<f32>,
    pub rope: Vec<f32>,
    pub scores: Vec<f32>,
}

pub(crate) fn run_step(
    step: &Step,
    tid: usize,
    ctx: &Ctx,
    s: &mut Scratch,
) -> Result<(), FastError> {
    match step {
        Step::MatMul(st) => run_matmul(st, tid, ctx, s),
        Step::Attention(st) => attn::run(st, tid, ctx, &mut s.scores),
        Step::Rows { ops, rows } => {
            // Rows split evenly; each thread computes and writes whole rows.
            let (r0, r1) = share(*rows, tid, ctx.n_threads);
            for r in r0..r1 {
                eval_rows(ops, r, *rows, ctx, s, None)?;
            }
            Ok(())
        }
    }
}

/// A thread's column share of a prologue value, in whole 32-column blocks where the width
/// allows (q8_0 cache rows are written a block at a time).
fn share_blocks(width: usize, t: usize, threads: usize) -> (usize, usize) {
    if width.is_multiple_of(32) {
        let (b0, b1) = share(width / 32, t, threads);
        (b0 * 32, b1 * 32)
    } else {
        share(width, t, threads)
    }
}

/// `[n * t / threads, n * (t + 1) / threads)`.
fn share(n: usize, t: usize, threads: usize) -> (usize, usize) {
    (n * t / threads, n * (t + 1) / threads)
}

fn seg_env<'a>(
    w: &'a Weights,
    big: &'a dyn Fn(usize) -> (&'a [u8], smelt_gguf::GgmlType, usize),
) -> SegEnv<'a> {
    SegEnv {
        small: &w.small,
        big,
    }
}

/// Evaluate row ops for row `ro` of a kernel whose last op has `rows_x` rows. `cols_of`:
/// Some(tid) in a matmul prologue (every thread computes every row and writes only its column
/// share), None in a rows kernel (the thread owns the row).
fn eval_rows(
    ops: &[RowOp],
    ro: usize,
    rows_x: usize,
    ctx: &Ctx,
    s: &mut Scratch,
    cols_of: Option<usize>,
) -> Result<(), FastError> {
    let big = |i: usize| ctx.w.big(i);
    let env = seg_env(ctx.w, &big);
    for op in ops {
        // Rows before a last-row selection are computed at the selected rows only.
        let r = if op.rows == rows_x {
            ro
        } else {
            ctx.last_row_of(ro)
        };
        let (lo, hi) = s.regs.split_at_mut(op.out);
        let out = &mut hi[..op.width];
        let read = |i: &In| -> &[f32] {
            match i.src {
                Src::Reg(off) => &lo[off..off + op.width],
                Src::Buf { off, cols, .. } => {
                    let row = if i.last { ctx.last_row_of(r) } else { r };
                    // SAFETY: buffers a kernel reads were written by earlier kernels.
                    unsafe { ctx.arena.get(off + row * cols, cols) }
                }
            }
        };
        let a = op.ins.first().map_or(&[][..], read);
        let b = op.ins.get(1).map_or(&[][..], read);
        let t = ctx.input_row(op.rows, r);
        eval(
            &op.op,
            &env,
            out,
            a,
            b,
            0,
            ctx.positions[t],
            ctx.tokens[t],
            &mut s.rope,
        )?;
        let (c0, c1) = match cols_of {
            Some(tid) => share_blocks(op.width, tid, ctx.n_threads),
            None => (0, op.width),
        };
        for d in &op.dests {
            // SAFETY: in a prologue each thread writes its own column share; in a rows kernel
            // its own rows.
            unsafe { write(ctx, d, r, op.rows, c0, &out[c0..c1])? };
        }
    }
    Ok(())
}

/// Write `vals` (columns `c0..`) of row `r` of a `rows`-row value to `d`.
///
/// # Safety
/// No other thread accesses these elements during the current kernel.
unsafe fn write(
    ctx: &Ctx,
    d: &Dst,
    r: usize,
    rows: usize,
    c0: usize,
    vals: &[f32],
) -> Result<(), FastError> {
    match *d {
        Dst::Buf { off, cols } => {
            // SAFETY: the caller's.
            unsafe { ctx.arena.get_mut(off + r * cols + c0, vals.len()) }.copy_from_slice(vals);
        }
        Dst::Kv {
            layer,
            part,
            head_dim,
        } => {
            let lay = ctx.kv_layers[layer];
            let base = match part {
                KvPart::K => lay.k,
                KvPart::V => lay.v,
            };
            let row = ctx.input_row(rows, r);
            let (blk, pos) = ctx.kv_block(&lay, ctx.seq_of(row), ctx.positions[row] as usize);
            let mut c = c0;
            for run in split_heads(vals, c0, head_dim) {
                let at = base + blk + ctx.kv_type.index(part, ctx.block, head_dim, pos, c);
                match ctx.kv_type {
                    KvType::F16 if part == KvPart::K => {
                        // Transposed keys: one element per dimension, a block's positions apart.
                        for (i, &v) in run.iter().enumerate() {
                            // SAFETY: the caller's; this element is column c + i at `pos`.
                            let slot = unsafe { ctx.kv16.get_mut(at + i * ctx.block, 1) };
                            slot[0] = f32_to_f16(v);
                        }
                    }
                    KvType::F16 => {
                        // SAFETY: the caller's; one head's columns at one position are contiguous.
                        let dst = unsafe { ctx.kv16.get_mut(at, run.len()) };
                        dst.iter_mut()
                            .zip(run)
                            .for_each(|(d, &v)| *d = f32_to_f16(v));
                    }
                    KvType::Q8_0 => {
                        // Lowering aligns every writer's columns to 32, so runs are whole blocks.
                        debug_assert!(c.is_multiple_of(32) && run.len().is_multiple_of(32));
                        // SAFETY: as above, the blocks of these columns.
                        let dst = unsafe { ctx.kv8.get_mut(at, run.len() / 32 * 34) };
                        smelt_quant::quantize(GgmlType::Q8_0, run, dst).map_err(|e| {
                            FastError::Invalid(format!("KV write of layer {layer}: {e}"))
                        })?;
                    }
                }
                c += run.len();
            }
        }
    }
    Ok(())
}

/// `vals` (starting at column `c0`) cut at head boundaries.
fn split_heads(vals: &[f32], c0: usize, head_dim: usize) -> impl Iterator<Item = &[f32]> {
    let mut rest = vals;
    let mut c = c0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (head_dim - c % head_dim).min(rest.len());
        let (run, tail) = rest.split_at(n);
        rest = tail;
        c += n;
        Some(run)
    })
}

fn run_matmul(st: &MatMulStep, tid: usize, ctx: &Ctx, s: &mut Scratch) -> Result<(), FastError> {
    // Prologue: every row of the input, normalised and quantised once per activation layout.
    for ro in 0..st.rows {
        if !st.prologue.is_empty() {
            eval_rows(&st.prologue, ro, st.rows, ctx, s, Some(tid))?;
        }
        let x: &[f32] = match st.input.src {
            Src::Reg(off) => &s.regs[off..off + st.k],
            // SAFETY: written by an earlier kernel.
            Src::Buf { off, cols, .. } => unsafe { ctx.arena.get(off + ro * cols, st.k) },
        };
        for a in &st.acts {
            let at = a.off + ro * a.row_bytes;
            a.mv.quantize_act(x, &mut s.acts[at..at + a.row_bytes])?;
        }
    }
    let big = |i: usize| ctx.w.big(i);
    let env = seg_env(ctx.w, &big);
    let slot_len = st.tr * st.tc_max;
    for w in &st.work[tid] {
        let b = &st.bundles[w.bundle];
        let mut cc0 = w.c0;
        while cc0 < w.c1 {
            let cc1 = (cc0 + b.tc).min(w.c1);
            let nc = cc1 - cc0;
            let mut r0 = 0;
            while r0 < st.rows {
                let r1 = (r0 + st.tr).min(st.rows);
                let nt = r1 - r0;
                for node in &b.nodes {
                    let (lo, hi) = s.tiles.split_at_mut(node.slot * slot_len);
                    let tile = &mut hi[..slot_len];
                    match &node.compute {
                        TileCompute::MatMul { weight, mv, act } => {
                            let a = &st.acts[*act];
                            let (wbytes, _, _) = ctx.w.big(*weight);
                            // Runs of rows with the same algorithm (see `Ctx::panel_row`).
                            let mut s0 = r0;
                            while s0 < r1 {
                                let panel = ctx.panel_row(st.rows, s0);
                                let mut s1 = s0 + 1;
                                while s1 < r1 && ctx.panel_row(st.rows, s1) == panel {
                                    s1 += 1;
                                }
                                let xq =
                                    &s.acts[a.off + s0 * a.row_bytes..a.off + s1 * a.row_bytes];
                                let out = &mut tile[(s0 - r0) * st.tc_max..];
                                mv.gemm(
                                    wbytes,
                                    cc0..cc1,
                                    xq,
                                    s1 - s0,
                                    out,
                                    st.tc_max,
                                    &mut s.wrow,
                                    panel,
                                )?;
                                s0 = s1;
                            }
                        }
                        TileCompute::Seg { op, ins } => {
                            for t in 0..nt {
                                let r = r0 + t;
                                let read = |i: &TIn| -> &[f32] {
                                    match *i {
                                        TIn::Tile(sl) => &lo[sl * slot_len + t * st.tc_max..][..nc],
                                        // SAFETY: written by an earlier kernel.
                                        TIn::Buf { off, cols } => unsafe {
                                            ctx.arena.get(off + r * cols + cc0, nc)
                                        },
                                    }
                                };
                                let a = ins.first().map_or(&[][..], read);
                                let bb = ins.get(1).map_or(&[][..], read);
                                let out = &mut tile[t * st.tc_max..t * st.tc_max + nc];
                                let ti = ctx.input_row(st.rows, r);
                                eval(
                                    op,
                                    &env,
                                    out,
                                    a,
                                    bb,
                                    cc0,
                                    ctx.positions[ti],
                                    ctx.tokens[ti],
                                    &mut s.rope,
                                )?;
                            }
                        }
                    }
                    for d in &node.dests {
                        for t in 0..nt {
                            let vals = &tile[t * st.tc_max..t * st.tc_max + nc];
                            // SAFETY: columns cc0..cc1 of this bundle are this thread's work
                            // alone (the partition is disjoint).
                            unsafe { write(ctx, d, r0 + t, st.rows, cc0, vals)? };
                        }
                    }
                }
                r0 = r1;
            }
            cc0 = cc1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_split_at_boundaries() {
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let runs: Vec<usize> = split_heads(&v, 6, 4).map(|r| r.len()).collect();
        assert_eq!(runs, vec![2, 4, 4]);
        let runs: Vec<usize> = split_heads(&v[..3], 8, 4).map(|r| r.len()).collect();
        assert_eq!(runs, vec![3]);
    }
}
