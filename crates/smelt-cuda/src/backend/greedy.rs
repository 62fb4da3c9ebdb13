//! Greedy decoding on the device (v20a): each one-token step ends with the argmax of its
//! logits (prelude `greedy_next`), which becomes the next step's token and position on the
//! device, so the host launches a step before the previous one has finished and reads each
//! token from a small ring of mapped host memory the kernel writes in place (a 4-byte answer
//! where the logits were 0.2-1 MB; v20b: no copy node, ~9 us a step) once its step's event
//! fires. The GPU then never waits for the host between tokens: no logits copy, no
//! host argmax, no launch latency on the step's path.

use std::collections::VecDeque;
use std::ffi::c_void;

use cudarc::driver::sys;

use super::{CudaBackend, CudaKvCache, CudaProgram, Tail};
use crate::codegen::KV_BLOCK;
use crate::device::{check, DevBuf, Device, Pinned};
use crate::CudaError;

/// Graphs of greedy steps in flight at most (launched, their event not yet waited for): one
/// running, the next queued behind it.
pub const GREEDY_IN_FLIGHT: usize = 2;

/// Steps one greedy graph takes at most (v21); `SMELT_CUDA_GREEDY_STEPS` sets the count.
pub const GREEDY_MAX_STEPS: usize = 16;
/// Steps a greedy graph takes by default.
pub(super) const DEFAULT_STEPS: usize = 4;
/// Graphs queued at most: those in flight and one whose event has fired, its tokens not yet
/// all read. Their steps (at most 64) each have their own word of the ring.
const QUEUED: usize = GREEDY_IN_FLIGHT + 2;

// The prelude's layout of the kernel's buffer (u32 words): the counter, the bests; the ring's.
const SPAN: usize = 4096;
const RING: usize = 64;
const _: () = assert!(QUEUED * GREEDY_MAX_STEPS <= RING);
const PART_AT: usize = 128;
/// Logits a step may have: blocks of [`SPAN`] whose bests fit the buffer.
const MAX_BLOCKS: usize = 4096;

/// Where the greedy head kernel's counter and best key start in the buffer (u32 words; v20d).
const FOLD_AT: usize = 64;

/// The argmax kernel's buffer (the greedy head kernel's words at [`FOLD_AT`]) and the ring (mapped host
/// memory: its host and device addresses), allocated with the backend.
pub(crate) struct GreedyBufs {
    buf: DevBuf,
    ring: Pinned,
    ring_dev: sys::CUdeviceptr,
}

impl GreedyBufs {
    pub(super) fn new(dev: &Device) -> Result<GreedyBufs, CudaError> {
        let buf = dev.alloc((PART_AT + 2 * MAX_BLOCKS) * 4)?;
        let (ring, ring_dev) = dev.alloc_mapped(RING * 4)?;
        Ok(GreedyBufs {
            buf,
            ring,
            ring_dev,
        })
    }
}

/// One launched graph of greedy steps.
struct Launched {
    /// The position of its first step.
    pos: u32,
    steps: u32,
    /// Its tokens read so far.
    read: u32,
    event: usize,
    /// Whether its event has fired (waited for).
    done: bool,
}

/// The graphs in flight and their events.
pub(crate) struct Greedy {
    events: Vec<sys::CUevent>,
    /// Launched and not yet read to the end.
    queue: VecDeque<Launched>,
    next_event: usize,
    /// The position of the next step to launch (the device's `pos` once the queue is done).
    next_pos: u32,
    /// v27: over a pool, the positions the device's block table covers (steps launch below
    /// it); `u32::MAX` on a contiguous cache.
    cover: u32,
    /// v23: the run draws sampled tokens (`sample_begin`) rather than the argmax.
    pub(super) sampling: bool,
}

// SAFETY: the events belong to one backend and are used only through its `&mut self` (one
// thread at a time).
unsafe impl Send for Greedy {}

impl Greedy {
    /// Drop the steps in flight (another execution follows them on the stream).
    pub(super) fn forget(&mut self) {
        self.queue.clear();
    }
}

