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

/// The prompt evaluated at once vs in pieces over the cache, each the way the engine evaluates
/// prompts: the tokens before the last in chunks (several rows: the panel gemm on AVX-512), the
/// last token alone (one row: the tiles). The kernels pick their algorithm by that role, so the
/// split must not change a bit of the result.
fn cache_equals_full(model: &str) {
    let g = Arc::new(Gguf::open(model_path(model)).unwrap());
    let mut r = Runner::load(g, 64, 2).unwrap();
    let toks = [2u32, 651, 6037, 576, 3281, 603, 11];
    let (last_tok, head) = toks.split_last().unwrap();
    r.eval(head, Output::LastLogits).unwrap();
    let full = r.eval(&[*last_tok], Output::LastLogits).unwrap();
    r.clear();
    r.eval(&head[..4], Output::LastLogits).unwrap();
    r.eval(&head[4..], Output::LastLogits).unwrap();
    let last = r.eval(&[*last_tok], Output::LastLogits).unwrap();
    let d = max_diff(&last, &full);
    assert!(
        d < 1e-3,
        "{model}: cached decode differs from full evaluation by {d}"
    );
    assert!(last.iter().all(|x| x.is_finite()));
    // AllLogits of the whole prompt at once agree with the last row to rounding of the other
    // algorithm (a 7-row chunk goes through the panel gemm where the CPU has one).
    r.clear();
    let n_vocab = r.arch().n_vocab();
    let every = r.eval(&toks, Output::AllLogits).unwrap();
    let row = &every[(toks.len() - 1) * n_vocab..];
    assert_eq!(argmax(row), argmax(&full), "{model}: the same next token");
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b })
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

/// Greedy decoding (`Runner::decode_greedy`: on the GPU the argmax on the device, steps
/// launched ahead) gives the tokens of the step loop's host argmax, stops where the caller
/// says (a step launched ahead is dropped), leaves the cache as the loop does (the next
/// logits are the same bit for bit), and runs to the end of the context, not past it.
#[test]
fn smollm2_greedy_decoding_equals_the_step_loop() {
    let g = Arc::new(Gguf::open(model_path(SMOLLM2)).unwrap());
    let n_ctx = 48;
    let mut r = Runner::load(g, n_ctx, 2).unwrap();
    let prompt = [2u32, 651, 6037, 576, 3281, 603, 11];
    let steps = 20;
    let first = smelt_engine::sampler::argmax(&r.eval(&prompt, Output::LastLogits).unwrap());
    let mut want = vec![first];
    for _ in 0..steps {
        let l = r.eval(&[want[want.len() - 1]], Output::LastLogits).unwrap();
        want.push(smelt_engine::sampler::argmax(&l));
    }
    let want_next = r.eval(&[want[steps]], Output::LastLogits).unwrap();
    r.clear();
    r.eval(&prompt, Output::LastLogits).unwrap();
    let mut got = vec![first];
    let mut lens = Vec::new();
    let done = r
        .decode_greedy(first, usize::MAX, &mut |t, kv_len| {
            got.push(t);
            lens.push(kv_len);
            got.len() <= steps
        })
        .unwrap();
    assert_eq!(done, steps);
    assert_eq!(got, want, "the greedy tokens");
    let after: Vec<usize> = (1..=steps).map(|i| prompt.len() + i).collect();
    assert_eq!(lens, after, "the cache's length after each step");
    assert_eq!(r.tokens().len(), prompt.len() + steps);
    assert_eq!(&r.tokens()[prompt.len()..], &want[..steps]);
    let next = r.eval(&[want[steps]], Output::LastLogits).unwrap();
    let same = next
        .iter()
        .zip(&want_next)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "the logits after greedy decoding (max diff {})",
        max_diff(&next, &want_next)
    );
    // To the end of the context.
    let left = n_ctx - r.tokens().len();
    let done = r
        .decode_greedy(want[steps], usize::MAX, &mut |_, _| true)
        .unwrap();
    assert_eq!(done, left);
    assert_eq!(r.tokens().len(), n_ctx);
    let full = r.decode_greedy(1, 5, &mut |_, _| true).unwrap_err();
    assert!(full.to_string().contains("context"), "{full}");
    r.clear();
    let bad = r.decode_greedy(999_999, 5, &mut |_, _| true).unwrap_err();
    assert!(bad.to_string().contains("outside the vocabulary"), "{bad}");
    assert_eq!(r.decode_greedy(first, 0, &mut |_, _| true).unwrap(), 0);
}
