// smelt CUDA prelude: helpers shared by every generated kernel. No headers: NVRTC compiles
// this alone, so half floats are handled through PTX conversions on raw 16-bit values.
#define INFINITY __int_as_float(0x7f800000)
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
struct alignas(16) V4 { u32 x, y, z, w; };
// Programmatic dependent launch (sm_90): a kernel launched with the programmatic-serialisation
// attribute may start before the previous one ends, and waits for the previous one's
// completion and memory (PDL_WAIT) before it touches anything but weights. SMELT_PDL_AT says
// where a kernel lets the next one launch: 2 (the backend's default, v11a) when each block
// ends (PDL_END), 1 once a block has issued its last weight loads (PDL_MID: after a matmul's
// row loop or attention's scoring; at the end elsewhere), 0 at the kernel's start
// (PDL_LAUNCH, v4b-v9: slower). Without SMELT_PDL every macro is a no-op.
#ifndef SMELT_PDL
#define SMELT_PDL 0
#endif
#ifndef SMELT_PDL_AT
#define SMELT_PDL_AT 0
#endif
#define PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#if SMELT_PDL && SMELT_PDL_AT == 4
// v13f (kernel lab, decode programs): launch L's blocks each add 1 to counter C[P[62]] at
// their end, after a block barrier, with a release at GPU scope; launch L + 1's blocks poll
// counter L with an acquire (one thread) until it holds launch L's block count (P[63]; 0 for
// a step's first launch), then let the next launch in. The counters are zeroed before each
// step.
#define PDL_WAIT() do { \
  if (threadIdx.x == 0 && P[PV_MAX - 1] != 0) { \
    const u32* f = C + P[PV_MAX - 2] - 1; u32 v; \
    do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(f) : "memory"); } \
    while (v < (u32)P[PV_MAX - 1]); } \
  __syncthreads(); PDL_TRIGGER(); } while (0)
#elif SMELT_PDL
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_WAIT()
#endif
#if SMELT_PDL && SMELT_PDL_AT == 0
#define PDL_LAUNCH() PDL_TRIGGER()
#else
#define PDL_LAUNCH()
#endif
#if SMELT_PDL && SMELT_PDL_AT == 1
#define PDL_MID() PDL_TRIGGER()
#else
#define PDL_MID()
#endif
#if SMELT_PDL && SMELT_PDL_AT == 4
#define PDL_END() do { __syncthreads(); \
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(C + P[PV_MAX - 2]) : "memory"); \
  } while (0)
