//! A loaded model: weights, tokenizer, chat template and either one sequence's runner or a
//! batch loop serving many sequences at once, behind the message-shaped API of [`crate::api`].

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_tokenizer::{ChatTemplate, Tokenizer, Vocab};

use crate::api::{Event, FinishReason, GenerateRequest, Usage};
use crate::batch::{BatchOptions, BatchRunner};
use crate::batcher::{BatchConfig, BatchSnapshot, BatchStats, Job, Msg};
use crate::decoding::{Decoding, Next};
use crate::{BackendKind, EngineError, KvType, Runner};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Longest sequence (KV positions of one request); 0 picks min(training context, 4096).
    pub num_ctx: usize,
    /// Worker threads; 0 uses every core.
    pub threads: usize,
    /// Requests generating at once. 0: one sequence's runner, requests take turns (the CLI).
    /// 1 or more: a batch loop over a paged KV pool, with a prefix cache (the fast backend
    /// only; the reference backend takes turns).
    pub parallel: usize,
    /// Positions of the shared KV pool in batch mode; 0: `num_ctx * parallel`. At least
    /// `num_ctx`.
    pub kv_positions: usize,
}

/// Prompt tokens per batch step on the CPU (besides one row per decoding sequence): long
/// prompts advance this much per step while the running streams keep flowing. The GPU takes
/// longer chunks (`BatchRunner::step_tokens`).
pub const STEP_TOKENS: usize = 256;

/// While requests generate, a step carrying prompt tokens takes at most this many times a step
/// of their decode rows alone: inter-token latency under load stays within this factor.
pub const LATENCY_FACTOR: f64 = 1.5;

/// What `show`, `/api/show` and `/api/ps` report about a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    /// `general.name`, or the file stem.
    pub name: String,
    /// Weight elements.
    pub n_params: u64,
    pub context_length_train: usize,
    /// The loaded context.
    pub context_length: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_vocab: usize,
    /// The dominant weight type, e.g. "Q4_K".
    pub quantization: String,
    /// Every weight type with its count of tensors, most frequent first.
    pub quantization_mix: Vec<(String, usize)>,
    pub file_size: u64,
    /// Bytes held in memory (weights and KV cache).
    pub memory_bytes: u64,
    pub license: Option<String>,
    /// Where the model runs: `cpu`, or `cuda: <GPU name, capability, driver>`; with CUDA the
    /// weights and KV cache (`memory_bytes`) are in GPU memory.
    pub device: String,
}

/// A model ready to generate.
pub struct Model {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    exec: Exec,
}

enum Exec {
    Single(Mutex<Runner>),
    Batched {
        jobs: Mutex<mpsc::Sender<Job>>,
        stats: Arc<BatchStats>,
        mapped: usize,
        kv_bytes: usize,
    },
}

