//! The fast CPU backend: executes fused plans on a persistent thread pool.
//!
//! A graph is fused (`smelt_graph::fuse`) and lowered once per shape class into a [`Program`]:
//! concrete steps with kernels chosen for each weight type and this CPU, every thread's share
//! of each step fixed, and per-thread scratch sized. [`FastBackend::execute`] replays it: one
//! pool job per execution, one barrier per fused kernel, no allocation. Weights are read in
//! place from the memory-mapped GGUF; only 1-D weights (norms, biases, RoPE factors) are copied
//! to f32. Activations live in one arena sized by the largest program; keys and values in an
//! f16 [`FastKvCache`].

mod attn;
mod exec;
mod f16;
mod kv;
mod lower;
mod matvec;
mod pool;
mod rowops;
mod shared;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_batch;
#[cfg(test)]
mod tests_odd;

use std::ops::Range;
use std::sync::{Arc, Mutex};

use smelt_gguf::{GgmlType, Gguf};
use smelt_graph::{fuse_with, FuseOptions, Graph, Plan};

pub use kv::{FastKvCache, KvType};
pub use lower::Program;
pub use pool::{Barrier, Pool};

use exec::{Ctx, Scratch};
use shared::SharedSlice;

/// Why the fast backend refuses a model, a plan or a request.
#[derive(Debug, thiserror::Error)]
pub enum FastError {
    #[error("[fast] unsupported: {what}")]
    Unsupported { what: String },
    #[error("[fast] missing tensor '{0}'")]
    MissingTensor(String),
    #[error("[fast] {0}")]
    Invalid(String),
    #[error(transparent)]
    Kernel(#[from] crate::kernels::KernelError),
}

pub use smelt_graph::WeightSpec;

/// One weight's bytes in the mapped file.
#[derive(Clone, Debug)]
pub(crate) struct WeightView {
    pub range: Range<usize>,
    pub dtype: GgmlType,
    pub cols: usize,
    pub row_bytes: usize,
}

/// The model's weights: views into the mapped file, and f32 copies of the 1-D ones.
pub(crate) struct Weights {
    gguf: Arc<Gguf>,
    pub views: Vec<WeightView>,
    pub small: Vec<Option<Vec<f32>>>,
}

impl Weights {
    /// Bytes, type and row length of weight `i`.
    pub fn big(&self, i: usize) -> (&[u8], GgmlType, usize) {
        let v = &self.views[i];
        (&self.gguf.bytes()[v.range.clone()], v.dtype, v.cols)
    }
}

/// Counters of work done, for `smelt bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Programs executed.
    pub executions: u64,
    /// Fused kernels dispatched (parallel regions).
    pub dispatches: u64,
    /// Barriers the pool completed (one per kernel).
    pub barriers: u64,
}

/// The fast backend for one model.
pub struct FastBackend {
    weights: Weights,
    pool: Pool,
    arena: Vec<f32>,
    scratch: Vec<Mutex<Scratch>>,
    stats: ExecStats,
    f16: f16::F16Isa,
    fuse: FuseOptions,
    exact: bool,
    /// Per kernel kind (name without layer numbers): nanoseconds and count, when profiling.
    profile: Option<Mutex<Vec<(String, u64, u64)>>>,
}

