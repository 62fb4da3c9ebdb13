//! Lowering: a fused [`Plan`] becomes a [`Program`] of concrete steps for one thread count,
//! with each matmul's kernel chosen for its weight type and this CPU, every thread's share of
//! every kernel decided, and the scratch each thread needs sized.

use smelt_graph::{Dest, KernelKind, KvPart, NodeId, Op, Plan};

use super::kv::KvType;
use super::matvec::Matvec;
use super::rowops::SegOp;
use super::{FastError, Weights};

/// Where a row op reads an operand.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src {
    /// The thread's row registers, at this offset.
    Reg(usize),
    /// An arena buffer of rows of `cols` at this offset.
    Buf { off: usize, cols: usize },
}

/// An operand; `last`: read the operand's last row whatever the row being computed (LastRow).
#[derive(Clone, Copy, Debug)]
pub(crate) struct In {
    pub src: Src,
    pub last: bool,
}

/// Where a value is written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dst {
    Buf {
        off: usize,
        cols: usize,
    },
    Kv {
        layer: usize,
        part: KvPart,
        head_dim: usize,
    },
}

/// One row-wise node of a prologue or rows kernel.
#[derive(Clone, Debug)]
pub(crate) struct RowOp {
    pub op: SegOp,
    pub width: usize,
    pub rows: usize,
    pub ins: Vec<In>,
    /// Offset of its value in the thread's row registers.
    pub out: usize,
    pub dests: Vec<Dst>,
}

/// Operand of a tile node: another tile of the bundle, or a buffer of an earlier kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TIn {
    Tile(usize),
    Buf { off: usize, cols: usize },
}

#[derive(Clone, Debug)]
pub(crate) enum TileCompute {
    MatMul {
        weight: usize,
        mv: Matvec,
        act: usize,
    },
    Seg {
        op: SegOp,
        ins: Vec<TIn>,
    },
}

/// A matmul or epilogue node, computed one tile (rows x columns) at a time into tile `slot`.
#[derive(Clone, Debug)]
pub(crate) struct TileNode {
    pub compute: TileCompute,
    pub slot: usize,
    pub dests: Vec<Dst>,
}

#[derive(Clone, Debug)]
pub(crate) struct BundleStep {
    /// Columns per tile (a multiple of the bundle's alignment).
    pub tc: usize,
    /// Matmuls first, then epilogue nodes, in topological order.
    pub nodes: Vec<TileNode>,
}

/// Columns `c0..c1` of bundle `bundle`, computed by one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Work {
    pub bundle: usize,
    pub c0: usize,
    pub c1: usize,
}

/// One quantised copy of the matmul input, for the matmuls whose kernels share its layout.
#[derive(Clone, Debug)]
pub(crate) struct ActSlot {
    pub mv: Matvec,
    pub off: usize,
    pub row_bytes: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct MatMulStep {
    pub prologue: Vec<RowOp>,
    pub input: In,
    pub rows: usize,
    pub k: usize,
    pub acts: Vec<ActSlot>,
    pub bundles: Vec<BundleStep>,
    /// By thread.
    pub work: Vec<Vec<Work>>,
    /// Rows per tile; tile slots are `tr * tc_max` floats.
    pub tr: usize,
    pub tc_max: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct AttnStep {
    pub q_off: usize,
    pub out_off: usize,
    pub layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub window: Option<usize>,
}

#[derive(Clone, Debug)]
pub(crate) enum Step {
    MatMul(MatMulStep),
    Attention(AttnStep),
    Rows { ops: Vec<RowOp>, rows: usize },
}

/// Per-thread scratch a program needs (elements).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ScratchNeed {
    pub regs: usize,
    pub acts: usize,
    pub tiles: usize,
    pub wrow: usize,
    pub rope: usize,
    pub scores: usize,
}

/// A plan lowered for one thread count and KV capacity: replayed for every step of its shape.
pub struct Program {
    pub(crate) plan: Plan,
    pub(crate) steps: Vec<Step>,
    pub(crate) n_threads: usize,
    pub(crate) kv_type: KvType,
    /// Rows of the last-row selection, if the graph has one (one per sequence).
    pub(crate) last_rows: Option<usize>,
    pub(crate) need: ScratchNeed,
    pub(crate) out_off: usize,
    pub(crate) out_len: usize,
    /// Kernel names without layer numbers, for profiles.
    pub(crate) step_keys: Vec<String>,
}

impl Program {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Rows of the graph input (tokens per execution).
    pub fn n_tokens(&self) -> usize {
        self.plan.graph().n_tokens()
    }

