//! Kernel counts of fused plans on small graphs shaped like the real architectures.

use super::*;
use crate::WeightId;

struct Dims {
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_ff: usize,
    n_vocab: usize,
}

const D: Dims = Dims {
    n_embd: 32,
    n_head: 4,
    n_head_kv: 2,
    head_dim: 8,
    n_ff: 48,
    n_vocab: 50,
};

/// Declares weights on demand, numbering them in order of first use.
struct W<'a> {
    g: &'a mut Graph,
    next: u32,
}

impl W<'_> {
    fn w(&mut self, rows: usize, cols: usize) -> WeightId {
        let id = WeightId(self.next);
        self.next += 1;
        self.g.declare_weight(id, [rows, cols]);
        id
    }
}

/// A llama-family graph (optional QKV biases and QK-norm, as Qwen2 and Qwen3 have).
fn llama(n_tokens: usize, n_layer: usize, bias: bool, qk_norm: bool, last: bool) -> Graph {
    let mut g = Graph::new(n_tokens);
    let d = &D;
    let (qo, kvo) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let mut w = W { g: &mut g, next: 0 };
    let tok = w.w(d.n_vocab, d.n_embd);
    let mut ws = Vec::new();
    for _ in 0..n_layer {
        let l = [
            w.w(1, d.n_embd),
            w.w(qo, d.n_embd),
            w.w(kvo, d.n_embd),
            w.w(kvo, d.n_embd),
            w.w(1, qo),
            w.w(1, kvo),
            w.w(1, kvo),
            w.w(1, d.head_dim),
            w.w(1, d.head_dim),
            w.w(d.n_embd, qo),
            w.w(1, d.n_embd),
            w.w(d.n_ff, d.n_embd),
            w.w(d.n_ff, d.n_embd),
            w.w(d.n_embd, d.n_ff),
        ];
        ws.push(l);
    }
    let out_norm = w.w(1, d.n_embd);
    let mut x = g.embed(tok, "embd");
    for (il, l) in ws.iter().enumerate() {
        let h = g.rms_norm(x, Some(l[0]), 1e-5, d.n_embd, &format!("attn_norm.{il}"));
        let mut q = g.matmul(h, l[1], &format!("q.{il}"));
        let mut k = g.matmul(h, l[2], &format!("k.{il}"));
        let mut v = g.matmul(h, l[3], &format!("v.{il}"));
        if bias {
            q = g.add_bias(q, l[4], &format!("q_bias.{il}"));
            k = g.add_bias(k, l[5], &format!("k_bias.{il}"));
            v = g.add_bias(v, l[6], &format!("v_bias.{il}"));
        }
        if qk_norm {
            q = g.rms_norm(q, Some(l[7]), 1e-5, d.head_dim, &format!("q_norm.{il}"));
            k = g.rms_norm(k, Some(l[8]), 1e-5, d.head_dim, &format!("k_norm.{il}"));
        }
        let q = g.rope(
            q,
            d.head_dim,
            d.head_dim,
            1e4,
            1.0,
            false,
            None,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            d.head_dim,
            d.head_dim,
            1e4,
            1.0,
            false,
            None,
            &format!("k_rope.{il}"),
        );
        let a = g.attention(
            q,
            k,
            v,
            il,
            d.n_head,
            d.n_head_kv,
            d.head_dim,
            0.3,
            None,
            &format!("attn.{il}"),
        );
        let o = g.matmul(a, l[9], &format!("attn_out.{il}"));
        x = g.add(x, o, &format!("attn_res.{il}"));
        let h = g.rms_norm(x, Some(l[10]), 1e-5, d.n_embd, &format!("ffn_norm.{il}"));
        let gate = g.matmul(h, l[11], &format!("ffn_gate.{il}"));
        let up = g.matmul(h, l[12], &format!("ffn_up.{il}"));
        let act = g.silu(gate, &format!("ffn_silu.{il}"));
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let f = g.matmul(m, l[13], &format!("ffn_down.{il}"));
        x = g.add(x, f, &format!("ffn_res.{il}"));
    }
    if last {
        x = g.last_row(x, "last");
    }
    let x = g.rms_norm(x, Some(out_norm), 1e-5, d.n_embd, "output_norm");
    let out = g.matmul(x, tok, "logits");
    g.set_output(out);
    g
}

