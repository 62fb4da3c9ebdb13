//! Prefill attention, tiled (head sizes 64, 128, 256): a block of 8-16 consecutive query rows
//! of one head (a warp each) loads each 32-key tile of K and V into shared memory once, with
//! coalesced 16-byte loads, and every warp scores and accumulates its row from there. On the
//! H100, prefill of 512 tokens: 1B 64107 vs 49511 tok/s, 8B 14736 vs 11554 against the
//! general kernel of codegen/attention.rs (`SMELT_CUDA_PREFILL_ATTN=default`).

use super::attention::{k_dot, AttnIo, CHUNK};
use super::{lit, Gen, Params};
use crate::CudaError;

impl Gen<'_> {
    /// The tiled prefill kernel takes this attention (many tokens, a head size it handles;
    /// `SMELT_CUDA_PREFILL_ATTN=default` keeps the default kernel, for the kernel lab).
    pub(super) fn tiled_prefill_attention_fits(&self, hd: usize) -> bool {
        self.t > 1
            && matches!(hd, 64 | 128 | 256)
            && std::env::var("SMELT_CUDA_PREFILL_ATTN").map_or(true, |v| v != "default")
    }

    pub(super) fn prefill_attention(&mut self, n: smelt_graph::NodeId) -> Result<(), CudaError> {
        let mut p = Params::default();
        let AttnIo {
            n_head,
            n_head_kv,
            hd,
            scale,
            window,
            kb,
            vb,
            kw,
            qbase,
            outs,
        } = self.attention_io(n, &mut p, true)?;
        let grp = n_head / n_head_kv;
        let t = self.t;
        let qr: usize = if hd == 256 { 8 } else { 16 }; // query rows (warps) per block
        let e = hd / 32;
        let hs = hd + 8; // shared row stride in halves: 16-byte reads of 8 lanes hit distinct banks
        let chunks = hd / 8; // 16-byte pieces of a K or V row
        let (kbp, vbp) = (p.p(kb), p.p(vb));
        let win = window.map_or("0".to_string(), |w| format!("max(0, p1 + 1 - {w})"));
        let body = format!(
            "__shared__ alignas(16) u16 ks[{CHUNK}][{hs}]; __shared__ alignas(16) u16 vsh[{CHUNK}][{hs}];\n\
            __shared__ alignas(16) float qsh[{qr}][{hd}]; __shared__ int span[2];\n\
            const int h = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;\n\
            const int rq = blockIdx.z * {qr} + warp; const bool live = rq < {t};\n\
            const int p1 = live ? pos[rq] : -1; const int lo = live ? {win} : 0x7fffffff;\n\
            if (tid == 0) {{ span[0] = 0x7fffffff; span[1] = -1; }}\n\
            __syncthreads();\n\
            if (lane == 0 && live) {{ atomicMin(&span[0], lo); atomicMax(&span[1], p1); }}\n\
            float* qs = qsh[warp];\n\
            for (int d = lane; d < {hd}; d += 32) qs[d] = live ? A[{qbase} + h * {hd} + d] * {sc} : 0.f;\n\
            __syncthreads();\n\
            const int klo = span[0] / {CHUNK} * {CHUNK}, khi = span[1];\n\
            {tab}\
            const u16* Kp = KV + {kbp} + (h / {grp}) * {hd}; const u16* Vp = KV + {vbp} + (h / {grp}) * {hd};\n\
            float m = -INFINITY, l = 0.f, acc[{e}];\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] = 0.f;\n\
            for (int j0 = klo; j0 <= khi; j0 += {CHUNK}) {{\n\
              for (int i = tid; i < {CHUNK} * {chunks}; i += {qr} * 32) {{ const int kr = i / {chunks}, c = (i - kr * {chunks}) * 8;\n\
                const u64 row = {krow} * {kw} + c;\n\
                *(V4*)&ks[kr][c] = *(const V4*)(Kp + row); *(V4*)&vsh[kr][c] = *(const V4*)(Vp + row); }}\n\
              __syncthreads();\n\
              if (live && j0 <= p1 && j0 + {CHUNK} > lo) {{\n\
                const int j = j0 + lane; const bool ok = j >= lo && j <= p1; float sc = -INFINITY;\n\
                if (ok) {{ float d = 0.f;\n{dot}sc = d; }}\n\
                const float mn = fmaxf(m, warp_max(sc));\n\
                const float corr = m == -INFINITY ? 0.f : __expf(m - mn); const float pj = ok ? __expf(sc - mn) : 0.f;\n\
                l = l * corr + warp_sum(pj); m = mn;\n\
                _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] *= corr;\n\
                _Pragma(\"unroll 8\") for (int jj = 0; jj < {CHUNK}; jj++) {{ const float pw = __shfl_sync(0xffffffffu, pj, jj);\n\
                  const u16* vr = &vsh[jj][lane * {e}];\n\
                  _Pragma(\"unroll\") for (int i = 0; i < {e}; i += 2) {{ const u32 w = *(const u32*)(vr + i); acc[i] += pw * h2f(w & 0xffff); acc[i + 1] += pw * h2f(w >> 16); }} }}\n\
              }}\n\
              __syncthreads();\n\
            }}\n\
            if (live) {{ _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int d = lane * {e} + i; const float v = l > 0.f ? acc[i] / l : 0.f; {outs} }} }}\n",
            sc = lit(scale),
            dot = k_dot("ks[lane]", hd),
            // One sequence's rows (the backend runs a prefill program for one sequence).
            tab = self.tab_def("0"),
            krow = self.key_row("min(j0 + kr, khi)"),
        );
        let name = self.kernel(&(qr * 32).to_string(), body, 0);
        self.launch(
            format!("attention {n_head}x{hd} (prefill, tiled)"),
            name,
            (n_head, 1, t.div_ceil(qr)),
            qr * 32,
            0,
            p,
        );
        Ok(())
    }
}