    /// Dispatches (fused kernels) per execution; each ends in one barrier.
    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }

    /// Length of the output.
    pub fn output_len(&self) -> usize {
        self.out_len
    }

    /// One line per step: the fused kernel and, for matmuls, the kernel chosen per weight.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, step) in self.steps.iter().enumerate() {
            s.push_str(&self.plan.kernel_name(i));
            if let Step::MatMul(m) = step {
                let kernels: Vec<String> = m
                    .bundles
                    .iter()
                    .flat_map(|b| &b.nodes)
                    .filter_map(|n| match &n.compute {
                        TileCompute::MatMul { mv, .. } => Some(mv.describe()),
                        TileCompute::Seg { .. } => None,
                    })
                    .collect();
                s.push_str(&format!(" [{}]", kernels.join(", ")));
            }
            s.push('\n');
        }
        s
    }
}

/// Rows (tokens) per prefill tile: a whole prompt chunk, so the prefill kernel decodes each
/// weight tile once for every token (the AVX-512 panel gemm decodes rows to bytes and
/// transposes activations per call; short calls would redo that work).
const TILE_ROWS: usize = 512;
/// Columns (weight rows) per prefill tile. Each gemm call transposes its tokens' activations
/// (the panel gemm's `x4` layout) and re-decodes its rows once per L2-sized pass of tokens, so
/// narrow tiles repeat that work: 64 columns ran Llama-1B-shaped prefill at 135 tok/s on 2
/// threads, 512 at 185 (1024: 180; the tile buffers grow with it).
const TILE_COLS: usize = 512;
/// Columns per tile when there is one row (decode).
const DECODE_TILE_COLS: usize = 1024;
const WORK_GRAN: usize = 16;

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// Where each row node's value lies in the thread's row registers.
type Registers = Vec<(NodeId, usize)>;

struct Lowerer<'a> {
    plan: &'a Plan,
    weights: &'a Weights,
    n_threads: usize,
    need: ScratchNeed,
    exact: bool,
    kv_type: KvType,
}

