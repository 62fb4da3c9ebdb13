//! Decode (one token) matmul kernels, v3. Rows of all the kernel's bundles are spread over a
//! grid of at most two blocks per SM; each warp takes one output column at a time (that
//! column of every matmul in its bundle). A block first prefetches its warps' first weight
//! rows into L2, then computes the prologue (norms, residual adds) once and quantises the
//! activation row to int8 in shared memory (float weights get an f32 copy), then streams its
//! rows through the dp4a gemv units of the prelude. Raw matmul outputs go to scratch; epilogue
//! tiles (bias, RoPE, QK-norm, SiLU*up, residual, KV write) run in the block that completes
//! them: tiles wholly inside a block's rows at once, tiles shared by neighbouring blocks by
//! the last one to finish (a counter per tile, reset by that block so graphs replay). How a
//! bundle finishes its columns, and the warp's code for them: codegen/epilogue.rs.

use std::collections::HashMap;
use std::fmt::Write;

use smelt_graph::{KernelKind, Op};

use super::epilogue::Mode;
use super::row_regs::RED_LEN;
use super::{row_scale, scaled, stage, type_suffix, unsupported, Gen, Params, NT, NWARPS};
use crate::CudaError;

/// Code for bundle `bi` of a decode matmul kernel, for its column `c` (dispatched on the row
/// index `R` by the kernel's `dispatch`).
pub(super) type Each<'e> = &'e mut dyn FnMut(usize) -> Result<String, CudaError>;

/// Weight rows prefetched into L2 per warp before the prologue.
const PREFETCH_ROWS: usize = 2;
/// The most floats a thread holds of a batch's rows loaded for every pass at once (v18b).
const AHEAD_FLOATS: usize = 64;

/// Floats of one row's int8 activations in shared memory: values (padded), block scales,
/// block sums.
pub(super) fn x_stride(kdim: usize) -> usize {
    let kp = kdim.div_ceil(256) * 256;
    let xs = (kp + kp / 64 * 16) / 4 + kp / 32 + kp / 16;
    // Rows 4 banks apart mod 8 (v17c): the tensor-core rows' B fragments read the same word
    // of 8 rows at once, which a stride of a multiple of 32 floats put in one bank.
    xs + (36 - xs % 8) % 8
}

pub(super) struct Mat {
    pub(super) ty: &'static str,
    pub(super) quant: bool,
    pub(super) w: String,
    pub(super) rb: String,
    /// Bytes of one weight row.
    pub(super) row_bytes: usize,
    /// Offset of its raw sums in the arena where the bundle finishes in tiles.
    pub(super) raw: usize,
    slot: usize,
    /// The bundle's width (raw scratch row of several-row steps).
    width: usize,
    /// v13a: the block's rows of this matmul are staged in shared memory; the suffix of the
    /// kernel's `so<suffix>` (byte offset of the first staged column's row in the stage) and
    /// `cm<suffix>` (that column).
    pub(super) stage: Option<String>,
}

impl Mat {
    /// The address of weight row `col` (an expression in scope).
    pub(super) fn row(&self, col: &str) -> String {
        match &self.stage {
            Some(x) => format!("(STG + so{x} + (u64)({col} - cm{x}) * {})", self.rb),
            None => format!("W + {} + (u64){col} * {}", self.w, self.rb),
        }
    }
}

