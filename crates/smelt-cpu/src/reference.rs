//! The reference backend: executes a graph op by op in plain f32.
//!
//! Weights are dequantised to f32 once, at load. The only concession to speed is that matmul and
//! attention split their output across threads and that dot products use several accumulators
//! so the compiler vectorises them; the arithmetic stays the textbook one.

use smelt_graph::{Graph, NodeId, Op, WeightId};

/// One layer's keys and values, `[capacity, width]` row-major, where width = n_head_kv * head_dim.
#[derive(Clone, Debug)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    width: usize,
}

/// The KV cache of one sequence: for every layer, the key and value row of each position.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    capacity: usize,
}

impl KvCache {
    /// A cache for `capacity` positions; `widths[l]` = n_head_kv * head_dim of layer l.
    pub fn new(capacity: usize, widths: &[usize]) -> KvCache {
        let layers = widths
            .iter()
            .map(|&width| LayerKv {
                k: vec![0.0; capacity * width],
                v: vec![0.0; capacity * width],
                width,
            })
            .collect();
        KvCache { layers, capacity }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) * 4)
            .sum()
    }
}

/// Executes graphs with f32 weights.
pub struct ReferenceBackend {
    weights: Vec<Vec<f32>>,
    threads: usize,
}

impl ReferenceBackend {
    /// `weights[i]` is the f32 data of `WeightId(i)`, row-major `[rows, cols]`.
    pub fn new(weights: Vec<Vec<f32>>, threads: usize) -> ReferenceBackend {
        ReferenceBackend {
            weights,
            threads: threads.max(1),
        }
    }

    fn w(&self, id: WeightId) -> &[f32] {
        &self.weights[id.0 as usize]
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().map(|w| w.len() * 4).sum()
    }

    /// Run `g` for input `tokens` at `positions` (one per row; KV rows are stored at those
    /// positions). Returns the output node's values, row-major.
    ///
    /// Panics if a position is outside the cache or lengths disagree: the engine checks those
    /// before building the request.
    pub fn execute(
        &self,
        g: &Graph,
        tokens: &[u32],
        positions: &[u32],
        kv: &mut KvCache,
    ) -> Vec<f32> {
        let n = g.n_tokens();
        assert_eq!(tokens.len(), n, "token count does not match the graph");
        assert_eq!(
            positions.len(),
            n,
            "position count does not match the graph"
        );
        assert!(
            positions.iter().all(|&p| (p as usize) < kv.capacity),
            "position outside the KV cache"
        );
        let mut vals: Vec<Vec<f32>> = Vec::with_capacity(g.nodes().len());
        // Free each value after its last use to bound memory on long prompts.
        let last_use = last_uses(g);
        for (i, node) in g.nodes().iter().enumerate() {
            let [rows, cols] = node.shape;
            let v = |id: NodeId| -> &Vec<f32> { &vals[id.0 as usize] };
            let out = match node.op {
                Op::Embed { table } => {
                    let t = self.w(table);
                    let mut out = Vec::with_capacity(rows * cols);
                    for &tok in tokens {
                        let start = tok as usize * cols;
                        out.extend_from_slice(&t[start..start + cols]);
                    }
                    out
                }
                Op::MatMul { x, w } => matmul(v(x), self.w(w), rows, cols, self.threads),
                Op::RmsNorm { x, w, eps, group } => {
                    let mut out = v(x).clone();
                    let w = w.map(|w| self.w(w));
                    for chunk in out.chunks_mut(group) {
                        let ms = chunk.iter().map(|a| a * a).sum::<f32>() / group as f32;
                        let s = 1.0 / (ms + eps).sqrt();
                        for (j, a) in chunk.iter_mut().enumerate() {
                            *a *= s;
                            if let Some(w) = w {
                                *a *= w[j];
                            }
                        }
                    }
                    out
                }
                Op::AddBias { x, b } => {
                    let mut out = v(x).clone();
                    let b = self.w(b);
                    for row in out.chunks_mut(cols) {
                        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                    out
                }
                Op::Add { a, b } => v(a).iter().zip(v(b)).map(|(a, b)| a + b).collect(),
                Op::Mul { a, b } => v(a).iter().zip(v(b)).map(|(a, b)| a * b).collect(),
                Op::Scale { x, s } => v(x).iter().map(|a| a * s).collect(),
                Op::Silu { x } => v(x).iter().map(|&a| a / (1.0 + (-a).exp())).collect(),
                Op::GeluTanh { x } => v(x).iter().map(|&a| gelu_tanh(a)).collect(),
                Op::Softcap { x, cap } => v(x).iter().map(|&a| cap * (a / cap).tanh()).collect(),
                Op::Rope {
                    x,
                    head_dim,
                    n_rot,
                    base,
                    freq_scale,
                    neox,
                    factors,
                } => {
                    let mut out = v(x).clone();
                    let factors = factors.map(|f| self.w(f));
                    for (row, &pos) in out.chunks_mut(cols).zip(positions) {
                        for head in row.chunks_mut(head_dim) {
                            rope_head(head, pos, n_rot, base, freq_scale, neox, factors);
                        }
                    }
                    out
                }
                Op::Attention {
                    q,
                    k,
                    v: vv,
                    layer,
                    n_head,
                    n_head_kv,
                    head_dim,
                    scale,
                    window,
                } => {
                    let lkv = &mut kv.layers[layer];
                    let width = lkv.width;
                    assert_eq!(
                        width,
                        n_head_kv * head_dim,
                        "KV cache width of layer {layer}"
                    );
                    for (t, &pos) in positions.iter().enumerate() {
                        let dst = pos as usize * width;
                        lkv.k[dst..dst + width].copy_from_slice(&v(k)[t * width..(t + 1) * width]);
                        lkv.v[dst..dst + width].copy_from_slice(&v(vv)[t * width..(t + 1) * width]);
                    }
                    let shape = AttnShape {
                        n_head,
                        n_head_kv,
                        head_dim,
                        scale,
                        window,
                    };
                    attention(v(q), lkv, positions, shape, self.threads)
                }
                Op::LastRow { x } => {
                    // One sequence: its last row (batches of sequences are the fast backend's).
                    assert_eq!(rows, 1, "the reference backend evaluates one sequence");
                    let src = v(x);
                    src[src.len() - cols..].to_vec()
                }
            };
            debug_assert_eq!(out.len(), rows * cols, "node {} ({})", i, node.name);
            vals.push(out);
            for op in node.op.operands() {
                if last_use[op.0 as usize] == i && op != g.output() {
                    vals[op.0 as usize] = Vec::new();
                }
            }
        }
        std::mem::take(&mut vals[g.output().0 as usize])
    }
}

fn last_uses(g: &Graph) -> Vec<usize> {
    let mut last = vec![0; g.nodes().len()];
    for (i, n) in g.nodes().iter().enumerate() {
        for op in n.op.operands() {
            last[op.0 as usize] = i;
        }
    }
    last
}

/// GELU with the tanh approximation, as ggml and Gemma use.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

/// Rotate one head in place. Pair i rotates by `pos * base^(-2i/n_rot) * freq_scale / factor[i]`.
fn rope_head(
    head: &mut [f32],
    pos: u32,
    n_rot: usize,
    base: f32,
    freq_scale: f32,
    neox: bool,
    factors: Option<&[f32]>,
) {
    let half = n_rot / 2;
    for i in 0..half {
        let mut theta = pos as f32 * freq_scale * base.powf(-2.0 * i as f32 / n_rot as f32);
        if let Some(f) = factors {
            theta /= f[i];
        }
        let (sin, cos) = theta.sin_cos();
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// Dot product with eight accumulators (vectorises; order differs from a plain fold only in rounding).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[t][j] = dot(x[t], w[j])`, the output columns split across threads.
fn matmul(x: &[f32], w: &[f32], rows: usize, out_cols: usize, threads: usize) -> Vec<f32> {
    let k = w.len() / out_cols;
    let mut out = vec![0.0f32; rows * out_cols];
    let per = out_cols.div_ceil(threads);
    let mut parts: Vec<(usize, Vec<f32>)> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|ti| {
                let j0 = (ti * per).min(out_cols);
                let j1 = ((ti + 1) * per).min(out_cols);
                s.spawn(move || {
                    let mut part = vec![0.0f32; rows * (j1 - j0)];
                    for j in j0..j1 {
                        let wr = &w[j * k..(j + 1) * k];
                        for t in 0..rows {
                            part[t * (j1 - j0) + (j - j0)] = dot(&x[t * k..(t + 1) * k], wr);
                        }
                    }
                    (j0, part)
                })
            })
            .collect();
        parts = handles
            .into_iter()
            .map(|h| h.join().expect("matmul worker panicked"))
            .collect();
    });
    for (j0, part) in parts {
        let width = part.len().checked_div(rows).unwrap_or(0);
        for t in 0..rows {
            out[t * out_cols + j0..t * out_cols + j0 + width]
                .copy_from_slice(&part[t * width..(t + 1) * width]);
        }
    }
    out
}