impl Model {
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Model, EngineError> {
        let gguf = Arc::new(Gguf::open(path)?);
        let vocab =
            Vocab::from_gguf(&gguf).map_err(|e| EngineError::Invalid(format!("tokenizer: {e}")))?;
        let tokenizer =
            Tokenizer::new(&vocab).map_err(|e| EngineError::Invalid(format!("tokenizer: {e}")))?;
        let template = ChatTemplate::for_model(&vocab, &tokenizer)
            .map_err(|e| EngineError::Invalid(format!("chat template: {e}")))?;
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        let arch = smelt_models::load(&gguf)?;
        let n_ctx = if opts.num_ctx == 0 {
            arch.context_length().clamp(1, 4096)
        } else {
            opts.num_ctx
        };
        let tokenizer = Arc::new(tokenizer);
        // The batch engine runs on the CPU fast backend or the GPU; the reference backend
        // serves one sequence at a time.
        let kind = BackendKind::from_env()?;
        let single_backend = kind == BackendKind::Reference;
        if opts.parallel == 0 || single_backend {
            let runner = Runner::load(gguf.clone(), n_ctx, threads)?;
            let mut info = describe(&gguf, runner.arch(), n_ctx, runner.memory_bytes(), path);
            info.device = runner.device();
            return Ok(Model {
                info,
                tokenizer,
                template,
                exec: Exec::Single(Mutex::new(runner)),
            });
        }
        let kv_positions = if opts.kv_positions == 0 {
            n_ctx.saturating_mul(opts.parallel)
        } else {
            opts.kv_positions
        };
        let mut runner = BatchRunner::load(
            gguf.clone(),
            BatchOptions {
                n_ctx,
                kv_positions: kv_positions.max(n_ctx),
                threads,
                kv_type: KvType::F16,
                backend: kind,
            },
        )?;
        let cfg = BatchConfig {
            max_seqs: opts.parallel,
            step_tokens: runner.step_tokens(),
            latency_factor: LATENCY_FACTOR,
        };
        // Lower the largest step now, so its activations are allocated (and counted) at load.
        runner.prepare(cfg.step_tokens + opts.parallel, opts.parallel)?;
        let mut info = describe(&gguf, runner.arch(), n_ctx, runner.memory_bytes(), path);
        info.device = runner.device();
        let (mapped, kv_bytes) = (runner.mapped_weight_bytes(), runner.kv_bytes());
        let stats = Arc::new(BatchStats::default());
        let (tx, rx) = mpsc::channel();
        let (tok, st) = (tokenizer.clone(), stats.clone());
        std::thread::Builder::new()
            .name("smelt-batch".into())
            .spawn(move || crate::batcher::run(runner, tok, cfg, st, rx))
            .map_err(|e| EngineError::Invalid(format!("cannot start the batch loop: {e}")))?;
        Ok(Model {
            info,
            tokenizer,
            template,
            exec: Exec::Batched {
                jobs: Mutex::new(tx),
                stats,
                mapped,
                kv_bytes,
            },
        })
    }

    /// The batch loop's live numbers (None for a single-sequence model).
    pub fn batch_stats(&self) -> Option<BatchSnapshot> {
        match &self.exec {
            Exec::Batched { stats, .. } => Some(stats.snapshot()),
            Exec::Single(_) => None,
        }
    }

    /// Bytes of the KV cache (the pool in batch mode).
    pub fn kv_bytes(&self) -> usize {
        match &self.exec {
            Exec::Batched { kv_bytes, .. } => *kv_bytes,
            Exec::Single(r) => lock(r).kv_bytes(),
        }
    }

    /// Bytes of weights read through the file mapping (fast backend).
    pub fn mapped_weight_bytes(&self) -> usize {
        match &self.exec {
            Exec::Batched { mapped, .. } => *mapped,
            Exec::Single(r) => lock(r).mapped_weight_bytes(),
        }
    }

    fn submit(&self, job: Job) -> Result<(), EngineError> {
        let Exec::Batched { jobs, .. } = &self.exec else {
            unreachable!("only batch models submit jobs")
        };
        jobs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| EngineError::Invalid("the batch loop has stopped".into()))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The loaded context length.
    pub fn context_length(&self) -> usize {
        self.info.context_length
    }

    /// Run `f` with exclusive use of the runner (perplexity, scoring); a model loaded for
    /// batches (`LoadOptions::parallel`) has none.
    pub fn with_runner<T>(&self, f: impl FnOnce(&mut Runner) -> T) -> Result<T, EngineError> {
        match &self.exec {
            Exec::Single(r) => Ok(f(&mut lock(r))),
            Exec::Batched { .. } => Err(EngineError::Invalid(
                "this model was loaded for batches: it has no single-sequence runner".into(),
            )),
        }
    }

