//! Gemma 3: interleaved sliding-window and global attention layers with their own RoPE bases,
//! per-head QK-norm, norms before and after both attention and FFN, GELU(tanh)-gated FFN,
//! embeddings scaled by sqrt(n_embd), output tied to the embedding table.

use smelt_gguf::{Array, Gguf, Value};
use smelt_graph::{Graph, NodeId, WeightId};

use crate::{Architecture, Meta, ModelError, Output, WeightTable};

struct Layer {
    attn_norm: WeightId,      // [n_embd]
    wq: WeightId,             // [n_head * head_dim, n_embd]
    wk: WeightId,             // [n_head_kv * head_dim, n_embd]
    wv: WeightId,             // [n_head_kv * head_dim, n_embd]
    q_norm: WeightId,         // [head_dim]
    k_norm: WeightId,         // [head_dim]
    wo: WeightId,             // [n_embd, n_head * head_dim]
    attn_post_norm: WeightId, // [n_embd]
    ffn_norm: WeightId,       // [n_embd]
    gate: WeightId,           // [n_ff, n_embd]
    up: WeightId,             // [n_ff, n_embd]
    down: WeightId,           // [n_embd, n_ff]
    ffn_post_norm: WeightId,  // [n_embd]
    /// Sliding window of this layer (None: global attention).
    window: Option<usize>,
    rope_base: f32,
    rope_scale: f32,
}

struct Gemma3 {
    n_embd: usize,
    n_vocab: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_ctx_train: usize,
    eps: f32,
    attn_scale: f32,
    softcap: Option<f32>,
    weights: WeightTable,
    tok_embd: WeightId, // [n_vocab, n_embd]
    layers: Vec<Layer>,
    output_norm: WeightId,
    output: WeightId,
}

/// Which layers use the sliding window: `sliding_window_pattern` is either a per-layer bool
/// array or a period n (layer il slides unless il % n == n - 1); Gemma 3's default period is 6.
fn swa_layers(g: &Gguf, n_layer: usize) -> Result<Vec<bool>, ModelError> {
    let key = "gemma3.attention.sliding_window_pattern";
    if let Some(Value::Array(Array::Bool(v))) = g.get(key) {
        if v.len() != n_layer {
            return Err(ModelError::Invalid(format!(
                "{key} has {} entries for {n_layer} layers",
                v.len()
            )));
        }
        return Ok(v.clone());
    }
    let n = g.get_u32(key)?.unwrap_or(6) as usize;
    Ok((0..n_layer).map(|il| n == 0 || il % n < n - 1).collect())
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
    if m.u32_or("attention.value_length", head_dim)? != head_dim {
        return Err(ModelError::Invalid(
            "value_length differs from key_length".into(),
        ));
    }
    let n_rot = m.u32_or("rope.dimension_count", head_dim)?;
    if n_rot != head_dim {
        return Err(ModelError::Invalid(format!(
            "rope.dimension_count {n_rot} != head_dim {head_dim}"
        )));
    }
    let eps = m.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?;
    let rope_base = m.f32_or("rope.freq_base", 1_000_000.0)?;
    let rope_base_swa = m.f32_or("rope.freq_base_swa", 10_000.0)?;
    let rope_scale = crate::llama::rope_freq_scale(&m)?;
    let window = m.u32_or("attention.sliding_window", 0)?;
    let swa = if window > 0 {
        swa_layers(g, n_layer)?
    } else {
        vec![false; n_layer]
    };
    let softcap = m.f32_opt("final_logit_softcapping")?.filter(|&c| c > 0.0);
    // Gemma scales queries by query_pre_attn_scalar^-1/2: head_dim for every size but the 27B
    // (62 layers), which uses n_embd / n_head (gemma_pytorch config; llama.cpp does the same).
    let attn_scale = if n_layer == 62 {
        1.0 / ((n_embd / n_head) as f32).sqrt()
    } else {
        1.0 / (head_dim as f32).sqrt()
    };

    let mut w = WeightTable::default();
    let tok = g
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
    let n_vocab = tok.dims.get(1).copied().unwrap_or(0) as usize;
    let tok_embd = w.require(g, "token_embd.weight", &[n_embd, n_vocab])?;
    let (q_out, kv_out) = (n_head * head_dim, n_head_kv * head_dim);
    let mut layers = Vec::with_capacity(n_layer);
    for (i, &is_swa) in swa.iter().enumerate() {
        let t = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(Layer {
            attn_norm: w.require(g, &t("attn_norm"), &[n_embd])?,
            wq: w.require(g, &t("attn_q"), &[n_embd, q_out])?,
            wk: w.require(g, &t("attn_k"), &[n_embd, kv_out])?,
            wv: w.require(g, &t("attn_v"), &[n_embd, kv_out])?,
            q_norm: w.require(g, &t("attn_q_norm"), &[head_dim])?,
            k_norm: w.require(g, &t("attn_k_norm"), &[head_dim])?,
            wo: w.require(g, &t("attn_output"), &[q_out, n_embd])?,
            attn_post_norm: w.require(g, &t("post_attention_norm"), &[n_embd])?,
            ffn_norm: w.require(g, &t("ffn_norm"), &[n_embd])?,
            gate: w.require(g, &t("ffn_gate"), &[n_embd, n_ff])?,
            up: w.require(g, &t("ffn_up"), &[n_embd, n_ff])?,
            down: w.require(g, &t("ffn_down"), &[n_ff, n_embd])?,
            ffn_post_norm: w.require(g, &t("post_ffw_norm"), &[n_embd])?,
            window: is_swa.then_some(window),
            rope_base: if is_swa { rope_base_swa } else { rope_base },
            rope_scale: if is_swa { 1.0 } else { rope_scale },
        });
    }
    let output_norm = w.require(g, "output_norm.weight", &[n_embd])?;
    let output = w
        .optional(g, "output.weight", &[n_embd, n_vocab])?
        .unwrap_or(tok_embd);
    Ok(Box::new(Gemma3 {
        n_embd,
        n_vocab,
        n_head,
        n_head_kv,
        head_dim,
        n_ctx_train: m.u32_or("context_length", 32768)?,
        eps,
        attn_scale,
        softcap,
        weights: w,
        tok_embd,
        layers,
        output_norm,
        output,
    }))
}