impl Gen<'_> {
    pub(super) fn decode_matmul(&mut self, ki: usize) -> Result<(), CudaError> {
        let k = &self.plan.kernels()[ki];
        let KernelKind::MatMul { input, bundles } = &k.kind else {
            unreachable!()
        };
        let kdim = self.node(*input).shape[1];
        let kp = kdim.div_ceil(256) * 256;
        // Rows of the step (one per sequence): each weight unit is loaded once and dotted with
        // every row's activations; one row generates the single-token kernels unchanged.
        let nr = self.t;
        let xstride = x_stride(kdim);
        // Several rows: one block per SM, 128 registers (NR accumulators per column: at 64
        // registers the 8-row kernels spilled 1-2.6 KB a thread, and the 8B's 2-row step took
        // 4.0 ms against 4.4 ms for 4 rows at one block per SM).
        // One row: two blocks per SM (64 registers) for short rows, one (128 registers) for
        // long ones, where the 8B's kernels measured 7% faster a token (v8).
        let blocks = match (nr, self.decode_blocks) {
            (2.., _) => 1,
            (_, Some(b)) => b,
            _ if kdim >= self.decode_wide_k => 1,
            _ => 2,
        };
        // A bundle finishes its columns in the computing warp (one column per warp turn, or a
        // RoPE pair of columns per turn) or in tiles after all the block's rows.
        // v17c: a batch step of at least `batch_mma` rows takes its matmuls on tensor cores, a
        // warp 16 weight rows (cu/mma_rows.cu; H100, 8 rows: the 1B's step 1.80 -> 1.37 ms,
        // the 8B's 6.54 -> 5.48; at 2 and 4 rows slower, so 8 by default).
        // Diagnostics: `SMELT_CUDA_BATCH_TILES=1` forces the tiles without the tensor-core rows;
        // `SMELT_CUDA_BATCH_MMA_K=n` takes the rows only in kernels of rows of n values.
        let k_ok = super::lab_knob("SMELT_CUDA_BATCH_MMA_K").is_none_or(|n| n == kdim);
        let fits = nr > 1 && k_ok && self.mma_rows_fit(bundles, kdim);
        let tiles_only = fits && super::lab_knob("SMELT_CUDA_BATCH_TILES") == Some(1);
        let mma = fits && !tiles_only && self.batch_mma > 0 && nr >= self.batch_mma;
        // How each bundle would finish one token's columns; with the tensor-core rows a
        // column-wise epilogue (or an adjacent RoPE pair, the partner column one lane quad
        // away) runs where the rows are summed, a NEOX pair or a per-head norm in tiles.
        let fin: Vec<Mode> = bundles.iter().map(|b| self.epilogue_mode(b)).collect();
        let modes: Vec<Mode> = match (mma, tiles_only) {
            (true, _) => fin
                .iter()
                .map(|m| match m {
                    Mode::Column => Mode::Column,
                    Mode::Pair(Some(r)) if !r.neox => Mode::Column,
                    _ => Mode::Tiled,
                })
                .collect(),
            (false, true) => vec![Mode::Tiled; bundles.len()],
            (false, false) => fin.clone(),
        };
        let vwidth = |bi: usize| match modes[bi] {
            Mode::Pair(_) => bundles[bi].width / 2,
            _ => bundles[bi].width,
        };
        let total: usize = (0..bundles.len()).map(vwidth).sum();
        // v18f: a batch kernel whose rows leave half the GPU's SMs idle (SmolLM2's 576-row
        // matmuls: 36 blocks of 132) gives each weight row to two warps, each with half the
        // sequences (`sh` the half, virtual rows `RV` over twice the rows): half the dot's
        // chain a warp, twice the blocks. Every column epilogue in the warp (no tiles, no
        // tensor-core rows), an even number of rows (`SMELT_CUDA_SEQ_SPLIT=0`: off).
        let split = match nr {
            2.. if nr.is_multiple_of(2)
                && !mma
                && modes.iter().all(|m| *m != Mode::Tiled)
                && total.div_ceil(NWARPS) * 2 <= self.sm_count
                && super::lab_knob("SMELT_CUDA_SEQ_SPLIT") != Some(0) =>
            {
                2
            }
            _ => 1,
        };
        let vtotal = total * split;
        let grid = (blocks * self.sm_count).min(vtotal.div_ceil(NWARPS)).max(1);
        // v17c: the warps a column group's K units are split over (`mma_rows.rs`).
        let ks = if mma {
            self.mma_split(bundles, kdim)
        } else {
            1
        };
        let rows_per_block = match mma {
            // Whole passes of the block's column groups (16 rows each, `NWARPS / ks` a pass).
            true => {
                let span = 16 * NWARPS / ks;
                total.div_ceil(grid).div_ceil(span) * span
            }
            false => vtotal.div_ceil(grid),
        };
        let grid = vtotal.div_ceil(rows_per_block);
        // A row loop's variable and, split, the real row `R` and half `sh` from it.
        let (rvar, rsplit) = match split {
            1 => ("R", String::new()),
            _ => (
                "RV",
                format!("const int sh = RV / {total}, R = RV - sh * {total}; (void)sh;\n"),
            ),
        };

        let mut p = Params::default();
        let mut slots = HashMap::new();
        let mut next = 0usize;
        let mut body = format!(
            "extern __shared__ float sm[]; __shared__ float red[{RED_LEN}]; __shared__ int ntl;\n\
            const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5; ",
        );
        body += if nr == 1 {
            "const int r = 0, rp = 0; (void)lane; (void)rp;\n"
        } else {
            "(void)lane;\n"
        };
        write!(
            body,
            "const int R0 = blockIdx.x * {rows_per_block}, R1 = min(R0 + {rows_per_block}, {vtotal});\n"
        )
        .unwrap();

        // Per bundle: first row, tile width, first tile; per matmul: weight, raw scratch.
        let mut mats: Vec<Vec<Mat>> = Vec::new();
        let mut starts = Vec::new();
        let (mut start, mut tiles, mut max_tl) = (0usize, 0usize, 0usize);
        let (mut need_q8, mut need_f32) = (false, false);
        let inline: Vec<bool> = modes.iter().map(|m| *m != Mode::Tiled).collect();
        for (bi, b) in bundles.iter().enumerate() {
            let bc = Self::tile_cols(b.align, 32);
            let nt = if inline[bi] { 0 } else { b.width.div_ceil(bc) };
            starts.push((start, bc, tiles, nt));
            if !inline[bi] {
                max_tl += rows_per_block.min(b.width).div_ceil(bc) + 2;
            }
            let mut ms = Vec::new();
            for (mi, &m) in b.matmuls.iter().enumerate() {
                let Op::MatMul { w, .. } = self.node(m).op else {
                    unreachable!()
                };
                let wi = self.weight(w);
                let ty = type_suffix(wi.dtype).ok_or_else(|| unsupported(wi.dtype))?;
                let quant = !matches!(ty, "f32" | "f16" | "bf16");
                need_q8 |= quant;
                need_f32 |= !quant;
                let (w, rb) = (p.p(wi.off), p.p(wi.row_bytes));
                let raw = if inline[bi] {
                    0
                } else {
                    self.alloc_scratch(nr * b.width)
                };
                ms.push(Mat {
                    ty,
                    quant,
                    w,
                    rb,
                    row_bytes: wi.row_bytes as usize,
                    raw,
                    slot: mi * bc,
                    width: b.width,
                    stage: None,
                });
            }
            mats.push(ms);
            start += vwidth(bi);
            tiles += nt;
        }
        self.counters = self.counters.max(tiles);

        // Dispatch on the row index R: `each(bi)` gives bundle bi's code for its column `c`.
        let dispatch = |each: Each| -> Result<String, CudaError> {
            let mut s = String::new();
            for bi in 0..bundles.len() {
                let (st, ..) = starts[bi];
                let code = each(bi)?;
                write!(
                    s,
                    "{}if (R < {}) {{ const int c = R - {st};\n{}{code}}}\n",
                    if bi == 0 { "" } else { "else " },
                    st + vwidth(bi),
                    modes[bi].pair_columns()
                )
                .unwrap();
            }
            Ok(s)
        };
        let prefetch = dispatch(&mut |bi| {
            let cols: &[&str] = match modes[bi] {
                Mode::Pair(_) => &["ca", "cb"],
                _ => &["c"],
            };
            Ok(mats[bi]
                .iter()
                .flat_map(|m| {
                    cols.iter().map(move |c| {
                        format!(
                            "prefetch_row(W + {} + (u64){c} * {}, {});\n",
                            m.w, m.rb, m.rb
                        )
                    })
                })
                .collect())
        })?;
        // `SMELT_CUDA_PREFETCH_ROWS` (kernel lab, 1-16): rows a warp prefetches (the 1B's
        // gate+up has ~4 a warp, the last two fetched from DRAM in the row loop).
        let pf_rows = super::lab_knob("SMELT_CUDA_PREFETCH_ROWS")
            .filter(|n| (1..=16).contains(n))
            .unwrap_or(PREFETCH_ROWS);
        let prefetch = format!("for (int i = 0; i < {pf_rows}; i++) {{ const int {rvar} = R0 + warp + i * {NWARPS}; if ({rvar} < R1) {{\n{rsplit}{prefetch}}} }}\n");
        // v13a (kernel lab, `SMELT_CUDA_STAGE_KB=n`): the block's weight rows staged in
        // shared memory before the wait where they fit (codegen/stage.rs).
        let widths: Vec<usize> = (0..bundles.len()).map(vwidth).collect();
        let first: Vec<usize> = starts.iter().map(|s| s.0).collect();
        let blocks_rows = stage::BlockRows {
            grid,
            rows_per_block,
            total,
            first: &first,
            widths: &widths,
            modes: &modes,
        };
        let stage = match nr == 1 && !need_f32 {
            true => self.stage_rows(&mut mats, &blocks_rows),
            false => None,
        };
        let staged = stage.is_some();
        let (early, prefetch) = match stage {
            Some((code, floats)) => {
                next = floats;
                (code, String::new())
            }
            None => (String::new(), prefetch),
        };
        // One token whose input row goes straight to registers: its loads are issued before
        // the weights' prefetch (behind it, they waited for the prefetch's misses), unless
        // PDL makes them wait for the previous kernel first. A batch's rows (with
        // `SMELT_CUDA_ROW_REGS=2`) load theirs in turn, in the row loop below.
        let regs_here = match nr {
            1 => self.row_regs >= 1,
            _ => self.row_regs >= 2,
        };
        // v18a (default; `SMELT_CUDA_ROWS_AT_ONCE=0` off): a batch's rows of at most 2048
        // values and a row stage without a block reduction, several rows a block pass
        // (`rpp`, `kp / 8` threads a row): each pass is one round trip for its rows' loads
        // where one row a pass took one a row.
        let tpr = kp / 8;
        let mut rpp = 1;
        if nr > 1
            && regs_here
            && need_q8
            && !need_f32
            && self.rows_without_reduction(&k.rows)
            && self.rows_at_once
        {
            while rpp * 2 <= (NT / tpr).min(nr) {
                rpp *= 2;
            }
        }
        if rpp > 1 {
            self.row_threads = tpr;
        }
        let in_regs = if regs_here && need_q8 && !need_f32 {
            self.row_in_registers(&k.rows, *input, kdim, kp, &mut p)?
        } else {
            None
        };
        self.row_threads = 0;
        if in_regs.is_none() {
            rpp = 1;
        }
        // v15c: the input's norm applied to each column's sum.
        let (scale1, scale_lane, scale_rows) = match in_regs.as_ref().and_then(|f| f.scale.as_ref())
        {
            Some(ns) if nr == 1 => (ns.one.clone(), String::new(), String::new()),
            Some(ns) => (String::new(), ns.lane.clone(), ns.row.clone()),
            None => Default::default(),
        };
        self.norm_scale = (scale1.clone(), scale_lane);
        let units = |ty: &str| format!("{kdim} / UE8_{ty}");
        let tiled_one = |m: &Mat| -> String {
            if nr > 1 {
                // Every row's raw value at `raw + row * width + c` (width: the bundle's).
                let width = m.width;
                format!(
                    "{{ float v[{nr}]; gemv8n_{}<{nr}, {xstride}>({}, {}, x8s, v); if (lane == 0) {{ _Pragma(\"unroll\") for (int i = 0; i < {nr}; i++) A[{} + (u64)i * {width} + c] = {sr}; }} }}\n",
                    m.ty,
                    m.row("c"),
                    units(m.ty),
                    m.raw,
                    sr = scaled(&row_scale(&scale_rows, "i"), "v[i]"),
                )
            } else if m.quant {
                format!(
                    "{{ float v = {}; if (lane == 0) A[{} + c] = v; }}\n",
                    scaled(
                        &scale1,
                        &format!("gemv8_{}({}, {}, x8)", m.ty, m.row("c"), units(m.ty))
                    ),
                    m.raw
                )
            } else {
                format!(
                    "gemv_{}({}, {}, 1, {kdim}, xs, A + {} + c);\n",
                    m.ty,
                    m.row("c"),
                    m.rb,
                    m.raw
                )
            }
        };
        // Bundles with an elementwise epilogue finish each column in the warp that computed
        // it (lane 0): no raw scratch, tile counters or second pass for them.
        let prewait = super::lab_knob("SMELT_CUDA_PREWAIT_READS") != Some(0);
        let mut early_reads: Vec<String> = Vec::new();
        let mut pre_dispatch: Vec<String> = vec![String::new(); bundles.len()];
        self.seq_split = split;
        let compute = dispatch(&mut |bi| {
            if mma {
                // The tensor-core rows below have their own.
                return Ok(String::new());
            }
            if !inline[bi] {
                return Ok(mats[bi].iter().map(tiled_one).collect());
            }
            let rot = match modes[bi] {
                Mode::Pair(rot) => Some(rot),
                _ => None,
            };
            let n0 = early_reads.len();
            let reads = prewait.then_some((ki, &mut early_reads));
            let code = self.warp_epilogue_code(&bundles[bi], &mats[bi], rot, nr, reads, &mut p)?;
            pre_dispatch[bi] = early_reads[n0..].concat();
            Ok(code)
        })?;
        // v13c: the warp's first row's early reads, before `PDL_WAIT`.
        let early = if early_reads.is_empty() {
            early
        } else {
            let decl: Vec<String> = (0..early_reads.len())
                .map(|k| format!("pw{k} = 0.f"))
                .collect();
            let reads = dispatch(&mut |bi| Ok(std::mem::take(&mut pre_dispatch[bi])))?;
            format!(
                "{early}float {};\n{{ const int {rvar} = R0 + warp; if ({rvar} < R1) {{\n{rsplit}{reads}}} }}\n",
                decl.join(", ")
            )
        };
        // v15a: the row stage's weights (a norm's, a bias's) are loaded before `PDL_WAIT`:
        // nothing writes them, and between two tokens the rest of the weights evict them
        // from L2, so theirs was a DRAM round trip after the wait (`SMELT_CUDA_PREWAIT_NORM=0`:
        // after it, as before).
        let norm_first = super::lab_knob("SMELT_CUDA_PREWAIT_NORM") != Some(0);
        // v13e/v13g: a batch's rows in registers load the next row while this one is
        // quantised, ahead of the barrier between them (each row's loads otherwise wait for
        // the previous row's barrier: a round trip a row). On the H100 for every row length
        // (v13e) the 1B +2.7% and the 8B -1.1% at 8 rows; for rows of at most 2048 values
        // (v13g, the default) the 1B +1%, the 8B unchanged (cuda.md v13).
        let pipe = nr > 1 && in_regs.is_some() && kdim <= self.row_pipe_k;
        // v18b: where several rows go a pass (v18a), every pass's rows are loaded at once,
        // each pass into arrays of its own, and the stage's weights (a norm's) before
        // `PDL_WAIT`: one round trip for the stage where v13g took one a pass
        // (`SMELT_CUDA_ROWS_AHEAD=0`: off).
        let passes = nr.div_ceil(rpp);
        let ahead = match in_regs.as_ref() {
            Some(f) if pipe && rpp > 1 && passes > 1 => {
                passes * f.bufs.len() * f.iters * 8 <= AHEAD_FLOATS
                    && super::lab_knob("SMELT_CUDA_ROWS_AHEAD") != Some(0)
            }
            _ => false,
        };
        match in_regs.as_ref().filter(|_| nr == 1) {
            Some(f) => {
                let (pre, loads) = match norm_first {
                    true => f.split_loads(),
                    false => (String::new(), f.loads()),
                };
                write!(
                    body,
                    "{early}{pre}#if SMELT_PDL && SMELT_PDL_AT == 0\n{prefetch}PDL_WAIT();\n{loads}#else\nPDL_WAIT();\n{loads}{prefetch}#endif\nTRACE_MARK(0);\n{code}",
                    code = f.code
                )
                .unwrap()
            }
            None => match in_regs.as_ref().filter(|_| ahead) {
                Some(f) => write!(
                    body,
                    "{early}const int ctid = tid % {tpr}, rrow = tid / {tpr};\n{}if (rrow < {rpp}) {{\n{}}}\n{prefetch}PDL_WAIT();\nTRACE_MARK(0);\n\
                    _Pragma(\"unroll\") for (int k = 0; k < {passes}; k++) {{ const int r = k * {rpp} + rrow; if (rrow < {rpp} && r < {nr}) {{\n{}}} }}\n",
                    f.indexed(&f.decl, &passes.to_string()),
                    f.weights,
                    f.indexed(&f.buffers, "k"),
                )
                .unwrap(),
                None => write!(body, "{early}{prefetch}PDL_WAIT();\nTRACE_MARK(0);\n").unwrap(),
            },
        }

        // Several rows: the prologue and quantisation run once per row, into its own slots.
        if ahead {
            write!(
                body,
                "_Pragma(\"unroll\") for (int k = 0; k < {passes}; k++) {{ const int r = k * {rpp} + rrow, rp = r; (void)rp; if (rrow < {rpp} && r < {nr}) {{\n"
            )
            .unwrap();
        } else if nr > 1 && rpp > 1 {
            write!(body, "const int ctid = tid % {tpr}, rrow = tid / {tpr};\n").unwrap();
            if let Some(f) = in_regs.as_ref().filter(|_| pipe) {
                write!(
                    body,
                    "{}{{ const int r = rrow; if (rrow < {rpp} && r < {nr}) {{\n{}}} }}\n",
                    f.decl, f.assign
                )
                .unwrap();
            }
            write!(
                body,
                "for (int r0 = 0; r0 < {nr}; r0 += {rpp}) {{ const int r = r0 + rrow, rp = r; (void)rp; if (rrow < {rpp} && r < {nr}) {{\n"
            )
            .unwrap();
        } else if nr > 1 {
            if let Some(f) = in_regs.as_ref().filter(|_| pipe) {
                write!(body, "{}{{ const int r = 0;\n{}}}\n", f.decl, f.assign).unwrap();
            }
            write!(
                body,
                "for (int r = 0; r < {nr}; r++) {{ const int rp = r; (void)rp;\n"
            )
            .unwrap();
        }
        let xin = match &in_regs {
            Some(f) => {
                if nr > 1 {
                    if !pipe {
                        body += &f.loads();
                    }
                    body += &match ahead {
                        true => f.indexed(&f.code, "k"),
                        false => f.code.clone(),
                    };
                }
                String::new()
            }
            None => {
                body +=
                    &self.row_code(&k.rows, "blockIdx.x == 0", &mut p, &mut slots, &mut next)?;
                match slots.get(input) {
                    Some(o) => format!("sm[{o} + c]"),
                    None => self.buf_read(*input, "c", &mut p)?,
                }
            }
        };
        if nr > 1 && (need_f32 || !need_q8) {
            return Err(CudaError::Invalid(
                "decode rows of float weights (the prefill path takes them)".into(),
            ));
        }
        let rb = if nr == 1 {
            String::new()
        } else {
            format!(" + r * {xstride}")
        };
        let x0 = next;
        if need_q8 {
            let (xq, xd) = (next, next + (kp + kp / 64 * 16) / 4);
            let xs = xd + kp / 32;
            next = x0 + nr * xstride;
            // Eight values per thread, a 32-value block per four lanes: one pass of the block
            // (v3 took a warp per block, kp / 512 dependent shuffle chains per warp: ~4 us at
            // 14336 columns on the H100).
            let (each, loads) = match &in_regs {
                Some(f) => (
                    format!("_Pragma(\"unroll\") for (int it = 0; it < {}; it++) {{ const int c0 = {ct} * 8 + it * {NT} * 8; if (c0 < {kp}) {{ float v[8];\n", f.iters, ct = if rpp > 1 { "ctid" } else { "tid" }),
                    {
                        let l = format!("_Pragma(\"unroll\") for (int i = 0; i < 8; i++) v[i] = {}[it][i];\n", f.out);
                        match ahead {
                            true => f.indexed(&l, "k"),
                            false => l,
                        }
                    },
                ),
                None => (
                    format!("for (int c0 = tid * 8; c0 < {kp}; c0 += {NT} * 8) {{ {{ float v[8];\n"),
                    (0..8)
                        .map(|i| {
                            format!("{{ const int c = c0 + {i}; v[{i}] = c < {kdim} ? {xin} : 0.f; }}\n")
                        })
                        .collect(),
                ),
            };
            write!(body, "{each}{loads}\
                float a = 0.f; _Pragma(\"unroll\") for (int i = 0; i < 8; i++) a = fmaxf(a, fabsf(v[i]));\n\
                a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 1)); a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 2));\n\
                const float d = a * (1.0f / 127.0f), iv = a > 0.f ? 127.0f / a : 0.f; int s = 0; u32 pk[2] = {{0u, 0u}};\n\
                _Pragma(\"unroll\") for (int i = 0; i < 8; i++) {{ const int q = __float2int_rn(v[i] * iv); s += q; pk[i >> 2] |= ((u32)(q & 0xff)) << (8 * (i & 3)); }}\n\
                uint2 pw; pw.x = pk[0]; pw.y = pk[1]; *(uint2*)((signed char*)(sm + {xq}{rb}) + pad8(c0)) = pw;\n\
                s += __shfl_xor_sync(0xffffffffu, s, 1);\n\
                if ((lane & 1) == 0) sm[{xs}{rb} + (c0 >> 4)] = d * (float)s; if ((lane & 3) == 0) sm[{xd}{rb} + (c0 >> 5)] = d; }} }}\n").unwrap();
            if nr == 1 {
                writeln!(
                    body,
                    "const X8 x8 = {{(const signed char*)(sm + {xq}), sm + {xd}, sm + {xs}}};"
                )
                .unwrap();
            } else {
                // The next row's prologue reuses the slots this row's quantisation read.
                if let Some(f) = in_regs.as_ref().filter(|_| pipe && !ahead) {
                    write!(
                        body,
                        "if (r + {rpp} < {nr}) {{ const int rn = r + {rpp}; {{ const int r = rn;\n{}}} }}\n",
                        f.assign
                    )
                    .unwrap();
                }
                // v17d: a row stage in registers with no block reduction (no barrier of its
                // own) writes each row's quantised values, scales and norm partials to slots
                // of their own and keeps the next row in the thread's registers: no barrier
                // between the rows, one after them (below), so a warp need not wait for the
                // slowest one's loads each row (H100, 8 rows: the 8B +3.8%, the 1B +1%;
                // `SMELT_CUDA_ROW_NOBAR=0`: a barrier after each row, as before).
                let bar = match in_regs.as_ref() {
                    Some(f)
                        if !f.code.contains("__syncthreads")
                            && super::lab_knob("SMELT_CUDA_ROW_NOBAR") != Some(0) =>
                    {
                        ""
                    }
                    _ => "__syncthreads(); ",
                };
                // Several rows a pass: the row's guard closes too (no barrier: the stage has
                // no reduction).
                let (bar, close) = match rpp {
                    1 => (bar, ""),
                    _ => ("", "}"),
                };
                write!(
                    body,
                    "{bar}{close}}}\n\
                    const X8 x8s = {{(const signed char*)(sm + {xq}), sm + {xd}, sm + {xs}}};\n"
                )
                .unwrap();
            }
        }
        if need_f32 {
            let xf = next;
            next += kp + kp / 32 * 4;
            write!(body, "for (int c = tid; c < {kp}; c += {NT}) sm[{xf} + xpad(c)] = c < {kdim} ? {xin} : 0.f;\n\
                const float* xs = sm + {xf};\n").unwrap();
        }
        body += "__syncthreads();\n";
        if let Some(ns) = in_regs.as_ref().and_then(|f| f.scale.as_ref()) {
            body += &ns.post;
        }
        body += "TRACE_MARK(1);\n";
        if staged {
            body += "mbar_wait0(&stg_bar);\n";
        }

        // v17c: the tensor-core rows' loop (codegen/mma_rows.rs).
        let mut part_len = 0;
        if mma {
            let rows = super::mma_rows::MmaRows {
                bundles,
                mats: &mats,
                modes: &modes,
                fin: &fin,
                kdim,
                xstride,
                nr,
                ks,
                parts: next,
                scale_rows: &scale_rows,
            };
            let (code, len) = self.mma_rows_loop(&rows, &dispatch, &mut p)?;
            body += &code;
            part_len = len;
        } else {
            write!(
                body,
                "for (int {rvar} = R0 + warp; {rvar} < R1; {rvar} += {NWARPS}) {{\n{rsplit}{compute}if ({rvar} == R0) TRACE_MARK(2);\n}}\nPDL_MID();\nTRACE_MARK(3);\n"
            )
            .unwrap();
        }
        let any_tiles = inline.iter().any(|&i| !i);
        if any_tiles {
            body += "__threadfence(); __syncthreads();\n";
        }
        // v20d: the program's logits are this kernel's one bundle: a copy of it with their
        // argmax in its tail, for the greedy graph (below).
        let out = self.plan.graph().output();
        let head = bundles.len() == 1
            && inline[0]
            && split == 1
            && !mma
            && bundles[0]
                .matmuls
                .iter()
                .chain(&bundles[0].epilogue)
                .any(|&n| n == out);
        let fold = self.greedy_fold && nr == 1 && head;

        // Tiles this block completes: wholly its own, or the last share of a shared one.
        let se = next;
        let mut se_len = 0usize;
        if any_tiles {
            write!(
                body,
                "__shared__ int tl[{max_tl}];\nif (tid == 0) {{ int n = 0;\n"
            )
            .unwrap();
            for (bi, b) in bundles.iter().enumerate() {
                let (st, bc, t0, _) = starts[bi];
                if inline[bi] {
                    continue;
                }
                write!(body, "{{ const int lo = max(R0, {st}) - {st}, hi = min(R1, {e}) - {st};\n\
                for (int t = lo / {bc}; lo < hi && t * {bc} < hi; t++) {{ const int c0 = t * {bc}, c1 = min(c0 + {bc}, {w});\n\
                  const u32 own = (u32)(min(hi, c1) - max(lo, c0)), full = (u32)(c1 - c0);\n\
                  if (own == full || atomicAdd(&C[{t0} + t], own) + own == full) tl[n++] = {t0} + t; }} }}\n",
                e = st + b.width, w = b.width).unwrap();
            }
            body += "ntl = n; }\n__syncthreads(); __threadfence();\n";

            let mut branches = String::new();
            let mut first = true;
            for (bi, b) in bundles.iter().enumerate() {
                let (_, bc, t0, nt) = starts[bi];
                if inline[bi] {
                    continue;
                }
                let (code, bslots) = self.epilogue_code(ki, bi, bc, &mut p)?;
                se_len = se_len.max(self.bundle_slots(ki, bi) * bc);
                let mut load = String::new();
                let row_off = if nr == 1 {
                    String::new()
                } else {
                    format!("(u64)r * {} + ", b.width)
                };
                for (mi, &m) in b.matmuls.iter().enumerate() {
                    debug_assert_eq!(bslots[&m], mats[bi][mi].slot);
                    write!(
                    load,
                    "for (int c = tid; c < nv; c += {NT}) se[{} + c] = __ldcg(A + {} + {row_off}c0 + c);\n",
                    bslots[&m], mats[bi][mi].raw
                )
                    .unwrap();
                }
                let (open, close) = if nr == 1 {
                    (String::new(), "")
                } else {
                    (
                        format!("for (int r = 0; r < {nr}; r++) {{ const int rp = r; (void)rp;\n"),
                        "}\n",
                    )
                };
                write!(branches, "{}if (tile < {}) {{ const int c0 = (tile - {t0}) * {bc}; const int nv = min({bc}, {} - c0);\n\
                {open}{load}__syncthreads();\n{code}{close}}}\n",
                if first { "" } else { "else " }, t0 + nt, b.width).unwrap();
                first = false;
            }
            write!(
            body,
            "float* se = sm + {se};\nfor (int i = 0; i < ntl; i++) {{ const int tile = tl[i];\n{branches}if (tid == 0) C[tile] = 0u; }}\n"
        )
        .unwrap();
        }

        // One token: the next kernel's attention in this one's tail (codegen/attn_tail.rs).
        let pair: Vec<bool> = modes.iter().map(|m| matches!(m, Mode::Pair(_))).collect();
        let mut tail_len = 0;
        let mut with = "";
        if let Some(tail) = self.attention_tail(ki, &inline, &pair) {
            let st: Vec<usize> = starts.iter().map(|s| s.0).collect();
            let (code, floats) = self.attention_tail_code(&tail, &st, tiles, &mut p)?;
            body += &code;
            tail_len = floats;
            with = " + attention";
        }
        for t in mats.iter().flatten().map(|m| (m.ty, m.quant)) {
            self.need_gemv(t.0, t.1, nr > 1);
        }
        self.norm_scale = Default::default();
        self.seq_split = 1;
        body += "TRACE_MARK(4);\n";
        let smem = (next + se_len).max(tail_len).max(next + part_len) * 4;
        // v20d: the greedy graph's copy: its parameters and two more, the greedy buffers'
        // (the lowering's addresses), and the argmax before the last mark.
        let folded = fold.then(|| {
            let mut pf = p.clone();
            let ob = self.plan.buffer(self.plan.output_buffer());
            let (gb, gr) = (
                pf.p(super::PARAM_GREEDY_BUF),
                pf.p(super::PARAM_GREEDY_RING),
            );
            let at = body.len() - "TRACE_MARK(4);\n".len();
            let code = greedy_fold_code(ob.offset, &gb, &gr);
            (format!("{}{code}TRACE_MARK(4);\n", &body[..at]), pf)
        });
        let name = self.kernel(&format!("{NT}, {blocks}"), body, smem);
        let types: Vec<&str> = mats.iter().flatten().map(|m| m.ty).collect();
        let rows = if nr == 1 {
            String::new()
        } else {
            format!(" x{nr} rows")
        };
        let label = format!("decode mm {} {total}x{kdim}{rows}{with}", types.join("+"));
        if let Some((folded, pf)) = folded {
            let name = self.kernel(&format!("{NT}, {blocks}"), folded, smem);
            self.greedy_head = Some(super::Launch {
                label: format!("{label} + argmax"),
                work: super::Work::Kernel {
                    func: name,
                    grid: (grid as u32, 1, 1),
                    block: NT as u32,
                    smem: smem as u32,
                    params: pf.0,
                },
            });
        }
        self.launch(label, name, (grid, 1, 1), NT, smem, p);
        Ok(())
    }

    fn need_gemv(&mut self, ty: &'static str, quant: bool, rows: bool) {
        if rows {
            let line = format!("DEF_GEMV8N({ty})\nDEF_GEMV8R({ty})\n");
            if !self.src.contains(&line) {
                self.src.insert_str(0, &line);
            }
        }
        let line = if quant {
            format!("DEF_GEMV8({ty})\n")
        } else {
            format!("DEF_GEMV({ty})\n")
        };
        if !self.src.contains(&line) {
            self.src.insert_str(0, &line);
        }
    }
}

