//! One model's weights, backend and KV cache for a single sequence: evaluates tokens.
//!
//! Two backends: the fast one (fused plans on a thread pool, weights used in place through
//! the mmap, f16 KV cache; the default) and the reference one (op by op in f32, weights
//! dequantised at load: the oracle). `SMELT_BACKEND=reference` or [`RunnerOptions::backend`]
//! selects the reference.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use smelt_cpu::{ExecStats, FastBackend, FastKvCache, KvCache, KvType, Program, ReferenceBackend};
use smelt_gguf::Gguf;
use smelt_graph::Graph;
use smelt_models::{Architecture, Output};

use crate::EngineError;

/// Sampling candidates a GPU decode step gives (smelt-cuda v22's `TOP_K`): a sequence whose
/// sampling fits them (`Decoding::top_fits`) needs no logits row on the host.
pub const TOP_CANDIDATES: usize = 128;

/// Longest chunk of prompt evaluated in one graph.
pub const PREFILL_CHUNK: usize = 512;

/// Plans kept per runner; a plan is a few hundred small nodes, cheap to rebuild.
const MAX_CACHED_PLANS: usize = 8;

/// The environment variable that picks the backend: `fast`, `reference` or `cuda`.
pub const BACKEND_ENV: &str = "SMELT_BACKEND";
/// The environment variable behind `--device`: `auto` (default), `cpu` or `cuda`.
pub const DEVICE_ENV: &str = "SMELT_DEVICE";

/// Which backend evaluates the graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Fast,
    Reference,
    /// The GPU (`smelt-cuda`, cargo feature `cuda`).
    Cuda,
    /// CUDA when a driver and GPU load and the model's types are supported, else fast.
    Auto,
}

impl BackendKind {
    /// From [`BACKEND_ENV`] when set, else from [`DEVICE_ENV`] (auto when unset). An unknown
    /// value is an error.
    pub fn from_env() -> Result<BackendKind, EngineError> {
        if let Ok(v) = std::env::var(BACKEND_ENV) {
            match v.as_str() {
                "" => {}
                "fast" => return Ok(BackendKind::Fast),
                "reference" | "ref" => return Ok(BackendKind::Reference),
                "cuda" => return Ok(BackendKind::Cuda),
                other => {
                    return Err(EngineError::Invalid(format!(
                        "{BACKEND_ENV}={other}: expected 'fast', 'reference' or 'cuda'"
                    )))
                }
            }
        }
        match std::env::var(DEVICE_ENV).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(BackendKind::Auto),
            Ok("cpu") => Ok(BackendKind::Fast),
            Ok("cuda") | Ok("gpu") => Ok(BackendKind::Cuda),
            Ok(other) => Err(EngineError::Invalid(format!(
                "{DEVICE_ENV}={other}: expected 'auto', 'cpu' or 'cuda'"
            ))),
        }
    }
}

/// Whether this build has the CUDA backend and a GPU is usable now.
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        smelt_cuda::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// How to load a [`Runner`].
#[derive(Clone, Copy, Debug)]
pub struct RunnerOptions {
    /// Positions of KV cache.
    pub n_ctx: usize,
    pub threads: usize,
    pub backend: BackendKind,
    /// How the fast backend stores keys and values (the reference keeps f32).
    pub kv_type: KvType,
}

impl RunnerOptions {
    /// `n_ctx` positions, `threads` threads, the backend [`BackendKind::from_env`] picks
    /// (fast unless told otherwise), f16 keys and values.
    pub fn new(n_ctx: usize, threads: usize) -> Result<RunnerOptions, EngineError> {
        Ok(RunnerOptions {
            n_ctx,
            threads,
            backend: BackendKind::from_env()?,
            kv_type: KvType::F16,
        })
    }
}

enum Exec {
    Reference {
        backend: ReferenceBackend,
        kv: KvCache,
        graphs: HashMap<(usize, Output), Graph>,
        out: Vec<f32>,
    },
    Fast {
        backend: Box<FastBackend>,
        kv: FastKvCache,
        programs: HashMap<(usize, Output), Program>,
    },
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::CudaExec>),
}

/// Evaluates tokens for one sequence whose KV cache holds `tokens()` at positions 0..len.
pub struct Runner {
    arch: Box<dyn Architecture>,
    exec: Exec,
    n_ctx: usize,
    tokens: Vec<u32>,
    out: Vec<f32>,
    /// The last [`Runner::decode_greedy`] took its argmax on the device.
    greedy_device: bool,
}