impl Gemma3 {
    fn attention(&self, g: &mut Graph, l: &Layer, il: usize, x: NodeId) -> NodeId {
        let hd = self.head_dim;
        let h = g.rms_norm(
            x,
            Some(l.attn_norm),
            self.eps,
            self.n_embd,
            &format!("attn_norm.{il}"),
        );
        let q = g.matmul(h, l.wq, &format!("q.{il}"));
        let k = g.matmul(h, l.wk, &format!("k.{il}"));
        let v = g.matmul(h, l.wv, &format!("v.{il}"));
        let q = g.rms_norm(q, Some(l.q_norm), self.eps, hd, &format!("q_norm.{il}"));
        let k = g.rms_norm(k, Some(l.k_norm), self.eps, hd, &format!("k_norm.{il}"));
        let q = g.rope(
            q,
            hd,
            hd,
            l.rope_base,
            l.rope_scale,
            true,
            None,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            hd,
            hd,
            l.rope_base,
            l.rope_scale,
            true,
            None,
            &format!("k_rope.{il}"),
        );
        let (nh, nkv, s) = (self.n_head, self.n_head_kv, self.attn_scale);
        let a = g.attention(q, k, v, il, nh, nkv, hd, s, l.window, &format!("attn.{il}"));
        let o = g.matmul(a, l.wo, &format!("attn_out.{il}"));
        g.rms_norm(
            o,
            Some(l.attn_post_norm),
            self.eps,
            self.n_embd,
            &format!("attn_post_norm.{il}"),
        )
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
        let act = g.gelu_tanh(gate, &format!("ffn_gelu.{il}"));
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let d = g.matmul(m, l.down, &format!("ffn_down.{il}"));
        g.rms_norm(
            d,
            Some(l.ffn_post_norm),
            self.eps,
            self.n_embd,
            &format!("ffn_post_norm.{il}"),
        )
    }
}

impl Architecture for Gemma3 {
    fn arch(&self) -> &str {
        "gemma3"
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
        let e = g.embed(self.tok_embd, "embd");
        let mut x = g.scale(e, (self.n_embd as f32).sqrt(), "embd_scaled"); // [n_tokens, n_embd]
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
        let mut out = match output {
            Output::Hidden => x,
            _ => g.matmul(x, self.output, "logits"),
        };
        if let (Some(cap), false) = (self.softcap, output == Output::Hidden) {
            out = g.softcap(out, cap, "logits_softcap");
        }
        g.set_output(out);
        g
    }
}