#elif SMELT_PDL && SMELT_PDL_AT >= 1
#define PDL_END() PDL_TRIGGER()
#else
#define PDL_END()
#endif
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
// An RMS norm's scale from the sum of squares of n values: one reciprocal square root, as
// ggml's CUDA norms take it (v18h: the reciprocal of the square root of the mean was a
// division, a square root and a reciprocal, each IEEE with a slow-path branch: ~35 dependent
// instructions on the normed kernels' chain).
__device__ __forceinline__ float rms_scale(float ss, float n, float eps) { return rsqrtf(ss * (1.0f / n) + eps); }
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Asynchronous 16-byte copies from global to shared memory (sm_80+): no registers held while
// the bytes travel; `cp_async_wait<n>` waits until at most n committed groups are pending.
__device__ __forceinline__ void cp_async16(void* smem, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"((u32)__cvta_generic_to_shared(smem)), "l"(g) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// Thread block clusters (sm_90): a barrier over every thread of the cluster that also orders
// their shared-memory writes, and loads from another block's shared memory (DSMEM).
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// `cluster_sync` with the barrier's cluster-scope release and acquire (which ptxas emits as
// MEMBAR.ALL.GPU, ERRBAR, CGAERRBAR before the arrive and CCTL.IVALL after the wait) replaced
// by a block-scope fence (MEMBAR.ALL.CTA) and a relaxed barrier: orders this block's
// shared-memory writes before the other blocks' reads of them (v11f, decode attention's
// default; `SMELT_CUDA_CLUSTER_FENCE=gpu` keeps `cluster_sync`). A cluster-scope fence would
// compile to the same MEMBAR.ALL.GPU; the partials live in this SM's shared memory, complete
// once MEMBAR.CTA returns. Reads of other blocks' shared memory must be consumed before it
// (the block they read may exit once every block has arrived).
__device__ __forceinline__ void cluster_sync_cta() {
  asm volatile("fence.acq_rel.cta;\nbarrier.cluster.arrive.relaxed.aligned;\nbarrier.cluster.wait.aligned;" ::: "memory");
}
// The two halves of `cluster_sync`: work between them overlaps the other blocks' arrival.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ float ld_dsmem(const float* p, u32 rank) {
  u32 a = (u32)__cvta_generic_to_shared(p), r; float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
  return v;
}
// v12c, partials pushed to the block that merges them: its mbarrier (one arrival, this
// block's own, with the bytes it expects) completes when every store below has landed.
// The other blocks may store to it once the cluster barrier after this init is passed.
__device__ __forceinline__ void mbar_init_expect(u64* bar, u32 bytes) {
  const u32 a = (u32)__cvta_generic_to_shared(bar);
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n"
               "fence.mbarrier_init.release.cluster;\n"
               "{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }"
               :: "r"(a), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
// `v` into block `rank`'s copy of `*p` (this block's layout), counted on its copy of `*bar`.
__device__ __forceinline__ void st_async_f32(float* p, u32 rank, float v, u64* bar) {
  const u32 a = (u32)__cvta_generic_to_shared(p), b = (u32)__cvta_generic_to_shared(bar);
  u32 ra, rb;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rb) : "r"(b), "r"(rank));
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
               :: "r"(ra), "r"(__float_as_uint(v)), "r"(rb) : "memory");
}
// v13a: bytes [src, src + n) into this block's shared memory at dst by one bulk (TMA) copy,
// counted on `*bar` (both addresses and n multiples of 16).
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, u32 n, u64* bar) {
  const u32 d = (u32)__cvta_generic_to_shared(dst), b = (u32)__cvta_generic_to_shared(bar);
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(d), "l"(src), "r"(n), "r"(b) : "memory");
}
// v14b (codegen/cluster.rs): an mbarrier of one arrival; an arrival expecting `bytes` (0
// completes the phase at once); a wait for the phase of parity `par`; `v` stored into block
// `rank`'s copy of `*p`; this block's rank in its cluster.
__device__ __forceinline__ void mbar_init1(u64* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"((u32)__cvta_generic_to_shared(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect(u64* bar, u32 bytes) {
  asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }"
               :: "r"((u32)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait_par(u64* bar, u32 par) {
  const u32 a = (u32)__cvta_generic_to_shared(bar);
  asm volatile("{\n.reg .pred P1;\nWAITP:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
               "@P1 bra DONEP;\nbra WAITP;\nDONEP:\n}" :: "r"(a), "r"(par) : "memory");
}
__device__ __forceinline__ void st_dsmem(float* p, u32 rank, float v) {
  u32 a = (u32)__cvta_generic_to_shared(p), r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;" :: "r"(r), "f"(v) : "memory");
}
__device__ __forceinline__ u32 cluster_rank() { u32 r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
// Until phase 0 of `*bar` completes (every expected byte landed).
__device__ __forceinline__ void mbar_wait0(u64* bar) {
  const u32 a = (u32)__cvta_generic_to_shared(bar);
  asm volatile("{\n.reg .pred P1;\nWAIT0:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], 0;\n"
               "@P1 bra DONE0;\nbra WAIT0;\nDONE0:\n}" :: "r"(a) : "memory");
}
#endif
// v16a, decode attention on tensor cores: four 8x8 matrices of 16-bit values from shared
// memory (lane l names row l & 7 of matrix l >> 3), as stored or transposed; and one
// m16n8k16 product whose A rows 8-15 are zero (a KV group's query heads are rows 0-7).
__device__ __forceinline__ void ldsm4(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((u32)__cvta_generic_to_shared(p)) : "memory");
}
__device__ __forceinline__ void ldsm4t(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((u32)__cvta_generic_to_shared(p)) : "memory");
}
__device__ __forceinline__ void mma_top(float (&d)[4], u32 a0, u32 a2, u32 b0, u32 b1) {
  const u32 z = 0;
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a0), "r"(z), "r"(a2), "r"(z), "r"(b0), "r"(b1));
}
// v16d: an 8x8 matrix of 16-bit values transposed across the warp (lane (g, t) gives its
// row g, columns 2t and 2t + 1, and gets the same of the transpose).
__device__ __forceinline__ u32 movt(u32 a) {
  u32 d; asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(a)); return d;
}
// v16c: one m16n8k16 product with all four A registers (prefill attention's 16 query rows).
__device__ __forceinline__ void mma_full(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

// ---- element dequantisation: value k of a weight row of K values (embedding rows, prefill
// tiles). Q4_0, Q5_0, Q8_0 and Q6_K rows are sectioned (layout.rs): each field of a block,
// for every block of the row in turn, so their fields are found from the row's block count.
__device__ float deq_f32(const u8* r, int k, int K) { return ((const float*)r)[k]; }
__device__ float deq_f16(const u8* r, int k, int K) { return h2f(((const u16*)r)[k]); }
__device__ float deq_bf16(const u8* r, int k, int K) { return bf2f(((const u16*)r)[k]); }
__device__ float deq_q4_0(const u8* r, int k, int K) {
  const int nb = K >> 5, bi = k >> 5, j = k & 31; const u8* qs = r + 16 * bi;
  int q = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
  return h2f(ld16(r + 16 * nb + 2 * bi)) * (float)(q - 8);
}
__device__ float deq_q4_1(const u8* r, int k, int K) {
  const u8* b = r + (k >> 5) * 20; int j = k & 31;
  int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
  return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
}
__device__ float deq_q5_0(const u8* r, int k, int K) {
  const int nb = K >> 5, bi = k >> 5, j = k & 31; const u8* qs = r + 16 * bi;
  u32 qh = *(const u32*)(r + 16 * nb + 4 * bi);
  int q = j < 16 ? ((qs[j] & 15) | (((qh >> j) & 1) << 4)) : ((qs[j - 16] >> 4) | (((qh >> j) & 1) << 4));
  return h2f(ld16(r + 20 * nb + 2 * bi)) * (float)(q - 16);
}
__device__ float deq_q5_1(const u8* r, int k, int K) {
  const u8* b = r + (k >> 5) * 24; int j = k & 31;
  u32 qh = ld32_2(b + 4);
  int q = j < 16 ? ((b[8 + j] & 15) | (((qh >> j) & 1) << 4)) : ((b[8 + j - 16] >> 4) | (((qh >> j) & 1) << 4));
  return h2f(ld16(b)) * (float)q + h2f(ld16(b + 2));
}
__device__ float deq_q8_0(const u8* r, int k, int K) {
  return h2f(ld16(r + 32 * (K >> 5) + 2 * (k >> 5))) * (float)(signed char)r[k];
}
__device__ float deq_q4_k(const u8* r, int k, int K) {
  const u8* b = r + (k >> 8) * 144; int e = k & 255; int c = e >> 6, l = e & 31, hi = (e >> 5) & 1;
  float sc, m; scale_min_k4(2 * c + hi, b + 4, sc, m);
  int q = (b[16 + 32 * c + l] >> (4 * hi)) & 15;
  return h2f(ld16(b)) * sc * (float)q - h2f(ld16(b + 2)) * m;
}
__device__ float deq_q5_k(const u8* r, int k, int K) {
  const u8* b = r + (k >> 8) * 176; int e = k & 255; int g = e >> 5, l = e & 31;
  float sc, m; scale_min_k4(g, b + 4, sc, m);
  int q = ((b[48 + 32 * (g >> 1) + l] >> (4 * (g & 1))) & 15) | (((b[16 + l] >> g) & 1) << 4);
  return h2f(ld16(b)) * sc * (float)q - h2f(ld16(b + 2)) * m;
}
__device__ float deq_q6_k(const u8* r, int k, int K) {
  const int nb = K >> 8, bi = k >> 8; int e = k & 255; int ch = e >> 5, l = e & 31; int n = ch >> 2, g = ch & 3;
  int q = ((r[128 * bi + 64 * n + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15) | (((r[128 * nb + 64 * bi + 32 * n + l] >> (2 * g)) & 3) << 4);
  float d = h2f(ld16(r + 208 * nb + 2 * bi));
  return d * (float)((signed char)r[192 * nb + 16 * bi + 2 * ch + (l >> 4)]) * (float)(q - 32);
}

// ---- decode gemv against int8 activations (dp4a) ----
// The activation row is quantised once per block into shared memory: q (int8, 16 bytes of
// padding after every 64 so lanes reading their own unit's 16-byte words hit distinct banks),
// d (one scale per 32 values) and s (per 16 values: d * sum of q, for the formats' offsets).
// A lane loads one unit of a weight row with 16-byte (or 4-byte) loads and dots it in
// integers: no int-to-float conversion per weight, ~1 instruction per weight.
// Device layouts: rows of blocks that are only 2-byte aligned in GGUF (Q4_0, Q5_0, Q8_0,
// Q6_K) are sectioned (layout.rs), so `ld8_*` takes the row's unit count `nu` besides the
// unit: a section's offset is the row's blocks times the fields before it.
struct X8 { const signed char* q; const float* d; const float* s; };
// Decode kernels take their offsets by value (`P[i]` reads the launch's constant bank, not a
// global array: no memory round trip before a kernel's first address is known).
#define PV_MAX 64
struct PV { u64 v[PV_MAX]; __device__ __forceinline__ u64 operator[](int i) const { return v[i]; } };
__device__ __forceinline__ int pad8(int i) { return i + ((i >> 6) << 4); }
__device__ __forceinline__ int dp4a(u32 a, int b, int c) {
  int r; asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c)); return r;
}
#define M4 0x0f0f0f0fu
__device__ __forceinline__ u32 ld32(const u8* p) { return *(const u32*)p; }
// Bits 0..3 of v to bit 4 of bytes 0..3.
__device__ __forceinline__ u32 hbit4(u32 v) { return ((v * 0x00204081u) & 0x01010101u) << 4; }

// Q4_K: unit = 64 values (sub-blocks 2j, 2j+1 of a 256-block): header + 32 bytes of nibbles.
struct Q_q4_k { V4 h, a, b; };
#define UE8_q4_k 64
__device__ __forceinline__ void ld8_q4_k(Q_q4_k& w, const u8* row, int u, int nu) {
  const u8* b = row + (u >> 2) * 144; int j = u & 3;
  w.h = *(const V4*)b; w.a = *(const V4*)(b + 16 + 32 * j); w.b = *(const V4*)(b + 32 + 32 * j);
}
// 6-bit scale and min of sub-block j (0..7) from the 12 scale bytes in h.y, h.z, h.w.
__device__ __forceinline__ void sm_k4(const V4& h, int j, float& sc, float& m) {
  int sh = 8 * (j & 3); u32 y = h.y >> sh, z = h.z >> sh, w = h.w >> sh;
  if (j < 4) { sc = (float)(y & 63); m = (float)(z & 63); }
  else { sc = (float)((w & 15) | (((y >> 6) & 3) << 4)); m = (float)(((w >> 4) & 15) | (((z >> 6) & 3) << 4)); }
}
__device__ __forceinline__ float dot8_q4_k(const Q_q4_k& w, int u, const X8& x) {
  const int4* xp = (const int4*)(x.q + pad8(u * 64));
  int4 x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
  const u32 q[8] = {w.a.x, w.a.y, w.a.z, w.a.w, w.b.x, w.b.y, w.b.z, w.b.w};
  const int xl[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  const int xh[8] = {x2.x, x2.y, x2.z, x2.w, x3.x, x3.y, x3.z, x3.w};
  int s1 = 0, s2 = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) { s1 = dp4a(q[i] & M4, xl[i], s1); s2 = dp4a((q[i] >> 4) & M4, xh[i], s2); }
  float sc1, m1, sc2, m2; int j = u & 3;
  sm_k4(w.h, 2 * j, sc1, m1); sm_k4(w.h, 2 * j + 1, sc2, m2);
  float d = h2f(w.h.x & 0xffff), dm = h2f(w.h.x >> 16); int b = 2 * u;
  return d * (sc1 * x.d[b] * (float)s1 + sc2 * x.d[b + 1] * (float)s2)
       - dm * (m1 * (x.s[2 * b] + x.s[2 * b + 1]) + m2 * (x.s[2 * b + 2] + x.s[2 * b + 3]));
}

// Q5_K: as Q4_K plus the fifth bits (32 bytes of qh: bits 2j and 2j+1 of byte l).
struct Q_q5_k { V4 h, ha, hb, a, b; };
#define UE8_q5_k 64
__device__ __forceinline__ void ld8_q5_k(Q_q5_k& w, const u8* row, int u, int nu) {
  const u8* b = row + (u >> 2) * 176; int j = u & 3;
  w.h = *(const V4*)b; w.ha = *(const V4*)(b + 16); w.hb = *(const V4*)(b + 32);
  w.a = *(const V4*)(b + 48 + 32 * j); w.b = *(const V4*)(b + 64 + 32 * j);
}
__device__ __forceinline__ float dot8_q5_k(const Q_q5_k& w, int u, const X8& x) {
  const int4* xp = (const int4*)(x.q + pad8(u * 64));
  int4 x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
  const u32 q[8] = {w.a.x, w.a.y, w.a.z, w.a.w, w.b.x, w.b.y, w.b.z, w.b.w};
  const u32 qh[8] = {w.ha.x, w.ha.y, w.ha.z, w.ha.w, w.hb.x, w.hb.y, w.hb.z, w.hb.w};
  const int xl[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  const int xh[8] = {x2.x, x2.y, x2.z, x2.w, x3.x, x3.y, x3.z, x3.w};
  int j = u & 3, s1 = 0, s2 = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    u32 h = qh[i] >> (2 * j);
    s1 = dp4a((q[i] & M4) | ((h & 0x01010101u) << 4), xl[i], s1);
    s2 = dp4a(((q[i] >> 4) & M4) | ((h & 0x02020202u) << 3), xh[i], s2);
  }
  float sc1, m1, sc2, m2;
  sm_k4(w.h, 2 * j, sc1, m1); sm_k4(w.h, 2 * j + 1, sc2, m2);
  float d = h2f(w.h.x & 0xffff), dm = h2f(w.h.x >> 16); int b = 2 * u;
  return d * (sc1 * x.d[b] * (float)s1 + sc2 * x.d[b + 1] * (float)s2)
       - dm * (m1 * (x.s[2 * b] + x.s[2 * b + 1]) + m2 * (x.s[2 * b + 2] + x.s[2 * b + 3]));
}

// Q6_K (sectioned rows: every block's 128 bytes of ql, then 64 of qh, 16 of scales, 2 of d):
// unit = 16 positions l of one 128-value half n: 16 bytes of ql for groups 0/2, 16 for
// groups 1/3, 16 of qh; 4 groups of 16 values, 32 apart.
struct Q_q6_k { V4 a, b, h; uint2 s; u32 d; };
#define UE8_q6_k 64
__device__ __forceinline__ void ld8_q6_k(Q_q6_k& w, const u8* row, int u, int nu) {
  const int bi = u >> 2, nb = nu >> 2, n = (u & 3) >> 1, hh = u & 1; const u8* ql = row + 128 * bi + 64 * n + 16 * hh;
  w.a = *(const V4*)ql; w.b = *(const V4*)(ql + 32);
  w.h = *(const V4*)(row + 128 * nb + 64 * bi + 32 * n + 16 * hh); w.s = *(const uint2*)(row + 192 * nb + 16 * bi + 8 * n);
  w.d = ld16(row + 208 * nb + 2 * bi);
}
__device__ __forceinline__ float dot8_q6_k(const Q_q6_k& w, int u, const X8& x) {
  int n = (u & 3) >> 1, hh = u & 1; int base = (u >> 2) * 256 + 128 * n + 16 * hh;
  const u32 A[4] = {w.a.x, w.a.y, w.a.z, w.a.w}, B[4] = {w.b.x, w.b.y, w.b.z, w.b.w};
  const u32 H[4] = {w.h.x, w.h.y, w.h.z, w.h.w};
  float acc = 0.f;
#pragma unroll
  for (int g = 0; g < 4; g++) {
    int4 xv = *(const int4*)(x.q + pad8(base + 32 * g));
    const int xw[4] = {xv.x, xv.y, xv.z, xv.w};
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      u32 v = g == 0 ? (A[i] & M4) | ((H[i] << 4) & 0x30303030u)
            : g == 1 ? (B[i] & M4) | ((H[i] << 2) & 0x30303030u)
            : g == 2 ? ((A[i] >> 4) & M4) | (H[i] & 0x30303030u)
                     : ((B[i] >> 4) & M4) | ((H[i] >> 2) & 0x30303030u);
      s = dp4a(v, xw[i], s);
    }
    u32 sw = g < 2 ? w.s.x : w.s.y;
    float sc = (float)(signed char)((sw >> (8 * ((2 * g + hh) & 3))) & 255);
    int xi = base + 32 * g;
    acc += sc * (x.d[xi >> 5] * (float)s - 32.0f * x.s[xi >> 4]);
  }
  return h2f((u16)w.d) * acc;
}

