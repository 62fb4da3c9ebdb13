//! Nodes, ops and the builder.

use std::fmt;

/// A node of a [`Graph`]; nodes are created in topological order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A weight the graphs use, as a backend loads it: its GGUF tensor name and `[rows, cols]`
/// shape (backends index them like [`WeightId`]s).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: [usize; 2],
}

/// A model weight, by index into the model's weight table (see `smelt-models`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub u32);

/// The operations. Each op names its operands; shapes are in [`Node::shape`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Rows of the embedding table `table` (`[n_vocab, n_embd]`) for the token-id input.
    Embed { table: WeightId },
    /// `x @ w^T` with `w` stored as `[out, in]` (GGUF's `ne0 = in`).
    MatMul { x: NodeId, w: WeightId },
    /// RMS normalisation of every `group` consecutive elements of a row (group = cols for a
    /// plain norm, = head_dim for per-head QK-norm), times `w` (length `group`) when given.
    RmsNorm {
        x: NodeId,
        w: Option<WeightId>,
        eps: f32,
        group: usize,
    },
    /// `x + b` for every row, `b` a weight of `cols` elements.
    AddBias { x: NodeId, b: WeightId },
    /// Elementwise `a + b` (same shape).
    Add { a: NodeId, b: NodeId },
    /// Elementwise `a * b` (same shape).
    Mul { a: NodeId, b: NodeId },
    /// `x * s`.
    Scale { x: NodeId, s: f32 },
    /// `silu(x) = x * sigmoid(x)`.
    Silu { x: NodeId },
    /// GELU, tanh approximation.
    GeluTanh { x: NodeId },
    /// `cap * tanh(x / cap)`.
    Softcap { x: NodeId, cap: f32 },
    /// Rotary position embedding on each head of `head_dim` elements, first `n_rot` dims,
    /// positions from the position input. `neox`: rotate pairs (i, i + n_rot/2) instead of (2i, 2i+1).
    /// `factors`: optional per-pair frequency divisors (Llama 3.1 `rope_freqs`).
    Rope {
        x: NodeId,
        head_dim: usize,
        n_rot: usize,
        base: f32,
        freq_scale: f32,
        neox: bool,
        factors: Option<WeightId>,
    },
    /// Causal attention of `q` over the layer's KV cache after appending `k`, `v` at the
    /// positions of the input rows. Heads: `n_head` query heads share `n_head_kv` KV heads (GQA).
    /// `window`: a key at position `p0` is visible to a query at `p1` only when `p1 - p0 < window`.
    Attention {
        q: NodeId,
        k: NodeId,
        v: NodeId,
        layer: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
    },
    /// The last row of each sequence of the step: `[n_seqs, cols]`. The rows of a step belong
    /// to sequences in order (a runtime input, like positions); with one sequence this is the
    /// last row of `x`.
    LastRow { x: NodeId },
}

impl Op {
    /// The nodes this op reads.
    pub fn operands(&self) -> Vec<NodeId> {
        match *self {
            Op::Embed { .. } => vec![],
            Op::MatMul { x, .. }
            | Op::RmsNorm { x, .. }
            | Op::Scale { x, .. }
            | Op::Silu { x }
            | Op::GeluTanh { x }
            | Op::Softcap { x, .. }
            | Op::Rope { x, .. }
            | Op::AddBias { x, .. }
            | Op::LastRow { x } => vec![x],
            Op::Add { a, b } | Op::Mul { a, b } => vec![a, b],
            Op::Attention { q, k, v, .. } => vec![q, k, v],
        }
    }

    /// Whether column `c` of the output depends only on column `c` of the inputs (so a
    /// backend may compute it right where that column is produced).
    pub fn is_columnwise(&self) -> bool {
        matches!(
            self,
            Op::AddBias { .. }
                | Op::Add { .. }
                | Op::Mul { .. }
                | Op::Scale { .. }
                | Op::Silu { .. }
                | Op::GeluTanh { .. }
                | Op::Softcap { .. }
        )
    }

    /// A short name for dumps and profiles.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Embed { .. } => "embed",
            Op::MatMul { .. } => "matmul",
            Op::RmsNorm { .. } => "rms_norm",
            Op::AddBias { .. } => "add_bias",
            Op::Add { .. } => "add",
            Op::Mul { .. } => "mul",
            Op::Scale { .. } => "scale",
            Op::Silu { .. } => "silu",
            Op::GeluTanh { .. } => "gelu_tanh",
            Op::Softcap { .. } => "softcap",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::LastRow { .. } => "last_row",
        }
    }
}

/// One node: its op, its output shape `[rows, cols]` and a name with role and layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub shape: [usize; 2],
    pub name: String,
}

