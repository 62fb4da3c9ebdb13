//! Prefill attention. v16c (default on sm_80+ for 64- and 128-wide heads in groups of at most
//! 8): tensor cores, a block per KV head and tile of query rows (`mma_prefill_attention`);
//! H100, prefill of 512 tokens: 1B +19%, 8B +15%, SmolLM2 +21% against the tiled kernel.
//! The tiled kernel (head sizes 64, 128, 256; `SMELT_CUDA_PREFILL_ATTN=tiled`): a block of
//! 8-16 consecutive query rows of one head (a warp each) loads each 32-key tile of K and V
//! into shared memory once, with coalesced 16-byte loads, and every warp scores and
//! accumulates its row from there. On the H100, prefill of 512 tokens: 1B 64107 vs 49511
//! tok/s, 8B 14736 vs 11554 against the general kernel of codegen/attention.rs
//! (`SMELT_CUDA_PREFILL_ATTN=default`).

use super::attention::{AttnIo, CHUNK};
use super::attn_chunk::scalar_chunk;
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
              {chunk}\n\
              __syncthreads();\n\
            }}\n\
            if (live) {{ _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int d = lane * {e} + i; const float v = l > 0.f ? acc[i] / l : 0.f; {outs} }} }}\n",
            sc = lit(scale),
            chunk = scalar_chunk(hd, "live && j0 <= p1 && ", "ks[lane]", "vsh[jj]"),
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

    /// v16c: prefill attention on tensor cores where a KV group has at most 8 heads of 64 or
    /// 128 dims on an sm_80+ GPU (`SMELT_CUDA_PREFILL_ATTN=tiled` keeps the kernel above).
    pub(super) fn mma_prefill_attention_fits(&self, hd: usize, grp: usize) -> bool {
        self.cc_major >= 8
            && matches!(hd, 64 | 128)
            && (1..=8).contains(&grp)
            && std::env::var("SMELT_CUDA_PREFILL_ATTN").map_or(true, |v| v != "tiled")
    }

    /// v16c: a block per KV head and tile of `R` consecutive query rows (16 for groups of 4
    /// or more heads, up to 64 for one), a warp per (query head, 16 rows): each 32-key tile
    /// of K and V goes to shared memory once for the group's heads, and each warp computes
    /// S = Q K^T for its 16 rows on tensor cores (`mma` m16n8k16; the scaled query as two f16
    /// halves, the value rounded and what rounding lost, in registers as A fragments; K's B
    /// fragments by `ldmatrix`), masks every key outside its row's `lo..=p1`, keeps each row's
    /// running max and sum over its lane quad, and adds P V with P's f16 fragments as A and
    /// V's by a transposing `ldmatrix` (FlashAttention-2's order). Key rows past the block's
    /// last position are clamped to it (written, finite, their probability 0).
    pub(super) fn mma_prefill_attention(
        &mut self,
        n: smelt_graph::NodeId,
    ) -> Result<(), CudaError> {
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
        let tiles = 4usize.div_ceil(grp).min(4); // 16-row tiles a block
        let rows = 16 * tiles;
        let nt = 32 * grp * tiles;
        let (hs, pieces, ks, dn) = (hd + 8, hd / 8, hd / 16, hd / 8);
        let (kbp, vbp) = (p.p(kb), p.p(vb));
        let win = |p1: &str| window.map_or("0".to_string(), |w| format!("max(0, {p1} + 1 - {w})"));
        let sc = lit(scale);
        let body = format!(
            "__shared__ alignas(16) u16 ks[{CHUNK}][{hs}]; __shared__ alignas(16) u16 vsh[{CHUNK}][{hs}]; __shared__ int span[2];\n\
            const int g = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;\n\
            const int hh = warp % {grp}, h = g * {grp} + hh, r0 = blockIdx.z * {rows} + (warp / {grp}) * 16;\n\
            const int ra = r0 + (lane >> 2), rb = ra + 8;\n\
            const int pa = ra < {t} ? (int)pos[ra] : -1, pb = rb < {t} ? (int)pos[rb] : -1;\n\
            const int la = ra < {t} ? {wa} : 0x7fffffff, lb = rb < {t} ? {wb} : 0x7fffffff;\n\
            if (tid == 0) {{ span[0] = 0x7fffffff; span[1] = -1; }}\n\
            __syncthreads();\n\
            if (tid < {rows} && blockIdx.z * {rows} + tid < {t}) {{ const int p1 = pos[blockIdx.z * {rows} + tid]; atomicMin(&span[0], {wp}); atomicMax(&span[1], p1); }}\n\
            u32 qa[2][{ks}][4];\n\
            _Pragma(\"unroll\") for (int i = 0; i < {ks}; i++) _Pragma(\"unroll\") for (int f = 0; f < 4; f++) {{\n\
              const int r = (f & 1) ? rb : ra, d = 16 * i + 2 * (lane & 3) + 8 * (f >> 1);\n\
              float v0 = 0.f, v1 = 0.f;\n\
              if (r < {t}) {{ v0 = fminf(fmaxf(A[{qbase_rf} + h * {hd} + d] * {sc}, -65504.f), 65504.f); v1 = fminf(fmaxf(A[{qbase_rf} + h * {hd} + d + 1] * {sc}, -65504.f), 65504.f); }}\n\
              const u16 h0 = f2h(v0), h1 = f2h(v1);\n\
              qa[0][i][f] = (u32)h0 | ((u32)h1 << 16); qa[1][i][f] = (u32)f2h(v0 - h2f(h0)) | ((u32)f2h(v1 - h2f(h1)) << 16); }}\n\
            __syncthreads();\n\
            const int klo = span[0] / {CHUNK} * {CHUNK}, khi = span[1];\n\
            {tab}\
            const u16* Kp = KV + {kbp} + g * {hd}; const u16* Vp = KV + {vbp} + g * {hd};\n\
            int wmax = max(pa, pb); // the warp's last position: tiles past it are skipped by the whole warp\n\
            _Pragma(\"unroll\") for (int x = 16; x > 0; x >>= 1) wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, x));\n\
            float ma = -INFINITY, mb = -INFINITY, lsa = 0.f, lsb = 0.f, o[{dn}][4];\n\
            _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ o[i][0] = 0.f; o[i][1] = 0.f; o[i][2] = 0.f; o[i][3] = 0.f; }}\n\
            for (int j0 = klo; j0 <= khi; j0 += {CHUNK}) {{\n\
              for (int i = tid; i < {CHUNK} * {pieces}; i += {nt}) {{ const int kr = i / {pieces}, c = (i - kr * {pieces}) * 8;\n\
                const u64 row = {krow} * {kw} + c;\n\
                *(V4*)&ks[kr][c] = *(const V4*)(Kp + row); *(V4*)&vsh[kr][c] = *(const V4*)(Vp + row); }}\n\
              __syncthreads();\n\
              if (j0 <= wmax) {{\n\
                float sa[4][4], sb[4][4];\n\
                _Pragma(\"unroll\") for (int u = 0; u < 4; u++) _Pragma(\"unroll\") for (int c = 0; c < 4; c++) {{ sa[u][c] = 0.f; sb[u][c] = 0.f; }}\n\
                _Pragma(\"unroll\") for (int i = 0; i < {ks}; i++) _Pragma(\"unroll\") for (int u = 0; u < 4; u += 2) {{ u32 kf[4];\n\
                  ldsm4(kf, &ks[u * 8 + (lane >> 4) * 8 + (lane & 7)][16 * i + ((lane >> 3) & 1) * 8]);\n\
                  mma_full(sa[u], qa[0][i], kf[0], kf[1]); mma_full(sa[u + 1], qa[0][i], kf[2], kf[3]);\n\
                  mma_full(sb[u], qa[1][i], kf[0], kf[1]); mma_full(sb[u + 1], qa[1][i], kf[2], kf[3]); }}\n\
                float xa = -INFINITY, xb = -INFINITY;\n\
                _Pragma(\"unroll\") for (int u = 0; u < 4; u++) _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{\n\
                  const int j = j0 + 8 * u + 2 * (lane & 3) + c;\n\
                  sa[u][c] = (j >= la && j <= pa) ? sa[u][c] + sb[u][c] : -INFINITY; xa = fmaxf(xa, sa[u][c]);\n\
                  sa[u][c + 2] = (j >= lb && j <= pb) ? sa[u][c + 2] + sb[u][c + 2] : -INFINITY; xb = fmaxf(xb, sa[u][c + 2]); }}\n\
                xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1)); xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));\n\
                xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1)); xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));\n\
                const float na = fmaxf(ma, xa), nb = fmaxf(mb, xb);\n\
                const float ca = ma == -INFINITY ? 0.f : __expf(ma - na), cb = mb == -INFINITY ? 0.f : __expf(mb - nb);\n\
                float qa_ = 0.f, qb_ = 0.f; u32 pf[2][4];\n\
                _Pragma(\"unroll\") for (int u = 0; u < 4; u++) {{\n\
                  const float e0 = sa[u][0] == -INFINITY ? 0.f : __expf(sa[u][0] - na), e1 = sa[u][1] == -INFINITY ? 0.f : __expf(sa[u][1] - na);\n\
                  const float e2 = sa[u][2] == -INFINITY ? 0.f : __expf(sa[u][2] - nb), e3 = sa[u][3] == -INFINITY ? 0.f : __expf(sa[u][3] - nb);\n\
                  qa_ += e0 + e1; qb_ += e2 + e3;\n\
                  pf[u >> 1][2 * (u & 1)] = pack2(e0, e1); pf[u >> 1][2 * (u & 1) + 1] = pack2(e2, e3); }}\n\
                qa_ += __shfl_xor_sync(0xffffffffu, qa_, 1); qa_ += __shfl_xor_sync(0xffffffffu, qa_, 2);\n\
                qb_ += __shfl_xor_sync(0xffffffffu, qb_, 1); qb_ += __shfl_xor_sync(0xffffffffu, qb_, 2);\n\
                lsa = lsa * ca + qa_; lsb = lsb * cb + qb_; ma = na; mb = nb;\n\
                _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ o[i][0] *= ca; o[i][1] *= ca; o[i][2] *= cb; o[i][3] *= cb; }}\n\
                _Pragma(\"unroll\") for (int kk = 0; kk < 2; kk++) {{\n\
                  const u16* vrow = &vsh[16 * kk + ((lane >> 3) & 1) * 8 + (lane & 7)][(lane >> 4) * 8];\n\
                  _Pragma(\"unroll\") for (int i = 0; i < {dn}; i += 2) {{ u32 vf[4]; ldsm4t(vf, vrow + 8 * i);\n\
                    mma_full(o[i], pf[kk], vf[0], vf[1]); mma_full(o[i + 1], pf[kk], vf[2], vf[3]); }} }}\n\
              }}\n\
              __syncthreads();\n\
            }}\n\
            _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) _Pragma(\"unroll\") for (int c = 0; c < 4; c++) {{\n\
              const int rq = c < 2 ? ra : rb; const float l = c < 2 ? lsa : lsb;\n\
              if (rq < {t}) {{ const int d = 8 * i + 2 * (lane & 3) + (c & 1); const float v = l > 0.f ? o[i][c] / l : 0.f; {outs} }} }}\n",
            wa = win("pa"),
            wb = win("pb"),
            wp = win("p1"),
            qbase_rf = qbase.replace("(u64)rq", "(u64)r"),
            // One sequence's rows (the backend runs a prefill program for one sequence).
            tab = self.tab_def("0"),
            krow = self.key_row("min(j0 + kr, khi)"),
        );
        let name = self.kernel(&nt.to_string(), body, 0);
        self.launch(
            format!("attention {n_head}x{hd} (prefill, tensor cores)"),
            name,
            (n_head_kv, 1, t.div_ceil(rows)),
            nt,
            0,
            p,
        );
        Ok(())
    }
}
