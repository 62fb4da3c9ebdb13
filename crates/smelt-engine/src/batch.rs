//! Several sequences evaluated together over one paged KV pool.
//!
//! A [`BatchRunner`] owns the fast backend, a pool of KV blocks (`FastKvCache::paged`) and
//! the pool's bookkeeping ([`BlockPool`]: reference counts, prefix cache). A [`KvSeq`] is one
//! sequence: its tokens, how many of them have keys and values in the pool, and its block
//! table. [`BatchRunner::step`] evaluates the next rows of several sequences in one
//! execution: the rows of all sequences go through every matmul together (the weights are
//! read once for the whole step), each row writes its keys and values through its own block
//! table, and each sequence's attention reads only its own blocks. It returns the logits of
//! each sequence's last row. Programs are cached per step shape (rows, sequences).
//!
//! On a GPU (`--device cuda`, or `auto` with one present) the pool and the programs live on
//! the device (`cuda.rs`): the sequences decoding one row each go through the decode kernels
//! together, up to `smelt_cuda::MAX_DECODE_ROWS` rows a launch sequence (each weight read once
//! for all of them); prompt rows go through the prefill kernels one sequence at a time.

use std::sync::Arc;

use smelt_cpu::{FastBackend, FastKvCache, KvType, Program, SeqRows};
use smelt_gguf::Gguf;
use smelt_models::{Architecture, Output};

use crate::kvpool::{BlockPool, ROOT_HASH};
use crate::{BackendKind, EngineError};

/// Positions per KV block: small enough that a prefix is reused to within a few tokens and a
/// short request wastes little, large enough that attention reads long contiguous runs.
pub const BLOCK_SIZE: usize = 32;

/// Programs kept; each step shape (rows, sequences) has its own.
const MAX_PROGRAMS: usize = 32;

/// How to load a [`BatchRunner`].
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Longest sequence (positions).
    pub n_ctx: usize,
    /// Positions of the KV pool, shared by every sequence (rounded up to whole blocks; at
    /// least `n_ctx`).
    pub kv_positions: usize,
    pub threads: usize,
    pub kv_type: KvType,
    /// Where to run: `Auto` takes the GPU when there is one, `Cuda` insists on it, `Fast` (and
    /// `Reference`, which has no batch path) the CPU.
    pub backend: BackendKind,
}

/// A sampled device run's settings, history (the tokens seen) and the sampler's seeded stream,
/// whose uniforms the steps draw in order; the run leaves the stream where the draws of the
/// tokens it gave leave it (steps launched ahead of a stop drew too, from a copy).
pub type Draw<'a> = (
    &'a crate::sampler::DeviceSampling,
    &'a [u32],
    &'a mut crate::sampler::Rng,
);

/// One sequence: tokens, of which the first `n_kv` have keys and values in its blocks.
#[derive(Debug, Default)]
pub struct KvSeq {
    tokens: Vec<u32>,
    n_kv: usize,
    blocks: Vec<u32>,
    /// Leading blocks registered in the prefix cache (or taken from it), and the chain hash
    /// after them.
    n_registered: usize,
    chain: u64,
    cached: usize,
}

impl KvSeq {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens whose keys and values are in the pool.
    pub fn n_kv(&self) -> usize {
        self.n_kv
    }

    /// Tokens still to evaluate.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.n_kv
    }

    /// Tokens taken from the prefix cache when the sequence started.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Append a token to evaluate in a later step.
    pub fn push(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// Take the tokens out (of a sequence holding no blocks).
    pub fn take_tokens(&mut self) -> Vec<u32> {
        debug_assert!(self.blocks.is_empty());
        self.n_kv = 0;
        std::mem::take(&mut self.tokens)
    }

    /// Blocks held.
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// A paged KV pool with several sequences evaluated per step, on the CPU fast backend or the
/// GPU.
pub struct BatchRunner {
    arch: Box<dyn Architecture>,
    back: Back,
    pool: BlockPool,
    n_ctx: usize,
    tokens: Vec<u32>,
    positions: Vec<u32>,
}

#[allow(clippy::large_enum_variant)] // one per runner
enum Back {
    Fast {
        backend: FastBackend,
        kv: FastKvCache,
        programs: Programs<(usize, usize), Program>,
    },
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::CudaBatch>),
}

