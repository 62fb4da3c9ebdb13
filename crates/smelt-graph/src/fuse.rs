//! Fusion: a [`Graph`] becomes a [`Plan`] of fused kernels. Backend-neutral.
//!
//! The pass walks the nodes in topological order and places each one:
//!
//! * a **matmul** opens a kernel, or joins the kernel of a sibling that reads the same input
//!   (Q, K, V; gate, up), so the input is normalised and quantised once for all of them;
//! * an **attention** opens its own kernel; its keys and values are written to the KV cache by
//!   whichever kernel computed them (typically the QKV matmul's epilogue, after RoPE);
//! * a **row-wise op** goes into the *epilogue* of the matmul kernel that produced its operand
//!   when it is column-local there (bias, residual add, activation, gate * up, softcap, RoPE and
//!   per-head norms with head-aligned column ranges); otherwise it stays *pending* until a
//!   matmul pulls the pending chain into its *prologue* (embedding lookup, RMSNorm over whole
//!   rows, Gemma's post-norms and their residual adds, the last-row selection). A pending value
//!   nothing can absorb (an attention operand, the graph's output) becomes a rows kernel.
//!
//! A value is materialised (written to a buffer) only when another kernel, or another thread
//! of its own kernel, reads it. On a llama layer this gives five kernels: norm + QKV + bias /
//! QK-norm + RoPE + KV write | attention | wo + residual | norm + gate, up + SiLU * up |
//! down + residual; the final norm and output head are one more. Gemma 3's post-norms run in
//! the prologue of the next kernel, so it has five per layer too.

use std::collections::{HashMap, HashSet};

use crate::plan::{
    BufId, Buffer, Bundle, Dest, Kernel, KernelKind, KvPart, Placement, Plan, Stage,
};
use crate::{Graph, NodeId, Op};

/// Which fusions to apply. [`FuseOptions::NONE`] gives one kernel per op, the unfused baseline
/// fused plans are tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// Sibling matmuls reading one input share a kernel.
    pub siblings: bool,
    /// Row-wise chains run as the prologue of the matmul that reads them.
    pub prologue: bool,
    /// Column-local ops on a matmul's output run in its epilogue.
    pub epilogue: bool,
}

impl FuseOptions {
    pub const ALL: FuseOptions = FuseOptions {
        siblings: true,
        prologue: true,
        epilogue: true,
    };
    pub const NONE: FuseOptions = FuseOptions {
        siblings: false,
        prologue: false,
        epilogue: false,
    };
}

/// Fuse `g` with every fusion on.
pub fn fuse(g: &Graph) -> Plan {
    fuse_with(g, FuseOptions::ALL)
}

/// Fuse `g` with the fusions `opts` allows.
pub fn fuse_with(g: &Graph, opts: FuseOptions) -> Plan {
    let mut f = Fuser::new(g, opts);
    for i in 0..g.nodes().len() {
        let n = NodeId(i as u32);
        if f.live[i] {
            f.visit(n);
        }
    }
    f.finish()
}

