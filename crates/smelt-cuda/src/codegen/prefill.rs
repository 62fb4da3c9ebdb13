//! Prefill (several tokens) matmul kernels: prologue rows kernel, the matmuls, one epilogue
//! kernel per bundle.
//!
//! With cuBLAS (the default where libcublas loads) every matmul of a kernel shares the input,
//! so the kernel's weights are dequantised to f16 rows stacked in one scratch (`deq16_<type>`,
//! one thread per 32 or 8 values) and multiplied in one `cublasGemmEx` (f16 inputs, f32
//! accumulation and output, tensor cores) into an `[M, N_total]` output whose column ranges
//! the epilogues read; the input is rounded to f16 once, by the rows kernel or `to_f16`.
//! Stacks larger than `W16_CAP` values go in column chunks (an output head of 128k rows).
//! Without cuBLAS each matmul is one launch of the generated mma.sync GEMM (`gemm_<type>`),
//! which dequantises weight tiles element by element.

use std::fmt::Write;

use smelt_graph::{KernelKind, NodeId, Op};

use super::{type_suffix, unsupported, Gen, Launch, Params, WeightInfo, Work, NT};
use crate::cublas::GemmCall;
use crate::CudaError;

/// Most f16 weight values dequantised before a GEMM (256 MiB of scratch): an 8B model's
/// gate+up stack (2 x 14336 x 4096) fits in one GEMM.
const W16_CAP: usize = 1 << 27;

/// Arena regions (float offsets) shared by all matmul kernels of a cuBLAS prefill program:
/// consecutive kernels run one after another on the stream, and each kernel's epilogue has
/// read its outputs before the next kernel writes.
pub(super) struct Scratch {
    x16: usize,
    out: usize,
    w16: usize,
}

/// Input rows rounded to f16 have a row stride of `kp` values, a multiple of 8, so rows and
/// dequantised units start 16-byte aligned.
fn kp(k: usize) -> usize {
    k.div_ceil(8) * 8
}

/// Rows of a kernel's weight stack dequantised per GEMM.
fn chunk_rows(k: usize) -> usize {
    (W16_CAP / kp(k)).max(1)
}