#[derive(Clone, Copy)]
struct AttnShape {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
}

/// Softmax attention of each query row over the cached keys it may see.
fn attention(q: &[f32], kv: &LayerKv, positions: &[u32], s: AttnShape, threads: usize) -> Vec<f32> {
    let width_q = s.n_head * s.head_dim;
    let group = s.n_head / s.n_head_kv;
    let rows = positions.len();
    let mut out = vec![0.0f32; rows * width_q];
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (ci, chunk) in out.chunks_mut(per * width_q).enumerate() {
            sc.spawn(move || {
                let mut scores = Vec::new();
                for (r, orow) in chunk.chunks_mut(width_q).enumerate() {
                    let t = ci * per + r;
                    let p1 = positions[t] as usize;
                    let lo = match s.window {
                        Some(w) => (p1 + 1).saturating_sub(w),
                        None => 0,
                    };
                    for h in 0..s.n_head {
                        let hk = h / group;
                        let qh =
                            &q[t * width_q + h * s.head_dim..t * width_q + (h + 1) * s.head_dim];
                        scores.clear();
                        for p0 in lo..=p1 {
                            let off = p0 * kv.width + hk * s.head_dim;
                            scores.push(dot(qh, &kv.k[off..off + s.head_dim]) * s.scale);
                        }
                        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for sc in scores.iter_mut() {
                            *sc = (*sc - max).exp();
                            sum += *sc;
                        }
                        let oh = &mut orow[h * s.head_dim..(h + 1) * s.head_dim];
                        for (i, p0) in (lo..=p1).enumerate() {
                            let off = p0 * kv.width + hk * s.head_dim;
                            let wgt = scores[i] / sum;
                            for (o, vv) in oh.iter_mut().zip(&kv.v[off..off + s.head_dim]) {
                                *o += wgt * vv;
                            }
                        }
                    }
                }
            });
        }
    });
    out
}
