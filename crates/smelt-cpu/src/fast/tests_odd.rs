//! The fused executor on odd shapes (3, 50, 783 …) against the reference, with F32 and F16
//! weights (any row length): every row op, partial RoPE, NEOX, per-head norms, biases,
//! residuals, GELU and SiLU gates, softcapping, sliding windows and GQA.

use std::sync::Arc;

use smelt_gguf::{GgmlType, Gguf, GgufWriter};
use smelt_graph::{FuseOptions, Graph, NodeId, WeightId};

use super::tests::Rng;
use super::{FastBackend, FastKvCache, WeightSpec};
use crate::{KvCache, ReferenceBackend};

struct Odd {
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_rot: usize,
    n_ff: usize,
    n_vocab: usize,
}

/// Weights declared in order, with random data kept for the reference and the GGUF.
struct Weights {
    specs: Vec<WeightSpec>,
    data: Vec<Vec<f32>>,
    rng: Rng,
}

impl Weights {
    fn add(
        &mut self,
        g: &mut Graph,
        rows: usize,
        cols: usize,
        scale: f32,
        offset: f32,
    ) -> WeightId {
        let id = WeightId(self.specs.len() as u32);
        g.declare_weight(id, [rows, cols]);
        self.specs.push(WeightSpec {
            name: format!("w{}", id.0),
            shape: [rows, cols],
        });
        self.data.push(
            (0..rows * cols)
                .map(|_| offset + scale * self.rng.next())
                .collect(),
        );
        id
    }
}

/// Two layers: a llama-like one (bias, partial RoPE, SiLU gate) and a Gemma-like one (NEOX,
/// QK-norm, post-norms, GELU gate, sliding window), then a softcapped head.
fn graph(d: &Odd, n: usize, w: &mut Weights) -> Graph {
    let mut g = Graph::new(n);
    let (qo, kvo) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let s = 1.0 / (d.n_embd as f32).sqrt();
    let tok = w.add(&mut g, d.n_vocab, d.n_embd, 1.0, 0.0);
    let e = g.embed(tok, "embd");
    let mut x = g.scale(e, 1.5, "embd_scaled");
    for il in 0..2 {
        let gemma = il == 1;
        let norm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(norm), 1e-5, d.n_embd, &format!("attn_norm.{il}"));
        let (wq, wk, wv) = (
            w.add(&mut g, qo, d.n_embd, s, 0.0),
            w.add(&mut g, kvo, d.n_embd, s, 0.0),
            w.add(&mut g, kvo, d.n_embd, s, 0.0),
        );
        let mut q = g.matmul(h, wq, &format!("q.{il}"));
        let mut k = g.matmul(h, wk, &format!("k.{il}"));
        let mut v = g.matmul(h, wv, &format!("v.{il}"));
        if gemma {
            let (qn, kn) = (
                w.add(&mut g, 1, d.head_dim, 0.2, 1.0),
                w.add(&mut g, 1, d.head_dim, 0.2, 1.0),
            );
            q = g.rms_norm(q, Some(qn), 1e-6, d.head_dim, &format!("q_norm.{il}"));
            k = g.rms_norm(k, Some(kn), 1e-6, d.head_dim, &format!("k_norm.{il}"));
        } else {
            let (bq, bk, bv) = (
                w.add(&mut g, 1, qo, 0.1, 0.0),
                w.add(&mut g, 1, kvo, 0.1, 0.0),
                w.add(&mut g, 1, kvo, 0.1, 0.0),
            );
            q = g.add_bias(q, bq, &format!("q_bias.{il}"));
            k = g.add_bias(k, bk, &format!("k_bias.{il}"));
            v = g.add_bias(v, bv, &format!("v_bias.{il}"));
        }
        let n_rot = if gemma { d.head_dim } else { d.n_rot };
        let q = g.rope(
            q,
            d.head_dim,
            n_rot,
            1e4,
            0.5,
            gemma,
            None,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            d.head_dim,
            n_rot,
            1e4,
            0.5,
            gemma,
            None,
            &format!("k_rope.{il}"),
        );
        let window = gemma.then_some(2);
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let a = g.attention(
            q,
            k,
            v,
            il,
            d.n_head,
            d.n_head_kv,
            d.head_dim,
            scale,
            window,
            &format!("attn.{il}"),
        );
        let wo = w.add(&mut g, d.n_embd, qo, 1.0 / (qo as f32).sqrt(), 0.0);
        let mut o = g.matmul(a, wo, &format!("attn_out.{il}"));
        if gemma {
            let pn = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
            o = g.rms_norm(o, Some(pn), 1e-6, d.n_embd, &format!("attn_post_norm.{il}"));
        }
        x = g.add(x, o, &format!("attn_res.{il}"));
        let fnorm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(fnorm), 1e-5, d.n_embd, &format!("ffn_norm.{il}"));
        let (wg, wu) = (
            w.add(&mut g, d.n_ff, d.n_embd, s, 0.0),
            w.add(&mut g, d.n_ff, d.n_embd, s, 0.0),
        );
        let gate = g.matmul(h, wg, &format!("ffn_gate.{il}"));
        let up = g.matmul(h, wu, &format!("ffn_up.{il}"));
        let act: NodeId = if gemma {
            g.gelu_tanh(gate, &format!("ffn_gelu.{il}"))
        } else {
            g.silu(gate, &format!("ffn_silu.{il}"))
        };
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let wd = w.add(&mut g, d.n_embd, d.n_ff, 1.0 / (d.n_ff as f32).sqrt(), 0.0);
        let f = g.matmul(m, wd, &format!("ffn_down.{il}"));
        x = g.add(x, f, &format!("ffn_res.{il}"));
    }
    let on = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
    let x = g.rms_norm(x, Some(on), 1e-5, d.n_embd, "output_norm");
    let out = g.matmul(x, tok, "logits");
    let out = g.softcap(out, 3.0, "softcap");
    g.set_output(out);
    g
}

