// smelt CUDA prelude: helpers shared by every generated kernel. No headers: NVRTC compiles
// this alone, so half floats are handled through PTX conversions on raw 16-bit values.
#define INFINITY __int_as_float(0x7f800000)
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
struct alignas(16) V4 { u32 x, y, z, w; };
struct alignas(16) F4 { float x, y, z, w; };

__device__ __forceinline__ float h2f(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }
__device__ __forceinline__ u32 ld32_2(const u8* p) { return (u32)ld16(p) | ((u32)ld16(p + 2) << 16); }
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float silu_f(float a) { return a / (1.0f + expf(-a)); }
__device__ __forceinline__ float gelu_f(float x) {
  return 0.5f * x * (1.0f + tanhf(0.7978846f * x * (1.0f + 0.044715f * x * x)));
}
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, float& sc, float& m) {
  if (j < 4) { sc = (float)(q[j] & 63); m = (float)(q[j + 4] & 63); }
  else {
    sc = (float)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// ---- element dequantisation: value k of a weight row (embedding rows, prefill tiles) ----
__device__ float deq_f32(const u8* r, int k) { return ((const float*)r)[k]; }
__device__ float deq_f16(const u8* r, int k) { return h2f(((const u16*)r)[k]); }
__device__ float deq_bf16(const u8* r, int k) { return bf2f(((const u16*)r)[k]); }
__device__ float deq_q4_0(const u8* r, int k) {
  const u8* b = r + (k >> 5) * 18; int j = k & 31;
  int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
  return h2f(ld16(b)) * (float)(q - 8);
}
__device__ float deq_q4_1(const u8* r, int k) {
  const u8* b = r + (k >> 5) * 20; int j = k & 31;
  int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
  return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
}
__device__ float deq_q5_0(const u8* r, int k) {
  const u8* b = r + (k >> 5) * 22; int j = k & 31;
  u32 qh = ld32_2(b + 2);
  int q = j < 16 ? ((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) : ((b[6 + j - 16] >> 4) | (((qh >> j) & 1) << 4));
  return h2f(ld16(b)) * (float)(q - 16);
}
__device__ float deq_q5_1(const u8* r, int k) {
  const u8* b = r + (k >> 5) * 24; int j = k & 31;
  u32 qh = ld32_2(b + 4);
  int q = j < 16 ? ((b[8 + j] & 15) | (((qh >> j) & 1) << 4)) : ((b[8 + j - 16] >> 4) | (((qh >> j) & 1) << 4));
  return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
}
__device__ float deq_q8_0(const u8* r, int k) {
  const u8* b = r + (k >> 5) * 34;
  return h2f(ld16(b)) * (float)(signed char)b[2 + (k & 31)];
}
__device__ float deq_q4_k(const u8* r, int k) {
  const u8* b = r + (k >> 8) * 144; int e = k & 255; int c = e >> 6, l = e & 31, hi = (e >> 5) & 1;
  float sc, m; scale_min_k4(2 * c + hi, b + 4, sc, m);
  int q = (b[16 + 32 * c + l] >> (4 * hi)) & 15;
  return h2f(ld16(b)) * sc * (float)q - h2f(ld16(b + 2)) * m;
}
__device__ float deq_q5_k(const u8* r, int k) {
  const u8* b = r + (k >> 8) * 176; int e = k & 255; int g = e >> 5, l = e & 31;
  float sc, m; scale_min_k4(g, b + 4, sc, m);
  int q = ((b[48 + 32 * (g >> 1) + l] >> (4 * (g & 1))) & 15) | (((b[16 + l] >> g) & 1) << 4);
  return h2f(ld16(b)) * sc * (float)q - h2f(ld16(b + 2)) * m;
}
__device__ float deq_q6_k(const u8* r, int k) {
  const u8* b = r + (k >> 8) * 210; int e = k & 255; int ch = e >> 5, l = e & 31; int n = ch >> 2, g = ch & 3;
  int q = ((b[64 * n + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15) | (((b[128 + 32 * n + l] >> (2 * g)) & 3) << 4);
  float d = h2f(ld16(b + 208));
  return d * (float)((signed char)b[192 + 2 * ch + (l >> 4)]) * (float)(q - 32);
}

// ---- decode gemv units: a lane loads one unit of a weight row (16-byte loads where the
// layout allows), then dequantises it 8 values at a time in registers. Unit u covers x
// elements UBASE(u) + XO(c) .. +8 for chunks c = 0 .. UE/8. ----
__device__ __forceinline__ u32 wsel(const V4& a, const V4& b, int i) {
  // i is a compile-time constant after unrolling.
  return i == 0 ? a.x : i == 1 ? a.y : i == 2 ? a.z : i == 3 ? a.w : i == 4 ? b.x : i == 5 ? b.y : i == 6 ? b.z : b.w;
}
__device__ __forceinline__ void nib8(u32 w0, u32 w1, int shift, float d, float m, float* o) {
#pragma unroll
  for (int i = 0; i < 4; i++) { o[i] = d * (float)((w0 >> (8 * i + shift)) & 15) + m; o[4 + i] = d * (float)((w1 >> (8 * i + shift)) & 15) + m; }
}

// Q4_K: unit = 64 values (one pair of sub-blocks), qs 32 bytes in two 16-byte loads.
struct U_q4_k { V4 a, b; float d1, m1, d2, m2; };
#define UE_q4_k 64
__device__ __forceinline__ int ubase_q4_k(int u) { return u * 64; }
__device__ __forceinline__ int xo_q4_k(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q4_k(U_q4_k& u, const u8* row, int unit, int K) {
  const u8* b = row + (unit >> 2) * 144; int j = unit & 3;
  u.a = *(const V4*)(b + 16 + 32 * j); u.b = *(const V4*)(b + 32 + 32 * j);
  float d = h2f(ld16(b)), dm = h2f(ld16(b + 2)), sc, m;
  scale_min_k4(2 * j, b + 4, sc, m); u.d1 = d * sc; u.m1 = -dm * m;
  scale_min_k4(2 * j + 1, b + 4, sc, m); u.d2 = d * sc; u.m2 = -dm * m;
}
__device__ __forceinline__ void dq_q4_k(const U_q4_k& u, int c, float* o) {
  int w = 2 * (c & 3);
  if (c < 4) nib8(wsel(u.a, u.b, w), wsel(u.a, u.b, w + 1), 0, u.d1, u.m1, o);
  else nib8(wsel(u.a, u.b, w), wsel(u.a, u.b, w + 1), 4, u.d2, u.m2, o);
}

// Q5_K: as Q4_K plus the fifth bits (qh, 32 bytes, bits 2j and 2j+1).
struct U_q5_k { V4 a, b, ha, hb; float d1, m1, d2, m2; int j; };
#define UE_q5_k 64
__device__ __forceinline__ int ubase_q5_k(int u) { return u * 64; }
__device__ __forceinline__ int xo_q5_k(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q5_k(U_q5_k& u, const u8* row, int unit, int K) {
  const u8* b = row + (unit >> 2) * 176; int j = unit & 3; u.j = j;
  u.a = *(const V4*)(b + 48 + 32 * j); u.b = *(const V4*)(b + 64 + 32 * j);
  u.ha = *(const V4*)(b + 16); u.hb = *(const V4*)(b + 32);
  float d = h2f(ld16(b)), dm = h2f(ld16(b + 2)), sc, m;
  scale_min_k4(2 * j, b + 4, sc, m); u.d1 = d * sc; u.m1 = -dm * m;
  scale_min_k4(2 * j + 1, b + 4, sc, m); u.d2 = d * sc; u.m2 = -dm * m;
}
__device__ __forceinline__ void dq_q5_k(const U_q5_k& u, int c, float* o) {
  int w = 2 * (c & 3); int hi = c >= 4; int bit = 2 * u.j + hi;
  u32 w0 = wsel(u.a, u.b, w), w1 = wsel(u.a, u.b, w + 1);
  u32 h0 = wsel(u.ha, u.hb, w), h1 = wsel(u.ha, u.hb, w + 1);
  float d = hi ? u.d2 : u.d1, m = hi ? u.m2 : u.m1;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    o[i] = d * (float)(((w0 >> (8 * i + 4 * hi)) & 15) | (((h0 >> (8 * i + bit)) & 1) << 4)) + m;
    o[4 + i] = d * (float)(((w1 >> (8 * i + 4 * hi)) & 15) | (((h1 >> (8 * i + bit)) & 1) << 4)) + m;
  }
}

// Q6_K: unit = 16 positions l of one 128-value half (4 groups of 16 values); 2-byte loads
// (210-byte blocks are only 2-byte aligned).
struct U_q6_k { u32 l0[4], l1[4], h[4]; float s[4]; };
#define UE_q6_k 64
__device__ __forceinline__ int ubase_q6_k(int u) { return (u >> 2) * 256 + ((u & 3) >> 1) * 128 + (u & 1) * 16; }
__device__ __forceinline__ int xo_q6_k(int c) { return 32 * (c >> 1) + 8 * (c & 1); }
__device__ __forceinline__ void ld_q6_k(U_q6_k& u, const u8* row, int unit, int K) {
  const u8* b = row + (unit >> 2) * 210; int n = (unit & 3) >> 1, h = unit & 1;
  const u8* ql = b + 64 * n + 16 * h; const u8* qh = b + 128 + 32 * n + 16 * h;
#pragma unroll
  for (int i = 0; i < 4; i++) { u.l0[i] = ld32_2(ql + 4 * i); u.l1[i] = ld32_2(ql + 32 + 4 * i); u.h[i] = ld32_2(qh + 4 * i); }
  float d = h2f(ld16(b + 208));
#pragma unroll
  for (int g = 0; g < 4; g++) u.s[g] = d * (float)(signed char)b[192 + 8 * n + 2 * g + h];
}
__device__ __forceinline__ void dq_q6_k(const U_q6_k& u, int c, float* o) {
  int g = c >> 1, s = c & 1;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int wi = 2 * s + (i >> 2), bi = 8 * (i & 3);
    u32 l = (g & 1) ? u.l1[wi] : u.l0[wi];
    int q = ((l >> (bi + 4 * (g >> 1))) & 15) | (((u.h[wi] >> (bi + 2 * g)) & 3) << 4);
    o[i] = u.s[g] * (float)(q - 32);
  }
}

// Q8_0: unit = one block of 32.
struct U_q8_0 { u32 q[8]; float d; };
#define UE_q8_0 32
__device__ __forceinline__ int ubase_q8_0(int u) { return u * 32; }
__device__ __forceinline__ int xo_q8_0(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q8_0(U_q8_0& u, const u8* row, int unit, int K) {
  const u8* b = row + unit * 34; u.d = h2f(ld16(b));
#pragma unroll
  for (int i = 0; i < 8; i++) u.q[i] = ld32_2(b + 2 + 4 * i);
}
__device__ __forceinline__ void dq_q8_0(const U_q8_0& u, int c, float* o) {
#pragma unroll
  for (int i = 0; i < 8; i++) o[i] = u.d * (float)(signed char)((u.q[2 * c + (i >> 2)] >> (8 * (i & 3))) & 255);
}

// Q4_0 / Q4_1 / Q5_0 / Q5_1: unit = one block of 32; low nibbles are values 0..15.
struct U_q4_0 { u32 q[4]; float d, m; };
#define UE_q4_0 32
__device__ __forceinline__ int ubase_q4_0(int u) { return u * 32; }
__device__ __forceinline__ int xo_q4_0(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q4_0(U_q4_0& u, const u8* row, int unit, int K) {
  const u8* b = row + unit * 18; u.d = h2f(ld16(b)); u.m = -8.0f * u.d;
#pragma unroll
  for (int i = 0; i < 4; i++) u.q[i] = ld32_2(b + 2 + 4 * i);
}
__device__ __forceinline__ void dq_q4_0(const U_q4_0& u, int c, float* o) {
  nib8(u.q[2 * (c & 1)], u.q[2 * (c & 1) + 1], 4 * (c >> 1), u.d, u.m, o);
}
typedef U_q4_0 U_q4_1;
#define UE_q4_1 32
__device__ __forceinline__ int ubase_q4_1(int u) { return u * 32; }
__device__ __forceinline__ int xo_q4_1(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q4_1(U_q4_1& u, const u8* row, int unit, int K) {
  const u8* b = row + unit * 20; u.d = h2f(ld16(b)); u.m = h2f(ld16(b + 2));
#pragma unroll
  for (int i = 0; i < 4; i++) u.q[i] = *(const u32*)(b + 4 + 4 * i);
}
__device__ __forceinline__ void dq_q4_1(const U_q4_1& u, int c, float* o) { dq_q4_0(u, c, o); }
struct U_q5_0 { u32 q[4]; u32 qh; float d, m; };
#define UE_q5_0 32
__device__ __forceinline__ int ubase_q5_0(int u) { return u * 32; }
__device__ __forceinline__ int xo_q5_0(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q5_0(U_q5_0& u, const u8* row, int unit, int K) {
  const u8* b = row + unit * 22; u.d = h2f(ld16(b)); u.m = -16.0f * u.d; u.qh = ld32_2(b + 2);
#pragma unroll
  for (int i = 0; i < 4; i++) u.q[i] = ld32_2(b + 6 + 4 * i);
}
__device__ __forceinline__ void dq_q5_0(const U_q5_0& u, int c, float* o) {
  int sh = 4 * (c >> 1);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int j = 8 * (c & 1) + i; // byte index 0..15
    int q = ((u.q[j >> 2] >> (8 * (j & 3) + sh)) & 15) | (((u.qh >> (j + 16 * (c >> 1))) & 1) << 4);
    o[i] = u.d * (float)q + u.m;
  }
}
typedef U_q5_0 U_q5_1;
#define UE_q5_1 32
__device__ __forceinline__ int ubase_q5_1(int u) { return u * 32; }
__device__ __forceinline__ int xo_q5_1(int c) { return 8 * c; }
__device__ __forceinline__ void ld_q5_1(U_q5_1& u, const u8* row, int unit, int K) {
  const u8* b = row + unit * 24; u.d = h2f(ld16(b)); u.m = h2f(ld16(b + 2)); u.qh = *(const u32*)(b + 4);
#pragma unroll
  for (int i = 0; i < 4; i++) u.q[i] = *(const u32*)(b + 8 + 4 * i);
}
__device__ __forceinline__ void dq_q5_1(const U_q5_1& u, int c, float* o) { dq_q5_0(u, c, o); }

// Padded activation layout in shared memory: 4 floats of padding after every 32 values, so
// lanes reading their own unit's values hit different banks.
__device__ __forceinline__ int xpad(int i) { return i + ((i >> 5) << 2); }

// Plain float weights: unit = 8 values, bounds-checked against the row length K (any K).
struct U_fx { float v[8]; };
#define DEF_FX(T, LOADV) \
typedef U_fx U_##T; \
__device__ __forceinline__ int ubase_##T(int u) { return u * 8; } \
__device__ __forceinline__ int xo_##T(int c) { return 0; } \
__device__ __forceinline__ void ld_##T(U_##T& u, const u8* row, int unit, int K) { \
  _Pragma("unroll") for (int i = 0; i < 8; i++) { int k = unit * 8 + i; u.v[i] = k < K ? LOADV : 0.0f; } } \
__device__ __forceinline__ void dq_##T(const U_##T& u, int c, float* o) { \
  _Pragma("unroll") for (int i = 0; i < 8; i++) o[i] = u.v[i]; }
#define UE_f32 8
#define UE_f16 8
#define UE_bf16 8
DEF_FX(f32, ((const float*)row)[k])
DEF_FX(f16, h2f(((const u16*)row)[k]))
DEF_FX(bf16, bf2f(((const u16*)row)[k]))

// Decode gemv: one warp, up to 4 weight rows (stride rb bytes) against x (padded, shared).
#define DEF_GEMV(T) \
__device__ __forceinline__ void gemv_##T(const u8* W, u64 rb, int nrows, int K, const float* xs, float* out) { \
  int lane = threadIdx.x & 31; float acc[4] = {0.f, 0.f, 0.f, 0.f}; \
  int units = (K + UE_##T - 1) / UE_##T; \
  for (int u = lane; u < units; u += 32) { \
    U_##T w[4]; \
    _Pragma("unroll") for (int i = 0; i < 4; i++) if (i < nrows) ld_##T(w[i], W + i * rb, u, K); \
    int base = ubase_##T(u); \
    _Pragma("unroll") for (int c = 0; c < UE_##T / 8; c++) { \
      const float* xp = xs + xpad(base + xo_##T(c)); F4 xa = *(const F4*)xp, xb = *(const F4*)(xp + 4); \
      _Pragma("unroll") for (int i = 0; i < 4; i++) if (i < nrows) { float v[8]; dq_##T(w[i], c, v); \
        acc[i] += v[0] * xa.x + v[1] * xa.y + v[2] * xa.z + v[3] * xa.w + v[4] * xb.x + v[5] * xb.y + v[6] * xb.z + v[7] * xb.w; } \
    } \
  } \
  _Pragma("unroll") for (int i = 0; i < 4; i++) acc[i] = warp_sum(acc[i]); \
  if (lane == 0) { _Pragma("unroll") for (int i = 0; i < 4; i++) if (i < nrows) out[i] = acc[i]; } \
}

// Prefill GEMM on tensor cores: C[M,N] = A[M,K] (f32, rounded to f16) x W[N,K]^T (dequantised
// to f16 tiles), f32 accumulation, mma.sync m16n8k16. Tile 64x64x32, 4 warps of 32x32.
// P: a_off, w_off, row_bytes, c_off, M, N, K (arena offsets in floats, weight offset in bytes).
__device__ __forceinline__ u32 pack2(float a, float b) { return (u32)f2h(a) | ((u32)f2h(b) << 16); }
#define DEF_GEMM(T) \
extern "C" __global__ void __launch_bounds__(128) gemm_##T(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C) { \
  __shared__ alignas(16) u16 As[64][40]; __shared__ alignas(16) u16 Bs[64][40]; \
  const float* X = A + P[0]; const u8* Wt = W + P[1]; u64 rb = P[2]; float* Out = A + P[3]; \
  int M = (int)P[4], N = (int)P[5], K = (int)P[6]; \
  int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64; int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31; \
  int g = lane >> 2, t = lane & 3; int wm = (warp >> 1) * 32, wn = (warp & 1) * 32; \
  float acc[2][4][4]; \
  _Pragma("unroll") for (int a = 0; a < 2; a++) _Pragma("unroll") for (int b = 0; b < 4; b++) _Pragma("unroll") for (int c = 0; c < 4; c++) acc[a][b][c] = 0.f; \
  for (int k0 = 0; k0 < K; k0 += 32) { \
    for (int i = tid; i < 64 * 16; i += 128) { int r = i >> 4, kk = (i & 15) * 2; int gm = m0 + r, gk = k0 + kk; \
      float v0 = (gm < M && gk < K) ? X[(u64)gm * K + gk] : 0.f; float v1 = (gm < M && gk + 1 < K) ? X[(u64)gm * K + gk + 1] : 0.f; \
      *(u32*)&As[r][kk] = pack2(v0, v1); } \
    for (int i = tid; i < 64 * 16; i += 128) { int r = i >> 4, kk = (i & 15) * 2; int gn = n0 + r, gk = k0 + kk; \
      const u8* row = Wt + (u64)gn * rb; \
      float v0 = (gn < N && gk < K) ? deq_##T(row, gk) : 0.f; float v1 = (gn < N && gk + 1 < K) ? deq_##T(row, gk + 1) : 0.f; \
      *(u32*)&Bs[r][kk] = pack2(v0, v1); } \
    __syncthreads(); \
    _Pragma("unroll") for (int kk = 0; kk < 32; kk += 16) { \
      u32 af[2][4], bf[4][2]; \
      _Pragma("unroll") for (int a = 0; a < 2; a++) { int r = wm + a * 16 + g; \
        af[a][0] = *(const u32*)&As[r][kk + 2 * t]; af[a][1] = *(const u32*)&As[r + 8][kk + 2 * t]; \
        af[a][2] = *(const u32*)&As[r][kk + 2 * t + 8]; af[a][3] = *(const u32*)&As[r + 8][kk + 2 * t + 8]; } \
      _Pragma("unroll") for (int b = 0; b < 4; b++) { int n = wn + b * 8 + g; \
        bf[b][0] = *(const u32*)&Bs[n][kk + 2 * t]; bf[b][1] = *(const u32*)&Bs[n][kk + 2 * t + 8]; } \
      _Pragma("unroll") for (int a = 0; a < 2; a++) _Pragma("unroll") for (int b = 0; b < 4; b++) \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
          : "+f"(acc[a][b][0]), "+f"(acc[a][b][1]), "+f"(acc[a][b][2]), "+f"(acc[a][b][3]) \
          : "r"(af[a][0]), "r"(af[a][1]), "r"(af[a][2]), "r"(af[a][3]), "r"(bf[b][0]), "r"(bf[b][1])); \
    } \
    __syncthreads(); \
  } \
  _Pragma("unroll") for (int a = 0; a < 2; a++) _Pragma("unroll") for (int b = 0; b < 4; b++) { \
    int r = m0 + wm + a * 16 + g, c = n0 + wn + b * 8 + 2 * t; \
    if (r < M) { if (c < N) Out[(u64)r * N + c] = acc[a][b][0]; if (c + 1 < N) Out[(u64)r * N + c + 1] = acc[a][b][1]; } \
    if (r + 8 < M) { if (c < N) Out[(u64)(r + 8) * N + c] = acc[a][b][2]; if (c + 1 < N) Out[(u64)(r + 8) * N + c + 1] = acc[a][b][3]; } \
  } \
}
