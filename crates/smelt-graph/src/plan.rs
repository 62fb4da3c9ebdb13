//! The plan: a graph cut into a short list of fused kernels, with buffer assignments.
//!
//! A backend executes the kernels in order, with one barrier after each; inside a kernel no
//! thread waits for another. Values a later kernel reads are *materialised*: written to an
//! activation buffer (an f32 `[rows, cols]` region of one arena) or to the layer's KV cache.
//! Everything else stays in a thread's own scratch.

use std::fmt;

use crate::{Graph, NodeId, Op};

/// An activation buffer of the plan's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// Keys or values of a layer's KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvPart {
    K,
    V,
}

/// Where a materialised value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// An activation buffer.
    Buffer(BufId),
    /// Row `r` goes to the cache of `layer` at the position of input row `r`.
    Kv { layer: usize, part: KvPart },
}

/// One activation buffer: the value of `node`, `rows * cols` f32 at `offset` (in f32 elements)
/// of the arena, alive from kernel `first` (written) to kernel `last` (last read).
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub node: NodeId,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub first: usize,
    pub last: usize,
}

/// Which part of its kernel computes a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Row-wise, over whole rows. In a matmul kernel every thread computes every row of the
    /// prologue (redundantly, in its own scratch) and stores only its column share of the
    /// values that are materialised. In a rows kernel the rows are split across threads.
    Rows,
    /// The kernel's main op: a matmul or an attention.
    Main,
    /// Column-local ops on a matmul's output, computed by the thread that computed those
    /// columns, right after it computed them.
    Epilogue,
}

/// Where a node is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub kernel: usize,
    pub stage: Stage,
    /// For main and epilogue nodes of a matmul kernel: the index of their bundle in the kernel.
    pub bundle: Option<usize>,
}

/// Sibling matmuls whose outputs are combined column by column (gate and up, joined by
/// `silu(gate) * up`), with the epilogue nodes computed on them. A thread computing columns
/// `c0..c1` of a bundle computes those columns of every matmul and epilogue node in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// MatMul nodes, all reading the kernel's input.
    pub matmuls: Vec<NodeId>,
    /// Epilogue nodes, in topological order.
    pub epilogue: Vec<NodeId>,
    /// Output columns of every node in the bundle.
    pub width: usize,
    /// Column ranges given to one thread must start at a multiple of this (a head for RoPE
    /// and per-head norms).
    pub align: usize,
}

/// What a kernel does.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelKind {
    /// Prologue (`Kernel::rows`) producing `input`, which is quantised once and multiplied by
    /// the weights of every bundle's matmuls; then each bundle's epilogue.
    MatMul { input: NodeId, bundles: Vec<Bundle> },
    /// Attention of `node`: its q from a buffer, its keys and values from the KV cache, where
    /// earlier kernels wrote this step's rows.
    Attention { node: NodeId },
    /// Row-wise nodes no matmul could absorb, rows split across threads.
    Rows,
}

/// One fused kernel: one dispatch, one barrier.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub kind: KernelKind,
    /// Row-wise nodes in topological order: the prologue of a matmul kernel, or the whole of
    /// a rows kernel.
    pub rows: Vec<NodeId>,
}

impl Kernel {
    /// Main nodes (matmuls, or the attention).
    pub fn mains(&self) -> Vec<NodeId> {
        match &self.kind {
            KernelKind::MatMul { bundles, .. } => bundles
                .iter()
                .flat_map(|b| b.matmuls.iter().copied())
                .collect(),
            KernelKind::Attention { node } => vec![*node],
            KernelKind::Rows => vec![],
        }
    }

    /// Every node the kernel computes.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v = self.rows.clone();
        v.extend(self.mains());
        if let KernelKind::MatMul { bundles, .. } = &self.kind {
            v.extend(bundles.iter().flat_map(|b| b.epilogue.iter().copied()));
        }
        v.sort();
        v
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KernelKind::MatMul { .. } => "matmul",
            KernelKind::Attention { .. } => "attention",
            KernelKind::Rows => "rows",
        }
    }
}

