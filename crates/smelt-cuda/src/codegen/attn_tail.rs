//! Decode attention in the tail of the QKV kernel (one token, short contexts).
//!
//! The standalone decode attention kernel costs ~9-10 us a layer on the H100 for well under
//! a microsecond of bytes at contexts of a few hundred keys: a launch, then a chain of
//! dependent loads and reductions (cuda.md, v5). Here the QKV matmul kernel finishes it: each
//! block, after its rows, adds the rows it computed of each KV group (that group's query
//! heads, key and value columns) to a counter per group; the block completing a group runs
//! that group's attention at once, its 16 warps splitting the keys (each key's K and V rows
//! loaded once for every query head of the group), the partial softmaxes combined in shared
//! memory. From `attn_tail` positions on, the tail does nothing and the standalone kernel
//! (which returns at once below that) takes over: one block per group would read too many
//! keys alone. A cache of at most `attn_tail` positions launches no standalone kernel.
//!
//! Off by default (`SMELT_CUDA_ATTN_TAIL=N` turns it on below N positions): on the H100 it
//! was slower than the cluster kernel it replaces, 1B 1524 -> 1285, SmolLM2 1324 -> 1077, 8B
//! 352 -> 295 tok/s, though a step launched 16-32 fewer kernels (cuda.md, v7): the group's
//! attention waits for the last of its rows and then runs in one block per KV group, a long
//! chain of dependent loads and reductions on few SMs.

use std::fmt::Write;

use smelt_graph::{Dest, KernelKind, KvPart, NodeId, Op};

use super::attention::AttnIo;
use super::{lit, Gen, Params, NT, NWARPS};
use crate::CudaError;

/// The attention a decode matmul kernel finishes in its tail: the node, and per role (query,
/// key, value) the bundle producing it and its virtual rows per KV group.
pub(super) struct Tail {
    node: NodeId,
    roles: [(usize, usize); 3],
}

