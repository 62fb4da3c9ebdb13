//! Decode attention's work on one staged 32-key chunk, in its three forms (a warp a query
//! head, v15; the group's heads on tensor cores in warp 0, v16a; the same with the products
//! transposed, v16d), and what each form keeps between chunks and pushes to the merging
//! blocks at the end (codegen/attention.rs). The tiled prefill kernel takes the first form's
//! chunk too.

use super::attention::CHUNK;

/// How one warp of a decode attention split works through its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// A warp a query head, a lane a key's score (v15; every head size).
    Scalar,
    /// Warp 0 for the group's heads on tensor cores (v16a; at most 8 heads of 64 or 128).
    Mma,
    /// [`Chunk::Mma`] with S^T = K Q^T and O^T = V^T P^T (v16d, kernel lab).
    MmaT,
}

impl Chunk {
    /// The block's shared query (and, for the scalar form, the partials before a merge
    /// through distributed shared memory).
    pub(super) fn shared(self, grp: usize, hd: usize, hs: usize) -> String {
        match self {
            // Rows 8 a KV group: A's (or B's) rows past the group's heads hold any bits and
            // give rows (columns) of S, P and O that nothing reads.
            Chunk::Mma | Chunk::MmaT => format!("__shared__ alignas(16) u16 qh[2][8][{hs}];"),
            Chunk::Scalar => format!(
                "__shared__ alignas(16) float qsh[{grp}][{hd}]; __shared__ float mls[{grp}][2];"
            ),
        }
    }

    /// Each warp's query values `qv` (scaled by `sc`) into the shared query: f32 for the
    /// scalar form, two f16 rows a head (the value rounded, then what rounding lost) for the
    /// tensor cores' fragments. `qsel`/`qif` pick the warp's row and guard the store.
    pub(super) fn query_store(self, hd: usize, sc: &str, qsel: &str, qif: &str) -> String {
        let e = hd / 32;
        match self {
            Chunk::Mma | Chunk::MmaT => format!(
                "_Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const float v = fminf(fmaxf(qv[i] * {sc}, -65504.f), 65504.f); const u16 hi = f2h(v);\n\
                qh[0][warp][lane + 32 * i] = hi; qh[1][warp][lane + 32 * i] = f2h(v - h2f(hi)); }}\n"
            ),
            Chunk::Scalar => format!(
                "float* qs = qsh[{qsel}];\n\
                {qif}_Pragma(\"unroll\") for (int i = 0; i < {e}; i++) qs[lane + 32 * i] = qv[i] * {sc};\n"
            ),
        }
    }

    /// The running softmax and output a warp keeps between chunks, zeroed.
    pub(super) fn state(self, hd: usize) -> String {
        let (e, dn, dm) = (hd / 32, hd / 8, hd / 16);
        match self {
            Chunk::Scalar => format!(
                "float m = -INFINITY, l = 0.f, acc[{e}];\n\
                _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] = 0.f;\n"
            ),
            Chunk::Mma => format!(
                "float m = -INFINITY, l = 0.f, o[{dn}][4];\n\
                _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ o[i][0] = 0.f; o[i][1] = 0.f; o[i][2] = 0.f; o[i][3] = 0.f; }}\n"
            ),
            Chunk::MmaT => format!(
                "float mt[2] = {{-INFINITY, -INFINITY}}, lt[2] = {{0.f, 0.f}}, o[{dm}][4];\n\
                _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) {{ o[i][0] = 0.f; o[i][1] = 0.f; o[i][2] = 0.f; o[i][3] = 0.f; }}\n"
            ),
        }
    }

    /// The work on staged buffer `b` (`sif`: the scalar form's guard of which warps score;
    /// `mw`: the tensor-core forms' condition for the warp that scores, `warp == 0` but with
    /// key regions).
    pub(super) fn body(self, hd: usize, sif: &str, mw: &str) -> String {
        match self {
            Chunk::Scalar => scalar_chunk(hd, sif, "KVS(b, 0, lane)", "KVS(b, 1, jj)"),
            Chunk::Mma => mma_chunk(hd, mw),
            Chunk::MmaT => mma_chunk_t(hd, mw),
        }
    }

