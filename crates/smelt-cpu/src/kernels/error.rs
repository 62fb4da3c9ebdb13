//! Why a kernel call was refused. Every variant names the operation and the values, so a shape
//! mistake in the executor reads as a sentence, never as an out-of-bounds read.

use smelt_gguf::GgmlType;

use super::Isa;

/// A refused kernel call or lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// `SMELT_ISA` holds something that is not a level name.
    #[error("SMELT_ISA={name:?} is not one of scalar, avx2, avx512")]
    IsaName { name: String },

    /// Code for this level was asked for on a CPU that cannot run it.
    #[error("[{op}] instruction set {isa} is not supported by this CPU (it has {cpu})")]
    IsaUnavailable {
        op: &'static str,
        isa: Isa,
        cpu: Isa,
    },

    /// No kernel exists for this weight (or activation) type.
    #[error("[{op}] no kernel for type {dtype}")]
    Unsupported { op: &'static str, dtype: GgmlType },

    /// A row length that is not a whole number of blocks.
    #[error(
        "[{op}] a row of {n} elements of {dtype} is not a whole number of {block_size}-value blocks"
    )]
    PartialBlock {
        op: &'static str,
        dtype: GgmlType,
        n: usize,
        block_size: usize,
    },

    /// A buffer of the wrong size.
    #[error("[{op}] {what} has {actual} {unit}, expected {expected}")]
    Length {
        op: &'static str,
        what: &'static str,
        unit: &'static str,
        expected: usize,
        actual: usize,
    },

    /// A row range that is reversed or reaches past the weight matrix.
    #[error("[{op}] rows {start}..{end} are not within the {available} rows of the weight data")]
    RowRange {
        op: &'static str,
        start: usize,
        end: usize,
        available: usize,
    },

    /// A size computation that does not fit in `usize`.
    #[error("[{op}] size of {what} overflows")]
    Overflow {
        op: &'static str,
        what: &'static str,
    },
}