impl Gen<'_> {
    /// Weight rows of every matmul of a prefill kernel, stacked in bundle order: (node,
    /// weight, first stacked row, rows).
    fn stack(&self, ki: usize) -> Vec<(NodeId, WeightInfo, usize, usize)> {
        let KernelKind::MatMul { bundles, .. } = &self.plan.kernels()[ki].kind else {
            unreachable!()
        };
        let mut v = Vec::new();
        let mut at = 0;
        for b in bundles {
            for &m in &b.matmuls {
                let Op::MatMul { w, .. } = self.node(m).op else {
                    unreachable!()
                };
                v.push((m, self.weight(w).clone(), at, b.width));
                at += b.width;
            }
        }
        v
    }

    /// Size and place the shared scratch of a cuBLAS prefill program.
    pub(super) fn prefill_scratch(&mut self) -> Scratch {
        let (mut x16, mut out, mut w16) = (0usize, 0usize, 0usize);
        for (ki, k) in self.plan.kernels().iter().enumerate() {
            let KernelKind::MatMul { input, .. } = &k.kind else {
                continue;
            };
            let [m, kd] = self.node(*input).shape;
            let n: usize = self.stack(ki).iter().map(|s| s.3).sum();
            x16 = x16.max(m * kp(kd));
            out = out.max(m * n);
            w16 = w16.max(n.min(chunk_rows(kd)) * kp(kd));
        }
        Scratch {
            x16: self.alloc_scratch(x16.div_ceil(2)),
            out: self.alloc_scratch(out),
            w16: self.alloc_scratch(w16.div_ceil(2)),
        }
    }

    pub(super) fn prefill_matmul(&mut self, ki: usize, input: NodeId) -> Result<(), CudaError> {
        let k = self.plan.kernels()[ki].clone();
        let KernelKind::MatMul { bundles, .. } = &k.kind else {
            unreachable!()
        };
        let [m_rows, kdim] = self.node(input).shape;
        // Per matmul: (node, output offset, output row stride).
        let outs: Vec<(NodeId, usize, usize)> = match &self.cublas {
            Some(sc) => {
                let (x16, out, w16) = (sc.x16, sc.out, sc.w16);
                let in_rows = k.rows.contains(&input);
                if in_rows {
                    self.rows_kernel(&k.rows, None, Some((input, x16, kp(kdim))))?;
                } else {
                    if !k.rows.is_empty() {
                        self.rows_kernel(&k.rows, None, None)?;
                    }
                    self.round_input_f16(input, x16)?;
                }
                self.cublas_matmuls(ki, m_rows, kdim, x16, w16, out)?
            }
            None => self.mma_matmuls(ki, input)?,
        };
        for (bi, b) in bundles.iter().enumerate() {
            // Epilogue kernel: one block per (tile, row).
            let bc = Self::tile_cols(b.align, 256);
            let nt = b.width.div_ceil(bc);
            let mut p = Params::default();
            let (code, bslots) = self.epilogue_code(ki, bi, bc, &mut p)?;
            let rp = if m_rows == 1 {
                format!("{}", self.t - 1)
            } else {
                "r".into()
            };
            let mut body = format!("extern __shared__ float sm[]; float* se = sm;\n\
                const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5; const int r = blockIdx.y, rp = {rp}; (void)lane; (void)warp; (void)rp;\n\
                const int c0 = blockIdx.x * {bc}; const int nv = min({bc}, {} - c0);\n", b.width);
            for &m in &b.matmuls {
                let &(_, out, stride) = outs.iter().find(|o| o.0 == m).expect("every matmul");
                write!(body, "for (int c = tid; c < nv; c += {NT}) se[{} + c] = A[{} + (u64)r * {stride} + c0 + c];\n", bslots[&m], p.p(out as u64)).unwrap();
            }
            body += "__syncthreads();\n";
            body += &code;
            let smem = self.bundle_slots(ki, bi) * bc * 4;
            let name = self.kernel(&NT.to_string(), body, smem);
            self.launch("epilogue".into(), name, (nt, m_rows, 1), NT, smem, p);
        }
        Ok(())
    }

    /// The generated mma.sync GEMM, one launch per matmul, each into its own `[M, width]`.
    fn mma_matmuls(
        &mut self,
        ki: usize,
        input: NodeId,
    ) -> Result<Vec<(NodeId, usize, usize)>, CudaError> {
        let k = self.plan.kernels()[ki].clone();
        let [m_rows, kdim] = self.node(input).shape;
        let xin = match self.plan.buffer_of(input) {
            Some(b) => self.plan.buffer(b).offset,
            None => self.alloc_scratch(m_rows * kdim),
        };
        if !k.rows.is_empty() {
            let write = self.plan.buffer_of(input).is_none().then_some((input, xin));
            self.rows_kernel(&k.rows, write, None)?;
        }
        let mut outs = Vec::new();
        for (m, wi, _, width) in self.stack(ki) {
            let ty = type_suffix(wi.dtype).ok_or_else(|| unsupported(wi.dtype))?;
            if !self.gemm_types.contains(&ty) {
                self.gemm_types.push(ty);
            }
            let out = self.alloc_scratch(m_rows * width);
            outs.push((m, out, width));
            let mut p = Params::default();
            for v in [
                xin as u64,
                wi.off,
                wi.row_bytes,
                out as u64,
                m_rows as u64,
                width as u64,
                kdim as u64,
            ] {
                p.p(v);
            }
            self.launch(
                format!("gemm {ty} {width}x{kdim}"),
                format!("gemm_{ty}"),
                (width.div_ceil(64), m_rows.div_ceil(64), 1),
                128,
                0,
                p,
            );
        }
        Ok(outs)
    }

    /// `to_f16` of a materialised input `[M, K]` into `x16` (row stride `kp(K)`).
    fn round_input_f16(&mut self, input: NodeId, x16: usize) -> Result<(), CudaError> {
        let [m, kd] = self.node(input).shape;
        let b = self.plan.buffer_of(input).ok_or_else(|| {
            CudaError::Invalid(format!(
                "matmul input %{} ({}) is neither materialised nor computed by its kernel",
                input.0,
                self.node(input).name
            ))
        })?;
        let mut p = Params::default();
        let src = self.plan.buffer(b).offset;
        for v in [src, x16, m, kd, kp(kd)] {
            p.p(v as u64);
        }
        let threads = m * kp(kd) / 8;
        self.launch(
            format!("to_f16 {m}x{kd}"),
            "to_f16".into(),
            (threads.div_ceil(256), 1, 1),
            256,
            0,
            p,
        );
        Ok(())
    }

    /// Dequantise the kernel's weight stack (in chunks of at most `W16_CAP` values) and
    /// multiply each chunk with cuBLAS into columns of `out` (`[M, N_total]`).
    fn cublas_matmuls(
        &mut self,
        ki: usize,
        m_rows: usize,
        kdim: usize,
        x16: usize,
        w16: usize,
        out: usize,
    ) -> Result<Vec<(NodeId, usize, usize)>, CudaError> {
        let stack = self.stack(ki);
        let n_total: usize = stack.iter().map(|s| s.3).sum();
        let (kp, rows_per) = (kp(kdim), chunk_rows(kdim));
        let mut c0 = 0;
        while c0 < n_total {
            let c1 = (c0 + rows_per).min(n_total);
            for (_, wi, at, width) in &stack {
                let (a, b) = ((*at).max(c0), (at + width).min(c1));
                if a >= b {
                    continue;
                }
                let ty = type_suffix(wi.dtype).ok_or_else(|| unsupported(wi.dtype))?;
                if !self.deq_types.contains(&ty) {
                    self.deq_types.push(ty);
                }
                let unit = if matches!(ty, "f32" | "f16" | "bf16") {
                    8
                } else {
                    32
                };
                let upr = kdim.div_ceil(unit);
                let mut p = Params::default();
                for v in [
                    wi.off + (a - at) as u64 * wi.row_bytes,
                    wi.row_bytes,
                    (w16 + (a - c0) * kp / 2) as u64,
                    (b - a) as u64,
                    upr as u64,
                    kp as u64,
                    kdim as u64,
                ] {
                    p.p(v);
                }
                self.launch(
                    format!("dequant {ty} {}x{kdim}", b - a),
                    format!("deq16_{ty}"),
                    (((b - a) * upr).div_ceil(256), 1, 1),
                    256,
                    0,
                    p,
                );
            }
            self.launches.push(Launch {
                label: format!("cublas {m_rows}x{}x{kdim}", c1 - c0),
                work: Work::Gemm(GemmCall {
                    m: m_rows,
                    n: c1 - c0,
                    k: kdim,
                    x_off: x16,
                    ldx: kp,
                    w_off: w16,
                    ldw: kp,
                    c_off: out + c0,
                    ldc: n_total,
                }),
            });
            c0 = c1;
        }
        Ok(stack
            .iter()
            .map(|&(m, _, at, _)| (m, out + at, n_total))
            .collect())
    }
}
