//! Activation rows, quantised once per matmul input so every weight row's dot product runs on
//! 8-bit integers.
//!
//! The layouts are ggml's blocks (`block_q8_0`, `block_q8_1`, `block_q8_K`), written by
//! quantisers that are bit-exact with smelt-quant's reference ones on finite input (the tests
//! compare bytes). F32 activations are the row's little-endian bytes, so every kernel takes its
//! activation row as `&[u8]`.
//!
//! Activations are not checked for NaN or infinity (a pass over every row just to look would
//! cost as much as quantising it); such values give meaningless numbers, never a panic or an
//! out-of-bounds access.

use smelt_gguf::GgmlType;
use smelt_quant::{BlockQ8_0, BlockQ8_1, BlockQ8_K, QuantBlock};

use super::{Isa, KernelError};

/// How an activation row is stored for a kernel (ggml's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum ActType {
    /// Plain f32 (for F32, F16 and BF16 weights).
    F32,
    /// 32-value blocks: f16 scale, 32 i8 (for Q4_0, Q5_0, Q8_0 weights).
    Q8_0,
    /// 32-value blocks: f16 scale, f16 `scale * sum(q)`, 32 i8 (for Q4_1, Q5_1 weights).
    Q8_1,
    /// 256-value blocks: f32 scale, 256 i8, 16 i16 sums of 16 (for the K-quants).
    Q8_K,
}

impl ActType {
    /// The ggml type with this layout.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            ActType::F32 => GgmlType::F32,
            ActType::Q8_0 => GgmlType::Q8_0,
            ActType::Q8_1 => GgmlType::Q8_1,
            ActType::Q8_K => GgmlType::Q8_K,
        }
    }

    /// Values per block (1 for F32).
    pub fn block_size(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml_type().type_size()
    }

    /// Bytes one quantised row of `n` values takes; `n` must fill whole blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize, KernelError> {
        const OP: &str = "act_row_bytes";
        let block_size = self.block_size();
        if !n.is_multiple_of(block_size) {
            return Err(KernelError::PartialBlock {
                op: OP,
                dtype: self.ggml_type(),
                n,
                block_size,
            });
        }
        (n / block_size)
            .checked_mul(self.block_bytes())
            .ok_or(KernelError::Overflow {
                op: OP,
                what: "activation row",
            })
    }
}

/// Quantise the activation row `x` to `act` into `out` (exactly [`ActType::row_bytes`] long),
/// with the code of instruction-set level `isa` (which this CPU must support).
pub fn quantize_row(act: ActType, isa: Isa, x: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
    const OP: &str = "quantize_row";
    check_isa(OP, isa)?;
    let expected = act.row_bytes(x.len())?;
    if out.len() != expected {
        return Err(KernelError::Length {
            op: OP,
            what: "quantised activation row",
            unit: "bytes",
            expected,
            actual: out.len(),
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `check_isa` confirmed the CPU supports `isa`, and the lengths were checked
        // above: `out` holds exactly the blocks of `x`.
        unsafe { super::x86::act::quantize_row(act, isa, x, out) };
        return Ok(());
    }
    quantize_row_scalar(act, x, out);
    Ok(())
}

/// Quantise a row into a new vector (tests, examples and one-off callers).
pub fn quantize_row_to_vec(act: ActType, isa: Isa, x: &[f32]) -> Result<Vec<u8>, KernelError> {
    let mut out = vec![0u8; act.row_bytes(x.len())?];
    quantize_row(act, isa, x, &mut out)?;
    Ok(out)
}

/// The portable quantisers: smelt-quant's reference block quantisers (ggml's
/// `quantize_row_q8_*_ref`), which are the definition the SIMD versions are held to.
fn quantize_row_scalar(act: ActType, x: &[f32], out: &mut [u8]) {
    match act {
        ActType::F32 => {
            for (dst, v) in out.chunks_exact_mut(4).zip(x) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
        ActType::Q8_0 => blocks::<BlockQ8_0, 32, 34>(x, out),
        ActType::Q8_1 => blocks::<BlockQ8_1, 32, 36>(x, out),
        ActType::Q8_K => blocks::<BlockQ8_K, 256, 292>(x, out),
    }
}

fn blocks<B: QuantBlock<E, N>, const E: usize, const N: usize>(x: &[f32], out: &mut [u8]) {
    let (xs, _) = x.as_chunks::<E>();
    let (outs, _) = out.as_chunks_mut::<N>();
    for (x, out) in xs.iter().zip(outs) {
        *out = B::quantize(x).to_bytes();
    }
}

/// Refuse a level this CPU cannot run (the SIMD entry points rely on it).
pub(crate) fn check_isa(op: &'static str, isa: Isa) -> Result<(), KernelError> {
    if isa.is_supported() {
        Ok(())
    } else {
        Err(KernelError::IsaUnavailable {
            op,
            isa,
            cpu: Isa::cpu_max(),
        })
    }
}
