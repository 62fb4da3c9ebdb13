//! Row-wise ops on a segment of one row: the prologues, epilogues and rows kernels of a plan.
//!
//! A segment is columns `c0..c0 + out.len()` of a row; the plan aligns segments to heads for
//! RoPE and per-head norms, and prologues and rows kernels pass whole rows. The arithmetic is
//! the reference backend's, in the same order, so a fused plan's row-wise values equal the
//! reference's bit for bit (matmuls differ: activations are quantised).

use smelt_gguf::GgmlType;

use super::FastError;
use crate::reference::gelu_tanh;

/// A row-wise op with its weights resolved.
#[derive(Clone, Debug)]
pub(crate) enum SegOp {
    /// Row `token` of an embedding table (`weight` indexes the backend's weight views).
    Embed {
        weight: usize,
    },
    /// The operand as is (LastRow: the row mapping is the caller's).
    Copy,
    RmsNorm {
        w: Option<usize>,
        eps: f32,
        group: usize,
    },
    AddBias {
        b: usize,
    },
    Add,
    Mul,
    Scale(f32),
    Silu,
    Gelu,
    Softcap(f32),
    /// `pw[i] = base^(-2i / n_rot)`, computed once at plan time exactly as the reference does.
    Rope {
        head_dim: usize,
        n_rot: usize,
        freq_scale: f32,
        neox: bool,
        factors: Option<usize>,
        pw: Vec<f32>,
    },
}

/// What segment evaluation reads besides its operands.
pub(crate) struct SegEnv<'a> {
    /// f32 copies of the small (1-D) weights, by weight index.
    pub small: &'a [Option<Vec<f32>>],
    /// Quantised weight bytes, dtype and row length, by weight index.
    pub big: &'a dyn Fn(usize) -> (&'a [u8], GgmlType, usize),
}

impl SegEnv<'_> {
    fn small(&self, w: usize) -> &[f32] {
        self.small[w]
            .as_deref()
            .expect("small weights are loaded for every row op")
    }
}

/// `out = op(a, b)` on columns `c0..c0 + out.len()` of a row at position `pos` for `token`.
/// `cs` is scratch for RoPE (n_rot floats).
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval(
    op: &SegOp,
    env: &SegEnv,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    c0: usize,
    pos: u32,
    token: u32,
    cs: &mut [f32],
) -> Result<(), FastError> {
    match op {
        SegOp::Embed { weight } => {
            let (data, dtype, n) = (env.big)(*weight);
            smelt_quant::dequantize_row(dtype, data, n, token as usize, out)
                .map_err(|e| FastError::Invalid(format!("embedding row {token}: {e}")))?;
        }
        SegOp::Copy => out.copy_from_slice(a),
        SegOp::RmsNorm { w, eps, group } => {
            let w = w.map(|w| env.small(w));
            for (o, x) in out.chunks_mut(*group).zip(a.chunks(*group)) {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / *group as f32;
                let s = 1.0 / (ms + eps).sqrt();
                match w {
                    Some(w) => o
                        .iter_mut()
                        .zip(x)
                        .zip(w)
                        .for_each(|((o, x), w)| *o = x * s * w),
                    None => o.iter_mut().zip(x).for_each(|(o, x)| *o = x * s),
                }
            }
        }
        SegOp::AddBias { b: bias } => {
            let bias = &env.small(*bias)[c0..c0 + out.len()];
            out.iter_mut()
                .zip(a)
                .zip(bias)
                .for_each(|((o, x), b)| *o = x + b);
        }
        SegOp::Add => out
            .iter_mut()
            .zip(a)
            .zip(b)
            .for_each(|((o, x), y)| *o = x + y),
        SegOp::Mul => out
            .iter_mut()
            .zip(a)
            .zip(b)
            .for_each(|((o, x), y)| *o = x * y),
        SegOp::Scale(s) => out.iter_mut().zip(a).for_each(|(o, x)| *o = x * s),
        SegOp::Silu => out
            .iter_mut()
            .zip(a)
            .for_each(|(o, &x)| *o = x / (1.0 + (-x).exp())),
        SegOp::Gelu => out.iter_mut().zip(a).for_each(|(o, &x)| *o = gelu_tanh(x)),
        SegOp::Softcap(cap) => out
            .iter_mut()
            .zip(a)
            .for_each(|(o, &x)| *o = cap * (x / cap).tanh()),
        SegOp::Rope {
            head_dim,
            n_rot,
            freq_scale,
            neox,
            factors,
            pw,
        } => {
            let half = n_rot / 2;
            let factors = factors.map(|f| env.small(f));
            for i in 0..half {
                let mut theta = pos as f32 * freq_scale * pw[i];
                if let Some(f) = factors {
                    theta /= f[i];
                }
                let (sin, cos) = theta.sin_cos();
                cs[2 * i] = cos;
                cs[2 * i + 1] = sin;
            }
            out.copy_from_slice(a);
            for head in out.chunks_mut(*head_dim) {
                for i in 0..half {
                    let (cos, sin) = (cs[2 * i], cs[2 * i + 1]);
                    let (p, q) = if *neox {
                        (i, i + half)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x0, x1) = (head[p], head[q]);
                    head[p] = x0 * cos - x1 * sin;
                    head[q] = x0 * sin + x1 * cos;
                }
            }
        }
    }
    Ok(())
}