/// The fast CPU backend over `arch`'s weights, read in place from `gguf`.
pub(crate) fn fast_backend(
    gguf: Arc<Gguf>,
    arch: &dyn Architecture,
    threads: usize,
) -> Result<FastBackend, EngineError> {
    FastBackend::new(gguf, &arch.weights().specs(), threads)
        .map_err(|e| EngineError::Invalid(e.to_string()))
}

impl Runner {
    /// Load with the backend [`BackendKind::from_env`] picks and `n_ctx` positions of KV.
    pub fn load(gguf: Arc<Gguf>, n_ctx: usize, threads: usize) -> Result<Runner, EngineError> {
        let backend = BackendKind::from_env()?;
        Runner::load_with(
            gguf,
            RunnerOptions {
                n_ctx,
                threads,
                backend,
                kv_type: KvType::F16,
            },
        )
    }

    pub fn load_with(gguf: Arc<Gguf>, opts: RunnerOptions) -> Result<Runner, EngineError> {
        let arch = smelt_models::load(&gguf)?;
        if opts.n_ctx == 0 {
            return Err(EngineError::Invalid("num_ctx must be at least 1".into()));
        }
        let kind = match opts.backend {
            BackendKind::Auto if cuda_available() => {
                #[cfg(feature = "cuda")]
                match crate::cuda::CudaExec::load(&gguf, arch.as_ref(), opts.n_ctx) {
                    Ok(c) => {
                        return Ok(Runner {
                            arch,
                            exec: Exec::Cuda(Box::new(c)),
                            n_ctx: opts.n_ctx,
                            tokens: Vec::new(),
                            out: Vec::new(),
                            greedy_device: false,
                        })
                    }
                    Err(e) => eprintln!("smelt: GPU not used ({e}); running on the CPU"),
                }
                BackendKind::Fast
            }
            BackendKind::Auto => BackendKind::Fast,
            k => k,
        };
        let exec = match kind {
            BackendKind::Cuda | BackendKind::Auto => {
                #[cfg(feature = "cuda")]
                {
                    Exec::Cuda(Box::new(crate::cuda::CudaExec::load(
                        &gguf,
                        arch.as_ref(),
                        opts.n_ctx,
                    )?))
                }
                #[cfg(not(feature = "cuda"))]
                return Err(EngineError::Invalid(
                    "this build has no CUDA backend".into(),
                ));
            }
            BackendKind::Reference => {
                let mut weights = Vec::with_capacity(arch.weights().entries().len());
                for e in arch.weights().entries() {
                    let t = gguf.tensor(&e.name).ok_or_else(|| {
                        EngineError::Invalid(format!("tensor {} vanished", e.name))
                    })?;
                    let data = smelt_quant::dequantize_to_vec(t.dtype, gguf.tensor_data(t))
                        .map_err(|err| EngineError::Invalid(format!("tensor {}: {err}", e.name)))?;
                    weights.push(data);
                }
                let kv = KvCache::new(opts.n_ctx, &arch.kv_widths());
                Exec::Reference {
                    backend: ReferenceBackend::new(weights, opts.threads),
                    kv,
                    graphs: HashMap::new(),
                    out: Vec::new(),
                }
            }
            BackendKind::Fast => {
                let backend = fast_backend(gguf, arch.as_ref(), opts.threads)?;
                let kv = FastKvCache::with_type(opts.n_ctx, &arch.kv_widths(), opts.kv_type)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                Exec::Fast {
                    backend: Box::new(backend),
                    kv,
                    programs: HashMap::new(),
                }
            }
        };
        Ok(Runner {
            arch,
            exec,
            n_ctx: opts.n_ctx,
            tokens: Vec::new(),
            out: Vec::new(),
            greedy_device: false,
        })
    }

    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    pub fn backend(&self) -> BackendKind {
        match self.exec {
            Exec::Reference { .. } => BackendKind::Reference,
            Exec::Fast { .. } => BackendKind::Fast,
            #[cfg(feature = "cuda")]
            Exec::Cuda(_) => BackendKind::Cuda,
        }
    }

    /// Whether the last [`Runner::decode_greedy`] took each step's argmax on the device (and
    /// launched the next step ahead of it) rather than on the host.
    pub fn greedy_on_device(&self) -> bool {
        self.greedy_device
    }

