//! Fidelity of the fast backend on the real models: teacher-forced logits of a sentence agree
//! with the reference backend's (argmax, KL divergence).
//!
//! The token ids are llama.cpp's tokenisation of one English sentence (with BOS) for each model.
//! On them llama.cpp itself differs from the reference by a mean KL of 3.7e-3 (SmolLM2) and
//! 4.4e-3 (Gemma 3), argmax agreement 98% and 87%; the fast backend by 3.3e-3 and 4.5e-3,
//! 100% and 93% (measured when this test was written). Both quantise activations to 8 bits.

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

const SMOLLM2_TOKENS: &[u32] = &[
    504, 1573, 33059, 40061, 30324, 260, 18851, 24224, 897, 9053, 288, 1420, 260, 17559, 30, 44866,
    7685, 260, 19284, 4051, 15303, 335, 624, 11225, 288, 1042, 480, 970, 1478, 738, 19998, 284,
    12862, 30, 1963, 3163, 28, 260, 17559, 736, 441, 1420, 28, 284, 384, 13380, 260, 20172, 12643,
    650, 7388, 761, 5631,
];
const GEMMA3_TOKENS: &[u32] = &[
    2, 818, 2255, 63937, 64222, 54264, 506, 32450, 31393, 1418, 9137, 531, 2214, 506, 15123,
    236761, 78368, 11332, 506, 35016, 9383, 38586, 580, 1061, 13343, 531, 1586, 910, 1595, 2033,
    1343, 20389, 532, 48312, 236761, 3656, 3446, 236764, 506, 15123, 1093, 711, 2214, 236764, 532,
    668, 25159, 506, 25315, 12853, 914, 8709, 1053, 11497,
];

fn fidelity(model: &str, toks: &[u32], max_kl: f64, min_agree: f64) {
    let g = Arc::new(Gguf::open(model_path(model)).unwrap());
    let run = |backend| {
        let mut r = Runner::load_with(
            Arc::clone(&g),
            RunnerOptions {
                n_ctx: 64,
                threads: 2,
                backend,
                kv_type: smelt_engine::KvType::F16,
            },
        )
        .unwrap();
        let n_vocab = r.arch().n_vocab();
        (r.eval(toks, Output::AllLogits).unwrap(), n_vocab)
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
    fidelity(SMOLLM2, SMOLLM2_TOKENS, 5e-3, 0.96);
}

#[test]
fn gemma3_fast_agrees_with_reference() {
    fidelity(GEMMA3, GEMMA3_TOKENS, 6.5e-3, 0.88);
}
