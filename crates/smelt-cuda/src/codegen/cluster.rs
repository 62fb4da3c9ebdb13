//! v14b (kernel lab, `SMELT_CUDA_CLUSTER=8|16`, sm_90, one token, a contiguous cache): a
//! small model's decode step, every kernel but the last (the output head), as **one thread
//! block cluster** of 8 or 16 blocks, one block an SM.
//!
//! Why: a small model's step is boundaries (v13 trace: SmolLM2's 151 launches, 1.1-1.4 us
//! each from one kernel's last block to the next one's first dependent load) and chains of
//! latency inside each kernel, not bytes (SmolLM2's layer is 3.8 MB: 1.3 us at copy
//! bandwidth). Grid-wide barriers cost as much as a boundary (v7a: 1.4 us); a cluster barrier
//! is a hardware barrier inside one GPC, and its blocks exchange values through distributed
//! shared memory.
//!
//! How: every block keeps every node's values (one token: a row of at most a few thousand
//! floats) in its shared memory. Row-wise nodes (norms, RoPE, residual adds, SiLU * up, the
//! embedding row) are computed by every block for itself: no exchange. A matmul stage (a plan
//! kernel's matmuls, one quantisation of their input) splits each matmul's rows over the
//! blocks; a warp's row value goes to every block's copy (`st.shared::cluster`), then one
//! cluster barrier. Attention splits the keys over the blocks in chunks of 32 (a warp a query
//! head, a lane a key, then a lane two value columns), each block's partial softmax per head
//! in its shared memory; a barrier; block `h % N` merges head h from every block's partials
//! and stores the result into every block; a barrier.
//!
//! Weights never wait for activations: thread 0 streams each block's weight rows (and the
//! 1-D weights its row-wise nodes read) by bulk (TMA) copies into a ring in shared memory,
//! in the order they are used, each chunk counted on an mbarrier; a chunk's bytes are
//! released at the first cluster barrier after its use, where thread 0 issues the chunks that
//! then fit. The schedule (ring offsets, mbarrier slots and phases, where each chunk is
//! issued) is computed here, so the kernel's code is straight-line.
//!
//! The last plan kernel (the output head over the vocabulary) keeps its own launch over the
//! whole GPU: the cluster kernel stores the nodes it reads into their arena buffers.
//!
//! Measured on the H100 (cuda.md v14b): correct (`cluster_decode_matches_reference`, every
//! quantised type, the Gemma-like and Qwen-like layers, clusters of 16 and 8), and **4x
//! slower** than the launches it replaces on SmolLM2 (2210 -> 552 tok/s after 512 tokens,
//! 2358 -> 748 from an empty context). Nsight Compute: 24.2 million instructions a token
//! issued by 16 SMs at one every 6.2 cycles a scheduler. v17a's stamps (block 0's global
//! timer at every barrier, chunk wait, quantisation and rows, `SMELT_CUDA_CLUSTER_PRINT`)
//! split a token: the rows' dot products are ~94 us of it (3 us a layer); waiting for the
//! weight chunks ~296 us (a block's 238 KiB a layer arriving at ~10 GB/s an SM: one GPC
//! streams a small share of the GPU's bandwidth); the attention partials (a lane a key, its
//! rows loaded from global memory one by one) 240 us from an empty context and 877 us at
//! 600 positions; the quantisations, barriers and arrivals ~300 us more. Off by default
//! (cuda.md v14b, v17).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use smelt_graph::{Dest, KernelKind, NodeId, Op};

use super::{lit, type_suffix, Gen, Launch, Params, Work, NT};
use crate::CudaError;

/// The most bytes of a block's rows one chunk copies.
const CHUNK_MAX: usize = 32 * 1024;
/// mbarriers of the ring (a chunk takes slot `i % NBAR`, phase `i / NBAR`).
const NBAR: usize = 32;
/// Dynamic shared memory of the cluster kernel's blocks (the H100's most, 227 KiB).
const SMEM_MAX: usize = 226 * 1024;
/// Stamps of `SMELT_CUDA_CLUSTER_PRINT` (kernel lab), u64 each, at the end of the fixed bytes.
const MARKS: usize = 2048;

