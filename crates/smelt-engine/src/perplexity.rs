//! Perplexity as llama.cpp's llama-perplexity computes it.
//!
//! The token stream (tokenised with BOS when the model adds one) is cut into non-overlapping
//! chunks of `n_ctx` tokens; each chunk is evaluated from an empty cache with its first token
//! replaced by BOS when the model adds BOS, and only the second half is scored: the logits at
//! positions `n_ctx/2 .. n_ctx-2` predict tokens `n_ctx/2+1 .. n_ctx-1`.

use smelt_models::Output;

use crate::sampler::log_softmax;
use crate::{EngineError, Runner};

/// The result of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Running perplexity after each chunk (what llama-perplexity prints as `[i]value`).
    pub per_chunk: Vec<f64>,
}

/// Evaluate perplexity over `tokens` with chunks of `n_ctx` tokens (at most `max_chunks`).
pub fn perplexity(
    runner: &mut Runner,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<Perplexity, EngineError> {
    if n_ctx < 4 || n_ctx > runner.n_ctx() {
        return Err(EngineError::Invalid(format!(
            "perplexity context {n_ctx} must be in 4..={}",
            runner.n_ctx()
        )));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(EngineError::Invalid(format!(
            "need at least {} tokens for a context of {n_ctx}, the text has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let n_vocab = runner.arch().n_vocab();
    let mut n_chunk = tokens.len() / n_ctx;
    if let Some(m) = max_chunks {
        n_chunk = n_chunk.min(m.max(1));
    }
    let first = n_ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunk);
    for c in 0..n_chunk {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        runner.clear();
        let logits = runner.eval(&chunk, Output::AllLogits)?;
        for i in first..n_ctx - 1 {
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            nll -= log_softmax_at(row, chunk[i + 1] as usize);
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        per_chunk.push(ppl);
        on_chunk(c + 1, n_chunk, ppl);
    }
    runner.clear();
    Ok(Perplexity {
        ppl: (nll / count as f64).exp(),
        chunks: n_chunk,
        scored: count,
        per_chunk,
    })
}

/// log_softmax(row)[target] in f64 (as llama-perplexity accumulates).
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

/// Teacher-forced log-probabilities of every position of `tokens` (one evaluation from an empty
/// cache): row i is log_softmax of the logits after token i.
pub fn teacher_forced(runner: &mut Runner, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
    runner.clear();
    let n_vocab = runner.arch().n_vocab();
    let logits = runner.eval(tokens, Output::AllLogits)?;
    runner.clear();
    Ok(logits.chunks(n_vocab).map(log_softmax).collect())
}