    /// Generate from `req`, streaming events to `on_event`; the last event is `Event::Done`.
    /// In batch mode the request joins the model's running batch and this call waits for it.
    pub fn generate(
        &self,
        req: GenerateRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Usage, EngineError> {
        let n_ctx = self.context_length();
        if req.prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= n_ctx {
            return Err(EngineError::ContextFull {
                needed: req.prompt.len() + 1,
                n_ctx,
            });
        }
        let runner = match &self.exec {
            Exec::Single(r) => r,
            Exec::Batched { .. } => {
                let (tx, rx) = mpsc::channel();
                self.submit(Job::Generate { req, tx })?;
                for msg in rx {
                    match msg {
                        Msg::Event(ev) => on_event(ev),
                        Msg::End(r) => return r,
                    }
                }
                return Err(EngineError::Invalid("the batch loop has stopped".into()));
            }
        };
        let mut runner = lock(runner);
        let prompt = req.prompt.clone();
        let mut dec = Decoding::new(req);
        let t0 = Instant::now();
        dec.usage.cached_tokens = runner.reuse_prefix(&prompt);
        // The last prompt token always goes through the single-token (decode) path, so its
        // logits are bit-identical whether the rest of the prompt was prefilled now or came
        // from the cache: the same seed then gives the same text on a repeated request.
        let last = prompt.len() - 1;
        // Prefill chunk by chunk so a client that goes away stops a long prompt early.
        for chunk in
            prompt[dec.usage.cached_tokens.min(last)..last].chunks(crate::runner::PREFILL_CHUNK)
        {
            if dec.req.cancel.is_cancelled() {
                dec.usage.prompt_eval_duration = t0.elapsed();
                return Ok(dec.finish(FinishReason::Cancelled, on_event));
            }
            runner.eval_slice(chunk, Output::Hidden)?;
        }
        let mut logits = runner.eval(&prompt[last..], Output::LastLogits)?;
        let n_vocab = logits.len();
        let mut cands = Vec::new();
        let mut sample_on_device = true;
        dec.usage.prompt_eval_duration = t0.elapsed();
        let t1 = Instant::now();
        let mut next = dec.next(
            &self.tokenizer,
            &mut logits,
            runner.tokens().len(),
            n_ctx,
            on_event,
        );
        let reason = loop {
            // The draw on the GPU where every later token can be drawn there.
            let device = match sample_on_device {
                true => dec.device_sampling(n_vocab, crate::runner::TOP_CANDIDATES),
                false => None,
            };
            match (next, device) {
                (Next::Finish(reason), _) => break reason,
                (Next::Eval(tok), _) if dec.is_plain_greedy() => {
                    // The rest where the logits are (on the GPU, the argmax on the device and
                    // each step launched ahead of its token).
                    let mut reason = None;
                    runner.decode_greedy(tok, dec.steps_left(), &mut |t, kv_len| match dec
                        .next_token(&self.tokenizer, t, kv_len, n_ctx, on_event)
                    {
                        Next::Eval(_) => true,
                        Next::Finish(r) => {
                            reason = Some(r);
                            false
                        }
                    })?;
                    // Every step's token was taken or ended the run (Decoding stops at the
                    // context's end).
                    break reason.unwrap_or(FinishReason::Length);
                }
                (Next::Eval(tok), Some(settings)) => {
                    // The rest drawn on the GPU, each step launched ahead of its token
                    // (smelt-cuda v23), the draws the host's own.
                    let history = dec.history().to_vec();
                    let mut rng = dec.rng();
                    let mut reason = None;
                    let steps = dec.steps_left();
                    let run = runner.decode_sampled(
                        tok,
                        steps,
                        &settings,
                        &history,
                        &mut rng,
                        &mut |t, kv_len| match dec.next_token(
                            &self.tokenizer,
                            t,
                            kv_len,
                            n_ctx,
                            on_event,
                        ) {
                            Next::Eval(_) => true,
                            Next::Finish(r) => {
                                reason = Some(r);
                                false
                            }
                        },
                    )?;
                    match run {
                        // No device run: the step below, once.
                        None => sample_on_device = false,
                        Some(_) if reason.is_some() => {
                            break reason.unwrap_or(FinishReason::Length)
                        }
                        Some((_, Some(last))) => {
                            // The last step's draw is the host's: its logits again, and
                            // the stream where the kept draws left it.
                            dec.set_rng(rng);
                            let row = runner.eval_slice(&[last], Output::LastLogits)?;
                            logits.clear();
                            logits.extend_from_slice(row);
                            let kv = runner.tokens().len();
                            next = dec.next(&self.tokenizer, &mut logits, kv, n_ctx, on_event);
                        }
                        // Every step's token was taken (the context's end).
                        Some((_, None)) => break FinishReason::Length,
                    }
                }
                (Next::Eval(tok), None) => {
                    // On the GPU a step whose sampling fits its best logits ends with
                    // them (smelt-cuda v22): no row copied to the host, no pass over it.
                    let top = match dec.top_fits(n_vocab, crate::runner::TOP_CANDIDATES) {
                        true => runner.eval_top(tok, &mut cands)?,
                        false => None,
                    };
                    next = match top {
                        Some(inf) => {
                            let kv = runner.tokens().len();
                            let tk = &self.tokenizer;
                            match dec.next_top(tk, &cands, inf, kv, n_ctx, on_event) {
                                Some(n) => n,
                                None => {
                                    logits = runner.last_logits()?;
                                    dec.next(tk, &mut logits, kv, n_ctx, on_event)
                                }
                            }
                        }
                        None => {
                            let row = runner.eval_slice(&[tok], Output::LastLogits)?;
                            logits.clear();
                            logits.extend_from_slice(row);
                            let kv = runner.tokens().len();
                            dec.next(&self.tokenizer, &mut logits, kv, n_ctx, on_event)
                        }
                    };
                }
            }
        };
        dec.usage.eval_duration = t1.elapsed();
        Ok(dec.finish(reason, on_event))
    }

    /// A normalised mean-pooled embedding of `tokens` (final hidden states).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Invalid("nothing to embed".into()));
        }
        if tokens.len() > self.context_length() {
            return Err(EngineError::ContextFull {
                needed: tokens.len(),
                n_ctx: self.context_length(),
            });
        }
        let hidden = match &self.exec {
            Exec::Single(r) => {
                let mut runner = lock(r);
                runner.clear();
                let hidden = runner.eval(tokens, Output::Hidden);
                runner.clear();
                hidden?
            }
            Exec::Batched { .. } => {
                let (tx, rx) = mpsc::channel();
                self.submit(Job::Embed {
                    tokens: tokens.to_vec(),
                    tx,
                })?;
                rx.recv()
                    .map_err(|_| EngineError::Invalid("the batch loop has stopped".into()))??
            }
        };
        let d = self.info.n_embd;
        let mut pooled = vec![0.0f32; d];
        for row in hidden.chunks(d) {
            pooled
                .iter_mut()
                .zip(row)
                .for_each(|(p, h)| *p += h / tokens.len() as f32);
        }
        let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        pooled.iter_mut().for_each(|x| *x /= norm);
        Ok(pooled)
    }
}

