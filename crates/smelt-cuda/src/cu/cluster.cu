// Device functions of the v14b cluster kernel (codegen/cluster.rs), not inlined: one copy
// serves every layer (inlined, a 30-layer model's kernel was 549 KB of source and 127 s of
// NVRTC). Appended after the prelude when a program takes the cluster kernel.
// v14b (codegen/cluster.rs): the int8 row of x (k values, kp padded) as the gemv kernels read it.
__device__ __noinline__ void cl_quant(const float* x, int k, int kp, signed char* xq, float* xd, float* xs) {
  const int tid = threadIdx.x, lane = tid & 31;
  for (int c0 = tid * 8; c0 < kp; c0 += blockDim.x * 8) { float v[8];
    _Pragma("unroll") for (int i = 0; i < 8; i++) { const int c = c0 + i; v[i] = c < k ? x[c] : 0.f; }
    float a = 0.f; _Pragma("unroll") for (int i = 0; i < 8; i++) a = fmaxf(a, fabsf(v[i]));
    a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 1)); a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 2));
    const float d = a * (1.0f / 127.0f), iv = a > 0.f ? 127.0f / a : 0.f; int sq = 0; u32 pk[2] = {0u, 0u};
    _Pragma("unroll") for (int i = 0; i < 8; i++) { const int q = __float2int_rn(v[i] * iv); sq += q; pk[i >> 2] |= ((u32)(q & 0xff)) << (8 * (i & 3)); }
    uint2 pw; pw.x = pk[0]; pw.y = pk[1]; *(uint2*)(xq + pad8(c0)) = pw;
    sq += __shfl_xor_sync(0xffffffffu, sq, 1);
    if ((lane & 1) == 0) xs[c0 >> 4] = d * (float)sq; if ((lane & 3) == 0) xd[c0 >> 5] = d; }
}
// y = x / rms(x) * w over groups of `group` values (w may be null); `red` 16 floats.
__device__ __noinline__ void cl_rmsnorm(const float* x, const float* w, float* y, int cols, int group, float eps, float* red) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  if (group == cols) {
    float ss = 0.f; for (int c = tid; c < cols; c += blockDim.x) { const float v = x[c]; ss += v * v; }
    ss = warp_sum(ss); if (lane == 0) red[warp] = ss; __syncthreads();
    ss = 0.f; for (int i = 0; i < nw; i++) ss += red[i];
    const float sc = rms_scale(ss, (float)cols, eps);
    for (int c = tid; c < cols; c += blockDim.x) y[c] = x[c] * sc * (w ? w[c] : 1.0f);
    __syncthreads();
  } else {
    for (int gi = warp; gi < cols / group; gi += nw) { float ss = 0.f;
      for (int c = gi * group + lane; c < (gi + 1) * group; c += 32) { const float v = x[c]; ss += v * v; }
      ss = warp_sum(ss); const float sc = rms_scale(ss, (float)group, eps);
      for (int c = gi * group + lane; c < (gi + 1) * group; c += 32) y[c] = x[c] * sc * (w ? w[c - gi * group] : 1.0f); }
  }
}
__device__ __noinline__ void cl_issue(u64* bar, u8* dst, u64 src, u32 n) { mbar_expect(bar, n); if (n) bulk_g2s(dst, (const u8*)src, n, bar); }
// Rows c0..c1 of a matmul (row r at base + (r - c0) * rb), a warp a row, each value stored
// into every block's `out`.
#define DEF_CL_ROWS(T) \
__device__ __noinline__ void cl_rows_##T(const u8* base, int c0, int c1, u64 rb, int units, const X8 x8, float* out, u32 nb) { \
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5; \
  for (int rr = c0 + warp; rr < c1; rr += nw) { const float v = gemv8_##T(base + (u64)(rr - c0) * rb, units, x8); \
    if (lane < (int)nb) st_dsmem(out + rr, (u32)lane, v); } \
}
// This block's keys (chunks of 32: rank, rank + nb, ...) for every query head: each head's
// partial softmax (m, l, HD outputs) into `part`. K/V rows of `width` halves; the current
// position p0's key and value from `kc`, `vc`.
template <int HD> __device__ __noinline__ void cl_attn_part(const float* q, const float* kc, const float* vc, const u16* K, const u16* V,
    int width, int n_head, int grp, float scale, int jlo, int p0, u32 rank, u32 nb, float* part) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5; constexpr int DL = HD / 32;
  for (int h = warp; h < n_head; h += nw) { const int g = h / grp; const float* qh = q + h * HD;
    float m = -INFINITY, l = 0.f, acc[DL]; _Pragma("unroll") for (int i = 0; i < DL; i++) acc[i] = 0.f;
    for (int ch = (int)rank; ch * 32 <= p0; ch += (int)nb) { const int j = ch * 32 + lane;
      if (ch * 32 + 31 < jlo) continue;
      const bool ok = j <= p0 && j >= jlo; float sc = -INFINITY;
      if (ok) { float dot = 0.f;
        if (j == p0) { for (int d = 0; d < HD; d++) dot += qh[d] * kc[g * HD + d]; }
        else { const u16* kr = K + (u64)j * width + g * HD;
          _Pragma("unroll") for (int d0 = 0; d0 < HD; d0 += 8) { const V4 w4 = *(const V4*)(kr + d0); const u32 ws[4] = {w4.x, w4.y, w4.z, w4.w};
            _Pragma("unroll") for (int i = 0; i < 4; i++) dot += qh[d0 + 2 * i] * h2f((u16)(ws[i] & 0xffff)) + qh[d0 + 2 * i + 1] * h2f((u16)(ws[i] >> 16)); } }
        sc = dot * scale; }
      const float cm = warp_max(sc), nm = fmaxf(m, cm);
      const float corr = m == -INFINITY ? 0.f : __expf(m - nm), pj = ok ? __expf(sc - nm) : 0.f;
      l = l * corr + warp_sum(pj); m = nm;
      _Pragma("unroll") for (int i = 0; i < DL; i++) acc[i] *= corr;
      // The chunk's 32 value rows loaded before any is used (a load a row in turn was 32
      // dependent round trips a chunk).
      _Pragma("unroll") for (int i = 0; i < DL; i++) { u16 t[32];
        _Pragma("unroll") for (int jj = 0; jj < 32; jj++) { const int jv = ch * 32 + jj;
          t[jj] = (jv < p0 && jv >= jlo) ? V[(u64)jv * width + g * HD + lane + 32 * i] : (u16)0; }
        float a = acc[i];
        _Pragma("unroll") for (int jj = 0; jj < 32; jj++) { const float pw = __shfl_sync(0xffffffffu, pj, jj);
          a += pw * (ch * 32 + jj == p0 ? vc[g * HD + lane + 32 * i] : h2f(t[jj])); }
        acc[i] = a; }
    }
    float* pp = part + h * (HD + 2);
    if (lane == 0) { pp[0] = m; pp[1] = l; }
    _Pragma("unroll") for (int i = 0; i < DL; i++) pp[2 + lane + 32 * i] = acc[i];
  }
}
// Heads rank, rank + nb, ... merged from every block's partials, stored into every block's `out`.
template <int HD> __device__ __noinline__ void cl_attn_merge(float* part, float* out, int n_head, u32 rank, u32 nb) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5; constexpr int DL = HD / 32;
  for (int h = (int)rank + (int)nb * warp; h < n_head; h += (int)nb * nw) {
    const float mr = lane < (int)nb ? ld_dsmem(part + h * (HD + 2), (u32)lane) : -INFINITY;
    const float lr = lane < (int)nb ? ld_dsmem(part + h * (HD + 2) + 1, (u32)lane) : 0.f;
    const float M = warp_max(mr); const float wr = mr == -INFINITY ? 0.f : __expf(mr - M);
    const float L = warp_sum(lr * wr);
    float acc[DL]; _Pragma("unroll") for (int i = 0; i < DL; i++) acc[i] = 0.f;
    for (int rr = 0; rr < (int)nb; rr++) { const float w = __shfl_sync(0xffffffffu, wr, rr); if (w == 0.f) continue;
      _Pragma("unroll") for (int i = 0; i < DL; i++) acc[i] += w * ld_dsmem(part + h * (HD + 2) + 2 + lane + 32 * i, (u32)rr); }
    const float il = L > 0.f ? 1.0f / L : 0.f;
    for (int rr = 0; rr < (int)nb; rr++) _Pragma("unroll") for (int i = 0; i < DL; i++) st_dsmem(out + h * HD + lane + 32 * i, (u32)rr, acc[i] * il);
  }
}