/// Lowered programs by step shape, the least recently used one dropped past `cap`.
pub(crate) struct Programs<K, P> {
    items: Vec<(K, P, u64)>,
    uses: u64,
    cap: usize,
}

impl<K: PartialEq, P> Programs<K, P> {
    pub fn new(cap: usize) -> Self {
        Programs {
            items: Vec::new(),
            uses: 0,
            cap: cap.max(1),
        }
    }

    /// Index of `key`'s program, lowered by `lower` when it is not kept.
    pub fn index(
        &mut self,
        key: K,
        lower: impl FnOnce() -> Result<P, EngineError>,
    ) -> Result<usize, EngineError> {
        self.uses += 1;
        if let Some(i) = self.items.iter().position(|p| p.0 == key) {
            self.items[i].2 = self.uses;
            return Ok(i);
        }
        let prog = lower()?;
        if self.items.len() >= self.cap {
            let oldest = (0..self.items.len())
                .min_by_key(|&i| self.items[i].2)
                .expect("not empty");
            self.items.swap_remove(oldest);
        }
        self.items.push((key, prog, self.uses));
        Ok(self.items.len() - 1)
    }

    pub fn get(&self, i: usize) -> &P {
        &self.items[i].1
    }
}

impl BatchRunner {
    /// Load on `opts.backend`: the GPU where `Auto` finds one or `Cuda` asks for it, else the
    /// CPU fast backend.
    pub fn load(gguf: Arc<Gguf>, opts: BatchOptions) -> Result<BatchRunner, EngineError> {
        let arch = smelt_models::load(&gguf)?;
        if opts.n_ctx == 0 {
            return Err(EngineError::Invalid("num_ctx must be at least 1".into()));
        }
        let n_blocks = opts.kv_positions.max(opts.n_ctx).div_ceil(BLOCK_SIZE);
        let kind = opts.backend;
        let gpu = match kind {
            BackendKind::Cuda => true,
            BackendKind::Auto => crate::cuda_available(),
            BackendKind::Fast | BackendKind::Reference => false,
        };
        let back = if gpu {
            Self::gpu(&gguf, arch.as_ref(), n_blocks, kind)?
        } else {
            None
        };
        let back = match back {
            Some(b) => b,
            None => {
                let backend = crate::runner::fast_backend(gguf, arch.as_ref(), opts.threads)?;
                let kv = FastKvCache::paged(n_blocks, BLOCK_SIZE, &arch.kv_widths(), opts.kv_type)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                Back::Fast {
                    backend,
                    kv,
                    programs: Programs::new(MAX_PROGRAMS),
                }
            }
        };
        Ok(BatchRunner {
            arch,
            back,
            pool: BlockPool::new(n_blocks, BLOCK_SIZE),
            n_ctx: opts.n_ctx,
            tokens: Vec::new(),
            positions: Vec::new(),
        })
    }

