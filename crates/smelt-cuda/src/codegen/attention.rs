//! Every attention kernel. `attention` (last in the file) picks one per node.
//!
//! Decode (one token) attention, v5 on GPUs with thread block clusters (sm_90): a cluster of
//! up to 16 splits per KV head on Hopper (8 elsewhere), K/V streamed to shared memory by
//! `cp.async`, each split's partials stored into the blocks that merge them (v12c; see
//! `cluster_decode_attention`); 1B decode 1327 -> 1533 tok/s on an H100 (v5).
//! `SMELT_CUDA_ATTN=v4`, or an older GPU, takes v4 below.
//!
//! v4: flash-decoding with a fixed grid. A block per (KV head,
//! split) holds one warp per query head of that KV head's group (GQA: K and V rows are read
//! once per group, through L1). Split `s` of `S` takes the 32-key chunks `s, s + S, ...` up to
//! the position, so the same grid (and the same captured graph) serves every position; splits
//! with no keys still report. The last block of a group (a counter per KV head, reset by that
//! block so graphs replay) combines the `S` partial softmaxes with one warp per head, the
//! partials loaded in parallel (lane = split for the maxima and sums).
//!
//! Prefill attention: the tiled kernel in codegen/attn_prefill.rs; the general kernel
//! below (`SMELT_CUDA_PREFILL_ATTN=default`) reads K and V straight from the cache, a warp per
//! query row, a lane per key (474 us a layer on the 8B), and takes every other head size.
//!
//! v3 launched `capacity / 32` blocks of one warp per query head (4096 blocks for a 4096-token
//! cache, most exiting at once) and combined the live splits one after another: ~20-24 us per
//! layer on an H100 whatever the model, 18-32% of a decode step.

use std::fmt::Write;

use smelt_graph::{Dest, KvPart, Op};

use super::attn_chunk::{k_dot, Chunk};
use super::attn_regions::RegionCase;
use super::{lit, Gen, Params, KV_BLOCK};
use crate::CudaError;

/// Keys per chunk: one per lane for the scores.
pub(super) const CHUNK: usize = 32;
/// Most splits per KV head (the combine reads one split per lane).
const MAX_SPLITS: usize = 32;
/// Blocks (splits) per cluster in decode attention v5: the portable cluster size limit.
const CLUSTER: usize = 8;
/// Blocks per cluster on Hopper (compute capability 9): its non-portable limit, allowed on
/// every function the backend loads. v9b: SmolLM2 +2.4% / +3.9%, 1B and 8B within +-0.7%
/// (two A/Bs on the H100).
const HOPPER_CLUSTER: usize = 16;

/// What every attention kernel needs of its node: shapes, KV offsets, and generated code for
/// the query's base offset and the output stores.
pub(super) struct AttnIo {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub hd: usize,
    pub scale: f32,
    pub window: Option<usize>,
    pub kb: u64,
    pub vb: u64,
    pub kw: usize,
    /// Arena offset expression of query row `rq` (head 0, dim 0).
    pub qbase: String,
    /// Stores of value `v` at head `h`, dim `d` of row `rq` to every buffer the node goes to.
    pub outs: String,
}

