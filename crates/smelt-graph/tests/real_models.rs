//! Kernel counts of the fused plans of the real models' graphs.

use smelt_gguf::Gguf;
use smelt_graph::{fuse, KernelKind, Plan};
use smelt_models::Output;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

fn plans(model: &str) -> (usize, Vec<(usize, Output, Plan)>) {
    let g = Gguf::open(model_path(model)).unwrap();
    let m = smelt_models::load(&g).unwrap();
    let mut out = Vec::new();
    for (n, mode) in [
        (1, Output::LastLogits),
        (9, Output::LastLogits),
        (9, Output::AllLogits),
        (4, Output::Hidden),
    ] {
        let p = fuse(&m.build(n, mode));
        p.validate();
        out.push((n, mode, p));
    }
    (m.n_layer(), out)
}

fn check(model: &str) {
    let (n_layer, plans) = plans(model);
    for (n, mode, p) in plans {
        let attn = p
            .kernels()
            .iter()
            .filter(|k| matches!(k.kind, KernelKind::Attention { .. }))
            .count();
        assert_eq!(attn, n_layer);
        // Five per layer, plus the final norm and output head (a rows kernel for hidden states).
        assert_eq!(
            p.kernels().len(),
            5 * n_layer + 1,
            "{model} n={n} {mode:?}:\n{p}"
        );
    }
}

#[test]
fn smollm2_five_kernels_per_layer() {
    check(SMOLLM2);
}

#[test]
fn gemma3_five_kernels_per_layer() {
    check(GEMMA3);
}
