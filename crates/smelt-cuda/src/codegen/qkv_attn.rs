//! v17b (kernel lab, `SMELT_CUDA_QKV_ATTN=1`, sm_90, one token, a contiguous cache): the QKV
//! matmuls computed by the decode attention kernel's blocks, one launch less a layer.
//!
//! Why: a small model's step is its launches (SmolLM2: 151 a token, each boundary 1.1-1.4 us
//! from one kernel's last block to the next one's first dependent load, cuda.md v13-v15), and
//! every design that took a kernel away measured slower because it put a longer chain in its
//! place: attention run by one block a KV group after a counter (v7b), the output projection's
//! partials summed by a last block (v9a), a grid barrier (v7a). Here the chain added is one
//! cluster barrier: the attention kernel's cluster of a KV group (16 blocks on the H100) first
//! computes that group's query, key and value rows (the QKV kernel's code, its rows of the
//! group split over the cluster's blocks), which the QKV kernel's epilogue stores as before
//! (RoPE, the f16 cache row), then `cluster_sync` (release and acquire: the rows are global
//! memory written by the cluster's other blocks), then the attention as the standalone kernel
//! computes it.
//!
//! Where: the attention kernel's tensor-core chunk (v16a or v16d) with pushed partials (the
//! extra warps, idle in the chunk's product, stage K and V), and a grid of at most half the
//! GPU's SMs (`n_head_kv * splits`: SmolLM2's 3 x 16; blocks of 512 threads take one an SM,
//! and a cluster's blocks one GPC). `SMELT_CUDA_QKV_ATTN=2` lifts the grid limit.

use super::attn_tail::Tail;
use super::{Gen, Params, NWARPS};
use smelt_graph::{KernelKind, Op};

/// A QKV kernel's body generated for the attention kernel after it.
pub(super) struct FusedQkv {
    /// The plan kernel it came from (the attention is `ki + 1`).
    pub ki: usize,
    pub body: String,
    pub p: Params,
    pub smem: usize,
    pub label: String,
}

/// How the QKV kernel's rows map to the attention grid's blocks.
pub(super) struct QkvFold {
    pub roles: [(usize, usize); 3],
    pub splits: usize,
}

impl Gen<'_> {
    /// Decode attention's splits a KV head (a cluster's blocks). `SMELT_CUDA_ATTN_SPLITS` (1 to
    /// the limit) sets them for the kernel lab (v8: each halving below 8 measured slower, 1B
    /// 1484 -> 1414 -> 1281 -> 1112 tok/s from 8 to 1).
    pub(super) fn decode_attn_splits(&self) -> usize {
        let limit = match self.cc_major {
            9 => super::attention::HOPPER_CLUSTER,
            _ => super::attention::CLUSTER,
        };
        self.attn_splits
            .or_else(|| super::lab_knob("SMELT_CUDA_ATTN_SPLITS"))
            .filter(|n| (1..=limit).contains(n))
            .unwrap_or(limit)
    }

    /// Whether decode matmul kernel `ki` (its bundles' `inline` and `pair` modes) folds into
    /// the attention kernel after it.
    pub(super) fn qkv_fold(&self, ki: usize, inline: &[bool], pair: &[bool]) -> Option<QkvFold> {
        if !self.qkv_attn
            || !self.decode
            || self.cc_major < 9
            || self.persistent
            || self.attn_tail != 0
            || self.wo_fold
            || self.stage_kb != 0
            || self.attn_mma == 0
            || super::lab_knob("SMELT_CUDA_ATTN_EARLY") == Some(0)
            || super::lab_knob("SMELT_CUDA_ATTN_PUSH") == Some(0)
        {
            return None;
        }
        let KernelKind::MatMul { bundles, .. } = &self.plan.kernels()[ki].kind else {
            return None;
        };
        let Tail { node, roles } = self.qkv_roles(ki, inline, pair)?;
        if bundles.len() != 3 {
            return None;
        }
        let Op::Attention {
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.node(node).op
        else {
            return None;
        };
        let splits = self.decode_attn_splits();
        let wide = super::lab_knob("SMELT_CUDA_QKV_ATTN") == Some(2);
        let fits = self.cluster_attention_fits(hd, n_head, n_head_kv)
            && n_head / n_head_kv <= 8
            && matches!(hd, 64 | 128)
            && splits > 1
            && (wide || n_head_kv * splits <= self.sm_count / 2);
        fits.then_some(QkvFold { roles, splits })
    }

    /// The fused rows' header: this block's KV group `fg` and split `fs`, its share `I0..I1`
    /// of the group's virtual rows, and `RMAP(i)`, the QKV kernel's row of share row `i`
    /// (`starts[bi]`: bundle `bi`'s first virtual row).
    pub(super) fn qkv_fold_header(f: &QkvFold, starts: &[usize]) -> String {
        let [(bq, pq), (bk, pk), (bv, pv)] = f.roles;
        let vg = pq + pk + pv;
        let ipb = vg.div_ceil(f.splits);
        let (sq, sk, sv) = (starts[bq], starts[bk], starts[bv]);
        format!(
            "const int fg = blockIdx.x, fs = blockIdx.y;\n\
            const int I0 = fs * {ipb}, I1 = min(I0 + {ipb}, {vg});\n\
            #define RMAP(i) ((i) < {pq} ? {sq} + fg * {pq} + (i) : (i) < {pqk} ? {sk} + fg * {pk} + (i) - {pq} : {sv} + fg * {pv} + (i) - {pqk})\n",
            pqk = pq + pk
        )
    }

    /// The rows loop of a decode matmul body over `code` (which reads `R`): the block's rows
    /// `R0..R1`, or with a fold its share of the group's rows.
    pub(super) fn rows_loop(fold: bool, code: &str) -> String {
        match fold {
            false => format!(
                "for (int R = R0 + warp; R < R1; R += {NWARPS}) {{\n{code}if (R == R0) TRACE_MARK(2);\n}}\n"
            ),
            true => format!(
                "for (int ii = I0 + warp; ii < I1; ii += {NWARPS}) {{ const int R = RMAP(ii);\n{code}if (ii == I0) TRACE_MARK(2);\n}}\n"
            ),
        }
    }

    /// A warp's `k`-th row (`k` an expression) of a decode matmul body, `code` in scope.
    pub(super) fn warp_row(fold: bool, k: &str, code: &str) -> String {
        match fold {
            false => format!("{{ const int R = R0 + warp{k}; if (R < R1) {{\n{code}}} }}\n"),
            true => format!(
                "{{ const int ii = I0 + warp{k}; if (ii < I1) {{ const int R = RMAP(ii);\n{code}}} }}\n"
            ),
        }
    }
}
