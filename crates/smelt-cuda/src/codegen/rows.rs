//! Element-wise code of the kernels: a row stage's nodes (norms, residuals, embedding rows)
//! into shared slots, RoPE in place, a bundle's epilogue on a tile of matmul outputs, the value
//! of a columnwise op at one column, and the rows kernel (one block per row) of prefill.

use std::collections::HashMap;
use std::fmt::Write;

use smelt_graph::{KernelKind, NodeId, Op};

use super::{lit, type_suffix, unsupported, Gen, Params, NT, NWARPS};
use crate::CudaError;

impl Gen<'_> {
    /// Row-stage code for one row (`r`, positions `rp`): each node into a shared slot.
    /// Returns the code and the slot offsets (floats from `sm`).
    pub(super) fn row_code(
        &self,
        nodes: &[NodeId],
        store_guard: &str,
        p: &mut Params,
        slots: &mut HashMap<NodeId, usize>,
        next: &mut usize,
    ) -> Result<String, CudaError> {
        let mut s = String::new();
        for &n in nodes {
            let node = self.node(n);
            let [rows, cols] = node.shape;
            let o = *next;
            *next += cols.div_ceil(4) * 4;
            slots.insert(n, o);
            let rd = |x: NodeId, c: &str, p: &mut Params| -> Result<String, CudaError> {
                match slots.get(&x) {
                    Some(off) => Ok(format!("sm[{off} + {c}]")),
                    None => self.buf_read(x, c, p),
                }
            };
            let last_only = rows == 1 && self.t > 1;
            if last_only {
                writeln!(s, "if (r == {}) {{", self.t - 1).unwrap();
            }
            let each = |e: String| {
                format!("for (int c = tid; c < {cols}; c += {NT}) sm[{o} + c] = {e};\n")
            };
            match node.op {
                Op::Embed { table } => {
                    let wi = self.weight(table);
                    let ty = type_suffix(wi.dtype).ok_or_else(|| unsupported(wi.dtype))?;
                    let (wo, rb) = (p.p(wi.off), p.p(wi.row_bytes));
                    s += &each(format!(
                        "deq_{ty}(W + {wo} + (u64)tok[r] * {rb}, c, {cols})"
                    ));
                }
                Op::RmsNorm { x, w, eps, group } => {
                    let xv = rd(x, "c", p)?;
                    let wv = match w {
                        Some(w) => format!(
                            " * ((const float*)(W + {}))[c % {group}]",
                            p.p(self.weight(w).off)
                        ),
                        None => String::new(),
                    };
                    if group == cols {
                        // Summed in the order of the one-token kernels' registers (each thread
                        // its runs of 8 values, then the warps' sums in order): a batch's rows
                        // normalise bit for bit as one sequence's (codegen/decode.rs).
                        write!(s, "{{ float ss = 0.f; for (int c0 = tid * 8; c0 < {cols}; c0 += {NT} * 8) _Pragma(\"unroll\") for (int i = 0; i < 8; i++) {{ const int c = c0 + i; if (c < {cols}) {{ float v = {xv}; ss += v * v; }} }}\n\
                            ss = warp_sum(ss); if (lane == 0) red[warp] = ss; __syncthreads();\n\
                            ss = 0.f; _Pragma(\"unroll\") for (int i = 0; i < {NWARPS}; i++) ss += red[i];\n\
                            float sc = rms_scale(ss, {cols}.0f, {eps}); __syncthreads();\n\
                            for (int c = tid; c < {cols}; c += {NT}) sm[{o} + c] = {xv} * sc{wv}; }}\n", eps = lit(eps)).unwrap();
                    } else {
                        let xg = rd(x, "c", p)?;
                        write!(s, "for (int gi = warp; gi < {ng}; gi += {NWARPS}) {{ float ss = 0.f;\n\
                            for (int c = gi * {group} + lane; c < (gi + 1) * {group}; c += 32) {{ float v = {xg}; ss += v * v; }}\n\
                            ss = warp_sum(ss); float sc = rms_scale(ss, {group}.0f, {eps});\n\
                            for (int c = gi * {group} + lane; c < (gi + 1) * {group}; c += 32) sm[{o} + c] = {xg} * sc{wv}; }}\n",
                            ng = cols / group, eps = lit(eps)).unwrap();
                    }
                }
                Op::AddBias { x, b } => {
                    let e = format!(
                        "{} + ((const float*)(W + {}))[c]",
                        rd(x, "c", p)?,
                        p.p(self.weight(b).off)
                    );
                    s += &each(e);
                }
                Op::Add { a, b } => s += &each(format!("{} + {}", rd(a, "c", p)?, rd(b, "c", p)?)),
                Op::Mul { a, b } => s += &each(format!("{} * {}", rd(a, "c", p)?, rd(b, "c", p)?)),
                Op::Scale { x, s: k } => s += &each(format!("{} * {}", rd(x, "c", p)?, lit(k))),
                Op::Silu { x } => s += &each(format!("silu_f({})", rd(x, "c", p)?)),
                Op::GeluTanh { x } => s += &each(format!("gelu_f({})", rd(x, "c", p)?)),
                Op::Softcap { x, cap } => {
                    s += &each(format!(
                        "{c} * tanhf({} / {c})",
                        rd(x, "c", p)?,
                        c = lit(cap)
                    ))
                }
                Op::LastRow { x } => s += &each(rd(x, "c", p)?),
                Op::Rope { x, .. } => {
                    s += &each(rd(x, "c", p)?);
                    s += "__syncthreads();\n";
                    s += &self.rope_code(n, &format!("sm + {o}"), "0", p)?;
                }
                Op::MatMul { .. } | Op::Attention { .. } => {
                    return Err(CudaError::Invalid(format!(
                        "{} in a row stage",
                        node.op.kind()
                    )))
                }
            }
            s += "__syncthreads();\n";
            let st = self.stores(n, &format!("sm[{o} + c]"), "0", p)?;
            if !st.is_empty() {
                write!(
                    s,
                    "if ({store_guard}) for (int c = tid; c < {cols}; c += {NT}) {{ {st} }}\n"
                )
                .unwrap();
            }
            if last_only {
                s += "}\n";
            }
        }
        Ok(s)
    }

    /// In-place RoPE of node `n`'s values at `base` (local column 0 = global column `col0`,
    /// `nv` columns, a whole number of heads), position `pos[rp]`.
    pub(super) fn rope_code(
        &self,
        n: NodeId,
        base: &str,
        col0: &str,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let Op::Rope {
            head_dim,
            n_rot,
            base: fb,
            freq_scale,
            neox,
            factors,
            ..
        } = self.node(n).op
        else {
            unreachable!()
        };
        let cols = self.node(n).shape[1];
        let half = n_rot / 2;
        let fac = match factors {
            Some(f) => format!(" / ((const float*)(W + {}))[i]", p.p(self.weight(f).off)),
            None => String::new(),
        };
        let (a, b) = if neox {
            ("i".to_string(), format!("i + {half}"))
        } else {
            ("2 * i".into(), "2 * i + 1".into())
        };
        let _ = col0;
        Ok(format!(
            "for (int idx = tid; idx < (nv_rope / {head_dim}) * {half}; idx += {NT}) {{\n\
             int hh = idx / {half}, i = idx % {half}; float* hp = {base} + hh * {head_dim};\n\
             float th = (float)pos[rp] * {fs} * powf({fb}, -2.0f * (float)i / {n_rot}.0f){fac};\n\
             float sn, cs; sincosf(th, &sn, &cs); float x0 = hp[{a}], x1 = hp[{b}];\n\
             hp[{a}] = x0 * cs - x1 * sn; hp[{b}] = x0 * sn + x1 * cs; }}\n",
            fs = lit(freq_scale),
            fb = lit(fb),
        )
        .replace(
            "nv_rope",
            &if col0 == "0" {
                cols.to_string()
            } else {
                "nv".to_string()
            },
        ))
    }

    /// Epilogue of bundle `bi` of kernel `ki` on a tile (`c0`, `nv` columns) whose matmul
    /// outputs are in shared slots; returns code and the slot of each bundle node.
    pub(super) fn epilogue_code(
        &self,
        ki: usize,
        bi: usize,
        bc: usize,
        p: &mut Params,
    ) -> Result<(String, HashMap<NodeId, usize>), CudaError> {
        let KernelKind::MatMul { bundles, .. } = &self.plan.kernels()[ki].kind else {
            unreachable!()
        };
        let b = &bundles[bi];
        let mut slots = HashMap::new();
        let mut next = 0;
        for &m in &b.matmuls {
            slots.insert(m, next);
            next += bc;
        }
        let mut s = String::new();
        for &n in &b.epilogue {
            let o = next;
            next += bc;
            slots.insert(n, o);
            let rd = |x: NodeId, p: &mut Params| -> Result<String, CudaError> {
                match slots.get(&x) {
                    Some(off) => Ok(format!("se[{off} + c]")),
                    None => self.buf_read(x, "c0 + c", p),
                }
            };
            let each =
                |e: String| format!("for (int c = tid; c < nv; c += {NT}) se[{o} + c] = {e};\n");
            let op = &self.node(n).op;
            if op.is_columnwise() {
                s += &each(self.columnwise_expr(op, "c0 + c", &rd, p)?);
                s += "__syncthreads();\n";
                continue;
            }
            match *op {
                Op::Rope { x, .. } => {
                    s += &each(rd(x, p)?);
                    s += "__syncthreads();\n";
                    s += &self.rope_code(n, &format!("se + {o}"), "c0", p)?;
                }
                Op::RmsNorm { x, w, eps, group } => {
                    let xv = rd(x, p)?;
                    let wv = match w {
                        Some(w) => format!(
                            " * ((const float*)(W + {}))[c % {group}]",
                            p.p(self.weight(w).off)
                        ),
                        None => String::new(),
                    };
                    write!(s, "for (int gi = warp; gi < nv / {group}; gi += {NWARPS}) {{ float ss = 0.f;\n\
                        for (int c = gi * {group} + lane; c < (gi + 1) * {group}; c += 32) {{ float v = {xv}; ss += v * v; }}\n\
                        ss = warp_sum(ss); float sc = rms_scale(ss, {group}.0f, {eps});\n\
                        for (int c = gi * {group} + lane; c < (gi + 1) * {group}; c += 32) se[{o} + c] = {xv} * sc{wv}; }}\n",
                        eps = lit(eps)).unwrap();
                }
                ref op => return Err(CudaError::Invalid(format!("{} in an epilogue", op.kind()))),
            }
            s += "__syncthreads();\n";
        }
        for (&n, &o) in b.matmuls.iter().chain(&b.epilogue).map(|n| (n, &slots[n])) {
            let st = self.stores(n, &format!("se[{o} + c]"), "c0", p)?;
            if !st.is_empty() {
                write!(s, "for (int c = tid; c < nv; c += {NT}) {{ {st} }}\n").unwrap();
            }
        }
        s += "__syncthreads();\n";
        let _ = next;
        Ok((s, slots))
    }

    /// The value of a columnwise op ([`Op::is_columnwise`]) at one column: `rd` reads an input
    /// at that column, `col` is the column's expression (for bias rows).
    pub(super) fn columnwise_expr(
        &self,
        op: &Op,
        col: &str,
        rd: &dyn Fn(NodeId, &mut Params) -> Result<String, CudaError>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        Ok(match *op {
            Op::AddBias { x, b } => format!(
                "{} + ((const float*)(W + {}))[{col}]",
                rd(x, p)?,
                p.p(self.weight(b).off)
            ),
            Op::Add { a, b } => format!("{} + {}", rd(a, p)?, rd(b, p)?),
            Op::Mul { a, b } => format!("{} * {}", rd(a, p)?, rd(b, p)?),
            Op::Scale { x, s: k } => format!("{} * {}", rd(x, p)?, lit(k)),
            Op::Silu { x } => format!("silu_f({})", rd(x, p)?),
            Op::GeluTanh { x } => format!("gelu_f({})", rd(x, p)?),
            Op::Softcap { x, cap } => format!("{c} * tanhf({} / {c})", rd(x, p)?, c = lit(cap)),
            ref op => {
                return Err(CudaError::Invalid(format!(
                    "{} is not columnwise",
                    op.kind()
                )))
            }
        })
    }

    pub(super) fn tile_cols(align: usize, min: usize) -> usize {
        align * min.div_ceil(align).max(1)
    }

    pub(super) fn bundle_slots(&self, ki: usize, bi: usize) -> usize {
        let KernelKind::MatMul { bundles, .. } = &self.plan.kernels()[ki].kind else {
            unreachable!()
        };
        bundles[bi].matmuls.len() + bundles[bi].epilogue.len()
    }

    /// A row kernel (one block per row): computes `rows`, stores what is materialised, and
    /// when `xin` is given writes the matmul input node there (`[rows, cols]` f32); when
    /// `x16` is given (node, arena offset, row stride `kp`), an f16 copy of that node, rows
    /// zero-padded to `kp` (for cuBLAS).
    pub(super) fn rows_kernel(
        &mut self,
        rows: &[NodeId],
        xin: Option<(NodeId, usize)>,
        x16: Option<(NodeId, usize, usize)>,
    ) -> Result<(), CudaError> {
        let mut p = Params::default();
        let mut slots = HashMap::new();
        let mut next = 0usize;
        let mut body = String::from("extern __shared__ float sm[]; __shared__ float red[33];\n\
            const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5; const int r = blockIdx.x, rp = r; (void)lane; (void)warp;\n");
        body += &self.row_code(rows, "true", &mut p, &mut slots, &mut next)?;
        // A one-row input of a many-token step (the last row only) is written by its row.
        let guard_row = |n: NodeId| -> (String, &'static str) {
            if self.node(n).shape[0] == 1 && self.t > 1 {
                (format!("r == {}", self.t - 1), "0")
            } else {
                ("true".into(), "r")
            }
        };
        if let Some((n, off)) = xin {
            let cols = self.node(n).shape[1];
            let o = slots[&n];
            let (guard, row) = guard_row(n);
            write!(body, "if ({guard}) for (int c = tid; c < {cols}; c += {NT}) A[{} + (u64){row} * {cols} + c] = sm[{o} + c];\n", p.p(off as u64)).unwrap();
        }
        if let Some((n, off, kp)) = x16 {
            let cols = self.node(n).shape[1];
            let o = slots[&n];
            let (guard, row) = guard_row(n);
            write!(body, "if ({guard}) for (int c = 2 * tid; c < {kp}; c += {}) ((u32*)(A + {}))[((u64){row} * {kp} + c) / 2] = pack2s(c < {cols} ? sm[{o} + c] : 0.f, c + 1 < {cols} ? sm[{o} + c + 1] : 0.f);\n", 2 * NT, p.p(off as u64)).unwrap();
        }
        let smem = next.max(1) * 4;
        let name = self.kernel(&NT.to_string(), body, smem);
        self.launch("rows".into(), name, (self.t, 1, 1), NT, smem, p);
        Ok(())
    }
}