impl Lowerer<'_> {
    fn buf(&self, n: NodeId) -> Src {
        let b = self.plan.buffer(
            self.plan
                .buffer_of(n)
                .expect("validated plans materialise what other kernels read"),
        );
        Src::Buf {
            off: b.offset,
            cols: b.cols,
        }
    }

    fn dests(&self, n: NodeId) -> Vec<Dst> {
        self.plan
            .dests(n)
            .iter()
            .map(|d| match *d {
                Dest::Buffer(b) => {
                    let b = self.plan.buffer(b);
                    Dst::Buf {
                        off: b.offset,
                        cols: b.cols,
                    }
                }
                Dest::Kv { layer, part } => Dst::Kv {
                    layer,
                    part,
                    head_dim: self.layer_head_dim(layer),
                },
            })
            .collect()
    }

    fn layer_head_dim(&self, layer: usize) -> usize {
        self.plan
            .graph()
            .nodes()
            .iter()
            .find_map(|n| match n.op {
                Op::Attention {
                    layer: l, head_dim, ..
                } if l == layer => Some(head_dim),
                _ => None,
            })
            .expect("a KV write belongs to a layer with an attention")
    }

    fn small(&self, w: smelt_graph::WeightId) -> Result<usize, FastError> {
        let i = w.0 as usize;
        match self.weights.small.get(i) {
            Some(Some(_)) => Ok(i),
            _ => Err(FastError::Invalid(format!(
                "weight {i} is used by a row op but is not 1-D"
            ))),
        }
    }

    fn seg_op(&self, n: NodeId) -> Result<SegOp, FastError> {
        let g = self.plan.graph();
        Ok(match g.node(n).op {
            Op::Embed { table } => SegOp::Embed {
                weight: table.0 as usize,
            },
            Op::LastRow { .. } => SegOp::Copy,
            Op::RmsNorm { w, eps, group, .. } => SegOp::RmsNorm {
                w: w.map(|w| self.small(w)).transpose()?,
                eps,
                group,
            },
            Op::AddBias { b, .. } => SegOp::AddBias { b: self.small(b)? },
            Op::Add { .. } => SegOp::Add,
            Op::Mul { .. } => SegOp::Mul,
            Op::Scale { s, .. } => SegOp::Scale(s),
            Op::Silu { .. } => SegOp::Silu,
            Op::GeluTanh { .. } => SegOp::Gelu,
            Op::Softcap { cap, .. } => SegOp::Softcap(cap),
            Op::Rope {
                head_dim,
                n_rot,
                base,
                freq_scale,
                neox,
                factors,
                ..
            } => {
                let pw = (0..n_rot / 2)
                    .map(|i| base.powf(-2.0 * i as f32 / n_rot as f32))
                    .collect();
                let factors = factors.map(|f| self.small(f)).transpose()?;
                SegOp::Rope {
                    head_dim,
                    n_rot,
                    freq_scale,
                    neox,
                    factors,
                    pw,
                }
            }
            Op::MatMul { .. } | Op::Attention { .. } => unreachable!("not a row-wise op"),
        })
    }

    /// Row ops of `nodes`, with registers allocated in order (so every op's inputs lie below
    /// its output).
    fn row_ops(&mut self, nodes: &[NodeId]) -> Result<(Vec<RowOp>, Registers), FastError> {
        let g = self.plan.graph();
        let mut regs: Registers = Vec::new();
        let mut off = 0;
        let mut ops = Vec::new();
        for &n in nodes {
            let node = g.node(n);
            let [rows, width] = node.shape;
            let ins = node
                .op
                .operands()
                .into_iter()
                .map(|o| {
                    let last = matches!(node.op, Op::LastRow { .. });
                    let src = if self.plan.reads_in_thread(o, n) {
                        Src::Reg(
                            regs.iter()
                                .find(|(r, _)| *r == o)
                                .expect("operand computed earlier")
                                .1,
                        )
                    } else {
                        self.buf(o)
                    };
                    In { src, last }
                })
                .collect();
            if let Op::Rope { n_rot, .. } = node.op {
                self.need.rope = self.need.rope.max(n_rot);
            }
            ops.push(RowOp {
                op: self.seg_op(n)?,
                width,
                rows,
                ins,
                out: off,
                dests: self.dests(n),
            });
            regs.push((n, off));
            off += width;
        }
        self.need.regs = self.need.regs.max(off);
        Ok((ops, regs))
    }

    fn matmul(
        &mut self,
        k: &smelt_graph::Kernel,
        input: NodeId,
        bundles: &[smelt_graph::Bundle],
    ) -> Result<Step, FastError> {
        let g = self.plan.graph();
        let (prologue, regs) = self.row_ops(&k.rows)?;
        let [rows, kdim] = g.shape(input);
        let input_src = match regs.iter().find(|(r, _)| *r == input) {
            Some(&(_, off)) => Src::Reg(off),
            None => self.buf(input),
        };
        let mut acts: Vec<ActSlot> = Vec::new();
        let mut act_off = 0;
        let mut slot = 0;
        let mut steps = Vec::new();
        let mut units = Vec::new();
        let mut tc_max = 0;
        for b in bundles {
            let mut nodes = Vec::new();
            let mut slots: Vec<(NodeId, usize)> = Vec::new();
            let mut cost = 0;
            for &m in &b.matmuls {
                let Op::MatMul { w, .. } = g.node(m).op else {
                    unreachable!()
                };
                let view = &self.weights.views[w.0 as usize];
                let mv = Matvec::new(view.dtype, kdim, self.exact)?;
                self.need.wrow = self.need.wrow.max(mv.scratch_len());
                cost += view.row_bytes;
                let act = match acts.iter().position(|a| a.mv.act_type() == mv.act_type()) {
                    Some(i) => i,
                    None => {
                        let row_bytes = mv.act_row_bytes();
                        acts.push(ActSlot {
                            mv,
                            off: act_off,
                            row_bytes,
                        });
                        act_off += rows * row_bytes;
                        acts.len() - 1
                    }
                };
                nodes.push(TileNode {
                    compute: TileCompute::MatMul {
                        weight: w.0 as usize,
                        mv,
                        act,
                    },
                    slot,
                    dests: self.dests(m),
                });
                slots.push((m, slot));
                slot += 1;
            }
            for &e in &b.epilogue {
                let node = g.node(e);
                let ins = node
                    .op
                    .operands()
                    .into_iter()
                    .map(|o| match slots.iter().find(|(s, _)| *s == o) {
                        Some(&(_, s)) if self.plan.reads_in_thread(o, e) => TIn::Tile(s),
                        _ => match self.buf(o) {
                            Src::Buf { off, cols, .. } => TIn::Buf { off, cols },
                            Src::Reg(_) => unreachable!(),
                        },
                    })
                    .collect();
                if let Op::Rope { n_rot, .. } = node.op {
                    self.need.rope = self.need.rope.max(n_rot);
                }
                nodes.push(TileNode {
                    compute: TileCompute::Seg {
                        op: self.seg_op(e)?,
                        ins,
                    },
                    slot,
                    dests: self.dests(e),
                });
                slots.push((e, slot));
                slot += 1;
            }
            let mut gran =
                if b.align >= WORK_GRAN || !b.width.is_multiple_of(lcm(b.align, WORK_GRAN)) {
                    b.align
                } else {
                    lcm(b.align, WORK_GRAN)
                };
            // q8_0 cache rows are written in whole 32-value blocks.
            let writes_kv = nodes
                .iter()
                .any(|n| n.dests.iter().any(|d| matches!(d, Dst::Kv { .. })));
            if writes_kv && self.kv_type == KvType::Q8_0 {
                gran = lcm(gran, 32);
            }
            // Decode tiles are one row: make them wide (fewer kernel calls); prefill tiles
            // stay narrow so a weight tile is reused from cache by every token tile.
            let cols = if rows == 1 {
                DECODE_TILE_COLS
            } else {
                TILE_COLS
            };
            let tc = gran * cols.div_ceil(gran);
            tc_max = tc_max.max(tc.min(b.width.next_multiple_of(gran)));
            units.push((b.width, gran, cost));
            steps.push(BundleStep { tc, nodes });
        }
        let tr = rows.min(TILE_ROWS);
        self.need.acts = self.need.acts.max(act_off);
        self.need.tiles = self.need.tiles.max(slot * tr * tc_max);
        let work = partition(&units, self.n_threads);
        Ok(Step::MatMul(MatMulStep {
            prologue,
            input: In {
                src: input_src,
                last: false,
            },
            rows,
            k: kdim,
            acts,
            bundles: steps,
            work,
            tr,
            tc_max,
        }))
    }
}

