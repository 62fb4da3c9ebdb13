//! A decode matmul kernel's row stage (norms, residual adds, the input row) computed in
//! registers, v10a: thread `tid` holds values `tid * 8 + it * NT * 8 + i` of each row as
//! `name[it][i]`; its buffers and weights are loaded first, before the kernel's weight
//! prefetch for one token. The shared-memory row stage (`Gen::row_code`, codegen/rows.rs)
//! sums its norms in the same order, so a batch's rows and one sequence's agree bit for bit.

use std::collections::HashMap;
use std::fmt::Write;

use smelt_graph::{NodeId, Op, WeightId};

use super::{lit, Gen, Params, NT, NWARPS};
use crate::CudaError;

/// Floats of `red` before a batch's rows' partial sums of a norm applied after the matmul
/// (the two halves the other norms alternate between).
pub(super) const RED_ROWS: usize = 2 * NWARPS;
/// The most rows a step's norm applied after the matmul keeps partials for.
pub(super) const MAX_ROWS: usize = super::MAX_DECODE_ROWS;
/// `red`'s floats in a decode matmul kernel.
pub(super) const RED_LEN: usize = RED_ROWS + MAX_ROWS * NWARPS;

/// The matmul input's RMS norm applied to the matmul's sums (v15c): the scale is a factor of
/// every column's sum, so the row is quantised before the norm's reduction is over.
pub(super) struct NormScale {
    /// Code after the quantisation's barrier computing the scale(s).
    pub post: String,
    /// One token: the scale.
    pub one: String,
    /// A batch: lane q's row's scale (lane q finishes row q), and the array of every row's.
    pub lane: String,
    pub row: String,
}

/// A one-token kernel's row stage in registers ([`Gen::row_in_registers`]).
pub(super) struct RowInRegs {
    /// The input's norm applied after the matmul (v15c), if it is.
    pub scale: Option<NormScale>,
    /// The register arrays' declarations (the stage's buffers and weights).
    pub decl: String,
    /// The loads into them (of row `r` where the step has several).
    pub assign: String,
    /// `assign` split for one token: the weights' loads (norms, biases), which no kernel
    /// writes, so they may be issued before `PDL_WAIT` (v15a), and the buffers' loads.
    pub weights: String,
    pub buffers: String,
    /// Its nodes computed from them (norms, residual adds) and stored where they go.
    pub code: String,
    /// Passes of the block over the row (8 values a thread each).
    pub iters: usize,
    /// The array holding the matmul's input.
    pub out: String,
    /// The arrays loaded from buffers (not weights): a batch's row's own.
    pub bufs: Vec<String>,
}

impl RowInRegs {
    /// The stage's buffers and weights loaded into register arrays: `decl` then `assign`.
    pub fn loads(&self) -> String {
        format!("{}{}", self.decl, self.assign)
    }

    /// The same loads for one token, the weights' first: (declarations and weights' loads,
    /// buffers' loads).
    pub fn split_loads(&self) -> (String, String) {
        (
            format!("{}{}", self.decl, self.weights),
            self.buffers.clone(),
        )
    }

    /// `code` with every buffer array given a leading index `idx` (`l0[it][i]` becomes
    /// `l0[idx][it][i]`; in a declaration `l0[1][8]` becomes `l0[idx][1][8]`): a batch's
    /// passes each with arrays of their own (v18b).
    pub fn indexed(&self, code: &str, idx: &str) -> String {
        let mut out = code.to_string();
        for name in &self.bufs {
            let pat = format!("{name}[");
            let mut res = String::with_capacity(out.len());
            let mut rest = out.as_str();
            while let Some(at) = rest.find(&pat) {
                let ident = rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                res.push_str(&rest[..at + pat.len()]);
                if !ident {
                    res.push_str(idx);
                    res.push_str("][");
                }
                rest = &rest[at + pat.len()..];
            }
            res.push_str(rest);
            out = res;
        }
        out
    }
}