/// Device functions of the cluster kernel (`cu/cluster.cu`).
const FNS: &str = include_str!("../cu/cluster.cu");

/// One copy into the ring.
struct Chunk {
    /// Code computing `cs` (source address, a `u64`) and `cn` (bytes, a `u32`) for this block.
    src: String,
    ring: usize,
    size: usize,
    /// The newest older chunk whose ring bytes this one overlaps (it must be released first).
    gate: Option<usize>,
    /// The cluster barrier (index into `Sched::released`) after which thread 0 issues it.
    issue: Option<usize>,
    /// The sync index before the step that waits on it.
    needed_by: usize,
}

#[derive(Default)]
struct Sched {
    chunks: Vec<Chunk>,
    ring_head: usize,
    ring_len: usize,
    /// Chunks waited on so far.
    consumed: usize,
    /// Per sync point (0: the kernel's start), the chunks released by then.
    released: Vec<usize>,
    /// `SMELT_CUDA_CLUSTER_PRINT=pos` (kernel lab): block 0 stamps the global timer at every
    /// cluster barrier (arrival and passing), chunk wait, quantisation, matmul stage and
    /// attention part of the step at that position, and prints the stamps after it (v17a).
    print: Option<usize>,
    /// With `print`: the tag of each stamp, in the order of its slot in the stamps' area.
    marks: Vec<String>,
    /// The barrier: `cluster_sync`, or with `SMELT_CUDA_CLUSTER_FENCE=cta` (kernel lab, a
    /// measure only) `cluster_sync_cta`, without the cluster-scope release (MEMBAR.ALL.GPU)
    /// that the remote stores before it need.
    fence: &'static str,
    /// Weight types of the matmuls (each needs its `cl_rows_*`).
    types: Vec<&'static str>,
}

impl Sched {
    /// A chunk of at most `size` bytes: its index, ring offset, slot and parity.
    fn add(&mut self, src: String, size: usize) -> Option<(usize, usize)> {
        let size = size.div_ceil(16) * 16;
        if size > self.ring_len {
            return None;
        }
        if self.ring_head + size > self.ring_len {
            self.ring_head = 0;
        }
        let (a, b) = (self.ring_head, self.ring_head + size);
        let gate = self
            .chunks
            .iter()
            .enumerate()
            .rev()
            .find(|(_, c)| c.ring < b && a < c.ring + c.size)
            .map(|(i, _)| i);
        self.ring_head = b;
        self.chunks.push(Chunk {
            src,
            ring: a,
            size,
            gate,
            issue: None,
            needed_by: self.released.len() - 1,
        });
        Some((self.chunks.len() - 1, a))
    }

    /// Code waiting for chunk `i` (every thread that reads it).
    fn wait(&mut self, i: usize) -> String {
        self.consumed = self.consumed.max(i + 1);
        let m = self.mark(&format!("w{i}"));
        format!(
            "mbar_wait_par(&bar[{}], {}u);\n{m}",
            i % NBAR,
            (i / NBAR) & 1
        )
    }

    /// A cluster barrier: its marker, replaced by the chunks issued after it.
    fn sync(&mut self) -> String {
        self.released.push(self.consumed);
        let k = self.released.len() - 1;
        let (a, b) = (self.mark(&format!("a{k}")), self.mark(&format!("s{k}")));
        format!("{a}{}();\n{b}/*ISSUE{k}*/\n", self.fence)
    }

    /// With `print`: block 0's thread 0 keeps the global timer as a stamp tagged `tag` of the
    /// chosen step (in shared memory; printed once the step is over, so printing costs the
    /// step nothing).
    fn mark(&mut self, tag: &str) -> String {
        match self.print {
            Some(at) if self.marks.len() < MARKS => {
                self.marks.push(tag.to_string());
                format!(
                    "if (rank == 0 && tid == 0 && p0 == {at}u) STAMPS[{}] = gtimer();\n",
                    self.marks.len() - 1
                )
            }
            _ => String::new(),
        }
    }

