// v17c (codegen/decode.rs; steps of 8 rows by default, `SMELT_CUDA_BATCH_MMA=n`): a batch
// step's matmul rows on tensor cores. A warp takes 16 weight rows (the A operand of `mma.sync` m16n8k32 or
// m16n8k16 with int8 inputs, straight from the quantised row: nibbles masked, Q6_K's high bits
// or'ed in) against the batch's int8 activation rows (B: sequence n is column n, up to 8),
// one product a 32-value block (16 for Q6_K's 16-value scales), its int32 sums scaled by the
// weight's and the activation's block scales into f32. Lane (g, t) ends with rows g and g + 8
// of sequences 2t and 2t + 1: v[0] (g, 2t), v[1] (g, 2t + 1), v[2] (g + 8, 2t), v[3] (g + 8,
// 2t + 1), returned as x, y, z, w (a function of its own, not inlined: the calls of a kernel's
// bundles compile once, where inlined copies took NVRTC and ptxas over a minute for the 1B's
// batch steps): the caller splits a row's K units [u0, u1) over warps (a
// super-block of 256 values for the K-quants, a block of 32 for Q8_0) and sums their parts.
// Activation rows are XS floats apart (gemv8n's layout); rows from `nr` on are zero.
__device__ __forceinline__ void imma_k32(int* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void imma_k16(int* c, u32 a0, u32 a1, u32 b0) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3]) : "r"(a0), "r"(a1), "r"(b0));
}
// The B fragment word of this lane: sequence n's int8 values k .. k + 3 (zero past nr). The
// loads are branch-free (a row clamped, the value selected): `mma.sync.aligned` needs the
// warp converged, and a load skipped by a branch left it diverged where nr < 8.
template <int XS> __device__ __forceinline__ u32 mma_xw(const X8& x, int n, int nr, int k) {
  const u32 w = *(const u32*)(x.q + min(n, nr - 1) * XS * 4 + pad8(k));
  return n < nr ? w : 0u;
}
template <int XS> __device__ __forceinline__ float mma_xd(const X8& x, int n, int nr, int b) {
  const float d = x.d[min(n, nr - 1) * XS + b];
  return n < nr ? d : 0.f;
}
template <int XS> __device__ __forceinline__ float mma_xs(const X8& x, int n, int nr, int h) {
  const float s = x.s[min(n, nr - 1) * XS + h];
  return n < nr ? s : 0.f;
}

// Q8_0 (sectioned rows: every block's 32 int8, then every block's f16 d).
template <int XS> __device__ __noinline__ float4 mmar_q8_0(const u8* W, u64 rb, int K, int u0, int u1, const X8 x, int nr) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, nu = K >> 5;
  const u8* r0 = W + (u64)g * rb; const u8* r1 = r0 + 8 * rb;
#pragma unroll 4
  for (int u = u0; u < u1; u++) {
    const u32 a0 = ld32(r0 + 32 * u + 4 * t), a2 = ld32(r0 + 32 * u + 16 + 4 * t);
    const u32 a1 = ld32(r1 + 32 * u + 4 * t), a3 = ld32(r1 + 32 * u + 16 + 4 * t);
    const float d0 = h2f(ld16(r0 + 32 * nu + 2 * u)), d1 = h2f(ld16(r1 + 32 * nu + 2 * u));
    int c[4] = {0, 0, 0, 0};
    imma_k32(c, a0, a1, a2, a3, mma_xw<XS>(x, g, nr, 32 * u + 4 * t), mma_xw<XS>(x, g, nr, 32 * u + 16 + 4 * t));
    const float x0 = mma_xd<XS>(x, 2 * t, nr, u), x1 = mma_xd<XS>(x, 2 * t + 1, nr, u);
    v[0] += d0 * x0 * (float)c[0]; v[1] += d0 * x1 * (float)c[1];
    v[2] += d1 * x0 * (float)c[2]; v[3] += d1 * x1 * (float)c[3];
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}

