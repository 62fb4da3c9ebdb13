//! Sampled decoding on the device (v23-v23b, `SMELT_CUDA_SAMPLE=0` turns it off): a one-token
//! step's graph ends with its candidates
//! (`top_cands`, into device memory) and the draw (prelude `sample_draw`: penalties over a
//! history kept on the device, top-k, top-p, min-p, temperature and a uniform the host writes
//! ahead from the sampler's seeded stream, the arithmetic the host's `Sampler::sample_top`
//! does, operation for operation), which writes the next step's token and position as greedy
//! decoding's argmax does (backend/greedy.rs): the host launches sampled steps ahead too.

use std::ffi::c_void;

use cudarc::driver::sys;

use super::top::TopTail;
use super::{CudaBackend, CudaKvCache, CudaProgram};
use crate::device::{DevBuf, Device, Pinned};
use crate::CudaError;

/// The token a step writes to the ring where its candidates cannot give the host's draw (none
/// finite, too many at the threshold, a penalty making one non-finite): the caller evaluates
/// that step again on the host's path.
pub const SAMPLE_NONE: u32 = u32::MAX;
/// Tokens of the history the device keeps (the penalties' window is shorter).
const HIST: usize = 128;
/// Uniforms by position (the token ring's length).
const RING: usize = 64;
/// Words of a row of `top_cands`' output.
const ROW: usize = 2 + 2 * super::top::TOP_K;

/// The draw's settings, history, uniforms (mapped host memory) and candidates.
pub(crate) struct DrawBufs {
    settings: DevBuf,
    history: DevBuf,
    uniforms: Pinned,
    uniforms_dev: sys::CUdeviceptr,
    cands: DevBuf,
}

impl DrawBufs {
    pub(super) fn new(dev: &Device) -> Result<DrawBufs, CudaError> {
        let (uniforms, uniforms_dev) = dev.alloc_mapped(RING * 4)?;
        Ok(DrawBufs {
            settings: dev.alloc(8 * 4)?,
            history: dev.alloc((1 + HIST) * 4)?,
            uniforms,
            uniforms_dev,
            cands: dev.alloc(ROW * 4)?,
        })
    }

    /// The uniforms of steps `pos..pos + n`, drawn in order from `next`.
    pub(super) fn write_uniforms(&self, pos: u32, n: usize, next: &mut dyn FnMut() -> f32) {
        for i in 0..n {
            let at = (pos as usize + i) % RING;
            // SAFETY: the mapped ring holds RING floats; the steps that read this word (RING
            // positions apart) are done: at most QUEUED * GREEDY_MAX_STEPS <= RING steps are
            // queued (backend/greedy.rs), and this step is not launched yet.
            unsafe { std::ptr::write_volatile((self.uniforms.ptr as *mut f32).add(at), next()) };
        }
    }
}

/// A sampled step's tail: the candidates' kernel into device memory, then the draw.
pub(super) struct DrawTail {
    top: TopTail,
    draw: sys::CUfunction,
    settings: sys::CUdeviceptr,
    history: sys::CUdeviceptr,
    uniforms: sys::CUdeviceptr,
    ring: sys::CUdeviceptr,
}

impl DrawTail {
    /// Enqueue the candidates of the logits at `logits` and the draw, which writes the token
    /// and position buffers `io`, the history and the ring.
    pub(super) fn enqueue(
        &self,
        stream: sys::CUstream,
        logits: sys::CUdeviceptr,
        io: (sys::CUdeviceptr, sys::CUdeviceptr),
        programmatic: bool,
    ) -> Result<(), CudaError> {
        self.top.enqueue(stream, logits, programmatic)?;
        let mut a = [
            self.top.out,
            self.settings,
            self.history,
            self.uniforms,
            io.0,
            io.1,
            self.ring,
        ];
        let mut ptrs: [*mut c_void; 7] =
            std::array::from_fn(|i| (&mut a[i]) as *mut u64 as *mut c_void);
        // SAFETY: `sample_draw` reads a row of candidates (ROW words at `top.out`), the 8
        // settings words, the history (1 + HIST words, which it appends to) and one uniform
        // of the mapped ring, and writes one word each of the token and position buffers and
        // of the mapped token ring (RING words).
        unsafe {
            super::launch_tail(
                self.draw,
                (1, 1),
                super::top::TOP_K as u32,
                stream,
                &mut ptrs,
                true,
                "sample draw launch",
            )
        }
    }
}

