//! The CUDA backend for one model: weights uploaded once, KV cache on the device, programs
//! (generated, NVRTC-compiled plans) executed with one host submission per decode step.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaFunction, CudaModule};
use smelt_gguf::Gguf;
use smelt_graph::{FuseOptions, WeightSpec};

use crate::codegen::{self, KvInfo, WeightInfo, KV_BLOCK};
use crate::cublas::{Cublas, GemmCall};
use crate::device::{check, DevBuf, Device, Pinned};
use crate::profile::Profile;
use crate::CudaError;

mod draw;
mod greedy;
mod lower;
mod submit;
mod top;

pub use draw::SAMPLE_NONE;
pub use greedy::{GREEDY_IN_FLIGHT, GREEDY_MAX_STEPS};
pub use top::{TopRows, TOP_INF, TOP_K, TOP_NAN, TOP_OVERFLOW};

/// Launch `func` on `stream` over `grid` (x, y) blocks of `block` threads with the arguments
/// `params` point to, after the previous kernel programmatically (PDL) when `programmatic`:
/// the kernels a step's graph ends with (the greedy argmax, the candidates, the draw).
///
/// # Safety
///
/// `params` point to the kernel's arguments, in its order and sizes, and the kernel's reads
/// and writes through them stay inside the buffers they name.
unsafe fn launch_tail(
    func: sys::CUfunction,
    grid: (u32, u32),
    block: u32,
    stream: sys::CUstream,
    params: &mut [*mut std::ffi::c_void],
    programmatic: bool,
    what: &str,
) -> Result<(), CudaError> {
    // SAFETY: a zeroed attribute is a valid value to fill in; the launch's arguments are the
    // caller's (this function's contract).
    unsafe {
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: 1,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: stream,
            attrs: &mut attr,
            numAttrs: programmatic as u32,
        };
        check(
            sys::cuLaunchKernelEx(&config, func, params.as_mut_ptr(), std::ptr::null_mut()),
            what,
        )
    }
}

/// What a step's graph ends with: the logits' copy to pinned memory, a greedy step's argmax
/// (v20a), or each row's sampling candidates (v22).
#[derive(Clone, Copy)]
enum Tail<'a> {
    Copy,
    Greedy(&'a greedy::GreedyTail),
    Top(&'a top::TopTail),
}

/// Counters for `smelt bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaStats {
    pub executions: u64,
    /// Kernel launches (inside graphs too).
    pub kernels: u64,
    /// Host submissions: graph launches, or kernel launches and copies when not replayed.
    pub submissions: u64,
}

/// Keys and values of every layer on the device, f16, `[capacity, width]` per layer and part:
/// one sequence's positions in order, or (paged) a pool of blocks of [`KV_BLOCK`] positions
/// that sequences address through block tables ([`CudaBackend::execute_batch`]).
pub struct CudaKvCache {
    buf: DevBuf,
    info: KvInfo,
}

/// One sequence's rows in a batched execution: `rows` consecutive input rows at increasing
/// positions; block `blocks[i]` of the pool holds its positions `i * KV_BLOCK ..`.
#[derive(Clone, Copy, Debug)]
pub struct BatchSeq<'a> {
    pub rows: usize,
    pub blocks: &'a [u32],
}

impl CudaKvCache {
    pub fn capacity(&self) -> usize {
        self.info.capacity
    }

    /// A pool of blocks (see [`CudaBackend::new_paged_kv`]).
    pub fn is_paged(&self) -> bool {
        self.info.paged
    }

    /// Blocks of a paged cache (positions / [`KV_BLOCK`]).
    pub fn n_blocks(&self) -> usize {
        self.info.capacity / KV_BLOCK
    }

    pub fn bytes(&self) -> usize {
        self.buf.bytes
    }
}

