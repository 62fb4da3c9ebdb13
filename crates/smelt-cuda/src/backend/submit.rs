//! Submitting a lowered program: inputs to the device, the launches (or the captured graph),
//! the output back; the checks of a batch's sequences against its paged KV pool.

use std::ffi::c_void;

use cudarc::driver::sys;

use super::{Args, BatchSeq, CudaBackend, CudaKvCache, CudaProgram, Graph2, Step, Tail};
use crate::codegen::KV_BLOCK;
use crate::device::check;
use crate::profile::Events;
use crate::CudaError;

impl CudaBackend {
    /// Enqueue: copy tokens/positions in, run every kernel, copy the output out.
    /// With `events` (one more than launches), an event is recorded before the first launch
    /// and after each.
    ///
    /// With `greedy` (v20a) the step takes its token and position from the device (the
    /// previous step's argmax), and ends with the argmax kernel and the ring's copy instead
    /// of the logits' copy.
    pub(super) fn enqueue(
        &self,
        prog: &CudaProgram,
        kv: &CudaKvCache,
        events: &[sys::CUevent],
        tail: Tail,
        chain: bool,
    ) -> Result<(), CudaError> {
        let greedy = match tail {
            Tail::Greedy(t) => Some(t),
            _ => None,
        };
        let io = &self.io;
        let n = prog.n_tokens;
        let stream = self.dev.cu_stream();
        // SAFETY: the pinned buffer holds max_tokens u32 tokens, then max_in u32 inputs, then
        // outputs; device buffers are at least as large (checked in `ensure`); kernels and
        // cuBLAS GEMMs read and write only within the arena, weights and KV sizes their
        // program was generated for.
        unsafe {
            let pin = io.pinned.ptr;
            let pos_host = pin.add(io.max_tokens * 4);
            let out_host = pin.add((io.max_tokens + io.max_in) * 4);
            if greedy.is_none() {
                check(
                    sys::cuMemcpyHtoDAsync_v2(io.tok.ptr, pin as *const c_void, n * 4, stream),
                    "copy tokens",
                )?;
                check(
                    sys::cuMemcpyHtoDAsync_v2(
                        io.pos.ptr,
                        pos_host as *const c_void,
                        prog.in_len * 4,
                        stream,
                    ),
                    "copy positions",
                )?;
            }
            if let Some(b) = prog.barrier {
                check(
                    sys::cuMemsetD32Async(io.counters.ptr + b as u64 * 4, 0, 1, stream),
                    "zero the grid barrier",
                )?;
            }
            if let Some((base, n)) = prog.flags {
                check(
                    sys::cuMemsetD32Async(io.counters.ptr + base as u64 * 4, 0, n, stream),
                    "zero the launch counters",
                )?;
            }
            if let Some(&e) = events.first() {
                check(sys::cuEventRecord(e, stream), "event record")?;
            }
            // Profiling times each launch alone: no programmatic overlap then.
            let pdl = self.pdl.is_some() && events.is_empty();
            // v21: a greedy step after another in one graph launches its first kernel
            // programmatically too (that kernel reads the token and position after its wait).
            let mut after_kernel = chain;
            let last = prog.launches.len().saturating_sub(1);
            for (li, step) in prog.launches.iter().enumerate() {
                // v20d: a greedy step's head kernel takes the argmax too.
                let step = match (&prog.greedy_head, greedy) {
                    (Some(head), Some(t)) if li == last && t.folds() => head,
                    _ => step,
                };
                let (fi, grid, block, smem, params, programmatic) = match *step {
                    Step::Kernel(fi, grid, block, smem, params, pm) => {
                        (fi, grid, block, smem, params, pm)
                    }
                    Step::Gemm(g) => {
                        let cb = self.cublas.as_ref().map_err(|e| {
                            CudaError::Invalid(format!("program has cuBLAS GEMMs, but {e}"))
                        })?;
                        cb.gemm(&g, io.arena.ptr).map_err(CudaError::Driver)?;
                        after_kernel = false;
                        if let Some(&e) = events.get(li + 1) {
                            check(sys::cuEventRecord(e, stream), "event record")?;
                        }
                        continue;
                    }
                };
                let pptr = match params {
                    Args::Device(p) => p,
                    Args::Value(_) => 0,
                };
                let mut args: [u64; 7] = [
                    self.weights.ptr,
                    io.arena.ptr,
                    kv.buf.ptr,
                    io.tok.ptr,
                    io.pos.ptr,
                    pptr,
                    io.counters.ptr,
                ];
                let mut ptrs: [*mut c_void; 7] =
                    std::array::from_fn(|i| (&mut args[i]) as *mut u64 as *mut c_void);
                if let Args::Value(k) = params {
                    // The kernel's `PV` parameter: the launch copies the values (graph capture
                    // keeps its copy), so they only need to live until the call returns.
                    ptrs[5] = prog.values[k].as_ptr() as *mut c_void;
                }
                let f = prog.funcs[fi].cu_function();
                if (pdl && after_kernel && programmatic) || prog.cooperative {
                    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
                    if prog.cooperative {
                        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                        attr.value.cooperative = 1;
                    } else {
                        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                        attr.value.programmaticStreamSerializationAllowed = 1;
                    }
                    let config = sys::CUlaunchConfig {
                        gridDimX: grid.0,
                        gridDimY: grid.1,
                        gridDimZ: grid.2,
                        blockDimX: block,
                        blockDimY: 1,
                        blockDimZ: 1,
                        sharedMemBytes: smem,
                        hStream: stream,
                        attrs: &mut attr,
                        numAttrs: 1,
                    };
                    check(
                        sys::cuLaunchKernelEx(&config, f, ptrs.as_mut_ptr(), std::ptr::null_mut()),
                        "cuLaunchKernelEx",
                    )?;
                } else {
                    check(
                        sys::cuLaunchKernel(
                            f,
                            grid.0,
                            grid.1,
                            grid.2,
                            block,
                            1,
                            1,
                            smem,
                            stream,
                            ptrs.as_mut_ptr(),
                            std::ptr::null_mut(),
                        ),
                        "cuLaunchKernel",
                    )?;
                }
                after_kernel = true;
                if let Some(&e) = events.get(li + 1) {
                    check(sys::cuEventRecord(e, stream), "event record")?;
                }
            }
            let logits = io.arena.ptr + prog.out_off as u64 * 4;
            match tail {
                Tail::Copy => check(
                    sys::cuMemcpyDtoHAsync_v2(
                        out_host as *mut c_void,
                        logits,
                        prog.out_len * 4,
                        stream,
                    ),
                    "copy output",
                )?,
                Tail::Greedy(t) => t.enqueue(
                    stream,
                    logits,
                    prog.out_len,
                    (io.tok.ptr, io.pos.ptr),
                    pdl && after_kernel,
                )?,
                Tail::Top(t) => t.enqueue(stream, logits, pdl && after_kernel)?,
            }
        }
        Ok(())
    }