impl CudaBackend {
    /// Whether `prog` can decode sampled on the device over `kv`: as [`Self::greedy_ok`], with
    /// the candidates' and the draw's kernels.
    pub fn sample_ok(&self, prog: &CudaProgram, kv: &CudaKvCache) -> bool {
        self.sample_on
            && self.greedy_ok(prog, kv)
            && self.top_ok(prog)
            && prog.sample_draw.is_some()
    }

    /// Begin sampled decoding with `prog` from `token` at `position`: `settings` are the
    /// sampler's (`smelt_engine::sampler::DeviceSampling::words`), `history` the tokens seen
    /// so far (prompt and generated, `token` the last; its last [`HIST`] - 1 are kept),
    /// `blocks` a solo program's block table (as [`Self::greedy_begin`]). Launch
    /// the steps with [`Self::sample_launch`] and read them with
    /// [`Self::greedy_wait`]; a token of [`SAMPLE_NONE`] ends the run there.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_begin(
        &mut self,
        prog: &CudaProgram,
        token: u32,
        position: u32,
        kv: &CudaKvCache,
        settings: [u32; 8],
        history: &[u32],
        blocks: &[u32],
    ) -> Result<(), CudaError> {
        if !self.sample_ok(prog, kv) {
            return Err(CudaError::Invalid(
                "this program does not decode sampled on the device".into(),
            ));
        }
        if settings[7] as usize >= HIST {
            return Err(CudaError::Invalid(format!(
                "a penalty window of {} tokens (the device keeps {})",
                settings[7],
                HIST - 1
            )));
        }
        self.greedy_begin(prog, token, position, kv, blocks)?;
        let mut h = vec![0u32; 1 + HIST];
        let seen = history.len();
        h[0] = seen as u32;
        for (i, &t) in history
            .iter()
            .enumerate()
            .skip(seen.saturating_sub(HIST - 1))
        {
            h[1 + i % HIST] = t;
        }
        let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let b = &self.draw_bufs;
        self.dev.upload(b.settings.ptr, &bytes(&settings))?;
        self.dev.upload(b.history.ptr, &bytes(&h))?;
        if let Some(g) = self.greedy.as_mut() {
            g.sampling = true;
        }
        Ok(())
    }

    /// Launch the next sampled steps (as [`Self::greedy_launch`]), each step's uniform drawn
    /// in order from `uniform`.
    pub fn sample_launch(
        &mut self,
        prog: &CudaProgram,
        kv: &mut CudaKvCache,
        max: usize,
        uniform: &mut dyn FnMut() -> f32,
    ) -> Result<usize, CudaError> {
        self.launch_steps(prog, kv, max, Some(uniform))
    }

    /// The tail of a sampled step of `step` (one of a program's variants).
    pub(super) fn draw_tail(&self, step: &CudaProgram) -> Result<DrawTail, CudaError> {
        let (Some(top), Some(draw)) = (&step.top_cands, &step.sample_draw) else {
            return Err(CudaError::Invalid(
                "this program does not decode sampled on the device".into(),
            ));
        };
        let b = &self.draw_bufs;
        Ok(DrawTail {
            top: TopTail {
                func: top.cu_function(),
                buf: self.top_bufs.buf.ptr,
                out: b.cands.ptr,
                rows: 1,
                n: step.out_len,
            },
            draw: draw.cu_function(),
            settings: b.settings.ptr,
            history: b.history.ptr,
            uniforms: b.uniforms_dev,
            ring: self.greedy_addrs().1,
        })
    }
}