    /// The stamps printed by block 0 at the end of the chosen step.
    fn print_marks(&self) -> String {
        let Some(at) = self.print else {
            return String::new();
        };
        let mut s = format!("if (rank == 0 && tid == 0 && p0 == {at}u) {{\n");
        for (i, t) in self.marks.iter().enumerate() {
            writeln!(s, "printf(\"cl {i} {t} %llu\\n\", STAMPS[{i}]);").unwrap();
        }
        s + "}\n"
    }

    /// Where each chunk is issued: the first sync point where the ring bytes it overlaps and
    /// its mbarrier slot are free, in order; false if one would come after its use.
    fn place(&mut self) -> bool {
        let mut at = 0;
        for i in 0..self.chunks.len() {
            let need = self.chunks[i]
                .gate
                .map_or(0, |g| g + 1)
                .max((i + 1).saturating_sub(NBAR));
            while at < self.released.len() && self.released[at] < need {
                at += 1;
            }
            if at >= self.released.len() || at > self.chunks[i].needed_by {
                return false;
            }
            self.chunks[i].issue = Some(at);
        }
        true
    }

    /// The issue code of sync point `k`.
    fn issue_code(&self, k: usize) -> String {
        let mut s = String::new();
        for (i, c) in self.chunks.iter().enumerate() {
            if c.issue == Some(k) {
                write!(
                    s,
                    "{{ {} cl_issue(&bar[{slot}], RING + {}, cs, cn); }}\n",
                    c.src,
                    c.ring,
                    slot = i % NBAR
                )
                .unwrap();
            }
        }
        if s.is_empty() {
            s
        } else {
            format!("if (tid == 0) {{\n{s}}}\n")
        }
    }
}

/// Shared-memory floats of node values, a slot freed at the first cluster barrier after its
/// node's last use (another block may store into it until then).
#[derive(Default)]
struct Slots {
    live: Vec<(usize, usize)>,
    pending: Vec<(usize, usize)>,
    top: usize,
    at: HashMap<NodeId, usize>,
}

impl Slots {
    fn alloc(&mut self, n: NodeId, len: usize) -> usize {
        let len = len.div_ceil(4) * 4;
        let mut start = 0;
        let mut taken: Vec<(usize, usize)> =
            self.live.iter().chain(&self.pending).copied().collect();
        taken.sort();
        for &(a, l) in &taken {
            if start + len <= a {
                break;
            }
            start = start.max(a + l);
        }
        self.live.push((start, len));
        self.top = self.top.max(start + len);
        self.at.insert(n, start);
        start
    }

    fn free(&mut self, n: NodeId) {
        if let Some(o) = self.at.get(&n) {
            if let Some(i) = self.live.iter().position(|&(a, _)| a == *o) {
                let r = self.live.swap_remove(i);
                self.pending.push(r);
            }
        }
    }

    fn sync(&mut self) {
        self.pending.clear();
    }
}