impl Drop for Greedy {
    fn drop(&mut self) {
        for &e in &self.events {
            // SAFETY: events created in `greedy_begin`, destroyed once.
            unsafe {
                let _ = sys::cuEventDestroy_v2(e);
            }
        }
    }
}

/// What a greedy graph ends with: the argmax kernel of the step's module and where it writes;
/// no kernel where the greedy head kernel takes the argmax (v20d) or with the kernel lab's
/// `SMELT_CUDA_GREEDY_LAB=1`.
pub(super) struct GreedyTail {
    func: Option<sys::CUfunction>,
    buf: sys::CUdeviceptr,
    ring: sys::CUdeviceptr,
    /// v23: a sampled step's tail (candidates, then the draw) in place of the argmax.
    pub(super) draw: Option<super::draw::DrawTail>,
}

impl GreedyTail {
    /// Whether the step takes the argmax in its head kernel's copy (v20d): not a sampled one.
    pub(super) fn folds(&self) -> bool {
        self.draw.is_none()
    }
}

impl GreedyTail {
    /// Enqueue the argmax of `n` logits at `logits` (writing the token and position buffers
    /// `io` and the ring).
    pub(super) fn enqueue(
        &self,
        stream: sys::CUstream,
        logits: sys::CUdeviceptr,
        n: usize,
        io: (sys::CUdeviceptr, sys::CUdeviceptr),
        programmatic: bool,
    ) -> Result<(), CudaError> {
        if let Some(d) = &self.draw {
            return d.enqueue(stream, logits, io, programmatic);
        }
        let Some(func) = self.func else {
            return Ok(());
        };
        let mut a_logits = logits;
        let mut a_n = n as u32;
        let (mut a_tok, mut a_pos) = io;
        let (mut a_buf, mut a_ring) = (self.buf, self.ring);
        let mut ptrs: [*mut c_void; 6] = [
            (&mut a_logits) as *mut u64 as *mut c_void,
            (&mut a_n) as *mut u32 as *mut c_void,
            (&mut a_tok) as *mut u64 as *mut c_void,
            (&mut a_pos) as *mut u64 as *mut c_void,
            (&mut a_buf) as *mut u64 as *mut c_void,
            (&mut a_ring) as *mut u64 as *mut c_void,
        ];
        let blocks = n.div_ceil(SPAN) as u32;
        // SAFETY: the kernel reads `n` floats at `logits` (the program's output, inside the
        // arena), writes one u32 each of the token and position buffers, in `buf` (PART_AT + 2
        // * MAX_BLOCKS words, `blocks` <= MAX_BLOCKS checked by `greedy_ok`) its counter and
        // bests, and one word of the mapped ring of RING words.
        unsafe {
            super::launch_tail(
                func,
                (blocks, 1),
                256,
                stream,
                &mut ptrs,
                programmatic,
                "greedy argmax launch",
            )
        }
    }
}

impl CudaBackend {
    /// v20d: the addresses the greedy head kernels' argmax takes (codegen
    /// `PARAM_GREEDY_BUF`, `PARAM_GREEDY_RING`).
    pub(super) fn greedy_addrs(&self) -> (u64, u64) {
        let b = &self.greedy_bufs;
        (b.buf.ptr + FOLD_AT as u64 * 4, b.ring_dev)
    }

    /// Whether `prog` decodes greedily on the device over `kv`: a one-token decode program
    /// replayed as a graph on a contiguous cache, or a solo program over a pool (v27,
    /// [`Self::lower_solo`]); not profiled, not traced, not persistent; and
    /// `SMELT_CUDA_GREEDY` is not `0`.
    pub fn greedy_ok(&self, prog: &CudaProgram, kv: &CudaKvCache) -> bool {
        self.greedy_on
            && self.graphs
            && self.profile.is_none()
            && self.trace.is_none()
            && prog.decode
            && prog.n_tokens == 1
            && !prog.cooperative
            && prog.paged == kv.is_paged()
            && (!prog.paged || prog.solo)
            && prog.out_len > 0
            && prog.out_len.div_ceil(SPAN) <= MAX_BLOCKS
            && (prog.greedy_head.is_some() || prog.greedy_next.is_some())
    }