    /// v19b: `regions` warps of a tensor-core form each scored their own key region; warps
    /// 1.. leave their running softmax and output in shared memory at `xo` (after a block
    /// barrier: it overlays the staged chunks) and warp 0 merges them into its own, region
    /// by region. An empty region (max -inf, sum and output 0) leaves warp 0's values as they
    /// were, bit for bit: a factor is exactly 1 where a max is the merged max. None for the
    /// scalar form; else the code and the floats it takes in shared memory.
    pub(super) fn merge_regions(self, hd: usize, regions: usize) -> Option<(String, usize)> {
        let (dn, dm) = (hd / 8, hd / 16);
        let (ns, save, take) = match self {
            Chunk::Scalar => return None,
            Chunk::Mma => (
                2 + 2 * dn,
                format!(
                    "x[0] = m; x[1] = l; _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ x[2 + 2 * i] = o[i][0]; x[3 + 2 * i] = o[i][1]; }}"
                ),
                format!(
                    "const float mw = x[0], M = fmaxf(m, mw); const float c0 = m == M ? 1.f : __expf(m - M), c1 = mw == M ? 1.f : __expf(mw - M);\n\
                    l = l * c0 + x[1] * c1; m = M;\n\
                    _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ o[i][0] = o[i][0] * c0 + x[2 + 2 * i] * c1; o[i][1] = o[i][1] * c0 + x[3 + 2 * i] * c1; }}"
                ),
            ),
            Chunk::MmaT => (
                4 + 4 * dm,
                format!(
                    "x[0] = mt[0]; x[1] = mt[1]; x[2] = lt[0]; x[3] = lt[1]; _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) _Pragma(\"unroll\") for (int f = 0; f < 4; f++) x[4 + 4 * i + f] = o[i][f];"
                ),
                format!(
                    "float c0[2], c1[2];\n\
                    _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{ const float mw = x[c], M = fmaxf(mt[c], mw); c0[c] = mt[c] == M ? 1.f : __expf(mt[c] - M); c1[c] = mw == M ? 1.f : __expf(mw - M);\n\
                      lt[c] = lt[c] * c0[c] + x[2 + c] * c1[c]; mt[c] = M; }}\n\
                    _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) _Pragma(\"unroll\") for (int f = 0; f < 4; f++) o[i][f] = o[i][f] * c0[f & 1] + x[4 + 4 * i + f] * c1[f & 1];"
                ),
            ),
        };
        let code = format!(
            "__syncthreads();\n\
            {{ float* xo = sm;\n\
              if (warp > 0 && warp < {regions}) {{ float* x = xo + ((warp - 1) * 32 + lane) * {ns}; {save} }}\n\
              __syncthreads();\n\
              if (warp == 0) for (int w = 1; w < {regions}; w++) {{ const float* x = xo + ((w - 1) * 32 + lane) * {ns};\n{take}\n}} }}\n"
        );
        Some((code, (regions - 1) * 32 * ns))
    }

    /// The split's partials (each head's outputs, max and sum) stored into the blocks that
    /// merge them (`per` outputs a block, `splits` blocks): v15 from each head's warp, v16a
    /// from warp 0's fragments (lane quad r holds head r's dims 8i + 2 (lane & 3) + {0, 1}),
    /// v16d from O^T's (lane (g, t) holds heads 2t and 2t + 1, dims 16i + g and 16i + g + 8).
    pub(super) fn pushes(self, hd: usize, grp: usize, per: usize, splits: usize) -> String {
        let (e, dn, dm) = (hd / 32, hd / 8, hd / 16);
        match self {
            Chunk::Scalar => format!(
                "_Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int oi = warp * {hd} + lane * {e} + i, ow = oi / {per};\n\
                  st_async_f32(&rc[s][oi - ow * {per}], ow, acc[i], &mbar); }}\n\
                if (lane < {splits}) {{ st_async_f32(&rc[s][{per} + 2 * warp], lane, m, &mbar); st_async_f32(&rc[s][{per} + 2 * warp + 1], lane, l, &mbar); }}\n"
            ),
            Chunk::Mma => format!(
                "if (warp == 0 && (lane >> 2) < {grp}) {{ const int r = lane >> 2;\n\
                  _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{\n\
                    const int oi = r * {hd} + i * 8 + 2 * (lane & 3) + c, ow = oi / {per};\n\
                    st_async_f32(&rc[s][oi - ow * {per}], ow, o[i][c], &mbar); }}\n\
                  for (int w = lane & 3; w < {splits}; w += 4) {{ st_async_f32(&rc[s][{per} + 2 * r], w, m, &mbar); st_async_f32(&rc[s][{per} + 2 * r + 1], w, l, &mbar); }} }}\n"
            ),
            Chunk::MmaT => format!(
                "if (warp == 0) {{ _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{ const int r = 2 * (lane & 3) + c; if (r < {grp}) {{\n\
                  _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) _Pragma(\"unroll\") for (int x = 0; x < 2; x++) {{\n\
                    const int oi = r * {hd} + 16 * i + (lane >> 2) + 8 * x, ow = oi / {per};\n\
                    st_async_f32(&rc[s][oi - ow * {per}], ow, o[i][c + 2 * x], &mbar); }}\n\
                  for (int w = lane >> 2; w < {splits}; w += 8) {{ st_async_f32(&rc[s][{per} + 2 * r], w, mt[c], &mbar); st_async_f32(&rc[s][{per} + 2 * r + 1], w, lt[c], &mbar); }} }} }} }}\n"
            ),
        }
    }
}