impl Gen<'_> {
    /// Whether decode matmul kernel `ki` can finish the attention of kernel `ki + 1`: one
    /// token, a contiguous cache, a head size of 64-256, and every role's bundle finishing
    /// its columns in the computing warp (`inline`; `pair`: two columns per virtual row).
    pub(super) fn attention_tail(&self, ki: usize, inline: &[bool], pair: &[bool]) -> Option<Tail> {
        if self.t != 1 || self.kv.paged || self.attn_tail == 0 {
            return None;
        }
        let KernelKind::MatMul { bundles, .. } = &self.plan.kernels()[ki].kind else {
            return None;
        };
        let KernelKind::Attention { node } = self.plan.kernels().get(ki + 1)?.kind else {
            return None;
        };
        let Op::Attention {
            q,
            layer,
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.node(node).op
        else {
            return None;
        };
        if !matches!(hd, 64 | 128 | 256)
            || n_head_kv == 0
            || !n_head.is_multiple_of(n_head_kv)
            || n_head / n_head_kv * hd > 2048
        {
            return None;
        }
        let mut roles = [None; 3];
        for (bi, b) in bundles.iter().enumerate() {
            let nodes = b.matmuls.iter().chain(&b.epilogue);
            let mut role = None;
            for &n in nodes {
                if n == q {
                    role = Some(0);
                }
                for d in self.plan.dests(n) {
                    if let Dest::Kv { layer: l, part } = *d {
                        if l == layer {
                            role = Some(if part == KvPart::K { 1 } else { 2 });
                        }
                    }
                }
            }
            let Some(r) = role else { continue };
            let width = if r == 0 { n_head * hd } else { n_head_kv * hd };
            if !inline[bi] || b.width != width || roles[r].is_some() {
                return None;
            }
            let per_group = width / n_head_kv / if pair[bi] { 2 } else { 1 };
            roles[r] = Some((bi, per_group));
        }
        Some(Tail {
            node,
            roles: [roles[0]?, roles[1]?, roles[2]?],
        })
    }

    /// Whether the standalone kernel of attention node `n` is needed at all, and the guard it
    /// starts with when a QKV kernel's tail covers the short contexts.
    pub(super) fn tail_guard(&self, n: NodeId) -> Option<String> {
        if !self.tail_fused.contains(&n) {
            return Some(String::new());
        }
        let keys = self.attn_tail;
        (self.kv.capacity > keys).then(|| format!("if (pos[0] < {keys}u) return;\n"))
    }

    /// Code of the tail (after every row of the block and its tiles): `starts[bi]` is bundle
    /// `bi`'s first virtual row; `R0`, `R1` the block's rows; `cb` the first of the group
    /// counters (after the kernel's tile counters). Returns the code and the shared
    /// floats it uses (from `sm[0]`).
    pub(super) fn attention_tail_code(
        &mut self,
        tail: &Tail,
        starts: &[usize],
        cb: usize,
        p: &mut Params,
    ) -> Result<(String, usize), CudaError> {
        let io: AttnIo = self.attention_io(tail.node, p, false)?;
        self.tail_fused.insert(tail.node);
        let (n_head_kv, hd, kw) = (io.n_head_kv, io.hd, io.kw);
        let (qbase, outs) = (&io.qbase, &io.outs);
        let grp = io.n_head / n_head_kv;
        let e = hd / 32;
        self.counters = self.counters.max(cb + n_head_kv);
        let full: usize = tail.roles.iter().map(|r| r.1).sum();
        let mut own = String::new();
        for &(bi, per) in &tail.roles {
            let st = starts[bi];
            write!(
                own,
                "own += (u32)max(0, min(R1, {st} + (g + 1) * {per}) - max(R0, {st} + g * {per}));\n"
            )
            .unwrap();
        }
        // V rows in flight per lane (registers: e halves each).
        let nv = match e {
            2 => 16,
            4 => 8,
            _ => 4,
        };
        let (vty, vld, vread) = match e {
            2 => ("u32", "__ldcg((const unsigned int*)", "u32 w[1] = {vv};"),
            4 => ("uint2", "__ldcg((const uint2*)", "u32 w[2] = {vv.x, vv.y};"),
            _ => (
                "uint4",
                "__ldcg((const uint4*)",
                "u32 w[4] = {vv.x, vv.y, vv.z, vv.w};",
            ),
        };
        let win = io
            .window
            .map_or("0".to_string(), |w| format!("max(0, p1 + 1 - {w})"));
        let keys = self.attn_tail;
        let (kbp, vbp) = (p.p(io.kb), p.p(io.vb));
        let part_stride = hd + 2;
        let code = format!(
            "__shared__ int atl[{n_head_kv}]; __shared__ int antl;\n\
            if (pos[0] < {keys}u) {{\n\
            __threadfence(); __syncthreads();\n\
            if (tid == 0) {{ int n = 0;\n\
              for (int g = 0; g < {n_head_kv}; g++) {{ u32 own = 0;\n{own}\
                if (own > 0u && atomicAdd(&C[{cb} + g], own) + own == {full}u) atl[n++] = g; }}\n\
              antl = n; }}\n\
            __syncthreads(); __threadfence();\n\
            for (int ti = 0; ti < antl; ti++) {{ const int g = atl[ti];\n\
              float* qs = sm; float* part = sm + {qn};\n\
              for (int i = tid; i < {qn}; i += {NT}) qs[i] = __ldcg(A + {qbase} + (u64)g * {qn} + i) * {sc};\n\
              __syncthreads();\n\
              const int p1 = pos[0]; const int lo = {win};\n\
              float m[{grp}], l[{grp}], acc[{grp}][{e}];\n\
              _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) {{ m[h] = -INFINITY; l[h] = 0.f; _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[h][i] = 0.f; }}\n\
              const u16* Kp = KV + {kbp} + g * {hd}; const u16* Vp = KV + {vbp} + g * {hd} + lane * {e};\n\
              for (int j0 = warp * 32; j0 <= p1; j0 += {NWARPS} * 32) {{\n\
                if (j0 + 32 <= lo) continue;\n\
                const int j = j0 + lane; const bool ok = j >= lo && j <= p1;\n\
                float pj[{grp}];\n\
                {{ float d[{grp}];\n\
                  _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) d[h] = 0.f;\n\
                  if (ok) {{ const u16* kr = Kp + (u64)j * {kw};\n\
                    _Pragma(\"unroll\") for (int c = 0; c < {hd}; c += 8) {{ const uint4 kk = __ldcg((const uint4*)(kr + c));\n\
                      const float k8[8] = {{h2f(kk.x & 0xffff), h2f(kk.x >> 16), h2f(kk.y & 0xffff), h2f(kk.y >> 16), h2f(kk.z & 0xffff), h2f(kk.z >> 16), h2f(kk.w & 0xffff), h2f(kk.w >> 16)}};\n\
                      _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) {{ const float* qq = qs + h * {hd} + c;\n\
                        _Pragma(\"unroll\") for (int i = 0; i < 8; i++) d[h] += qq[i] * k8[i]; }} }} }}\n\
                  _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) {{ const float s = ok ? d[h] : -INFINITY;\n\
                    const float mn = fmaxf(m[h], warp_max(s));\n\
                    const float corr = m[h] == -INFINITY ? 0.f : __expf(m[h] - mn); pj[h] = ok ? __expf(s - mn) : 0.f;\n\
                    l[h] = l[h] * corr + warp_sum(pj[h]); m[h] = mn;\n\
                    _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[h][i] *= corr; }} }}\n\
                for (int k0 = 0; k0 < 32; k0 += {nv}) {{\n\
                  {vty} vs[{nv}];\n\
                  _Pragma(\"unroll\") for (int jj = 0; jj < {nv}; jj++) vs[jj] = {vld}(Vp + (u64)min(j0 + k0 + jj, p1) * {kw}));\n\
                  _Pragma(\"unroll\") for (int jj = 0; jj < {nv}; jj++) {{ const {vty} vv = vs[jj]; {vread}\n\
                    _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) {{ const float pw = __shfl_sync(0xffffffffu, pj[h], k0 + jj);\n\
                      _Pragma(\"unroll\") for (int i = 0; i < {e} / 2; i++) {{ acc[h][2 * i] += pw * h2f(w[i] & 0xffff); acc[h][2 * i + 1] += pw * h2f(w[i] >> 16); }} }} }}\n\
                }}\n\
              }}\n\
              _Pragma(\"unroll\") for (int h = 0; h < {grp}; h++) {{ float* pp = part + (warp * {grp} + h) * {part_stride};\n\
                if (lane == 0) {{ pp[0] = m[h]; pp[1] = l[h]; }}\n\
                _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) pp[2 + lane * {e} + i] = acc[h][i]; }}\n\
              __syncthreads();\n\
              for (int i = tid; i < {qn}; i += {NT}) {{ const int hh = i / {hd}, d = i % {hd};\n\
                float M = -INFINITY;\n\
                for (int w = 0; w < {NWARPS}; w++) M = fmaxf(M, part[(w * {grp} + hh) * {part_stride}]);\n\
                float L = 0.f, o = 0.f;\n\
                for (int w = 0; w < {NWARPS}; w++) {{ const float* pp = part + (w * {grp} + hh) * {part_stride};\n\
                  if (pp[0] == -INFINITY) continue; const float f = __expf(pp[0] - M); L += pp[1] * f; o += pp[2 + d] * f; }}\n\
                const int h = g * {grp} + hh; const float v = L > 0.f ? o / L : 0.f; {outs} }}\n\
              if (tid == 0) C[{cb} + g] = 0u;\n\
              __syncthreads();\n\
            }}\n\
            }}\n",
            qn = grp * hd,
            sc = lit(io.scale),
        );
        Ok((code, grp * hd + NWARPS * grp * part_stride))
    }
}