    /// Begin greedy decoding with `prog` (a one-token program of the last token's logits)
    /// from `token` at `position`: its inputs go to the device; launch the steps with
    /// [`Self::greedy_launch`] and read their tokens with [`Self::greedy_wait`]. Any other
    /// execution ends the run (the steps in flight finish, their tokens are dropped). Over a
    /// pool (a solo program, v27) `blocks` is the sequence's block table, which must hold
    /// `position`; steps launch only at positions it covers ([`Self::greedy_add_block`]
    /// extends it). On a contiguous cache `blocks` is empty.
    pub fn greedy_begin(
        &mut self,
        prog: &CudaProgram,
        token: u32,
        position: u32,
        kv: &CudaKvCache,
        blocks: &[u32],
    ) -> Result<(), CudaError> {
        if !self.greedy_ok(prog, kv) {
            return Err(CudaError::Invalid(
                "this program does not decode greedily on the device".into(),
            ));
        }
        self.prepare_io(prog, &[token], &[position], kv)?;
        // The steps still in flight done before any input is written.
        self.dev.sync()?;
        let cover = match kv.is_paged() {
            true => self.solo_inputs(prog, position, kv, blocks)?,
            false if blocks.is_empty() => u32::MAX,
            false => {
                return Err(CudaError::Invalid(
                    "block tables are for a paged cache".into(),
                ))
            }
        };
        if self.greedy.is_none() {
            let mut events = Vec::with_capacity(QUEUED);
            for _ in 0..QUEUED {
                let mut e = std::ptr::null_mut();
                // SAFETY: out-parameter creation; destroyed by Greedy::drop.
                unsafe {
                    check(
                        sys::cuEventCreate(
                            &mut e,
                            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
                        ),
                        "event create",
                    )?
                };
                events.push(e);
            }
            self.greedy = Some(Greedy {
                events,
                queue: VecDeque::new(),
                next_event: 0,
                next_pos: 0,
                cover: u32::MAX,
                sampling: false,
            });
        }
        self.dev.upload(self.io.tok.ptr, &token.to_le_bytes())?;
        if !kv.is_paged() {
            // A solo run's inputs (its position first) went up with its table.
            self.dev.upload(self.io.pos.ptr, &position.to_le_bytes())?;
        }
        let g = self.greedy.as_mut().expect("allocated above");
        g.queue.clear();
        g.next_pos = position;
        g.cover = cover;
        g.sampling = false;
        Ok(())
    }

    /// v27: a solo step's inputs after its position (the write row, table index 0, the
    /// table: `blocks`, then block 0) to the device; returns the positions the table covers.
    fn solo_inputs(
        &mut self,
        prog: &CudaProgram,
        position: u32,
        kv: &CudaKvCache,
        blocks: &[u32],
    ) -> Result<u32, CudaError> {
        let mb = kv.n_blocks();
        let p = position as usize;
        if blocks.len() <= p / KV_BLOCK || blocks.len() > mb {
            return Err(CudaError::Invalid(format!(
                "{} blocks for position {position}",
                blocks.len()
            )));
        }
        if let Some(b) = blocks.iter().find(|&&b| b as usize >= mb) {
            return Err(CudaError::Invalid(format!(
                "block {b} outside the pool ({mb})"
            )));
        }
        let mut input = vec![0u32; prog.in_len];
        if input.len() != 3 + mb {
            return Err(CudaError::Invalid(
                "a solo program takes one row's inputs".into(),
            ));
        }
        input[0] = position;
        input[1] = blocks[p / KV_BLOCK] * KV_BLOCK as u32 + (p % KV_BLOCK) as u32;
        input[3..3 + blocks.len()].copy_from_slice(blocks);
        let bytes: Vec<u8> = input.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.dev.upload(self.io.pos.ptr, &bytes)?;
        Ok((blocks.len() * KV_BLOCK) as u32)
    }