/// v20d: the tail of the greedy graph's head kernel that takes the argmax of the logits at arena float `off`
/// (rows `R0..R1` of this block, stored by its warps): each block's best key (prelude
/// `greedy_key`) into the best at `gb` (u64 [1]) by `atomicMax`, counted in `gb`'s first
/// word; the last block writes the token, the position one up and the ring's word at `gr`,
/// and resets both (graphs replay). The same rule as `greedy_next` and the host's argmax.
fn greedy_fold_code(off: usize, gb: &str, gr: &str) -> String {
    format!(
        "{{ __shared__ u64 gpart[{NWARPS}]; __shared__ u32 glast;
        __syncthreads();
        u64 gk = 0;
        for (int c = R0 + tid; c < R1; c += {NT}) {{ const u64 k = greedy_key(A[{off} + c], (u32)c); gk = k > gk ? k : gk; }}
        gk = greedy_block_max<{NWARPS}>(gk, gpart);
        u64* gbuf = (u64*)({gb});
        if (tid == 0) {{ atomicMax(&gbuf[1], gk); __threadfence(); glast = atomicAdd((u32*)gbuf, 1u) == gridDim.x - 1; }}
        __syncthreads();
        if (glast && tid == 0) {{
          __threadfence();
          const u64 b = atomicExch(&gbuf[1], 0ull);
          const u32 t = (u32)(b >> 32) <= 0x007fffffu ? 0u : 0xffffffffu - (u32)b;
          const u32 p = pos[0];
          ((u32*)tok)[0] = t; ((u32*)pos)[0] = p + 1; ((u32*)gbuf)[0] = 0u;
          ((volatile u32*)({gr}))[p % GREEDY_RING] = t; __threadfence_system();
        }} }}
"
    )
}

/// Values in one gemv unit (`UE8_*`) of a quantised type's suffix: 64 for K-quants, 32 for the
/// 32-value block types; None for float types.
pub(super) fn unit_values(ty: &str) -> Option<usize> {
    match ty {
        "q4_k" | "q5_k" | "q6_k" => Some(64),
        "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" => Some(32),
        _ => None,
    }
}
