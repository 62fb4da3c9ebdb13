//! One request's generation after the prompt: from each step's logits to the next token and
//! the events a client sees. The same state machine serves the single-sequence path
//! (`Model::generate` on a `Runner`) and the batch loop, which calls it on its sequence's
//! row of each step's logits.

use smelt_tokenizer::{Tokenizer, Utf8Stream};

use crate::api::{Event, FinishReason, GenerateRequest, TokenLogprob, Usage};
use crate::sampler::{log_softmax, DeviceSampling, Rng, Sampler};
use crate::stop::{StopMatcher, StopStep};

/// What to do after a token was sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Evaluate this token and call [`Decoding::next`] on its logits.
    Eval(u32),
    /// Generation is over; call [`Decoding::finish`].
    Finish(FinishReason),
}

pub(crate) struct Decoding {
    pub req: GenerateRequest,
    pub usage: Usage,
    sampler: Sampler,
    history: Vec<u32>,
    utf8: Utf8Stream,
    stop: StopMatcher,
    held_tokens: Vec<u32>,
    held_logprobs: Vec<TokenLogprob>,
    stopped_by_string: bool,
}

impl Decoding {
    pub fn new(req: GenerateRequest) -> Decoding {
        Decoding {
            usage: Usage {
                prompt_tokens: req.prompt.len(),
                ..Usage::default()
            },
            sampler: Sampler::new(req.sampling.clone()),
            history: req.prompt.clone(),
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(&req.stop),
            held_tokens: Vec::new(),
            held_logprobs: Vec::new(),
            stopped_by_string: false,
            req,
        }
    }

    /// Sample the next token from `logits` (penalties and the constraint are applied in
    /// place) and emit the text that became final. `kv_len`: tokens with keys and values (the
    /// context used so far); `n_ctx`: the context.
    pub fn next(
        &mut self,
        tok: &Tokenizer,
        logits: &mut [f32],
        kv_len: usize,
        n_ctx: usize,
        on_event: &mut dyn FnMut(Event),
    ) -> Next {
        if self.req.cancel.is_cancelled() {
            return Next::Finish(FinishReason::Cancelled);
        }
        let raw = if self.req.logprobs {
            logits.to_vec()
        } else {
            Vec::new()
        };
        self.sampler.apply_penalties(logits, &self.history);
        if let Some(c) = self.req.constraint.as_mut() {
            c.mask(logits);
        }
        let t = self.sampler.sample(logits);
        self.accept(tok, t, &raw, kv_len, n_ctx, on_event)
    }

    /// Whether the next token can come from the row's best `k` finite logits alone (the GPU's
    /// sampling candidates, smelt-cuda v22): no constraint, no log-probabilities, and
    /// [`Sampler::top_fits`].
    pub fn top_fits(&self, n_vocab: usize, k: usize) -> bool {
        self.req.constraint.is_none()
            && !self.req.logprobs
            && self.sampler.top_fits(n_vocab, k, &self.history)
    }

    /// The settings of a draw on the device (smelt-cuda v23) where every later token of this
    /// generation can be drawn there: no constraint, no log-probabilities, and
    /// [`Sampler::device_sampling`] over candidates of `k`.
    pub fn device_sampling(&self, n_vocab: usize, k: usize) -> Option<DeviceSampling> {
        if self.req.constraint.is_some() || self.req.logprobs {
            return None;
        }
        self.sampler.device_sampling(n_vocab, k)
    }

    /// The tokens seen (prompt and generated).
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// The sampler's seeded stream, to draw a device run's uniforms from a copy.
    pub fn rng(&self) -> Rng {
        self.sampler.rng().clone()
    }

    /// Put back the stream after a device run (advanced by the draws it kept).
    pub fn set_rng(&mut self, rng: Rng) {
        self.sampler.set_rng(rng);
    }

    /// [`Decoding::next`] from the row's candidates (where [`Decoding::top_fits`]): `cand` its
    /// best finite logits, `inf` whether the row had a `+inf`. None where the whole row is
    /// needed after all (nothing was taken; call [`Decoding::next`] with it).
    pub fn next_top(
        &mut self,
        tok: &Tokenizer,
        cand: &[(u32, f32)],
        inf: bool,
        kv_len: usize,
        n_ctx: usize,
        on_event: &mut dyn FnMut(Event),
    ) -> Option<Next> {
        if self.req.cancel.is_cancelled() {
            return Some(Next::Finish(FinishReason::Cancelled));
        }
        if inf && self.sampler.options().temperature <= 0.0 {
            return None;
        }
        let t = self.sampler.sample_top(cand, &self.history)?;
        Some(self.accept(tok, t, &[], kv_len, n_ctx, on_event))
    }