// Q8_0 (sectioned rows: every block's 32 int8, then every block's d): two 16-byte loads.
struct Q_q8_0 { u32 q[8]; u32 d; };
#define UE8_q8_0 32
__device__ __forceinline__ void ld8_q8_0(Q_q8_0& w, const u8* row, int u, int nu) {
  const V4 a = *(const V4*)(row + 32 * u), b = *(const V4*)(row + 32 * u + 16);
  w.q[0] = a.x; w.q[1] = a.y; w.q[2] = a.z; w.q[3] = a.w; w.q[4] = b.x; w.q[5] = b.y; w.q[6] = b.z; w.q[7] = b.w;
  w.d = ld16(row + 32 * nu + 2 * u);
}
__device__ __forceinline__ float dot8_q8_0(const Q_q8_0& w, int u, const X8& x) {
  const int4* xp = (const int4*)(x.q + pad8(u * 32)); int4 x0 = xp[0], x1 = xp[1];
  const int xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  int s = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) s = dp4a(w.q[i], xw[i], s);
  return h2f((u16)w.d) * x.d[u] * (float)s;
}

// Q4_0 / Q4_1 / Q5_0 / Q5_1: unit = one block of 32 (low nibbles values 0..15, high 16..31).
// Q4_0 rows are sectioned (every block's 16 bytes of nibbles, then every block's d); Q4_1
// keeps GGUF's 20-byte blocks (d and m in the first word).
struct Q_q4_0 { u32 q[4]; u32 d; };
#define UE8_q4_0 32
__device__ __forceinline__ void ld8_q4_0(Q_q4_0& w, const u8* row, int u, int nu) {
  const V4 a = *(const V4*)(row + 16 * u); w.q[0] = a.x; w.q[1] = a.y; w.q[2] = a.z; w.q[3] = a.w;
  w.d = ld16(row + 16 * nu + 2 * u);
}
__device__ __forceinline__ int nib_dot(const u32* q, const X8& x, int u) {
  const int4* xp = (const int4*)(x.q + pad8(u * 32)); int4 x0 = xp[0], x1 = xp[1];
  const int xl[4] = {x0.x, x0.y, x0.z, x0.w}, xh[4] = {x1.x, x1.y, x1.z, x1.w};
  int s = 0;
#pragma unroll
  for (int i = 0; i < 4; i++) { s = dp4a(q[i] & M4, xl[i], s); s = dp4a((q[i] >> 4) & M4, xh[i], s); }
  return s;
}
__device__ __forceinline__ float dot8_q4_0(const Q_q4_0& w, int u, const X8& x) {
  return h2f((u16)w.d) * (x.d[u] * (float)nib_dot(w.q, x, u) - 8.0f * (x.s[2 * u] + x.s[2 * u + 1]));
}
typedef Q_q4_0 Q_q4_1;
#define UE8_q4_1 32
__device__ __forceinline__ void ld8_q4_1(Q_q4_1& w, const u8* row, int u, int nu) {
  const u8* b = row + u * 20; w.d = ld32(b);
#pragma unroll
  for (int i = 0; i < 4; i++) w.q[i] = ld32(b + 4 + 4 * i);
}
__device__ __forceinline__ float dot8_q4_1(const Q_q4_1& w, int u, const X8& x) {
  return h2f((u16)(w.d & 0xffff)) * x.d[u] * (float)nib_dot(w.q, x, u) + h2f((u16)(w.d >> 16)) * (x.s[2 * u] + x.s[2 * u + 1]);
}
// Q5_0 rows are sectioned (every block's 16 bytes of nibbles, then their 4 bytes of fifth
// bits, then their d); Q5_1 keeps GGUF's 24-byte blocks.
struct Q_q5_0 { u32 q[4]; u32 d, qh; };
#define UE8_q5_0 32
__device__ __forceinline__ void ld8_q5_0(Q_q5_0& w, const u8* row, int u, int nu) {
  const V4 a = *(const V4*)(row + 16 * u); w.q[0] = a.x; w.q[1] = a.y; w.q[2] = a.z; w.q[3] = a.w;
  w.qh = ld32(row + 16 * nu + 4 * u); w.d = ld16(row + 20 * nu + 2 * u);
}
__device__ __forceinline__ int nib5_dot(const Q_q5_0& w, const X8& x, int u) {
  const int4* xp = (const int4*)(x.q + pad8(u * 32)); int4 x0 = xp[0], x1 = xp[1];
  const int xl[4] = {x0.x, x0.y, x0.z, x0.w}, xh[4] = {x1.x, x1.y, x1.z, x1.w};
  int s = 0;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    s = dp4a((w.q[i] & M4) | hbit4((w.qh >> (4 * i)) & 15), xl[i], s);
    s = dp4a(((w.q[i] >> 4) & M4) | hbit4((w.qh >> (16 + 4 * i)) & 15), xh[i], s);
  }
  return s;
}
__device__ __forceinline__ float dot8_q5_0(const Q_q5_0& w, int u, const X8& x) {
  return h2f((u16)w.d) * (x.d[u] * (float)nib5_dot(w, x, u) - 16.0f * (x.s[2 * u] + x.s[2 * u + 1]));
}
typedef Q_q5_0 Q_q5_1;
#define UE8_q5_1 32
__device__ __forceinline__ void ld8_q5_1(Q_q5_1& w, const u8* row, int u, int nu) {
  const u8* b = row + u * 24; w.d = ld32(b); w.qh = ld32(b + 4);
#pragma unroll
  for (int i = 0; i < 4; i++) w.q[i] = ld32(b + 8 + 4 * i);
}
__device__ __forceinline__ float dot8_q5_1(const Q_q5_1& w, int u, const X8& x) {
  return h2f((u16)(w.d & 0xffff)) * x.d[u] * (float)nib5_dot(w, x, u) + h2f((u16)(w.d >> 16)) * (x.s[2 * u] + x.s[2 * u + 1]);
}