/// Register arrays of a row stage being generated.
struct RegRow {
    iters: usize,
    /// Row nodes and buffers by the array holding them.
    vals: HashMap<NodeId, String>,
    /// Declarations of the loaded arrays.
    decl: Vec<String>,
    /// Their sources: the array, the address of its row's first float, whether that
    /// address is 16-byte aligned (then a thread's 8 values are two 16-byte loads), and
    /// whether it is a weight.
    srcs: Vec<(String, String, bool, bool)>,
    /// 16-byte loads where aligned (`SMELT_CUDA_ROW_VEC=0`: scalar loads, the kernel lab's
    /// baseline).
    vec: bool,
}

impl Gen<'_> {
    /// A one-token kernel's row stage in registers: thread `tid` holds values `tid * 8 +
    /// it * NT * 8 + i` of each row as `name[it][i]`. Its buffers and weights are loaded
    /// first (`loads`, issued before the weights' prefetch), then each node is computed in
    /// registers (`code`): a whole-row RMS norm takes one block reduction and one barrier,
    /// where the shared-memory row stage reads its row twice, its weights after the
    /// reduction and puts a barrier after every node (v10a: 1B +11%, SmolLM2 +15%, 8B +10%
    /// on the H100). Its sums are in the same order as the row stage's. None where a node is not
    /// elementwise or a whole-row norm, is not as long as the matmul's input, or the row
    /// takes more than four passes of the block.
    pub(super) fn row_in_registers(
        &self,
        rows: &[NodeId],
        input: NodeId,
        kdim: usize,
        kp: usize,
        p: &mut Params,
    ) -> Result<Option<RowInRegs>, CudaError> {
        let iters = kp.div_ceil(NT * 8);
        if iters > 4 || rows.last().is_some_and(|&n| n != input) {
            return Ok(None);
        }
        let t = self.t;
        let row_of = |shape: [usize; 2]| shape == [t, kdim];
        // Checked before any parameter is taken: a stage that cannot go to registers goes
        // through shared memory with no unused parameters.
        for &n in rows {
            let node = self.node(n);
            let fits = match node.op {
                Op::RmsNorm { group, .. } => group == kdim,
                ref op => reg_inputs(op).is_some(),
            };
            if !fits || !row_of(node.shape) {
                return Ok(None);
            }
        }
        let mut regs = RegRow {
            iters,
            vals: HashMap::new(),
            decl: Vec::new(),
            srcs: Vec::new(),
            vec: super::lab_knob("SMELT_CUDA_ROW_VEC") != Some(0),
        };
        // v18a: a batch's rows several a block pass (`row_threads` threads a row, one pass):
        // thread `tid` holds values `ctid * 8 + i` of row `r`, `ctid = tid % row_threads`,
        // the same values and warps as one row a pass, so the same sums.
        let tid = match self.row_threads {
            0 => "tid",
            _ => "ctid",
        };
        let each = format!(
            "_Pragma(\"unroll\") for (int it = 0; it < {iters}; it++) _Pragma(\"unroll\") for (int i = 0; i < 8; i++) {{ const int c = {tid} * 8 + it * {NT} * 8 + i;"
        );
        let mut code = String::new();
        let mut half = 0;
        // v15c (`SMELT_CUDA_NORM_AFTER=0`: off): the input's norm applied after the matmul.
        let mut scale = None;
        for (j, &n) in rows.iter().enumerate() {
            let Some(v) = self.reg_operands(n, kdim, &mut regs, p)? else {
                return Ok(None);
            };
            let o = format!("v{j}");
            let e = |x: &str| format!("{x}[it][i]");
            let expr = match (&self.node(n).op, v.as_slice()) {
                (Op::Add { .. }, [a, b]) => format!("{} + {}", e(a), e(b)),
                (Op::Mul { .. }, [a, b]) => format!("{} * {}", e(a), e(b)),
                (Op::AddBias { .. }, [x, b]) => format!("{} + {}", e(x), e(b)),
                (Op::Scale { s: k, .. }, [x]) => format!("{} * {}", e(x), lit(*k)),
                (Op::LastRow { .. }, [x]) => e(x),
                (Op::Silu { .. }, [x]) => format!("silu_f({})", e(x)),
                (Op::GeluTanh { .. }, [x]) => format!("gelu_f({})", e(x)),
                (Op::Softcap { cap, .. }, [x]) => {
                    format!("{c} * tanhf({} / {c})", e(x), c = lit(*cap))
                }
                (Op::RmsNorm { eps, .. }, [x, w @ ..]) if self.norm_after(rows, j) => {
                    // v15c: the matmul's input norm, scaled after the sums. Each warp's
                    // partial sum of squares goes to `red` without a barrier; the row
                    // quantised is x * w, and the scale is summed from the partials after
                    // the quantisation's barrier and multiplies each column's sum
                    // (`RowInRegs::scale`). A batch's rows keep their partials apart.
                    let slot = match t {
                        1 => format!("{}", half * NWARPS),
                        _ => format!("{RED_ROWS} + r * {NWARPS}"),
                    };
                    // Several rows a pass (v18a): a row's warps are the first `wpr` of one
                    // row a pass (the others held zeros there, so the sums are the same).
                    let (wrow, wpr) = match self.row_threads {
                        0 => ("warp".to_string(), NWARPS),
                        n => (format!("warp % {}", n / 32), n / 32),
                    };
                    write!(
                        code,
                        "{{ float ss = 0.f; {each} ss += {x}[it][i] * {x}[it][i]; }}\n\
                        ss = warp_sum(ss); if (lane == 0) red[{slot} + {wrow}] = ss; }}\n"
                    )
                    .unwrap();
                    let sum = |slot: &str, out: &str| {
                        format!("{{ float ss = 0.f; _Pragma(\"unroll\") for (int i = 0; i < {wpr}; i++) ss += red[{slot} + i];\n\
                            {out} = rms_scale(ss, {kdim}.0f, {eps}); }}\n", eps = lit(*eps))
                    };
                    scale = Some(match t {
                        1 => NormScale {
                            post: format!("float sc{j};\n{}", sum(&slot, &format!("sc{j}"))),
                            one: format!("sc{j}"),
                            lane: String::new(),
                            row: String::new(),
                        },
                        _ => NormScale {
                            // Lane q's own row's scale (`scl`; lanes past the rows row 0's),
                            // and every row's (`scr[q]`) from lane q. v18c: each lane sums
                            // and divides once; every lane computing every row's scale was
                            // a chain of 8 precise divisions and square roots (~0.9 us of
                            // SmolLM2's 8-row QKV kernel, its trace's row stage 2.0 us
                            // against the output projection's 0.65). The same sums, so the
                            // same scales.
                            post: format!(
                                "float scl; {{ const int q = lane < {t} ? lane : 0; {}}}\n\
                                float scr[{t}]; _Pragma(\"unroll\") for (int q = 0; q < {t}; q++) scr[q] = __shfl_sync(0xffffffffu, scl, q);\n",
                                sum(&format!("{RED_ROWS} + q * {NWARPS}"), "scl")
                            ),
                            one: String::new(),
                            lane: "scl".into(),
                            row: "scr".into(),
                        },
                    });
                    match w {
                        [w] => format!("{} * {}", e(x), e(w)),
                        _ => e(x),
                    }
                }
                (Op::RmsNorm { eps, .. }, [x, w @ ..]) => {
                    // Consecutive norms reduce into alternate halves of `red`: the barrier of
                    // the one between orders the first one's reads before the third's writes.
                    let h = half * NWARPS;
                    half ^= 1;
                    write!(code, "float sc{j};\n{{ float ss = 0.f; {each} ss += {x}[it][i] * {x}[it][i]; }}\n\
                        ss = warp_sum(ss); if (lane == 0) red[{h} + warp] = ss; __syncthreads();\n\
                        ss = 0.f; _Pragma(\"unroll\") for (int i = 0; i < {NWARPS}; i++) ss += red[{h} + i];\n\
                        sc{j} = rms_scale(ss, {kdim}.0f, {eps}); }}\n", eps = lit(*eps)).unwrap();
                    match w {
                        [w] => format!("{} * sc{j} * {}", e(x), e(w)),
                        _ => format!("{} * sc{j}", e(x)),
                    }
                }
                _ => return Ok(None),
            };
            write!(
                code,
                "float {o}[{iters}][8];\n{each} {o}[it][i] = {expr}; }}\n"
            )
            .unwrap();
            let st = self.stores(n, &format!("{o}[it][i]"), "0", p)?;
            if !st.is_empty() {
                write!(
                    code,
                    "if (blockIdx.x == 0) {each} if (c < {kdim}) {{ {st} }} }}\n"
                )
                .unwrap();
            }
            regs.vals.insert(n, o);
        }
        let out = match rows.last() {
            Some(n) => regs.vals[n].clone(),
            None => match self.reg_operand(input, kdim, &mut regs, p)? {
                Some(o) => o,
                None => return Ok(None),
            },
        };
        let (decl, assign) = if regs.decl.is_empty() {
            (String::new(), String::new())
        } else {
            (
                format!("float {};\n", regs.decl.join(", ")),
                regs.load_code(kdim, None, tid),
            )
        };
        Ok(Some(RowInRegs {
            scale,
            decl,
            assign,
            weights: regs.load_code(kdim, Some(true), tid),
            buffers: regs.load_code(kdim, Some(false), tid),
            code,
            iters,
            out,
            bufs: regs
                .srcs
                .iter()
                .filter(|s| !s.3)
                .map(|s| s.0.clone())
                .collect(),
        }))
    }

    /// The register arrays of node `n`'s operands (values, then the norm's or bias's
    /// weights), loading buffers and weights not seen yet; None if one is neither.
    fn reg_operands(
        &self,
        n: NodeId,
        kdim: usize,
        regs: &mut RegRow,
        p: &mut Params,
    ) -> Result<Option<Vec<String>>, CudaError> {
        let Some((xs, w)) = reg_inputs(&self.node(n).op) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for x in xs {
            match self.reg_operand(x, kdim, regs, p)? {
                Some(o) => out.push(o),
                None => return Ok(None),
            }
        }
        if let Some(w) = w {
            let name = format!("l{}", regs.decl.len());
            let off = self.weight(w).off;
            let base = format!("((const float*)(W + {}))", p.p(off));
            regs.srcs
                .push((name.clone(), base, off.is_multiple_of(16), true));
            regs.decl.push(format!("{name}[{}][8]", regs.iters));
            out.push(name);
        }
        Ok(Some(out))
    }

    /// Node `x` as a register array: a row node computed before, or a buffer (loaded once).
    fn reg_operand(
        &self,
        x: NodeId,
        kdim: usize,
        regs: &mut RegRow,
        p: &mut Params,
    ) -> Result<Option<String>, CudaError> {
        if let Some(o) = regs.vals.get(&x) {
            return Ok(Some(o.clone()));
        }
        if self.plan.buffer_of(x).is_none() || self.node(x).shape != [self.t, kdim] {
            return Ok(None);
        }
        let name = format!("l{}", regs.decl.len());
        let (base, aligned) = self.buf_row(x, p)?;
        regs.srcs.push((name.clone(), base, aligned, false));
        regs.decl.push(format!("{name}[{}][8]", regs.iters));
        regs.vals.insert(x, name.clone());
        Ok(Some(name))
    }
}