    /// Steps of evaluation this generation can still take before `max_tokens` ends it: each
    /// step's token is one more (usize::MAX without a limit). A runner that launches steps
    /// ahead of their tokens launches no more than this, none to be dropped at the end.
    pub fn steps_left(&self) -> usize {
        self.req.max_tokens.map_or(usize::MAX, |m| {
            m.saturating_sub(self.usage.completion_tokens)
        })
    }

    /// Whether every token is the argmax of the model's logits, nothing else read from them:
    /// plain greedy sampling, no constraint, no log-probabilities. The runner may then take
    /// the argmax where the logits are (`Runner::decode_greedy`) and give the tokens to
    /// [`Decoding::next_token`].
    pub fn is_plain_greedy(&self) -> bool {
        self.sampler.is_plain_greedy() && self.req.constraint.is_none() && !self.req.logprobs
    }

    /// [`Decoding::next`] for a token already chosen (the argmax of the logits, where
    /// [`Decoding::is_plain_greedy`]).
    pub fn next_token(
        &mut self,
        tok: &Tokenizer,
        t: u32,
        kv_len: usize,
        n_ctx: usize,
        on_event: &mut dyn FnMut(Event),
    ) -> Next {
        if self.req.cancel.is_cancelled() {
            return Next::Finish(FinishReason::Cancelled);
        }
        self.accept(tok, t, &[], kv_len, n_ctx, on_event)
    }

    /// The sampled token `t` (`raw`: the logits before penalties, where log-probabilities are
    /// asked for) into the history, the text and the stop checks.
    fn accept(
        &mut self,
        tok: &Tokenizer,
        t: u32,
        raw: &[f32],
        kv_len: usize,
        n_ctx: usize,
        on_event: &mut dyn FnMut(Event),
    ) -> Next {
        if tok.is_eog(t) {
            return Next::Finish(FinishReason::Stop);
        }
        self.usage.completion_tokens += 1;
        self.history.push(t);
        if self.req.logprobs {
            self.held_logprobs
                .push(logprob(tok, raw, t, self.req.top_logprobs));
        }
        self.held_tokens.push(t);
        let done = self.req.constraint.as_mut().is_some_and(|c| c.accept(t));
        let text = self.utf8.push(tok.piece(t, false));
        match self.stop.push(&text) {
            StopStep::Emit(s) => {
                if !s.is_empty() {
                    self.emit(s, on_event);
                }
            }
            StopStep::Stop { text, matched } => {
                if !text.is_empty() {
                    self.emit(text, on_event);
                }
                self.stopped_by_string = true;
                self.usage.stop_sequence = Some(matched);
                return Next::Finish(FinishReason::Stop);
            }
        }
        if done {
            return Next::Finish(FinishReason::Stop);
        }
        if self
            .req
            .max_tokens
            .is_some_and(|m| self.usage.completion_tokens >= m)
            || kv_len + 1 >= n_ctx
        {
            return Next::Finish(FinishReason::Length);
        }
        Next::Eval(t)
    }

    fn emit(&mut self, text: String, on_event: &mut dyn FnMut(Event)) {
        on_event(Event::Text {
            text,
            tokens: std::mem::take(&mut self.held_tokens),
            logprobs: std::mem::take(&mut self.held_logprobs),
        });
    }

    /// Release held text (unless a stop string ended it) and emit `Done`.
    pub fn finish(&mut self, reason: FinishReason, on_event: &mut dyn FnMut(Event)) -> Usage {
        if !self.stopped_by_string {
            let rest = self.stop.push_final(&self.utf8.finish());
            if !rest.is_empty() || !self.held_tokens.is_empty() {
                self.emit(rest, on_event);
            }
        }
        on_event(Event::Done {
            reason,
            usage: self.usage.clone(),
        });
        self.usage.clone()
    }
}

/// The sampled token's log-probability under `logits` and the `top` most likely tokens'.
pub(crate) fn logprob(tok: &Tokenizer, logits: &[f32], t: u32, top: usize) -> TokenLogprob {
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
    let text = |t: u32| String::from_utf8_lossy(tok.token_to_piece(t)).into_owned();
    TokenLogprob {
        token: t,
        text: text(t),
        logprob: lp[t as usize],
        top: best
            .into_iter()
            .map(|b| (b, text(b), lp[b as usize]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingOptions;

    /// A device run takes at most the steps `max_tokens` leaves: one a token still to give.
    #[test]
    fn steps_left_counts_down_to_max_tokens() {
        let free = Decoding::new(GenerateRequest::new(vec![1], SamplingOptions::greedy()));
        assert_eq!(free.steps_left(), usize::MAX);
        let mut req = GenerateRequest::new(vec![1], SamplingOptions::greedy());
        req.max_tokens = Some(5);
        let mut dec = Decoding::new(req);
        assert_eq!(dec.steps_left(), 5);
        dec.usage.completion_tokens = 2;
        assert_eq!(dec.steps_left(), 3);
        dec.usage.completion_tokens = 7;
        assert_eq!(dec.steps_left(), 0);
    }
}
