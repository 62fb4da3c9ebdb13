//! Plan kernels as CUDA C: each fused kernel of the plan becomes source specialised to its
//! shapes and weight types. Offsets into the weights, the arena and the KV cache are kernel
//! parameters (`P[i]`), so the layers of a model share one compiled kernel per distinct shape.
//!
//! Decode (one token): a matmul kernel is one launch (codegen/decode.rs).
//! Prefill (several tokens, codegen/prefill.rs): prologue kernel (one block per row) -> the
//! kernel's matmuls through cuBLAS on f16 copies (or our mma.sync GEMM per matmul) -> epilogue
//! kernel per bundle. Attention: one kernel, split over keys for decode with the
//! last block of each head combining the partial softmaxes (codegen/attention.rs).
//! Element-wise code shared by both (row stages, RoPE, tile epilogues): codegen/rows.rs.

// Generated CUDA is written line by line with explicit newlines inside larger templates.
#![allow(clippy::write_with_newline)]

use std::collections::HashMap;
use std::fmt::Write;

use smelt_gguf::GgmlType;
use smelt_graph::{Dest, KernelKind, KvPart, NodeId, Op, Plan};

use crate::cublas::GemmCall;
use crate::CudaError;

mod attention;
mod attn_chunk;
mod attn_prefill;
mod attn_regions;
mod attn_tail;
mod attn_wo;
mod cluster;
mod decode;
mod epilogue;
mod mma_rows;
mod persistent;
mod prefill;
mod row_regs;
mod rows;
mod stage;

pub(crate) const PRELUDE: &str = include_str!("cu/prelude.cu");
/// Threads of row, gemv and epilogue kernels.
const NT: usize = 512;
const NWARPS: usize = NT / 32;
/// u64 stamps a traced launch writes: first start, last end, block 0's start, then
/// block 0's phase marks (`TRACE_MARK(k)`, k < 5) in the body.
pub(crate) const TRACE_STAMPS: usize = 8;
/// Row length from which a single-row decode matmul runs one block per SM (see `Gen`).
const DECODE_WIDE_K: usize = 4096;

/// A weight on the device: byte offset into the weight buffer. 1-D weights are stored as f32.
#[derive(Clone, Debug)]
pub(crate) struct WeightInfo {
    pub off: u64,
    pub dtype: GgmlType,
    pub row_bytes: u64,
}

/// KV cache geometry: per layer, element offsets of K and V (f16) and the row width.
/// A paged cache (`paged`) is a pool of `capacity / KV_BLOCK` blocks: each row of a step
/// writes its key and value at the cache row the host gives it, and attention reads a
/// sequence's keys through its block table (see [`Gen::tab_def`] for the input layout).
#[derive(Clone, Debug)]
pub(crate) struct KvInfo {
    pub capacity: usize,
    pub layers: Vec<(u64, u64, usize)>,
    pub paged: bool,
}

/// Positions per block of a paged KV cache: one 32-key attention chunk.
pub const KV_BLOCK: usize = 32;

/// Most rows of a step that the decode (gemv) kernels take, one sequence's row each or one
/// sequence's few new tokens: every weight is loaded once and dotted with each row.
pub const MAX_DECODE_ROWS: usize = 8;

/// Keys a decode attention split takes at a time.
pub(crate) const ATTN_CHUNK: usize = attention::CHUNK;

/// A batch step's matmuls whose rows are at most this long load the next row ahead of the
/// barrier between rows (v13g; v13e measured: the 1B's 2048-value rows +1%, the 8B's 4096 and
/// 14336 no faster).
const ROW_PIPE_K: usize = 2048;

/// One step of a program: a kernel launch or a cuBLAS GEMM.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// What the step does, for `SMELT_CUDA_PROFILE` (e.g. `decode mm Q4_K 6144x4096`).
    pub label: String,
    pub work: Work,
}

#[derive(Clone, Debug)]
pub(crate) enum Work {
    Kernel {
        func: String,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        params: Vec<u64>,
    },
    Gemm(GemmCall),
}

/// A lowered plan: source of every distinct kernel, launches in order, arena geometry.
pub(crate) struct Generated {
    pub src: String,
    pub funcs: Vec<(String, usize)>,
    pub launches: Vec<Launch>,
    pub arena_len: usize,
    pub counters: usize,
    pub out_off: usize,
    pub out_len: usize,
    /// Matmuls are decode gemv kernels (one to [`MAX_DECODE_ROWS`] rows): the program is
    /// replayed as a CUDA graph.
    pub decode: bool,
    /// The program is one persistent kernel with grid-wide barriers (codegen/persistent.rs).
    pub persistent: bool,
    /// The counter (index into the tile counters) of its grid barrier, zeroed before a launch.
    pub barrier: Option<usize>,
    /// Traced programs: the arena float offset of the launches' global-timer stamps in
    /// nanoseconds, [`TRACE_STAMPS`] u64 a launch in launch order.
    pub trace_off: Option<usize>,
    /// Every kernel takes its parameters by value (prelude `PV`), not as a pointer.
    pub param_values: bool,
    /// The most splits a KV head of its cluster decode attention (0: none).
    pub cluster_splits: usize,
    /// v19b: the positions of its decode attention's first key region where it has several
    /// (0: none); below them the program without regions gives the same logits.
    pub attn_region: usize,
    /// v20d: the greedy graph's launch in place of the last (the head kernel with the
    /// argmax in its tail, see [`GenOptions::greedy_fold`]).
    pub greedy_head: Option<Launch>,
    /// v21: the step's first kernel reads the position after its `PDL_WAIT`, so greedy steps
    /// one after another in a graph may launch it programmatically (not where its body uses
    /// the position before the wait: the cluster form).
    pub chain_steps: bool,
}