// One warp, one weight row of `units` units against the int8 activations; every lane gets
// the sum. Two units per lane are loaded before either is used (no condition between the
// loads, so the compiler issues both before the first dot). Loading four or eight before
// dotting measured slower (v8: the 8B's 14336-wide down rows in two round trips instead of
// four, 372 -> 362 tok/s on the H100).
#define DEF_GEMV8(T) \
__device__ __forceinline__ float gemv8_##T(const u8* row, int units, const X8& x) { \
  int u = threadIdx.x & 31; float acc = 0.f; \
  for (; u + 32 < units; u += 64) { \
    Q_##T a, b; ld8_##T(a, row, u, units); ld8_##T(b, row, u + 32, units); \
    acc += dot8_##T(a, u, x) + dot8_##T(b, u + 32, x); \
  } \
  if (u < units) { Q_##T a; ld8_##T(a, row, u, units); acc += dot8_##T(a, u, x); } \
  return warp_sum(acc); \
} \
/* v26 (SMELT_CUDA_ROWS_TOGETHER): NM rows against the same activations, every row's loads \
   before any row's sum (a bundle's gemv8 calls one after another issued the next row's \
   loads behind the previous row's warp sum: an L2 round trip more a column); each row's \
   value gemv8's, bit for bit. */ \
template <int NM> __device__ __forceinline__ void gemv8m_##T(const u8* const (&rows)[NM], int units, const X8& x, float (&out)[NM]) { \
  int u = threadIdx.x & 31; float acc[NM]; \
  _Pragma("unroll") for (int m = 0; m < NM; m++) acc[m] = 0.f; \
  for (; u + 32 < units; u += 64) { \
    Q_##T a[NM], b[NM]; \
    _Pragma("unroll") for (int m = 0; m < NM; m++) { ld8_##T(a[m], rows[m], u, units); ld8_##T(b[m], rows[m], u + 32, units); } \
    _Pragma("unroll") for (int m = 0; m < NM; m++) acc[m] += dot8_##T(a[m], u, x) + dot8_##T(b[m], u + 32, x); \
  } \
  if (u < units) { \
    Q_##T a[NM]; \
    _Pragma("unroll") for (int m = 0; m < NM; m++) ld8_##T(a[m], rows[m], u, units); \
    _Pragma("unroll") for (int m = 0; m < NM; m++) acc[m] += dot8_##T(a[m], u, x); \
  } \
  _Pragma("unroll") for (int m = 0; m < NM; m++) out[m] = warp_sum(acc[m]); \
}

// Several activation rows (a batch's sequences): each weight unit is loaded once and dotted
// with every row; every lane ends with every row's sum, in gemv8's order (a row's value is
// the same alone or batched). Row i's activations are XS floats after row
// i - 1's (a constant: the addresses fold into the loads; an array of X8 pointers held 48
// registers at 8 rows).
#define XROW(x, i, XS) (X8{(x).q + (i) * (XS) * 4, (x).d + (i) * (XS), (x).s + (i) * (XS)})
#define DEF_GEMV8N(T) \
template <int NR, int XS> __device__ __forceinline__ void gemv8n_##T(const u8* row, int units, const X8& x0, float* out) { \
  if constexpr (NR > 4) { /* two passes over the row (the second from L1): 8 rows at once spilled */ \
    gemv8n_##T<4, XS>(row, units, x0, out); \
    gemv8n_##T<NR - 4, XS>(row, units, XROW(x0, 4, XS), out + 4); \
  } else { \
    int u = threadIdx.x & 31; float acc[NR]; \
    _Pragma("unroll") for (int i = 0; i < NR; i++) acc[i] = 0.f; \
    for (; u + 32 < units; u += 64) { \
      Q_##T a, b; ld8_##T(a, row, u, units); ld8_##T(b, row, u + 32, units); \
      _Pragma("unroll") for (int i = 0; i < NR; i++) acc[i] += dot8_##T(a, u, XROW(x0, i, XS)) + dot8_##T(b, u + 32, XROW(x0, i, XS)); \
    } \
    if (u < units) { Q_##T a; ld8_##T(a, row, u, units); _Pragma("unroll") for (int i = 0; i < NR; i++) acc[i] += dot8_##T(a, u, XROW(x0, i, XS)); } \
    _Pragma("unroll") for (int i = 0; i < NR; i++) out[i] = warp_sum(acc[i]); \
  } \
}

// gemv8n for the warp that finishes each row in its own lane: lane `first + i` gets row i's
// sum (other lanes 0), so a column holds one value per lane instead of NR (8 rows of two
// matmuls kept 16 live and spilled).
#define DEF_GEMV8R(T) \
template <int NR, int XS> __device__ __forceinline__ float gemv8r_##T(const u8* row, int units, const X8& x0, int first) { \
  if constexpr (NR > 4) { \
    return gemv8r_##T<4, XS>(row, units, x0, first) + gemv8r_##T<NR - 4, XS>(row, units, XROW(x0, 4, XS), first + 4); \
  } else { \
    float v[NR]; gemv8n_##T<NR, XS>(row, units, x0, v); \
    const int i = (int)(threadIdx.x & 31) - first; float x = 0.f; \
    _Pragma("unroll") for (int k = 0; k < NR; k++) if (i == k) x = v[k]; \
    return x; \
  } \
}

__device__ __forceinline__ void prefetch_l2(const u8* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }
// Prefetch one weight row into L2 (issued before a block's prologue so HBM works meanwhile).
__device__ __forceinline__ void prefetch_row(const u8* row, u64 rb) {
  for (u64 o = (u64)(threadIdx.x & 31) * 128; o < rb; o += 32 * 128) prefetch_l2(row + o);
}

// ---- decode gemv for plain float weights (f32, f16, bf16) against f32 activations ----
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
  PDL_LAUNCH(); PDL_WAIT(); \
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
      float v0 = (gn < N && gk < K) ? deq_##T(row, gk, K) : 0.f; float v1 = (gn < N && gk + 1 < K) ? deq_##T(row, gk + 1, K) : 0.f; \
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

// ---- prefill through cuBLAS: weights dequantised to f16 rows, activations rounded to f16 ----
// Values past the f16 range saturate to +-65504 instead of becoming infinities.
__device__ __forceinline__ u32 pack2s(float a, float b) {
  return (u32)f2h(fminf(fmaxf(a, -65504.f), 65504.f)) | ((u32)f2h(fminf(fmaxf(b, -65504.f), 65504.f)) << 16);
}
// Unit `g` of a weight row as floats: 32 values for the block formats, 8 for plain floats
// (row length K; values past it are 0). Multiplies and adds are rounded one by one
// (__fmul_rn / __fsub_rn, no FMA contraction) in smelt-quant's order, so the values equal
// the CPU's dequantisation before the f16 rounding.
#define DQU_NIB_LOOP(B, BODY) \
  _Pragma("unroll") for (int i = 0; i < 4; i++) { u32 q = ld32((B) + 4 * i); \
    _Pragma("unroll") for (int j = 0; j < 4; j++) { const int l = 4 * i + j; const int x = (q >> (8 * j)) & 255; BODY } }