impl Gen<'_> {
    /// The node's [`AttnIo`]; `rows` says whether query and output rows are indexed by `rq`
    /// (several tokens) or are row 0.
    pub(super) fn attention_io(
        &self,
        n: smelt_graph::NodeId,
        p: &mut Params,
        rows: bool,
    ) -> Result<AttnIo, CudaError> {
        let Op::Attention {
            q,
            layer,
            n_head,
            n_head_kv,
            head_dim: hd,
            scale,
            window,
            ..
        } = self.node(n).op
        else {
            unreachable!()
        };
        let (kb, kw) = self.kv_off(layer, KvPart::K)?;
        let (vb, _) = self.kv_off(layer, KvPart::V)?;
        if kw != n_head_kv * hd || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(CudaError::Invalid(format!(
                "layer {layer}: KV width {kw}, {n_head} heads over {n_head_kv}"
            )));
        }
        let row = if rows { "(u64)rq" } else { "0" };
        let qbase = self
            .buf_read(q, "0", p)?
            .replace("(u64)r", row)
            .trim_end_matches(" + 0]")
            .trim_start_matches("A[")
            .to_string();
        let mut outs = String::new();
        for d in self.plan.dests(n) {
            if let Dest::Buffer(b) = d {
                let off = self.plan.buffer(*b).offset as u64;
                let at = if rows {
                    format!(" + (u64)rq * {}", n_head * hd)
                } else {
                    String::new()
                };
                write!(outs, "A[{}{at} + h * {hd} + d] = v;", p.p(off)).unwrap();
            }
        }
        Ok(AttnIo {
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
        })
    }

    /// True when the decode attention of this node can take the v5 kernel: a GPU with thread
    /// block clusters, a head size it handles, a group's queries within 8 KB of shared memory.
    /// `SMELT_CUDA_ATTN=v4` keeps the v4 kernel (the kernel lab's baseline).
    pub(super) fn cluster_attention_fits(
        &self,
        hd: usize,
        n_head: usize,
        n_head_kv: usize,
    ) -> bool {
        self.decode_attention_fits(hd, n_head, n_head_kv)
            && self.cc_major >= 9
            && !self.persistent
            && n_head / n_head_kv * hd <= 2048
            && std::env::var("SMELT_CUDA_ATTN").map_or(true, |v| v != "v4")
    }

    /// Decode attention v5: a cluster of up to 16 blocks per KV head (8 off Hopper), one per split; each
    /// block's warps are the query heads of the group. Every 32-key chunk of K and V travels to
    /// shared memory by `cp.async` (no registers held), the first one issued before the
    /// position is read, up to 3 (2 for 256-wide heads) more in flight while one is scored.
    /// Each split stores its partial softmax into the shared memory of the blocks that merge
    /// it (v12c: `st.async`, counted on each receiver's mbarrier), and every block merges a
    /// share of the group's outputs from its own shared memory; with the output projection
    /// folded in (or `SMELT_CUDA_ATTN_PUSH=0`) the partials stay put and each block reads the
    /// others' through distributed shared memory between cluster barriers. v4's chain of
    /// global partial stores, fence, counter and combine loads (~16 us a layer on an H100) is
    /// gone.
    pub(super) fn cluster_decode_attention(
        &mut self,
        ki: usize,
        n: smelt_graph::NodeId,
        guard: &str,
    ) -> Result<bool, CudaError> {
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
        } = self.attention_io(n, &mut p, self.t > 1)?;
        let grp = n_head / n_head_kv;
        // Several rows (a batch's sequences, or one's few new tokens): a cluster row per row.
        let rows = self.t;
        let cap = self.kv.capacity.max(1);
        // `SMELT_CUDA_ATTN_SPLITS` (1 to the limit) sets the splits per KV head, for the
        // kernel lab (v8: each halving below 8 measured slower, 1B 1484 -> 1414 -> 1281 ->
        // 1112 tok/s from 8 to 1).
        let limit = if self.cc_major == 9 {
            HOPPER_CLUSTER
        } else {
            CLUSTER
        };
        let most = self
            .attn_splits
            .or_else(|| super::lab_knob("SMELT_CUDA_ATTN_SPLITS"))
            .filter(|n| (1..=limit).contains(n))
            .unwrap_or(limit);
        // Every split, even on a short cache (the first chunk's rows are clamped to it, and
        // splits past the position hold nothing): one sequence's attention then sums as a
        // batch's over a pool of any size does, bit for bit.
        let splits = most;
        self.cluster_splits = self.cluster_splits.max(splits);
        // The output projection in this kernel's tail (codegen/attn_wo.rs), not behind a guard.
        let fold = if guard.is_empty() {
            self.wo_fold(ki, n, splits)
        } else {
            None
        };
        // A warp per query head of the group; a folded projection takes more warps (they stage
        // K and V with the others and share the projection's rows).
        let nt = match &fold {
            Some(f) => (grp * 32).max(f.threads),
            None => grp * 32,
        };
        let e = hd / 32;
        // Shared row stride in halves (16-byte reads of 8 lanes: distinct banks), and the
        // 16-byte pieces of a K or V row.
        let hs = hd + 8;
        let pieces = hd / 8;
        // Chunks in flight: all of a split's chunks at a few hundred keys (one DRAM latency).
        // `SMELT_CUDA_ATTN_STAGES` (2-4) overrides, for the kernel lab.
        let nbuf = super::lab_knob("SMELT_CUDA_ATTN_STAGES")
            .filter(|n| (2..=4).contains(n))
            .unwrap_or(if hd <= 128 { 4 } else { 3 });
        // Outputs each block combines.
        let per = (grp * hd).div_ceil(splits);
        // v11f: the cluster barriers without their GPU-scope fence and L1 invalidation (prelude
        // `cluster_sync_cta`): the blocks exchange only shared memory. The closing barrier then
        // comes after the partials read are merged. `SMELT_CUDA_CLUSTER_FENCE=gpu` (kernel lab)
        // keeps the fenced barriers and v10b's early arrive.
        let cta_fence = fold.is_none()
            && std::env::var("SMELT_CUDA_CLUSTER_FENCE").map_or(true, |v| v != "gpu");
        let sync = if cta_fence {
            "cluster_sync_cta();\n"
        } else {
            "cluster_sync();\n"
        };
        let (wo_pre, wo_tail) = match &fold {
            Some(f) => self.wo_fold_code(f, n_head_kv, grp * hd, splits, nt, per, &mut p)?,
            None => (String::new(), sync.to_string()),
        };
        let keep = if fold.is_some() {
            format!("cmb[i - s * {per}] = v; ")
        } else {
            String::new()
        };
        let (kbp, vbp) = (p.p(kb), p.p(vb));
        let win = window.map_or("0".to_string(), |w| format!("max(0, p1 + 1 - {w})"));
        // K and V rows j0..j0 + 31 (clamped to the cache; rows past the position are never
        // used) into buffer `buf`, asynchronously.
        let paged = self.kv.paged;
        // The first chunk is staged before the position is known: in a pool, its page-table
        // index is clamped to the table (unused entries name block 0, never read).
        let ntab = cap / KV_BLOCK;
        let stage = |buf: &str, j0: &str, first: bool, nt: usize| {
            let row = if paged && first {
                format!("((u64)TAB[min(({j0}) >> 5, {ntab} - 1)] * {CHUNK} + kr)")
            } else if paged {
                format!("((u64)TAB[({j0}) >> 5] * {CHUNK} + kr)")
            } else {
                format!("(u64)min({j0} + kr, {cap} - 1)")
            };
            format!(
                "for (int i = tid; i < {CHUNK} * {pieces}; i += {nt}) {{ const int kr = i / {pieces}, c = (i - kr * {pieces}) * 8;\n\
                   const u64 row = {row} * {kw} + c;\n\
                   cp_async16(KVS({buf}, 0, kr) + c, Kp + row); cp_async16(KVS({buf}, 1, kr) + c, Vp + row); }}\n"
            )
        };
        let first = stage("0", "s * 32", true, nt);
        let more = stage("st", "jn", false, nt);
        let next = stage("(k + NBUF - 1) % NBUF", "jn", false, nt);
        // Warps past the group's heads (a folded projection's) stage K and V only.
        let extra = nt > grp * 32;
        let (hwdef, qsel, qif, sif) = if extra {
            (
                format!("const bool hw = warp < {grp};\n"),
                "hw ? warp : 0",
                "if (hw) ",
                "hw && ",
            )
        } else {
            (String::new(), "warp", "", "")
        };
        // v10b (`SMELT_CUDA_ATTN_EARLY=0`: off): the position and the query are loaded first,
        // together, where the query's load waited behind the position's and the stages that
        // depend on it; and each block arrives at the closing cluster barrier as soon as its
        // reads of the others' partials are done, combining and storing before it waits.
        let early = super::lab_knob("SMELT_CUDA_ATTN_EARLY") != Some(0);
        let split_close = early && fold.is_none() && per <= nt && !cta_fence;
        // v12c (`SMELT_CUDA_ATTN_PUSH=0`: off): each split stores its partials into the
        // shared memory of the blocks that merge them (`st.async`, counted on the receiver's
        // mbarrier), so the merge reads its own shared memory after one wait, where it read
        // the others' through two cluster barriers. The merge is the same, in the same order.
        let push = splits > 1
            && fold.is_none()
            && guard.is_empty()
            && !extra
            && super::lab_knob("SMELT_CUDA_ATTN_PUSH") != Some(0);
        let rs = per + 2 * grp;
        // v16a (`SMELT_CUDA_ATTN_MMA=0`: off): warp 0 scores a chunk for every query head of
        // the group at once on tensor cores (`mma` m16n8k16: the heads are rows 0-7 of A, 16
        // dims a step; K and V from shared memory by `ldmatrix`), one softmax a row over its
        // lane quad, the probabilities rounded to f16 as the A operand of P * V. Where v15's
        // warp a head spent ~435 dependent instructions a chunk (trace: 0.85-1.1 us), this is
        // 32 products and 16 matrix loads. Only with pushed partials (the pushes read the
        // product's fragments).
        let work = if push && early && grp <= 8 && matches!(hd, 64 | 128) {
            // v16d (`SMELT_CUDA_ATTN_MMA=2`): the transposed products, S^T = K Q^T and
            // O^T = V^T P^T, half v16a's; the default for 128-wide heads (v17: the 8B +0.4%
            // from an empty context, +0.9% after 512 tokens; 64-wide heads within noise).
            match (self.attn_mma, hd) {
                (0, _) => Chunk::Scalar,
                (1, _) | (3, 64) => Chunk::Mma,
                _ => Chunk::MmaT,
            }
        } else {
            Chunk::Scalar
        };
        // v19b: key regions on a long cache (codegen/attn_regions.rs).
        let chunk_bytes = 2 * CHUNK * hs * 2;
        let cut = self.key_regions(&RegionCase {
            work,
            allowed: rows == 1 && !(early && self.attn_prewait),
            grp,
            n_head_kv,
            splits,
            cap,
            chunk_bytes,
            nbuf,
        });
        let (regions, rlen, nbuf) = (cut.n, cut.len, cut.nbuf);
        if regions > 1 {
            self.region_used = rlen;
        }
        // Region warps past the group's heads (they load no query).
        let nt = nt.max(regions * 32);
        let qif_regions = nt > grp * 32 && !extra;
        // The regions' merge overlays the staged chunks (it never needs more).
        let region_merge = match regions {
            1 => None,
            _ => work.merge_regions(hd, regions),
        }
        .unwrap_or_default();
        let smem = (nbuf * regions * chunk_bytes).max(region_merge.1 * 4);
        let (first, more, next) = match regions {
            1 => (first, more, next),
            _ => {
                let st = |buf: &str, j0: &str, first: bool| {
                    cut.stage(|b, j| stage(b, j, first, nt), buf, j0, first)
                };
                (
                    st("0", "s * 32", true),
                    st("st", "jn", false),
                    st("(k + NBUF - 1) % NBUF", "jn", false),
                )
            }
        };
        // Output `d` of group head `hh`: the splits' partials read through distributed shared
        // memory, then merged.
        let decl = format!(
            "float ms[{splits}], ls[{splits}], os[{splits}], M = -INFINITY, L = 0.f, o = 0.f;"
        );
        let reads = format!("_Pragma(\"unroll\") for (int r = 0; r < {splits}; r++) {{ ms[r] = ld_dsmem(&mls[hh][0], r); ls[r] = ld_dsmem(&mls[hh][1], r); os[r] = ld_dsmem(&qsh[hh][d], r); }}");
        let merge = format!(
            "_Pragma(\"unroll\") for (int r = 0; r < {splits}; r++) M = fmaxf(M, ms[r]);\n\
            _Pragma(\"unroll\") for (int r = 0; r < {splits}; r++) {{ const float w = ls[r] > 0.f ? __expf(ms[r] - M) : 0.f; L += w * ls[r]; o += w * os[r]; }}\n\
            const float v = L > 0.f ? o / L : 0.f; "
        );
        let gh = grp * hd;
        let combine = if split_close {
            format!(
                "{{ const int i = s * {per} + tid; const bool act = tid < {per} && i < {gh};\n\
                  const int hh = act ? i / {hd} : 0, d = act ? i - hh * {hd} : 0, h = g * {grp} + hh;\n\
                  {decl}\n\
                  if (act) {{ {reads} }}\n\
                  cluster_arrive();\n\
                  if (act) {{ {merge}{outs} }}\n\
                }}\n\
                TRACE_MARK(3);\n\
                cluster_wait();\n"
            )
        } else {
            format!(
                "for (int i = s * {per} + tid; i < min((s + 1) * {per}, {gh}); i += {nt}) {{\n\
                  const int hh = i / {hd}, d = i - hh * {hd}, h = g * {grp} + hh;\n\
                  {decl}\n\
                  {reads}\n\
                  {merge}{keep}{outs}\n\
                }}\n\
                TRACE_MARK(3);\n\
                {wo_tail}"
            )
        };
        let pushes = work.pushes(hd, grp, per, splits);
        let finish = if push {
            format!(
                "cluster_wait();\n\
                {pushes}\
                TRACE_MARK(2);\n\
                mbar_wait0(&mbar);\n\
                for (int jj = tid; jj < {per}; jj += {nt}) {{ const int i = s * {per} + jj; if (i < {gh}) {{\n\
                  const int hh = i / {hd}, d = i - hh * {hd}, h = g * {grp} + hh;\n\
                  {decl}\n\
                  _Pragma(\"unroll\") for (int r = 0; r < {splits}; r++) {{ ms[r] = rc[r][{per} + 2 * hh]; ls[r] = rc[r][{per} + 2 * hh + 1]; os[r] = rc[r][jj]; }}\n\
                  {merge}{outs}\n\
                }} }}\n\
                TRACE_MARK(3);\n"
            )
        } else if splits == 1 {
            format!(
                "_Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int d = lane * {e} + i; const float v = l > 0.f ? acc[i] / l : 0.f; {outs} }}\n"
            )
        } else {
            format!(
                "__syncwarp();\n\
                {qif}{{ _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) qs[lane * {e} + i] = acc[i];\n\
                if (lane == 0) {{ mls[warp][0] = m; mls[warp][1] = l; }} }}\n\
                {sync}\
                TRACE_MARK(2);\n\
                {combine}"
            )
        };
        let sc = lit(scale);
        let rowdef = if rows > 1 {
            format!("const int rq = blockIdx.z;\n{}", self.tab_def("rq"))
        } else {
            self.tab_def("0")
        };
        let prow = if rows > 1 { "rq" } else { "0" };
        // v10b's query load into registers (both prologues below issue it).
        // Region warps past the group's heads load zero rows of A (they give rows of S, P and
        // O that nothing reads).
        let (qinit, qif_load) = match qif_regions {
            true => (" = {}", format!("if (warp < {grp}) ")),
            false => ("", qif.to_string()),
        };
        let qload = format!("{hwdef}float qv[{e}]{qinit};\n\
            {qif_load}_Pragma(\"unroll\") for (int i = 0; i < {e}; i++) qv[i] = A[{qbase} + h * {hd} + lane + 32 * i];\n");
        let (start, query) = if early {
            (
                format!(
                    "{rowdef}const int p1 = pos[{prow}];\n{qload}\
                    {first}cp_async_commit();\nconst int lo = {win};\n"
                ),
                work.query_store(hd, &sc, qsel, qif),
            )
        } else {
            (
                format!("{rowdef}{first}cp_async_commit();\nconst int p1 = pos[{prow}]; const int lo = {win};\n"),
                format!("{hwdef}float* qs = qsh[{qsel}];\n\
                    {qif}for (int d = lane; d < {hd}; d += 32) qs[d] = A[{qbase} + h * {hd} + d] * {sc};\n"),
            )
        };
        let prologue = format!(
            "{start}for (int st = 1; st < NBUF - 1; st++) {{ const int jn = s * {CHUNK} + st * step; if (jn <= p1) {{\n{more}}} cp_async_commit(); }}\n"
        );
        // Kernel lab (`SMELT_CUDA_ATTN_PREWAIT=1`, with PDL letting this kernel in before the
        // QKV kernel is done): the chunks wholly before the position (written by earlier
        // tokens) are staged before `PDL_WAIT`, so their DRAM latency overlaps the wait; the
        // chunk holding the position (its row written by the QKV kernel) after it, in one more
        // commit group, which only makes the waits below wait for more. A split's last chunk
        // waits for every group.
        let prewait = early && self.attn_prewait;
        let (prologue, wait) = if prewait {
            (
                format!(
                    "#if SMELT_PDL && SMELT_PDL_AT >= 1\n\
                    {rowdef}const int p1 = pos[{prow}];\n\
                    for (int st = 0; st < NBUF - 1; st++) {{ const int jn = s * {CHUNK} + st * step; if (jn + {CHUNK} <= p1) {{\n{more}}} cp_async_commit(); }}\n\
                    PDL_WAIT();\n\
                    {qload}\
                    for (int st = 0; st < NBUF - 1; st++) {{ const int jn = s * {CHUNK} + st * step; if (jn <= p1 && p1 < jn + {CHUNK}) {{\n{more}}} }}\n\
                    cp_async_commit();\nconst int lo = {win};\n\
                    #else\nPDL_WAIT();\n{prologue}#endif\n"
                ),
                format!(
                    "if (j0 + {CHUNK} > p1) cp_async_wait<0>(); else cp_async_wait<NBUF - 2>();"
                ),
            )
        } else {
            (prologue, "cp_async_wait<NBUF - 2>();".to_string())
        };
        // Kernel lab (`SMELT_CUDA_ATTN_MARKS=1`, for `SMELT_CUDA_TRACE`): the trace's marks
        // inside the key loop: m1 the first chunk landed, m2 it scored and summed into the
        // output, m3 the loop over (by default m1 the loop over, m2 the partials pushed, m3
        // merged).
        let marks = super::lab_knob("SMELT_CUDA_ATTN_MARKS") == Some(1);
        // A multistage pipeline: one commit group per chunk (empty past the position) keeps
        // the wait count a constant: chunk k has landed when at most NBUF - 2 groups pend.
        let body = format!(
            "{guard}extern __shared__ float sm[]; u16* kvs = (u16*)sm;\n\
            #define NBUF {nbuf}\n\
            #define KVS(b, part, r) (kvs + (((b) * 2 + (part)) * {CHUNK} + (r)) * {hs})\n\
            {qdecl}{cmb}\n\
            const int g = blockIdx.x, s = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;\n\
            {push_init}\
            const int h = g * {grp} + warp; const int step = {splits} * {CHUNK};\n\
            const u16* Kp = KV + {kbp} + g * {hd}; const u16* Vp = KV + {vbp} + g * {hd};\n\
            {prologue}\
            {wo_pre}\
            {query}\
            {accdef}\
            int k = 0; TRACE_MARK(0);\n\
            {loop_head} {{\n\
              {wait}\n\
              __syncthreads();{mark_landed}\n\
              {{ const int jn = {jvar} + (NBUF - 1) * step; if (jn <= p1) {{\n{next}}} cp_async_commit(); }}\n\
              {chunk_at}\n\
              {chunk}{mark_scored}\n\
            }}\n\
            cp_async_wait<0>();\n\
            PDL_MID(); TRACE_MARK({mark_loop});\n\
            {merge}{finish}\
            TRACE_MARK(4);\n\
            #undef KVS\n\
            #undef NBUF\n",
            accdef = work.state(hd),
            chunk = work.body(hd, sif, if regions > 1 { "rv" } else { "warp == 0" }),
            loop_head = cut.loop_head(),
            jvar = cut.jvar(),
            chunk_at = cut.chunk_at(),
            merge = region_merge.0,
            qdecl = work.shared(grp, hd, hs),
            mark_landed = if marks { " if (k == 0) TRACE_MARK(1);" } else { "" },
            mark_scored = if marks { " if (k == 0) TRACE_MARK(2);" } else { "" },
            mark_loop = if marks { 3 } else { 1 },
            finish = if marks {
                finish.replace("TRACE_MARK(2);", "").replace("TRACE_MARK(3);", "")
            } else {
                finish
            },
            push_init = if push {
                format!(
                    "__shared__ float rc[{splits}][{rs}]; __shared__ alignas(8) u64 mbar;\n\
                    if (tid == 0) mbar_init_expect(&mbar, {splits} * (max(0, min((s + 1) * {per}, {gh}) - s * {per}) + {g2}) * 4);\n\
                    cluster_arrive_relaxed();\n",
                    g2 = 2 * grp
                )
            } else {
                String::new()
            },
            cmb = if fold.is_some() {
                format!(" __shared__ float cmb[{per}];")
            } else {
                String::new()
            },
        );
        let attrs = if splits > 1 {
            format!("__cluster_dims__(1, {splits}, 1) ")
        } else {
            String::new()
        };
        let name = self.kernel_with(&nt.to_string(), &attrs, body, smem);
        let with = if fold.is_some() { " + wo" } else { "" };
        self.launch(
            match regions {
                1 => format!("attention {n_head}x{hd} (decode, cluster of {splits}){with}"),
                _ => format!(
                    "attention {n_head}x{hd} (decode, cluster of {splits}, {regions} key regions){with}"
                ),
            },
            name,
            (n_head_kv, splits, rows),
            nt,
            smem,
            p,
        );
        Ok(fold.is_some())
    }

    /// True when the decode attention of this node can take the v4 kernel.
    pub(super) fn decode_attention_fits(&self, hd: usize, n_head: usize, n_head_kv: usize) -> bool {
        self.decode
            && matches!(hd, 64 | 128 | 256)
            && n_head_kv > 0
            && n_head.is_multiple_of(n_head_kv)
            && n_head / n_head_kv <= 32
    }

    pub(super) fn decode_attention(
        &mut self,
        n: smelt_graph::NodeId,
        guard: &str,
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
        } = self.attention_io(n, &mut p, false)?;
        let grp = n_head / n_head_kv;
        let chunks = self.kv.capacity.div_ceil(CHUNK).max(1);
        // About two blocks per SM over the KV heads, at most one per chunk.
        let splits = (2 * self.sm_count)
            .div_ceil(n_head_kv)
            .clamp(1, MAX_SPLITS)
            .min(chunks);
        let e = hd / 32; // dims per lane in the value pass: 2, 4 or 8 halves
        let (vty, vread) = match e {
            2 => ("u32", "u32 w[1] = {vv};"),
            4 => ("uint2", "u32 w[2] = {vv.x, vv.y};"),
            _ => ("V4", "u32 w[4] = {vv.x, vv.y, vv.z, vv.w};"),
        };
        let ml = self.alloc_scratch(n_head * splits * 2);
        let acc = self.alloc_scratch(n_head * splits * hd);
        self.counters = self.counters.max(n_head_kv);
        let (kbp, vbp, mlp, accp) = (p.p(kb), p.p(vb), p.p(ml as u64), p.p(acc as u64));
        let win = window.map_or("0".to_string(), |w| format!("max(0, p1 + 1 - {w})"));
        let body = format!(
            "{guard}__shared__ alignas(16) float qsh[{grp}][{hd}]; __shared__ u32 last;\n\
            const int g = blockIdx.x, s = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;\n\
            const int h = g * {grp} + warp; const int p1 = pos[0]; const int lo = {win};\n\
            {tab}float* qs = qsh[warp];\n\
            for (int d = lane; d < {hd}; d += 32) qs[d] = A[{qbase} + h * {hd} + d] * {sc};\n\
            __syncwarp();\n\
            float m = -INFINITY, l = 0.f, acc[{e}];\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] = 0.f;\n\
            const u16* Kp = KV + {kbp} + g * {hd}; const u16* Vp = KV + {vbp} + g * {hd} + lane * {e};\n\
            for (int j0 = s * {CHUNK}; j0 <= p1; j0 += {step}) {{\n\
              if (j0 + {CHUNK} <= lo) continue;\n\
              const int j = j0 + lane; const bool ok = j >= lo && j <= p1; float sc = -INFINITY;\n\
              if (ok) {{ const u16* kr = Kp + {krow} * {kw}; float d = 0.f;\n{dot}sc = d; }}\n\
              const float mn = fmaxf(m, warp_max(sc));\n\
              const float corr = m == -INFINITY ? 0.f : __expf(m - mn); const float pj = ok ? __expf(sc - mn) : 0.f;\n\
              l = l * corr + warp_sum(pj); m = mn;\n\
              _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) acc[i] *= corr;\n\
              _Pragma(\"unroll\") for (int half = 0; half < 2; half++) {{\n\
                {vty} vs[16];\n\
                _Pragma(\"unroll\") for (int jj = 0; jj < 16; jj++) vs[jj] = *(const {vty}*)(Vp + {vrow} * {kw});\n\
                _Pragma(\"unroll\") for (int jj = 0; jj < 16; jj++) {{ const float pw = __shfl_sync(0xffffffffu, pj, half * 16 + jj);\n\
                  const {vty} vv = vs[jj]; {vread}\n\
                  _Pragma(\"unroll\") for (int i = 0; i < {e} / 2; i++) {{ acc[2 * i] += pw * h2f(w[i] & 0xffff); acc[2 * i + 1] += pw * h2f(w[i] >> 16); }} }}\n\
              }}\n\
            }}\n\
            if ({splits} == 1) {{\n\
              _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int d = lane * {e} + i; const float v = l > 0.f ? acc[i] / l : 0.f; {outs} }}\n\
              return;\n\
            }}\n\
            const int ps = h * {splits} + s;\n\
            if (lane == 0) {{ A[{mlp} + 2 * ps] = m; A[{mlp} + 2 * ps + 1] = l; }}\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) A[{accp} + (u64)ps * {hd} + lane * {e} + i] = acc[i];\n\
            __threadfence(); __syncthreads();\n\
            if (threadIdx.x == 0) last = atomicAdd(&C[g], 1u);\n\
            __syncthreads();\n\
            if (last != {splits}u - 1) return;\n\
            __threadfence();\n\
            const float mq = lane < {splits} ? __ldcg(A + {mlp} + 2 * (h * {splits} + lane)) : -INFINITY;\n\
            const float lq = lane < {splits} ? __ldcg(A + {mlp} + 2 * (h * {splits} + lane) + 1) : 0.f;\n\
            const float M = warp_max(mq); const float wq = lq > 0.f ? __expf(mq - M) : 0.f;\n\
            const float L = warp_sum(wq * lq);\n\
            float o[{e}];\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) o[i] = 0.f;\n\
            _Pragma(\"unroll 8\") for (int q = 0; q < {splits}; q++) {{ const float w = __shfl_sync(0xffffffffu, wq, q);\n\
              const float* pa = A + {accp} + (u64)(h * {splits} + q) * {hd} + lane * {e};\n\
              _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) o[i] += w * __ldcg(pa + i); }}\n\
            _Pragma(\"unroll\") for (int i = 0; i < {e}; i++) {{ const int d = lane * {e} + i; const float v = L > 0.f ? o[i] / L : 0.f; {outs} }}\n\
            if (threadIdx.x == 0) C[g] = 0u;\n",
            sc = lit(scale),
            step = splits * CHUNK,
            dot = k_dot("kr", hd),
            tab = self.tab_def("0"),
            krow = self.key_row("j"),
            vrow = self.key_row("min(j0 + half * 16 + jj, p1)"),
        );
        let name = self.kernel(&(grp * 32).to_string(), body, 0);
        self.launch(
            format!("attention {n_head}x{hd} (decode, {splits} splits)"),
            name,
            (n_head_kv, splits, 1),
            grp * 32,
            0,
            p,
        );
        Ok(())
    }

    /// The attention kernel of node `n`: v5 or v4 for decode, the tiled or the default
    /// kernel (below) for several tokens, the general kernel for other head sizes.
    /// Returns whether it also computes the next kernel (the output projection, see
    /// codegen/attn_wo.rs), which the program then skips.
    pub(super) fn attention(
        &mut self,
        ki: usize,
        n: smelt_graph::NodeId,
    ) -> Result<bool, CudaError> {
        let Op::Attention {
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.node(n).op
        else {
            unreachable!()
        };
        // A QKV kernel's tail computes it below `tail_keys` positions: this kernel returns
        // there, or is not launched when the cache is no longer (codegen/attn_tail.rs).
        let Some(guard) = self.tail_guard(n) else {
            return Ok(false);
        };
        if self.cluster_attention_fits(hd, n_head, n_head_kv) {
            return self.cluster_decode_attention(ki, n, &guard);
        }
        if self.t == 1 && self.decode_attention_fits(hd, n_head, n_head_kv) {
            return self.decode_attention(n, &guard).map(|()| false);
        }
        if self.tiled_prefill_attention_fits(hd) {
            if self.mma_prefill_attention_fits(hd, n_head / n_head_kv.max(1)) {
                return self.mma_prefill_attention(n).map(|()| false);
            }
            return self.prefill_attention(n).map(|()| false);
        }
        let t = self.t;
        let mut p = Params::default();
        let AttnIo {
            n_head,
            hd,
            scale,
            window,
            kb,
            vb,
            kw,
            qbase,
            outs,
            ..
        } = self.attention_io(n, &mut p, true)?;
        let (nwarp, nsplit) = if t == 1 {
            (1, self.kv.capacity.div_ceil(CHUNK).max(1))
        } else {
            (4, 1)
        };
        let chunk = if nsplit == 1 {
            self.kv.capacity.max(1)
        } else {
            CHUNK
        };
        let part = if nsplit > 1 {
            self.alloc_scratch(t * n_head * nsplit * (hd + 2))
        } else {
            0
        };
        self.counters = self.counters.max(t * n_head);
        let (kbp, vbp, partp) = (p.p(kb), p.p(vb), p.p(part as u64));
        let nacc = hd.div_ceil(32);
        let win = window.map_or("0".to_string(), |w| format!("max(0, p1 + 1 - {w})"));
        let dot = if hd % 8 == 0 {
            format!("for (int e = 0; e < {hd}; e += 8) {{ V4 kk = *(const V4*)(kr + e); const float* qq = qs + e;\n\
                d += qq[0] * h2f(kk.x & 0xffff) + qq[1] * h2f(kk.x >> 16) + qq[2] * h2f(kk.y & 0xffff) + qq[3] * h2f(kk.y >> 16)\n\
                   + qq[4] * h2f(kk.z & 0xffff) + qq[5] * h2f(kk.z >> 16) + qq[6] * h2f(kk.w & 0xffff) + qq[7] * h2f(kk.w >> 16); }}")
        } else {
            format!("for (int e = 0; e < {hd}; e++) d += qs[e] * h2f(kr[e]);")
        };
        let body = format!(
            "{guard}__shared__ alignas(16) float qsh[{nwarp}][{hdp}];\n\
            const int h = blockIdx.x, s = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;\n\
            const int rq = blockIdx.z * {nwarp} + warp; if (rq >= {t}) return;\n\
            const int hk = h / {grp}; const int p1 = pos[rq]; const int lo = {win};\n\
            {tab}\
            const int k0 = max(lo, s * {chunk}), k1 = min(p1 + 1, (s + 1) * {chunk});\n\
            if (s > p1 / {chunk}) return; // no keys here, and not counted by the combine\n\
            float* qs = qsh[warp];\n\
            for (int d = lane; d < {hd}; d += 32) qs[d] = A[{qbase} + h * {hd} + d] * {sc};\n\
            __syncwarp();\n\
            float m = -INFINITY, l = 0.f, acc[{nacc}];\n\
            for (int i = 0; i < {nacc}; i++) acc[i] = 0.f;\n\
            const u16* Kp = KV + {kbp} + hk * {hd}; const u16* Vp = KV + {vbp} + hk * {hd};\n\
            for (int j0 = k0; j0 < k1; j0 += 32) {{\n\
              int j = j0 + lane; float sc = -INFINITY;\n\
              if (j < k1) {{ const u16* kr = Kp + {krow} * {kw}; float d = 0.f; {dot} sc = d; }}\n\
              float mx = warp_max(sc); float mn = fmaxf(m, mx);\n\
              float corr = m == -INFINITY ? 0.f : expf(m - mn); float pj = j < k1 ? expf(sc - mn) : 0.f;\n\
              l = l * corr + warp_sum(pj);\n\
              for (int i = 0; i < {nacc}; i++) acc[i] *= corr;\n\
              int nk = min(32, k1 - j0);\n\
              #pragma unroll 8\n\
              for (int jj = 0; jj < nk; jj++) {{ float pw = __shfl_sync(0xffffffffu, pj, jj); const u16* vr = Vp + {vrow} * {kw};\n\
                for (int i = 0; i < {nacc}; i++) {{ int d = lane + 32 * i; if (d < {hd}) acc[i] += pw * h2f(vr[d]); }} }}\n\
              m = mn;\n\
            }}\n\
            if ({nsplit} == 1) {{\n\
              for (int i = 0; i < {nacc}; i++) {{ int d = lane + 32 * i; if (d < {hd}) {{ float v = l > 0.f ? acc[i] / l : 0.f; {outs} }} }}\n\
              return;\n\
            }}\n\
            const int ns = min({nsplit}, p1 / {chunk} + 1);\n\
            float* pp = A + {partp} + ((u64)(rq * {nh} + h) * {nsplit} + s) * {hd2};\n\
            if (lane == 0) {{ pp[0] = m; pp[1] = l; }}\n\
            for (int i = 0; i < {nacc}; i++) {{ int d = lane + 32 * i; if (d < {hd}) pp[2 + d] = acc[i]; }}\n\
            __threadfence();\n\
            u32 old = 0; if (lane == 0) old = atomicAdd(&C[rq * {nh} + h], 1u); old = __shfl_sync(0xffffffffu, old, 0);\n\
            if (old != (u32)ns - 1) return;\n\
            __threadfence();\n\
            const float* base = A + {partp} + (u64)(rq * {nh} + h) * {nsplit} * {hd2};\n\
            float M = -INFINITY, L = 0.f; for (int i = 0; i < {nacc}; i++) acc[i] = 0.f;\n\
            #pragma unroll 4\n\
            for (int q = 0; q < ns; q++) {{ const float* bq = base + q * {hd2}; float lq = __ldcg(bq + 1), mq = __ldcg(bq);\n\
              float pv[{nacc}]; for (int i = 0; i < {nacc}; i++) {{ int d = lane + 32 * i; pv[i] = d < {hd} ? __ldcg(bq + 2 + d) : 0.f; }}\n\
              if (lq > 0.f) {{ float mn = fmaxf(M, mq); float fo = M == -INFINITY ? 0.f : expf(M - mn), fq = expf(mq - mn);\n\
                L = L * fo + lq * fq; for (int i = 0; i < {nacc}; i++) acc[i] = acc[i] * fo + pv[i] * fq; M = mn; }} }}\n\
            for (int i = 0; i < {nacc}; i++) {{ int d = lane + 32 * i; if (d < {hd}) {{ float v = L > 0.f ? acc[i] / L : 0.f; {outs} }} }}\n\
            if (lane == 0) C[rq * {nh} + h] = 0u;\n",
            hdp = hd.div_ceil(4) * 4,
            grp = n_head / n_head_kv,
            sc = lit(scale),
            nh = n_head,
            hd2 = hd + 2,
            tab = self.tab_def("rq"),
            krow = self.key_row("j"),
            vrow = self.key_row("j0 + jj"),
        );
        let name = self.kernel(&(nwarp * 32).to_string(), body, 0);
        self.launch(
            format!("attention {n_head}x{hd}"),
            name,
            (n_head, nsplit, t.div_ceil(nwarp)),
            nwarp * 32,
            0,
            p,
        );
        Ok(false)
    }
}