    /// Where the model runs: `cpu`, or `cuda: <GPU name, capability, driver>`.
    pub fn device(&self) -> String {
        match &self.exec {
            #[cfg(feature = "cuda")]
            Exec::Cuda(c) => format!("cuda: {}", c.backend.describe()),
            _ => "cpu".into(),
        }
    }

    /// The GPU's device-to-device copy bandwidth in GB/s (CUDA backend only).
    pub fn device_copy_gbps(&self) -> Option<f64> {
        match &self.exec {
            #[cfg(feature = "cuda")]
            Exec::Cuda(c) => c.backend.copy_bandwidth().ok(),
            _ => None,
        }
    }

    /// Dispatches and barriers so far (fast backend only).
    pub fn stats(&self) -> Option<ExecStats> {
        match &self.exec {
            Exec::Fast { backend, .. } => Some(backend.stats()),
            Exec::Reference { .. } => None,
            // Kernel launches as dispatches, host submissions as barriers.
            #[cfg(feature = "cuda")]
            Exec::Cuda(c) => {
                let s = c.backend.stats();
                Some(ExecStats {
                    executions: s.executions,
                    dispatches: s.kernels,
                    barriers: s.submissions,
                })
            }
        }
    }

    /// Time every fused kernel from now on (fast backend); see [`Runner::profile`].
    pub fn set_profiling(&mut self, on: bool) {
        if let Exec::Fast { backend, .. } = &mut self.exec {
            backend.set_profiling(on);
        }
    }

    /// Per kernel kind: total milliseconds and count (fast backend, when profiling).
    pub fn profile(&self) -> Vec<(String, f64, u64)> {
        match &self.exec {
            Exec::Fast { backend, .. } => backend.profile(),
            _ => Vec::new(),
        }
    }

    /// Positions the KV cache holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Tokens whose keys and values are cached, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Bytes this runner allocated: weights (dequantised for the reference backend; the fast
    /// backend maps them and copies only 1-D ones), KV cache, activations and scratch.
    pub fn memory_bytes(&self) -> usize {
        match &self.exec {
            Exec::Reference { backend, kv, .. } => backend.weight_bytes() + kv.bytes(),
            Exec::Fast { backend, kv, .. } => backend.allocated_bytes() + kv.bytes(),
            #[cfg(feature = "cuda")]
            Exec::Cuda(c) => c.backend.allocated_bytes() + c.kv.bytes(),
        }
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> usize {
        match &self.exec {
            Exec::Reference { kv, .. } => kv.bytes(),
            Exec::Fast { kv, .. } => kv.bytes(),
            #[cfg(feature = "cuda")]
            Exec::Cuda(c) => c.kv.bytes(),
        }
    }

    /// Bytes of weights read through the file mapping (fast backend), 0 for the reference.
    pub fn mapped_weight_bytes(&self) -> usize {
        match &self.exec {
            Exec::Fast { backend, .. } => backend.mapped_weight_bytes(),
            _ => 0,
        }
    }

    /// Keep only the first `n` cached tokens (later positions are overwritten when evaluated again).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// Forget the cached sequence.
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Reuse the cached tokens that `prompt` starts with, keeping at least one prompt token to
    /// evaluate (its logits start generation). Returns how many prompt tokens are cached.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let n = common.min(prompt.len().saturating_sub(1));
        self.truncate(n);
        n
    }

    /// Evaluate `tokens` after the cached ones. Returns the logits of the last token
    /// (`Output::LastLogits`), of every token (`AllLogits`, `[n, n_vocab]`) or the final
    /// hidden states (`Hidden`, `[n, n_embd]`).
    pub fn eval(&mut self, tokens: &[u32], output: Output) -> Result<Vec<f32>, EngineError> {
        self.eval_slice(tokens, output).map(<[f32]>::to_vec)
    }

