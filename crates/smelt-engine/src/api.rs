//! The engine boundary: one internal request type and one event stream.
//!
//! Every HTTP dialect (Ollama, OpenAI, Anthropic) and the CLI translate into [`GenerateRequest`]
//! and map [`Event`]s back into their own wire format. Nothing here knows about HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sampling settings for one request. `temperature <= 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the repeat penalty.
    pub repeat_penalty: f32,
    /// How many of the last tokens the penalties look at (0: none, -1: the whole context).
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// None: seeded from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingOptions {
    /// Ollama's defaults.
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingOptions {
    /// Deterministic argmax decoding with no penalties.
    pub fn greedy() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: Some(0),
        }
    }
}

/// Constrains which tokens may come next (JSON schema, forced tool calls, grammars).
///
/// The engine calls `mask` before sampling each token and `accept` after; a constraint sets
/// the logits of forbidden tokens to `f32::NEG_INFINITY`.
pub trait TokenConstraint: Send {
    /// Forbid tokens by setting their logits to -inf.
    fn mask(&mut self, logits: &mut [f32]);
    /// Record the sampled token. Returns true when the constrained output is complete
    /// (generation then stops with [`FinishReason::Stop`]).
    fn accept(&mut self, token: u32) -> bool;
}

/// One generation request, already rendered to token ids.
pub struct GenerateRequest {
    /// The prompt, tokenised (template applied, BOS included as the model wants).
    pub prompt: Vec<u32>,
    pub sampling: SamplingOptions,
    /// Upper bound of new tokens; None means until the context is full.
    pub max_tokens: Option<usize>,
    /// Generation stops when the output text contains one of these; the stop string is not emitted.
    pub stop: Vec<String>,
    /// Return this many top alternatives' log-probabilities per token (0 = none; `logprobs` then
    /// only carries the sampled token's).
    pub top_logprobs: usize,
    /// Report log-probabilities at all.
    pub logprobs: bool,
    pub constraint: Option<Box<dyn TokenConstraint>>,
    pub cancel: CancelToken,
}

impl GenerateRequest {
    pub fn new(prompt: Vec<u32>, sampling: SamplingOptions) -> Self {
        GenerateRequest {
            prompt,
            sampling,
            max_tokens: None,
            stop: Vec::new(),
            top_logprobs: 0,
            logprobs: false,
            constraint: None,
            cancel: CancelToken::default(),
        }
    }
}

/// Shared flag a client drops or sets to stop its generation at the next token.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A token's log-probability and its best alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(u32, String, f32)>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token, a stop string, or a completed constraint.
    Stop,
    /// max_tokens reached or the context is full.
    Length,
    /// The client went away or cancelled.
    Cancelled,
}

/// Counts and timings of one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the cache (not evaluated).
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    pub prompt_eval_duration: Duration,
    pub eval_duration: Duration,
    /// The stop string that ended generation, if one did (the reason is then `Stop`).
    pub stop_sequence: Option<String>,
}

/// What a generation streams back.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New output text: always whole UTF-8, never part of a stop string.
    /// `tokens` are the ids that produced it (may be empty when text was held back and released).
    Text {
        text: String,
        tokens: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end; always the last event.
    Done { reason: FinishReason, usage: Usage },
}
