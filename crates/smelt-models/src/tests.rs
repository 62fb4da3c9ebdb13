use smelt_gguf::Gguf;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

use crate::{load, Output};

#[test]
fn smollm2_loads() {
    let g = Gguf::open(model_path(SMOLLM2)).unwrap();
    let m = load(&g).unwrap();
    assert_eq!(m.arch(), "llama");
    assert_eq!(m.n_layer(), 30);
    assert_eq!(m.n_embd(), 576);
    assert_eq!(m.n_vocab(), 49152);
    assert_eq!(m.kv_widths(), vec![3 * 64; 30]);
    let graph = m.build(5, Output::LastLogits);
    assert_eq!(graph.shape(graph.output()), [1, 49152]);
    // 7 matmuls per layer plus the output head.
    let matmuls = graph
        .op_counts()
        .into_iter()
        .find(|(k, _)| *k == "matmul")
        .unwrap()
        .1;
    assert_eq!(matmuls, 30 * 7 + 1);
}

#[test]
fn gemma3_loads() {
    let g = Gguf::open(model_path(GEMMA3)).unwrap();
    let m = load(&g).unwrap();
    assert_eq!(m.arch(), "gemma3");
    assert_eq!(m.n_layer(), 18);
    assert_eq!(m.n_embd(), 640);
    assert_eq!(m.n_vocab(), 262144);
    let graph = m.build(3, Output::AllLogits);
    assert_eq!(graph.shape(graph.output()), [3, 262144]);
    let text = graph.to_string();
    // Layers 5, 11 and 17 are global; the others slide.
    assert!(text.contains("attn.5 = attention"));
}

#[test]
fn unsupported_arch_is_an_error() {
    let mut w = smelt_gguf::GgufWriter::new();
    w.add_metadata("general.architecture", "mamba").unwrap();
    let bytes = w.to_bytes().unwrap();
    let g = Gguf::from_bytes(bytes).unwrap();
    let err = load(&g).err().unwrap().to_string();
    assert!(err.contains("unsupported architecture 'mamba'"), "{err}");
}