    /// [`Runner::eval`] into a buffer the runner keeps: no allocation once it has grown.
    pub fn eval_slice(&mut self, tokens: &[u32], output: Output) -> Result<&[f32], EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Invalid("nothing to evaluate".into()));
        }
        let n_vocab = self.arch.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({n_vocab})"
            )));
        }
        if self.tokens.len() + tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull {
                needed: self.tokens.len() + tokens.len(),
                n_ctx: self.n_ctx,
            });
        }
        if piece_len(&self.exec, tokens.len()) == tokens.len() {
            // One chunk (every decode step): the backend's own output, no copy (0.5 MB of
            // logits for a 128k vocabulary).
            let start = self.tokens.len() as u32;
            let out = eval_chunk(&mut self.exec, self.arch.as_ref(), tokens, start, output)?;
            self.tokens.extend_from_slice(tokens);
            return Ok(out);
        }
        self.out.clear();
        let mut at = 0;
        while at < tokens.len() {
            let chunk = &tokens[at..at + piece_len(&self.exec, tokens.len() - at)];
            at += chunk.len();
            let last = at == tokens.len();
            let mode = match output {
                Output::LastLogits if !last => Output::Hidden,
                m => m,
            };
            let start = self.tokens.len() as u32;
            let keep = output != Output::LastLogits || last;
            let res = eval_chunk(&mut self.exec, self.arch.as_ref(), chunk, start, mode)?;
            if keep {
                self.out.extend_from_slice(res);
            }
            self.tokens.extend_from_slice(chunk);
        }
        Ok(&self.out)
    }
}

