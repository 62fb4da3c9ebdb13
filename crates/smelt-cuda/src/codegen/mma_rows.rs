//! v17c: which batch kernels take their matmuls on tensor cores (`cu/mma_rows.cu`) and how a
//! block splits their work; the rows' code itself is generated with the rest of a decode
//! matmul kernel (codegen/decode.rs).

use smelt_graph::{Bundle, Op};

use super::{type_suffix, Gen, NWARPS};

/// Device functions of the batch rows on tensor cores.
pub(super) const MMA_ROWS: &str = include_str!("../cu/mma_rows.cu");

impl Gen<'_> {
    /// Whether a batch kernel's matmuls (rows of `kdim` values) take the tensor-core rows:
    /// every weight Q4_K or Q6_K (or Q8_0 where asked: no faster on SmolLM2, v18), every
    /// matmul's rows a multiple of 16.
    pub(super) fn mma_rows_fit(&self, bundles: &[Bundle], kdim: usize) -> bool {
        bundles.iter().all(|b| {
            b.width.is_multiple_of(16)
                && b.matmuls.iter().all(|&m| match self.mat_type(m) {
                    Some("q8_0") => self.batch_mma_q8_0 && kdim.is_multiple_of(32),
                    Some("q4_k" | "q6_k") => kdim.is_multiple_of(256),
                    _ => false,
                })
        })
    }

    /// The warps a column group's K units are split over: a power of two, at most `NWARPS`
    /// and at most the fewest units of the kernel's matmuls (a block then takes `NWARPS / ks`
    /// column groups of 16 rows a pass).
    pub(super) fn mma_split(&self, bundles: &[Bundle], kdim: usize) -> usize {
        let units = bundles
            .iter()
            .flat_map(|b| &b.matmuls)
            .map(|&m| mma_units(self.mat_type(m).unwrap_or("f32"), kdim))
            .min()
            .unwrap_or(1);
        let mut ks = 1;
        while ks * 2 <= units.min(NWARPS) {
            ks *= 2;
        }
        ks
    }

    /// A matmul node's weight type suffix.
    fn mat_type(&self, m: smelt_graph::NodeId) -> Option<&'static str> {
        match self.node(m).op {
            Op::MatMul { w, .. } => type_suffix(self.weight(w).dtype),
            _ => None,
        }
    }
}

/// K units of a matmul's rows of `kdim` values as the tensor-core rows walk them (a
/// super-block of 256 for the K-quants, a block of 32 for Q8_0).
pub(super) fn mma_units(ty: &str, kdim: usize) -> usize {
    match ty {
        "q8_0" => kdim / 32,
        _ => kdim / 256,
    }
}
