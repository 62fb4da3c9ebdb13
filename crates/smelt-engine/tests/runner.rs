//! The runner on the real models: cached decoding equals a full re-evaluation.

use std::sync::Arc;

use smelt_engine::Runner;
use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cache_equals_full(model: &str) {
    let g = Arc::new(Gguf::open(model_path(model)).unwrap());
    let mut r = Runner::load(g, 64, 2).unwrap();
    let toks = [2u32, 651, 6037, 576, 3281, 603, 11];
    let all = r.eval(&toks, Output::AllLogits).unwrap();
    let n_vocab = r.arch().n_vocab();
    r.clear();
    r.eval(&toks[..4], Output::LastLogits).unwrap();
    let mut last = Vec::new();
    for &t in &toks[4..] {
        last = r.eval(&[t], Output::LastLogits).unwrap();
    }
    let full_last = &all[(toks.len() - 1) * n_vocab..];
    let d = max_diff(&last, full_last);
    assert!(
        d < 1e-3,
        "{model}: cached decode differs from full evaluation by {d}"
    );
    assert!(last.iter().all(|x| x.is_finite()));
}

#[test]
fn smollm2_cache_equals_full() {
    cache_equals_full(SMOLLM2);
}

#[test]
fn gemma3_cache_equals_full() {
    cache_equals_full(GEMMA3);
}

#[test]
fn context_and_vocab_are_checked() {
    let g = Arc::new(Gguf::open(model_path(SMOLLM2)).unwrap());
    let mut r = Runner::load(g, 4, 1).unwrap();
    assert!(r
        .eval(&[1, 2, 3, 4, 5], Output::LastLogits)
        .unwrap_err()
        .to_string()
        .contains("context"));
    assert!(r
        .eval(&[999_999], Output::LastLogits)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
}