fn gguf(w: &Weights, dtype: GgmlType) -> Arc<Gguf> {
    let mut wr = GgufWriter::new();
    for (s, d) in w.specs.iter().zip(&w.data) {
        let [rows, cols] = s.shape;
        // 1-D weights stay F32, as in real files.
        let t = if rows == 1 { GgmlType::F32 } else { dtype };
        let dims: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        wr.add_tensor(
            s.name.clone(),
            &dims,
            t,
            smelt_quant::quantize_to_vec(t, d).unwrap(),
        )
        .unwrap();
    }
    Arc::new(Gguf::from_bytes(wr.to_bytes().unwrap()).unwrap())
}

#[test]
fn odd_shapes_match_the_reference() {
    let shapes = [
        Odd {
            n_embd: 50,
            n_head: 5,
            n_head_kv: 1,
            head_dim: 10,
            n_rot: 6,
            n_ff: 783,
            n_vocab: 3,
        },
        Odd {
            n_embd: 3,
            n_head: 2,
            n_head_kv: 2,
            head_dim: 6,
            n_rot: 2,
            n_ff: 50,
            n_vocab: 7,
        },
    ];
    for (si, d) in shapes.iter().enumerate() {
        for dtype in [GgmlType::F32, GgmlType::F16] {
            let mut w = Weights {
                specs: Vec::new(),
                data: Vec::new(),
                rng: Rng(0x9e37_79b9 + si as u64),
            };
            let tokens: Vec<u32> = (0..5).map(|i| (i * 2 % d.n_vocab) as u32).collect();
            let positions: Vec<u32> = (0..5).collect();
            let g = graph(d, tokens.len(), &mut w);
            let file = gguf(&w, dtype);
            // The reference gets the same (rounded) weights the file holds.
            let rw = w
                .specs
                .iter()
                .map(|s| {
                    let t = file.tensor(&s.name).unwrap();
                    smelt_quant::dequantize_to_vec(t.dtype, file.tensor_data(t)).unwrap()
                })
                .collect();
            let widths = [d.n_head_kv * d.head_dim; 2];
            let want = ReferenceBackend::new(rw, 1).execute(
                &g,
                &tokens,
                &positions,
                &mut KvCache::new(8, &widths),
            );
            for (threads, fusion) in [
                (1, FuseOptions::ALL),
                (3, FuseOptions::ALL),
                (2, FuseOptions::NONE),
            ] {
                let mut fb = FastBackend::new(Arc::clone(&file), &w.specs, threads).unwrap();
                fb.set_fusion(fusion);
                let mut kv = FastKvCache::new(8, &widths);
                let prog = fb.lower(&g, &kv).unwrap();
                let got = fb.execute(&prog, &tokens, &positions, &mut kv).unwrap();
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let diff = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // f16 keys and values round at ~5e-4 relative.
                assert!(
                    diff <= 2e-3 * scale,
                    "shape {si} {dtype:?} threads {threads} {fusion:?}: {diff} of {scale}"
                );
            }
        }
    }
}