__device__ __forceinline__ void dqu_q4_0(const u8* r, int g, int K, float* v) {
  const float d = h2f(ld16(r + 16 * (K >> 5) + 2 * g));
  DQU_NIB_LOOP(r + 16 * g, v[l] = __fmul_rn((float)((x & 15) - 8), d); v[l + 16] = __fmul_rn((float)((x >> 4) - 8), d);)
}
__device__ __forceinline__ void dqu_q4_1(const u8* r, int g, int K, float* v) {
  const u8* b = r + g * 20; const u32 dm = ld32(b); const float d = h2f((u16)dm), m = h2f((u16)(dm >> 16));
  DQU_NIB_LOOP(b + 4, v[l] = __fadd_rn(__fmul_rn(d, (float)(x & 15)), m); v[l + 16] = __fadd_rn(__fmul_rn(d, (float)(x >> 4)), m);)
}
__device__ __forceinline__ void dqu_q5_0(const u8* r, int g, int K, float* v) {
  const int nb = K >> 5; const float d = h2f(ld16(r + 20 * nb + 2 * g)); const u32 qh = ld32(r + 16 * nb + 4 * g);
  // qh is unsigned: the 5-bit value is made signed before the offset is taken away.
  DQU_NIB_LOOP(r + 16 * g, v[l] = __fmul_rn((float)((int)((x & 15) | (((qh >> l) & 1) << 4)) - 16), d);
    v[l + 16] = __fmul_rn((float)((int)((x >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16), d);)
}
__device__ __forceinline__ void dqu_q5_1(const u8* r, int g, int K, float* v) {
  const u8* b = r + g * 24; const u32 dm = ld32(b); const float d = h2f((u16)dm), m = h2f((u16)(dm >> 16));
  const u32 qh = ld32(b + 4);
  DQU_NIB_LOOP(b + 8, v[l] = __fadd_rn(__fmul_rn(d, (float)((x & 15) | (((qh >> l) & 1) << 4))), m);
    v[l + 16] = __fadd_rn(__fmul_rn(d, (float)((x >> 4) | (((qh >> (l + 16)) & 1) << 4))), m);)
}
__device__ __forceinline__ void dqu_q8_0(const u8* r, int g, int K, float* v) {
  const u8* b = r + g * 32; const float d = h2f(ld16(r + 32 * (K >> 5) + 2 * g));
  _Pragma("unroll") for (int i = 0; i < 8; i++) { u32 q = ld32(b + 4 * i);
    _Pragma("unroll") for (int j = 0; j < 4; j++) v[4 * i + j] = __fmul_rn(d, (float)(signed char)((q >> (8 * j)) & 255)); }
}
// K-quants: unit g = sub-block g (32 values) of a 256-value block.
__device__ __forceinline__ void dqu_q4_k(const u8* r, int g, int K, float* v) {
  const u8* b = r + (g >> 3) * 144; const int s = g & 7; const V4 h = *(const V4*)b;
  float sc, m; sm_k4(h, s, sc, m);
  const float d1 = __fmul_rn(h2f(h.x & 0xffff), sc), m1 = __fmul_rn(h2f(h.x >> 16), m);
  const V4* qp = (const V4*)(b + 16 + 32 * (s >> 1)); const V4 q0 = qp[0], q1 = qp[1];
  const u32 qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w}; const int sh = 4 * (s & 1);
  _Pragma("unroll") for (int i = 0; i < 8; i++) _Pragma("unroll") for (int j = 0; j < 4; j++)
    v[4 * i + j] = __fsub_rn(__fmul_rn(d1, (float)((qw[i] >> (8 * j + sh)) & 15)), m1);
}
__device__ __forceinline__ void dqu_q5_k(const u8* r, int g, int K, float* v) {
  const u8* b = r + (g >> 3) * 176; const int s = g & 7; const V4 h = *(const V4*)b;
  float sc, m; sm_k4(h, s, sc, m);
  const float d1 = __fmul_rn(h2f(h.x & 0xffff), sc), m1 = __fmul_rn(h2f(h.x >> 16), m);
  const V4* hp = (const V4*)(b + 16); const V4 h0 = hp[0], h1 = hp[1];
  const V4* qp = (const V4*)(b + 48 + 32 * (s >> 1)); const V4 q0 = qp[0], q1 = qp[1];
  const u32 qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
  const u32 hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w}; const int sh = 4 * (s & 1);
  _Pragma("unroll") for (int i = 0; i < 8; i++) _Pragma("unroll") for (int j = 0; j < 4; j++) {
    const u32 q = ((qw[i] >> (8 * j + sh)) & 15) | (((hw[i] >> (8 * j + s)) & 1) << 4);
    v[4 * i + j] = __fsub_rn(__fmul_rn(d1, (float)q), m1); }
}
__device__ __forceinline__ void dqu_q6_k(const u8* r, int g, int K, float* v) {
  const int nb = K >> 8, bi = g >> 3, ch = g & 7, n = ch >> 2, k = ch & 3;
  const float d = h2f(ld16(r + 208 * nb + 2 * bi)); const u8* sc = r + 192 * nb + 16 * bi;
  const float dl0 = __fmul_rn(d, (float)(signed char)sc[2 * ch]), dl1 = __fmul_rn(d, (float)(signed char)sc[2 * ch + 1]);
  const V4* lp = (const V4*)(r + 128 * bi + 64 * n + 32 * (k & 1)); const V4 l0 = lp[0], l1 = lp[1];
  const V4* hp = (const V4*)(r + 128 * nb + 64 * bi + 32 * n); const V4 h0 = hp[0], h1 = hp[1];
  const u32 lw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
  const u32 hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
  const int ls = 4 * (k >> 1), hs = 2 * k;
  _Pragma("unroll") for (int i = 0; i < 8; i++) _Pragma("unroll") for (int j = 0; j < 4; j++) {
    const int q = (int)(((lw[i] >> (8 * j + ls)) & 15) | (((hw[i] >> (8 * j + hs)) & 3) << 4));
    v[4 * i + j] = __fmul_rn(i < 4 ? dl0 : dl1, (float)(q - 32)); }
}
// Plain floats: unit = 8 values; rows of K % 8 == 0 values (16-byte aligned for f16/bf16,
// and for f32 when K % 4 == 0) are read with vector loads.
__device__ __forceinline__ void dqu_f32(const u8* r, int g, int K, float* v) {
  const float* p = (const float*)r + g * 8;
  if ((K & 7) == 0) { F4 a = *(const F4*)p, c = *(const F4*)(p + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = c.x; v[5] = c.y; v[6] = c.z; v[7] = c.w; return; }
  _Pragma("unroll") for (int i = 0; i < 8; i++) v[i] = g * 8 + i < K ? p[i] : 0.f;
}
#define DQU_HALF(T, CVT) \
__device__ __forceinline__ void dqu_##T(const u8* r, int g, int K, float* v) { \
  const u16* p = (const u16*)r + g * 8; \
  if ((K & 7) == 0) { V4 a = *(const V4*)p; const u32 w[4] = {a.x, a.y, a.z, a.w}; \
    _Pragma("unroll") for (int i = 0; i < 4; i++) { v[2 * i] = CVT((u16)(w[i] & 0xffff)); v[2 * i + 1] = CVT((u16)(w[i] >> 16)); } return; } \
  _Pragma("unroll") for (int i = 0; i < 8; i++) v[i] = g * 8 + i < K ? CVT(p[i]) : 0.f; }
DQU_HALF(f16, h2f)
DQU_HALF(bf16, bf2f)
#define DQU_UNIT_f32 8
#define DQU_UNIT_f16 8
#define DQU_UNIT_bf16 8
#define DQU_UNIT_q4_0 32
#define DQU_UNIT_q4_1 32
#define DQU_UNIT_q5_0 32
#define DQU_UNIT_q5_1 32
#define DQU_UNIT_q8_0 32
#define DQU_UNIT_q4_k 32
#define DQU_UNIT_q5_k 32
#define DQU_UNIT_q6_k 32

// Dequantise rows of a weight to f16: one thread per unit, 16-byte stores.
// P: weight byte offset of the first row, row bytes, destination (arena floats), rows,
// units per row, destination row stride (f16 values, a multiple of 8), K.
#define DEF_DEQ16(T) \
extern "C" __global__ void __launch_bounds__(256) deq16_##T(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C) { \
  PDL_LAUNCH(); PDL_WAIT(); \
  const u64 i = (u64)blockIdx.x * 256 + threadIdx.x, upr = P[4]; \
  if (i >= P[3] * upr) return; \
  const u64 row = i / upr; const int g = (int)(i - row * upr); \
  float v[DQU_UNIT_##T]; dqu_##T(W + P[0] + row * P[1], g, (int)P[6], v); \
  u16* dst = (u16*)(A + P[2]) + row * P[5] + (u64)g * DQU_UNIT_##T; \
  _Pragma("unroll") for (int j = 0; j < DQU_UNIT_##T; j += 8) { V4 o; \
    o.x = pack2s(v[j], v[j + 1]); o.y = pack2s(v[j + 2], v[j + 3]); o.z = pack2s(v[j + 4], v[j + 5]); o.w = pack2s(v[j + 6], v[j + 7]); \
    *(V4*)(dst + j) = o; } \
}

// Activations [M, K] f32 (row stride K) to f16 [M, Kp] (Kp = K rounded up to 8, zero
// padded): one thread per 8 values. P: source, destination (arena floats), M, K, Kp.
extern "C" __global__ void __launch_bounds__(256) to_f16(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C) {
  PDL_LAUNCH(); PDL_WAIT();
  const u64 i = (u64)blockIdx.x * 256 + threadIdx.x, K = P[3], Kp = P[4], per = Kp / 8;
  if (i >= P[2] * per) return;
  const u64 r = i / per, c = (i - r * per) * 8; const float* x = A + P[0] + r * K;
  float v[8];
  _Pragma("unroll") for (int j = 0; j < 8; j++) v[j] = c + j < K ? x[c + j] : 0.f;
  V4 o; o.x = pack2s(v[0], v[1]); o.y = pack2s(v[2], v[3]); o.z = pack2s(v[4], v[5]); o.w = pack2s(v[6], v[7]);
  *(V4*)((u16*)(A + P[1]) + r * Kp + c) = o;
}