/// A plan lowered for this GPU: its module, launches and (decode) its captured graph.
pub struct CudaProgram {
    n_tokens: usize,
    _module: Arc<CudaModule>,
    funcs: Vec<CudaFunction>,
    launches: Vec<Step>,
    /// What each launch does (`SMELT_CUDA_PROFILE`).
    pub(crate) labels: Vec<String>,
    /// `SMELT_CUDA_TRACE`: the arena offset of the launches' timer stamps.
    pub(crate) trace_off: Option<usize>,
    /// Parameters of kernels that take them by value (`Args::Value`).
    values: Vec<[u64; codegen::PV_MAX]>,
    /// Launch parameters (`P`) of kernels that read them from memory (`Args::Device`).
    _params: DevBuf,
    arena_len: usize,
    counters: usize,
    out_off: usize,
    out_len: usize,
    /// u32 inputs besides the tokens: positions, and on a paged cache write rows, table
    /// indices and tables (codegen `tab_def`).
    in_len: usize,
    /// Matmuls through the decode gemv kernels (replayed as a graph).
    decode: bool,
    /// One persistent kernel with grid-wide barriers (codegen/persistent.rs): launched
    /// cooperatively, so the driver refuses a grid that would not be resident at once.
    cooperative: bool,
    /// Its grid barrier's counter (index into the counters), zeroed before each launch.
    barrier: Option<usize>,
    /// v13f: the first of its launches' release counters and their number, zeroed before
    /// each step.
    flags: Option<(usize, usize)>,
    /// The graph capture failed (a cooperative launch the driver cannot capture).
    no_graph: std::sync::atomic::AtomicBool,
    kv_capacity: usize,
    paged: bool,
    /// v27: a one-token program over a pool whose steps take their write rows from the
    /// block table on the device ([`CudaBackend::lower_solo`]).
    solo: bool,
    /// (buffer generation, kv pointer) the graph was captured with, and the graph.
    graph: Mutex<Option<(u64, u64, usize, Graph2)>>,
    /// The same for its greedy graph (v20a, backend/greedy.rs): no input copies, no logits'
    /// copy, the head kernel with the argmax in its tail (`greedy_head`, v20d) or the argmax
    /// kernel after the head (v20a-b).
    greedy: Mutex<Option<(u64, u64, usize, Graph2)>>,
    /// v21: a greedy graph of several steps (the step count is the tuple's third).
    greedy_steps: Mutex<Option<(u64, u64, usize, Graph2)>>,
    /// v23: a sampled run's graph of steps (backend/draw.rs; the step count is the tuple's
    /// third).
    sampled: Mutex<Option<(u64, u64, usize, Graph2)>>,
    /// v23: its draw kernel (prelude `sample_draw`), for one-token decode programs.
    sample_draw: Option<CudaFunction>,
    /// v22: the graph that ends with each row's sampling candidates (backend/top.rs).
    top: Mutex<Option<(u64, u64, usize, Graph2)>>,
    /// v22: its kernel (prelude `top_cands`), for decode programs.
    top_cands: Option<CudaFunction>,
    /// v21: greedy steps in one graph chain by PDL (codegen `Generated::chain_steps`).
    chain_steps: bool,
    /// v20d: the greedy graph's launch in place of the last (codegen `greedy_fold`).
    greedy_head: Option<Step>,
    /// v20a: the greedy graph's argmax kernel after the head, where there is no `greedy_head`.
    greedy_next: Option<CudaFunction>,
    /// v13h: the same program with decode attention in [`lower::SHORT_SPLITS`] splits a KV head,
    /// run while every row's position is below the bound (with v13i, its own `short`: 4
    /// splits below 128).
    short: Option<(u32, Box<CudaProgram>)>,
}

/// A kernel launch: (function index, grid, block, shared bytes, parameters, whether it may
/// launch programmatically: before the previous kernel ends, with PDL), or a cuBLAS GEMM.
enum Step {
    Kernel(usize, (u32, u32, u32), u32, u32, Args, bool),
    Gemm(GemmCall),
}

/// Where a kernel's parameters (`P`) are: the device address of its share of the program's
/// parameter array, or (decode kernels, taking them by value) the index of its values in the
/// program's `values`.
#[derive(Clone, Copy)]
enum Args {
    Device(u64),
    Value(usize),
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        // The graphs' kernel nodes point into the module and the parameter buffer: destroy
        // them before they go (fields drop in declaration order, the graphs last). Destroying
        // one after the module was unloaded crashed the driver (SIGSEGV in cuGraphExecDestroy,
        // seen on the device when `smelt bench` dropped a runner).
        fn clear<T>(slot: &mut Mutex<Option<T>>) {
            drop(slot.get_mut().unwrap_or_else(|e| e.into_inner()).take());
        }
        clear(&mut self.graph);
        clear(&mut self.greedy);
        clear(&mut self.greedy_steps);
        clear(&mut self.top);
        clear(&mut self.sampled);
    }
}

