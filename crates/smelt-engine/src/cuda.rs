//! The runner's CUDA side: a `smelt-cuda` backend, its device KV cache and programs per shape.

use std::collections::HashMap;
use std::sync::Arc;

use smelt_cuda::{BatchSeq, CudaBackend, CudaKvCache, CudaProgram};
use smelt_gguf::Gguf;
use smelt_models::{Architecture, Output};

use crate::batch::Programs;
use crate::EngineError;

const _: () = assert!(crate::runner::TOP_CANDIDATES == smelt_cuda::TOP_K);

/// Programs kept; a decode program holds its captured CUDA graph.
const MAX_PROGRAMS: usize = 8;

/// Fields drop in order: programs (graphs, modules) and the KV cache before the backend
/// that owns the device.
pub(crate) struct CudaExec {
    programs: HashMap<(usize, Output), CudaProgram>,
    pub kv: CudaKvCache,
    pub backend: CudaBackend,
}

fn err(e: smelt_cuda::CudaError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

impl CudaExec {
    pub fn load(
        gguf: &Arc<Gguf>,
        arch: &dyn Architecture,
        n_ctx: usize,
    ) -> Result<CudaExec, EngineError> {
        let backend = CudaBackend::new(Arc::clone(gguf), &arch.weights().specs()).map_err(err)?;
        let kv = backend.new_kv(n_ctx, &arch.kv_widths()).map_err(err)?;
        Ok(CudaExec {
            backend,
            kv,
            programs: HashMap::new(),
        })
    }

    /// Evaluate `chunk` at positions `start..`; the output stays valid until the next call.
    pub fn eval(
        &mut self,
        arch: &dyn Architecture,
        chunk: &[u32],
        start: u32,
        mode: Output,
    ) -> Result<&[f32], EngineError> {
        let key = (chunk.len(), mode);
        self.program(arch, key)?;
        let positions: Vec<u32> = (start..start + chunk.len() as u32).collect();
        self.backend
            .execute(&self.programs[&key], chunk, &positions, &mut self.kv)
            .map_err(err)
    }

    /// One decode step of `tok` at `start` ending with its sampling candidates (smelt-cuda
    /// v22), copied to `out`: Some(whether the row had a `+inf`), or None where the program
    /// cannot (nothing evaluated).
    pub fn eval_top(
        &mut self,
        arch: &dyn Architecture,
        tok: u32,
        start: u32,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<Option<bool>, EngineError> {
        let key = (1, Output::LastLogits);
        self.program(arch, key)?;
        let prog = &self.programs[&key];
        if !self.backend.top_ok(prog) {
            return Ok(None);
        }
        let top = self
            .backend
            .execute_top(prog, &[tok], &[start], &mut self.kv)
            .map_err(err)?;
        out.clear();
        out.extend(top.candidates(0));
        Ok(Some(top.flags(0) & smelt_cuda::TOP_INF != 0))
    }

    /// The logits of the last [`CudaExec::eval_top`] step, from the device.
    pub fn last_logits(&mut self) -> Result<Vec<f32>, EngineError> {
        let prog = self
            .programs
            .get(&(1, Output::LastLogits))
            .ok_or_else(|| EngineError::Invalid("no decode step ran".into()))?;
        self.backend.logits_row(prog, 0).map_err(err)
    }

    /// Lower the program of `key` (rows, output) unless it is kept; at most [`MAX_PROGRAMS`]
    /// kept, the one-token ones before the others.
    fn program(
        &mut self,
        arch: &dyn Architecture,
        key: (usize, Output),
    ) -> Result<(), EngineError> {
        if self.programs.contains_key(&key) {
            return Ok(());
        }
        if self.programs.len() >= MAX_PROGRAMS {
            self.programs.retain(|k, _| k.0 == 1);
        }
        let prog = self
            .backend
            .lower(&arch.build(key.0, key.1), &self.kv)
            .map_err(err)?;
        self.programs.insert(key, prog);
        Ok(())
    }

    /// Greedy or sampled decoding on the device (smelt-cuda v20a, v23): `steps` one-token
    /// steps from `first` at position `start`, at most [`smelt_cuda::GREEDY_IN_FLIGHT`]
    /// graphs of them in flight, each step's token given to `on_token` with the positions
    /// evaluated so far; the evaluated tokens are pushed to `tokens`. Each token is the argmax
    /// of its logits, or with `draw` (a sampled run's settings, history and seeded stream,
    /// left where the draws of the tokens given leave it) drawn as the host's
    /// `Sampler::sample_top` draws it. None where the program cannot (nothing
    /// evaluated); else (steps evaluated, whether the last one's draw failed: its token was
    /// evaluated, its draw is the host's to make).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_on_device(
        &mut self,
        arch: &dyn Architecture,
        first: u32,
        start: usize,
        steps: usize,
        draw: Option<Draw>,
        tokens: &mut Vec<u32>,
        on_token: &mut dyn FnMut(u32, usize) -> bool,
    ) -> Result<Option<(usize, bool)>, EngineError> {
        let key = (1, Output::LastLogits);
        self.program(arch, key)?;
        let prog = &self.programs[&key];
        let run = ((first, start), steps, draw, None);
        device_run(&mut self.backend, prog, &mut self.kv, run, tokens, on_token)
    }
}

/// A device run's start (token, position), step count, draw and (over a pool) block table.
type Run<'d, 't> = ((u32, usize), usize, Option<Draw<'d>>, Option<Table<'t>>);

/// [`run_steps`] where `prog` can run that way over `kv` (None: nothing evaluated), the run
/// ended after it (the steps still in flight waited for). A sampled run's uniforms come
/// from a copy of its stream, which is then moved past the draws of the tokens given.
fn device_run(
    backend: &mut CudaBackend,
    prog: &CudaProgram,
    kv: &mut CudaKvCache,
    (at, steps, draw, table): Run,
    tokens: &mut Vec<u32>,
    on_token: &mut dyn FnMut(u32, usize) -> bool,
) -> Result<Option<(usize, bool)>, EngineError> {
    let ok = match draw {
        Some(_) => backend.sample_ok(prog, kv),
        None => backend.greedy_ok(prog, kv),
    };
    if !ok || steps == 0 {
        return Ok(None);
    }
    let (words, history, mut rng) = match draw {
        Some((s, h, r)) => (Some(s.words()), h, Some(r)),
        None => (None, &[][..], None),
    };
    let mut draws = rng.as_deref().cloned();
    let mut uniform = || draws.as_mut().map_or(0.0, |d| d.next_f32());
    let uniforms = words
        .as_ref()
        .map(|w| (w, history, &mut uniform as &mut dyn FnMut() -> f32));
    let mut kept = 0;
    let mut counted = |t, kv_len| {
        kept += 1;
        on_token(t, kv_len)
    };
    let r = run_steps(
        backend,
        prog,
        kv,
        at,
        steps,
        uniforms,
        table,
        tokens,
        &mut counted,
    );
    let end = backend.greedy_end().map_err(err);
    let n = r?;
    end?;
    if let Some(rng) = rng.as_mut() {
        (0..kept).for_each(|_| {
            rng.next_f32();
        });
    }
    Ok(Some(n))
}

/// A sampled run's settings (`DeviceSampling::words`), history and uniforms, as the backend
/// takes them.
type Uniforms<'a> = (&'a [u32; 8], &'a [u32], &'a mut dyn FnMut() -> f32);

