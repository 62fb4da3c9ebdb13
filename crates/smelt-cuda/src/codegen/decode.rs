//! Decode (one token) matmul kernels, v3. Rows of all the kernel's bundles are spread over a
//! grid of at most two blocks per SM; each warp takes one output column at a time (that
//! column of every matmul in its bundle). A block first prefetches its warps' first weight
//! rows into L2, then computes the prologue (norms, residual adds) once and quantises the
//! activation row to int8 in shared memory (float weights get an f32 copy), then streams its
//! rows through the dp4a gemv units of the prelude. Raw matmul outputs go to scratch; epilogue
//! tiles (bias, RoPE, QK-norm, SiLU*up, residual, KV write) run in the block that completes
//! them: tiles wholly inside a block's rows at once, tiles shared by neighbouring blocks by
//! the last one to finish (a counter per tile, reset by that block so graphs replay).

use std::collections::HashMap;
use std::fmt::Write;

use smelt_graph::{KernelKind, Op};

use super::{stage, type_suffix, unsupported, Gen, Params, NT, NWARPS};
use crate::CudaError;

/// Weight rows prefetched into L2 per warp before the prologue.
const PREFETCH_ROWS: usize = 2;

/// A RoPE rotation: pairs (2i, 2i + 1), or (i, i + n_rot / 2) with `neox`, of the first
/// `n_rot` dims of each head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Rot {
    pub(super) head_dim: usize,
    pub(super) n_rot: usize,
    pub(super) neox: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Tiled,
    Column,
    /// Two columns per warp turn: a RoPE pair, or (None) neighbours of a short row.
    Pair(Option<Rot>),
}

impl Mode {
    /// For a pair bundle: the columns `ca`, `cb` of virtual row `c`, the rotation index `ri`
    /// and whether the pair rotates (`rot`).
    pub(super) fn pair_columns(&self) -> String {
        let Mode::Pair(rot) = *self else {
            return String::new();
        };
        let Some(Rot {
            head_dim,
            n_rot,
            neox,
        }) = rot
        else {
            return "const int ca = 2 * c, cb = ca + 1;\n".to_string();
        };
        let (hh, half) = (head_dim / 2, n_rot / 2);
        let (ca, cb) = if neox {
            (
                format!("hd0 + (k < {half} ? k : {n_rot} + 2 * (k - {half}))"),
                format!("ca + (k < {half} ? {half} : 1)"),
            )
        } else {
            ("hd0 + 2 * k".to_string(), "ca + 1".to_string())
        };
        format!(
            "const int k = c % {hh}, hd0 = c / {hh} * {head_dim}; const int ca = {ca}, cb = {cb}, ri = k; const bool rot = k < {half};\n"
        )
    }
}

/// The columns one warp turn finishes, with their temporaries' suffixes: `c`, or a pair's
/// `ca` and `cb` (`pair` is `Some`).
fn sides(pair: Option<Option<Rot>>) -> &'static [(&'static str, &'static str)] {
    if pair.is_some() {
        &[("_a", "ca"), ("_b", "cb")]
    } else {
        &[("", "c")]
    }
}

/// Floats of one row's int8 activations in shared memory: values (padded), block scales,
/// block sums.
fn x_stride(kdim: usize) -> usize {
    let kp = kdim.div_ceil(256) * 256;
    (kp + kp / 64 * 16) / 4 + kp / 32 + kp / 16
}

pub(super) struct Mat {
    ty: &'static str,
    quant: bool,
    pub(super) w: String,
    pub(super) rb: String,
    /// Bytes of one weight row.
    pub(super) row_bytes: usize,
    raw: usize,
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
    fn row(&self, col: &str) -> String {
        match &self.stage {
            Some(x) => format!("(STG + so{x} + (u64)({col} - cm{x}) * {})", self.rb),
            None => format!("W + {} + (u64){col} * {}", self.w, self.rb),
        }
    }
}

/// A read of another kernel's node that an epilogue issues ahead of the row's weights.
pub(super) struct Hoisted {
    name: String,
    node: smelt_graph::NodeId,
    read: String,
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
        let modes: Vec<Mode> = bundles.iter().map(|b| self.epilogue_mode(b)).collect();
        let vwidth = |bi: usize| match modes[bi] {
            Mode::Pair(_) => bundles[bi].width / 2,
            _ => bundles[bi].width,
        };
        let total: usize = (0..bundles.len()).map(vwidth).sum();
        let grid = (blocks * self.sm_count).min(total.div_ceil(NWARPS)).max(1);
        let rows_per_block = total.div_ceil(grid);
        let grid = total.div_ceil(rows_per_block);