struct Graph2 {
    exec: sys::CUgraphExec,
    graph: sys::CUgraph,
}

impl Drop for Graph2 {
    fn drop(&mut self) {
        // SAFETY: handles from a successful capture and instantiation, destroyed once.
        unsafe {
            let _ = sys::cuGraphExecDestroy(self.exec);
            let _ = sys::cuGraphDestroy(self.graph);
        }
    }
}

// SAFETY: graph handles are used only under the program's mutex and the backend's &mut.
unsafe impl Send for Graph2 {}

impl CudaProgram {
    /// The program to run for a step at `positions`: the short-context variant while every
    /// position is below its bound.
    pub(crate) fn pick(&self, positions: &[u32]) -> &CudaProgram {
        match &self.short {
            Some((bound, p)) if positions.iter().all(|&x| x < *bound) => p.pick(positions),
            _ => self,
        }
    }

    /// The position bounds of its short-context variants (v13h, v13i), widest first.
    pub fn short_bounds(&self) -> Vec<u32> {
        let mut v = Vec::new();
        let mut p = self;
        while let Some((b, next)) = &p.short {
            v.push(*b);
            p = next;
        }
        v
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Kernel launches and cuBLAS GEMMs per execution.
    pub fn kernels(&self) -> usize {
        self.launches.len()
    }

    /// Whether the program's matmuls are decode gemv kernels (one to
    /// [`crate::MAX_DECODE_ROWS`] rows), replayed as one CUDA graph per step.
    pub fn is_decode(&self) -> bool {
        self.decode
    }

    /// What each launch does (`decode mm Q4_K 6144x4096`, ...), in order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// cuBLAS GEMMs per execution (0 for decode, or where prefill uses the mma.sync kernel).
    pub fn gemms(&self) -> usize {
        self.launches
            .iter()
            .filter(|s| matches!(s, Step::Gemm(_)))
            .count()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
        if let Some(t) = &self.trace {
            eprint!("{}", t.report());
        }
    }
}

/// Buffers whose addresses programs bake in (graphs are recaptured when they move).
struct IoBufs {
    gen: u64,
    arena: DevBuf,
    counters: DevBuf,
    tok: DevBuf,
    pos: DevBuf,
    pinned: Pinned,
    max_tokens: usize,
    /// u32 inputs after the tokens (positions and, paged, tables); the pinned buffer holds
    /// tokens, inputs, then outputs.
    max_in: usize,
    max_out: usize,
}

/// Batch decode steps of at least this many rows take their matmuls on tensor cores by
/// default (v17c; cuda.md has the measurements behind it).
pub const BATCH_MMA_ROWS: usize = 8;

/// Decode attention splits a split's keys into regions of at least this many positions, one
/// tensor-core warp each, where the cache holds several (v19b).
pub const ATTN_REGION: usize = 2048;

/// One-token decode kernels load a bundle's weight rows of one type two at a time before
/// their warp sums (v26; cuda.md: +0.3-0.8% on the three synthetic models, 3 no better).
pub const ROWS_TOGETHER: usize = 2;

pub struct CudaBackend {
    pub(crate) weights: DevBuf,
    pub(crate) winfo: Vec<WeightInfo>,
    io: IoBufs,
    stats: CudaStats,
    fuse: FuseOptions,
    graphs: bool,
    /// v28: prefill programs (their kernels and cuBLAS GEMMs) captured as a graph too and
    /// replayed, where the capture succeeds (else launched directly, as before);
    /// `SMELT_CUDA_PREFILL_GRAPH=0` launches them directly.
    prefill_graphs: bool,
    /// `SMELT_CUDA_PROFILE=1`: per-kernel device time by label (launches timed with events,
    /// graphs off), printed to stderr when the backend is dropped. A kernel-lab tool.
    profile: Option<Profile>,
    /// Programmatic dependent launch (sm_90+): a kernel with a grid smaller than the GPU
    /// that follows a kernel launches while its predecessor drains and waits for the
    /// predecessor's results in the kernel (prelude `PDL_WAIT`). The value is where kernels
    /// let the next one launch (`SMELT_PDL_AT`: 0 start, 1 mid, 2 end); None: off.
    pdl: Option<u32>,
    /// Prefill GEMMs: cuBLAS if it loaded (else why not), and whether programs use it.
    cublas: Result<Cublas, String>,
    use_cublas: bool,
    /// One-token decode programs as one persistent kernel (`SMELT_CUDA_PERSISTENT=1`).
    persistent: bool,
    /// One-token decode programs of small models as one thread block cluster of this many
    /// blocks and the head (`SMELT_CUDA_CLUSTER=8|16`, v14b, codegen/cluster.rs; 0: off).
    cluster: usize,
    /// Batch decode steps of at least this many rows take their matmuls on tensor cores where
    /// the weights are Q4_K or Q6_K (v17c, cu/mma_rows.cu; 0: never;
    /// `SMELT_CUDA_BATCH_MMA=n`).
    batch_mma: usize,
    /// Also where they are Q8_0: correct, no faster on SmolLM2 at 8 rows (cuda.md v18), so
    /// only where `SMELT_CUDA_BATCH_MMA` is set or [`CudaBackend::set_batch_mma`] was called.
    batch_mma_q8_0: bool,
    /// A batch's short rows several a block pass where the row stage has no reduction (v18a:
    /// 8 rows, the 1B's step -8%, SmolLM2's -24%; `SMELT_CUDA_ROWS_AT_ONCE=0`: one a pass).
    rows_at_once: bool,
    /// Decode attention in the QKV kernel's tail below this many positions
    /// (`SMELT_CUDA_ATTN_TAIL=N`; 0, the default: never).
    attn_tail: usize,
    /// One-token decode: the output projection in the attention cluster
    /// (`SMELT_CUDA_WO_FOLD=1`; off by default, codegen/attn_wo.rs).
    wo_fold: bool,
    /// Decode programs take their short-context variant (v13h, [`lower::SHORT_SPLITS`]): 0 never, 1
    /// (the default), 2 with the variant's own below 128 positions (v13i, kernel lab);
    /// `SMELT_CUDA_ATTN_SHORT=0` off).
    short_attn: usize,
    /// v19b: the least positions of a decode attention key region (0: none;
    /// `SMELT_CUDA_ATTN_REGION`, default [`ATTN_REGION`]).
    attn_region: usize,
    /// v26: one-token bundles' weight rows this many at once (`SMELT_CUDA_ROWS_TOGETHER`;
    /// default [`ROWS_TOGETHER`], 1: one at a time).
    rows_together: usize,
    /// `SMELT_CUDA_TRACE=1`: decode programs stamp every launch with the global timer inside
    /// the replayed graph; durations and gaps by label, printed when the backend is dropped.
    trace: Option<crate::profile::Trace>,
    /// Decode kernels read parameters from a global array (`SMELT_CUDA_PARAMS=global`).
    global_params: bool,
    /// Greedy decoding on the device (v20a): its buffers and steps in flight, once begun;
    /// `SMELT_CUDA_GREEDY=0` turns it off (the host's argmax then, a step at a time).
    greedy: Option<greedy::Greedy>,
    greedy_on: bool,
    /// Kernel lab (`SMELT_CUDA_GREEDY_LAB=1`, timing only, the tokens are wrong): greedy graphs
    /// without the argmax kernel.
    greedy_lab: bool,
    /// The argmax kernel's buffer and the ring (allocated with the backend: the v20d head
    /// kernels take their addresses as parameters).
    greedy_bufs: greedy::GreedyBufs,
    /// v20d: one-token programs have a copy of the head kernel with the argmax in its tail
    /// for the greedy graph (`SMELT_CUDA_GREEDY_FOLD=0`: the argmax kernel after the head).
    greedy_fold: bool,
    /// v21: greedy steps a graph (`SMELT_CUDA_GREEDY_STEPS`, 1 to [`greedy::GREEDY_MAX_STEPS`]).
    greedy_steps: usize,
    /// v22: steps may end with sampling candidates (`SMELT_CUDA_TOP=0`: never).
    top_on: bool,
    top_bufs: top::TopBufs,
    /// v23: sampled steps draw on the device (`SMELT_CUDA_SAMPLE=0`: on the host, from the
    /// candidates), `sample_steps` a graph (`SMELT_CUDA_SAMPLE_STEPS`, default 1: more
    /// measured slower, cuda.md v23b).
    sample_on: bool,
    sample_steps: usize,
    draw_bufs: draw::DrawBufs,
    /// Last: fields drop in order, and the buffers above are freed in its context.
    dev: Device,
}

impl CudaBackend {
    /// Open the GPU and upload the weights `specs` (indexed like the graphs' `WeightId`s).
    pub fn new(gguf: Arc<Gguf>, specs: &[WeightSpec]) -> Result<CudaBackend, CudaError> {
        let dev = Device::open()?;
        let data_offset = gguf.data_offset() as usize;
        let mut winfo = Vec::with_capacity(specs.len());
        let mut total = 0u64;
        let mut small: Vec<Option<Vec<u8>>> = Vec::new();
        for s in specs {
            let t = gguf
                .tensor(&s.name)
                .ok_or_else(|| CudaError::Invalid(format!("missing tensor '{}'", s.name)))?;
            let [rows, cols] = s.shape;
            if t.n_elements != (rows * cols) as u64 {
                return Err(CudaError::Invalid(format!(
                    "tensor '{}' has {} elements, expected {rows}x{cols}",
                    s.name, t.n_elements
                )));
            }
            let row_bytes = crate::layout::dev_row_bytes(t.dtype, cols)
                .map_err(|e| CudaError::Invalid(format!("tensor '{}': {e}", s.name)))?;
            let (dtype, bytes, sm) = if rows == 1 {
                let v = smelt_quant::dequantize_to_vec(t.dtype, gguf.tensor_data(t))
                    .map_err(|e| CudaError::Invalid(format!("tensor '{}': {e}", s.name)))?;
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (smelt_gguf::GgmlType::F32, b.len() as u64, Some(b))
            } else {
                if codegen::type_suffix(t.dtype).is_none() {
                    return Err(CudaError::Unsupported(format!(
                        "tensor '{}' of type {:?}",
                        s.name, t.dtype
                    )));
                }
                (t.dtype, row_bytes * rows as u64, None)
            };
            winfo.push(WeightInfo {
                off: total,
                dtype,
                row_bytes: if rows == 1 {
                    cols as u64 * 4
                } else {
                    row_bytes
                },
            });
            small.push(sm);
            total += bytes.div_ceil(256) * 256;
        }
        let weights = dev.alloc(total as usize)?;
        for ((s, w), sm) in specs.iter().zip(&winfo).zip(&small) {
            let bytes: &[u8] = match sm {
                Some(b) => b,
                None => {
                    let t = gguf.tensor(&s.name).expect("checked above");
                    let start = data_offset + t.offset as usize;
                    &gguf.bytes()[start..start + t.n_bytes as usize]
                }
            };
            // Rows of blocks that GGUF leaves 2-byte aligned are sectioned on the way (see
            // `layout`).
            match crate::layout::to_device(w.dtype, bytes, s.shape[1]) {
                Some(padded) => dev.upload(weights.ptr + w.off, &padded)?,
                None => dev.upload(weights.ptr + w.off, bytes)?,
            }
        }
        let io = IoBufs {
            gen: 0,
            arena: dev.alloc(0)?,
            counters: dev.alloc(0)?,
            tok: dev.alloc(0)?,
            pos: dev.alloc(0)?,
            pinned: dev.alloc_pinned(0)?,
            max_tokens: 0,
            max_in: 0,
            max_out: 0,
        };
        let cublas = Cublas::load(dev.cu_stream());
        // Programmatic dependent launch (sm_90): by default a kernel lets the next one launch
        // when each of its blocks ends (`end`, v11a). `SMELT_CUDA_PDL`: 0 off, 1 at each
        // kernel's start (v4b-v9, slower), `mid` once a block has issued its last weight loads,
        // `flag` (v13f, kernel lab, decode programs): per-launch release counters in place of
        // the grid dependency wait (`flags_fit`).
        let pdl = match std::env::var("SMELT_CUDA_PDL").as_deref() {
            _ if dev.cc.0 < 9 => None,
            Ok("0") => None,
            Ok("1") => Some(0),
            Ok("mid") => Some(1),
            Ok("flag") => Some(4),
            _ => Some(2),
        };
        let greedy_bufs = greedy::GreedyBufs::new(&dev)?;
        let top_bufs = top::TopBufs::new(&dev)?;
        let draw_bufs = draw::DrawBufs::new(&dev)?;
        Ok(CudaBackend {
            use_cublas: cublas.is_ok(),
            cublas,
            dev,
            weights,
            winfo,
            io,
            stats: CudaStats::default(),
            fuse: FuseOptions::ALL,
            graphs: std::env::var("SMELT_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            prefill_graphs: codegen::lab_knob("SMELT_CUDA_PREFILL_GRAPH") != Some(0),
            pdl,
            persistent: std::env::var("SMELT_CUDA_PERSISTENT").is_ok_and(|v| v == "1"),
            cluster: codegen::lab_knob("SMELT_CUDA_CLUSTER").unwrap_or(0),
            batch_mma: codegen::lab_knob("SMELT_CUDA_BATCH_MMA").unwrap_or(BATCH_MMA_ROWS),
            batch_mma_q8_0: codegen::lab_knob("SMELT_CUDA_BATCH_MMA").is_some(),
            rows_at_once: codegen::lab_knob("SMELT_CUDA_ROWS_AT_ONCE") != Some(0),
            // Off: slower on the H100 (1B 1524 -> 1285, SmolLM2 1324 -> 1077 tok/s; cuda.md v7).
            attn_tail: crate::codegen::lab_knob("SMELT_CUDA_ATTN_TAIL").unwrap_or(0),
            // Off: slower on the H100 (1B 1530 -> 1424, SmolLM2 1328 -> 1221 tok/s; cuda.md v9).
            wo_fold: std::env::var("SMELT_CUDA_WO_FOLD").is_ok_and(|v| v == "1"),
            short_attn: codegen::lab_knob("SMELT_CUDA_ATTN_SHORT").map_or(1, |n| n.min(2)),
            attn_region: codegen::lab_knob("SMELT_CUDA_ATTN_REGION").unwrap_or(ATTN_REGION),
            rows_together: codegen::lab_knob("SMELT_CUDA_ROWS_TOGETHER").unwrap_or(ROWS_TOGETHER),
            global_params: std::env::var("SMELT_CUDA_PARAMS").is_ok_and(|v| v == "global"),
            greedy: None,
            greedy_on: std::env::var("SMELT_CUDA_GREEDY").map_or(true, |v| v != "0"),
            greedy_lab: codegen::lab_knob("SMELT_CUDA_GREEDY_LAB") == Some(1),
            greedy_bufs,
            greedy_fold: codegen::lab_knob("SMELT_CUDA_GREEDY_FOLD") != Some(0),
            greedy_steps: codegen::lab_knob("SMELT_CUDA_GREEDY_STEPS")
                .unwrap_or(greedy::DEFAULT_STEPS)
                .clamp(1, greedy::GREEDY_MAX_STEPS),
            top_on: std::env::var("SMELT_CUDA_TOP").map_or(true, |v| v != "0"),
            top_bufs,
            sample_on: std::env::var("SMELT_CUDA_SAMPLE").map_or(true, |v| v != "0"),
            sample_steps: codegen::lab_knob("SMELT_CUDA_SAMPLE_STEPS")
                .unwrap_or(1)
                .clamp(1, greedy::GREEDY_MAX_STEPS),
            draw_bufs,
            trace: std::env::var("SMELT_CUDA_TRACE")
                .is_ok_and(|v| v == "1")
                .then(Default::default),
            profile: std::env::var("SMELT_CUDA_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(Profile::default),
        })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// A one-line description: GPU name, compute capability, driver, prefill GEMM path.
    pub fn describe(&self) -> String {
        let d = &self.dev;
        format!(
            "{} (sm_{}{}, {} SMs, driver {}.{}), prefill: {}",
            d.name,
            d.cc.0,
            d.cc.1,
            d.sm_count,
            d.driver_version / 1000,
            d.driver_version % 1000 / 10,
            self.prefill_path()
        )
    }

    /// How prefill multiplies: `cuBLAS 13.0.0`, or `mma.sync (cuBLAS ...: reason)`.
    pub fn prefill_path(&self) -> String {
        match (&self.cublas, self.use_cublas) {
            (Ok(c), true) => format!("cuBLAS {}", c.version_text()),
            (Ok(_), false) => "mma.sync (cuBLAS turned off)".into(),
            (Err(e), _) => format!("mma.sync (cuBLAS: {e})"),
        }
    }

    /// Whether programs lowered from now on run prefill matmuls through cuBLAS (default: yes
    /// where it loaded, and `SMELT_CUBLAS` is not `0`). Returns whether they will: asking for
    /// cuBLAS where it did not load keeps the mma.sync kernel.
    pub fn set_cublas(&mut self, on: bool) -> bool {
        self.use_cublas = on && self.cublas.is_ok();
        self.use_cublas
    }

    pub fn set_fusion(&mut self, opts: FuseOptions) {
        self.fuse = opts;
    }

    /// Run one-token decode programs lowered from now on as one persistent kernel
    /// (codegen/persistent.rs) instead of a launch per fused kernel.
    pub fn set_persistent(&mut self, on: bool) {
        self.persistent = on;
    }

    /// Lower one-token decode programs of small models from now on as one thread block
    /// cluster of `blocks` (8 or 16) and the head kernel (0: off; codegen/cluster.rs).
    pub fn set_cluster(&mut self, blocks: usize) {
        self.cluster = blocks;
    }

    /// Lower batch decode steps of at least `rows` rows (0: none) with their matmuls on tensor
    /// cores where every weight of a kernel is Q8_0, Q4_K or Q6_K, from now on (v17c).
    pub fn set_batch_mma(&mut self, rows: usize) {
        self.batch_mma = rows;
        self.batch_mma_q8_0 = true;
    }

    /// Compute one-token decode attention in the QKV kernel's tail below `keys` positions
    /// (0: never; codegen/attn_tail.rs), in programs lowered from now on.
    pub fn set_attention_tail(&mut self, keys: usize) {
        self.attn_tail = keys;
    }

    /// Compute one-token decode's output projection in the attention cluster where it fits
    /// (codegen/attn_wo.rs), in programs lowered from now on.
    pub fn set_wo_fold(&mut self, on: bool) {
        self.wo_fold = on;
    }

    /// Short-context variants of decode programs lowered from now on: 0 none, 1 the 8-split
    /// one (the default), 2 also its 4-split one below 128 positions (v13i).
    pub fn set_short_attention_levels(&mut self, levels: usize) {
        self.short_attn = levels.min(2);
    }

    /// Decode attention of programs lowered from now on splits a split's keys into regions
    /// of at least `len` positions where the cache holds several (v19b; 0: never).
    pub fn set_attention_region(&mut self, len: usize) {
        self.attn_region = len;
    }

    /// One-token decode programs lowered from now on take a bundle's weight rows `n` at once
    /// (v26, `gemv8m`; 1: one at a time; default [`ROWS_TOGETHER`]).
    pub fn set_rows_together(&mut self, n: usize) {
        self.rows_together = n;
    }

    /// Whether prefill programs are replayed as graphs (v28; a program whose capture failed
    /// is launched directly all the same).
    pub fn prefill_graphs(&self) -> bool {
        self.graphs && self.prefill_graphs && self.profile.is_none()
    }

    /// One-token programs lowered from now on decode greedily with a copy of the head kernel
    /// that takes the argmax of the logits in its tail (v20d, the default) or, off, with the
    /// argmax kernel after the head (v20a-b).
    pub fn set_greedy_fold(&mut self, on: bool) {
        self.greedy_fold = on;
    }

    /// Greedy steps a graph (v21), clamped to 1 to [`greedy::GREEDY_MAX_STEPS`].
    pub fn set_greedy_steps(&mut self, n: usize) {
        self.greedy_steps = n.clamp(1, greedy::GREEDY_MAX_STEPS);
    }

    /// Stamp every launch of decode programs lowered from now on with the GPU's global timer
    /// (`SMELT_CUDA_TRACE=1`); [`Self::trace_report`] sums spans and gaps by label.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on.then(Default::default);
    }

    /// The trace so far (see [`Self::set_trace`]), as printed when the backend is dropped.
    pub fn trace_report(&self) -> Option<String> {
        self.trace.as_ref().map(|t| t.report())
    }

    /// Replay decode steps as CUDA graphs (default on; `SMELT_CUDA_GRAPHS=0` turns it off).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    pub fn stats(&self) -> CudaStats {
        self.stats
    }

    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes
    }

