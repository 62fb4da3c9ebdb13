//! The output projection in the decode attention cluster (v9a): one launch less per layer.
//!
//! Decode attention v5 (codegen/attention.rs) runs a thread block cluster per KV group, one
//! block per split of the keys; after the combine every block holds a share of the group's
//! output (its query heads, `grp * hd` values). The output projection `wo` is split over
//! the same groups (split-K): block (group `g`, split `s`) gathers the group's whole output
//! from the cluster's shared memory, quantises it to int8 as the gemv kernels do, and
//! computes rows `[s * RB, (s + 1) * RB)` of `wo` over the group's `grp * hd` columns into a
//! partial row of its group. The last of the groups' blocks to finish a row range (a counter
//! per split, reset by that block so graphs replay) sums the partials in group order
//! (deterministic), applies the projection's column epilogue (the residual add) and stores.
//! The block's weight slice is prefetched into L2 when the kernel starts, so the bytes
//! travel while the keys are scored.
//!
//! Taken for one-token steps when the next kernel is the projection alone (no prologue, an
//! elementwise epilogue), its weights quantised with blocks that do not straddle a group's
//! columns; `SMELT_CUDA_WO_FOLD=0` keeps the separate kernel (the kernel lab's baseline).

use std::fmt::Write;

use smelt_graph::{KernelKind, NodeId, Op};

use super::epilogue::Mode;
use super::{type_suffix, Gen, Params};
use crate::CudaError;

/// Warp turns of rows whose weight units are loaded before any is dotted.
const TURNS: usize = 4;
/// Threads of a folded kernel's blocks (`SMELT_CUDA_WO_THREADS` for the kernel lab).
const WO_THREADS: usize = 512;

/// The projection a decode attention kernel finishes (kernel `ki`, skipped in the program).
pub(super) struct WoFold {
    pub ki: usize,
    /// Threads of the cluster's blocks (at least one warp per query head of the group).
    pub threads: usize,
    m: NodeId,
    ty: &'static str,
    off: u64,
    rb: u64,
    /// Output columns (the projection's rows).
    n: usize,
    /// Weight units (`UE8_*` values) of one group's columns, of a whole row, and the bytes
    /// of one group's units in the row's first section (the whole row for GGUF's blocks,
    /// the quants for sectioned rows, layout.rs): the slice prefetched into L2.
    units: usize,
    row_units: usize,
    seg_bytes: u64,
}