    /// Check `prog` against `kv` and the step's size; grow the shared buffers for it.
    pub(super) fn prepare_io(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        kv: &CudaKvCache,
    ) -> Result<(), CudaError> {
        // Another execution ends a greedy run: the steps still in flight finish before it
        // (one stream) and their tokens are dropped.
        if let Some(g) = &mut self.greedy {
            g.forget();
        }
        let n = prog.n_tokens;
        if tokens.len() != n || positions.len() != n {
            return Err(CudaError::Invalid(format!(
                "{} tokens and {} positions for a program of {n}",
                tokens.len(),
                positions.len()
            )));
        }
        if prog.kv_capacity != kv.capacity() || prog.paged != kv.is_paged() {
            return Err(CudaError::Invalid(
                "program lowered for another KV cache".into(),
            ));
        }
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= kv.capacity()) {
            return Err(CudaError::Invalid(format!(
                "position {p} outside the KV cache ({})",
                kv.capacity()
            )));
        }
        self.ensure(prog)?;
        self.dev.bind()
    }

    /// The pinned inputs after the tokens (`max_in` u32), tokens written first.
    fn pinned_inputs(&mut self, tokens: &[u32]) -> &mut [u32] {
        // SAFETY: the pinned buffer holds max_tokens u32 tokens then max_in u32 inputs
        // (ensure), is not otherwise borrowed (&mut self), and the stream is idle between
        // executions (each one synchronises before returning).
        unsafe {
            let pin = self.io.pinned.ptr as *mut u32;
            std::ptr::copy_nonoverlapping(tokens.as_ptr(), pin, tokens.len());
            std::slice::from_raw_parts_mut(pin.add(self.io.max_tokens), self.io.max_in)
        }
    }

    /// Run `prog` for `tokens` at `positions` of one sequence, writing their keys and values
    /// into `kv` (not paged).
    pub fn execute(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        kv: &mut CudaKvCache,
    ) -> Result<&[f32], CudaError> {
        self.prepare_single(prog, tokens, positions, kv)?;
        self.run(prog.pick(positions), kv)
    }

    /// [`Self::execute`]'s checks and inputs.
    pub(super) fn prepare_single(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        kv: &CudaKvCache,
    ) -> Result<(), CudaError> {
        if kv.is_paged() {
            return Err(CudaError::Invalid(
                "a paged KV cache needs block tables (execute_batch)".into(),
            ));
        }
        self.prepare_io(prog, tokens, positions, kv)?;
        self.pinned_inputs(tokens)[..positions.len()].copy_from_slice(positions);
        Ok(())
    }

    /// Run `prog` for the rows of several sequences over a paged `kv`: `seqs` in order, each
    /// owning its next `rows` rows of `tokens` and `positions`, its keys and values written to
    /// (and its attention reading from) the blocks its table names. A decode program
    /// ([`CudaProgram::is_decode`]) takes any sequences and computes every row alone (a last-row
    /// selection of its `t` rows is every row: `t` sequences of one row each); any other
    /// program takes one sequence. Two sequences may read the same blocks but never write one.
    pub fn execute_batch(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        seqs: &[BatchSeq],
        kv: &mut CudaKvCache,
    ) -> Result<&[f32], CudaError> {
        self.prepare_batch(prog, tokens, positions, seqs, kv)?;
        self.run(prog.pick(positions), kv)
    }

    /// [`Self::execute_batch`]'s checks and inputs.
    pub(super) fn prepare_batch(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        seqs: &[BatchSeq],
        kv: &CudaKvCache,
    ) -> Result<(), CudaError> {
        if !kv.is_paged() {
            return Err(CudaError::Invalid(
                "execute_batch needs a paged KV cache".into(),
            ));
        }
        self.prepare_io(prog, tokens, positions, kv)?;
        let n = prog.n_tokens;
        if !prog.decode && seqs.len() != 1 {
            return Err(CudaError::Invalid(format!(
                "a program of {n} rows takes one sequence, not {}",
                seqs.len()
            )));
        }
        let mb = kv.n_blocks();
        let mut writes: Vec<(u32, usize)> = Vec::with_capacity(n);
        let mut start = 0;
        for (i, s) in seqs.iter().enumerate() {
            let rows = positions.get(start..start + s.rows).filter(|_| s.rows > 0);
            let rows = rows.ok_or_else(|| {
                CudaError::Invalid(format!("sequence {i}: {} rows at row {start}", s.rows))
            })?;
            if rows.windows(2).any(|w| w[1] <= w[0]) {
                return Err(CudaError::Invalid(format!(
                    "sequence {i}: positions do not increase"
                )));
            }
            let last = rows[rows.len() - 1] as usize / KV_BLOCK;
            if s.blocks.len() <= last || s.blocks.len() > mb {
                return Err(CudaError::Invalid(format!(
                    "sequence {i}: {} blocks for position {}",
                    s.blocks.len(),
                    rows[rows.len() - 1]
                )));
            }
            if let Some(b) = s.blocks.iter().find(|&&b| b as usize >= mb) {
                return Err(CudaError::Invalid(format!(
                    "sequence {i}: block {b} outside the pool ({mb})"
                )));
            }
            writes.extend(rows.iter().map(|&p| (s.blocks[p as usize / KV_BLOCK], i)));
            start += s.rows;
        }
        if start != n {
            return Err(CudaError::Invalid(format!(
                "sequences cover {start} of {n} rows"
            )));
        }
        writes.sort_unstable();
        writes.dedup();
        if let Some(w) = writes.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CudaError::Invalid(format!(
                "block {} written by sequences {} and {}",
                w[0].0, w[0].1, w[1].1
            )));
        }
        let input = self.pinned_inputs(tokens);
        let (pos, rest) = input.split_at_mut(n);
        let (wrow, rest) = rest.split_at_mut(n);
        let (tab_of, tables) = rest.split_at_mut(n);
        pos.copy_from_slice(positions);
        let mut r = 0;
        for (i, s) in seqs.iter().enumerate() {
            // A prefill program has the one table (the check above); a decode one has one per row.
            let t = &mut tables[i * mb..(i + 1) * mb];
            t[..s.blocks.len()].copy_from_slice(s.blocks);
            t[s.blocks.len()..].fill(0);
            for &p in &positions[r..r + s.rows] {
                let p = p as usize;
                wrow[r] = s.blocks[p / KV_BLOCK] * KV_BLOCK as u32 + (p % KV_BLOCK) as u32;
                tab_of[r] = i as u32;
                r += 1;
            }
        }
        Ok(())
    }

    /// Capture `prog` as a graph if not yet (or the buffers moved), and launch the graph; with
    /// a greedy tail, its greedy graph of `steps` steps (v20a, v21: several, one after
    /// another); with the candidates' tail, its graph that ends with them (v22).
    pub(super) fn replay(
        &mut self,
        prog: &CudaProgram,
        kv: &CudaKvCache,
        tail: Tail,
        steps: usize,
    ) -> Result<(), CudaError> {
        let (graph, steps) = match (tail, steps) {
            (Tail::Copy, _) => (&prog.graph, 1),
            (Tail::Greedy(t), n) if !t.folds() => (&prog.sampled, n.max(1)),
            (Tail::Greedy(_), 0 | 1) => (&prog.greedy, 1),
            (Tail::Greedy(_), n) => (&prog.greedy_steps, n),
            (Tail::Top(_), _) => (&prog.top, 1),
        };
        let mut slot = graph.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = matches!(&*slot, Some((gen, kvp, n, _))
            if *gen == self.io.gen && *kvp == kv.buf.ptr && *n == steps);
        if !fresh {
            *slot = None;
            let stream = self.dev.cu_stream();
            // SAFETY: capture of the enqueue sequence on our own stream; the graph is
            // instantiated and owned by Graph2.
            unsafe {
                check(
                    sys::cuStreamBeginCapture_v2(
                        stream,
                        sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                    ),
                    "begin capture",
                )?;
                let chain = prog.chain_steps;
                let r =
                    (0..steps).try_for_each(|i| self.enqueue(prog, kv, &[], tail, i > 0 && chain));
                let mut graph = std::ptr::null_mut();
                let end = check(sys::cuStreamEndCapture(stream, &mut graph), "end capture");
                r?;
                end?;
                let mut exec = std::ptr::null_mut();
                let inst = check(
                    sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0),
                    "instantiate",
                );
                if let Err(e) = inst {
                    let _ = sys::cuGraphDestroy(graph);
                    return Err(e);
                }
                *slot = Some((self.io.gen, kv.buf.ptr, steps, Graph2 { exec, graph }));
            }
        }
        let (_, _, _, g) = slot.as_ref().expect("captured above");
        // SAFETY: launching an instantiated graph on our stream.
        unsafe {
            check(
                sys::cuGraphLaunch(g.exec, self.dev.cu_stream()),
                "graph launch",
            )?
        };
        Ok(())
    }

    /// Submit `prog` (inputs in the pinned buffer), wait, return its pinned output.
    fn run(&mut self, prog: &CudaProgram, kv: &CudaKvCache) -> Result<&[f32], CudaError> {
        let mut use_graph = self.graphs
            && (prog.decode || self.prefill_graphs)
            && self.profile.is_none()
            && !prog.no_graph.load(std::sync::atomic::Ordering::Relaxed);
        if use_graph {
            if let Err(e) = self.replay(prog, kv, Tail::Copy, 1) {
                if !prog.cooperative && prog.decode {
                    return Err(e);
                }
                // A driver that cannot capture a cooperative launch, or a prefill program
                // whose capture failed (v28: cuBLAS in a capture): launch it directly (a
                // launch a kernel or GEMM instead of one graph).
                eprintln!(
                    "smelt-cuda: program not captured as a graph ({e}); launching it directly"
                );
                prog.no_graph
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                use_graph = false;
            } else {
                self.stats.submissions += 1;
            }
        }
        if use_graph {
            // Replayed above.
        } else if let Some(prof) = &mut self.profile {
            let events = Events::new(prog.launches.len() + 1)?;
            // Borrow split: enqueue takes &self; the profile is put back below.
            let mut prof = std::mem::take(prof);
            let r = self.enqueue(prog, kv, &events.0, Tail::Copy, false);
            let r = r.and_then(|_| self.dev.sync());
            let r = r.and_then(|_| prof.add(prog, &events));
            self.profile = Some(prof);
            r?;
            self.stats.submissions += prog.launches.len() as u64 + 3;
        } else {
            self.enqueue(prog, kv, &[], Tail::Copy, false)?;
            self.stats.submissions += prog.launches.len() as u64 + 3;
        }
        self.dev.sync()?;
        if let (Some(off), Some(_)) = (prog.trace_off, &self.trace) {
            let mut raw = vec![0u8; prog.labels.len() * crate::codegen::TRACE_STAMPS * 8];
            self.dev
                .download(&mut raw, self.io.arena.ptr + off as u64 * 4)?;
            if let Some(t) = &mut self.trace {
                t.add(&prog.labels, &raw);
            }
        }
        self.stats.executions += 1;
        self.stats.kernels += prog.launches.len() as u64;
        // SAFETY: the output was copied to the pinned buffer after tokens and inputs (at a
        // multiple of 4 bytes; `ensure` sized it for this program's output), the stream is
        // synchronised, and the slice borrows `self` mutably, so no later execute writes the
        // buffer while it lives. No host copy: the logits of a 128k vocabulary are 0.5 MB.
        Ok(unsafe {
            let out_host =
                self.io
                    .pinned
                    .ptr
                    .add((self.io.max_tokens + self.io.max_in) * 4) as *const f32;
            std::slice::from_raw_parts(out_host, prog.out_len)
        })
    }
}
