//! The quantised matrix kernels the executor calls, behind one small interface.
//!
//! Until the SIMD kernels of `crate::kernels` cover a weight type, its rows are dequantised
//! with smelt-quant's reference code and dotted in f32 with f32 activations (the fallback).

use std::ops::Range;

use smelt_gguf::GgmlType;

use super::FastError;

/// The matmul kernel for one weight type with rows of `k` values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Matvec {
    wtype: GgmlType,
    k: usize,
    row_bytes: usize,
}

impl Matvec {
    pub fn new(wtype: GgmlType, k: usize) -> Result<Matvec, FastError> {
        if !smelt_quant::is_supported(wtype) {
            return Err(FastError::Unsupported {
                what: format!("weight type {wtype:?}"),
            });
        }
        let row_bytes =
            smelt_quant::row_size(wtype, k).map_err(|e| FastError::Invalid(e.to_string()))?;
        Ok(Matvec {
            wtype,
            k,
            row_bytes,
        })
    }

    /// The layout activations are quantised to (rows of different matmuls that share it are
    /// quantised once).
    pub fn act_type(&self) -> GgmlType {
        GgmlType::F32
    }

    pub fn act_row_bytes(&self) -> usize {
        self.k * 4
    }

    /// Floats of per-thread scratch a call needs.
    pub fn scratch_len(&self) -> usize {
        self.k
    }

    pub fn quantize_act(&self, x: &[f32], out: &mut [u8]) {
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// `out[t * stride + (r - rows.start)] = dot(W[r], x_t)` for the `n_tokens` activation
    /// rows of `xq` and the weight rows `rows` of `w`.
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
    ) -> Result<(), FastError> {
        let wrow = &mut scratch[..self.k];
        let arb = self.act_row_bytes();
        for r in rows.clone() {
            let bytes = &w[r * self.row_bytes..(r + 1) * self.row_bytes];
            smelt_quant::dequantize(self.wtype, bytes, wrow)
                .map_err(|e| FastError::Invalid(e.to_string()))?;
            for t in 0..n_tokens {
                let x = &xq[t * arb..(t + 1) * arb];
                let mut acc = [0f32; 8];
                let (wc, xc) = (wrow.chunks_exact(8), x.chunks_exact(32));
                let (wr, xr) = (wc.remainder(), xc.remainder());
                for (a, b) in wc.zip(xc) {
                    for i in 0..8 {
                        acc[i] += a[i]
                            * f32::from_le_bytes([
                                b[4 * i],
                                b[4 * i + 1],
                                b[4 * i + 2],
                                b[4 * i + 3],
                            ]);
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
}