/// Parameter values the lowering replaces with the backend's greedy buffers' addresses
/// (v20d): the fold's counter and best key, and the ring of mapped host memory.
pub(crate) const PARAM_GREEDY_BUF: u64 = u64::MAX - 0x61;
pub(crate) const PARAM_GREEDY_RING: u64 = u64::MAX - 0x62;

pub(crate) fn type_suffix(t: GgmlType) -> Option<&'static str> {
    Some(match t {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        _ => return None,
    })
}

pub(crate) fn lit(x: f32) -> String {
    format!("{x:e}f")
}

/// Parameters of one launch, referenced from the source as `P[i]`.
#[derive(Default, Clone)]
struct Params(Vec<u64>);

impl Params {
    fn p(&mut self, v: u64) -> String {
        self.0.push(v);
        format!("P[{}]", self.0.len() - 1)
    }
}

struct Gen<'a> {
    plan: &'a Plan,
    w: &'a [WeightInfo],
    kv: &'a KvInfo,
    t: usize,
    /// Matmuls through the decode gemv kernels, for every row (see `decode_rows`).
    decode: bool,
    sm_count: usize,
    /// The GPU's compute capability (major): thread block clusters from 9.
    cc_major: i32,
    /// Decode matmul blocks (of NT threads) per SM, when forced (`SMELT_CUDA_DECODE_BLOCKS`).
    decode_blocks: Option<usize>,
    /// Single-row decode matmuls over rows of at least this many values run one block per SM
    /// (128 registers a thread), shorter ones two (64 registers).
    decode_wide_k: usize,
    scratch: usize,
    counters: usize,
    bodies: HashMap<String, String>,
    funcs: Vec<(String, usize)>,
    src: String,
    gemm_types: Vec<&'static str>,
    deq_types: Vec<&'static str>,
    /// Prefill through cuBLAS: the shared f16/f32 scratch of every matmul kernel.
    cublas: Option<prefill::Scratch>,
    launches: Vec<Launch>,
    /// Every distinct kernel: name, `__launch_bounds__` arguments, attributes, body.
    kernels: Vec<KernelSrc>,
    /// A one-token decode program is one persistent kernel (see `persistent.rs`): attention
    /// takes the cluster-free v4 kernel.
    persistent: bool,
    /// Positions below which a QKV kernel's tail computes decode attention (0: never).
    attn_tail: usize,
    /// The persistent kernel's grid barrier counter.
    barrier: Option<usize>,
    /// Attention nodes a QKV kernel's tail computes (codegen/attn_tail.rs).
    tail_fused: std::collections::HashSet<NodeId>,
    /// Fold the output projection into decode attention where it fits (codegen/attn_wo.rs).
    wo_fold: bool,
    /// Decode matmuls compute their row stage in registers where they can (v10a,
    /// `Gen::row_in_registers`), `SMELT_CUDA_ROW_REGS`: 0 never (the row stage through shared
    /// memory, the kernel lab's baseline), 1 for one token, 2 for a batch's rows too (each
    /// row in turn; the default, v13d: `smelt bench --batch` 4 and 8 rows +11-15% on the
    /// H100).
    row_regs: usize,
    /// Decode attention stages the chunks before the position ahead of `PDL_WAIT` (see
    /// [`GenOptions::attn_prewait`]).
    attn_prewait: bool,
    /// Decode attention's chunk on tensor cores: 0 off, 1 v16a, 2 v16d, 3 by head size (see
    /// [`GenOptions::attn_mma`]).
    attn_mma: usize,
    /// A batch's rows in registers of at most this many values load the next row ahead of
    /// the barrier between rows (v13g: 2048 by default; see [`GenOptions::row_pipe`]).
    row_pipe_k: usize,
    /// One-token matmuls copy their block's weight rows into shared memory before `PDL_WAIT`
    /// where they fit this many KiB (0: never; see [`GenOptions::stage_kb`]).
    stage_kb: usize,
    /// Decode attention's splits a KV head (see [`GenOptions::attn_splits`]), and the most
    /// a cluster attention of this program took (0: none).
    attn_splits: Option<usize>,
    cluster_splits: usize,
    /// While a decode matmul kernel is generated: the factor of its sums where its input's
    /// norm is applied after it (v15c), for one token and for a batch's lane (empty: none),
    /// applied through [`scaled`]; the warps' epilogues read it.
    norm_scale: (String, String),
    /// v17c: a batch step of at least this many rows takes its matmuls on tensor cores where
    /// they fit (0: never), Q8_0 weights too where this is set.
    batch_mma: usize,
    batch_mma_q8_0: bool,
    /// While a batch kernel's row stage is generated several rows a block pass (v18a): the
    /// threads a row (0: one row a pass, thread `tid` holding its values).
    row_threads: usize,
    /// v18a: a batch's short rows several a block pass where the row stage has no reduction.
    rows_at_once: bool,
    /// v19b: the least positions of a decode attention key region (0: no regions).
    attn_region: usize,
    /// v19b: the region length a decode attention took (0: none).
    region_used: usize,
    /// v20d: the head kernel's copy with the argmax (one token, contiguous cache or a solo
    /// program), and the launch of it the generator made.
    greedy_fold: bool,
    greedy_head: Option<Launch>,
    /// v27: a paged program's rows write their keys and values where their block table puts
    /// their position (see [`GenOptions::device_rows`]).
    device_rows: bool,
    /// While a batch kernel's warp epilogues are generated: the warps a weight row (v18f: 2,
    /// each half the sequences, `sh` the half; 1: one warp every sequence).
    seq_split: usize,
    /// v26: a one-token bundle's weight rows of one type go this many at once through
    /// `gemv8m` (every row's loads before any row's sum; 0 or 1: one `gemv8` a row).
    rows_together: usize,
}

