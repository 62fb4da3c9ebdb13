//! The fast backend against the reference on tiny random-weight models of both architectures,
//! built through smelt-models: fused equals unfused, cached decode equals a full evaluation,
//! thread counts agree.

use std::sync::Arc;

use smelt_gguf::{GgmlType, Gguf, GgufWriter};
use smelt_graph::FuseOptions;
use smelt_models::{Architecture, Output};

use super::{FastBackend, FastKvCache, KvType};
use crate::{KvCache, ReferenceBackend};

/// A deterministic generator (xorshift64*), uniform in [-1, 1).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub(crate) struct Spec {
    pub arch: &'static str,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub wtype: GgmlType,
    /// Qwen2-style QKV biases.
    pub bias: bool,
}

/// A GGUF of `spec`'s shape with random weights quantised to `spec.wtype`.
pub(crate) fn synth(spec: &Spec, seed: u64) -> Arc<Gguf> {
    let mut rng = Rng(seed | 1);
    let mut w = GgufWriter::new();
    let a = spec.arch;
    let m = |w: &mut GgufWriter, k: &str, v: u32| {
        w.add_metadata(format!("{a}.{k}"), v).unwrap();
    };
    w.add_metadata("general.architecture", a).unwrap();
    m(&mut w, "embedding_length", spec.n_embd as u32);
    m(&mut w, "block_count", spec.n_layer as u32);
    m(&mut w, "feed_forward_length", spec.n_ff as u32);
    m(&mut w, "attention.head_count", spec.n_head as u32);
    m(&mut w, "attention.head_count_kv", spec.n_head_kv as u32);
    m(&mut w, "attention.key_length", spec.head_dim as u32);
    if a == "gemma3" {
        m(&mut w, "attention.sliding_window", 3);
        m(&mut w, "attention.sliding_window_pattern", 2);
    }
    let mut tensor = |w: &mut GgufWriter,
                      name: &str,
                      cols: usize,
                      rows: usize,
                      dtype: GgmlType,
                      scale: f32,
                      offset: f32| {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| offset + scale * rng.next())
            .collect();
        let bytes = smelt_quant::quantize_to_vec(dtype, &v).unwrap();
        let dims: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        w.add_tensor(name, &dims, dtype, bytes).unwrap();
    };
    let (e, qo, kvo) = (
        spec.n_embd,
        spec.n_head * spec.head_dim,
        spec.n_head_kv * spec.head_dim,
    );
    let wt = spec.wtype;
    let s = 1.0 / (e as f32).sqrt();
    tensor(&mut w, "token_embd.weight", e, spec.n_vocab, wt, 1.0, 0.0);
    for i in 0..spec.n_layer {
        let n = |x: &str| format!("blk.{i}.{x}.weight");
        tensor(&mut w, &n("attn_norm"), e, 1, GgmlType::F32, 0.2, 1.0);
        tensor(&mut w, &n("attn_q"), e, qo, wt, s, 0.0);
        tensor(&mut w, &n("attn_k"), e, kvo, wt, s, 0.0);
        tensor(&mut w, &n("attn_v"), e, kvo, wt, s, 0.0);
        if spec.bias {
            tensor(
                &mut w,
                &format!("blk.{i}.attn_q.bias"),
                qo,
                1,
                GgmlType::F32,
                0.1,
                0.0,
            );
            tensor(
                &mut w,
                &format!("blk.{i}.attn_k.bias"),
                kvo,
                1,
                GgmlType::F32,
                0.1,
                0.0,
            );
            tensor(
                &mut w,
                &format!("blk.{i}.attn_v.bias"),
                kvo,
                1,
                GgmlType::F32,
                0.1,
                0.0,
            );
        }
        if a == "gemma3" {
            tensor(
                &mut w,
                &n("attn_q_norm"),
                spec.head_dim,
                1,
                GgmlType::F32,
                0.2,
                1.0,
            );
            tensor(
                &mut w,
                &n("attn_k_norm"),
                spec.head_dim,
                1,
                GgmlType::F32,
                0.2,
                1.0,
            );
            tensor(
                &mut w,
                &n("post_attention_norm"),
                e,
                1,
                GgmlType::F32,
                0.2,
                1.0,
            );
            tensor(&mut w, &n("post_ffw_norm"), e, 1, GgmlType::F32, 0.2, 1.0);
        }
        tensor(
            &mut w,
            &n("attn_output"),
            qo,
            e,
            wt,
            1.0 / (qo as f32).sqrt(),
            0.0,
        );
        tensor(&mut w, &n("ffn_norm"), e, 1, GgmlType::F32, 0.2, 1.0);
        tensor(&mut w, &n("ffn_gate"), e, spec.n_ff, wt, s, 0.0);
        tensor(&mut w, &n("ffn_up"), e, spec.n_ff, wt, s, 0.0);
        tensor(
            &mut w,
            &n("ffn_down"),
            spec.n_ff,
            e,
            wt,
            1.0 / (spec.n_ff as f32).sqrt(),
            0.0,
        );
    }
    tensor(&mut w, "output_norm.weight", e, 1, GgmlType::F32, 0.2, 1.0);
    if a != "gemma3" {
        tensor(&mut w, "output.weight", e, spec.n_vocab, wt, s, 0.0);
    }
    Arc::new(Gguf::from_bytes(w.to_bytes().unwrap()).unwrap())
}

