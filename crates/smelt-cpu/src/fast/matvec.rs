//! The matrix kernels the executor calls, behind one small interface.
//!
//! Normally the SIMD kernel of `crate::kernels` for the weight type and this CPU (chosen when
//! the plan is lowered): activations quantised once per row (Q8_0, Q8_1 or Q8_K, as ggml
//! pairs them), integer dot products. In *exact* mode, or for a type without a kernel, weight
//! rows are dequantised with smelt-quant's reference code and dotted in f32 with f32
//! activations: the reference backend's arithmetic, which tests compare fused plans against.

use std::ops::Range;

use smelt_gguf::GgmlType;

use super::FastError;
use crate::kernels::{ActType, MatmulKernel};

#[derive(Clone, Copy, Debug)]
enum Imp {
    Kernel(MatmulKernel),
    Exact { wtype: GgmlType, row_bytes: usize },
}

/// The matmul kernel for one weight type with rows of `n` values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Matvec {
    n: usize,
    imp: Imp,
    act_row_bytes: usize,
}

impl Matvec {
    pub fn new(wtype: GgmlType, n: usize, exact: bool) -> Result<Matvec, FastError> {
        let kernel = if exact {
            None
        } else {
            MatmulKernel::detect(wtype).ok()
        };
        let imp = match kernel {
            Some(k) => Imp::Kernel(k),
            None if smelt_quant::is_supported(wtype) => {
                let row_bytes = smelt_quant::row_size(wtype, n)
                    .map_err(|e| FastError::Invalid(e.to_string()))?;
                Imp::Exact { wtype, row_bytes }
            }
            None => {
                return Err(FastError::Unsupported {
                    what: format!("weight type {wtype:?}"),
                })
            }
        };
        let act_row_bytes = match imp {
            Imp::Kernel(k) => k.act_row_bytes(n)?,
            Imp::Exact { .. } => n * 4,
        };
        Ok(Matvec {
            n,
            imp,
            act_row_bytes,
        })
    }

    /// The layout activations are quantised to; matmuls sharing it share one quantised copy.
    pub fn act_type(&self) -> ActType {
        match self.imp {
            Imp::Kernel(k) => k.act_type(),
            Imp::Exact { .. } => ActType::F32,
        }
    }

    pub fn act_row_bytes(&self) -> usize {
        self.act_row_bytes
    }

    /// A short description for plan dumps: weight type, code level, activation layout.
    pub fn describe(&self) -> String {
        match self.imp {
            Imp::Kernel(k) => format!(
                "{:?}/{}/{:?}",
                k.weight_type(),
                k.code_isa().name(),
                k.act_type()
            ),
            Imp::Exact { wtype, .. } => format!("{wtype:?}/exact-f32"),
        }
    }

    /// Floats of per-thread scratch a call needs.
    pub fn scratch_len(&self) -> usize {
        match self.imp {
            Imp::Kernel(_) => 0,
            Imp::Exact { .. } => self.n,
        }
    }

    pub fn quantize_act(&self, x: &[f32], out: &mut [u8]) -> Result<(), FastError> {
        match self.imp {
            Imp::Kernel(k) => k.quantize_act(x, out)?,
            Imp::Exact { .. } => {
                for (o, v) in out.chunks_exact_mut(4).zip(x) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    /// `out[t * stride + (r - rows.start)] = dot(W[r], x_t)` for the `n_tokens` activation
    /// rows of `xq` and the weight rows `rows` of `w`; with the panel gemm where `panel` is set
    /// (and the kernel has one), else the tiles or, for one token, the gemv (same bits).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        w: &[u8],
        rows: Range<usize>,
        xq: &[u8],
        n_tokens: usize,
        out: &mut [f32],
        stride: usize,
        scratch: &mut [f32],
        panel: bool,
    ) -> Result<(), FastError> {
        match self.imp {
            Imp::Kernel(k) if n_tokens == 1 && !panel => {
                let len = rows.len();
                k.gemv(self.n, w, rows, xq, &mut out[..len])?
            }
            Imp::Kernel(k) => k.gemm_with(self.n, w, rows, xq, n_tokens, out, stride, panel)?,
            Imp::Exact { wtype, row_bytes } => exact_gemm(
                wtype, row_bytes, self.n, w, rows, xq, n_tokens, out, stride, scratch,
            )?,
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn exact_gemm(
    wtype: GgmlType,
    row_bytes: usize,
    n: usize,
    w: &[u8],
    rows: Range<usize>,
    xq: &[u8],
    n_tokens: usize,
    out: &mut [f32],
    stride: usize,
    scratch: &mut [f32],
) -> Result<(), FastError> {
    let wrow = &mut scratch[..n];
    let arb = n * 4;
    for r in rows.clone() {
        let bytes = &w[r * row_bytes..(r + 1) * row_bytes];
        smelt_quant::dequantize(wtype, bytes, wrow)
            .map_err(|e| FastError::Invalid(e.to_string()))?;
        for t in 0..n_tokens {
            let x = &xq[t * arb..(t + 1) * arb];
            // Eight accumulators, like the reference's `dot`.
            let mut acc = [0f32; 8];
            let (wc, xc) = (wrow.chunks_exact(8), x.chunks_exact(32));
            let (wr, xr) = (wc.remainder(), xc.remainder());
            for (a, b) in wc.zip(xc) {
                for i in 0..8 {
                    acc[i] += a[i]
                        * f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (a, b) in wr.iter().zip(xr.chunks_exact(4)) {
                s += a * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            out[t * stride + (r - rows.start)] = s;
        }
    }
    Ok(())
}