/// Split bundles of `(width, granule, cost per column)` across threads: contiguous runs of
/// granules, each thread's total cost within one granule of an equal share.
pub(crate) fn partition(bundles: &[(usize, usize, usize)], n_threads: usize) -> Vec<Vec<Work>> {
    let total: usize = bundles.iter().map(|&(w, _, c)| w * c.max(1)).sum();
    let mut work: Vec<Vec<Work>> = vec![Vec::new(); n_threads];
    let mut acc = 0usize;
    for (bi, &(width, gran, cost)) in bundles.iter().enumerate() {
        let cost = cost.max(1);
        let mut c0 = 0;
        while c0 < width {
            let c1 = (c0 + gran).min(width);
            let mid = acc + (c1 - c0) * cost / 2;
            let t = (mid * n_threads / total.max(1)).min(n_threads - 1);
            acc += (c1 - c0) * cost;
            match work[t].last_mut() {
                Some(w) if w.bundle == bi && w.c1 == c0 => w.c1 = c1,
                _ => work[t].push(Work { bundle: bi, c0, c1 }),
            }
            c0 = c1;
        }
    }
    work
}

/// Lower `plan` for `n_threads` threads and a KV cache of `kv_type`.
pub(crate) fn lower(
    plan: Plan,
    weights: &Weights,
    n_threads: usize,
    kv_type: KvType,
    exact: bool,
) -> Result<Program, FastError> {
    let mut l = Lowerer {
        plan: &plan,
        weights,
        n_threads,
        need: ScratchNeed::default(),
        exact,
        kv_type,
    };
    if kv_type == KvType::Q8_0 {
        for n in plan.graph().nodes() {
            if let Op::Attention { head_dim, .. } = n.op {
                if head_dim % 32 != 0 {
                    return Err(FastError::Unsupported {
                        what: format!("a q8_0 KV cache with heads of {head_dim}"),
                    });
                }
            }
        }
    }
    let mut steps = Vec::with_capacity(plan.kernels().len());
    for k in plan.kernels() {
        let step = match &k.kind {
            KernelKind::MatMul { input, bundles } => l.matmul(k, *input, bundles)?,
            KernelKind::Attention { node } => {
                let g = plan.graph();
                let Op::Attention {
                    q,
                    layer,
                    n_head,
                    n_head_kv,
                    head_dim,
                    scale,
                    window,
                    ..
                } = g.node(*node).op
                else {
                    unreachable!()
                };
                let (Src::Buf { off: q_off, .. }, Src::Buf { off: out_off, .. }) =
                    (l.buf(q), l.buf(*node))
                else {
                    unreachable!()
                };
                l.need.scores = l.need.scores.max(super::attn::scratch_len(head_dim));
                Step::Attention(AttnStep {
                    q_off,
                    out_off,
                    layer,
                    n_head,
                    n_head_kv,
                    head_dim,
                    scale,
                    window,
                })
            }
            KernelKind::Rows => {
                let rows = plan
                    .graph()
                    .shape(*k.rows.last().expect("a rows kernel has nodes"))[0];
                let (ops, _) = l.row_ops(&k.rows)?;
                Step::Rows { ops, rows }
            }
        };
        steps.push(step);
    }
    let need = l.need;
    let last_rows = plan.graph().nodes().iter().find_map(|n| match n.op {
        Op::LastRow { .. } => Some(n.shape[0]),
        _ => None,
    });
    let out = plan.buffer(plan.output_buffer());
    let (out_off, out_len) = (out.offset, out.rows * out.cols);
    let step_keys = (0..steps.len())
        .map(|i| strip_layers(&plan.kernel_name(i)))
        .collect();
    Ok(Program {
        steps,
        n_threads,
        kv_type,
        last_rows,
        need,
        out_off,
        out_len,
        plan,
        step_keys,
    })
}