/// Columns an op needs a thread's range aligned to, when it can run in an epilogue.
fn epilogue_align(op: &Op) -> Option<usize> {
    match *op {
        _ if op.is_columnwise() => Some(1),
        Op::Rope { head_dim, .. } => Some(head_dim),
        // A per-head norm; a norm over whole rows too, when the kernel keeps enough
        // independent column ranges to split across threads (checked by the caller).
        Op::RmsNorm { group, .. } => Some(group),
        _ => None,
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

struct Fuser<'g> {
    g: &'g Graph,
    opts: FuseOptions,
    /// Nodes the output depends on; the rest are never computed.
    live: Vec<bool>,
    /// Live consumers of each node.
    consumers: Vec<Vec<NodeId>>,
    /// None: pending (not yet computed anywhere).
    place: Vec<Option<Placement>>,
    kernels: Vec<Kernel>,
    by_input: HashMap<NodeId, usize>,
    kv: Vec<Vec<Dest>>,
}

impl<'g> Fuser<'g> {
    fn new(g: &'g Graph, opts: FuseOptions) -> Self {
        let n = g.nodes().len();
        let mut live = vec![false; n];
        live[g.output().0 as usize] = true;
        for i in (0..n).rev() {
            if live[i] {
                for o in g.nodes()[i].op.operands() {
                    live[o.0 as usize] = true;
                }
            }
        }
        let mut consumers = vec![Vec::new(); n];
        for (i, node) in g.nodes().iter().enumerate() {
            if live[i] {
                for o in node.op.operands() {
                    consumers[o.0 as usize].push(NodeId(i as u32));
                }
            }
        }
        Fuser {
            g,
            opts,
            live,
            consumers,
            place: vec![None; n],
            kernels: Vec::new(),
            by_input: HashMap::new(),
            kv: vec![Vec::new(); n],
        }
    }

    fn op(&self, n: NodeId) -> &'g Op {
        &self.g.node(n).op
    }

    fn visit(&mut self, n: NodeId) {
        match *self.op(n) {
            Op::MatMul { x, .. } => self.matmul(n, x),
            Op::Attention { q, k, v, layer, .. } => {
                for o in [q, k, v] {
                    if self.place[o.0 as usize].is_none() {
                        self.flush(o);
                    }
                }
                self.kv[k.0 as usize].push(Dest::Kv {
                    layer,
                    part: KvPart::K,
                });
                self.kv[v.0 as usize].push(Dest::Kv {
                    layer,
                    part: KvPart::V,
                });
                let kernel = self.kernels.len();
                self.kernels.push(Kernel {
                    kind: KernelKind::Attention { node: n },
                    rows: vec![],
                });
                self.place[n.0 as usize] = Some(Placement {
                    kernel,
                    stage: Stage::Main,
                    bundle: None,
                });
            }
            _ => {
                if self.opts.epilogue && self.try_epilogue(n) {
                    return;
                }
                if !self.opts.prologue {
                    self.flush(n);
                }
            }
        }
    }

    fn matmul(&mut self, n: NodeId, x: NodeId) {
        let width = self.g.shape(n)[1];
        if self.opts.siblings {
            if let Some(&k) = self.by_input.get(&x) {
                let KernelKind::MatMul { bundles, .. } = &mut self.kernels[k].kind else {
                    unreachable!()
                };
                bundles.push(Bundle {
                    matmuls: vec![n],
                    epilogue: vec![],
                    width,
                    align: 1,
                });
                let bundle = Some(bundles.len() - 1);
                self.place[n.0 as usize] = Some(Placement {
                    kernel: k,
                    stage: Stage::Main,
                    bundle,
                });
                return;
            }
        }
        let rows = if self.place[x.0 as usize].is_none() {
            if self.opts.prologue {
                self.pull(x)
            } else {
                self.flush(x);
                vec![]
            }
        } else {
            vec![]
        };
        let kernel = self.kernels.len();
        for &r in &rows {
            self.place[r.0 as usize] = Some(Placement {
                kernel,
                stage: Stage::Rows,
                bundle: None,
            });
        }
        let bundles = vec![Bundle {
            matmuls: vec![n],
            epilogue: vec![],
            width,
            align: 1,
        }];
        self.kernels.push(Kernel {
            kind: KernelKind::MatMul { input: x, bundles },
            rows,
        });
        self.place[n.0 as usize] = Some(Placement {
            kernel,
            stage: Stage::Main,
            bundle: Some(0),
        });
        self.by_input.insert(x, kernel);
    }

    /// Pending nodes `t` depends on through pending nodes, `t` included, sorted.
    fn pending_ancestors(&self, t: NodeId) -> Vec<NodeId> {
        let mut seen = HashSet::new();
        let mut stack = vec![t];
        while let Some(n) = stack.pop() {
            if self.place[n.0 as usize].is_some() || !seen.insert(n) {
                continue;
            }
            stack.extend(self.op(n).operands());
        }
        let mut v: Vec<NodeId> = seen.into_iter().collect();
        v.sort();
        v
    }

    /// The pending chain producing `x`, to become a matmul's prologue. A last-row selection
    /// is pulled in only when nothing outside the chain reads the rows it drops; otherwise
    /// its operand is computed by a rows kernel first.
    fn pull(&mut self, x: NodeId) -> Vec<NodeId> {
        loop {
            let set = self.pending_ancestors(x);
            let members: HashSet<NodeId> = set.iter().copied().collect();
            let cut = set.iter().find_map(|&l| {
                let Op::LastRow { x: o } = *self.op(l) else {
                    return None;
                };
                if self.place[o.0 as usize].is_some() {
                    return None;
                }
                let leaks = self.pending_ancestors(o).iter().any(|a| {
                    self.consumers[a.0 as usize]
                        .iter()
                        .any(|c| !members.contains(c))
                });
                leaks.then_some(o)
            });
            match cut {
                Some(o) => self.flush(o),
                None => return set,
            }
        }
    }

    /// Compute pending `t` (and the pending chain it needs) in a rows kernel of its own. Rows
    /// kernels split rows across threads, so a last-row selection inside one reads a buffer.
    fn flush(&mut self, t: NodeId) {
        loop {
            let set = self.pending_ancestors(t);
            let cut = set.iter().find_map(|&l| match *self.op(l) {
                Op::LastRow { x: o } if self.place[o.0 as usize].is_none() => Some(o),
                _ => None,
            });
            if let Some(o) = cut {
                self.flush(o);
                continue;
            }
            let kernel = self.kernels.len();
            for &r in &set {
                self.place[r.0 as usize] = Some(Placement {
                    kernel,
                    stage: Stage::Rows,
                    bundle: None,
                });
            }
            self.kernels.push(Kernel {
                kind: KernelKind::Rows,
                rows: set,
            });
            return;
        }
    }

    /// Place `n` in the epilogue of the latest matmul kernel that produced one of its operands,
    /// when it is column-local there and its other operands are buffers of earlier kernels.
    fn try_epilogue(&mut self, n: NodeId) -> bool {
        let node = self.g.node(n);
        let Some(align) = epilogue_align(&node.op) else {
            return false;
        };
        let ops = node.op.operands();
        let in_matmul_out =
            |p: &Placement| matches!(p.stage, Stage::Main | Stage::Epilogue) && p.bundle.is_some();
        let Some(k) = ops
            .iter()
            .filter_map(|o| self.place[o.0 as usize])
            .filter(in_matmul_out)
            .map(|p| p.kernel)
            .max()
        else {
            return false;
        };
        let mut bundles = Vec::new();
        for o in &ops {
            match self.place[o.0 as usize] {
                Some(p) if p.kernel == k && in_matmul_out(&p) => {
                    bundles.push(p.bundle.expect("checked"))
                }
                Some(p) if p.kernel < k => {}
                _ => return false,
            }
        }
        bundles.sort();
        bundles.dedup();
        if !self.splittable_with(k, &bundles, align) {
            return false;
        }
        let b0 = bundles[0];
        for &b in &bundles[1..] {
            self.merge_bundles(k, b0, b);
        }
        let KernelKind::MatMul { bundles, .. } = &mut self.kernels[k].kind else {
            unreachable!()
        };
        let b = &mut bundles[b0];
        b.align = b.align / gcd(b.align, align) * align;
        b.epilogue.push(n);
        self.place[n.0 as usize] = Some(Placement {
            kernel: k,
            stage: Stage::Epilogue,
            bundle: Some(b0),
        });
        true
    }

    /// Whether kernel `k` still has at least two aligned column ranges (so two threads can
    /// share it) after `merged` become one bundle aligned to `align`. A norm over whole rows
    /// of a lone matmul (Gemma's post-norms) would leave one range: it goes to the next
    /// kernel's prologue instead.
    fn splittable_with(&self, k: usize, merged: &[usize], align: usize) -> bool {
        let KernelKind::MatMul { bundles, .. } = &self.kernels[k].kind else {
            return false;
        };
        let mut units = 0;
        let mut merged_align = align;
        for (i, b) in bundles.iter().enumerate() {
            if b.matmuls.is_empty() {
                continue;
            }
            if merged.contains(&i) {
                merged_align = merged_align / gcd(merged_align, b.align) * b.align;
            } else {
                units += b.width / b.align;
            }
        }
        units += bundles[merged[0]].width / merged_align;
        units >= 2
    }

    /// Move bundle `from` of kernel `k` into bundle `into` (an op combines their columns).
    fn merge_bundles(&mut self, k: usize, into: usize, from: usize) {
        let KernelKind::MatMul { bundles, .. } = &mut self.kernels[k].kind else {
            unreachable!()
        };
        let moved = std::mem::replace(
            &mut bundles[from],
            Bundle {
                matmuls: vec![],
                epilogue: vec![],
                width: 0,
                align: 1,
            },
        );
        assert_eq!(
            moved.width, bundles[into].width,
            "merged bundles have the same width"
        );
        for &n in moved.matmuls.iter().chain(&moved.epilogue) {
            self.place[n.0 as usize] = Some(Placement {
                kernel: k,
                stage: self.place[n.0 as usize].unwrap().stage,
                bundle: Some(into),
            });
        }
        let b = &mut bundles[into];
        b.align = b.align / gcd(b.align, moved.align) * moved.align;
        b.matmuls.extend(moved.matmuls);
        b.matmuls.sort();
        b.epilogue.extend(moved.epilogue);
        b.epilogue.sort();
    }

    fn finish(mut self) -> Plan {
        let out = self.g.output();
        if self.place[out.0 as usize].is_none() {
            self.flush(out);
        }
        self.compact_bundles();
        let n = self.g.nodes().len();
        let mut plan = Plan {
            graph: self.g.clone(),
            kernels: self.kernels,
            placements: self.place,
            dests: self.kv,
            buffers: Vec::new(),
            arena_len: 0,
        };
        // Materialise what another kernel or another thread reads.
        let last_kernel = plan.kernels.len() - 1;
        for i in 0..n {
            let id = NodeId(i as u32);
            let Some(p) = plan.placements[i] else {
                continue;
            };
            let mut last = None;
            for &c in &self.consumers[i] {
                if let Some(pc) = plan.placements[c.0 as usize] {
                    if !plan.reads_in_thread(id, c) && !plan.reads_from_cache(id, c) {
                        last = last.max(Some(pc.kernel));
                    }
                }
            }
            if id == out {
                last = Some(last_kernel);
            }
            if let Some(last) = last {
                let [rows, cols] = self.g.shape(id);
                let b = BufId(plan.buffers.len() as u32);
                plan.buffers.push(Buffer {
                    node: id,
                    rows,
                    cols,
                    offset: 0,
                    first: p.kernel,
                    last,
                });
                plan.dests[i].insert(0, Dest::Buffer(b));
            }
        }
        plan.arena_len = assign_offsets(&mut plan.buffers);
        plan
    }

    /// Drop bundles emptied by merges and renumber the rest.
    fn compact_bundles(&mut self) {
        for (k, kernel) in self.kernels.iter_mut().enumerate() {
            let KernelKind::MatMul { bundles, .. } = &mut kernel.kind else {
                continue;
            };
            let mut renumber = vec![usize::MAX; bundles.len()];
            let mut next = 0;
            for (i, b) in bundles.iter().enumerate() {
                if !b.matmuls.is_empty() {
                    renumber[i] = next;
                    next += 1;
                }
            }
            bundles.retain(|b| !b.matmuls.is_empty());
            for p in self.place.iter_mut().flatten() {
                if p.kernel == k {
                    if let Some(b) = p.bundle {
                        p.bundle = Some(renumber[b]);
                    }
                }
            }
        }
    }
}

/// Give each buffer an arena offset (f32 elements, 16-aligned: 64 bytes) so that buffers alive
/// at the same time never overlap: largest first, each at the lowest offset free during its
/// lifetime. Returns the arena length.
fn assign_offsets(buffers: &mut [Buffer]) -> usize {
    const ALIGN: usize = 16;
    let size = |b: &Buffer| (b.rows * b.cols).div_ceil(ALIGN) * ALIGN;
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(size(&buffers[i])), i));
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for i in order {
        let b = &buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &buffers[j])
            .filter(|o| o.first <= b.last && b.first <= o.last)
            .map(|o| (o.offset, o.offset + size(o)))
            .collect();
        busy.sort();
        let mut offset = 0;
        for (s, e) in busy {
            if offset + size(b) <= s {
                break;
            }
            offset = offset.max(e);
        }
        buffers[i].offset = offset;
        arena = arena.max(offset + size(&buffers[i]));
        placed.push(i);
    }
    arena
}

#[cfg(test)]
#[path = "fuse_tests.rs"]
mod tests;