/// What [`Gen::cluster_walk`] gives: the slots' top, body, label, bytes before the ring, the
/// matmuls' weight types.
type Walked = (usize, String, String, usize, Vec<&'static str>);

/// A step of the cluster kernel, in order.
enum Step {
    Row(NodeId),
    Mats(usize),
    Attn(NodeId),
}

impl Gen<'_> {
    /// Every launch but the last replaced by one cluster kernel of `nb` blocks; false (the
    /// program unchanged) where the program does not fit its conditions.
    pub(super) fn cluster_decode(&mut self, nb: usize) -> Result<bool, CudaError> {
        let kernels = self.plan.kernels();
        if self.t != 1
            || !self.decode
            || self.kv.paged
            || self.cc_major < 9
            || !matches!(nb, 8 | 16)
            || kernels.len() < 2
            || !matches!(kernels[kernels.len() - 1].kind, KernelKind::MatMul { .. })
        {
            return Ok(false);
        }
        let last = kernels.len() - 1;
        let mut steps = Vec::new();
        let mut inside = HashSet::new();
        for (ki, k) in kernels[..last].iter().enumerate() {
            match &k.kind {
                KernelKind::Rows => steps.extend(k.rows.iter().map(|&n| Step::Row(n))),
                KernelKind::MatMul { bundles, .. } => {
                    steps.extend(k.rows.iter().map(|&n| Step::Row(n)));
                    steps.push(Step::Mats(ki));
                    for b in bundles {
                        steps.extend(b.epilogue.iter().map(|&n| Step::Row(n)));
                    }
                }
                KernelKind::Attention { node } => steps.push(Step::Attn(*node)),
            }
            inside.extend(k.nodes());
        }
        // Nodes the head kernel reads: stored to their buffers.
        let mut global = HashSet::new();
        for n in kernels[last].nodes() {
            for o in self.node(n).op.operands() {
                if inside.contains(&o) {
                    global.insert(o);
                }
            }
        }
        // The last step reading each node.
        let mut last_use: HashMap<NodeId, usize> = HashMap::new();
        for (si, st) in steps.iter().enumerate() {
            let reads = match *st {
                Step::Row(n) | Step::Attn(n) => self.node(n).op.operands(),
                Step::Mats(ki) => match &kernels[ki].kind {
                    KernelKind::MatMul { input, .. } => vec![*input],
                    _ => unreachable!(),
                },
            };
            for o in reads {
                last_use.insert(o, si);
            }
        }

        // Shared memory: node slots, then the int8 row, the attention partials, the ring.
        let mut kmax = 0usize;
        let mut part = 0usize;
        for st in &steps {
            match *st {
                Step::Mats(ki) => {
                    let KernelKind::MatMul { input, .. } = &kernels[ki].kind else {
                        unreachable!()
                    };
                    kmax = kmax.max(self.node(*input).shape[1]);
                }
                Step::Attn(n) => {
                    let Op::Attention {
                        n_head,
                        head_dim,
                        window,
                        ..
                    } = self.node(n).op
                    else {
                        unreachable!()
                    };
                    if head_dim % 32 != 0 || head_dim > 256 || window == Some(0) {
                        return Ok(false);
                    }
                    part = part.max(n_head * (head_dim + 2));
                }
                Step::Row(n) => {
                    if matches!(self.node(n).op, Op::MatMul { .. } | Op::Attention { .. }) {
                        return Ok(false);
                    }
                }
            }
        }
        let kp = kmax.div_ceil(256) * 256;
        let xfloats = super::decode::x_stride(kmax);
        // The slots' floats: measured by a first walk with a ring that cannot fail.
        let mut slot_budget = 0;
        for pass in 0..2 {
            let Some(done) = self.cluster_walk(
                &steps,
                &last_use,
                &global,
                nb,
                kp,
                xfloats,
                part,
                slot_budget,
                pass == 0,
            )?
            else {
                return Ok(false);
            };
            if pass == 0 {
                slot_budget = done.0.div_ceil(64) * 64;
                continue;
            }
            let (_, body, label, fixed, types) = done;
            let smem = SMEM_MAX;
            let attrs = format!("__cluster_dims__({nb}, 1, 1) ");
            if !self.src.contains("cl_quant") {
                self.src.push_str(FNS);
            }
            for ty in types {
                let line = format!("DEF_CL_ROWS({ty})\n");
                if !self.src.contains(&line) {
                    self.src.push_str(&line);
                }
            }
            let name = self.kernel_with(&format!("{NT}, 1"), &attrs, body, smem);
            let keep = self.launches.pop().expect("a head launch");
            debug_assert!(fixed <= SMEM_MAX);
            self.launches = vec![
                Launch {
                    label,
                    work: Work::Kernel {
                        func: name.clone(),
                        grid: (nb as u32, 1, 1),
                        block: NT as u32,
                        smem: smem as u32,
                        params: Vec::new(),
                    },
                },
                keep,
            ];
            // Only the two kernels launched are compiled.
            let used: HashSet<String> = self
                .launches
                .iter()
                .filter_map(|l| match &l.work {
                    Work::Kernel { func, .. } => Some(func.clone()),
                    Work::Gemm(_) => None,
                })
                .collect();
            self.kernels.retain(|k| used.contains(&k.name));
            self.funcs.retain(|f| used.contains(&f.0));
            self.cluster_splits = 0;
        }
        Ok(true)
    }

    /// The cluster kernel's body for `slot_budget` floats of node slots: (the slots' top,
    /// body, label, bytes before the ring, the matmuls' weight types); None where something does not fit. `measure`: a
    /// ring too large to fail, for the slots' size alone.
    #[allow(clippy::too_many_arguments)]
    fn cluster_walk(
        &mut self,
        steps: &[Step],
        last_use: &HashMap<NodeId, usize>,
        global: &HashSet<NodeId>,
        nb: usize,
        kp: usize,
        xfloats: usize,
        part: usize,
        slot_budget: usize,
        measure: bool,
    ) -> Result<Option<Walked>, CudaError> {
        let kernels = self.plan.kernels();
        let print = super::lab_knob("SMELT_CUDA_CLUSTER_PRINT");
        let stamps_f = slot_budget + xfloats + part.div_ceil(4) * 4;
        let fixed = stamps_f * 4 + if print.is_some() { MARKS * 8 } else { 0 };
        if fixed + 32 * 1024 > SMEM_MAX {
            return Ok(None);
        }
        let mut sch = Sched {
            ring_len: if measure {
                usize::MAX / 4
            } else {
                (SMEM_MAX - fixed) / 16 * 16
            },
            released: vec![0],
            print,
            fence: if std::env::var("SMELT_CUDA_CLUSTER_FENCE").is_ok_and(|v| v == "cta") {
                "cluster_sync_cta"
            } else {
                "cluster_sync"
            },
            ..Default::default()
        };
        let mut slots = Slots::default();
        let mut p = Params::default();
        let x_off = slot_budget;
        let part_off = x_off + xfloats;
        let (xq, xd, xs) = (
            x_off,
            x_off + (kp + kp / 64 * 16) / 4,
            x_off + (kp + kp / 64 * 16) / 4 + kp / 32,
        );

        let mut body = String::new();
        for (si, st) in steps.iter().enumerate() {
            match *st {
                Step::Row(n) => {
                    let Some(code) = self.cluster_row(n, &mut slots, &mut sch, &mut p)? else {
                        return Ok(None);
                    };
                    body += &code;
                    body += &self.cluster_stores(n, &slots, global, &mut p)?;
                }
                Step::Mats(ki) => {
                    let Some(code) =
                        self.cluster_mats(ki, nb, &mut slots, &mut sch, (xq, xd, xs), kp)?
                    else {
                        return Ok(None);
                    };
                    body += &code;
                    body += &sch.sync();
                    slots.sync();
                    let KernelKind::MatMul { bundles, .. } = &kernels[ki].kind else {
                        unreachable!()
                    };
                    for &m in bundles.iter().flat_map(|b| &b.matmuls) {
                        body += &self.cluster_stores(m, &slots, global, &mut p)?;
                    }
                }
                Step::Attn(n) => {
                    let code =
                        self.cluster_attention(n, nb, &mut slots, &mut sch, part_off, &mut p)?;
                    body += &code;
                    body += &self.cluster_stores(n, &slots, global, &mut p)?;
                }
            }
            // Nodes whose last reader was this step.
            let dead: Vec<NodeId> = last_use
                .iter()
                .filter(|&(_, &s)| s == si)
                .map(|(&n, _)| n)
                .collect();
            for n in dead {
                slots.free(n);
            }
        }
        if measure {
            return Ok(Some((
                slots.top,
                String::new(),
                String::new(),
                0,
                Vec::new(),
            )));
        }
        if slots.top > slot_budget || !sch.place() {
            return Ok(None);
        }
        let mut code = body;
        for k in 1..sch.released.len() {
            code = code.replace(&format!("/*ISSUE{k}*/"), &sch.issue_code(k));
        }
        let head = format!(
            "extern __shared__ __align__(16) float S[]; __shared__ __align__(8) u64 bar[{NBAR}]; __shared__ float red[33];\n\
            u8* const RING = (u8*)(S + {ring_f}); (void)red; u64* const STAMPS = (u64*)(S + {stamps_f}); (void)STAMPS;\n\
            const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5; const u32 rank = cluster_rank(); (void)lane; (void)warp;\n\
            const int r = 0, rp = 0; (void)r; (void)rp; const u32 p0 = pos[0];\n\
            if (tid < {NBAR}) {{ mbar_init1(&bar[tid]); asm volatile(\"fence.mbarrier_init.release.cluster;\" ::: \"memory\"); }}\n\
            __syncthreads();\n\
            {issue0}PDL_WAIT();\n{stamp0}\
            const X8 x8 = {{(const signed char*)(S + {xq}), S + {xd}, S + {xs}}}; (void)x8;\n",
            ring_f = fixed / 4,
            issue0 = sch.issue_code(0),
            stamp0 = sch.mark("start"),
        );
        // Every block must be done reading the others' shared memory before any exits.
        let end = sch.mark("end");
        let mut body = format!("{head}{code}{end}cluster_sync();\n{}", sch.print_marks());
        // Parameters as literals: the kernel is this model's alone.
        for (i, v) in p.0.iter().enumerate().rev() {
            body = body.replace(&format!("P[{i}]"), &format!("{v}ull"));
        }
        let label = format!(
            "cluster decode ({} steps, {} chunks, {} KiB ring)",
            steps.len(),
            sch.chunks.len(),
            sch.ring_len / 1024
        );
        Ok(Some((slots.top, body, label, fixed, sch.types)))
    }

    /// Dest stores of node `n` by block 0: its cache rows, and its buffer if the head reads it.
    fn cluster_stores(
        &self,
        n: NodeId,
        slots: &Slots,
        global: &HashSet<NodeId>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let cols = self.node(n).shape[1];
        let o = slots.at[&n];
        let mut s = String::new();
        for d in self.plan.dests(n) {
            match *d {
                Dest::Kv { layer, part } => {
                    let off = self.kv_store_off(layer, part, cols)?;
                    writeln!(
                        s,
                        "KV[{} + (u64)p0 * {cols} + c] = f2h(S[{o} + c]);",
                        p.p(off)
                    )
                    .unwrap();
                }
                Dest::Buffer(b) if global.contains(&n) => {
                    writeln!(
                        s,
                        "A[{} + c] = S[{o} + c];",
                        p.p(self.plan.buffer(b).offset as u64)
                    )
                    .unwrap();
                }
                Dest::Buffer(_) => {}
            }
        }
        Ok(if s.is_empty() {
            s
        } else {
            format!("if (rank == 0) for (int c = tid; c < {cols}; c += {NT}) {{ {s}}}\n")
        })
    }

    /// A row-wise node computed by every block for itself.
    fn cluster_row(
        &self,
        n: NodeId,
        slots: &mut Slots,
        sch: &mut Sched,
        p: &mut Params,
    ) -> Result<Option<String>, CudaError> {
        let node = self.node(n);
        let cols = node.shape[1];
        let rd = |x: NodeId| -> Option<String> { slots.at.get(&x).map(|o| format!("S[{o} + c]")) };
        // A 1-D weight (f32 on the device) through the ring.
        let vec_weight =
            |sch: &mut Sched, w: smelt_graph::WeightId, len: usize| -> Option<(String, String)> {
                let off = self.weight(w).off;
                let (i, ring) = sch.add(
                    format!(
                        "const u64 cs = (u64)(W + {off}ull); const u32 cn = {}u;",
                        (len * 4).div_ceil(16) * 16
                    ),
                    len * 4,
                )?;
                Some((sch.wait(i), format!("((const float*)(RING + {ring}))")))
            };
        let mut s = String::new();
        let each = |o: usize, e: &str| {
            format!("for (int c = tid; c < {cols}; c += {NT}) S[{o} + c] = {e};\n")
        };
        macro_rules! operand {
            ($x:expr) => {
                match rd($x) {
                    Some(v) => v,
                    None => return Ok(None),
                }
            };
        }
        match node.op {
            Op::Embed { table } => {
                let wi = self.weight(table);
                let Some(ty) = type_suffix(wi.dtype) else {
                    return Ok(None);
                };
                let o = slots.alloc(n, cols);
                s += &each(
                    o,
                    &format!(
                        "deq_{ty}(W + {}ull + (u64)tok[0] * {}ull, c, {cols})",
                        wi.off, wi.row_bytes
                    ),
                );
            }
            Op::RmsNorm { x, w, eps, group } => {
                let _ = operand!(x);
                let (wait, wv, warr) = match w {
                    Some(w) => match vec_weight(sch, w, group) {
                        Some((wait, arr)) => (wait, "w".to_string(), arr),
                        None => return Ok(None),
                    },
                    None => (String::new(), String::new(), String::new()),
                };
                let xo = slots.at[&x];
                let o = slots.alloc(n, cols);
                s += &wait;
                let wp = if wv.is_empty() {
                    "(const float*)0".to_string()
                } else {
                    warr
                };
                writeln!(
                    s,
                    "cl_rmsnorm(S + {xo}, {wp}, S + {o}, {cols}, {group}, {}, red);",
                    lit(eps)
                )
                .unwrap();
            }
            Op::AddBias { x, b } => {
                let xv = operand!(x);
                let Some((wait, arr)) = vec_weight(sch, b, cols) else {
                    return Ok(None);
                };
                let o = slots.alloc(n, cols);
                s += &wait;
                s += &each(o, &format!("{xv} + {arr}[c]"));
            }
            Op::Add { a, b } => {
                let (a, b) = (operand!(a), operand!(b));
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("{a} + {b}"));
            }
            Op::Mul { a, b } => {
                let (a, b) = (operand!(a), operand!(b));
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("{a} * {b}"));
            }
            Op::Scale { x, s: k } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("{xv} * {}", lit(k)));
            }
            Op::Silu { x } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("silu_f({xv})"));
            }
            Op::GeluTanh { x } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("gelu_f({xv})"));
            }
            Op::Softcap { x, cap } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &format!("{c} * tanhf({xv} / {c})", c = lit(cap)));
            }
            Op::LastRow { x } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &xv);
            }
            Op::Rope { x, .. } => {
                let xv = operand!(x);
                let o = slots.alloc(n, cols);
                s += &each(o, &xv);
                s += "__syncthreads();\n";
                s += &self.rope_code(n, &format!("(S + {o})"), "0", p)?;
            }
            Op::MatMul { .. } | Op::Attention { .. } => return Ok(None),
        }
        s += "__syncthreads();\n";
        Ok(Some(s))
    }

    /// The matmuls of plan kernel `ki`: the input quantised by every block, each matmul's rows
    /// split over the blocks, every value stored into every block.
    fn cluster_mats(
        &self,
        ki: usize,
        nb: usize,
        slots: &mut Slots,
        sch: &mut Sched,
        (xq, xd, xs): (usize, usize, usize),
        kp_max: usize,
    ) -> Result<Option<String>, CudaError> {
        let KernelKind::MatMul { input, bundles } = &self.plan.kernels()[ki].kind else {
            unreachable!()
        };
        let Some(&xo) = slots.at.get(input) else {
            return Ok(None);
        };
        let k = self.node(*input).shape[1];
        let kp = k.div_ceil(256) * 256;
        debug_assert!(kp <= kp_max);
        let mut s = String::new();
        writeln!(s, "cl_quant(S + {xo}, {k}, {kp}, (signed char*)(S + {xq}), S + {xd}, S + {xs});\n__syncthreads();").unwrap();
        s += &sch.mark(&format!("q{ki}"));
        for &m in bundles.iter().flat_map(|b| &b.matmuls) {
            let Op::MatMul { w, .. } = self.node(m).op else {
                unreachable!()
            };
            let wi = self.weight(w);
            let Some(ty) = type_suffix(wi.dtype).filter(|t| !matches!(*t, "f32" | "f16" | "bf16"))
            else {
                return Ok(None);
            };
            if !sch.types.contains(&ty) {
                sch.types.push(ty);
            }
            let rows = self.node(m).shape[1];
            let rb = wi.row_bytes as usize;
            let rpb = rows.div_ceil(nb);
            let cr = (CHUNK_MAX / rb).clamp(1, rpb);
            let mo = slots.alloc(m, rows);
            write!(
                s,
                "{{ const int r0 = (int)rank * {rpb}, r1 = min({rows}, r0 + {rpb});\n"
            )
            .unwrap();
            let mut c = 0;
            while c < rpb {
                let src = format!(
                    "const int c0 = (int)rank * {rpb} + {c}, c1 = min(min({rows}, (int)rank * {rpb} + {rpb}), c0 + {cr});\n\
                     const u64 sa = (u64)(W + {off}ull) + (u64)c0 * {rb}ull; const u64 cs = sa & ~15ull;\n\
                     const u32 cn = c0 < c1 ? (u32)(((sa + (u64)(c1 - c0) * {rb}ull + 15ull) & ~15ull) - cs) : 0u;",
                    off = wi.off
                );
                let Some((i, ring)) = sch.add(src, cr * rb + 32) else {
                    return Ok(None);
                };
                let wait = sch.wait(i);
                write!(s, "{{ const int c0 = r0 + {c}, c1 = min(r1, c0 + {cr});\n\
                    if (c0 + warp < c1) {{ {wait}\
                      cl_rows_{ty}(RING + {ring} + (((u64)(W + {off}ull) + (u64)c0 * {rb}ull) & 15ull), c0, c1, {rb}ull, {k} / UE8_{ty}, x8, S + {mo}, {nb}u); }} }}\n",
                    off = wi.off).unwrap();
                c += cr;
            }
            s += "(void)r0; (void)r1; }\n";
        }
        s += &sch.mark(&format!("rows{ki}"));
        Ok(Some(s))
    }

    /// Decode attention of node `n` over the blocks of the cluster (see the module's doc).
    fn cluster_attention(
        &self,
        n: NodeId,
        nb: usize,
        slots: &mut Slots,
        sch: &mut Sched,
        part_off: usize,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let Op::Attention {
            q,
            k,
            v,
            layer,
            n_head,
            n_head_kv,
            head_dim: hd,
            scale,
            window,
        } = self.node(n).op
        else {
            unreachable!()
        };
        let (kq, kk, kv) = (slots.at[&q], slots.at[&k], slots.at[&v]);
        let (koff, width) = self.kv_off(layer, smelt_graph::KvPart::K)?;
        let (voff, _) = self.kv_off(layer, smelt_graph::KvPart::V)?;
        let (ko, vo) = (p.p(koff), p.p(voff));
        let grp = n_head / n_head_kv;
        let o = slots.alloc(n, n_head * hd);
        let lo = match window {
            Some(w) => format!("((int)p0 + 1 > {w} ? (int)p0 + 1 - {w} : 0)"),
            None => "0".into(),
        };
        let mut s = format!(
            "cl_attn_part<{hd}>(S + {kq}, S + {kk}, S + {kv}, KV + {ko}, KV + {vo}, {width}, {n_head}, {grp}, {}, {lo}, (int)p0, rank, {nb}u, S + {part_off});\n",
            lit(scale)
        );
        s += &sch.mark("ap");
        s += &sch.sync();
        slots.sync();
        writeln!(
            s,
            "cl_attn_merge<{hd}>(S + {part_off}, S + {o}, {n_head}, rank, {nb}u);"
        )
        .unwrap();
        s += &sch.sync();
        slots.sync();
        Ok(s)
    }
}
