//! A two-layer test graph over arbitrary (odd) shapes, shared by the backends' tests: every row
//! op, partial RoPE, NEOX, per-head norms, biases, residuals, GELU and SiLU gates, softcapping,
//! sliding windows and GQA; and the GGUF of its weights.

use std::sync::Arc;

use smelt_gguf::{GgmlType, Gguf, GgufWriter};
use smelt_graph::{Graph, NodeId, WeightId, WeightSpec};

/// The graph's shapes.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
}

/// Two odd shape sets the backends' tests run: rows of 50, 783 and 3 values, a partial RoPE,
/// one and two KV heads.
pub const SHAPES: [Dims; 2] = [
    Dims {
        n_embd: 50,
        n_head: 5,
        n_head_kv: 1,
        head_dim: 10,
        n_rot: 6,
        n_ff: 783,
        n_vocab: 3,
    },
    Dims {
        n_embd: 3,
        n_head: 2,
        n_head_kv: 2,
        head_dim: 6,
        n_rot: 2,
        n_ff: 50,
        n_vocab: 7,
    },
];

/// Where the graph's weights are declared ([`Weights`] is the usual one).
pub trait AddWeight {
    /// Declare a `[rows, cols]` weight of values `offset + scale * r`, r in [-1, 1).
    fn add(&mut self, g: &mut Graph, rows: usize, cols: usize, scale: f32, offset: f32)
        -> WeightId;
}

/// Weights declared in order (`w0`, `w1`, ...), with the values drawn for them from `next`
/// (kept for the reference backend and the GGUF file).
pub struct Weights<R: FnMut() -> f32> {
    pub specs: Vec<WeightSpec>,
    pub data: Vec<Vec<f32>>,
    /// Whether `add` draws values (off when only the graph's shapes are wanted).
    pub draw: bool,
    next: R,
}

impl<R: FnMut() -> f32> Weights<R> {
    /// Values from `next`, uniform in [-1, 1).
    pub fn new(next: R) -> Self {
        Weights {
            specs: Vec::new(),
            data: Vec::new(),
            draw: true,
            next,
        }
    }

    /// The weights as a GGUF file of `dtype` (one-row weights stay F32).
    pub fn gguf(&self, dtype: GgmlType) -> Arc<Gguf> {
        let weights = self.specs.iter().zip(&self.data);
        gguf(
            weights.map(|(s, d)| (s.name.as_str(), s.shape, d.as_slice())),
            dtype,
        )
    }

    /// Every weight as the f32 values `file` (from [`Weights::gguf`]) holds: the reference
    /// backend's weights, rounded as the file rounds them.
    pub fn dequantized(&self, file: &Gguf) -> Vec<Vec<f32>> {
        self.specs
            .iter()
            .map(|s| {
                let t = file.tensor(&s.name).unwrap();
                smelt_quant::dequantize_to_vec(t.dtype, file.tensor_data(t)).unwrap()
            })
            .collect()
    }
}

impl<R: FnMut() -> f32> AddWeight for Weights<R> {
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
        let n = if self.draw { rows * cols } else { 0 };
        let next = &mut self.next;
        self.data
            .push((0..n).map(|_| offset + scale * next()).collect());
        id
    }
}

/// Two layers: a llama-like one (bias, partial RoPE, SiLU gate) and a Gemma-like one (NEOX,
/// QK-norm, post-norms, GELU gate, sliding window), then a softcapped head tied to the
/// embedding, over every row or (`last_row`) the last one.
pub fn graph(d: &Dims, n: usize, w: &mut impl AddWeight, last_row: bool) -> Graph {
    build(d, n, w, usize::from(last_row), false)
}

/// [`graph`] (or, `qwen`, [`graph_qwen`]) for a batch step of `n` sequences of one row each:
/// the head takes the last row of each (`Output::SeqLogits`).
pub fn graph_batch(d: &Dims, n: usize, w: &mut impl AddWeight, qwen: bool) -> Graph {
    build(d, n, w, n, qwen)
}

/// [`graph`] with a Qwen-like second layer: NEOX RoPE and biases, no QK-norm (the GPU backend
/// finishes such RoPE pairs in the warp that computes them).
pub fn graph_qwen(d: &Dims, n: usize, w: &mut impl AddWeight, last_row: bool) -> Graph {
    build(d, n, w, usize::from(last_row), true)
}

/// `last`: how many sequences' last rows the head takes (0: every row).
fn build(d: &Dims, n: usize, w: &mut impl AddWeight, last: usize, qwen: bool) -> Graph {
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
        if gemma && !qwen {
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
        let n_rot = if gemma && !qwen { d.head_dim } else { d.n_rot };
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
    let mut x = g.rms_norm(x, Some(on), 1e-5, d.n_embd, "output_norm");
    if last > 0 {
        x = g.last_rows(x, last, "last");
    }
    let out = g.matmul(x, tok, "logits");
    let out = g.softcap(out, 3.0, "softcap");
    g.set_output(out);
    g
}

/// A GGUF holding `weights` (name, `[rows, cols]`, values) quantised to `dtype`; 1-D weights
/// stay F32, as in real files.
pub fn gguf<'a>(
    weights: impl IntoIterator<Item = (&'a str, [usize; 2], &'a [f32])>,
    dtype: GgmlType,
) -> Arc<Gguf> {
    let mut wr = GgufWriter::new();
    for (name, [rows, cols], data) in weights {
        let t = if rows == 1 { GgmlType::F32 } else { dtype };
        let dims: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        wr.add_tensor(
            name.to_string(),
            &dims,
            t,
            smelt_quant::quantize_to_vec(t, data).unwrap(),
        )
        .unwrap();
    }
    Arc::new(Gguf::from_bytes(wr.to_bytes().unwrap()).unwrap())
}