impl Runner {
    /// Evaluate `tok` (after the cached tokens) as one decode step whose answer is its
    /// logits' best [`TOP_CANDIDATES`] finite values (the GPU's sampling candidates, smelt-cuda
    /// v22) into `out` as (token, logit): Some(whether the row had a `+inf`), or None, nothing
    /// evaluated, where the backend has no such step (call [`Runner::eval_slice`]). The whole
    /// row stays readable by [`Runner::last_logits`] until the next evaluation.
    pub fn eval_top(
        &mut self,
        tok: u32,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<Option<bool>, EngineError> {
        #[cfg(feature = "cuda")]
        if matches!(self.exec, Exec::Cuda(_)) {
            let start = self.step_start(tok)?;
            let Exec::Cuda(c) = &mut self.exec else {
                return Ok(None);
            };
            let r = c.eval_top(self.arch.as_ref(), tok, start as u32, out)?;
            if r.is_some() {
                self.tokens.push(tok);
            }
            return Ok(r);
        }
        let _ = (tok, out);
        Ok(None)
    }

    /// The whole logits row of the last [`Runner::eval_top`] step.
    pub fn last_logits(&mut self) -> Result<Vec<f32>, EngineError> {
        #[cfg(feature = "cuda")]
        if let Exec::Cuda(c) = &mut self.exec {
            return c.last_logits();
        }
        Err(EngineError::Invalid(
            "no step's logits are kept on this backend".into(),
        ))
    }

    /// Sampled decoding on the GPU (smelt-cuda v23): evaluate `first` (after the cached
    /// tokens), then each step's token drawn on the device with `settings` after `history`
    /// (the tokens seen, `first` the last), each step's uniform the next of `rng` (the
    /// sampler's seeded stream), for at most `max` steps and never past the context; each
    /// token goes to `on_token(token, kv_len)` as in [`Runner::decode_greedy`], drawn as
    /// [`Sampler::sample_top`](crate::sampler::Sampler::sample_top) draws it. `rng` is left
    /// where the draws kept left it (steps launched ahead of a stop drew too). None where the
    /// backend cannot (nothing evaluated); else (steps evaluated, the token to evaluate again
    /// where the last step's draw failed on the device: the caller draws it from its row).
    pub fn decode_sampled(
        &mut self,
        first: u32,
        max: usize,
        settings: &crate::sampler::DeviceSampling,
        history: &[u32],
        rng: &mut crate::sampler::Rng,
        on_token: &mut dyn FnMut(u32, usize) -> bool,
    ) -> Result<Option<(usize, Option<u32>)>, EngineError> {
        #[cfg(feature = "cuda")]
        if matches!(self.exec, Exec::Cuda(_)) {
            let start = self.step_start(first)?;
            let Exec::Cuda(c) = &mut self.exec else {
                return Ok(None);
            };
            let steps = max.min(self.n_ctx - start);
            let run = c.decode_on_device(
                self.arch.as_ref(),
                first,
                start,
                steps,
                Some((settings, history, rng)),
                &mut self.tokens,
                on_token,
            )?;
            return Ok(run.map(|(n, failed)| (n, failed.then(|| self.tokens.pop()).flatten())));
        }
        let _ = (first, max, settings, history, rng, on_token);
        Ok(None)
    }

    /// The position a decode step of `tok` takes (after the cached tokens), or why there is
    /// none: a token outside the vocabulary, a full context.
    fn step_start(&self, tok: u32) -> Result<usize, EngineError> {
        let n_vocab = self.arch.n_vocab();
        if tok as usize >= n_vocab {
            return Err(EngineError::Invalid(format!(
                "token id {tok} is outside the vocabulary ({n_vocab})"
            )));
        }
        let start = self.tokens.len();
        if start >= self.n_ctx {
            return Err(EngineError::ContextFull {
                needed: start + 1,
                n_ctx: self.n_ctx,
            });
        }
        Ok(start)
    }

    /// Greedy decoding: evaluate `first` (after the cached tokens), then each step's argmax in
    /// turn, for at most `max` steps and never past the context. Each step's argmax goes to
    /// `on_token(token, kv_len)` (`kv_len`: the tokens cached after that step), which says
    /// whether to evaluate it. Returns the steps evaluated. The tokens are those of
    /// [`sampler::argmax`](crate::sampler::argmax) over each step's logits from
    /// [`Runner::eval_slice`]; on the GPU the argmax is taken on the device and the next step
    /// is launched before the host has the token (smelt-cuda v20a).
    pub fn decode_greedy(
        &mut self,
        first: u32,
        max: usize,
        on_token: &mut dyn FnMut(u32, usize) -> bool,
    ) -> Result<usize, EngineError> {
        let start = self.step_start(first)?;
        let steps = max.min(self.n_ctx - start);
        if steps == 0 {
            return Ok(0);
        }
        self.greedy_device = false;
        #[cfg(feature = "cuda")]
        if let Exec::Cuda(c) = &mut self.exec {
            let arch = self.arch.as_ref();
            if let Some((n, _)) =
                c.decode_on_device(arch, first, start, steps, None, &mut self.tokens, on_token)?
            {
                self.greedy_device = true;
                return Ok(n);
            }
        }
        let mut tok = first;
        for done in 1..=steps {
            let next = crate::sampler::argmax(self.eval_slice(&[tok], Output::LastLogits)?);
            if !on_token(next, self.tokens.len()) || done == steps {
                return Ok(done);
            }
            tok = next;
        }
        Ok(steps)
    }
}

/// Tokens of the next piece an evaluation of `left` more takes on `exec`: on the GPU, the batch
/// engine's chunks (`cuda::chunk_shape`: powers of two, the few programs it compiles, the
/// shortest through the decode kernels), so a prompt the batch engine reads in one step gets
/// the same numbers alone; elsewhere [`PREFILL_CHUNK`].
fn piece_len(exec: &Exec, left: usize) -> usize {
    match exec {
        #[cfg(feature = "cuda")]
        Exec::Cuda(_) => crate::cuda::chunk_shape(left).0,
        _ => left.min(PREFILL_CHUNK),
    }
}

/// Evaluate `chunk` at positions `start..` on `exec`; the output lives in the backend until
/// its next evaluation.
fn eval_chunk<'a>(
    exec: &'a mut Exec,
    arch: &dyn Architecture,
    chunk: &[u32],
    start: u32,
    mode: Output,
) -> Result<&'a [f32], EngineError> {
    let key = (chunk.len(), mode);
    match exec {
        Exec::Reference {
            backend,
            kv,
            graphs,
            out,
        } => {
            if graphs.len() >= MAX_CACHED_PLANS && !graphs.contains_key(&key) {
                graphs.retain(|k, _| k.0 == 1);
            }
            let graph = graphs
                .entry(key)
                .or_insert_with(|| arch.build(chunk.len(), mode));
            let positions: Vec<u32> = (start..start + chunk.len() as u32).collect();
            *out = backend.execute(graph, chunk, &positions, kv);
            Ok(out)
        }
        Exec::Fast {
            backend,
            kv,
            programs,
        } => {
            if programs.len() >= MAX_CACHED_PLANS && !programs.contains_key(&key) {
                programs.retain(|k, _| k.0 == 1);
            }
            if let Entry::Vacant(slot) = programs.entry(key) {
                let prog = backend
                    .lower(&arch.build(chunk.len(), mode), kv)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                slot.insert(prog);
            }
            let prog = &programs[&key];
            // Positions 0..n_ctx fit in u32 (checked against n_ctx by the caller); a decode
            // step uses a one-element array, so no allocation.
            let one = [start];
            let many: Vec<u32>;
            let positions: &[u32] = if chunk.len() == 1 {
                &one
            } else {
                many = (start..start + chunk.len() as u32).collect();
                &many
            };
            backend
                .execute(prog, chunk, positions, kv)
                .map_err(|e| EngineError::Invalid(e.to_string()))
        }
        #[cfg(feature = "cuda")]
        Exec::Cuda(c) => c.eval(arch, chunk, start, mode),
    }
}