/// A graph cut into fused kernels. Self-contained: it owns a copy of its graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub(crate) graph: Graph,
    pub(crate) kernels: Vec<Kernel>,
    /// By node index; None for nodes nothing needs.
    pub(crate) placements: Vec<Option<Placement>>,
    /// By node index: where a materialised node is written.
    pub(crate) dests: Vec<Vec<Dest>>,
    pub(crate) buffers: Vec<Buffer>,
    pub(crate) arena_len: usize,
}

impl Plan {
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    pub fn placement(&self, n: NodeId) -> Option<Placement> {
        self.placements[n.0 as usize]
    }

    /// Where `n` is materialised (empty: it lives in thread scratch only).
    pub fn dests(&self, n: NodeId) -> &[Dest] {
        &self.dests[n.0 as usize]
    }

    /// The buffer holding `n`, if it has one.
    pub fn buffer_of(&self, n: NodeId) -> Option<BufId> {
        self.dests(n).iter().find_map(|d| match d {
            Dest::Buffer(b) => Some(*b),
            Dest::Kv { .. } => None,
        })
    }

    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    pub fn buffer(&self, b: BufId) -> &Buffer {
        &self.buffers[b.0 as usize]
    }

    /// f32 elements of the activation arena (buffers whose lifetimes do not overlap share memory).
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }

    /// The buffer holding the graph's output.
    pub fn output_buffer(&self) -> BufId {
        self.buffer_of(self.graph.output())
            .expect("the plan materialises its output")
    }

    /// Kernels of each kind, e.g. `[("matmul", 121), ("attention", 30)]`.
    pub fn kernel_counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = Vec::new();
        for k in &self.kernels {
            match counts.iter_mut().find(|(n, _)| *n == k.kind_name()) {
                Some((_, c)) => *c += 1,
                None => counts.push((k.kind_name(), 1)),
            }
        }
        counts
    }

    /// A short name for kernel `i`: its main nodes' names, or its last row node's.
    pub fn kernel_name(&self, i: usize) -> String {
        let k = &self.kernels[i];
        let mains = k.mains();
        let names: Vec<&str> = if mains.is_empty() {
            k.rows
                .last()
                .map(|&n| self.graph.node(n).name.as_str())
                .into_iter()
                .collect()
        } else {
            mains
                .iter()
                .map(|&n| self.graph.node(n).name.as_str())
                .collect()
        };
        format!("{}[{}]", k.kind_name(), names.join("+"))
    }

    /// Check the invariants a backend relies on: every node a kernel reads from another kernel
    /// (or another thread's share of its own) is in a buffer written by an earlier kernel, the
    /// attention's keys and values were written to its layer's cache by an earlier kernel, and
    /// buffers alive at the same time do not overlap. Panics with a description otherwise.
    pub fn validate(&self) {
        let g = &self.graph;
        let mut kv_written: Vec<(usize, KvPart, usize)> = Vec::new();
        for (ki, k) in self.kernels.iter().enumerate() {
            for n in k.nodes() {
                let p = self
                    .placement(n)
                    .unwrap_or_else(|| panic!("node %{} in kernel {ki} has no placement", n.0));
                assert_eq!(
                    p.kernel, ki,
                    "node %{} placed in kernel {} but listed in {ki}",
                    n.0, p.kernel
                );
                for o in g.node(n).op.operands() {
                    if self.reads_in_thread(o, n) || self.reads_from_cache(o, n) {
                        continue;
                    }
                    let b = self.buffer_of(o).unwrap_or_else(|| {
                        panic!(
                            "%{} ({}) reads %{} which is not materialised",
                            n.0,
                            g.node(n).name,
                            o.0
                        )
                    });
                    let writer = self
                        .placement(o)
                        .expect("a materialised node is placed")
                        .kernel;
                    assert!(
                        writer < ki,
                        "%{} reads buffer {b:?} of %{} written in kernel {writer}, not before {ki}",
                        n.0,
                        o.0
                    );
                    let buf = self.buffer(b);
                    assert!(
                        buf.first <= writer && buf.last >= ki,
                        "buffer {b:?} lifetime does not cover its use"
                    );
                }
                for d in self.dests(n) {
                    if let Dest::Kv { layer, part } = *d {
                        kv_written.push((layer, part, ki));
                    }
                }
                if let Op::Attention { layer, .. } = g.node(n).op {
                    for part in [KvPart::K, KvPart::V] {
                        let ok = kv_written
                            .iter()
                            .any(|&(l, p, w)| l == layer && p == part && w < ki);
                        assert!(ok, "attention %{} reads {part:?} of layer {layer} that no earlier kernel wrote", n.0);
                    }
                }
            }
        }
        for (i, a) in self.buffers.iter().enumerate() {
            assert!(
                a.offset + a.rows * a.cols <= self.arena_len,
                "buffer {i} outside the arena"
            );
            for b in &self.buffers[i + 1..] {
                let live = a.first <= b.last && b.first <= a.last;
                let mem =
                    a.offset < b.offset + b.rows * b.cols && b.offset < a.offset + a.rows * a.cols;
                assert!(
                    !(live && mem),
                    "buffers of %{} and %{} overlap while both alive",
                    a.node.0,
                    b.node.0
                );
            }
        }
    }

    /// Whether consumer `c` is an attention reading `o` as its keys or values, which it takes
    /// from the KV cache rather than from a buffer.
    pub fn reads_from_cache(&self, o: NodeId, c: NodeId) -> bool {
        matches!(self.graph.node(c).op, Op::Attention { k, v, .. } if o == k || o == v)
    }

    /// Whether consumer `c` reads `o` from its own thread's scratch (same kernel and stage
    /// group), rather than from a buffer.
    pub fn reads_in_thread(&self, o: NodeId, c: NodeId) -> bool {
        let (Some(po), Some(pc)) = (self.placement(o), self.placement(c)) else {
            return false;
        };
        if po.kernel != pc.kernel {
            return false;
        }
        match (po.stage, pc.stage) {
            (Stage::Rows, Stage::Rows) => true,
            // The matmul reads its input from the prologue's quantised rows.
            (Stage::Rows, Stage::Main) => matches!(self.graph.node(c).op, Op::MatMul { .. }),
            (Stage::Main | Stage::Epilogue, Stage::Epilogue) => po.bundle == pc.bundle,
            _ => false,
        }
    }
}