        let mut p = Params::default();
        let mut slots = HashMap::new();
        let mut next = 0usize;
        let mut body = String::from(
            "extern __shared__ float sm[]; __shared__ float red[33]; __shared__ int ntl;\n\
            const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5; ",
        );
        body += if nr == 1 {
            "const int r = 0, rp = 0; (void)lane; (void)rp;\n"
        } else {
            "(void)lane;\n"
        };
        write!(
            body,
            "const int R0 = blockIdx.x * {rows_per_block}, R1 = min(R0 + {rows_per_block}, {total});\n"
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
        type Each<'e> = &'e mut dyn FnMut(usize) -> Result<String, CudaError>;
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
        let prefetch = format!("for (int i = 0; i < {pf_rows}; i++) {{ const int R = R0 + warp + i * {NWARPS}; if (R < R1) {{\n{prefetch}}} }}\n");
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
        let units = |ty: &str| format!("{kdim} / UE8_{ty}");
        let tiled_one = |m: &Mat| -> String {
            if nr > 1 {
                // Every row's raw value at `raw + row * width + c` (width: the bundle's).
                let width = m.width;
                format!(
                    "{{ float v[{nr}]; gemv8n_{}<{nr}, {xstride}>(W + {} + (u64)c * {}, {}, x8s, v); if (lane == 0) {{ _Pragma(\"unroll\") for (int i = 0; i < {nr}; i++) A[{} + (u64)i * {width} + c] = v[i]; }} }}\n",
                    m.ty,
                    m.w,
                    m.rb,
                    units(m.ty),
                    m.raw
                )
            } else if m.quant {
                format!(
                    "{{ float v = gemv8_{}({}, {}, x8); if (lane == 0) A[{} + c] = v; }}\n",
                    m.ty,
                    m.row("c"),
                    units(m.ty),
                    m.raw
                )
            } else {
                format!(
                    "gemv_{}(W + {} + (u64)c * {}, {}, 1, {kdim}, xs, A + {} + c);\n",
                    m.ty, m.w, m.rb, m.rb, m.raw
                )
            }
        };
        // Bundles with an elementwise epilogue finish each column in the warp that computed
        // it (lane 0): no raw scratch, tile counters or second pass for them.
        let prewait = nr == 1 && super::lab_knob("SMELT_CUDA_PREWAIT_READS") != Some(0);
        let mut early_reads: Vec<String> = Vec::new();
        let mut pre_dispatch: Vec<String> = vec![String::new(); bundles.len()];
        let compute = dispatch(&mut |bi| {
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
                "{early}float {};\n{{ const int R = R0 + warp; if (R < R1) {{\n{reads}}} }}\n",
                decl.join(", ")
            )
        };
        // One token whose input row goes straight to registers: its loads are issued before
        // the weights' prefetch (behind it, they waited for the prefetch's misses), unless
        // PDL makes them wait for the previous kernel first. A batch's rows (with
        // `SMELT_CUDA_ROW_REGS=2`) load theirs in turn, in the row loop below.
        let regs_here = match nr {
            1 => self.row_regs >= 1,
            _ => self.row_regs >= 2,
        };
        let in_regs = if regs_here && need_q8 && !need_f32 {
            self.row_in_registers(&k.rows, *input, kdim, kp, &mut p)?
        } else {
            None
        };
        match in_regs.as_ref().filter(|_| nr == 1) {
            Some(f) => write!(
                body,
                "{early}#if SMELT_PDL && SMELT_PDL_AT == 0\n{prefetch}PDL_WAIT();\n{loads}#else\nPDL_WAIT();\n{loads}{prefetch}#endif\nTRACE_MARK(0);\n{code}",
                loads = f.loads,
                code = f.code
            )
            .unwrap(),
            None => write!(body, "{early}{prefetch}PDL_WAIT();\nTRACE_MARK(0);\n").unwrap(),
        }

        // Several rows: the prologue and quantisation run once per row, into its own slots.
        // v13e (kernel lab, `SMELT_CUDA_ROW_PIPE=1`): a batch's rows in registers load the
        // next row while this one is quantised, ahead of the barrier between them (each row's
        // loads otherwise wait for the previous row's barrier: a round trip a row). Mixed on
        // the H100 at 8 rows: the 1B +2.7%, the 8B -1.1% (cuda.md v13). Off.
        // `SMELT_CUDA_ROW_PIPE_K=n` limits it to rows of at most n values (the 1B's are
        // mostly 2048, the 8B's 4096 and 14336).
        let pipe = nr > 1
            && in_regs.is_some()
            && self.row_pipe
            && kdim <= super::lab_knob("SMELT_CUDA_ROW_PIPE_K").unwrap_or(usize::MAX);
        if nr > 1 {
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
                        body += &f.loads;
                    }
                    body += &f.code;
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
                    format!("_Pragma(\"unroll\") for (int it = 0; it < {}; it++) {{ const int c0 = tid * 8 + it * {NT} * 8; if (c0 < {kp}) {{ float v[8];\n", f.iters),
                    format!("_Pragma(\"unroll\") for (int i = 0; i < 8; i++) v[i] = {}[it][i];\n", f.out),
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
                if let Some(f) = in_regs.as_ref().filter(|_| pipe) {
                    write!(
                        body,
                        "if (r + 1 < {nr}) {{ const int rn = r + 1; {{ const int r = rn;\n{}}} }}\n",
                        f.assign
                    )
                    .unwrap();
                }
                write!(
                    body,
                    "__syncthreads(); }}\n\
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
        body += "__syncthreads();\nTRACE_MARK(1);\n";
        if staged {
            body += "mbar_wait0(&stg_bar);\n";
        }

        write!(
            body,
            "for (int R = R0 + warp; R < R1; R += {NWARPS}) {{\n{compute}if (R == R0) TRACE_MARK(2);\n}}\nPDL_MID();\nTRACE_MARK(3);\n"
        )
        .unwrap();
        let any_tiles = inline.iter().any(|&i| !i);
        if any_tiles {
            body += "__threadfence(); __syncthreads();\n";
        }

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
        body += "TRACE_MARK(4);\n";
        let smem = (next + se_len).max(tail_len) * 4;
        let name = self.kernel(&format!("{NT}, {blocks}"), body, smem);
        let types: Vec<&str> = mats.iter().flatten().map(|m| m.ty).collect();
        let rows = if nr == 1 {
            String::new()
        } else {
            format!(" x{nr} rows")
        };
        let label = format!("decode mm {} {total}x{kdim}{rows}{with}", types.join("+"));
        self.launch(label, name, (grid, 1, 1), NT, smem, p);
        Ok(())
    }

    /// How a bundle finishes its columns. All matmuls quantised and an epilogue elementwise
    /// per column (bias, residual add, SiLU * up, scale, softcap): in the computing warp, one
    /// column per turn. The same plus RoPE (one rotation for every RoPE node): a warp takes a
    /// rotated pair of columns per turn. Otherwise (per-head norms, float weights): tiles.
    pub(super) fn epilogue_mode(&self, b: &smelt_graph::Bundle) -> Mode {
        let quant = b.matmuls.iter().all(|&m| {
            let Op::MatMul { w, .. } = self.node(m).op else {
                return false;
            };
            type_suffix(self.weight(w).dtype).is_some_and(|t| !matches!(t, "f32" | "f16" | "bf16"))
        });
        if !quant {
            return Mode::Tiled;
        }
        let mut rope: Option<Rot> = None;
        for &n in &b.epilogue {
            match self.node(n).op {
                ref op if op.is_columnwise() => {}
                Op::Rope {
                    head_dim,
                    n_rot,
                    neox,
                    ..
                } => {
                    let r = Rot {
                        head_dim,
                        n_rot,
                        neox,
                    };
                    let fits = head_dim.is_multiple_of(2)
                        && n_rot.is_multiple_of(2)
                        && n_rot <= head_dim
                        && b.width.is_multiple_of(head_dim);
                    if !fits || rope.is_some_and(|o| o != r) {
                        return Mode::Tiled;
                    }
                    rope = Some(r);
                }
                _ => return Mode::Tiled,
            }
        }
        match rope {
            Some(r) if std::env::var("SMELT_CUDA_ROPE_PAIRS").map_or(true, |v| v != "0") => {
                Mode::Pair(Some(r))
            }
            Some(_) => Mode::Tiled,
            // Rows of at most one gemv unit per lane (K <= 2048 for K-quants, <= 1024 for
            // 32-value blocks) can go two neighbouring rows per warp turn, twice the bytes in
            // flight: measured slower (1B 1518 -> 1483, SmolLM2 1335 -> 1244 tok/s on the
            // H100), so only with `SMELT_CUDA_TWO_ROWS=N` (rows of at most N units per lane),
            // for the kernel lab.
            None if b.width.is_multiple_of(2)
                && super::lab_knob("SMELT_CUDA_TWO_ROWS")
                    .is_some_and(|n| b.matmuls.iter().all(|&m| self.units_per_lane(m) <= n)) =>
            {
                Mode::Pair(None)
            }
            None => Mode::Column,
        }
    }

    /// Gemv units (`UE8_*` values) each lane takes in one row of matmul `m` (rounded up).
    fn units_per_lane(&self, m: smelt_graph::NodeId) -> usize {
        let Op::MatMul { x, w } = self.node(m).op else {
            return usize::MAX;
        };
        let Some(ue) = type_suffix(self.weight(w).dtype).and_then(unit_values) else {
            return usize::MAX;
        };
        self.node(x).shape[1].div_ceil(ue).div_ceil(32)
    }

    /// Code finishing an inline bundle in the warp that computes it: the matmul values (the
    /// whole warp), then in lane 0 each epilogue node's value and the stores. One column `c`
    /// per turn (`pair` None; values `e<id>`), or two (`Some(rot)`): the columns `ca`, `cb`
    /// (values `e<id>_a`, `e<id>_b`), rotated together by a RoPE node (index `ri`, `rot`).
    fn warp_epilogue_code(
        &self,
        b: &smelt_graph::Bundle,
        mats: &[Mat],
        pair: Option<Option<Rot>>,
        nr: usize,
        early: Option<(usize, &mut Vec<String>)>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let sides = sides(pair);
        // v12a: one token's epilogue reads of other nodes (the residual) are issued before
        // the row's weights, not after its warp sum, where they added an L2 round trip to each
        // column (SASS of SmolLM2's down kernel). Measured (H100): SmolLM2 Q8_0 +2.3%, the
        // 1B Q4_K_M -2%, the 8B -0.5%, so only for rows of 32-value blocks (a unit is 5-9
        // scalar loads); `SMELT_CUDA_EPI_HOIST=0|1` forces it off or on.
        let blocks32 = mats.iter().all(|m| unit_values(m.ty) == Some(32));
        let hoist = nr == 1
            && match super::lab_knob("SMELT_CUDA_EPI_HOIST") {
                Some(v) => v != 0,
                None => blocks32,
            };
        let mut pre = Vec::new();
        let epilogue = self.column_epilogue(b, pair, hoist.then_some(&mut pre), p)?;
        // v13c: a hoisted read of a node computed two or more kernels back (the residual in
        // the down and output projections) is issued for the warp's first row before
        // `PDL_WAIT` (that kernel is complete once the previous one has launched this one),
        // through L2 (`__ldcg`: L1 is not yet coherent). SmolLM2 +0.9% in three rounds on the
        // H100; `SMELT_CUDA_PREWAIT_READS=0` turns it off.
        let mut s = String::new();
        let mut early = early;
        for h in pre {
            let old = self
                .plan
                .placement(h.node)
                .is_some_and(|pl| early.as_ref().is_some_and(|(ki, _)| pl.kernel + 2 <= *ki));
            match early.as_mut() {
                Some((_, reads)) if old => {
                    let k = reads.len();
                    reads.push(format!("pw{k} = __ldcg(&{});\n", h.read));
                    writeln!(
                        s,
                        "const float {} = R == R0 + warp ? pw{k} : {};",
                        h.name, h.read
                    )
                    .unwrap();
                }
                _ => writeln!(s, "const float {} = {};", h.name, h.read).unwrap(),
            }
        }
        for (m, mat) in b.matmuls.iter().zip(mats) {
            let Op::MatMul { x, .. } = self.node(*m).op else {
                unreachable!()
            };
            let kdim = self.node(x).shape[1];
            for (suf, col) in sides {
                if nr == 1 {
                    writeln!(
                        s,
                        "const float e{}{suf} = gemv8_{}({}, {kdim} / UE8_{}, x8);",
                        m.0,
                        mat.ty,
                        mat.row(col),
                        mat.ty
                    )
                    .unwrap();
                } else {
                    writeln!(
                        s,
                        "const float e{}{suf} = gemv8r_{}<{nr}, {xs}>(W + {} + (u64){col} * {}, {kdim} / UE8_{}, x8s, 0);",
                        m.0, mat.ty, mat.w, mat.rb, mat.ty, xs = x_stride(kdim)
                    )
                    .unwrap();
                }
            }
        }
        if nr == 1 {
            s += "if (lane == 0) {\n";
        } else {
            // Lane r holds row r's sum and finishes row r.
            write!(
                s,
                "if (lane < {nr}) {{ const int r = lane, rp = lane; (void)rp;\n"
            )
            .unwrap();
        }
        s += &epilogue;
        s += "}\n";
        Ok(s)
    }

    /// Code finishing one column `c` (or a pair `ca`, `cb`) of a bundle whose matmul values
    /// are defined as `e<id>` (`e<id>_a`, `e<id>_b`): each epilogue node's value, then the
    /// stores of every node with a destination. With `hoist`, the reads of nodes computed
    /// elsewhere are listed there as values `e<id>h<side>`, to be issued ahead of the code.
    pub(super) fn column_epilogue(
        &self,
        b: &smelt_graph::Bundle,
        pair: Option<Option<Rot>>,
        hoist: Option<&mut Vec<Hoisted>>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let sides = sides(pair);
        let mut s = String::new();
        let mut local: Vec<smelt_graph::NodeId> = b.matmuls.clone();
        let hoist = hoist.map(std::cell::RefCell::new);
        for &n in &b.epilogue {
            let op = &self.node(n).op;
            let rd = |x: smelt_graph::NodeId, (suf, col): (&str, &str), p: &mut Params| {
                if local.contains(&x) {
                    return Ok(format!("e{}{suf}", x.0));
                }
                let read = self.buf_read(x, col, p)?;
                let Some(pre) = &hoist else {
                    return Ok(read);
                };
                let name = format!("e{}h{suf}", x.0);
                let mut pre = pre.borrow_mut();
                if !pre.iter().any(|h| h.name == name) {
                    pre.push(Hoisted {
                        name: name.clone(),
                        node: x,
                        read,
                    });
                }
                Ok(name)
            };
            if let (
                Some(rot),
                Op::Rope {
                    x,
                    base,
                    freq_scale,
                    factors,
                    ..
                },
            ) = (pair, op)
            {
                let (xa, xb) = (rd(*x, sides[0], p)?, rd(*x, sides[1], p)?);
                let fac = match factors {
                    Some(f) => format!(" / ((const float*)(W + {}))[ri]", p.p(self.weight(*f).off)),
                    None => String::new(),
                };
                write!(
                    s,
                    "float e{id}_a = {xa}, e{id}_b = {xb};\n\
                     if (rot) {{ const float th = (float)pos[rp] * {fs} * powf({fb}, -2.0f * (float)ri / {nr}.0f){fac};\n\
                       float sn, cs; sincosf(th, &sn, &cs); const float x0 = e{id}_a, x1 = e{id}_b;\n\
                       e{id}_a = x0 * cs - x1 * sn; e{id}_b = x0 * sn + x1 * cs; }}\n",
                    id = n.0,
                    fs = super::lit(*freq_scale),
                    fb = super::lit(*base),
                    nr = rot.map_or(0, |r| r.n_rot),
                )
                .unwrap();
            } else {
                for &side in sides {
                    let e = self.columnwise_expr(op, side.1, &|x, p| rd(x, side, p), p)?;
                    writeln!(s, "const float e{}{} = {e};", n.0, side.0).unwrap();
                }
            }
            local.push(n);
        }
        for &(suf, col) in sides {
            // A pair stores each column with `c` bound to it (the stores index by `c`).
            if pair.is_some() {
                write!(s, "{{ const int c = {col};\n").unwrap();
            }
            for &n in &local {
                s += &self.stores(n, &format!("e{}{suf}", n.0), "0", p)?;
            }
            if pair.is_some() {
                s += "}\n";
            }
        }
        Ok(s)
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

/// Values in one gemv unit (`UE8_*`) of a quantised type's suffix: 64 for K-quants, 32 for the
/// 32-value block types; None for float types.
fn unit_values(ty: &str) -> Option<usize> {
    match ty {
        "q4_k" | "q5_k" | "q6_k" => Some(64),
        "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" => Some(32),
        _ => None,
    }
}