pub(crate) fn reference(g: &Gguf, arch: &dyn Architecture, threads: usize) -> ReferenceBackend {
    let w = arch
        .weights()
        .entries()
        .iter()
        .map(|e| {
            let t = g.tensor(&e.name).unwrap();
            smelt_quant::dequantize_to_vec(t.dtype, g.tensor_data(t)).unwrap()
        })
        .collect();
    ReferenceBackend::new(w, threads)
}

pub(crate) fn small(arch: &'static str, wtype: GgmlType, bias: bool) -> Spec {
    // K-quant rows are 256 values: the attention output's input (4 heads) must be too.
    let (k, head_dim) = if wtype.block_size() == 256 {
        (256, 64)
    } else {
        (64, 32)
    };
    Spec {
        arch,
        n_embd: k,
        n_layer: 2,
        n_head: 4,
        n_head_kv: 2,
        head_dim,
        n_ff: 2 * k,
        n_vocab: 40,
        wtype,
        bias,
    }
}

pub(crate) fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

const TOKENS: [u32; 9] = [3, 17, 5, 39, 0, 22, 8, 8, 31];

/// Fast logits (with the given fusion) of every token of one prompt, and their largest
/// difference from the reference's, relative to the largest logit.
fn compare(
    spec: &Spec,
    threads: usize,
    fusion: FuseOptions,
    exact: bool,
    kv_type: KvType,
) -> (Vec<f32>, f32) {
    let g = synth(spec, 7);
    let arch = smelt_models::load(&g).unwrap();
    let n = TOKENS.len();
    let positions: Vec<u32> = (0..n as u32).collect();
    let graph = arch.build(n, Output::AllLogits);
    let rb = reference(&g, arch.as_ref(), 1);
    let mut rkv = KvCache::new(16, &arch.kv_widths());
    let want = rb.execute(&graph, &TOKENS, &positions, &mut rkv);
    let mut fb = FastBackend::new(Arc::clone(&g), &arch.weights().specs(), threads).unwrap();
    fb.set_fusion(fusion);
    fb.set_exact(exact);
    let mut kv = FastKvCache::with_type(16, &arch.kv_widths(), kv_type).unwrap();
    let prog = fb.lower(&graph, &kv).unwrap();
    let got = fb
        .execute(&prog, &TOKENS, &positions, &mut kv)
        .unwrap()
        .to_vec();
    assert!(got.iter().all(|x| x.is_finite()));
    let d = max_rel_diff(&got, &want);
    (got, d)
}

#[test]
fn fused_matches_reference_on_both_architectures() {
    for arch in ["llama", "gemma3"] {
        for wtype in [
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::F16,
        ] {
            let bias = arch == "llama" && wtype == GgmlType::Q8_0;
            let spec = small(arch, wtype, bias);
            // With the reference's arithmetic in the matmuls, only the f16 keys and values
            // (~5e-4 relative rounding) separate the two.
            let exact = compare(&spec, 3, FuseOptions::ALL, true, KvType::F16);
            assert!(exact.1 < 1e-3, "{arch} {wtype:?} exact: {}", exact.1);
            // One kernel per op computes the same numbers, on any thread count.
            let unfused = compare(&spec, 2, FuseOptions::NONE, true, KvType::F16);
            assert!(
                max_rel_diff(&exact.0, &unfused.0) < 1e-6,
                "{arch} {wtype:?}"
            );
            // The quantised kernels add the 8-bit activation rounding.
            let fast = compare(&spec, 2, FuseOptions::ALL, false, KvType::F16);
            assert!(fast.1 < 3e-2, "{arch} {wtype:?} quantised: {}", fast.1);
            let fast_unfused = compare(&spec, 3, FuseOptions::NONE, false, KvType::F16);
            assert!(
                max_rel_diff(&fast.0, &fast_unfused.0) < 1e-5,
                "{arch} {wtype:?} quantised fused vs unfused"
            );
        }
    }
}