/// A forward pass for `n_tokens` input rows. Build with the methods below; the builder checks
/// shapes with assertions, because a model checks every weight shape once at load and from then
/// on graph building cannot fail on user input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    n_tokens: usize,
    output: Option<NodeId>,
    /// `[rows, cols]` of each weight referenced, to check matmul and norm shapes.
    weight_shapes: Vec<(WeightId, [usize; 2])>,
}

impl Graph {
    /// An empty graph for `n_tokens` input tokens.
    pub fn new(n_tokens: usize) -> Self {
        assert!(n_tokens > 0, "a graph needs at least one token");
        Graph {
            n_tokens,
            ..Default::default()
        }
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// The node whose value the execution returns.
    pub fn output(&self) -> NodeId {
        self.output.expect("graph output not set")
    }

    pub fn set_output(&mut self, id: NodeId) {
        self.output = Some(id);
    }

    pub fn shape(&self, id: NodeId) -> [usize; 2] {
        self.node(id).shape
    }

    /// Declare a weight's `[rows, cols]` (GGUF `[ne1, ne0]`) before using it.
    pub fn declare_weight(&mut self, w: WeightId, shape: [usize; 2]) {
        if let Some(s) = self.weight_shape(w) {
            assert_eq!(
                s, shape,
                "weight {w:?} declared twice with different shapes"
            );
            return;
        }
        self.weight_shapes.push((w, shape));
    }

    fn weight_shape(&self, w: WeightId) -> Option<[usize; 2]> {
        self.weight_shapes
            .iter()
            .find(|(id, _)| *id == w)
            .map(|(_, s)| *s)
    }

    fn wshape(&self, w: WeightId) -> [usize; 2] {
        self.weight_shape(w)
            .unwrap_or_else(|| panic!("weight {w:?} used before declare_weight"))
    }

    fn push(&mut self, op: Op, shape: [usize; 2], name: impl Into<String>) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            shape,
            name: name.into(),
        });
        id
    }

    pub fn embed(&mut self, table: WeightId, name: &str) -> NodeId {
        let [_, d] = self.wshape(table);
        self.push(Op::Embed { table }, [self.n_tokens, d], name)
    }

    pub fn matmul(&mut self, x: NodeId, w: WeightId, name: &str) -> NodeId {
        let [rows, k] = self.shape(x);
        let [out, wk] = self.wshape(w);
        assert_eq!(k, wk, "[{name}] input has {k} cols, weight expects {wk}");
        self.push(Op::MatMul { x, w }, [rows, out], name)
    }

    pub fn rms_norm(
        &mut self,
        x: NodeId,
        w: Option<WeightId>,
        eps: f32,
        group: usize,
        name: &str,
    ) -> NodeId {
        let shape = self.shape(x);
        assert!(
            group > 0 && shape[1].is_multiple_of(group),
            "[{name}] group {group} does not divide {}",
            shape[1]
        );
        if let Some(w) = w {
            let ws = self.wshape(w);
            assert_eq!(
                ws[0] * ws[1],
                group,
                "[{name}] weight has {} elements, expected {group}",
                ws[0] * ws[1]
            );
        }
        self.push(Op::RmsNorm { x, w, eps, group }, shape, name)
    }

    pub fn add_bias(&mut self, x: NodeId, b: WeightId, name: &str) -> NodeId {
        let shape = self.shape(x);
        let bs = self.wshape(b);
        assert_eq!(
            bs[0] * bs[1],
            shape[1],
            "[{name}] bias has {} elements, expected {}",
            bs[0] * bs[1],
            shape[1]
        );
        self.push(Op::AddBias { x, b }, shape, name)
    }

    pub fn add(&mut self, a: NodeId, b: NodeId, name: &str) -> NodeId {
        let shape = self.same_shape(a, b, name);
        self.push(Op::Add { a, b }, shape, name)
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId, name: &str) -> NodeId {
        let shape = self.same_shape(a, b, name);
        self.push(Op::Mul { a, b }, shape, name)
    }

    fn same_shape(&self, a: NodeId, b: NodeId, name: &str) -> [usize; 2] {
        let (sa, sb) = (self.shape(a), self.shape(b));
        assert_eq!(sa, sb, "[{name}] operand shapes differ");
        sa
    }

    pub fn scale(&mut self, x: NodeId, s: f32, name: &str) -> NodeId {
        let shape = self.shape(x);
        self.push(Op::Scale { x, s }, shape, name)
    }

    pub fn silu(&mut self, x: NodeId, name: &str) -> NodeId {
        let shape = self.shape(x);
        self.push(Op::Silu { x }, shape, name)
    }

    pub fn gelu_tanh(&mut self, x: NodeId, name: &str) -> NodeId {
        let shape = self.shape(x);
        self.push(Op::GeluTanh { x }, shape, name)
    }

    pub fn softcap(&mut self, x: NodeId, cap: f32, name: &str) -> NodeId {
        let shape = self.shape(x);
        self.push(Op::Softcap { x, cap }, shape, name)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &mut self,
        x: NodeId,
        head_dim: usize,
        n_rot: usize,
        base: f32,
        freq_scale: f32,
        neox: bool,
        factors: Option<WeightId>,
        name: &str,
    ) -> NodeId {
        let shape = self.shape(x);
        assert!(
            shape[1].is_multiple_of(head_dim) && n_rot <= head_dim && n_rot.is_multiple_of(2),
            "[{name}] bad rope dims"
        );
        if let Some(f) = factors {
            let fs = self.wshape(f);
            assert_eq!(fs[0] * fs[1], n_rot / 2, "[{name}] rope factors length");
        }
        self.push(
            Op::Rope {
                x,
                head_dim,
                n_rot,
                base,
                freq_scale,
                neox,
                factors,
            },
            shape,
            name,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        layer: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        scale: f32,
        window: Option<usize>,
        name: &str,
    ) -> NodeId {
        let rows = self.n_tokens;
        assert_eq!(self.shape(q), [rows, n_head * head_dim], "[{name}] q shape");
        assert_eq!(
            self.shape(k),
            [rows, n_head_kv * head_dim],
            "[{name}] k shape"
        );
        assert_eq!(
            self.shape(v),
            [rows, n_head_kv * head_dim],
            "[{name}] v shape"
        );
        assert!(
            n_head_kv > 0 && n_head.is_multiple_of(n_head_kv),
            "[{name}] n_head {n_head} not a multiple of n_head_kv {n_head_kv}"
        );
        let op = Op::Attention {
            q,
            k,
            v,
            layer,
            n_head,
            n_head_kv,
            head_dim,
            scale,
            window,
        };
        self.push(op, [rows, n_head * head_dim], name)
    }

    pub fn last_row(&mut self, x: NodeId, name: &str) -> NodeId {
        self.last_rows(x, 1, name)
    }

    /// The last row of each of `n_seqs` sequences (see [`Op::LastRow`]).
    pub fn last_rows(&mut self, x: NodeId, n_seqs: usize, name: &str) -> NodeId {
        let [rows, cols] = self.shape(x);
        assert!(
            (1..=rows).contains(&n_seqs),
            "[{name}] {n_seqs} sequences in {rows} rows"
        );
        self.push(Op::LastRow { x }, [n_seqs, cols], name)
    }

    /// How many nodes of each op kind the graph has (for tests and `smelt bench`).
    pub fn op_counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for n in &self.nodes {
            match counts.iter_mut().find(|(k, _)| *k == n.op.kind()) {
                Some((_, c)) => *c += 1,
                None => counts.push((n.op.kind(), 1)),
            }
        }
        counts
    }
}

