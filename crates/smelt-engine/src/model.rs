//! A loaded model: weights, tokenizer, chat template and one sequence's runner, behind the
//! message-shaped API of [`crate::api`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_tokenizer::{ChatTemplate, StreamDecoder, Tokenizer, Vocab};

use crate::api::{Event, FinishReason, GenerateRequest, TokenLogprob, Usage};
use crate::sampler::{log_softmax, Sampler};
use crate::stop::{StopMatcher, StopStep};
use crate::{EngineError, Runner};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// KV positions to allocate; 0 picks min(training context, 4096).
    pub num_ctx: usize,
    /// Worker threads; 0 uses every core.
    pub threads: usize,
}

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
}

/// A model ready to generate.
pub struct Model {
    info: ModelInfo,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    runner: Mutex<Runner>,
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
        let runner = Runner::load(gguf.clone(), n_ctx, threads)?;
        let info = describe(&gguf, &runner, path);
        Ok(Model {
            info,
            tokenizer,
            template,
            runner: Mutex::new(runner),
        })
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Runner> {
        // A panic in another request must not take the model down with it.
        self.runner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` with exclusive use of the runner (perplexity, scoring).
    pub fn with_runner<T>(&self, f: impl FnOnce(&mut Runner) -> T) -> T {
        f(&mut self.lock())
    }

    /// Generate from `req`, streaming events to `on_event`; the last event is `Event::Done`.
    pub fn generate(
        &self,
        mut req: GenerateRequest,
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
        let mut runner = self.lock();
        let mut usage = Usage {
            prompt_tokens: req.prompt.len(),
            ..Usage::default()
        };
        let t0 = Instant::now();
        usage.cached_tokens = runner.reuse_prefix(&req.prompt);
        // The last prompt token always goes through the single-token (decode) path, so its
        // logits are bit-identical whether the rest of the prompt was prefilled now or came
        // from the cache: the same seed then gives the same text on a repeated request.
        let last = req.prompt.len() - 1;
        // Prefill chunk by chunk so a client that goes away stops a long prompt early.
        for chunk in
            req.prompt[usage.cached_tokens.min(last)..last].chunks(crate::runner::PREFILL_CHUNK)
        {
            if req.cancel.is_cancelled() {
                usage.prompt_eval_duration = t0.elapsed();
                on_event(Event::Done {
                    reason: FinishReason::Cancelled,
                    usage: usage.clone(),
                });
                return Ok(usage);
            }
            runner.eval_slice(chunk, Output::Hidden)?;
        }
        let mut logits = runner.eval(&req.prompt[last..], Output::LastLogits)?;
        usage.prompt_eval_duration = t0.elapsed();

        let t1 = Instant::now();
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut history = req.prompt.clone();
        let mut decoder = StreamDecoder::new(&self.tokenizer, false);
        let mut stop = StopMatcher::new(&req.stop);
        let (mut held_tokens, mut held_logprobs) = (Vec::new(), Vec::new());
        let mut stopped_by_string = false;
        let reason = loop {
            if req.cancel.is_cancelled() {
                break FinishReason::Cancelled;
            }
            let raw = if req.logprobs {
                logits.clone()
            } else {
                Vec::new()
            };
            sampler.apply_penalties(&mut logits, &history);
            if let Some(c) = req.constraint.as_mut() {
                c.mask(&mut logits);
            }
            let tok = sampler.sample(&logits);
            if self.tokenizer.is_eog(tok) {
                break FinishReason::Stop;
            }
            usage.completion_tokens += 1;
            history.push(tok);
            if req.logprobs {
                held_logprobs.push(self.logprob(&raw, tok, req.top_logprobs));
            }
            held_tokens.push(tok);
            let done = req.constraint.as_mut().is_some_and(|c| c.accept(tok));
            let text = decoder.push(tok);
            match stop.push(&text) {
                StopStep::Emit(s) => {
                    if !s.is_empty() {
                        let (tokens, logprobs) = (
                            std::mem::take(&mut held_tokens),
                            std::mem::take(&mut held_logprobs),
                        );
                        on_event(Event::Text {
                            text: s,
                            tokens,
                            logprobs,
                        });
                    }
                }
                StopStep::Stop(s) => {
                    let (tokens, logprobs) = (
                        std::mem::take(&mut held_tokens),
                        std::mem::take(&mut held_logprobs),
                    );
                    if !s.is_empty() {
                        on_event(Event::Text {
                            text: s,
                            tokens,
                            logprobs,
                        });
                    }
                    stopped_by_string = true;
                    break FinishReason::Stop;
                }
            }
            if done {
                break FinishReason::Stop;
            }
            if req.max_tokens.is_some_and(|m| usage.completion_tokens >= m)
                || runner.tokens().len() + 1 >= n_ctx
            {
                break FinishReason::Length;
            }
            let next = runner.eval_slice(&[tok], Output::LastLogits)?;
            logits.clear();
            logits.extend_from_slice(next);
        };
        if !stopped_by_string {
            let rest = stop.push_final(&decoder.finish());
            if !rest.is_empty() || !held_tokens.is_empty() {
                on_event(Event::Text {
                    text: rest,
                    tokens: held_tokens,
                    logprobs: held_logprobs,
                });
            }
        }
        usage.eval_duration = t1.elapsed();
        on_event(Event::Done {
            reason,
            usage: usage.clone(),
        });
        Ok(usage)
    }

    fn logprob(&self, logits: &[f32], tok: u32, top: usize) -> TokenLogprob {
        let lp = log_softmax(logits);
        let mut best: Vec<u32> = Vec::new();
        if top > 0 {
            let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
            let k = top.min(idx.len());
            idx.select_nth_unstable_by(k - 1, |a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
            idx.truncate(k);
            idx.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
            best = idx;
        }
        let text = |t: u32| String::from_utf8_lossy(self.tokenizer.token_to_piece(t)).into_owned();
        TokenLogprob {
            token: tok,
            text: text(tok),
            logprob: lp[tok as usize],
            top: best
                .into_iter()
                .map(|t| (t, text(t), lp[t as usize]))
                .collect(),
        }
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
        let mut runner = self.lock();
        runner.clear();
        let hidden = runner.eval(tokens, Output::Hidden);
        runner.clear();
        let hidden = hidden?;
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

fn describe(gguf: &Gguf, runner: &Runner, path: &Path) -> ModelInfo {
    let arch = runner.arch();
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
        context_length: runner.n_ctx(),
        n_embd: arch.n_embd(),
        n_layer: arch.n_layer(),
        n_vocab: arch.n_vocab(),
        quantization: mix.first().map(|m| m.0.clone()).unwrap_or_default(),
        quantization_mix: mix,
        file_size: gguf.file_size(),
        memory_bytes: runner.memory_bytes() as u64,
        license: gguf
            .get_str("general.license")
            .ok()
            .flatten()
            .map(str::to_string),
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
