//! Sampling candidates on the device (v22): a decode step's graph that ends with the prelude's
//! `top_cands` kernel instead of the logits' copy. Each row's [`TOP_K`] best finite logits
//! (the host sampler's `top_k_into` set) and their values land in mapped host memory: ~1 KB a
//! row where the logits were 0.2-1 MB, and no host pass over the vocabulary. The host's
//! sampler takes them where the answer is the same as over the whole row (top-k with
//! penalties that only lower logits, `smelt_engine::sampler`); anything else reads the row
//! with [`CudaBackend::logits_row`] or runs the plain step.

use std::ffi::c_void;

use cudarc::driver::sys;

use super::{BatchSeq, CudaBackend, CudaKvCache, CudaProgram, Tail};
use crate::device::{DevBuf, Device, Pinned};
use crate::CudaError;

/// Candidates a row gets: its best finite logits, this many or every finite one.
pub const TOP_K: usize = 128;
/// The prelude's layout: logits a block, rows a step at most, and the buffer's words.
const SPAN: usize = 4096;
const MAX_BLOCKS: usize = 64;
const MAX_ROWS: usize = 16;
const KEYS_AT: usize = 1024;
/// Words a row of the output: count, flags, then (index, value bits) pairs.
const ROW: usize = 2 + 2 * TOP_K;
const THREADS: u32 = 512;
/// Keys a block offers in the buffer: its warps' best four each.
const WARPS: usize = THREADS as usize / 32 * 4;

/// A row had a `+inf` logit (a greedy pick would take it; it is no candidate).
pub const TOP_INF: u32 = 1;
/// A row had a NaN logit.
pub const TOP_NAN: u32 = 2;
/// A row had more keys at its threshold than the kernel keeps (many equal logits): no
/// candidates; the whole row is needed.
pub const TOP_OVERFLOW: u32 = 4;

/// The kernel's buffer and the output (mapped host memory), allocated with the backend.
pub(crate) struct TopBufs {
    pub(super) buf: DevBuf,
    out: Pinned,
    out_dev: sys::CUdeviceptr,
}

impl TopBufs {
    pub(super) fn new(dev: &Device) -> Result<TopBufs, CudaError> {
        let buf = dev.alloc((KEYS_AT + 2 * MAX_ROWS * MAX_BLOCKS * WARPS) * 4)?;
        let (out, out_dev) = dev.alloc_mapped(MAX_ROWS * ROW * 4)?;
        Ok(TopBufs { buf, out, out_dev })
    }
}

/// What a graph's `top_cands` launch takes: the kernel and the row shape.
pub(super) struct TopTail {
    pub func: sys::CUfunction,
    pub buf: sys::CUdeviceptr,
    pub out: sys::CUdeviceptr,
    pub rows: usize,
    pub n: usize,
}

impl TopTail {
    pub(super) fn enqueue(
        &self,
        stream: sys::CUstream,
        logits: sys::CUdeviceptr,
        programmatic: bool,
    ) -> Result<(), CudaError> {
        let mut a_logits = logits;
        let mut a_n = self.n as u32;
        let (mut a_buf, mut a_out) = (self.buf, self.out);
        let mut ptrs: [*mut c_void; 4] = [
            (&mut a_logits) as *mut u64 as *mut c_void,
            (&mut a_n) as *mut u32 as *mut c_void,
            (&mut a_buf) as *mut u64 as *mut c_void,
            (&mut a_out) as *mut u64 as *mut c_void,
        ];
        // SAFETY: the kernel reads `rows` rows of `n` floats at `logits` (the program's output,
        // inside the arena), writes in `buf` its counters and flags and at most MAX_ROWS *
        // MAX_BLOCKS * WARPS keys (`top_ok` bounds rows and blocks), and ROW words a row of the
        // mapped output (MAX_ROWS rows).
        unsafe {
            super::launch_tail(
                self.func,
                (self.n.div_ceil(SPAN) as u32, self.rows as u32),
                THREADS,
                stream,
                &mut ptrs,
                programmatic,
                "top candidates launch",
            )
        }
    }
}

/// Each row's candidates of a step (borrowed from the mapped output until the next execution).
pub struct TopRows<'a> {
    words: &'a [u32],
    rows: usize,
}