impl RegRow {
    /// The loads of every source array (`weights`: only the weights' or only the buffers'):
    /// a thread's 8 values of a pass as two 16-byte loads where the row is aligned and the 8
    /// are in it (v11e: the 1B's 8192-wide rows took 16 scalar loads a thread), else one
    /// guarded float each. Empty where no array is selected.
    fn load_code(&self, kdim: usize, weights: Option<bool>, tid: &str) -> String {
        let mut vec = String::new();
        let mut each = String::new();
        let picked = self
            .srcs
            .iter()
            .filter(|s| weights.is_none_or(|w| w == s.3))
            .collect::<Vec<_>>();
        if picked.is_empty() {
            return String::new();
        }
        for (name, base, aligned, _) in picked {
            if *aligned && self.vec {
                write!(
                    vec,
                    "{{ const F4 u = *(const F4*)({base} + c0), w = *(const F4*)({base} + c0 + 4);\n\
                     {name}[it][0] = u.x; {name}[it][1] = u.y; {name}[it][2] = u.z; {name}[it][3] = u.w;\n\
                     {name}[it][4] = w.x; {name}[it][5] = w.y; {name}[it][6] = w.z; {name}[it][7] = w.w; }}\n"
                )
                .unwrap();
            } else {
                write!(
                    vec,
                    "_Pragma(\"unroll\") for (int i = 0; i < 8; i++) {name}[it][i] = {base}[c0 + i];\n"
                )
                .unwrap();
            }
            write!(each, " {name}[it][i] = c < {kdim} ? {base}[c] : 0.f;").unwrap();
        }
        format!(
            "_Pragma(\"unroll\") for (int it = 0; it < {iters}; it++) {{ const int c0 = {tid} * 8 + it * {NT} * 8;\n\
             if (c0 + 8 <= {kdim}) {{\n{vec}}} else {{\n\
             _Pragma(\"unroll\") for (int i = 0; i < 8; i++) {{ const int c = c0 + i;{each} }} }} }}\n",
            iters = self.iters
        )
    }
}