/// "matmul[q.3+k.3+v.3]" -> "matmul[q+k+v]": one profile entry for every layer.
fn strip_layers(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '.' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
        } else {
            key.push(c);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_are_stripped() {
        assert_eq!(strip_layers("matmul[q.3+k.3+v.13]"), "matmul[q+k+v]");
        assert_eq!(strip_layers("attention[attn.0]"), "attention[attn]");
    }

    #[test]
    fn partition_balances_cost_and_keeps_alignment() {
        // Q (4 heads of 8, cost 2/col), K (2 heads, cost 2/col), V (16 cols, cost 3/col).
        let bundles = [(32, 8, 2), (16, 8, 2), (16, 1, 3)];
        for n in 1..5 {
            let work = partition(&bundles, n);
            let mut covered = [vec![false; 32], vec![false; 16], vec![false; 16]];
            let mut costs = vec![0; n];
            for (t, ws) in work.iter().enumerate() {
                for w in ws {
                    assert_eq!(w.c0 % bundles[w.bundle].1, 0);
                    for c in &mut covered[w.bundle][w.c0..w.c1] {
                        assert!(!*c);
                        *c = true;
                    }
                    costs[t] += (w.c1 - w.c0) * bundles[w.bundle].2;
                }
            }
            assert!(covered.iter().all(|c| c.iter().all(|&x| x)));
            let total: usize = costs.iter().sum();
            for c in costs {
                assert!(c.abs_diff(total / n) <= 16, "{n} threads: {c} of {total}");
            }
        }
    }
}