pub(crate) use crate::batch::Draw;

/// A solo run's block table over the batch engine's pool (smelt-cuda v27): the sequence's
/// blocks, and where the blocks for its later positions come from (None: the pool is full).
pub(crate) struct Table<'a> {
    pub blocks: &'a mut Vec<u32>,
    pub alloc: &'a mut dyn FnMut() -> Option<u32>,
}

/// Steps from `first` at `start` on the device (see [`CudaExec::decode_on_device`]); over a
/// pool, `table` the sequence's blocks, grown ahead of the steps launched (a step launches
/// only where its position has a block: a full pool ends the run early).
#[allow(clippy::too_many_arguments)]
fn run_steps(
    backend: &mut CudaBackend,
    prog: &CudaProgram,
    kv: &mut CudaKvCache,
    (first, start): (u32, usize),
    steps: usize,
    draw: Option<Uniforms>,
    mut table: Option<Table>,
    tokens: &mut Vec<u32>,
    on_token: &mut dyn FnMut(u32, usize) -> bool,
) -> Result<(usize, bool), EngineError> {
    let blocks: &[u32] = table.as_ref().map_or(&[], |t| t.blocks.as_slice());
    let mut uniform = match draw {
        Some((settings, history, uniform)) => {
            backend
                .sample_begin(prog, first, start as u32, kv, *settings, history, blocks)
                .map_err(err)?;
            Some(uniform)
        }
        None => {
            backend
                .greedy_begin(prog, first, start as u32, kv, blocks)
                .map_err(err)?;
            None
        }
    };
    // Graphs of steps (v21), as many in flight as the backend takes.
    let mut fill = |backend: &mut CudaBackend, kv: &mut CudaKvCache, launched: &mut usize| {
        while *launched < steps && backend.greedy_room() {
            if let Some(t) = table.as_mut() {
                // Blocks for the next graph's steps (at most GREEDY_MAX_STEPS) first.
                let want = (start + *launched + smelt_cuda::GREEDY_MAX_STEPS).min(start + steps);
                while t.blocks.len() * smelt_cuda::KV_BLOCK < want {
                    let Some(b) = (t.alloc)() else {
                        break;
                    };
                    // Held by the sequence before the device's table names it.
                    t.blocks.push(b);
                    backend
                        .greedy_add_block(kv, t.blocks.len() - 1, b)
                        .map_err(err)?;
                }
                if t.blocks.len() * smelt_cuda::KV_BLOCK <= start + *launched {
                    break;
                }
            }
            let left = steps - *launched;
            *launched += match uniform.as_mut() {
                Some(u) => backend.sample_launch(prog, kv, left, *u),
                None => backend.greedy_launch(prog, kv, left),
            }
            .map_err(err)?;
        }
        Ok::<(), EngineError>(())
    };
    let mut launched = 0;
    fill(backend, kv, &mut launched)?;
    let (mut done, mut evaluated) = (0, first);
    while done < launched {
        let (_, tok) = backend.greedy_wait().map_err(err)?;
        tokens.push(evaluated);
        done += 1;
        if tok == smelt_cuda::SAMPLE_NONE {
            return Ok((done, true));
        }
        if !on_token(tok, start + done) || done == steps {
            return Ok((done, false));
        }
        evaluated = tok;
        fill(backend, kv, &mut launched)?;
    }
    // Nothing more launched (a full pool): the last token given is the next to evaluate.
    Ok((done, false))
}