    /// Device bytes: weights, arena, scratch (not the KV cache).
    pub fn allocated_bytes(&self) -> usize {
        self.weights.bytes + self.io.arena.bytes + self.io.counters.bytes
    }

    /// A KV cache on this device for one sequence of `capacity` positions.
    pub fn new_kv(&self, capacity: usize, widths: &[usize]) -> Result<CudaKvCache, CudaError> {
        self.kv_cache(capacity, widths, false)
    }

    /// A pool of `n_blocks` KV blocks of [`KV_BLOCK`] positions, shared by the sequences of
    /// [`CudaBackend::execute_batch`].
    pub fn new_paged_kv(
        &self,
        n_blocks: usize,
        widths: &[usize],
    ) -> Result<CudaKvCache, CudaError> {
        let capacity = n_blocks.checked_mul(KV_BLOCK).filter(|&c| c > 0);
        let capacity = capacity
            .ok_or_else(|| CudaError::Invalid(format!("a KV pool of {n_blocks} blocks")))?;
        self.kv_cache(capacity, widths, true)
    }

    fn kv_cache(
        &self,
        capacity: usize,
        widths: &[usize],
        paged: bool,
    ) -> Result<CudaKvCache, CudaError> {
        let mut layers = Vec::with_capacity(widths.len());
        let mut off = 0u64;
        for &w in widths {
            let n = (capacity * w) as u64;
            layers.push((off, off + n, w));
            off += 2 * n;
        }
        let buf = self.dev.alloc(off as usize * 2)?;
        Ok(CudaKvCache {
            buf,
            info: KvInfo {
                capacity,
                layers,
                paged,
            },
        })
    }