/// One warp's work on a staged 32-key chunk (keys `j0..j0 + 31`, lane `l`'s key row at
/// `krow`, key `jj`'s value row at `vrow`, each with `lane`/`jj` in it) in v15's layout: the
/// warp a query head (queries at `qs`), a lane a key's score, every lane two or more of the
/// output's dims; `who` (empty or ending in `&& `) says which warps take it. Decode attention
/// (v15, and 256-wide heads) and the tiled prefill kernel.
pub(super) fn scalar_chunk(hd: usize, who: &str, krow: &str, vrow: &str) -> String {
    let e = hd / 32;
    let dot = k_dot(krow, hd);
    format!(
        "if ({who}j0 + {CHUNK} > lo) {{\n\
          const int j = j0 + lane; const bool ok = j >= lo && j <= p1; float sc = -INFINITY;\n\
          if (ok) {{ float d = 0.f;\n{dot}sc = d; }}\n\
          const float mn = fmaxf(m, warp_max(sc));\n\
          const float corr = m == -INFINITY ? 0.f : __expf(m - mn); const float pj = ok ? __expf(sc - mn) : 0.f;\n\
          l = l * corr + warp_sum(pj); m = mn;\n\
          _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] *= corr;\n\
          const int nk = min({CHUNK}, p1 + 1 - j0); // keys past the position may be unwritten\n\
          _Pragma(\"unroll 8\") for (int jj = 0; jj < nk; jj++) {{ const float pw = __shfl_sync(0xffffffffu, pj, jj);\n\
            const u16* vr = {vrow} + lane * {e};\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i += 2) {{ const u32 w = *(const u32*)(vr + i); acc[i] += pw * h2f(w & 0xffff); acc[i + 1] += pw * h2f(w >> 16); }} }}\n\
        }}"
    )
}