/// Whether the batch engine runs a sequence decoding alone as a solo run (smelt-cuda v27;
/// `SMELT_CUDA_SOLO=0` turns it off: the kernel lab's A/B).
fn solo_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SMELT_CUDA_SOLO").map_or(true, |v| v != "0"))
}

/// Programs of a batch engine on the GPU; steps of at most this many distinct shapes stay
/// compiled (a decode program holds its captured graph).
const MAX_BATCH_PROGRAMS: usize = 24;

/// Prompt rows a prefill execution takes at most by default (see `chunk_shape`), and the
/// batch engine's prompt rows a step on the GPU. Each prefill execution dequantises every
/// weight matrix to f16 once for cuBLAS (~11 ms of the 8B's prefill on an H100), so longer
/// chunks spread it over more rows; the batch loop's pacer still shortens the chunks while
/// other requests generate.
const DEFAULT_PREFILL_ROWS: usize = 2048;

/// [`DEFAULT_PREFILL_ROWS`], or `SMELT_CUDA_PREFILL_ROWS` (a power of two from 16 to 8192;
/// the kernel lab's A/B of chunk lengths).
pub(crate) fn max_prefill_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("SMELT_CUDA_PREFILL_ROWS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| n.is_power_of_two() && (PREFILL_MIN_ROWS..=8192).contains(n))
            .unwrap_or(DEFAULT_PREFILL_ROWS)
    })
}