    /// Grow the shared buffers to what `prog` needs; moving them invalidates captured graphs.
    fn ensure(&mut self, prog: &CudaProgram) -> Result<(), CudaError> {
        let io = &mut self.io;
        let mut moved = false;
        if io.arena.bytes < prog.arena_len * 4 {
            io.arena = self.dev.alloc(prog.arena_len * 4)?;
            moved = true;
        }
        if io.counters.bytes < prog.counters * 4 {
            io.counters = self.dev.alloc(prog.counters * 4)?;
            moved = true;
        }
        if io.max_tokens < prog.n_tokens || io.max_in < prog.in_len || io.max_out < prog.out_len {
            io.max_tokens = io.max_tokens.max(prog.n_tokens);
            io.max_in = io.max_in.max(prog.in_len);
            io.max_out = io.max_out.max(prog.out_len);
            io.tok = self.dev.alloc(io.max_tokens * 4)?;
            io.pos = self.dev.alloc(io.max_in * 4)?;
            io.pinned = self
                .dev
                .alloc_pinned((io.max_tokens + io.max_in) * 4 + io.max_out * 4)?;
            moved = true;
        }
        if moved {
            io.gen += 1;
        }
        Ok(())
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read + written), the roofline that
    /// `smelt bench` compares decode against.
    pub fn copy_bandwidth(&self) -> Result<f64, CudaError> {
        let bytes = 1usize << 30;
        let a = self.dev.alloc(bytes)?;
        let b = self.dev.alloc(bytes)?;
        let stream = self.dev.cu_stream();
        let run = |n: usize| -> Result<f64, CudaError> {
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                // SAFETY: both buffers hold `bytes` bytes.
                unsafe {
                    check(
                        sys::cuMemcpyDtoDAsync_v2(b.ptr, a.ptr, bytes, stream),
                        "copy",
                    )?
                };
            }
            self.dev.sync()?;
            Ok(t0.elapsed().as_secs_f64())
        };
        run(2)?;
        let t = run(10)?;
        Ok(2.0 * bytes as f64 * 10.0 / t / 1e9)
    }
}