struct KernelSrc {
    name: String,
    bounds: String,
    attrs: String,
    body: String,
}

/// Choices of [`generate`] besides the plan and the GPU.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GenOptions {
    /// Prefill matmuls as cuBLAS GEMM steps on f16 copies (else generated GEMM kernels).
    pub cublas: bool,
    /// A one-token decode program as one persistent kernel (codegen/persistent.rs).
    pub persistent: bool,
    /// Decode attention in the QKV kernel's tail below this many positions (0: off;
    /// codegen/attn_tail.rs).
    pub attn_tail: usize,
    /// One-token decode: the output projection in the attention cluster (codegen/attn_wo.rs).
    pub wo_fold: bool,
    /// Decode programs stamp each launch's first start and last finish with the GPU's global
    /// timer (`SMELT_CUDA_TRACE=1`, see [`Generated::trace_off`]).
    pub trace: bool,
    /// Decode programs' kernels read their parameters from a global array (v1-v9) instead of
    /// taking them by value (`SMELT_CUDA_PARAMS=global`, the kernel lab's baseline).
    pub global_params: bool,
    /// Where decode matmuls compute their row stage in registers (see `Gen::row_regs`);
    /// None: `SMELT_CUDA_ROW_REGS`, else one token and a batch's rows.
    pub row_regs: Option<usize>,
    /// Decode attention stages the key and value chunks wholly before the position ahead of
    /// `PDL_WAIT` (kernel lab, not yet measured; also `SMELT_CUDA_ATTN_PREWAIT=1`).
    pub attn_prewait: bool,
    /// Decode attention's chunk: 0 a warp a query head (v15), 1 on tensor cores (v16a), 2
    /// with the products transposed (v16d), 3 v16d for 128-wide heads and v16a for 64-wide
    /// ones (v17: the 8B +0.9% after 512 tokens, the 64-wide models within noise); None:
    /// `SMELT_CUDA_ATTN_MMA`, else 3.
    pub attn_mma: Option<usize>,
    /// A batch step's rows in registers (`row_regs` 2) of at most this many values load the
    /// next row while this one is quantised, ahead of the barrier between rows (v13e, v13g).
    /// None: `SMELT_CUDA_ROW_PIPE_K`, else every length with `SMELT_CUDA_ROW_PIPE=1`, none
    /// with `=0`, else 2048.
    pub row_pipe_k: Option<usize>,
    /// One-token matmuls whose block's weight rows fit this many KiB copy them into shared
    /// memory by bulk (TMA) copies before `PDL_WAIT`, and read them from there (kernel lab on
    /// sm_90, v13a, measured no faster; 0 defers to `SMELT_CUDA_STAGE_KB`, unset: off).
    pub stage_kb: usize,
    /// Each kernel body with an early `return` becomes a function of its own, so that every
    /// block reaches the kernel's `PDL_END` (v13f's release counters, `SMELT_CUDA_PDL=flag`).
    pub wrap_returns: bool,
    /// Decode attention's splits a KV head (a cluster's blocks); None: the most the GPU
    /// takes (16 on sm_90), or `SMELT_CUDA_ATTN_SPLITS`. A one-token program's short-context
    /// variant takes fewer (v13h, `backend/lower.rs`).
    pub attn_splits: Option<usize>,
    /// A one-token decode program's kernels but the head as one thread block cluster of this
    /// many blocks where the model fits (v14b, codegen/cluster.rs; 0: off).
    pub cluster: usize,
    /// v20d: a one-token decode program on a contiguous cache has a copy of its head kernel
    /// that takes the argmax of the logits in its tail (the next step's token and position,
    /// the step's word of the greedy ring; parameters [`PARAM_GREEDY_BUF`],
    /// [`PARAM_GREEDY_RING`]), for the greedy graph ([`Generated::greedy_head`]).
    pub greedy_fold: bool,
    /// A batch step of at least this many rows takes its matmuls on tensor cores where every
    /// weight is Q4_K or Q6_K (v17c, cu/mma_rows.cu; 0: never)...
    pub batch_mma: usize,
    /// ... or Q8_0, where this is set.
    pub batch_mma_q8_0: bool,
    /// A batch's short rows several a block pass (v18a; the backend's default, off where
    /// `SMELT_CUDA_ROWS_AT_ONCE=0`).
    pub rows_at_once: bool,
    /// v19b: decode attention on tensor cores splits a split's keys into regions of at least
    /// this many positions where the cache holds several, one warp each (0: never; the
    /// backend's default 2048, `SMELT_CUDA_ATTN_REGION`).
    pub attn_region: usize,
    /// v26: a one-token bundle's weight rows of one type this many at once (`gemv8m`: every
    /// row's loads before any row's sum, the same values; 0 or 1: one at a time; the
    /// backend's default is 2, `SMELT_CUDA_ROWS_TOGETHER`).
    pub rows_together: usize,
    /// v27: a paged program's rows take the cache row they write from their position and
    /// block table on the device (the host's `[t, 2t)` inputs unread), so a step may be
    /// launched before the host knows its position: a sequence decoding alone in the batch
    /// engine's pool runs the greedy and sampled graphs of backend/greedy.rs over it (a
    /// "solo" program, [`CudaBackend::lower_solo`](crate::CudaBackend::lower_solo)).
    pub device_rows: bool,
}