/// Prompt rows of a chunk taken off `left` rows of one sequence, and its program: from
/// [`PREFILL_MIN_ROWS`] rows on, the prefill kernels (tensor-core GEMMs) on a power of two of
/// rows; fewer rows go through the decode kernels (the batch's own programs), a power of two
/// up to [`smelt_cuda::MAX_DECODE_ROWS`]. A few programs serve every prompt length.
pub(crate) fn chunk_shape(left: usize) -> (usize, (usize, Output)) {
    if left >= PREFILL_MIN_ROWS {
        let n = 1 << left.min(max_prefill_rows()).ilog2();
        (n, (n, Output::SeqLogits(1)))
    } else {
        let n = 1 << left.clamp(1, smelt_cuda::MAX_DECODE_ROWS).ilog2();
        (n, (n, Output::SeqLogits(n)))
    }
}

/// Every program a batch loop of `max_seqs` sequences and `step_tokens` prompt rows a step
/// runs: decode programs of 1 to `max_seqs` rows (at most 8), and the chunks (`chunk_shape`)
/// of any prompt step of up to `step_tokens` rows.
fn step_shapes(max_seqs: usize, step_tokens: usize) -> Vec<(usize, Output)> {
    let rows = max_seqs.clamp(1, smelt_cuda::MAX_DECODE_ROWS);
    let mut shapes: Vec<(usize, Output)> = (1..=rows).map(|n| (n, Output::SeqLogits(n))).collect();
    // A prompt of `step_tokens` rows and every tail it leaves: the chain covers any shorter one.
    let mut left = step_tokens.max(1);
    while left > 0 {
        let (n, key) = chunk_shape(left);
        if !shapes.contains(&key) {
            shapes.push(key);
        }
        left = if n < left { n } else { n / 2 };
    }
    shapes
}

/// Fewest prompt rows that go through the prefill kernels (fewer take the decode kernels).
const PREFILL_MIN_ROWS: usize = 16;

/// The batch engine's GPU side: the backend, a paged KV pool on the device, programs by
/// (rows, output).
pub(crate) struct CudaBatch {
    programs: Programs<(usize, Output), CudaProgram>,
    /// v27: the one-row program of a sequence decoding alone (lowered on first use; Err: it
    /// could not be, and is not tried again).
    solo: Option<Result<CudaProgram, String>>,
    pub kv: CudaKvCache,
    pub backend: CudaBackend,
    out: Vec<f32>,
    /// The program of the last step that ended with sampling candidates (smelt-cuda v22),
    /// whose logits [`CudaBatch::logits_row`] reads.
    last_top: Option<usize>,
}

/// One sequence of a step: its new rows' tokens, their first position, its block table.
pub(crate) struct StepSeq<'a> {
    pub tokens: &'a [u32],
    pub start: u32,
    pub blocks: &'a [u32],
}

impl CudaBatch {
    /// A pool of `n_blocks` blocks of [`smelt_cuda::KV_BLOCK`] positions.
    pub fn load(
        gguf: &Arc<Gguf>,
        arch: &dyn Architecture,
        n_blocks: usize,
    ) -> Result<CudaBatch, EngineError> {
        let backend = CudaBackend::new(Arc::clone(gguf), &arch.weights().specs()).map_err(err)?;
        let kv = backend
            .new_paged_kv(n_blocks, &arch.kv_widths())
            .map_err(err)?;
        Ok(CudaBatch {
            programs: Programs::new(MAX_BATCH_PROGRAMS),
            kv,
            backend,
            out: Vec::new(),
            last_top: None,
            solo: None,
        })
    }