impl FastBackend {
    /// Map the weights `specs` (indexed like the graphs' `WeightId`s) of `gguf`, for `threads`
    /// threads.
    pub fn new(
        gguf: Arc<Gguf>,
        specs: &[WeightSpec],
        threads: usize,
    ) -> Result<FastBackend, FastError> {
        let data_offset = gguf.data_offset() as usize;
        let mut views = Vec::with_capacity(specs.len());
        let mut small = Vec::with_capacity(specs.len());
        for s in specs {
            let t = gguf
                .tensor(&s.name)
                .ok_or_else(|| FastError::MissingTensor(s.name.clone()))?;
            let [rows, cols] = s.shape;
            if t.n_elements != (rows * cols) as u64 {
                return Err(FastError::Invalid(format!(
                    "tensor '{}' has {} elements, expected {rows}x{cols}",
                    s.name, t.n_elements
                )));
            }
            let start = data_offset + t.offset as usize;
            let row_bytes = smelt_quant::row_size(t.dtype, cols)
                .map_err(|e| FastError::Invalid(format!("tensor '{}': {e}", s.name)))?;
            views.push(WeightView {
                range: start..start + t.n_bytes as usize,
                dtype: t.dtype,
                cols,
                row_bytes,
            });
            small.push(if rows == 1 {
                let v = smelt_quant::dequantize_to_vec(t.dtype, gguf.tensor_data(t))
                    .map_err(|e| FastError::Invalid(format!("tensor '{}': {e}", s.name)))?;
                Some(v)
            } else {
                None
            });
        }
        let threads = threads.max(1);
        Ok(FastBackend {
            weights: Weights { gguf, views, small },
            pool: Pool::new(threads),
            arena: Vec::new(),
            scratch: (0..threads)
                .map(|_| Mutex::new(Scratch::default()))
                .collect(),
            stats: ExecStats::default(),
            f16: f16::F16Isa::detect(),
            fuse: FuseOptions::ALL,
            exact: false,
            profile: None,
        })
    }

    /// Use `opts` for the graphs lowered from now on (tests compare fused and unfused plans).
    pub fn set_fusion(&mut self, opts: FuseOptions) {
        self.fuse = opts;
    }