// SMELT_CUDA_TRACE: the first block of a launch to start and the last to finish (thread 0's
// view) stamp the global timer into two u64 at arena float `ts`; two counters at C[cb] count
// the blocks and are reset by the last, so graphs replay. Kernel-lab timing inside a graph.
__device__ __forceinline__ u64 gtimer() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__device__ __forceinline__ bool trace_b0() { return blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0; }
__device__ __forceinline__ void trace_begin(float* A, u32* C, u64 ts, u64 cb) {
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    const u64 t = gtimer();
    if (atomicAdd(&C[cb], 1u) == 0u) ((u64*)(A + ts))[0] = t;
    if (trace_b0()) ((u64*)(A + ts))[2] = t;
  }
}
// Block 0's thread 0 stamps phase k of the body (stamp 3 + k); nothing unless traced.
#ifdef SMELT_TRACE
#define TRACE_MARK(k) do { if (trace_b0()) ((u64*)(A + TS))[3 + (k)] = gtimer(); } while (0)
#else
#define TRACE_MARK(k) do { } while (0)
#endif
__device__ __forceinline__ void trace_end(float* A, u32* C, u64 ts, u64 cb) {
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    const u32 nb = gridDim.x * gridDim.y * gridDim.z;
    if (atomicAdd(&C[cb + 1], 1u) == nb - 1) { ((u64*)(A + ts))[1] = gtimer(); C[cb] = 0u; C[cb + 1] = 0u; }
  }
}