/// Generate the kernels of `plan` (all its weights described by `w`); with `cublas`, prefill
/// matmuls are cuBLAS GEMM steps on f16 copies instead of generated GEMM kernels.
pub(crate) fn generate(
    plan: &Plan,
    w: &[WeightInfo],
    kv: &KvInfo,
    sm_count: usize,
    cc_major: i32,
    opts: GenOptions,
) -> Result<Generated, CudaError> {
    let GenOptions {
        cublas,
        persistent,
        attn_tail,
        wo_fold,
        trace,
        global_params,
        row_regs,
        attn_prewait,
        attn_mma,
        row_pipe_k,
        stage_kb,
        wrap_returns,
        attn_splits,
        cluster,
        batch_mma,
        batch_mma_q8_0,
        rows_at_once,
        attn_region,
        greedy_fold,
        rows_together,
        device_rows,
    } = opts;
    let t = plan.graph().n_tokens();
    // Decode matmul blocks of 512 threads per SM (v3, see codegen/decode.rs): 2 caps registers
    // at 64 per thread, 1 gives 128. `SMELT_CUDA_DECODE_BLOCKS` forces one for every kernel,
    // `SMELT_CUDA_DECODE_WIDE_K` moves the row length from which one block is taken (kernel lab).
    let decode_blocks = lab_knob("SMELT_CUDA_DECODE_BLOCKS").filter(|b| (1..=2).contains(b));
    let decode_wide_k = lab_knob("SMELT_CUDA_DECODE_WIDE_K").unwrap_or(DECODE_WIDE_K);
    let decode = decode_rows(plan, w);
    let mut g = Gen {
        plan,
        w,
        kv,
        t,
        decode,
        sm_count: sm_count.max(1),
        cc_major,
        decode_blocks,
        decode_wide_k,
        scratch: plan.arena_len().div_ceil(64) * 64,
        counters: 0,
        bodies: HashMap::new(),
        funcs: Vec::new(),
        src: String::new(),
        gemm_types: Vec::new(),
        deq_types: Vec::new(),
        cublas: None,
        launches: Vec::new(),
        kernels: Vec::new(),
        persistent: persistent && decode && t == 1,
        attn_tail,
        barrier: None,
        tail_fused: Default::default(),
        wo_fold,
        row_regs: row_regs
            .or_else(|| lab_knob("SMELT_CUDA_ROW_REGS"))
            .unwrap_or(2),
        attn_prewait: attn_prewait || lab_knob("SMELT_CUDA_ATTN_PREWAIT") == Some(1),
        attn_mma: attn_mma
            .or_else(|| lab_knob("SMELT_CUDA_ATTN_MMA"))
            .filter(|&v| v <= 3)
            .unwrap_or(3),
        row_pipe_k: row_pipe_k.unwrap_or_else(|| {
            lab_knob("SMELT_CUDA_ROW_PIPE_K").unwrap_or(match lab_knob("SMELT_CUDA_ROW_PIPE") {
                Some(0) => 0,
                Some(1) => usize::MAX,
                _ => ROW_PIPE_K,
            })
        }),
        stage_kb: match stage_kb {
            0 => lab_knob("SMELT_CUDA_STAGE_KB").unwrap_or(0),
            n => n,
        },
        attn_splits,
        cluster_splits: 0,
        norm_scale: Default::default(),
        batch_mma,
        batch_mma_q8_0,
        row_threads: 0,
        seq_split: 1,
        rows_at_once,
        attn_region,
        region_used: 0,
        greedy_fold: greedy_fold
            && decode
            && t == 1
            && (!kv.paged || device_rows)
            && cluster == 0
            && !persistent,
        greedy_head: None,
        device_rows: device_rows && kv.paged,
        rows_together: rows_together.min(4),
    };
    if cublas && !decode {
        g.cublas = Some(g.prefill_scratch());
    }
    // A kernel another one computes (the output projection in decode attention's cluster,
    // codegen/attn_wo.rs) is skipped.
    let mut skip = None;
    for ki in 0..plan.kernels().len() {
        if skip == Some(ki) {
            continue;
        }
        let k = &plan.kernels()[ki];
        match &k.kind {
            KernelKind::Rows => g.rows_kernel(&k.rows, None, None)?,
            KernelKind::Attention { node } => {
                if g.attention(ki, *node)? {
                    skip = Some(ki + 1);
                }
            }
            KernelKind::MatMul { input, .. } => {
                if decode {
                    g.decode_matmul(ki)?
                } else {
                    g.prefill_matmul(ki, *input)?
                }
            }
        }
    }
    if cluster > 0 && !g.persistent && !trace && attn_tail == 0 {
        g.cluster_decode(cluster)?;
    }
    let out = plan.output_buffer();
    let ob = plan.buffer(out);
    let mut src = String::from(PRELUDE);
    for ty in &g.gemm_types {
        writeln!(src, "DEF_GEMM({ty})").unwrap();
    }
    for ty in &g.deq_types {
        writeln!(src, "DEF_DEQ16({ty})").unwrap();
    }
    src.push_str(&g.src);
    let persistent = g.persistent && persistent::fits(&g);
    let trace_off = (trace && decode && !persistent).then(|| g.trace_launches());
    if trace_off.is_some() {
        // Phase marks (`TRACE_MARK`) in the bodies stamp too.
        src.insert_str(0, "#define SMELT_TRACE 1\n");
    }
    let mut chain_steps = false;
    let param_values = !global_params
        && decode
        && !persistent
        && g.launches.iter().all(|l| match &l.work {
            Work::Kernel { params, .. } => params.len() <= PV_MAX,
            Work::Gemm(_) => false,
        });
    let sig = if param_values { SIGV } else { SIG };
    if persistent {
        persistent::emit(&mut g, &mut src);
    } else {
        // v15b: a one-token step's position is read once a kernel, before `PDL_WAIT` (the
        // host's copy precedes the step's first kernel, and no kernel writes it), so the
        // attention's chunk bounds and the RoPE angles do not wait for an L2 round trip after
        // the previous kernel (`SMELT_CUDA_PREWAIT_POS=0`: each read where it was).
        let pos_first = decode && g.t == 1 && lab_knob("SMELT_CUDA_PREWAIT_POS") != Some(0);
        // v21: except in the step's first kernel, which reads it after its wait: in a graph of
        // several greedy steps (backend/greedy.rs) it launches programmatically after the
        // previous step's head kernel, whose last block writes the position.
        let first = g.launches.first().and_then(|l| match &l.work {
            Work::Kernel { func, .. } => Some(func.as_str()),
            Work::Gemm(_) => None,
        });
        chain_steps = first.is_some();
        for k in &g.kernels {
            let (body, posr) =
                match pos_first && (k.body.contains("pos[0]") || k.body.contains("pos[rp]")) {
                    true => (
                        k.body.replace("pos[0]", "posr").replace("pos[rp]", "posr"),
                        "const u32 posr = __ldcg(pos);\n",
                    ),
                    false => (k.body.clone(), ""),
                };
            // A body that reads only weights first places its own PDL_WAIT (decode matmuls,
            // after their L2 prefetch); every other body, and every traced kernel (before its
            // first stamp), waits before its first statement.
            let own_wait = k.body.contains("PDL_WAIT()") && trace_off.is_none();
            let wrapped =
                trace_off.is_some() || (wrap_returns && param_values && k.body.contains("return"));
            // Not where the body uses the position before its own wait (the cluster form):
            // there it stays ahead, and steps do not chain.
            let early = own_wait
                && body
                    .find("posr")
                    .is_some_and(|u| body.find("PDL_WAIT()").is_some_and(|w| u < w));
            let after = Some(k.name.as_str()) == first && !posr.is_empty() && !early;
            if Some(k.name.as_str()) == first && early {
                chain_steps = false;
            }
            let (pdl, body) = match (own_wait, wrapped, after) {
                (true, _, false) => (format!("PDL_LAUNCH();\n{posr}"), body),
                (true, _, true) => (
                    "PDL_LAUNCH();\n".to_string(),
                    body.replacen("PDL_WAIT();", &format!("PDL_WAIT();\n{posr}"), 1),
                ),
                (false, false, false) => (format!("PDL_LAUNCH(); {posr}PDL_WAIT();\n"), body),
                (false, false, true) => (format!("PDL_LAUNCH(); PDL_WAIT();\n{posr}"), body),
                (false, true, _) => ("PDL_LAUNCH(); PDL_WAIT();\n".to_string(), body),
            };
            // A body of its own function reads the position in it.
            let body = match wrapped && !(after && own_wait) {
                true => format!("{posr}{body}"),
                false => body,
            };
            if wrapped {
                // The body as a function of its own: its early returns end only it, so every
                // block reaches the kernel's end (the trace's stamps around the body, v13f's
                // arrival in `PDL_END`). The stamps' offsets follow the body's parameters.
                let (bsig, targ, stamps) = match trace_off {
                    Some(_) => {
                        let np = g
                            .launches
                            .iter()
                            .find_map(|l| match &l.work {
                                Work::Kernel { func, params, .. } if *func == k.name => {
                                    Some(params.len() - 2)
                                }
                                _ => None,
                            })
                            .unwrap_or(0);
                        let at = format!("(A, C, P[{np}], P[{np} + 1]);\n");
                        (
                            sig.replace(')', ", const u64 TS)"),
                            format!(", P[{np}]"),
                            (format!("trace_begin{at}"), format!("trace_end{at}")),
                        )
                    }
                    None => (sig.to_string(), String::new(), Default::default()),
                };
                writeln!(
                    src,
                    "__device__ __forceinline__ void {n}_body{bsig} {{\n{b}}}\n\
                    extern \"C\" __global__ void __launch_bounds__({}) {}{n}{sig} {{\n{pdl}\
                    {begin}{n}_body(W, A, KV, tok, pos, P, C{targ});\n{end}PDL_END();\n}}",
                    k.bounds,
                    k.attrs,
                    n = k.name,
                    b = body,
                    begin = stamps.0,
                    end = stamps.1,
                )
                .unwrap();
                continue;
            }
            writeln!(
                src,
                "extern \"C\" __global__ void __launch_bounds__({}) {}{}{sig} {{\n{pdl}{}PDL_END();\n}}",
                k.bounds, k.attrs, k.name, body
            )
            .unwrap();
        }
    }
    Ok(Generated {
        src,
        funcs: g.funcs,
        launches: g.launches,
        arena_len: g.scratch,
        counters: g.counters.max(1),
        out_off: ob.offset,
        out_len: ob.rows * ob.cols,
        decode,
        persistent,
        barrier: g.barrier,
        trace_off,
        param_values,
        cluster_splits: g.cluster_splits,
        attn_region: g.region_used,
        greedy_head: g.greedy_head.filter(|_| !persistent && param_values),
        chain_steps: chain_steps && !persistent,
    })
}