/// v16a: the same chunk's work in warp 0 on tensor cores. S = Q K^T as four 8-key tiles
/// (`ldmatrix` of K rows: each lane gets a key's two dims, the B fragment as stored), a key
/// outside `lo..=p1` set to -inf; row r's max and sum over lane quad r (two shuffles each);
/// O = O * corr + P V over two 16-key steps, V's fragments by a transposing `ldmatrix` with
/// the keys past the position zeroed (they may be unwritten: any bits, NaN included, where
/// the probability 0 would not cancel them). Rows 8-15 of every product are zero and unused.
fn mma_chunk(hd: usize, mw: &str) -> String {
    let (ks, dn, qj) = (hd / 16, hd / 8, hd / 32);
    format!(
        "if ({mw} && j0 + {CHUNK} > lo) {{\n\
          u32 qa[2][{qj}][4]; float sa[4][4], sb[4][4];\n\
          _Pragma(\"unroll\") for (int x = 0; x < 2; x++) _Pragma(\"unroll\") for (int i = 0; i < {qj}; i++) ldsm4(qa[x][i], &qh[x][lane & 7][32 * i + 8 * (lane >> 3)]);\n\
          _Pragma(\"unroll\") for (int t = 0; t < 4; t++) _Pragma(\"unroll\") for (int c = 0; c < 4; c++) {{ sa[t][c] = 0.f; sb[t][c] = 0.f; }}\n\
          _Pragma(\"unroll\") for (int i = 0; i < {ks}; i++) _Pragma(\"unroll\") for (int t = 0; t < 4; t += 2) {{ u32 kf[4];\n\
            ldsm4(kf, KVS(b, 0, t * 8 + (lane >> 4) * 8 + (lane & 7)) + 16 * i + ((lane >> 3) & 1) * 8);\n\
            const u32* ah = &qa[0][i >> 1][2 * (i & 1)]; const u32* al = &qa[1][i >> 1][2 * (i & 1)];\n\
            mma_top(sa[t], ah[0], ah[1], kf[0], kf[1]); mma_top(sa[t + 1], ah[0], ah[1], kf[2], kf[3]);\n\
            mma_top(sb[t], al[0], al[1], kf[0], kf[1]); mma_top(sb[t + 1], al[0], al[1], kf[2], kf[3]); }}\n\
          _Pragma(\"unroll\") for (int t = 0; t < 4; t++) {{ sa[t][0] += sb[t][0]; sa[t][1] += sb[t][1]; }}\n\
          const int jq = j0 + 2 * (lane & 3); float mx = -INFINITY;\n\
          _Pragma(\"unroll\") for (int t = 0; t < 4; t++) _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{\n\
            const int j = jq + 8 * t + c; if (j < lo || j > p1) sa[t][c] = -INFINITY; mx = fmaxf(mx, sa[t][c]); }}\n\
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)); mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));\n\
          const float mn = fmaxf(m, mx); const float corr = m == -INFINITY ? 0.f : __expf(m - mn);\n\
          float ps = 0.f; u32 pa[2][2];\n\
          _Pragma(\"unroll\") for (int t = 0; t < 4; t++) {{ const float e0 = __expf(sa[t][0] - mn), e1 = __expf(sa[t][1] - mn);\n\
            ps += e0 + e1; pa[t >> 1][t & 1] = pack2(e0, e1); }}\n\
          ps += __shfl_xor_sync(0xffffffffu, ps, 1); ps += __shfl_xor_sync(0xffffffffu, ps, 2);\n\
          l = l * corr + ps; m = mn;\n\
          _Pragma(\"unroll\") for (int i = 0; i < {dn}; i++) {{ o[i][0] *= corr; o[i][1] *= corr; }}\n\
          _Pragma(\"unroll\") for (int kk = 0; kk < 2; kk++) {{\n\
            const int jb = j0 + 16 * kk + 2 * (lane & 3);\n\
            const u32 k0 = (jb <= p1 ? 0xffffu : 0u) | (jb + 1 <= p1 ? 0xffff0000u : 0u), k1 = (jb + 8 <= p1 ? 0xffffu : 0u) | (jb + 9 <= p1 ? 0xffff0000u : 0u);\n\
            const u16* vrow = KVS(b, 1, 16 * kk + ((lane >> 3) & 1) * 8 + (lane & 7)) + (lane >> 4) * 8;\n\
            _Pragma(\"unroll\") for (int i = 0; i < {dn}; i += 2) {{ u32 vf[4]; ldsm4t(vf, vrow + 8 * i);\n\
              mma_top(o[i], pa[kk][0], pa[kk][1], vf[0] & k0, vf[1] & k1); mma_top(o[i + 1], pa[kk][0], pa[kk][1], vf[2] & k0, vf[3] & k1); }} }}\n\
        }}"
    )
}