/// A panic in another request must not take the model down with it.
fn lock(r: &Mutex<Runner>) -> std::sync::MutexGuard<'_, Runner> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe(
    gguf: &Gguf,
    arch: &dyn smelt_models::Architecture,
    n_ctx: usize,
    memory: usize,
    path: &Path,
) -> ModelInfo {
    let mut mix: Vec<(String, usize)> = Vec::new();
    for e in arch.weights().entries() {
        match mix.iter_mut().find(|(n, _)| n == e.dtype.name()) {
            Some((_, c)) => *c += 1,
            None => mix.push((e.dtype.name().to_string(), 1)),
        }
    }
    mix.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    ModelInfo {
        architecture: arch.arch().to_string(),
        name: gguf
            .get_str("general.name")
            .ok()
            .flatten()
            .map(str::to_string)
            .unwrap_or(stem),
        n_params: arch.weights().n_params(),
        context_length_train: arch.context_length(),
        context_length: n_ctx,
        n_embd: arch.n_embd(),
        n_layer: arch.n_layer(),
        n_vocab: arch.n_vocab(),
        quantization: mix.first().map(|m| m.0.clone()).unwrap_or_default(),
        quantization_mix: mix,
        file_size: gguf.file_size(),
        memory_bytes: memory as u64,
        license: gguf
            .get_str("general.license")
            .ok()
            .flatten()
            .map(str::to_string),
        device: "cpu".into(),
    }
}

impl Model {
    /// Tokenise a rendered prompt: special-token text is parsed, and BOS is added when the
    /// model adds one and the text does not already start with it (templates often emit it).
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = self.tokenizer.encode(text, false, true);
        if let Some(bos) = self.tokenizer.bos() {
            if self.tokenizer.adds_bos() && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// Render `messages` (Hugging Face chat format) with the model's template and tokenise.
    pub fn encode_chat(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>), EngineError> {
        let text = self
            .template
            .render(messages, tools, add_generation_prompt)
            .map_err(|e| EngineError::Invalid(format!("chat template: {e}")))?;
        let ids = self.encode_prompt(&text);
        Ok((text, ids))
    }
}