#[test]
fn cached_decode_equals_full_evaluation() {
    for (arch, kv_type) in [
        ("llama", KvType::F16),
        ("gemma3", KvType::F16),
        ("llama", KvType::Q8_0),
        ("gemma3", KvType::Q8_0),
    ] {
        // Three query heads per KV head of 64 (the tiled paths), as SmolLM2 has.
        let spec = Spec {
            n_head: 6,
            n_head_kv: 2,
            head_dim: 64,
            ..small(arch, GgmlType::Q8_0, false)
        };
        let g = synth(&spec, 11);
        let a = smelt_models::load(&g).unwrap();
        let mut fb = FastBackend::new(Arc::clone(&g), &a.weights().specs(), 2).unwrap();
        let n = TOKENS.len();
        let mut kv = FastKvCache::with_type(32, &a.kv_widths(), kv_type).unwrap();
        let full = fb.lower(&a.build(n, Output::AllLogits), &kv).unwrap();
        let positions: Vec<u32> = (0..n as u32).collect();
        let all = fb
            .execute(&full, &TOKENS, &positions, &mut kv)
            .unwrap()
            .to_vec();
        let vocab = a.n_vocab();
        let mut kv = FastKvCache::with_type(32, &a.kv_widths(), kv_type).unwrap();
        let pre = fb.lower(&a.build(4, Output::LastLogits), &kv).unwrap();
        let step = fb.lower(&a.build(1, Output::LastLogits), &kv).unwrap();
        let first = fb
            .execute(&pre, &TOKENS[..4], &positions[..4], &mut kv)
            .unwrap()
            .to_vec();
        assert!(
            max_rel_diff(&first, &all[3 * vocab..4 * vocab]) < 1e-5,
            "{arch} {kv_type:?} prefill last row"
        );
        for t in 4..n {
            let got = fb
                .execute(&step, &TOKENS[t..t + 1], &positions[t..t + 1], &mut kv)
                .unwrap()
                .to_vec();
            let d = max_rel_diff(&got, &all[t * vocab..(t + 1) * vocab]);
            assert!(d < 1e-4, "{arch} {kv_type:?} token {t}: {d}");
        }
        let stats = fb.stats();
        assert_eq!(stats.executions, 2 + (n as u64 - 4));
        assert_eq!(stats.barriers, stats.dispatches);
        // Five kernels per layer plus the head, for every shape.
        assert_eq!(step.dispatches(), 5 * a.n_layer() + 1);
        // A program runs only with caches of the shape it was lowered for.
        let other = FastKvCache::with_type(
            32,
            &a.kv_widths(),
            if kv_type == KvType::F16 {
                KvType::Q8_0
            } else {
                KvType::F16
            },
        );
        let e = fb
            .execute(&step, &[1], &[0], &mut other.unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("KV"), "{e}");
    }
}

#[test]
fn q8_0_kv_cache_stays_close_to_the_reference() {
    for arch in ["llama", "gemma3"] {
        let spec = small(arch, GgmlType::Q8_0, false);
        let (_, d) = compare(&spec, 2, FuseOptions::ALL, true, KvType::Q8_0);
        assert!(d < 2e-2, "{arch}: {d}");
    }
}

#[test]
fn hidden_output_and_bad_requests() {
    let spec = small("gemma3", GgmlType::Q4_0, false);
    let g = synth(&spec, 5);
    let a = smelt_models::load(&g).unwrap();
    let mut fb = FastBackend::new(Arc::clone(&g), &a.weights().specs(), 2).unwrap();
    let graph = a.build(3, Output::Hidden);
    let mut kv = FastKvCache::new(8, &a.kv_widths());
    let prog = fb.lower(&graph, &kv).unwrap();
    let rb = reference(&g, a.as_ref(), 1);
    let mut rkv = KvCache::new(8, &a.kv_widths());
    let want = rb.execute(&graph, &[1, 2, 3], &[0, 1, 2], &mut rkv);
    let got = fb
        .execute(&prog, &[1, 2, 3], &[0, 1, 2], &mut kv)
        .unwrap()
        .to_vec();
    assert!(max_rel_diff(&got, &want) < 3e-2);
    let e = fb
        .execute(&prog, &[1, 2], &[0, 1], &mut kv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 tokens"), "{e}");
    let e = fb
        .execute(&prog, &[1, 2, 3], &[0, 1, 8], &mut kv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position 8 outside"), "{e}");
    let e = fb
        .execute(&prog, &[1, 2, 40], &[0, 1, 2], &mut kv)
        .unwrap_err()
        .to_string();
    assert!(e.contains("embedding row 40"), "{e}");
}