impl fmt::Display for Plan {
    /// One line per kernel: its kind, its nodes by stage, and what it writes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |n: &NodeId| self.graph.node(*n).name.clone();
        for (i, k) in self.kernels.iter().enumerate() {
            write!(f, "k{i} {}", self.kernel_name(i))?;
            if !k.rows.is_empty() {
                write!(
                    f,
                    " rows({})",
                    k.rows.iter().map(name).collect::<Vec<_>>().join(", ")
                )?;
            }
            if let KernelKind::MatMul { bundles, .. } = &k.kind {
                for b in bundles {
                    write!(
                        f,
                        " | {}",
                        b.matmuls.iter().map(name).collect::<Vec<_>>().join("+")
                    )?;
                    if !b.epilogue.is_empty() {
                        write!(
                            f,
                            " -> {}",
                            b.epilogue.iter().map(name).collect::<Vec<_>>().join(", ")
                        )?;
                    }
                }
            }
            let writes: Vec<String> = k
                .nodes()
                .iter()
                .filter(|&&n| !self.dests(n).is_empty())
                .map(|&n| {
                    let ds: Vec<String> = self
                        .dests(n)
                        .iter()
                        .map(|d| match d {
                            Dest::Buffer(b) => format!("b{}", b.0),
                            Dest::Kv { layer, part } => format!("kv{layer}.{part:?}"),
                        })
                        .collect();
                    format!("{}->{}", name(&n), ds.join("+"))
                })
                .collect();
            writeln!(f, " ; writes {}", writes.join(", "))?;
        }
        Ok(())
    }
}
