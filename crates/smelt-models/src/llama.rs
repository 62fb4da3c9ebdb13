//! The llama family: Llama 2/3, Mistral, SmolLM (arch "llama"), Qwen2 (QKV biases) and Qwen3
//! (per-head QK-norm). Pre-norm decoder, RMSNorm, RoPE, GQA attention, SwiGLU FFN.

use smelt_gguf::Gguf;
use smelt_graph::{Graph, NodeId, WeightId};

use crate::{Architecture, Meta, ModelError, Output, WeightTable};

struct Layer {
    attn_norm: WeightId, // [n_embd]
    wq: WeightId,        // [n_head * head_dim, n_embd]
    wk: WeightId,        // [n_head_kv * head_dim, n_embd]
    wv: WeightId,        // [n_head_kv * head_dim, n_embd]
    bq: Option<WeightId>,
    bk: Option<WeightId>,
    bv: Option<WeightId>,
    q_norm: Option<WeightId>, // [head_dim]
    k_norm: Option<WeightId>, // [head_dim]
    wo: WeightId,             // [n_embd, n_head * head_dim]
    ffn_norm: WeightId,       // [n_embd]
    gate: WeightId,           // [n_ff, n_embd]
    up: WeightId,             // [n_ff, n_embd]
    down: WeightId,           // [n_embd, n_ff]
}

struct Llama {
    arch: String,
    n_embd: usize,
    n_vocab: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_rot: usize,
    n_ctx_train: usize,
    eps: f32,
    rope_base: f32,
    rope_scale: f32,
    neox: bool,
    weights: WeightTable,
    tok_embd: WeightId, // [n_vocab, n_embd]
    rope_freqs: Option<WeightId>,
    layers: Vec<Layer>,
    output_norm: WeightId,
    output: WeightId, // [n_vocab, n_embd], tied to tok_embd when absent
}

pub(crate) fn load(g: &Gguf, arch: &str) -> Result<Box<dyn Architecture>, ModelError> {
    let m = Meta { gguf: g, arch };
    let n_embd = m.positive("embedding_length", m.u32_req("embedding_length")?)?;
    let n_layer = m.positive("block_count", m.u32_req("block_count")?)?;
    let n_ff = m.positive("feed_forward_length", m.u32_req("feed_forward_length")?)?;
    let n_head = m.positive("attention.head_count", m.u32_req("attention.head_count")?)?;
    let n_head_kv = m.positive(
        "attention.head_count_kv",
        m.u32_or("attention.head_count_kv", n_head)?,
    )?;
    if n_head % n_head_kv != 0 {
        return Err(ModelError::Invalid(format!(
            "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
        )));
    }
    let head_dim = m.positive(
        "attention.key_length",
        m.u32_or("attention.key_length", n_embd / n_head)?,
    )?;
    let v_dim = m.u32_or("attention.value_length", head_dim)?;
    if v_dim != head_dim {
        return Err(ModelError::Invalid(format!(
            "value_length {v_dim} differs from key_length {head_dim}"
        )));
    }
    let n_rot = m.u32_or("rope.dimension_count", head_dim)?;
    if n_rot > head_dim || n_rot % 2 != 0 {
        return Err(ModelError::Invalid(format!(
            "rope.dimension_count {n_rot} with head_dim {head_dim}"
        )));
    }
    let eps = m.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?;
    let rope_base = m.f32_or("rope.freq_base", 10000.0)?;
    let rope_scale = rope_freq_scale(&m)?;
    let n_ctx_train = m.u32_or("context_length", 2048)?;
    // Llama and Mistral GGUFs store Q/K permuted for pairwise (2i, 2i+1) rotation; Qwen keeps
    // the Hugging Face layout, which rotates halves (NEOX).
    let neox = matches!(arch, "qwen2" | "qwen3");

    let mut w = WeightTable::default();
    let tok = g
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
    let n_vocab = tok.dims.get(1).copied().unwrap_or(0) as usize;
    let tok_embd = w.require(g, "token_embd.weight", &[n_embd, n_vocab])?;
    let (q_out, kv_out) = (n_head * head_dim, n_head_kv * head_dim);
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let t = |s: &str| format!("blk.{i}.{s}.weight");
        let b = |s: &str| format!("blk.{i}.{s}.bias");
        layers.push(Layer {
            attn_norm: w.require(g, &t("attn_norm"), &[n_embd])?,
            wq: w.require(g, &t("attn_q"), &[n_embd, q_out])?,
            wk: w.require(g, &t("attn_k"), &[n_embd, kv_out])?,
            wv: w.require(g, &t("attn_v"), &[n_embd, kv_out])?,
            bq: w.optional(g, &b("attn_q"), &[q_out])?,
            bk: w.optional(g, &b("attn_k"), &[kv_out])?,
            bv: w.optional(g, &b("attn_v"), &[kv_out])?,
            q_norm: w.optional(g, &t("attn_q_norm"), &[head_dim])?,
            k_norm: w.optional(g, &t("attn_k_norm"), &[head_dim])?,
            wo: w.require(g, &t("attn_output"), &[q_out, n_embd])?,
            ffn_norm: w.require(g, &t("ffn_norm"), &[n_embd])?,
            gate: w.require(g, &t("ffn_gate"), &[n_embd, n_ff])?,
            up: w.require(g, &t("ffn_up"), &[n_embd, n_ff])?,
            down: w.require(g, &t("ffn_down"), &[n_ff, n_embd])?,
        });
    }
    let output_norm = w.require(g, "output_norm.weight", &[n_embd])?;
    let output = w
        .optional(g, "output.weight", &[n_embd, n_vocab])?
        .unwrap_or(tok_embd);
    let rope_freqs = w.optional(g, "rope_freqs.weight", &[n_rot / 2])?;
    Ok(Box::new(Llama {
        arch: arch.to_string(),
        n_embd,
        n_vocab,
        n_head,
        n_head_kv,
        head_dim,
        n_rot,
        n_ctx_train,
        eps,
        rope_base,
        rope_scale,
        neox,
        weights: w,
        tok_embd,
        rope_freqs,
        layers,
        output_norm,
        output,
    }))
}