/// Whether a plan's matmuls take the decode gemv kernels: one token, or up to
/// [`MAX_DECODE_ROWS`] rows when every matmul has them all (one row per sequence: a batch's
/// last-row selection keeps every row) and quantised weights (their activations are int8 rows
/// in shared memory). Other plans multiply through the prefill GEMMs.
fn decode_rows(plan: &Plan, w: &[WeightInfo]) -> bool {
    let t = plan.graph().n_tokens();
    if t == 1 {
        return true;
    }
    if t > MAX_DECODE_ROWS {
        return false;
    }
    plan.kernels().iter().all(|k| {
        let KernelKind::MatMul { input, bundles } = &k.kind else {
            return true;
        };
        plan.graph().node(*input).shape[0] == t
            && bundles.iter().flat_map(|b| &b.matmuls).all(|&m| {
                let Op::MatMul { w: wid, .. } = plan.graph().node(m).op else {
                    return false;
                };
                type_suffix(w[wid.0 as usize].dtype)
                    .is_some_and(|s| !matches!(s, "f32" | "f16" | "bf16"))
            })
    })
}

/// `f * v` for a matmul's sum `v` and its norm factor `f` (`v` where `f` is empty), rounded
/// on its own (`__fmul_rn`). A plain product was fused into the next add (a bias, a residual)
/// or not by where the compiler placed it: the same column's value differed between two
/// kernels whose matmul code differed only in its loads' order (v26's Qwen-like q and k).
pub(crate) fn scaled(f: &str, v: &str) -> String {
    match f.is_empty() {
        true => v.to_string(),
        false => format!("__fmul_rn({f}, {v})"),
    }
}