    /// A sequence decoding alone in the pool (smelt-cuda v27): `steps` one-row steps from
    /// `first` at position `start` over its blocks `table`, each step's token the argmax of
    /// its logits or with `draw` drawn on the device, launched before the host reads the
    /// token; each token to `on_token` with the positions evaluated so far. The logits are
    /// the batch program's of one row bit for bit, so the tokens are those of the batch
    /// loop's own steps. None where the backend cannot (nothing evaluated); else (steps
    /// evaluated, whether the last step's draw failed on the device).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_solo(
        &mut self,
        arch: &dyn Architecture,
        first: u32,
        start: usize,
        steps: usize,
        table: Table,
        draw: Option<Draw>,
        on_token: &mut dyn FnMut(u32, usize) -> bool,
    ) -> Result<Option<(usize, bool)>, EngineError> {
        if !solo_on() {
            return Ok(None);
        }
        if self.solo.is_none() {
            let g = arch.build(1, Output::SeqLogits(1));
            let prog = self.backend.lower_solo(&g, &self.kv);
            self.solo = Some(prog.map_err(|e| e.to_string()));
        }
        let Some(Ok(prog)) = &self.solo else {
            return Ok(None);
        };
        // The candidates of an earlier step are gone once this run executes.
        self.last_top = None;
        let run = ((first, start), steps, draw, Some(table));
        device_run(
            &mut self.backend,
            prog,
            &mut self.kv,
            run,
            &mut Vec::new(),
            on_token,
        )
    }

    fn program(
        &mut self,
        arch: &dyn Architecture,
        key: (usize, Output),
    ) -> Result<usize, EngineError> {
        let (backend, kv) = (&mut self.backend, &self.kv);
        self.programs.index(key, || {
            let t0 = std::time::Instant::now();
            let prog = backend.lower(&arch.build(key.0, key.1), kv).map_err(err)?;
            let secs = t0.elapsed().as_secs_f64();
            if secs > 0.5 {
                // A step shape met for the first time on this machine: NVRTC compiled it.
                eprintln!(
                    "smelt: GPU program for {} rows ({:?}) compiled in {secs:.1}s",
                    key.0, key.1
                );
            }
            Ok(prog)
        })
    }

    /// Compile every step shape a batch loop of `max_seqs` sequences and `step_tokens` prompt
    /// rows uses (decode programs of 1 to `max_seqs` rows, prompt chunks: `chunk_shape`),
    /// all at once into the disk cache (1-2 s each one after another), and lower the decode
    /// programs.
    pub fn prepare(
        &mut self,
        arch: &dyn Architecture,
        max_seqs: usize,
        step_tokens: usize,
    ) -> Result<(), EngineError> {
        let rows = max_seqs.clamp(1, smelt_cuda::MAX_DECODE_ROWS);
        let shapes = step_shapes(max_seqs, step_tokens);
        let t0 = std::time::Instant::now();
        let graphs: Vec<_> = shapes.iter().map(|&(n, o)| arch.build(n, o)).collect();
        let built = t0.elapsed().as_secs_f64();
        let (generated, compiled, threads, slowest) =
            self.backend.precompile(&graphs, &self.kv).map_err(err)?;
        let t1 = std::time::Instant::now();
        for n in 1..=rows {
            self.program(arch, (n, Output::SeqLogits(n)))?;
        }
        eprintln!(
            "smelt: {} GPU step shapes ready in {:.1}s (graphs {built:.1}s, sources {generated:.1}s, \
             compiled or taken from the cache {compiled:.1}s on {threads} threads, the slowest \
             {slowest:.1}s, decode programs lowered {:.1}s)",
            shapes.len(),
            t0.elapsed().as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Evaluate one step: the sequences with one new row go through the decode kernels
    /// together, up to [`smelt_cuda::MAX_DECODE_ROWS`] at a time; a sequence with several
    /// goes alone in chunks of powers of two (`chunk_shape`). Returns the logits of each
    /// sequence's last row, in order (`[seqs.len(), n_vocab]`).
    pub fn step(
        &mut self,
        arch: &dyn Architecture,
        seqs: &[StepSeq],
    ) -> Result<&[f32], EngineError> {
        let nv = arch.n_vocab();
        let single: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].tokens.len() == 1)
            .collect();
        if single.len() == seqs.len() && seqs.len() <= smelt_cuda::MAX_DECODE_ROWS {
            // Every sequence decodes (most steps): the backend's rows are the answer, in order.
            return self.decode_rows(arch, seqs, &single);
        }
        // Each sequence's row gathers here (out of `self` while the backend's output is read).
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.resize(seqs.len() * nv, 0.0);
        let r = self.mixed_step(arch, seqs, &single, &mut out);
        self.out = out;
        r?;
        Ok(&self.out)
    }

    /// `step` for a step with prompt rows or more than one decode group: every sequence's last
    /// logits into `out`.
    fn mixed_step(
        &mut self,
        arch: &dyn Architecture,
        seqs: &[StepSeq],
        single: &[usize],
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        let nv = arch.n_vocab();
        for group in single.chunks(smelt_cuda::MAX_DECODE_ROWS) {
            let logits = self.decode_rows(arch, seqs, group)?;
            for (r, &i) in group.iter().enumerate() {
                out[i * nv..(i + 1) * nv].copy_from_slice(&logits[r * nv..(r + 1) * nv]);
            }
        }
        for (i, s) in seqs.iter().enumerate() {
            if s.tokens.len() == 1 {
                continue;
            }
            let mut at = 0;
            while at < s.tokens.len() {
                let (n, key) = chunk_shape(s.tokens.len() - at);
                let pi = self.program(arch, key)?;
                let positions: Vec<u32> =
                    (0..n as u32).map(|k| s.start + (at as u32) + k).collect();
                let rows = [BatchSeq {
                    rows: n,
                    blocks: s.blocks,
                }];
                let logits = self
                    .backend
                    .execute_batch(
                        self.programs.get(pi),
                        &s.tokens[at..at + n],
                        &positions,
                        &rows,
                        &mut self.kv,
                    )
                    .map_err(err)?;
                at += n;
                if at == s.tokens.len() {
                    // The chunk's last row: a decode program gives every row.
                    let last = logits.len() - nv;
                    out[i * nv..(i + 1) * nv].copy_from_slice(&logits[last..]);
                }
            }
        }
        Ok(())
    }

    /// The logits of sequences `group` of `seqs` (one new row each, at most
    /// [`smelt_cuda::MAX_DECODE_ROWS`]), decoded together: a row each, in `group`'s order.
    fn decode_rows(
        &mut self,
        arch: &dyn Architecture,
        seqs: &[StepSeq],
        group: &[usize],
    ) -> Result<&[f32], EngineError> {
        let n = group.len();
        let pi = self.program(arch, (n, Output::SeqLogits(n)))?;
        let tokens: Vec<u32> = group.iter().map(|&i| seqs[i].tokens[0]).collect();
        let positions: Vec<u32> = group.iter().map(|&i| seqs[i].start).collect();
        let rows: Vec<BatchSeq> = group
            .iter()
            .map(|&i| BatchSeq {
                rows: 1,
                blocks: seqs[i].blocks,
            })
            .collect();
        self.backend
            .execute_batch(
                self.programs.get(pi),
                &tokens,
                &positions,
                &rows,
                &mut self.kv,
            )
            .map_err(err)
    }

    /// Whether a step of `n` sequences of one decode row each can end with their sampling
    /// candidates (its program lowered now where it was not).
    pub fn top_ready(&mut self, arch: &dyn Architecture, n: usize) -> Result<bool, EngineError> {
        if n > smelt_cuda::MAX_DECODE_ROWS {
            return Ok(false);
        }
        let pi = self.program(arch, (n, Output::SeqLogits(n)))?;
        Ok(self.backend.top_ok(self.programs.get(pi)))
    }

    /// A step of one decode row a sequence (`tokens`, `positions` and `blocks` a sequence;
    /// after [`CudaBatch::top_ready`]) that ends with each row's sampling candidates, into
    /// `out`: (candidates, whether the row had a `+inf`).
    pub fn step_top(
        &mut self,
        arch: &dyn Architecture,
        tokens: &[u32],
        positions: &[u32],
        blocks: &[&[u32]],
        out: &mut Vec<(Vec<(u32, f32)>, bool)>,
    ) -> Result<(), EngineError> {
        let n = tokens.len();
        let pi = self.program(arch, (n, Output::SeqLogits(n)))?;
        let rows: Vec<BatchSeq> = blocks
            .iter()
            .map(|b| BatchSeq { rows: 1, blocks: b })
            .collect();
        self.last_top = None;
        let top = self
            .backend
            .execute_batch_top(
                self.programs.get(pi),
                tokens,
                positions,
                &rows,
                &mut self.kv,
            )
            .map_err(err)?;
        out.resize_with(n, Default::default);
        for (r, (c, inf)) in out.iter_mut().enumerate() {
            c.clear();
            c.extend(top.candidates(r));
            *inf = top.flags(r) & smelt_cuda::TOP_INF != 0;
        }
        self.last_top = Some(pi);
        Ok(())
    }

    /// Row `r`'s logits of the last [`CudaBatch::step_top`], from the device.
    pub fn logits_row(&mut self, r: usize) -> Result<Vec<f32>, EngineError> {
        let pi = self
            .last_top
            .ok_or_else(|| EngineError::Invalid("no step's logits are kept".into()))?;
        self.backend
            .logits_row(self.programs.get(pi), r)
            .map_err(err)
    }

    /// Final hidden states (`[n, n_embd]`) of one sequence's `tokens` at positions 0.., its
    /// keys and values written to `blocks`.
    pub fn hidden(
        &mut self,
        arch: &dyn Architecture,
        tokens: &[u32],
        blocks: &[u32],
    ) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < tokens.len() {
            // Powers of two: a few programs serve every length.
            let n = 1 << (tokens.len() - at).min(max_prefill_rows()).ilog2();
            let pi = self.program(arch, (n, Output::Hidden))?;
            let positions: Vec<u32> = (at as u32..(at + n) as u32).collect();
            let rows = [BatchSeq { rows: n, blocks }];
            let res = self
                .backend
                .execute_batch(
                    self.programs.get(pi),
                    &tokens[at..at + n],
                    &positions,
                    &rows,
                    &mut self.kv,
                )
                .map_err(err)?;
            out.extend_from_slice(res);
            at += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk a prompt step of up to `step_tokens` rows takes is compiled at load, the
    /// chunks cover the rows exactly, and few programs do it.
    #[test]
    fn prepared_shapes_cover_every_prompt_step() {
        let most = max_prefill_rows();
        for (max_seqs, step_tokens) in [(1, 256), (4, 256), (8, 256), (8, 100), (3, 7), (8, most)] {
            let shapes = step_shapes(max_seqs, step_tokens);
            assert!(shapes.len() <= 8 + 9, "{shapes:?}");
            for n in 1..=max_seqs.min(smelt_cuda::MAX_DECODE_ROWS) {
                assert!(shapes.contains(&(n, Output::SeqLogits(n))));
            }
            for rows in 1..=step_tokens {
                let (mut left, mut covered) = (rows, 0);
                while left > 0 {
                    let (n, key) = chunk_shape(left);
                    assert!(
                        n >= 1 && n <= left,
                        "{rows} rows: a chunk of {n} off {left}"
                    );
                    assert_eq!(key.0, n);
                    assert!(shapes.contains(&key), "{rows} rows: {key:?} not prepared");
                    left -= n;
                    covered += n;
                }
                assert_eq!(covered, rows);
            }
        }
    }

    /// A long prompt goes in chunks of the most prefill rows (2048 unless the kernel lab's
    /// `SMELT_CUDA_PREFILL_ROWS` says otherwise), then powers of two down to its tail.
    #[test]
    fn long_prompts_take_the_longest_chunks() {
        let most = max_prefill_rows();
        if std::env::var_os("SMELT_CUDA_PREFILL_ROWS").is_none() {
            assert_eq!(most, DEFAULT_PREFILL_ROWS);
        }
        assert_eq!(chunk_shape(5000).0, most.min(4096));
        assert_eq!(chunk_shape(most + 1).0, most);
        assert_eq!(chunk_shape(600).0, 512);
        assert_eq!(chunk_shape(15), (8, (8, Output::SeqLogits(8))));
    }
}