    /// v27: block `block` of the pool becomes entry `index` of a solo run's block table (the
    /// next entry: the table grows by one block, `KV_BLOCK` more positions the run may
    /// launch steps at). Written on the stream, after the steps launched before it, which
    /// read only entries below it.
    pub fn greedy_add_block(
        &mut self,
        kv: &CudaKvCache,
        index: usize,
        block: u32,
    ) -> Result<(), CudaError> {
        let g = self
            .greedy
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("greedy decoding was not begun".into()))?;
        let mb = kv.n_blocks();
        if !kv.is_paged() || g.cover == u32::MAX {
            return Err(CudaError::Invalid(
                "block tables are for a paged cache".into(),
            ));
        }
        if index != g.cover as usize / KV_BLOCK || index >= mb || block as usize >= mb {
            return Err(CudaError::Invalid(format!(
                "block {block} as table entry {index} (the table has {} of {mb})",
                g.cover as usize / KV_BLOCK
            )));
        }
        let at = self.io.pos.ptr + (3 + index) as u64 * 4;
        // SAFETY: one u32 of the inputs buffer (a solo program's 3 + n_blocks words, checked
        // by solo_inputs at the run's begin; index < n_blocks), written in stream order.
        unsafe {
            check(
                sys::cuMemsetD32Async(at, block, 1, self.dev.cu_stream()),
                "block table entry",
            )?
        };
        g.cover += KV_BLOCK as u32;
        Ok(())
    }

    /// v27: the positions a greedy run's block table covers (`u32::MAX` on a contiguous
    /// cache; None without a run).
    pub fn greedy_cover(&self) -> Option<u32> {
        self.greedy.as_ref().map(|g| g.cover)
    }

    /// Whether another greedy graph may be launched now: fewer than [`GREEDY_IN_FLIGHT`]
    /// running or queued on the device.
    pub fn greedy_room(&self) -> bool {
        self.greedy.as_ref().is_some_and(|g| {
            g.queue.len() < g.events.len()
                && g.queue.iter().filter(|l| !l.done).count() < GREEDY_IN_FLIGHT
        })
    }

    /// Launch the next greedy steps of `prog` (the program begun with, or the same shape
    /// lowered again), at most `max` and at least one: one graph of the backend's step count
    /// (`SMELT_CUDA_GREEDY_STEPS`, v21) where `max` allows it and every step runs the same
    /// short-context variant, else one step. Returns the steps launched. At most
    /// [`GREEDY_IN_FLIGHT`] graphs are in flight ([`Self::greedy_room`]).
    pub fn greedy_launch(
        &mut self,
        prog: &CudaProgram,
        kv: &mut CudaKvCache,
        max: usize,
    ) -> Result<usize, CudaError> {
        self.launch_steps(prog, kv, max, None)
    }

    /// [`Self::greedy_launch`], or with `uniform` a sampled run's steps (v23): each step's
    /// uniform draw, taken in step order, written to the mapped ring before the launch.
    pub(super) fn launch_steps(
        &mut self,
        prog: &CudaProgram,
        kv: &mut CudaKvCache,
        max: usize,
        uniform: Option<&mut dyn FnMut() -> f32>,
    ) -> Result<usize, CudaError> {
        if !self.greedy_ok(prog, kv) {
            return Err(CudaError::Invalid(
                "this program does not decode greedily on the device".into(),
            ));
        }
        let sampling = self.greedy.as_ref().is_some_and(|g| g.sampling);
        if sampling != uniform.is_some() {
            return Err(CudaError::Invalid(
                "a sampled run launches with sample_launch, a greedy one with greedy_launch".into(),
            ));
        }
        if !self.greedy_room() {
            return Err(CudaError::Invalid(match &self.greedy {
                None => "greedy decoding was not begun".into(),
                Some(g) => format!("{} greedy graphs in flight already", g.queue.len()),
            }));
        }
        let g = self.greedy.as_ref().expect("greedy_room");
        let pos = g.next_pos;
        // Over a pool, the positions the block table covers (v27); else the cache's.
        let end = (g.cover as usize).min(kv.capacity());
        if pos as usize >= end {
            return Err(CudaError::Invalid(format!(
                "position {pos} outside the KV cache ({end})"
            )));
        }
        if prog.kv_capacity != kv.capacity() {
            return Err(CudaError::Invalid(
                "program lowered for another KV cache".into(),
            ));
        }
        let step = prog.pick(&[pos]);
        // Several steps where they all fit the cache and run the same variant.
        let per_graph = match sampling {
            true => self.sample_steps,
            false => self.greedy_steps,
        };
        let n = per_graph.min(max.max(1));
        let last = pos as usize + n - 1;
        let n = match n > 1 && last < end && std::ptr::eq(step, prog.pick(&[last as u32])) {
            true => n,
            false => 1,
        };
        if let Some(u) = uniform {
            self.draw_bufs.write_uniforms(pos, n, u);
        }
        let bufs = &self.greedy_bufs;
        let draw = match sampling {
            true => Some(self.draw_tail(step)?),
            false => None,
        };
        let tail = GreedyTail {
            func: step
                .greedy_next
                .as_ref()
                .filter(|_| !self.greedy_lab && draw.is_none())
                .map(|f| f.cu_function()),
            buf: bufs.buf.ptr,
            ring: bufs.ring_dev,
            draw,
        };
        let g = self.greedy.as_ref().expect("greedy_room");
        let event = g.next_event;
        let ev = g.events[event];
        self.replay(step, kv, Tail::Greedy(&tail), n)?;
        // SAFETY: recording an event we own on our stream.
        unsafe { check(sys::cuEventRecord(ev, self.dev.cu_stream()), "event record")? };
        let g = self.greedy.as_mut().expect("checked above");
        g.queue.push_back(Launched {
            pos,
            steps: n as u32,
            read: 0,
            event,
            done: false,
        });
        g.next_event = (g.next_event + 1) % g.events.len();
        g.next_pos = pos + n as u32;
        self.stats.submissions += 1;
        self.stats.executions += n as u64;
        // The argmax kernel where the head kernel's copy does not take it (v20d); a sampled
        // step's two (v23).
        let argmax = match tail.draw.is_some() {
            true => 2,
            false => u64::from(tail.func.is_some()),
        };
        self.stats.kernels += (step.launches.len() as u64 + argmax) * n as u64;
        Ok(n)
    }

    /// Wait for the oldest greedy step launched and not yet read: (its position, the token it
    /// chose). The steps of one graph come together, when its event fires.
    pub fn greedy_wait(&mut self) -> Result<(u32, u32), CudaError> {
        let ring = self.greedy_bufs.ring.ptr;
        let g = self
            .greedy
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("greedy decoding was not begun".into()))?;
        let l = g
            .queue
            .front_mut()
            .ok_or_else(|| CudaError::Invalid("no greedy step in flight".into()))?;
        if !l.done {
            // SAFETY: waiting on an event we recorded after the graph's steps.
            unsafe { check(sys::cuEventSynchronize(g.events[l.event]), "event wait")? };
            l.done = true;
        }
        let pos = l.pos + l.read;
        // SAFETY: the graph's kernels are over and their writes to mapped memory visible (its
        // event fired); reading the ring's word for this step (RING words; the queue's steps,
        // at most QUEUED * GREEDY_MAX_STEPS <= RING, each write their own).
        let tok = unsafe { std::ptr::read_volatile((ring as *const u32).add(pos as usize % RING)) };
        l.read += 1;
        if l.read == l.steps {
            g.queue.pop_front();
        }
        Ok((pos, tok))
    }

    /// End a greedy run: wait for the steps in flight, drop their tokens.
    pub fn greedy_end(&mut self) -> Result<(), CudaError> {
        if let Some(g) = &mut self.greedy {
            g.forget();
        }
        self.dev.sync()
    }
}