/// Row `i`'s factor of the per-row factors `rows` (an array's name; empty: none).
pub(crate) fn row_scale(rows: &str, i: &str) -> String {
    match rows.is_empty() {
        true => String::new(),
        false => format!("{rows}[{i}]"),
    }
}

/// A numeric kernel-lab setting from the environment (unset or not a number: `None`).
pub(crate) fn lab_knob(key: &str) -> Option<usize> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// `body` with its expression temporaries (`e<node id>`, and any suffix after the digits)
/// renumbered from 0 in order of first use.
pub(crate) fn canonical(body: &str) -> String {
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if b[i] == b'e' && word_start && digits > 0 {
            let j = i + 1 + digits;
            let next = ids.len();
            let id = *ids.entry(&body[i + 1..j]).or_insert(next);
            out.push_str(&body[copied..i]);
            write!(out, "e{id}").unwrap();
            (i, copied) = (j, j);
        } else {
            i += 1;
        }
    }
    out.push_str(&body[copied..]);
    out
}

const SIG: &str =
    "(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C)";
/// [`SIG`] with the parameters by value (prelude `PV`): decode programs' kernels.
const SIGV: &str =
    "(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const PV P, u32* C)";
/// Most parameters a kernel takes by value (prelude `PV_MAX`).
pub(crate) const PV_MAX: usize = 64;