/// A Gemma 3 graph: scaled embeddings, QK-norm, post-norms, GELU gate, softcapped logits.
fn gemma(n_tokens: usize, n_layer: usize, last: bool, hidden: bool) -> Graph {
    let mut g = Graph::new(n_tokens);
    let d = &D;
    let (qo, kvo) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let mut w = W { g: &mut g, next: 0 };
    let tok = w.w(d.n_vocab, d.n_embd);
    let mut ws = Vec::new();
    for _ in 0..n_layer {
        ws.push([
            w.w(1, d.n_embd),
            w.w(qo, d.n_embd),
            w.w(kvo, d.n_embd),
            w.w(kvo, d.n_embd),
            w.w(1, d.head_dim),
            w.w(1, d.head_dim),
            w.w(d.n_embd, qo),
            w.w(1, d.n_embd),
            w.w(1, d.n_embd),
            w.w(d.n_ff, d.n_embd),
            w.w(d.n_ff, d.n_embd),
            w.w(d.n_embd, d.n_ff),
            w.w(1, d.n_embd),
        ]);
    }
    let out_norm = w.w(1, d.n_embd);
    let e = g.embed(tok, "embd");
    let mut x = g.scale(e, 5.0, "embd_scaled");
    for (il, l) in ws.iter().enumerate() {
        let h = g.rms_norm(x, Some(l[0]), 1e-6, d.n_embd, &format!("attn_norm.{il}"));
        let q = g.matmul(h, l[1], &format!("q.{il}"));
        let k = g.matmul(h, l[2], &format!("k.{il}"));
        let v = g.matmul(h, l[3], &format!("v.{il}"));
        let q = g.rms_norm(q, Some(l[4]), 1e-6, d.head_dim, &format!("q_norm.{il}"));
        let k = g.rms_norm(k, Some(l[5]), 1e-6, d.head_dim, &format!("k_norm.{il}"));
        let q = g.rope(
            q,
            d.head_dim,
            d.head_dim,
            1e4,
            1.0,
            true,
            None,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            d.head_dim,
            d.head_dim,
            1e4,
            1.0,
            true,
            None,
            &format!("k_rope.{il}"),
        );
        let window = (il % 2 == 0).then_some(3);
        let a = g.attention(
            q,
            k,
            v,
            il,
            d.n_head,
            d.n_head_kv,
            d.head_dim,
            0.3,
            window,
            &format!("attn.{il}"),
        );
        let o = g.matmul(a, l[6], &format!("attn_out.{il}"));
        let p = g.rms_norm(
            o,
            Some(l[7]),
            1e-6,
            d.n_embd,
            &format!("attn_post_norm.{il}"),
        );
        x = g.add(x, p, &format!("attn_res.{il}"));
        let h = g.rms_norm(x, Some(l[8]), 1e-6, d.n_embd, &format!("ffn_norm.{il}"));
        let gate = g.matmul(h, l[9], &format!("ffn_gate.{il}"));
        let up = g.matmul(h, l[10], &format!("ffn_up.{il}"));
        let act = g.gelu_tanh(gate, &format!("ffn_gelu.{il}"));
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let f = g.matmul(m, l[11], &format!("ffn_down.{il}"));
        let p = g.rms_norm(
            f,
            Some(l[12]),
            1e-6,
            d.n_embd,
            &format!("ffn_post_norm.{il}"),
        );
        x = g.add(x, p, &format!("ffn_res.{il}"));
    }
    if last {
        x = g.last_row(x, "last");
    }
    let x = g.rms_norm(x, Some(out_norm), 1e-6, d.n_embd, "output_norm");
    if hidden {
        g.set_output(x);
        return g;
    }
    let out = g.matmul(x, tok, "logits");
    let out = g.softcap(out, 30.0, "logits_softcap");
    g.set_output(out);
    g
}

fn count(p: &Plan, kind: &str) -> usize {
    p.kernel_counts()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, c)| c)
}

#[test]
fn llama_five_kernels_per_layer() {
    for (bias, qk_norm) in [(false, false), (true, false), (false, true), (true, true)] {
        for (n_tokens, last) in [(1, true), (7, true), (7, false)] {
            let g = llama(n_tokens, 3, bias, qk_norm, last);
            let p = fuse(&g);
            p.validate();
            assert_eq!(
                p.kernels().len(),
                3 * 5 + 1,
                "bias {bias} qk_norm {qk_norm} n {n_tokens}:\n{p}"
            );
            assert_eq!(count(&p, "attention"), 3);
            assert_eq!(count(&p, "rows"), 0, "{p}");
        }
    }
}