/// v16d (kernel lab): v16a's chunk with the products transposed. S^T = K Q^T: the chunk's
/// 32 keys as M (two tiles of 16, K's A fragments by `ldmatrix`), the group's heads as N = 8
/// (the query's fragments as v16a loads them serve as B); lane (g, t) holds keys g, g + 8 of
/// each tile for heads 2t and 2t + 1, so a head's max and sum take three shuffles over the
/// lanes of its t. P^T's f16 fragments, transposed by `movmatrix`, are the B operand of
/// O^T = V^T P^T (V^T's A fragments by a transposing `ldmatrix`, masked past the position as
/// v16a's). 16 + 8 products a chunk of 64 dims against v16a's 32 + 16.
fn mma_chunk_t(hd: usize, mw: &str) -> String {
    let (qj, dm) = (hd / 32, hd / 16);
    format!(
        "if ({mw} && j0 + {CHUNK} > lo) {{\n\
          u32 qa[2][{qj}][4]; float sa[2][4], sb[2][4];\n\
          _Pragma(\"unroll\") for (int x = 0; x < 2; x++) _Pragma(\"unroll\") for (int i = 0; i < {qj}; i++) ldsm4(qa[x][i], &qh[x][lane & 7][32 * i + 8 * (lane >> 3)]);\n\
          _Pragma(\"unroll\") for (int u = 0; u < 2; u++) _Pragma(\"unroll\") for (int c = 0; c < 4; c++) {{ sa[u][c] = 0.f; sb[u][c] = 0.f; }}\n\
          _Pragma(\"unroll\") for (int i = 0; i < {ks}; i++) _Pragma(\"unroll\") for (int u = 0; u < 2; u++) {{ u32 kf[4];\n\
            ldsm4(kf, KVS(b, 0, 16 * u + (lane & 7) + ((lane >> 3) & 1) * 8) + 16 * i + (lane >> 4) * 8);\n\
            const u32* bh = &qa[0][i >> 1][2 * (i & 1)]; const u32* bl = &qa[1][i >> 1][2 * (i & 1)];\n\
            mma_full(sa[u], kf, bh[0], bh[1]); mma_full(sb[u], kf, bl[0], bl[1]); }}\n\
          float mx[2] = {{-INFINITY, -INFINITY}};\n\
          _Pragma(\"unroll\") for (int u = 0; u < 2; u++) _Pragma(\"unroll\") for (int x = 0; x < 2; x++) {{\n\
            const int j = j0 + 16 * u + (lane >> 2) + 8 * x; const bool ok = j >= lo && j <= p1;\n\
            _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{ const int f = 2 * x + c; sa[u][f] = ok ? sa[u][f] + sb[u][f] : -INFINITY; mx[c] = fmaxf(mx[c], sa[u][f]); }} }}\n\
          _Pragma(\"unroll\") for (int x = 4; x < 32; x <<= 1) {{ mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xffffffffu, mx[0], x)); mx[1] = fmaxf(mx[1], __shfl_xor_sync(0xffffffffu, mx[1], x)); }}\n\
          float corr[2], mn[2], ps[2] = {{0.f, 0.f}};\n\
          _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{ mn[c] = fmaxf(mt[c], mx[c]); corr[c] = mt[c] == -INFINITY ? 0.f : __expf(mt[c] - mn[c]); }}\n\
          u32 pb[2][2];\n\
          _Pragma(\"unroll\") for (int u = 0; u < 2; u++) _Pragma(\"unroll\") for (int x = 0; x < 2; x++) {{\n\
            const float e0 = __expf(sa[u][2 * x] - mn[0]), e1 = __expf(sa[u][2 * x + 1] - mn[1]);\n\
            ps[0] += e0; ps[1] += e1; pb[u][x] = movt(pack2(e0, e1)); }}\n\
          _Pragma(\"unroll\") for (int x = 4; x < 32; x <<= 1) {{ ps[0] += __shfl_xor_sync(0xffffffffu, ps[0], x); ps[1] += __shfl_xor_sync(0xffffffffu, ps[1], x); }}\n\
          _Pragma(\"unroll\") for (int c = 0; c < 2; c++) {{ lt[c] = lt[c] * corr[c] + ps[c]; mt[c] = mn[c]; }}\n\
          _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) {{ o[i][0] *= corr[0]; o[i][1] *= corr[1]; o[i][2] *= corr[0]; o[i][3] *= corr[1]; }}\n\
          _Pragma(\"unroll\") for (int kk = 0; kk < 2; kk++) {{\n\
            const int jb = j0 + 16 * kk + 2 * (lane & 3);\n\
            const u32 k0 = (jb <= p1 ? 0xffffu : 0u) | (jb + 1 <= p1 ? 0xffff0000u : 0u), k1 = (jb + 8 <= p1 ? 0xffffu : 0u) | (jb + 9 <= p1 ? 0xffff0000u : 0u);\n\
            const u16* vrow = KVS(b, 1, 16 * kk + (lane & 7) + (lane >> 4) * 8) + ((lane >> 3) & 1) * 8;\n\
            _Pragma(\"unroll\") for (int i = 0; i < {dm}; i++) {{ u32 vf[4]; ldsm4t(vf, vrow + 16 * i);\n\
              vf[0] &= k0; vf[1] &= k0; vf[2] &= k1; vf[3] &= k1;\n\
              mma_full(o[i], vf, pb[kk][0], pb[kk][1]); }} }}\n\
        }}",
        ks = hd / 16
    )
}

/// `d += q . k` over a head of `hd` f16 key values at `kr` against f32 queries at `qs`, 16
/// bytes of key at a time (`hd % 8 == 0`) or one value at a time.
pub(super) fn k_dot(kr: &str, hd: usize) -> String {
    if hd.is_multiple_of(8) {
        format!("_Pragma(\"unroll\") for (int c = 0; c < {hd}; c += 8) {{ V4 kk = *(const V4*)({kr} + c); const float* qq = qs + c;\n\
            d += qq[0] * h2f(kk.x & 0xffff) + qq[1] * h2f(kk.x >> 16) + qq[2] * h2f(kk.y & 0xffff) + qq[3] * h2f(kk.y >> 16)\n\
               + qq[4] * h2f(kk.z & 0xffff) + qq[5] * h2f(kk.z >> 16) + qq[6] * h2f(kk.w & 0xffff) + qq[7] * h2f(kk.w >> 16); }}\n")
    } else {
        format!("for (int c = 0; c < {hd}; c++) d += qs[c] * h2f(({kr})[c]);\n")
    }
}