    /// For the programs lowered from now on: multiply dequantised weights by f32 activations
    /// (the reference's arithmetic) instead of running the quantised kernels.
    pub fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }

    /// Time every kernel (on thread 0, barrier wait included) from now on; see [`FastBackend::profile`].
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| Mutex::new(Vec::new()));
    }

    /// Per kernel kind (layer numbers removed from names): total milliseconds and count.
    pub fn profile(&self) -> Vec<(String, f64, u64)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let p = p.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, f64, u64)> = p
            .iter()
            .map(|(k, ns, n)| (k.clone(), *ns as f64 / 1e6, *n))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Fuse and lower `g` for KV caches stored like `kv`.
    pub fn lower(&mut self, g: &Graph, kv: &FastKvCache) -> Result<Program, FastError> {
        self.lower_plan(fuse_with(g, self.fuse), kv)
    }

    /// Lower a plan; grows the arena and scratch to what it needs (allocation happens here,
    /// never in `execute`).
    pub fn lower_plan(&mut self, plan: Plan, kv: &FastKvCache) -> Result<Program, FastError> {
        let prog = lower::lower(
            plan,
            &self.weights,
            self.n_threads(),
            kv.dtype(),
            self.exact,
        )?;
        if self.arena.len() < prog.plan.arena_len() {
            self.arena.resize(prog.plan.arena_len(), 0.0);
        }
        for s in &self.scratch {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let n = prog.need;
            grow(&mut s.regs, n.regs);
            grow(&mut s.acts, n.acts);
            grow(&mut s.tiles, n.tiles);
            grow(&mut s.wrow, n.wrow);
            grow(&mut s.rope, n.rope);
            grow(&mut s.scores, n.scores);
        }
        Ok(prog)
    }

    /// Run `prog` for `tokens` at `positions` (one per input row) of one sequence, writing
    /// their keys and values into `kv` (a cache of one block). Returns the output
    /// (`[rows, cols]` row-major), valid until the next call.
    pub fn execute(
        &mut self,
        prog: &Program,
        tokens: &[u32],
        positions: &[u32],
        kv: &mut FastKvCache,
    ) -> Result<&[f32], FastError> {
        if kv.n_blocks() != 1 {
            return Err(FastError::Invalid(
                "a paged KV cache needs block tables (execute_batch)".into(),
            ));
        }
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= kv.capacity()) {
            return Err(FastError::Invalid(format!(
                "position {p} outside the KV cache ({})",
                kv.capacity()
            )));
        }
        let spans = [Span {
            start: 0,
            rows: tokens.len(),
            blocks: &[0],
        }];
        self.run(prog, tokens, positions, &spans, kv)
    }

    /// Run `prog` for the rows of several sequences at once: `seqs` in order, each owning its
    /// next `rows` rows of `tokens` and `positions`, its keys and values written to (and its
    /// attention reading from) the blocks its table names. A program with a last-row
    /// selection (`Output::SeqLogits`) returns one row per sequence, its last. Two sequences
    /// may read the same blocks but never write to the same one.
    pub fn execute_batch(
        &mut self,
        prog: &Program,
        tokens: &[u32],
        positions: &[u32],
        seqs: &[SeqRows],
        kv: &mut FastKvCache,
    ) -> Result<&[f32], FastError> {
        let spans = batch_spans(positions, seqs, kv)?;
        if let Some(n) = prog.last_rows {
            if n != seqs.len() {
                return Err(FastError::Invalid(format!(
                    "a program selecting {n} rows for {} sequences",
                    seqs.len()
                )));
            }
        }
        self.run(prog, tokens, positions, &spans, kv)
    }

    fn run(
        &mut self,
        prog: &Program,
        tokens: &[u32],
        positions: &[u32],
        spans: &[Span],
        kv: &mut FastKvCache,
    ) -> Result<&[f32], FastError> {
        let n = prog.n_tokens();
        if tokens.len() != n || positions.len() != n {
            return Err(FastError::Invalid(format!(
                "{} tokens and {} positions for a program of {n}",
                tokens.len(),
                positions.len()
            )));
        }
        if prog.n_threads != self.n_threads() || prog.kv_type != kv.dtype() {
            return Err(FastError::Invalid(
                "program lowered for another thread count or KV type".into(),
            ));
        }
        if prog.last_rows.is_some_and(|r| r != spans.len()) {
            return Err(FastError::Invalid(format!(
                "a program selecting {:?} rows for {} sequences",
                prog.last_rows,
                spans.len()
            )));
        }
        let barriers_before = self.pool.barriers();
        let kv_type = kv.dtype();
        let block = kv.block_size();
        let FastKvCache {
            f16, q8, layers, ..
        } = kv;
        let arena = SharedSlice::new(&mut self.arena);
        let (kv16, kv8) = (SharedSlice::new(f16), SharedSlice::new(q8));
        let ctx = Ctx {
            w: &self.weights,
            tokens,
            positions,
            seqs: spans,
            arena: &arena,
            kv16: &kv16,
            kv8: &kv8,
            kv_type,
            kv_layers: layers,
            block,
            n_threads: self.pool.n_threads(),
            f16: self.f16,
        };
        let failure: Mutex<Option<FastError>> = Mutex::new(None);
        let scratch = &self.scratch;
        let profile = self.profile.as_ref();
        self.pool.run(&|tid, barrier| {
            let mut s = scratch[tid].lock().unwrap_or_else(|e| e.into_inner());
            for (i, step) in prog.steps.iter().enumerate() {
                let start = (tid == 0 && profile.is_some()).then(std::time::Instant::now);
                if let Err(e) = exec::run_step(step, tid, &ctx, &mut s) {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
                if i + 1 < prog.steps.len() {
                    barrier.wait();
                }
                if let (Some(start), Some(p)) = (start, profile) {
                    record(p, &prog.step_keys[i], start.elapsed().as_nanos() as u64);
                }
            }
        });
        self.stats.executions += 1;
        self.stats.dispatches += prog.steps.len() as u64;
        self.stats.barriers += self.pool.barriers() - barriers_before;
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(&self.arena[prog.out_off..prog.out_off + prog.out_len])
    }

    pub fn stats(&self) -> ExecStats {
        self.stats
    }

    /// Bytes of weight data used in place through the mapping.
    pub fn mapped_weight_bytes(&self) -> usize {
        self.weights.views.iter().map(|v| v.range.len()).sum()
    }

    /// Bytes this backend allocated: f32 copies of 1-D weights, the arena, thread scratch.
    pub fn allocated_bytes(&self) -> usize {
        let small: usize = self
            .weights
            .small
            .iter()
            .flatten()
            .map(|v| v.len() * 4)
            .sum();
        let scratch: usize = self
            .scratch
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                (s.regs.len() + s.tiles.len() + s.wrow.len() + s.rope.len() + s.scores.len()) * 4
                    + s.acts.len()
            })
            .sum();
        small + self.arena.len() * 4 + scratch
    }
}