impl Gen<'_> {
    /// Whether the decode attention of node `n` (kernel `ki`, a cluster of `splits`) can
    /// finish the output projection of kernel `ki + 1`.
    pub(super) fn wo_fold(&self, ki: usize, n: NodeId, splits: usize) -> Option<WoFold> {
        if !self.wo_fold || self.t != 1 || splits < 2 {
            return None;
        }
        let Op::Attention {
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.node(n).op
        else {
            return None;
        };
        let k = self.plan.kernels().get(ki + 1)?;
        let KernelKind::MatMul { input, bundles } = &k.kind else {
            return None;
        };
        if *input != n || !k.rows.is_empty() || bundles.len() != 1 {
            return None;
        }
        let b = &bundles[0];
        if b.matmuls.len() != 1 || self.epilogue_mode(b) != Mode::Column {
            return None;
        }
        let m = b.matmuls[0];
        let Op::MatMul { x, w } = self.node(m).op else {
            return None;
        };
        let wi = self.weight(w);
        let ty = type_suffix(wi.dtype)?;
        let (block, ue) = match ty {
            "q4_k" | "q5_k" | "q6_k" => (256, 64),
            "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" => (32, 32),
            _ => return None,
        };
        let kdim = self.node(x).shape[1];
        let gh = n_head / n_head_kv * hd;
        let blocks = (kdim / block) as u64;
        if x != n
            || kdim != n_head * hd
            || !gh.is_multiple_of(block)
            || !gh.is_multiple_of(32)
            || blocks == 0
        {
            return None;
        }
        let units = gh / ue;
        let row_units = kdim / ue;
        // Bytes of one unit in the row's first section.
        let unit_bytes = match crate::layout::sectioned(wi.dtype) {
            Some(sec) => sec.fields[0].1 as u64 * ue as u64 / block as u64,
            None if wi.row_bytes.is_multiple_of(row_units as u64) => {
                wi.row_bytes / row_units as u64
            }
            None => return None,
        };
        // One unit per lane per row at most for 32 lanes: wider groups keep two kernels.
        if units > 32 {
            return None;
        }
        Some(WoFold {
            ki: ki + 1,
            threads: super::lab_knob("SMELT_CUDA_WO_THREADS")
                .filter(|t| t % 32 == 0 && (32..=1024).contains(t))
                .unwrap_or(WO_THREADS),
            m,
            ty,
            off: wi.off,
            rb: wi.row_bytes,
            n: b.width,
            units,
            row_units,
            seg_bytes: unit_bytes * units as u64,
        })
    }

    /// Code of a folded projection in the cluster kernel of `splits` blocks of `nt` threads:
    /// the L2 prefetch of the block's weight slice (at the kernel's start) and the tail
    /// (after the combine, which leaves the block's `per` outputs in `cmb`; it replaces the
    /// combine's closing cluster barrier).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wo_fold_code(
        &mut self,
        f: &WoFold,
        n_head_kv: usize,
        gh: usize,
        splits: usize,
        nt: usize,
        per: usize,
        p: &mut Params,
    ) -> Result<(String, String), CudaError> {
        let WoFold {
            m,
            ty,
            off,
            rb,
            n,
            units,
            row_units,
            seg_bytes: sb,
            ..
        } = *f;
        let rbk = n.div_ceil(splits);
        let nw = nt / 32;
        let lpr = units.next_power_of_two();
        let rpt = 32 / lpr;
        let ul = units.div_ceil(lpr);
        let part = self.alloc_scratch(n_head_kv * n);
        self.counters = self.counters.max(splits);
        let wp = p.p(off);
        let pp = p.p(part as u64);
        let lines = (sb as usize).div_ceil(128) + 1;
        let b = &self.plan.kernels()[f.ki].kind;
        let KernelKind::MatMul { bundles, .. } = b else {
            unreachable!()
        };
        let epilogue = self.column_epilogue(&bundles[0], None, None, None, p)?;
        let pre = format!(
            "{{ const int R0w = s * {rbk}, R1w = min(R0w + {rbk}, {n}); const u8* Wg = W + {wp} + (u64)g * {sb};\n\
              for (int i = tid; i < (R1w - R0w) * {lines}; i += {nt}) {{ const int r = R0w + i / {lines}, o = i - (i / {lines}) * {lines};\n\
                prefetch_l2(Wg + (u64)r * {rb} + min(o * 128, {sb} - 1)); }} }}\n"
        );
        let mut tail = String::new();
        write!(
            tail,
            "cluster_sync();\n\
            {{ __shared__ alignas(16) float xg[{gh}]; __shared__ alignas(16) signed char xq8[{xq}];\n\
              __shared__ float xd8[{g32}], xs8[{g16}]; __shared__ int lastw;\n\
              for (int i = tid; i < {gh}; i += {nt}) xg[i] = ld_dsmem(&cmb[i % {per}], i / {per});\n\
              cluster_arrive();\n\
              __syncthreads();\n\
              for (int b = warp; b < {g32}; b += {nw}) {{ const float v = xg[b * 32 + lane]; const float a = warp_max(fabsf(v));\n\
                const float d = a * (1.0f / 127.0f), iv = a > 0.f ? 127.0f / a : 0.f; const int q = __float2int_rn(v * iv);\n\
                xq8[pad8(b * 32 + lane)] = (signed char)q; int sq = q;\n\
                _Pragma(\"unroll\") for (int o = 8; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);\n\
                if (lane == 0) xd8[b] = d; if ((lane & 15) == 0) xs8[2 * b + (lane >> 4)] = d * (float)sq; }}\n\
              __syncthreads();\n\
              const X8 x8 = {{xq8, xd8, xs8}};\n\
              const int R0w = s * {rbk}, R1w = min(R0w + {rbk}, {n}), sub = lane & {lm}, rl = lane / {lpr};\n\
              const u8* Wb = W + {wp};\n\
              for (int t0 = R0w + warp * {rpt}; t0 < R1w; t0 += {step}) {{\n\
                Q_{ty} wu[{TURNS}][{ul}];\n\
                _Pragma(\"unroll\") for (int b = 0; b < {TURNS}; b++) {{ const u8* wr = Wb + (u64)min(t0 + b * {turn} + rl, R1w - 1) * {rb};\n\
                  _Pragma(\"unroll\") for (int k = 0; k < {ul}; k++) ld8_{ty}(wu[b][k], wr, g * {units} + min(sub + k * {lpr}, {units} - 1), {row_units}); }}\n\
                _Pragma(\"unroll\") for (int b = 0; b < {TURNS}; b++) {{ const int r = t0 + b * {turn} + rl; float acc = 0.f;\n\
                  _Pragma(\"unroll\") for (int k = 0; k < {ul}; k++) {{ const int u = sub + k * {lpr}; if (u < {units}) acc += dot8_{ty}(wu[b][k], u, x8); }}\n\
                  _Pragma(\"unroll\") for (int o = {lpr} / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);\n\
                  if (sub == 0 && r < R1w) A[{pp} + (u64)g * {n} + r] = acc; }}\n\
              }}\n\
              __threadfence(); __syncthreads();\n\
              if (tid == 0) lastw = atomicAdd(&C[s], 1u) == {last}u;\n\
              __syncthreads();\n\
              if (lastw) {{ __threadfence();\n\
                for (int c = R0w + tid; c < R1w; c += {nt}) {{ float v = 0.f;\n\
                  for (int gg = 0; gg < {n_head_kv}; gg++) v += __ldcg(A + {pp} + (u64)gg * {n} + c);\n\
                  const int r = 0, rp = 0; (void)r; (void)rp; const float e{mid} = v;\n\
                  {epilogue}}}\n\
                if (tid == 0) C[s] = 0u; }}\n\
              cluster_wait();\n\
            }}\n",
            xq = gh + gh / 64 * 16 + 16,
            g32 = gh / 32,
            g16 = gh / 16,
            lm = lpr - 1,
            turn = nw * rpt,
            step = nw * rpt * TURNS,
            last = n_head_kv - 1,
            mid = m.0,
        )
        .unwrap();
        Ok((pre, tail))
    }
}