    /// The GPU side, or None to run on the CPU (`auto` when the GPU fails to load).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn gpu(
        gguf: &Arc<Gguf>,
        arch: &dyn Architecture,
        n_blocks: usize,
        kind: BackendKind,
    ) -> Result<Option<Back>, EngineError> {
        #[cfg(feature = "cuda")]
        {
            const _: () = assert!(BLOCK_SIZE == smelt_cuda::KV_BLOCK);
            match crate::cuda::CudaBatch::load(gguf, arch, n_blocks) {
                Ok(c) => Ok(Some(Back::Cuda(Box::new(c)))),
                Err(e) if kind == BackendKind::Auto => {
                    eprintln!("smelt: GPU not used ({e}); running on the CPU");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        }
        #[cfg(not(feature = "cuda"))]
        match kind {
            BackendKind::Cuda => Err(EngineError::Invalid(
                "this build has no CUDA backend".into(),
            )),
            _ => Ok(None),
        }
    }

    /// Prompt rows a batch step takes at most: [`crate::STEP_TOKENS`] on the CPU; on the GPU the
    /// longest prefill chunk (2048 rows by default: each prefill execution dequantises the
    /// weights once, so a longer chunk spreads that over more rows).
    pub fn step_tokens(&self) -> usize {
        match &self.back {
            Back::Fast { .. } => crate::model::STEP_TOKENS,
            #[cfg(feature = "cuda")]
            Back::Cuda(_) => crate::cuda::max_prefill_rows(),
        }
    }

    /// Where the model runs: `cpu`, or `cuda: <GPU name, capability, driver>`.
    pub fn device(&self) -> String {
        match &self.back {
            Back::Fast { .. } => "cpu".into(),
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => format!("cuda: {}", c.backend.describe()),
        }
    }

    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    /// Longest sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Bytes of the KV pool.
    pub fn kv_bytes(&self) -> usize {
        match &self.back {
            Back::Fast { kv, .. } => kv.bytes(),
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => c.kv.bytes(),
        }
    }

    /// Bytes of one KV block.
    pub fn block_bytes(&self) -> usize {
        match &self.back {
            Back::Fast { kv, .. } => kv.block_bytes(),
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => c.kv.bytes() / c.kv.n_blocks().max(1),
        }
    }

    /// Bytes allocated: KV pool, activations, scratch, 1-D weights (on the GPU: weights too,
    /// in device memory).
    pub fn memory_bytes(&self) -> usize {
        match &self.back {
            Back::Fast { backend, kv, .. } => backend.allocated_bytes() + kv.bytes(),
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => c.backend.allocated_bytes() + c.kv.bytes(),
        }
    }

    pub fn mapped_weight_bytes(&self) -> usize {
        match &self.back {
            Back::Fast { backend, .. } => backend.mapped_weight_bytes(),
            #[cfg(feature = "cuda")]
            Back::Cuda(_) => 0,
        }
    }

    /// A sequence for `tokens`, its longest cached prefix taken from the prefix cache (whole
    /// blocks, leaving at least one token to evaluate: its logits start generation).
    pub fn start(&mut self, tokens: Vec<u32>) -> KvSeq {
        let max_blocks = tokens.len().saturating_sub(1) / BLOCK_SIZE;
        let (blocks, chain) = self.pool.lookup(&tokens, max_blocks);
        let n = blocks.len() * BLOCK_SIZE;
        KvSeq {
            tokens,
            n_kv: n,
            n_registered: blocks.len(),
            blocks,
            chain,
            cached: n,
        }
    }

    /// Let go of a sequence's blocks (its full blocks stay in the prefix cache until evicted);
    /// it keeps its tokens and can be started again.
    pub fn release(&mut self, seq: &mut KvSeq) {
        for b in seq.blocks.drain(..) {
            self.pool.release(b);
        }
        seq.n_kv = 0;
        seq.n_registered = 0;
        seq.chain = ROOT_HASH;
    }

    /// New blocks `seq` needs to evaluate `rows` more tokens.
    pub fn blocks_needed(&self, seq: &KvSeq, rows: usize) -> usize {
        (seq.n_kv + rows)
            .div_ceil(BLOCK_SIZE)
            .saturating_sub(seq.blocks.len())
    }

    /// Evaluate the next `rows` pending tokens of each sequence, all in one execution.
    /// Returns the logits of each sequence's last evaluated row, `[batch.len(), n_vocab]`.
    /// Fails without evaluating anything when the pool lacks blocks (see
    /// [`BatchRunner::blocks_needed`]).
    pub fn step(&mut self, batch: &mut [(&mut KvSeq, usize)]) -> Result<&[f32], EngineError> {
        self.prepare_step(batch)?;
        let logits = match &mut self.back {
            Back::Fast {
                backend,
                kv,
                programs,
            } => {
                let key = (self.tokens.len(), batch.len());
                let prog = fast_program(self.arch.as_ref(), backend, kv, programs, key)?;
                let seqs: Vec<SeqRows> = batch
                    .iter()
                    .map(|(s, rows)| SeqRows {
                        rows: *rows,
                        blocks: &s.blocks,
                    })
                    .collect();
                let prog = programs.get(prog);
                backend
                    .execute_batch(prog, &self.tokens, &self.positions, &seqs, kv)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?
            }
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => {
                let mut at = 0;
                let seqs: Vec<crate::cuda::StepSeq> = batch
                    .iter()
                    .map(|(s, rows)| {
                        let seq = crate::cuda::StepSeq {
                            tokens: &self.tokens[at..at + *rows],
                            start: self.positions[at],
                            blocks: &s.blocks,
                        };
                        at += *rows;
                        seq
                    })
                    .collect();
                c.step(self.arch.as_ref(), &seqs)?
            }
        };
        Self::finish_step(&mut self.pool, batch);
        Ok(logits)
    }

    /// [`BatchRunner::step`] for a step of one decode row a sequence that ends with each
    /// row's sampling candidates (the GPU's, smelt-cuda v22; the rows' logits stay on the
    /// device for [`BatchRunner::logits_row`]): into `out`, a row's best
    /// [`TOP_CANDIDATES`](crate::runner::TOP_CANDIDATES) finite logits and whether it had a
    /// `+inf`. Ok(false), nothing evaluated, where the backend has no such step.
    pub fn step_top(
        &mut self,
        batch: &mut [(&mut KvSeq, usize)],
        out: &mut Vec<(Vec<(u32, f32)>, bool)>,
    ) -> Result<bool, EngineError> {
        #[cfg(feature = "cuda")]
        {
            let one_row = !batch.is_empty() && batch.iter().all(|(_, rows)| *rows == 1);
            let ready = match &mut self.back {
                Back::Cuda(c) if one_row => c.top_ready(self.arch.as_ref(), batch.len())?,
                _ => false,
            };
            if !ready {
                return Ok(false);
            }
            self.prepare_step(batch)?;
            if let Back::Cuda(c) = &mut self.back {
                let blocks: Vec<&[u32]> = batch.iter().map(|(s, _)| s.blocks.as_slice()).collect();
                c.step_top(
                    self.arch.as_ref(),
                    &self.tokens,
                    &self.positions,
                    &blocks,
                    out,
                )?;
            }
            Self::finish_step(&mut self.pool, batch);
            Ok(true)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (batch, out);
            Ok(false)
        }
    }

    /// Whether [`BatchRunner::decode_solo`] may run here (the GPU; it may still decline).
    pub fn solo_capable(&self) -> bool {
        #[cfg(feature = "cuda")]
        if let Back::Cuda(_) = &self.back {
            return true;
        }
        false
    }

    /// A sequence decoding alone (smelt-cuda v27): its pending token (exactly one) and then
    /// each step's token evaluated on the GPU, each step launched before the host has the
    /// previous one's token, for at most `max` steps and never past the context. Each token
    /// is the argmax of the step's logits or, with `draw` (a sampled run's settings, history
    /// and uniforms), drawn on the device as the host's `Sampler::sample_top` draws it; the
    /// logits are a one-row [`BatchRunner::step`]'s bit for bit. Each token goes to
    /// `on_token(token, kv_len)`, which says whether to go on, and becomes the sequence's
    /// next pending token either way. Blocks come from the pool as the positions need them
    /// (a full pool ends the run early). Returns None where the backend cannot (nothing
    /// evaluated), else the steps evaluated. Where the last step's draw failed on the device,
    /// that step is not counted: its token stays pending, for a step of the host's.
    pub fn decode_solo(
        &mut self,
        seq: &mut KvSeq,
        max: usize,
        draw: Option<Draw>,
        on_token: &mut dyn FnMut(u32, usize) -> bool,
    ) -> Result<Option<usize>, EngineError> {
        #[cfg(feature = "cuda")]
        if let Back::Cuda(c) = &mut self.back {
            if seq.pending() != 1 {
                return Err(EngineError::Invalid(format!(
                    "a solo run starts from one pending token, not {}",
                    seq.pending()
                )));
            }
            let (first, start) = (seq.tokens[seq.n_kv], seq.n_kv);
            let n_vocab = self.arch.n_vocab();
            if first as usize >= n_vocab {
                return Err(EngineError::Invalid(format!(
                    "token id {first} is outside the vocabulary ({n_vocab})"
                )));
            }
            if start >= self.n_ctx {
                return Err(EngineError::ContextFull {
                    needed: start + 1,
                    n_ctx: self.n_ctx,
                });
            }
            let steps = max.min(self.n_ctx - start);
            let pool = &mut self.pool;
            if seq.blocks.len() * BLOCK_SIZE <= start {
                match pool.alloc() {
                    Some(b) => seq.blocks.push(b),
                    None => return Ok(None),
                }
            }
            let mut blocks = std::mem::take(&mut seq.blocks);
            let mut alloc = || pool.alloc();
            let table = crate::cuda::Table {
                blocks: &mut blocks,
                alloc: &mut alloc,
            };
            let mut given = Vec::new();
            let run = c.decode_solo(
                self.arch.as_ref(),
                first,
                start,
                steps,
                table,
                draw,
                &mut |t, kv_len| {
                    given.push(t);
                    on_token(t, kv_len)
                },
            );
            seq.blocks = blocks;
            let Some((done, failed)) = run? else {
                return Ok(None);
            };
            let done = done - usize::from(failed);
            seq.n_kv += done;
            seq.tokens.extend_from_slice(&given);
            Self::register_full(&mut self.pool, seq);
            return Ok(Some(done));
        }
        let _ = (seq, max, draw, on_token);
        Ok(None)
    }

    /// Row `r`'s logits of the last [`BatchRunner::step_top`], from the device.
    pub fn logits_row(&mut self, r: usize) -> Result<Vec<f32>, EngineError> {
        #[cfg(feature = "cuda")]
        if let Back::Cuda(c) = &mut self.back {
            return c.logits_row(r);
        }
        let _ = r;
        Err(EngineError::Invalid(
            "no step's logits are kept on this backend".into(),
        ))
    }

    /// A step's checks, its new blocks, tokens and positions.
    fn prepare_step(&mut self, batch: &mut [(&mut KvSeq, usize)]) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Err(EngineError::Invalid("an empty step".into()));
        }
        let n_vocab = self.arch.n_vocab() as u32;
        let mut need = 0;
        for (seq, rows) in batch.iter() {
            if *rows == 0 || *rows > seq.pending() {
                return Err(EngineError::Invalid(format!(
                    "{rows} rows of a sequence with {} pending tokens",
                    seq.pending()
                )));
            }
            if seq.n_kv + rows > self.n_ctx {
                return Err(EngineError::ContextFull {
                    needed: seq.n_kv + rows,
                    n_ctx: self.n_ctx,
                });
            }
            let new = &seq.tokens[seq.n_kv..seq.n_kv + *rows];
            if let Some(&bad) = new.iter().find(|&&t| t >= n_vocab) {
                return Err(EngineError::Invalid(format!(
                    "token id {bad} is outside the vocabulary ({n_vocab})"
                )));
            }
            need += self.blocks_needed(seq, *rows);
        }
        if need > self.pool.available() {
            return Err(EngineError::Invalid(format!(
                "the KV pool has {} free blocks, the step needs {need}",
                self.pool.available()
            )));
        }
        self.tokens.clear();
        self.positions.clear();
        for (seq, rows) in batch.iter_mut() {
            for _ in 0..self.blocks_needed(seq, *rows) {
                let b = self.pool.alloc().expect("blocks counted above");
                seq.blocks.push(b);
            }
            self.tokens
                .extend_from_slice(&seq.tokens[seq.n_kv..seq.n_kv + *rows]);
            self.positions
                .extend((seq.n_kv..seq.n_kv + *rows).map(|p| p as u32));
        }
        Ok(())
    }

    /// After a step: the sequences' new keys and values counted, full blocks shared.
    fn finish_step(pool: &mut BlockPool, batch: &mut [(&mut KvSeq, usize)]) {
        for (seq, rows) in batch.iter_mut() {
            seq.n_kv += *rows;
            Self::register_full(pool, seq);
        }
    }

    /// Blocks now full hold final keys and values: share them.
    fn register_full(pool: &mut BlockPool, seq: &mut KvSeq) {
        while (seq.n_registered + 1) * BLOCK_SIZE <= seq.n_kv {
            let i = seq.n_registered;
            let toks = &seq.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE];
            seq.chain = pool.register(seq.blocks[i], seq.chain, toks);
            seq.n_registered += 1;
        }
    }

    /// Lower the program for steps of `rows` rows of `n_seqs` sequences ahead of use (its
    /// activations are allocated now). On the GPU: every step shape of up to `n_seqs`
    /// sequences and `rows - n_seqs` prompt rows (see `cuda.rs`).
    pub fn prepare(&mut self, rows: usize, n_seqs: usize) -> Result<(), EngineError> {
        match &mut self.back {
            Back::Fast {
                backend,
                kv,
                programs,
            } => {
                let key = (rows.max(n_seqs).max(1), n_seqs.max(1));
                fast_program(self.arch.as_ref(), backend, kv, programs, key).map(|_| ())
            }
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => c.prepare(self.arch.as_ref(), n_seqs, rows.saturating_sub(n_seqs)),
        }
    }

    /// Final hidden states of `tokens` (`[n, n_embd]`), evaluated as a sequence of its own in
    /// chunks; its blocks are freed at once.
    pub fn hidden(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        if tokens.is_empty() || tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull {
                needed: tokens.len(),
                n_ctx: self.n_ctx,
            });
        }
        let mut seq = KvSeq {
            tokens: tokens.to_vec(),
            chain: ROOT_HASH,
            ..KvSeq::default()
        };
        let need = tokens.len().div_ceil(BLOCK_SIZE);
        if need > self.pool.available() {
            return Err(EngineError::Invalid(format!(
                "the KV pool has {} free blocks, {} tokens need {need}",
                self.pool.available(),
                tokens.len()
            )));
        }
        for _ in 0..need {
            seq.blocks.push(self.pool.alloc().expect("counted"));
        }
        let result = match &mut self.back {
            Back::Fast { .. } => self.hidden_chunks(&seq),
            #[cfg(feature = "cuda")]
            Back::Cuda(c) => c.hidden(self.arch.as_ref(), &seq.tokens, &seq.blocks),
        };
        // Not registered: nothing else asks for an embedding's keys and values.
        self.release(&mut seq);
        result
    }

    fn hidden_chunks(&mut self, seq: &KvSeq) -> Result<Vec<f32>, EngineError> {
        #[allow(irrefutable_let_patterns)] // without the `cuda` feature
        let Back::Fast { backend, kv, .. } = &mut self.back
        else {
            unreachable!("the CPU's chunks")
        };
        let mut out = Vec::new();
        let mut at = 0;
        // Chunks of a step's prompt budget: the activations stay within what `prepare` sized.
        for chunk in seq.tokens.chunks(crate::model::STEP_TOKENS) {
            let graph = self.arch.build(chunk.len(), Output::Hidden);
            let prog = backend
                .lower(&graph, kv)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            let positions: Vec<u32> = (at..at + chunk.len()).map(|p| p as u32).collect();
            let rows = [SeqRows {
                rows: chunk.len(),
                blocks: &seq.blocks,
            }];
            let res = backend
                .execute_batch(&prog, chunk, &positions, &rows, kv)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            out.extend_from_slice(res);
            at += chunk.len();
        }
        Ok(out)
    }
}

/// Index of the CPU program for `key` (rows, sequences), lowering it when new.
fn fast_program(
    arch: &dyn Architecture,
    backend: &mut FastBackend,
    kv: &FastKvCache,
    programs: &mut Programs<(usize, usize), Program>,
    key: (usize, usize),
) -> Result<usize, EngineError> {
    programs.index(key, || {
        backend
            .lower(&arch.build(key.0, Output::SeqLogits(key.1)), kv)
            .map_err(|e| EngineError::Invalid(e.to_string()))
    })
}