impl<'a> TopRows<'a> {
    /// `rows` rows of the kernel's output words.
    pub(crate) fn new(words: &'a [u32], rows: usize) -> TopRows<'a> {
        TopRows { words, rows }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s flags ([`TOP_INF`], [`TOP_NAN`]).
    pub fn flags(&self, r: usize) -> u32 {
        self.words[r * ROW + 1]
    }

    /// Row `r`'s candidates, (token, logit), in no particular order: its [`TOP_K`] best
    /// finite logits, or every finite one where it has fewer; none with [`TOP_OVERFLOW`].
    pub fn candidates(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let w = &self.words[r * ROW..(r + 1) * ROW];
        let n = (w[0] as usize).min(TOP_K);
        w[2..2 + 2 * n]
            .chunks_exact(2)
            .map(|p| (p[0], f32::from_bits(p[1])))
    }
}

impl CudaBackend {
    /// Whether `prog`'s steps can end with the candidates' kernel: a decode program replayed
    /// as a graph (not profiled or traced), at most 16 rows of at most 64 x 4096 logits.
    pub fn top_ok(&self, prog: &CudaProgram) -> bool {
        self.graphs
            && self.top_on
            && self.profile.is_none()
            && self.trace.is_none()
            && prog.decode
            && !prog.cooperative
            && prog.top_cands.is_some()
            && prog.n_tokens <= MAX_ROWS
            && prog.out_len > 0
            && prog.out_len.is_multiple_of(prog.n_tokens)
            && (prog.out_len / prog.n_tokens).div_ceil(SPAN) <= MAX_BLOCKS
    }

    /// [`CudaBackend::execute`] whose step ends with each row's candidates instead of its
    /// logits (which stay on the device for [`CudaBackend::logits_row`]).
    pub fn execute_top(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        kv: &mut CudaKvCache,
    ) -> Result<TopRows<'_>, CudaError> {
        self.prepare_single(prog, tokens, positions, kv)?;
        self.run_top(prog.pick(positions), kv)
    }

    /// [`CudaBackend::execute_batch`] whose step ends with each row's candidates.
    pub fn execute_batch_top(
        &mut self,
        prog: &CudaProgram,
        tokens: &[u32],
        positions: &[u32],
        seqs: &[BatchSeq],
        kv: &mut CudaKvCache,
    ) -> Result<TopRows<'_>, CudaError> {
        self.prepare_batch(prog, tokens, positions, seqs, kv)?;
        self.run_top(prog.pick(positions), kv)
    }

    /// Row `row` of the logits of the last execution of `prog` (still in the arena: no other
    /// execution ran since), copied from the device.
    pub fn logits_row(&mut self, prog: &CudaProgram, row: usize) -> Result<Vec<f32>, CudaError> {
        let n = prog.out_len / prog.n_tokens.max(1);
        if row >= prog.n_tokens || prog.out_off + prog.out_len > self.io.arena.bytes / 4 {
            return Err(CudaError::Invalid(format!("no logits row {row}")));
        }
        let mut bytes = vec![0u8; n * 4];
        let at = self.io.arena.ptr + ((prog.out_off + row * n) * 4) as u64;
        self.dev.download(&mut bytes, at)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn run_top(&mut self, prog: &CudaProgram, kv: &CudaKvCache) -> Result<TopRows<'_>, CudaError> {
        let Some(f) = prog.top_cands.as_ref().filter(|_| self.top_ok(prog)) else {
            return Err(CudaError::Invalid(
                "this program does not end with sampling candidates".into(),
            ));
        };
        let tail = TopTail {
            func: f.cu_function(),
            buf: self.top_bufs.buf.ptr,
            out: self.top_bufs.out_dev,
            rows: prog.n_tokens,
            n: prog.out_len / prog.n_tokens,
        };
        self.replay(prog, kv, Tail::Top(&tail), 1)?;
        self.stats.submissions += 1;
        self.dev.sync()?;
        self.stats.executions += 1;
        self.stats.kernels += prog.launches.len() as u64 + 1;
        // SAFETY: the step's kernels are over (the stream is synchronised) and wrote
        // `n_tokens` rows of ROW words of the mapped output, which no execution writes while
        // the slice borrows `self`.
        let words = unsafe {
            std::slice::from_raw_parts(self.top_bufs.out.ptr as *const u32, prog.n_tokens * ROW)
        };
        Ok(TopRows::new(words, prog.n_tokens))
    }
}
