//! Fidelity of the fast backend on the real models: teacher-forced logits of 64 tokens agree
//! with the reference backend's (argmax, KL divergence, largest difference).

use std::sync::Arc;

use smelt_engine::{BackendKind, Runner, RunnerOptions};
use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b })
}

fn fidelity(model: &str, max_kl: f64, min_agree: f64) {
    let g = Arc::new(Gguf::open(model_path(model)).unwrap());
    let run = |backend| {
        let mut r = Runner::load_with(
            Arc::clone(&g),
            RunnerOptions {
                n_ctx: 64,
                threads: 2,
                backend,
            },
        )
        .unwrap();
        let n_vocab = r.arch().n_vocab();
        // A fixed, text-like spread of ids: common low ids and rarer high ones.
        let toks: Vec<u32> = (0..64u64)
            .map(|i| ((i * 7919 + 13) % 5000 + (i % 3) * 300) as u32 % n_vocab as u32)
            .collect();
        (r.eval(&toks, Output::AllLogits).unwrap(), n_vocab)
    };
    let (want, n_vocab) = run(BackendKind::Reference);
    let (got, _) = run(BackendKind::Fast);
    let mut agree = 0;
    let mut kl_sum = 0.0;
    let mut max_diff = 0f32;
    for (w, f) in want.chunks(n_vocab).zip(got.chunks(n_vocab)) {
        agree += usize::from(argmax(w) == argmax(f));
        let (lw, lf) = (log_softmax(w), log_softmax(f));
        kl_sum += lw
            .iter()
            .zip(&lf)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        max_diff = w
            .iter()
            .zip(f)
            .map(|(a, b)| (a - b).abs())
            .fold(max_diff, f32::max);
    }
    let rows = want.len() / n_vocab;
    let (agree, kl) = (agree as f64 / rows as f64, kl_sum / rows as f64);
    eprintln!("{model}: argmax agreement {agree:.3}, mean KL {kl:.2e}, max |diff| {max_diff:.3e}");
    assert!(agree >= min_agree, "{model}: argmax agreement {agree}");
    assert!(kl <= max_kl, "{model}: mean KL {kl}");
}

#[test]
fn smollm2_fast_agrees_with_reference() {
    fidelity(SMOLLM2, 1e-3, 0.95);
}

#[test]
fn gemma3_fast_agrees_with_reference() {
    fidelity(GEMMA3, 1e-3, 0.95);
}