impl<'a> Gen<'a> {
    fn node(&self, n: NodeId) -> &'a smelt_graph::Node {
        self.plan.graph().node(n)
    }

    fn weight(&self, id: smelt_graph::WeightId) -> &'a WeightInfo {
        &self.w[id.0 as usize]
    }

    fn alloc_scratch(&mut self, floats: usize) -> usize {
        let off = self.scratch;
        self.scratch += floats.div_ceil(64) * 64;
        off
    }

    /// Register a kernel body (dedup by text), return its function name.
    /// `bounds`: the `__launch_bounds__` arguments (threads, and blocks per SM if given).
    fn kernel(&mut self, bounds: &str, body: String, smem: usize) -> String {
        self.kernel_with(bounds, "", body, smem)
    }

    /// [`Self::kernel`] with more attributes before the name (`__cluster_dims__(...)`).
    fn kernel_with(&mut self, bounds: &str, attrs: &str, body: String, smem: usize) -> String {
        // The same kernel of two layers differs only in its temporaries' node ids: renumbered,
        // a model's layers share their kernels (one layer's worth of source to compile, not
        // every layer's).
        let body = canonical(&body);
        let key = format!("{bounds}|{attrs}|{smem}|{body}");
        if let Some(n) = self.bodies.get(&key) {
            return n.clone();
        }
        // Decode kernels are `dk<i>`, prefill kernels `pk<i>`: profilers select by name
        // (`ncu -k regex:^dk`, tools/cuda/device_run.sh ncu).
        let phase = if self.decode { "dk" } else { "pk" };
        let name = format!("{phase}{}", self.bodies.len());
        self.kernels.push(KernelSrc {
            name: name.clone(),
            bounds: bounds.into(),
            attrs: attrs.into(),
            body: body.clone(),
        });
        self.bodies.insert(key, name.clone());
        self.funcs.push((name.clone(), smem));
        name
    }

    /// Give every kernel launch its trace stamps ([`TRACE_STAMPS`] u64 in the arena) and
    /// block counters (two, after the program's others) as two more parameters; returns the
    /// stamps' offset.
    fn trace_launches(&mut self) -> usize {
        let n = self.launches.len();
        let per = 2 * TRACE_STAMPS;
        let off = self.alloc_scratch(per * n);
        let cb = self.counters;
        self.counters += 2 * n;
        for (i, l) in self.launches.iter_mut().enumerate() {
            if let Work::Kernel { params, .. } = &mut l.work {
                params.push((off + per * i) as u64);
                params.push((cb + 2 * i) as u64);
            }
        }
        off
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        label: String,
        func: String,
        grid: (usize, usize, usize),
        block: usize,
        smem: usize,
        p: Params,
    ) {
        self.launches.push(Launch {
            label,
            work: Work::Kernel {
                func,
                grid: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
                block: block as u32,
                smem: smem as u32,
                params: p.0,
            },
        });
    }

    fn kv_off(&self, layer: usize, part: KvPart) -> Result<(u64, usize), CudaError> {
        let &(k, v, width) = self.kv.layers.get(layer).ok_or_else(|| {
            CudaError::Invalid(format!(
                "plan writes KV of layer {layer}, cache has {}",
                self.kv.layers.len()
            ))
        })?;
        Ok((if part == KvPart::K { k } else { v }, width))
    }

    /// Offset of layer `layer`'s `part` in the KV cache, for a node of `cols` columns stored
    /// there (an error where the cache's rows are another width).
    fn kv_store_off(&self, layer: usize, part: KvPart, cols: usize) -> Result<u64, CudaError> {
        let (off, width) = self.kv_off(layer, part)?;
        if width != cols {
            return Err(CudaError::Invalid(format!("KV width {width} != {cols}")));
        }
        Ok(off)
    }

    /// The cache row that position row `rp` writes its key and value to: its position, or
    /// in a paged cache the row the host computed from its block table (v27, `device_rows`:
    /// the same row, read off the table here).
    fn kv_write_row(&self) -> String {
        let t = self.t;
        if self.device_rows {
            format!(
                "((u64)(pos + {} + (u64)pos[{} + rp] * {})[pos[rp] >> 5] * {KV_BLOCK} + (pos[rp] & {}))",
                3 * t,
                2 * t,
                self.kv.capacity / KV_BLOCK,
                KV_BLOCK - 1
            )
        } else if self.kv.paged {
            format!("pos[{t} + rp]")
        } else {
            "pos[rp]".into()
        }
    }

    /// Paged cache: code defining `TAB`, the block table of query row `rq` (empty otherwise).
    /// Inputs (`pos`, u32) of a step of `t` rows on a paged cache: positions `[0, t)`, cache
    /// rows to write `[t, 2t)`, each row's table index `[2t, 3t)`, then the tables, `capacity
    /// / KV_BLOCK` block numbers each.
    fn tab_def(&self, rq: &str) -> String {
        if !self.kv.paged {
            return String::new();
        }
        let t = self.t;
        format!(
            "const u32* TAB = pos + {} + (u64)pos[{} + {rq}] * {};\n",
            3 * t,
            2 * t,
            self.kv.capacity / KV_BLOCK
        )
    }

    /// Cache row of key `j` (of the query row whose `TAB` is defined).
    fn key_row(&self, j: &str) -> String {
        if self.kv.paged {
            format!(
                "((u64)TAB[({j}) >> 5] * {KV_BLOCK} + (({j}) & {}))",
                KV_BLOCK - 1
            )
        } else {
            format!("(u64)({j})")
        }
    }

    /// Code storing value `val` (an expression of local column `c`) of node `n` to every
    /// destination; `col0` is the global column of `c = 0`, `r`/`rp` the buffer row and
    /// position row.
    fn stores(
        &self,
        n: NodeId,
        val: &str,
        col0: &str,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let [rows, cols] = self.node(n).shape;
        let mut s = String::new();
        for d in self.plan.dests(n) {
            match *d {
                Dest::Buffer(b) => {
                    let off = self.plan.buffer(b).offset as u64;
                    let row = if rows == 1 { "0" } else { "r" };
                    writeln!(
                        s,
                        "A[{} + (u64){row} * {cols} + {col0} + c] = {val};",
                        p.p(off)
                    )
                    .unwrap();
                }
                Dest::Kv { layer, part } => {
                    let off = self.kv_store_off(layer, part, cols)?;
                    writeln!(
                        s,
                        "KV[{} + (u64){} * {cols} + {col0} + c] = f2h({val});",
                        p.p(off),
                        self.kv_write_row()
                    )
                    .unwrap();
                }
            }
        }
        Ok(s)
    }

    /// Read of node `n` at column expression `c` from a buffer written by an earlier kernel.
    /// Node `n`'s buffer: its offset parameter, the row term (`r` if it has several rows),
    /// its width and its offset in floats.
    fn buf_at(
        &self,
        n: NodeId,
        p: &mut Params,
    ) -> Result<(String, &'static str, usize, u64), CudaError> {
        let [rows, cols] = self.node(n).shape;
        let b = self.plan.buffer_of(n).ok_or_else(|| {
            CudaError::Invalid(format!(
                "%{} ({}) is read but not materialised",
                n.0,
                self.node(n).name
            ))
        })?;
        let off = self.plan.buffer(b).offset as u64;
        let row = if rows == 1 { "0" } else { "r" };
        Ok((p.p(off), row, cols, off))
    }

    /// The address of the first float of node `n`'s row, and whether it is 16-byte aligned.
    fn buf_row(&self, n: NodeId, p: &mut Params) -> Result<(String, bool), CudaError> {
        let (param, row, cols, off) = self.buf_at(n, p)?;
        let aligned = off.is_multiple_of(4) && (row == "0" || cols.is_multiple_of(4));
        Ok((format!("(A + {param} + (u64){row} * {cols})"), aligned))
    }

    fn buf_read(&self, n: NodeId, c: &str, p: &mut Params) -> Result<String, CudaError> {
        let (param, row, cols, _) = self.buf_at(n, p)?;
        Ok(format!("A[{param} + (u64){row} * {cols} + {c}]"))
    }
}

fn unsupported(t: GgmlType) -> CudaError {
    CudaError::Unsupported(format!("weight type {t:?}"))
}