impl fmt::Display for Graph {
    /// One line per node: `%id name = kind(operands) [rows, cols]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let ops: Vec<String> =
                n.op.operands()
                    .iter()
                    .map(|o| format!("%{}", o.0))
                    .collect();
            writeln!(
                f,
                "%{i} {} = {}({}) {:?}",
                n.name,
                n.op.kind(),
                ops.join(", "),
                n.shape
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_counts() {
        let mut g = Graph::new(3);
        g.declare_weight(WeightId(0), [10, 4]);
        g.declare_weight(WeightId(1), [6, 4]);
        let x = g.embed(WeightId(0), "embd");
        let y = g.matmul(x, WeightId(1), "proj");
        let z = g.silu(y, "act");
        let o = g.last_row(z, "out");
        g.set_output(o);
        assert_eq!(g.shape(y), [3, 6]);
        assert_eq!(g.shape(o), [1, 6]);
        assert_eq!(
            g.op_counts(),
            vec![("embed", 1), ("matmul", 1), ("silu", 1), ("last_row", 1)]
        );
        assert!(g.to_string().contains("%1 proj = matmul(%0) [3, 6]"));
    }

    #[test]
    #[should_panic(expected = "input has 4 cols")]
    fn matmul_shape_checked() {
        let mut g = Graph::new(1);
        g.declare_weight(WeightId(0), [10, 4]);
        g.declare_weight(WeightId(1), [6, 5]);
        let x = g.embed(WeightId(0), "embd");
        g.matmul(x, WeightId(1), "proj");
    }
}