impl Gen<'_> {
    /// Whether a batch kernel's row stage `rows` (into a matmul of `kdim`-value rows) has no
    /// block reduction of its own: every RMS norm in it is the matmul input's, applied after
    /// the matmul (v15c), so each row's values, partials and quantisation are its own
    /// threads' (v17d, v18a).
    pub(super) fn rows_without_reduction(&self, rows: &[NodeId]) -> bool {
        rows.iter().enumerate().all(|(j, &n)| {
            !matches!(self.node(n).op, Op::RmsNorm { .. }) || self.norm_after(rows, j)
        })
    }

    /// Whether row node `rows[j]`, an RMS norm, is applied to the matmul's sums (v15c): the
    /// stage's last node, stored nowhere, with `SMELT_CUDA_NORM_AFTER` not 0 and a step of at
    /// most `MAX_ROWS` rows.
    fn norm_after(&self, rows: &[NodeId], j: usize) -> bool {
        super::lab_knob("SMELT_CUDA_NORM_AFTER") != Some(0)
            && self.t <= MAX_ROWS
            && j + 1 == rows.len()
            && self.plan.dests(rows[j]).is_empty()
    }
}

/// A row-stage op computed in registers: its value operands and its weight (a norm's or a
/// bias's), or None for any other op.
fn reg_inputs(op: &Op) -> Option<(Vec<NodeId>, Option<WeightId>)> {
    Some(match *op {
        Op::Add { a, b } | Op::Mul { a, b } => (vec![a, b], None),
        Op::AddBias { x, b } => (vec![x], Some(b)),
        Op::RmsNorm { x, w, .. } => (vec![x], w),
        Op::Scale { x, .. }
        | Op::Silu { x }
        | Op::GeluTanh { x }
        | Op::Softcap { x, .. }
        | Op::LastRow { x } => (vec![x], None),
        _ => return None,
    })
}