#[test]
fn llama_kernel_contents() {
    let g = llama(5, 2, true, true, true);
    let p = fuse(&g);
    let text = p.to_string();
    // The first kernel: embedding and norm in the prologue, QKV with bias, QK-norm and RoPE
    // in the epilogue, K and V written straight into the cache.
    let first = text.lines().next().unwrap();
    assert!(first.contains("rows(embd, attn_norm.0)"), "{first}");
    assert!(
        first.contains("| q.0 -> q_bias.0, q_norm.0, q_rope.0"),
        "{first}"
    );
    assert!(first.contains("k_rope.0->kv0.K"), "{first}");
    assert!(first.contains("v_bias.0->kv0.V"), "{first}");
    // The residual stream is materialised by the prologue that computes it.
    assert!(first.contains("embd->b"), "{first}");
    // gate and up share a bundle: silu(gate) * up is computed where both columns are.
    let KernelKind::MatMul { bundles, .. } = &p.kernels()[3].kind else {
        panic!("{text}")
    };
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0].matmuls.len(), 2);
    // QKV: three bundles, Q and K aligned to heads for RoPE and QK-norm.
    let KernelKind::MatMul { bundles, .. } = &p.kernels()[0].kind else {
        panic!("{text}")
    };
    assert_eq!(
        bundles.iter().map(|b| b.align).collect::<Vec<_>>(),
        vec![8, 8, 1]
    );
    // The last kernel selects the last row in its prologue.
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("rows(last, output_norm)"),
        "{text}"
    );
}

#[test]
fn gemma_five_kernels_per_layer() {
    for (n_tokens, last) in [(1, true), (6, true), (6, false)] {
        let g = gemma(n_tokens, 4, last, false);
        let p = fuse(&g);
        p.validate();
        assert_eq!(p.kernels().len(), 4 * 5 + 1, "n {n_tokens}:\n{p}");
        assert_eq!(count(&p, "rows"), 0, "{p}");
    }
    // The post-norm and its residual add run in the next kernel's prologue.
    let p = fuse(&gemma(2, 2, true, false));
    let text = p.to_string();
    assert!(
        text.contains("rows(attn_post_norm.0, attn_res.0, ffn_norm.0)"),
        "{text}"
    );
    assert!(
        text.contains("rows(ffn_post_norm.0, ffn_res.0, attn_norm.1)"),
        "{text}"
    );
    assert!(
        text.contains("rows(ffn_post_norm.1, ffn_res.1, last, output_norm)"),
        "{text}"
    );
    assert!(text.contains("logits -> logits_softcap"), "{text}");
}

#[test]
fn hidden_output_ends_in_a_rows_kernel() {
    let p = fuse(&gemma(3, 2, false, true));
    p.validate();
    assert_eq!(p.kernels().len(), 2 * 5 + 1);
    assert_eq!(count(&p, "rows"), 1);
    assert!(p
        .to_string()
        .lines()
        .last()
        .unwrap()
        .contains("rows(ffn_post_norm.1, ffn_res.1, output_norm)"));
}

#[test]
fn unfused_is_one_kernel_per_op() {
    let g = llama(4, 2, true, true, true);
    let p = fuse_with(&g, FuseOptions::NONE);
    p.validate();
    assert_eq!(p.kernels().len(), g.nodes().len());
    let g = gemma(4, 2, true, false);
    let p = fuse_with(&g, FuseOptions::NONE);
    p.validate();
    assert_eq!(p.kernels().len(), g.nodes().len());
}

#[test]
fn partial_fusion_options_are_valid() {
    for siblings in [false, true] {
        for prologue in [false, true] {
            for epilogue in [false, true] {
                let opts = FuseOptions {
                    siblings,
                    prologue,
                    epilogue,
                };
                for g in [
                    llama(3, 2, true, true, true),
                    gemma(3, 2, true, false),
                    gemma(3, 2, false, true),
                ] {
                    let p = fuse_with(&g, opts);
                    p.validate();
                    let full = fuse(&g).kernels().len();
                    assert!(p.kernels().len() >= full, "{opts:?}");
                }
            }
        }
    }
}

#[test]
fn a_last_row_whose_rows_leak_is_cut() {
    // x feeds both the last-row head and a second output path: its rows must all be computed.
    let mut g = Graph::new(4);
    g.declare_weight(WeightId(0), [10, 8]);
    g.declare_weight(WeightId(1), [6, 8]);
    let e = g.embed(WeightId(0), "embd");
    let x = g.scale(e, 2.0, "x");
    let l = g.last_row(x, "last");
    let m = g.matmul(l, WeightId(1), "head");
    let all = g.matmul(x, WeightId(1), "all");
    let s = g.last_row(all, "all_last");
    let o = g.add(m, s, "sum");
    g.set_output(o);
    let p = fuse(&g);
    p.validate();
    // x is computed over all rows by a rows kernel, then both matmuls read its buffer.
    assert_eq!(p.kernels()[0].kind, KernelKind::Rows);
    assert!(p.buffer_of(NodeId(1)).is_some());
}

#[test]
fn buffers_share_memory_when_lifetimes_do_not_overlap() {
    let g = llama(16, 4, false, false, false);
    let p = fuse(&g);
    p.validate();
    let total: usize = p.buffers().iter().map(|b| b.rows * b.cols).sum();
    assert!(
        p.arena_len() < total / 2,
        "arena {} of {total}",
        p.arena_len()
    );
}