/// `rope.scaling.type` linear (or a bare factor) divides positions by the factor; YaRN and
/// other schemes are refused rather than run wrong.
pub(crate) fn rope_freq_scale(m: &Meta) -> Result<f32, ModelError> {
    let factor = m.f32_opt("rope.scaling.factor")?;
    match (m.str_opt("rope.scaling.type")?, factor) {
        (None | Some("none"), _) | (Some("linear"), None) => Ok(1.0),
        (Some("linear"), Some(f)) if f > 0.0 => Ok(1.0 / f),
        (t, f) => Err(ModelError::Invalid(format!(
            "unsupported rope scaling {t:?} factor {f:?}"
        ))),
    }
}

impl Llama {
    fn attention(&self, g: &mut Graph, l: &Layer, il: usize, x: NodeId) -> NodeId {
        let hd = self.head_dim;
        let h = g.rms_norm(
            x,
            Some(l.attn_norm),
            self.eps,
            self.n_embd,
            &format!("attn_norm.{il}"),
        );
        let mut q = g.matmul(h, l.wq, &format!("q.{il}"));
        let mut k = g.matmul(h, l.wk, &format!("k.{il}"));
        let mut v = g.matmul(h, l.wv, &format!("v.{il}"));
        if let Some(b) = l.bq {
            q = g.add_bias(q, b, &format!("q_bias.{il}"));
        }
        if let Some(b) = l.bk {
            k = g.add_bias(k, b, &format!("k_bias.{il}"));
        }
        if let Some(b) = l.bv {
            v = g.add_bias(v, b, &format!("v_bias.{il}"));
        }
        if let Some(n) = l.q_norm {
            q = g.rms_norm(q, Some(n), self.eps, hd, &format!("q_norm.{il}"));
        }
        if let Some(n) = l.k_norm {
            k = g.rms_norm(k, Some(n), self.eps, hd, &format!("k_norm.{il}"));
        }
        let (base, scale, neox, f) = (self.rope_base, self.rope_scale, self.neox, self.rope_freqs);
        let q = g.rope(
            q,
            hd,
            self.n_rot,
            base,
            scale,
            neox,
            f,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            hd,
            self.n_rot,
            base,
            scale,
            neox,
            f,
            &format!("k_rope.{il}"),
        );
        let s = 1.0 / (hd as f32).sqrt();
        let a = g.attention(
            q,
            k,
            v,
            il,
            self.n_head,
            self.n_head_kv,
            hd,
            s,
            None,
            &format!("attn.{il}"),
        );
        g.matmul(a, l.wo, &format!("attn_out.{il}"))
    }

    fn ffn(&self, g: &mut Graph, l: &Layer, il: usize, x: NodeId) -> NodeId {
        let h = g.rms_norm(
            x,
            Some(l.ffn_norm),
            self.eps,
            self.n_embd,
            &format!("ffn_norm.{il}"),
        );
        let gate = g.matmul(h, l.gate, &format!("ffn_gate.{il}"));
        let up = g.matmul(h, l.up, &format!("ffn_up.{il}"));
        let act = g.silu(gate, &format!("ffn_silu.{il}"));
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        g.matmul(m, l.down, &format!("ffn_down.{il}"))
    }
}

impl Architecture for Llama {
    fn arch(&self) -> &str {
        &self.arch
    }
    fn weights(&self) -> &WeightTable {
        &self.weights
    }
    fn kv_widths(&self) -> Vec<usize> {
        vec![self.n_head_kv * self.head_dim; self.layers.len()]
    }
    fn n_embd(&self) -> usize {
        self.n_embd
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_layer(&self) -> usize {
        self.layers.len()
    }
    fn context_length(&self) -> usize {
        self.n_ctx_train
    }

    fn build(&self, n_tokens: usize, output: Output) -> Graph {
        let mut g = self.weights.graph(n_tokens);
        let mut x = g.embed(self.tok_embd, "embd"); // [n_tokens, n_embd]
        for (il, l) in self.layers.iter().enumerate() {
            let a = self.attention(&mut g, l, il, x);
            x = g.add(x, a, &format!("attn_res.{il}"));
            let f = self.ffn(&mut g, l, il, x);
            x = g.add(x, f, &format!("ffn_res.{il}"));
        }
        match output {
            Output::LastLogits => x = g.last_row(x, "last"),
            Output::SeqLogits(n) => x = g.last_rows(x, n, "last"),
            Output::AllLogits | Output::Hidden => {}
        }
        let x = g.rms_norm(
            x,
            Some(self.output_norm),
            self.eps,
            self.n_embd,
            "output_norm",
        );
        let out = match output {
            Output::Hidden => x,
            _ => g.matmul(x, self.output, "logits"), // [rows, n_vocab]
        };
        g.set_output(out);
        g
    }
}