// Q4_K: 144-byte blocks of 256 values (d, dmin, 12 scale bytes, 128 bytes of nibbles: chunk j's
// 32 bytes hold sub-block 2j in the low nibbles, 2j + 1 in the high ones).
template <int XS> __device__ __noinline__ float4 mmar_q4_k(const u8* W, u64 rb, int K, int u0, int u1, const X8 x, int nr) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const u8* r0 = W + (u64)g * rb; const u8* r1 = r0 + 8 * rb;
  for (int sb = u0; sb < u1; sb++) {
    const u8* b0 = r0 + sb * 144; const u8* b1 = r1 + sb * 144;
    const V4 h0 = *(const V4*)b0, h1 = *(const V4*)b1;
    u32 lo0[4], hi0[4], lo1[4], hi1[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      lo0[j] = ld32(b0 + 16 + 32 * j + 4 * t); hi0[j] = ld32(b0 + 32 + 32 * j + 4 * t);
      lo1[j] = ld32(b1 + 16 + 32 * j + 4 * t); hi1[j] = ld32(b1 + 32 + 32 * j + 4 * t);
    }
    const float d0 = h2f(h0.x & 0xffff), m0 = h2f(h0.x >> 16), d1 = h2f(h1.x & 0xffff), m1 = h2f(h1.x >> 16);
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int sh = 4 * e, s = 8 * sb + 2 * j + e;
        int c[4] = {0, 0, 0, 0};
        imma_k32(c, (lo0[j] >> sh) & M4, (lo1[j] >> sh) & M4, (hi0[j] >> sh) & M4, (hi1[j] >> sh) & M4,
                 mma_xw<XS>(x, g, nr, 32 * s + 4 * t), mma_xw<XS>(x, g, nr, 32 * s + 16 + 4 * t));
        float sc0, mn0, sc1, mn1; sm_k4(h0, 2 * j + e, sc0, mn0); sm_k4(h1, 2 * j + e, sc1, mn1);
        const float x0 = mma_xd<XS>(x, 2 * t, nr, s), x1 = mma_xd<XS>(x, 2 * t + 1, nr, s);
        const float s0 = mma_xs<XS>(x, 2 * t, nr, 2 * s) + mma_xs<XS>(x, 2 * t, nr, 2 * s + 1);
        const float s1 = mma_xs<XS>(x, 2 * t + 1, nr, 2 * s) + mma_xs<XS>(x, 2 * t + 1, nr, 2 * s + 1);
        v[0] += d0 * sc0 * x0 * (float)c[0] - m0 * mn0 * s0; v[1] += d0 * sc0 * x1 * (float)c[1] - m0 * mn0 * s1;
        v[2] += d1 * sc1 * x0 * (float)c[2] - m1 * mn1 * s0; v[3] += d1 * sc1 * x1 * (float)c[3] - m1 * mn1 * s1;
      }
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}

// Q6_K (sectioned rows: every block's 128 bytes of ql, then 64 of qh, 16 of scales, 2 of d):
// value l of 32-value chunk ch = 4n + q of block bi: ql byte 128 bi + 64 n + 32 (q & 1) + l
// (nibble q >> 1), qh byte 64 bi + 32 n + l (bits 2q); a scale per 16 values, so one k16
// product each.
template <int XS> __device__ __noinline__ float4 mmar_q6_k(const u8* W, u64 rb, int K, int u0, int u1, const X8 x, int nr) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, nb = K >> 8;
  const u8* r0 = W + (u64)g * rb; const u8* r1 = r0 + 8 * rb;
  for (int bi = u0; bi < u1; bi++) {
    const float d0 = h2f(ld16(r0 + 208 * nb + 2 * bi)), d1 = h2f(ld16(r1 + 208 * nb + 2 * bi));
    const V4 sw0 = *(const V4*)(r0 + 192 * nb + 16 * bi), sw1 = *(const V4*)(r1 + 192 * nb + 16 * bi);
    const u32 sa0[4] = {sw0.x, sw0.y, sw0.z, sw0.w}, sa1[4] = {sw1.x, sw1.y, sw1.z, sw1.w};
#pragma unroll
    for (int n = 0; n < 2; n++) {
      u32 ql0[2][2], ql1[2][2], qh0[2], qh1[2];
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
#pragma unroll
        for (int q1 = 0; q1 < 2; q1++) {
          ql0[q1][hh] = ld32(r0 + 128 * bi + 64 * n + 32 * q1 + 16 * hh + 4 * t);
          ql1[q1][hh] = ld32(r1 + 128 * bi + 64 * n + 32 * q1 + 16 * hh + 4 * t);
        }
        qh0[hh] = ld32(r0 + 128 * nb + 64 * bi + 32 * n + 16 * hh + 4 * t);
        qh1[hh] = ld32(r1 + 128 * nb + 64 * bi + 32 * n + 16 * hh + 4 * t);
      }
#pragma unroll
      for (int q = 0; q < 4; q++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
          const int ch = 4 * n + q, k = 256 * bi + 32 * ch + 16 * hh, sh = 4 * (q >> 1);
          const u32 a0 = ((ql0[q & 1][hh] >> sh) & M4) | (((qh0[hh] >> (2 * q)) & 0x03030303u) << 4);
          const u32 a1 = ((ql1[q & 1][hh] >> sh) & M4) | (((qh1[hh] >> (2 * q)) & 0x03030303u) << 4);
          int c[4] = {0, 0, 0, 0};
          imma_k16(c, a0, a1, mma_xw<XS>(x, g, nr, k + 4 * t));
          const int si = 2 * ch + hh;
          const float sc0 = (float)(signed char)((sa0[si >> 2] >> (8 * (si & 3))) & 255);
          const float sc1 = (float)(signed char)((sa1[si >> 2] >> (8 * (si & 3))) & 255);
          const float x0 = mma_xd<XS>(x, 2 * t, nr, k >> 5), x1 = mma_xd<XS>(x, 2 * t + 1, nr, k >> 5);
          const float s0 = 32.0f * mma_xs<XS>(x, 2 * t, nr, k >> 4), s1 = 32.0f * mma_xs<XS>(x, 2 * t + 1, nr, k >> 4);
          v[0] += d0 * sc0 * (x0 * (float)c[0] - s0); v[1] += d0 * sc0 * (x1 * (float)c[1] - s1);
          v[2] += d1 * sc1 * (x0 * (float)c[2] - s0); v[3] += d1 * sc1 * (x1 * (float)c[3] - s1);
        }
    }
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}