/// One sequence's rows in a batched execution (see [`FastBackend::execute_batch`]).
#[derive(Clone, Copy, Debug)]
pub struct SeqRows<'a> {
    /// Consecutive input rows, at increasing positions.
    pub rows: usize,
    /// Block table: block `blocks[i]` of the pool holds positions `i * block_size ..`.
    pub blocks: &'a [u32],
}

/// A sequence's rows as the kernels see them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    pub start: usize,
    pub rows: usize,
    pub blocks: &'a [u32],
}

/// Check a batch's layout against the pool and lay its sequences out as spans: every row
/// belongs to one sequence, positions increase within a sequence, every block a row writes
/// or attends to exists, and no block is written by two sequences.
fn batch_spans<'a>(
    positions: &[u32],
    seqs: &[SeqRows<'a>],
    kv: &FastKvCache,
) -> Result<Vec<Span<'a>>, FastError> {
    let bs = kv.block_size();
    let mut spans = Vec::with_capacity(seqs.len());
    let mut written: Vec<(u32, usize)> = Vec::new();
    let mut start = 0;
    for (i, s) in seqs.iter().enumerate() {
        let end = start + s.rows;
        if s.rows == 0 || end > positions.len() {
            return Err(FastError::Invalid(format!(
                "sequence {i}: {} rows at row {start} of {}",
                s.rows,
                positions.len()
            )));
        }
        let rows = &positions[start..end];
        if rows.windows(2).any(|w| w[1] <= w[0]) {
            return Err(FastError::Invalid(format!(
                "sequence {i}: positions do not increase"
            )));
        }
        let last = rows[rows.len() - 1] as usize;
        let used = s.blocks.get(..=last / bs).ok_or_else(|| {
            FastError::Invalid(format!(
                "sequence {i}: position {last} beyond its {} blocks",
                s.blocks.len()
            ))
        })?;
        if let Some(b) = used.iter().find(|&&b| b as usize >= kv.n_blocks()) {
            return Err(FastError::Invalid(format!(
                "sequence {i}: block {b} outside the pool ({})",
                kv.n_blocks()
            )));
        }
        for &p in rows {
            let b = used[p as usize / bs];
            if written.last() != Some(&(b, i)) {
                written.push((b, i));
            }
        }
        spans.push(Span {
            start,
            rows: s.rows,
            blocks: s.blocks,
        });
        start = end;
    }
    if start != positions.len() {
        return Err(FastError::Invalid(format!(
            "sequences cover {start} of {} rows",
            positions.len()
        )));
    }
    written.sort_unstable();
    written.dedup();
    if let Some(w) = written.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(FastError::Invalid(format!(
            "block {} written by sequences {} and {}",
            w[0].0, w[0].1, w[1].1
        )));
    }
    Ok(spans)
}

fn record(p: &Mutex<Vec<(String, u64, u64)>>, key: &str, ns: u64) {
    let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
    match p.iter_mut().find(|(k, _, _)| k == key) {
        Some(e) => {
            e.1 += ns;
            e.2 += 1;
        }
        None => p.push((key.to_string(), ns, 1)),
    }
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}
