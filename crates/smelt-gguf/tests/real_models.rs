//! Parse the two real test models and check known facts about them.

use smelt_gguf::{GgmlType, Gguf, Value};
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

/// Checks every model must pass: tensors tile the data section without gaps beyond padding,
/// every data slice has `n_bytes` bytes, and the metadata index agrees with the list.
fn check_common(g: &Gguf) {
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    for (k, v) in g.metadata() {
        assert_eq!(g.get(k), Some(v));
    }
    let mut expected_offset = 0;
    for t in g.tensors() {
        assert_eq!(g.tensor(&t.name), Some(t));
        assert_eq!(t.n_elements, t.dims.iter().product::<u64>());
        assert_eq!(Some(t.n_bytes), t.dtype.bytes_for(t.n_elements));
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        // Both files were written by llama.cpp's tools: packed in order, each padded to 32.
        assert_eq!(t.offset, expected_offset, "{}", t.name);
        expected_offset = (t.offset + t.n_bytes).next_multiple_of(32);
    }
    assert_eq!(g.data_offset() + expected_offset, g.file_size());
}

#[test]
fn smollm2() {
    let g = Gguf::open(model_path(SMOLLM2)).unwrap();
    check_common(&g);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.metadata().len(), 33);
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.get_u32("llama.block_count").unwrap(), Some(30));
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), Some(576));
    assert_eq!(g.get_u64("llama.attention.head_count_kv").unwrap(), Some(3));
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        Some(1e-5)
    );
    assert_eq!(
        g.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(false)
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(g.get_u32("llama.vocab_size").unwrap(), Some(49152));
    let merges = g
        .get_string_array("tokenizer.ggml.merges")
        .unwrap()
        .unwrap();
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges.get(0), Some(&b"\xc4\xa0 t"[..]));
    let types = g
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap();
    assert_eq!(types.len(), 49152);
    assert!(g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap()
        .contains("<|im_start|>"));

    let first = &g.tensors()[0];
    assert_eq!(
        (first.name.as_str(), first.dtype),
        ("token_embd.weight", GgmlType::Q8_0)
    );
    assert_eq!(first.dims, [576, 49152]);
    assert_eq!(g.tensors().last().unwrap().name, "output_norm.weight");
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dtype, q.dims.as_slice(), q.n_bytes),
        (GgmlType::Q4_1, &[576u64, 576][..], 207360)
    );
    // An F32 norm weight read through the slice is finite and non-trivial.
    let norm = g.tensor_data(g.tensor("output_norm.weight").unwrap());
    let w: Vec<f32> = norm
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(w.len(), 576);
    assert!(w.iter().all(|x| x.is_finite()) && w.iter().any(|&x| x != 0.0));
}

#[test]
fn gemma3() {
    let g = Gguf::open(model_path(GEMMA3)).unwrap();
    check_common(&g);
    assert_eq!(g.architecture(), Some("gemma3"));
    assert_eq!(g.tensors().len(), 236);
    assert_eq!(g.get_u32("gemma3.block_count").unwrap(), Some(18));
    assert_eq!(g.get_u32("gemma3.attention.key_length").unwrap(), Some(256));
    assert_eq!(
        g.get_u32("gemma3.attention.sliding_window").unwrap(),
        Some(512)
    );
    assert_eq!(
        g.get_f32("gemma3.rope.freq_base").unwrap(),
        Some(1_000_000.0)
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    let tokens = g
        .get_string_array("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap();
    assert_eq!(tokens.len(), 262144);
    assert_eq!(tokens.get(0), Some(&b"<pad>"[..]));
    let scores = g.get_f32_array("tokenizer.ggml.scores").unwrap().unwrap();
    assert_eq!(scores.len(), 262144);
    assert_eq!(scores[0], -1000.0);
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap()
            .len(),
        262144
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), Some(2));
    assert_eq!(
        g.get("general.tags")
            .and_then(Value::as_array)
            .map(|a| a.len()),
        Some(4)
    );

    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[0], "output_norm.weight");
    assert_eq!(names[1], "token_embd.weight");
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dtype, embd.dims.as_slice()),
        (GgmlType::Q8_0, &[640u64, 262144][..])
    );
    let types: std::collections::BTreeSet<GgmlType> = g.tensors().iter().map(|t| t.dtype).collect();
    for t in [
        GgmlType::F32,
        GgmlType::Q4_K,
        GgmlType::Q5_0,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
    ] {
        assert!(types.contains(&t), "{t} missing");
    }
}

#[test]
fn open_and_from_bytes_agree() {
    let path = model_path(SMOLLM2);
    let a = Gguf::open(&path).unwrap();
    let b = Gguf::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(a.metadata(), b.metadata());
    assert_eq!(a.tensors(), b.tensors());
    assert_eq!(a.data_offset(), b.data_offset());
    for t in a.tensors() {
        assert_eq!(a.tensor_data(t), b.tensor_data(t));
    }
    assert_eq!(a.path(), Some(path.as_path()));
    assert_eq!(b.path(), None);
}