// Greedy decoding on the device (v20a): the argmax of a one-token step's logits (the largest
// value, the lowest index among equals, NaN never wins, 0 when every value is -inf or NaN: the
// host's `sampler::argmax`) becomes the next step's token and the step's entry in a ring of
// mapped host memory the host reads (v20b: written in place, no copy node); the position goes
// one up. Blocks of 256 threads take GREEDY_SPAN logits each; the last block to finish reduces
// the blocks' bests and resets their counter, so graphs replay. G (u32): [0] the counter,
// [GREEDY_PART_AT, ...) the blocks' bests (u64); ring: GREEDY_RING words, by position.
#define GREEDY_SPAN 4096u
#define GREEDY_RING 64u
#define GREEDY_PART_AT 128u
// A logit and its index as one key whose unsigned order is the argmax's: the value's bits
// made monotonic (-0 as +0; NaN the least), then the index reversed (the lower wins a tie).
__device__ __forceinline__ u64 greedy_key(float v, u32 i) {
  u32 b = __float_as_uint(v);
  if (b == 0x80000000u) b = 0u;
  u32 k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  if (v != v) k = 0u;
  return ((u64)k << 32) | (u64)(0xffffffffu - i);
}
template <int NW> __device__ __forceinline__ u64 greedy_block_max(u64 best, u64* part) {
  _Pragma("unroll") for (int o = 16; o > 0; o >>= 1) {
    const u64 x = __shfl_xor_sync(0xffffffffu, best, o);
    best = x > best ? x : best;
  }
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = best;
  __syncthreads();
  best = part[0];
  _Pragma("unroll") for (int w = 1; w < NW; w++) best = part[w] > best ? part[w] : best;
  return best;
}
extern "C" __global__ void __launch_bounds__(256) greedy_next(const float* logits, u32 n, u32* tok, u32* pos, u32* G, volatile u32* ring) {
#if SMELT_PDL
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  __shared__ u64 part[8];
  __shared__ u32 last;
  const u32 lo = blockIdx.x * GREEDY_SPAN, hi = min(n, lo + GREEDY_SPAN);
  u64 best = 0;
  for (u32 i = lo + threadIdx.x; i < hi; i += 256) {
    const u64 k = greedy_key(__ldcg(logits + i), i);
    best = k > best ? k : best;
  }
  best = greedy_block_max<8>(best, part);
  u64* bests = (u64*)(G + GREEDY_PART_AT);
  if (threadIdx.x == 0) {
    bests[blockIdx.x] = best;
    __threadfence();
    last = atomicAdd(&G[0], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  __syncthreads();
  best = 0;
  for (u32 b = threadIdx.x; b < gridDim.x; b += 256) {
    const u64 k = __ldcg(bests + b);
    best = k > best ? k : best;
  }
  best = greedy_block_max<8>(best, part);
  if (threadIdx.x == 0) {
    const u32 t = (u32)(best >> 32) <= 0x007fffffu ? 0u : 0xffffffffu - (u32)best;
    const u32 p = pos[0];
    tok[0] = t;
    pos[0] = p + 1;
    G[0] = 0u;
    ring[p % GREEDY_RING] = t;
    __threadfence_system();
  }
}

// Sampling candidates on the device (v22): the TOP_K best finite logits of each row of a
// decode step (the host's `top_k_into` set: the larger value first, the lower index among
// equals, -0 as +0; infinities and NaN never), written with their values to mapped host
// memory, so the host samples from them instead of copying and scanning every logit. Keys are
// greedy_key's (non-finite values key 0), so every key is distinct. Grid (blocks a row, rows):
// each warp of a block writes its best TOP_WM keys over 256 logits; the last block of a row
// takes the TOP_K-th best of those as a threshold (TOP_K keys are at least it, so no top-TOP_K
// key is below it; every finite key where fewer are finite), gathers the row's logits at or
// above it (the row is in L2) and selects the best TOP_K of them (v24: where they are at most
// one a thread, by each key's rank, the count of gathered keys above it; else by a radix
// select), then resets the row's words. G (u32): [r] row r's counter, [TOP_FLAG_AT + r] its flags; the warps' maxima
// (u64) from word TOP_KEYS_AT. out: per row TOP_ROW words: the count, the flags (1: a +inf,
// 2: a NaN, 4: more than TOP_CAP keys at the threshold, no candidates), then (index, value
// bits) pairs.
#define TOP_K 128u
#define TOP_SPAN 4096u
#define TOP_FLAG_AT 16u
#define TOP_KEYS_AT 1024u
#define TOP_ROW (2u + 2u * TOP_K)
#define TOP_NT 512
// Best keys each warp offers for the threshold.
#define TOP_WM 4
// Logits the last block gathers at most: more at or above the threshold (many equal logits)
// set flag 4 and no candidates (the host reads the row). Fewer than TOP_K finite maxima means
// fewer than 32 warps with TOP_WM finite logits: at most 31 * 256 + TOP_K finite logits.
#define TOP_CAP (31 * 256 + 128 + 64)
__device__ __forceinline__ u64 top_key(float v, u32 i) {
  return isfinite(v) ? greedy_key(v, i) : 0ull;
}
// The smallest key of the `need` largest nonzero keys of the block's (every thread's PER
// keys; keys are distinct; 1 <= need <= the nonzero keys): a key is among them iff it is
// nonzero and at least the returned value. Eight bits a pass from the top, each pass's
// histogram over the keys that match the bits fixed so far; done once the bin holding the
// boundary is taken whole.
template <int PER> __device__ u64 top_threshold(const u64 (&k)[PER], u32 need, u32* hist, u32* sh) {
  u64 prefix = 0;
  for (int shift = 56; ; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    const u64 fixed = shift == 56 ? 0ull : (~0ull << (shift + 8));
    _Pragma("unroll") for (int j = 0; j < PER; j++) {
      const bool m = k[j] != 0ull && (k[j] & fixed) == prefix;
      const u32 bin = (u32)(k[j] >> shift) & 255u;
      const u32 act = __ballot_sync(0xffffffffu, m);
      if (m) {
        const u32 peers = __match_any_sync(act, bin);
        if ((threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], (u32)__popc(peers));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      u32 c[8], s = 0;
      _Pragma("unroll") for (int q = 0; q < 8; q++) { c[q] = hist[255 - 8 * lane - q]; s += c[q]; }
      u32 inc = s;
      _Pragma("unroll") for (int o = 1; o < 32; o <<= 1) {
        const u32 y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
      }
      const u32 exc = inc - s;
      if (exc < need && need <= inc) {
        u32 acc = exc; int q = 0;
        while (q < 7 && acc + c[q] < need) { acc += c[q]; q++; }
        sh[0] = 255u - 8u * lane - q; sh[1] = need - acc; sh[2] = c[q];
      }
    }
    __syncthreads();
    const u32 bin = sh[0], rest = sh[1], inbin = sh[2];
    __syncthreads();
    prefix |= (u64)bin << shift;
    need = rest;
    if (inbin == rest || shift == 0) return prefix;
  }
}
// The block's selected keys to `dst` (any order); returns their count (every thread).
template <int PER> __device__ u32 top_select(const u64 (&k)[PER], u64* dst, u32* hist, u32* sh) {
  u32 nz = 0;
  _Pragma("unroll") for (int j = 0; j < PER; j++) nz += k[j] != 0ull;
  nz = __reduce_add_sync(0xffffffffu, nz);
  if (threadIdx.x == 0) sh[3] = 0u;
  __syncthreads();
  if ((threadIdx.x & 31) == 0 && nz) atomicAdd(&sh[3], nz);
  __syncthreads();
  const u32 total = sh[3];
  __syncthreads();
  if (total == 0u) return 0u;
  const u32 need = total < TOP_K ? total : TOP_K;
  const u64 thr = top_threshold<PER>(k, need, hist, sh);
  if (threadIdx.x == 0) sh[3] = 0u;
  __syncthreads();
  _Pragma("unroll") for (int j = 0; j < PER; j++)
    if (k[j] != 0ull && k[j] >= thr) dst[atomicAdd(&sh[3], 1u)] = k[j];
  __syncthreads();
  return need;
}
// A warp's largest key (v24: two 32-bit reductions where five 64-bit shuffle rounds were).
__device__ __forceinline__ u64 warp_max_key(u64 k) {
  const u32 hi = __reduce_max_sync(0xffffffffu, (u32)(k >> 32));
  const u32 lo = __reduce_max_sync(0xffffffffu, (u32)(k >> 32) == hi ? (u32)k : 0u);
  return ((u64)hi << 32) | (u64)lo;
}
// The last block's shared memory: the radix histogram and words, the gathered logits' indices,
// their keys (v24: at most TOP_NT, ranked by counting) and the selected keys.
struct TopSmem {
  u64 gk[TOP_NT];
  u64 sel[TOP_K];
  u32 hist[256], sh[4], last, cnt;
  u32 cidx[TOP_CAP];
};
// Phase 1 of row r in every block: each warp's best TOP_WM keys over its 256 logits into the
// row's maxima, the row's flags; true in the row's last block to finish (the others are done).
__device__ bool top_phase1(const float* row, u32 n, u32 r, u32* G, TopSmem& s) {
  const u32 nb = gridDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const u32 lo = blockIdx.x * TOP_SPAN + warp * (TOP_SPAN / (TOP_NT / 32));
  constexpr int PL = TOP_SPAN / TOP_NT;
  u64 k[PL];
  u32 f = 0;
  _Pragma("unroll") for (int j = 0; j < PL; j++) {
    const u32 i = lo + j * 32 + lane;
    const float v = i < n ? __ldcg(row + i) : 0.f;
    k[j] = i < n ? top_key(v, i) : 0ull;
    if (i < n && v != v) f |= 2u;
    if (i < n && v == INFINITY) f |= 1u;
  }
  f = __reduce_or_sync(0xffffffffu, f);
  u64* maxima = (u64*)(G + TOP_KEYS_AT) + (u64)r * nb * TOP_NT / 32 * TOP_WM;
  u64 mine = 0;
  _Pragma("unroll") for (int j = 0; j < PL; j++) mine = k[j] > mine ? k[j] : mine;
  _Pragma("unroll") for (int q = 0; q < TOP_WM; q++) {
    const u64 best = warp_max_key(mine);
    if (lane == 0) maxima[(blockIdx.x * (TOP_NT / 32) + warp) * TOP_WM + q] = best;
    if (best != 0ull && mine == best) {
      // The lane that held it: its next best (keys are distinct).
      mine = 0;
      _Pragma("unroll") for (int j = 0; j < PL; j++) {
        if (k[j] == best) k[j] = 0ull;
        mine = k[j] > mine ? k[j] : mine;
      }
    }
  }
  if (lane == 0 && f) atomicOr(&G[TOP_FLAG_AT + r], f);
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    s.last = atomicAdd(&G[r], 1u) == nb - 1;
  }
  __syncthreads();
  if (!s.last) return false;
  __threadfence();
  return true;
}
// The row's last block: its TOP_K best keys (every finite one where fewer) into s.sel, their
// count returned (every thread); *overflow where more than the block keeps are at the
// threshold (many equal logits: no candidates).
__device__ u32 top_last(const float* row, u32 n, u32 r, const u32* G, TopSmem& s, bool* overflow) {
  const u32 nb = gridDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const u64* maxima = (const u64*)(G + TOP_KEYS_AT) + (u64)r * nb * TOP_NT / 32 * TOP_WM;
  constexpr int PL = TOP_SPAN / TOP_NT;
  // A threshold no top-TOP_K key is below: the TOP_K-th best of the warps' maxima (TOP_K
  // distinct keys are at least it), or every finite logit where fewer maxima are finite
  // (then fewer than TOP_CAP logits are).
  constexpr int PM = 64 * (TOP_NT / 32) * TOP_WM / TOP_NT;
  u64 m[PM];
  _Pragma("unroll") for (int j = 0; j < PM; j++) {
    const u32 q = j * TOP_NT + tid;
    m[j] = q < nb * (TOP_NT / 32) * TOP_WM ? __ldcg(maxima + q) : 0ull;
  }
  u32 nz = 0;
  _Pragma("unroll") for (int j = 0; j < PM; j++) nz += m[j] != 0ull;
  nz = __reduce_add_sync(0xffffffffu, nz);
  if (tid == 0) s.cnt = 0u;
  __syncthreads();
  if (lane == 0 && nz) atomicAdd(&s.cnt, nz);
  __syncthreads();
  const u32 finite_maxima = s.cnt;
  __syncthreads();
  u64 thr = 1ull;
  if (finite_maxima >= TOP_K) {
    // The TOP_K-th best maximum itself: the least of those at or above the select's prefix.
    const u64 pre = top_threshold<PM>(m, TOP_K, s.hist, s.sh);
    u64 least = ~0ull;
    _Pragma("unroll") for (int j = 0; j < PM; j++) if (m[j] != 0ull && m[j] >= pre && m[j] < least) least = m[j];
    least = ~warp_max_key(~least);
    if (lane == 0) s.sel[warp] = least;
    __syncthreads();
    thr = s.sel[0];
    _Pragma("unroll") for (int w = 1; w < TOP_NT / 32; w++) thr = s.sel[w] < thr ? s.sel[w] : thr;
    __syncthreads();
  }
  if (tid == 0) { s.cnt = 0u; s.sh[3] = 0u; }
  __syncthreads();
  // Keys at or above the threshold: a warp whose TOP_WM-th best is below it has them all
  // among its maxima; the others (at most TOP_K / TOP_WM: their maxima are at or above it)
  // are read again whole.
  _Pragma("unroll") for (int j = 0; j < PM; j++) {
    const u32 q = j * TOP_NT + tid;
    const u64 fourth = __shfl_sync(0xffffffffu, m[j], (lane & ~(TOP_WM - 1)) | (TOP_WM - 1));
    if (m[j] != 0ull && m[j] >= thr) {
      if (fourth >= thr) {
        if ((q & (TOP_WM - 1)) == TOP_WM - 1) {
          const u32 e = atomicAdd(&s.sh[3], 1u);
          if (e < 32) s.hist[e] = q / TOP_WM;
        }
      } else {
        const u32 e = atomicAdd(&s.cnt, 1u);
        if (e < TOP_CAP) s.cidx[e] = 0xffffffffu - (u32)m[j];
      }
    }
  }
  __syncthreads();
  const u32 full = min(s.sh[3], 32u);
  for (u32 e = warp; e < full; e += TOP_NT / 32) {
    const u32 base = s.hist[e] * (TOP_SPAN / (TOP_NT / 32));
    float v[PL];
    _Pragma("unroll") for (int j = 0; j < PL; j++) {
      const u32 i = base + j * 32 + lane;
      v[j] = i < n ? __ldcg(row + i) : 0.f;
    }
    _Pragma("unroll") for (int j = 0; j < PL; j++) {
      const u32 i = base + j * 32 + lane;
      if (i < n && top_key(v[j], i) >= thr) {
        const u32 q = atomicAdd(&s.cnt, 1u);
        if (q < TOP_CAP) s.cidx[q] = i;
      }
    }
  }
  __syncthreads();
  const u32 got = s.cnt;
  *overflow = got > TOP_CAP;
  if (*overflow) return 0u;
  if (got <= TOP_NT) {
    // v24: one key a thread, its rank the keys above it (keys are distinct): the best TOP_K
    // land in rank order.
    u64 key = 0ull;
    if (tid < got) {
      const u32 i = s.cidx[tid];
      key = top_key(__ldcg(row + i), i);
      s.gk[tid] = key;
    }
    __syncthreads();
    if (tid < got) {
      u32 rank = 0;
      _Pragma("unroll 8") for (u32 j = 0; j < got; j++) rank += s.gk[j] > key;
      if (rank < TOP_K) s.sel[rank] = key;
    }
    __syncthreads();
    return min(got, TOP_K);
  }
  constexpr int PC = (TOP_CAP + TOP_NT - 1) / TOP_NT;
  u64 k2[PC];
  _Pragma("unroll") for (int j = 0; j < PC; j++) {
    const u32 q = j * TOP_NT + tid;
    k2[j] = q < got ? top_key(__ldcg(row + s.cidx[q]), s.cidx[q]) : 0ull;
  }
  return top_select<PC>(k2, s.sel, s.hist, s.sh);
}
extern "C" __global__ void __launch_bounds__(TOP_NT) top_cands(const float* logits, u32 n, u32* G, u32* out) {
#if SMELT_PDL
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  __shared__ TopSmem s;
  const u32 r = blockIdx.y, tid = threadIdx.x;
  const float* row = logits + (u64)r * n;
  if (!top_phase1(row, n, r, G, s)) return;
  bool overflow;
  const u32 total = top_last(row, n, r, G, s, &overflow);
  u32* o = out + (u64)r * TOP_ROW;
  for (u32 j = tid; j < total; j += TOP_NT) {
    const u32 idx = 0xffffffffu - (u32)s.sel[j];
    o[2 + 2 * j] = idx;
    o[3 + 2 * j] = __float_as_uint(__ldcg(row + idx));
  }
  if (tid == 0) {
    o[0] = total;
    o[1] = __ldcg(G + TOP_FLAG_AT + r) | (overflow ? 4u : 0u);
    G[TOP_FLAG_AT + r] = 0u;
    G[r] = 0u;
  }
  __threadfence_system();
}

// Sampled decoding on the device (v23): the draw of a one-token step from its candidates
// (top_cands' output in device memory), as the host's `Sampler::sample_top` draws it, so the
// next step is launched before the host has the token. One block of TOP_K threads. S: the
// sampling settings (f32 temperature, u32 top-k, f32 top-p, f32 min-p, f32 repeat penalty,
// f32 frequency and presence penalties, u32 window); H: [0] the tokens seen, [1, 1 + SAMPLE_HIST)
// the last of them by count; U: the uniform draws, one a position (mapped host memory, written
// ahead by the host from the sampler's seeded stream); ring: the tokens, as greedy_next's. A
// step whose candidates cannot give the host's draw (none, too many at the threshold, a
// penalty making one non-finite) writes SAMPLE_NONE to the ring and token 0 to the next step.
// A temperature at most 0 (v27) picks the best penalised candidate (greedy with penalties).
#define SAMPLE_HIST 128u
#define SAMPLE_NONE 0xffffffffu
// e^x as the host's `sampler::exp_det` computes it, operation for operation (no contraction).
__device__ __forceinline__ float exp_det(float x) {
  if (x != x) return x;
  if (x > 88.0f) return INFINITY;
  if (x < -87.0f) return 0.0f;
  const float n = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269502f), 12582912.0f), 12582912.0f);
  const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, 0.693145752f)), __fmul_rn(n, 1.42860677e-6f));
  float p = __fadd_rn(0.00833333377f, __fmul_rn(r, 0.00138888892f));
  p = __fadd_rn(0.0416666679f, __fmul_rn(r, p));
  p = __fadd_rn(0.166666672f, __fmul_rn(r, p));
  p = __fadd_rn(0.5f, __fmul_rn(r, p));
  p = __fadd_rn(1.0f, __fmul_rn(r, p));
  p = __fadd_rn(1.0f, __fmul_rn(r, p));
  return __fmul_rn(p, __int_as_float(((int)n + 127) << 23));
}
// The penalised logit (the host's `penalised`).
__device__ __forceinline__ float sample_penalised(float l, u32 c, float rp, float fp, float pp) {
  const float a = l > 0.0f ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
  return __fsub_rn(a, __fadd_rn(__fmul_rn((float)c, fp), pp));
}
extern "C" __global__ void __launch_bounds__(TOP_K) sample_draw(const u32* cand, const u32* S, u32* H, const volatile float* U, u32* tok, u32* pos, volatile u32* ring) {
#if SMELT_PDL
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  __shared__ u32 sidx[TOP_K], hw[SAMPLE_HIST];
  __shared__ float sval[TOP_K], sp[TOP_K];
  __shared__ u64 rk[TOP_K], bk[TOP_K];
  __shared__ u32 bad, keep_s;
  __shared__ float su, ssum;
  const u32 t = threadIdx.x;
  // Every thread reads the position before the barrier after which thread 0 may move it.
  const u32 p = pos[0];
  const u32 count = min(__ldcg(cand), TOP_K), flags = __ldcg(cand + 1);
  const u32 seen = __ldcg(H), n_win = min(S[7], seen);
  if (t == 0) { bad = count == 0u || (flags & 4u) != 0u; su = U[p % GREEDY_RING]; }
  // The penalties' window (the last n_win tokens seen) in shared memory.
  hw[t] = t < n_win ? __ldcg(H + 1 + (seen - 1u - t) % SAMPLE_HIST) : 0xffffffffu;
  const bool mine = t < count;
  const u32 idx = mine ? __ldcg(cand + 2 + 2 * t) : 0xffffffffu;
  float v = mine ? __uint_as_float(__ldcg(cand + 3 + 2 * t)) : 0.f;
  __syncthreads();
  if (mine && n_win > 0u) {
    u32 c = 0;
    _Pragma("unroll 16") for (u32 w = 0; w < SAMPLE_HIST; w++) c += hw[w] == idx;
    if (c > 0u) {
      v = sample_penalised(v, c, __uint_as_float(S[4]), __uint_as_float(S[5]), __uint_as_float(S[6]));
      if (!isfinite(v)) bad = 1u;
    }
  }
  // Keys whose order is the host's: the rank (larger value first, -0 as +0, then the lower
  // token) and `by_rank` (the value's total order, then the lower token).
  const u32 b = __float_as_uint(v), b0 = b == 0x80000000u ? 0u : b;
  const u32 mono = (b0 & 0x80000000u) ? ~b0 : (b0 | 0x80000000u);
  const u32 tot = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  const u64 my_rk = mine ? ((u64)mono << 32) | (u64)(0xffffffffu - idx) : 0ull;
  const u64 my_bk = ((u64)tot << 32) | (u64)(0xffffffffu - idx);
  rk[t] = my_rk;
  __syncthreads();
  u32 pick = SAMPLE_NONE;
  if (!bad) {
    const float temp = __uint_as_float(S[0]), top_p = __uint_as_float(S[2]), min_p = __uint_as_float(S[3]);
    u32 rank = 0;
    _Pragma("unroll 16") for (u32 j = 0; j < TOP_K; j++) rank += rk[j] > my_rk;
    if (temp <= 0.0f) {
      // v27: greedy with penalties (the host's `sample_top` at temperature <= 0): the best
      // penalised candidate by the rank's order, the one key no other exceeds.
      if (mine && rank == 0u) keep_s = idx;
      __syncthreads();
      if (t == 0) pick = keep_s;
    } else {
      const u32 k = min(S[1], count);
      const bool sel = mine && rank < k;
      bk[t] = sel ? my_bk : 0ull;
      __syncthreads();
      u32 at = 0;
      _Pragma("unroll 16") for (u32 j = 0; j < TOP_K; j++) at += bk[j] > my_bk;
      if (sel) { sidx[at] = idx; sval[at] = v; }
      __syncthreads();
      // Softmax at temperature 1 for top-p and min-p (the host's `softmax`; its maximum the
      // first value): exponentials and quotients in parallel, the sums in the host's order.
      const float mx = sval[0];
      if (t < k) sp[t] = exp_det(__fsub_rn(sval[t], mx));
      __syncthreads();
      if (t == 0) {
        float sum = 0.0f;
        _Pragma("unroll 8") for (u32 j = 0; j < k; j++) sum = __fadd_rn(sum, sp[j]);
        ssum = sum;
      }
      __syncthreads();
      if (t < k) sp[t] = __fdiv_rn(sp[t], ssum);
      __syncthreads();
      if (t == 0) {
        u32 keep = k;
        if (top_p < 1.0f) {
          float acc = 0.0f;
          for (u32 j = 0; j < k; j++) {
            acc = __fadd_rn(acc, sp[j]);
            if (acc >= top_p) { keep = j + 1; break; }
          }
        }
        if (min_p > 0.0f) {
          const float floor = __fmul_rn(sp[0], min_p);
          u32 m = 0;
          while (m < k && sp[m] >= floor) m++;
          keep = min(keep, max(m, 1u));
        }
        keep_s = max(keep, 1u);
      }
      __syncthreads();
      const u32 kk = keep_s;
      if (t < kk) sp[t] = exp_det(__fdiv_rn(__fsub_rn(sval[t], mx), temp));
      __syncthreads();
      if (t == 0) {
        float sum = 0.0f;
        _Pragma("unroll 8") for (u32 j = 0; j < kk; j++) sum = __fadd_rn(sum, sp[j]);
        ssum = sum;
      }
      __syncthreads();
      if (t < kk) sp[t] = __fdiv_rn(sp[t], ssum);
      __syncthreads();
      if (t == 0) {
        const float r = su;
        float acc = 0.0f;
        pick = sidx[kk - 1];
        for (u32 j = 0; j < kk; j++) {
          acc = __fadd_rn(acc, sp[j]);
          if (r < acc) { pick = sidx[j]; break; }
        }
      }
    }
  }
  if (t == 0) {
    tok[0] = pick == SAMPLE_NONE ? 0u : pick;
    pos[0] = p + 1;
    if (pick != SAMPLE_NONE) { H[1 + seen % SAMPLE_HIST] = pick; H[0] = seen + 1; }
    ring[p % GREEDY_RING] = pick;
    __threadfence_system();
  }
}
