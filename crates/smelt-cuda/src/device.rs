//! The GPU: context, stream, raw device memory, NVRTC compilation with a disk cache.

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::CudaError;

pub(crate) fn check(r: sys::CUresult, what: &str) -> Result<(), CudaError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Driver(format!("{what}: {r:?}")))
    }
}

/// Whether the CUDA driver library loads and reports at least one device. Never panics.
pub fn available() -> bool {
    probe().is_ok()
}

fn probe() -> Result<(), CudaError> {
    // SAFETY: only checks whether the shared library can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDriver("libcuda not found".into()));
    }
    // SAFETY: cuInit and cuDeviceGetCount have no preconditions once the library is loaded.
    unsafe {
        check(sys::cuInit(0), "cuInit")?;
        let mut n = 0;
        check(sys::cuDeviceGetCount(&mut n), "cuDeviceGetCount")?;
        if n < 1 {
            return Err(CudaError::NoDriver("no CUDA device".into()));
        }
    }
    Ok(())
}

/// A device allocation, freed on drop.
pub(crate) struct DevBuf {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SAFETY: ptr came from cuMemAlloc in Device::alloc and is freed once.
            unsafe {
                let _ = sys::cuMemFree_v2(self.ptr);
            }
        }
    }
}

/// Pinned host memory (the CUDA graph copies tokens, positions and outputs through it).
pub(crate) struct Pinned {
    pub ptr: *mut u8,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: ptr came from cuMemAllocHost and is freed once.
        unsafe {
            let _ = sys::cuMemFreeHost(self.ptr.cast());
        }
    }
}

// SAFETY: the pinned buffer is plain memory owned by one backend; access is serialised by &mut.
unsafe impl Send for Pinned {}

/// One GPU: its context and the stream every kernel runs on.
pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub name: String,
    /// Compute capability, e.g. (9, 0).
    pub cc: (i32, i32),
    pub sm_count: i32,
    /// cuDriverGetVersion, e.g. 13000.
    pub driver_version: i32,
    pub total_mem: usize,
}

impl Device {
    /// Open device 0. Errors (never panics) when there is no driver or no GPU.
    pub fn open() -> Result<Device, CudaError> {
        probe()?;
        let ctx = CudaContext::new(0).map_err(|e| CudaError::Driver(format!("context: {e:?}")))?;
        // SAFETY: the backend uses one stream; cudarc's per-buffer events are not needed and
        // would be recorded inside graph captures.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::Driver(format!("stream: {e:?}")))?;
        let attr = |a| {
            ctx.attribute(a)
                .map_err(|e| CudaError::Driver(format!("attribute: {e:?}")))
        };
        use sys::CUdevice_attribute::*;
        let cc = (
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let mut driver_version = 0;
        // SAFETY: plain out-parameter queries on an initialised driver.
        let (name, total_mem) = unsafe {
            check(
                sys::cuDriverGetVersion(&mut driver_version),
                "cuDriverGetVersion",
            )?;
            let dev = cudarc::driver::result::device::get(0)
                .map_err(|e| CudaError::Driver(format!("device: {e:?}")))?;
            let name = cudarc::driver::result::device::get_name(dev).unwrap_or_default();
            let mem = cudarc::driver::result::device::total_mem(dev).unwrap_or(0);
            (name, mem)
        };
        Ok(Device {
            ctx,
            stream,
            name,
            cc,
            sm_count,
            driver_version,
            total_mem,
        })
    }

    pub(crate) fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| CudaError::Driver(format!("bind: {e:?}")))
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<DevBuf, CudaError> {
        self.bind()?;
        let mut ptr = 0;
        if bytes > 0 {
            // SAFETY: out-parameter allocation; freed by DevBuf::drop.
            unsafe { check(sys::cuMemAlloc_v2(&mut ptr, bytes), "cuMemAlloc")? };
            // SAFETY: ptr is a fresh allocation of `bytes` bytes.
            unsafe { check(sys::cuMemsetD8_v2(ptr, 0, bytes), "cuMemset")? };
        }
        Ok(DevBuf { ptr, bytes })
    }

    pub(crate) fn alloc_pinned(&self, bytes: usize) -> Result<Pinned, CudaError> {
        self.bind()?;
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: out-parameter allocation of pinned host memory; freed by Pinned::drop.
        unsafe {
            check(
                sys::cuMemAllocHost_v2(&mut p, bytes.max(16)),
                "cuMemAllocHost",
            )?
        };
        Ok(Pinned { ptr: p.cast() })
    }

    /// Pinned host memory the device writes in place (mapped into its address space): the
    /// host pointer and the device's.
    pub(crate) fn alloc_mapped(
        &self,
        bytes: usize,
    ) -> Result<(Pinned, sys::CUdeviceptr), CudaError> {
        self.bind()?;
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: out-parameter allocation of mapped pinned host memory (freed by
        // Pinned::drop), zeroed, then its device address.
        unsafe {
            check(
                sys::cuMemHostAlloc(&mut p, bytes.max(16), sys::CU_MEMHOSTALLOC_DEVICEMAP),
                "cuMemHostAlloc",
            )?;
            std::ptr::write_bytes(p.cast::<u8>(), 0, bytes.max(16));
            let pinned = Pinned { ptr: p.cast() };
            check(
                sys::cuMemHostGetDevicePointer_v2(&mut d, p, 0),
                "cuMemHostGetDevicePointer",
            )?;
            Ok((pinned, d))
        }
    }

    /// Synchronous copy of `src` to device address `dst`, complete when it returns.
    ///
    /// From pageable memory `cuMemcpyHtoD` returns once the bytes are staged, and its DMA
    /// runs on the legacy stream, which our non-blocking stream does not wait for: a kernel
    /// launched right after read the buffer's old contents (seen on the device, v20a's argmax
    /// test). The context's synchronisation waits for the DMA.
    pub(crate) fn upload(&self, dst: sys::CUdeviceptr, src: &[u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller passes a destination inside an allocation of at least src.len() bytes.
        unsafe {
            check(
                sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()),
                "cuMemcpyHtoD",
            )?;
            check(sys::cuCtxSynchronize(), "cuCtxSynchronize")
        }
    }

    /// Synchronous copy of `dst.len()` bytes from device address `src` (tests read results;
    /// `SMELT_CUDA_TRACE` reads its stamps).
    pub(crate) fn download(&self, dst: &mut [u8], src: sys::CUdeviceptr) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller passes a source inside an allocation of at least dst.len() bytes.
        unsafe {
            check(
                sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()),
                "cuMemcpyDtoH",
            )
        }
    }

    pub(crate) fn sync(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::Driver(format!("synchronize: {e:?}")))
    }

    /// Compile `src` for this GPU (or take the PTX from the disk cache) and load it.
    ///
    /// NVRTC and the driver (PTX to machine code) compile on the calling thread; for large
    /// generated modules this has crashed the process (SIGSEGV, seen twice on the device, the
    /// kind of crash a deep recursion on a small stack gives), so it runs on a thread of its
    /// own with a large stack.
    pub(crate) fn compile(&self, src: &str) -> Result<Arc<CudaModule>, CudaError> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("smelt-cuda-jit".into())
                .stack_size(512 << 20)
                .spawn_scoped(s, || self.compile_here(src))
                .map_err(|e| CudaError::Driver(format!("JIT thread: {e}")))?
                .join()
                .map_err(|_| CudaError::Driver("JIT thread panicked".into()))?
        })
    }

    /// Compile each of `srcs` into the disk cache, several at a time (a batch engine's programs
    /// at load: one NVRTC compile takes 1-2 s). Does nothing without a cache directory.
    /// Returns the number of threads it compiled on (0: nothing to do) and the longest single
    /// compile in seconds (the critical path of the parallel compile).
    pub(crate) fn precompile(&self, srcs: &[String]) -> Result<(usize, f64), CudaError> {
        if cache_dir().is_none() || srcs.is_empty() {
            return Ok((0, 0.0));
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(srcs.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("smelt-cuda-jit".into())
                        .stack_size(512 << 20)
                        .spawn_scoped(s, || -> Result<f64, CudaError> {
                            let mut slowest = 0f64;
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(src) = srcs.get(i) else {
                                    return Ok(slowest);
                                };
                                let t = std::time::Instant::now();
                                self.image(src)?;
                                slowest = slowest.max(t.elapsed().as_secs_f64());
                            }
                        })
                        .map_err(|e| CudaError::Driver(format!("JIT thread: {e}")))
                })
                .collect();
            let mut slowest = 0f64;
            for w in workers {
                let t = w?
                    .join()
                    .map_err(|_| CudaError::Driver("JIT thread panicked".into()))??;
                slowest = slowest.max(t);
            }
            Ok((threads, slowest))
        })
    }

    fn compile_here(&self, src: &str) -> Result<Arc<CudaModule>, CudaError> {
        self.bind()?;
        let bin = self.image(src)?;
        self.ctx
            .load_module(Ptx::from_binary(bin))
            .map_err(|e| CudaError::Driver(format!("load module: {e:?}")))
    }

    /// The GPU's machine code (cubin) for `src`: from the disk cache, or compiled by NVRTC (and
    /// cached). A cubin loads at once; PTX would be compiled again by the driver at each load
    /// (1-3 s for a model's program).
    fn image(&self, src: &str) -> Result<Vec<u8>, CudaError> {
        let arch = format!("sm_{}{}", self.cc.0, self.cc.1);
        let key = cache_key(src, &arch, self.driver_version);
        let path = cache_dir().map(|d| d.join(format!("{key:016x}.cubin")));
        if let Some(bin) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
            return Ok(bin);
        }
        let bin = nvrtc_cubin(src, &arch)?;
        if let Some(p) = &path {
            // A failed cache write only costs a recompile next time.
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &bin).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
        Ok(bin)
    }

    pub(crate) fn function(
        &self,
        m: &Arc<CudaModule>,
        name: &str,
        smem: usize,
    ) -> Result<CudaFunction, CudaError> {
        let f = m
            .load_function(name)
            .map_err(|e| CudaError::Driver(format!("function {name}: {e:?}")))?;
        if self.cc.0 >= 9 {
            // Decode attention's clusters may take 16 blocks (a non-portable size).
            // SAFETY: setting an attribute of a loaded function.
            unsafe {
                check(
                    sys::cuFuncSetAttribute(
                        f.cu_function(),
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                        1,
                    ),
                    "cuFuncSetAttribute",
                )?
            };
        }
        if smem > 48 * 1024 {
            // SAFETY: raising the dynamic shared-memory limit of a loaded function.
            unsafe {
                check(
                    sys::cuFuncSetAttribute(
                        f.cu_function(),
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    ),
                    "cuFuncSetAttribute",
                )?
            };
        }
        Ok(f)
    }
}

/// Blocks of `block` threads and `smem` dynamic shared bytes of `f` resident on one SM at once.
pub(crate) fn occupancy(f: &CudaFunction, block: u32, smem: u32) -> Result<u32, CudaError> {
    let mut n = 0i32;
    // SAFETY: an occupancy query on a loaded function, writing one i32.
    unsafe {
        check(
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut n,
                f.cu_function(),
                block as i32,
                smem as usize,
            ),
            "occupancy",
        )?
    };
    Ok(n.max(0) as u32)
}

fn head(src: &str) -> String {
    src.lines().take(0).collect::<Vec<_>>().join("\n")
}

/// FNV-1a over the source, the architecture and the driver version.
/// Compile `src` with NVRTC for `arch` (`sm_90`) to a cubin.
fn nvrtc_cubin(src: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys as nv};
    let fail = |what: &str, log: String| {
        CudaError::Compile(format!(
            "{what}: {log}\n--- source (first lines) ---\n{}",
            head(src)
        ))
    };
    let csrc = std::ffi::CString::new(src).map_err(|e| fail("source", e.to_string()))?;
    let prog = result::create_program(&csrc, None).map_err(|e| fail("create", format!("{e:?}")))?;
    let opts = [format!("--gpu-architecture={arch}"), "-std=c++17".into()];
    // SAFETY: `prog` is a live NVRTC program (destroyed once below); the log and cubin buffers
    // are sized by NVRTC's own size queries before it writes them.
    let out = unsafe {
        let r = match result::compile_program(prog, &opts) {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        std::ffi::CStr::from_ptr(l.as_ptr())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                Err(fail(&format!("{e:?}"), log))
            }
            Ok(()) => {
                let mut n = 0usize;
                let rc = nv::nvrtcGetCUBINSize(prog, &mut n);
                if rc != nv::nvrtcResult::NVRTC_SUCCESS || n == 0 {
                    Err(fail("cubin size", format!("{rc:?}")))
                } else {
                    let mut bin = vec![0u8; n];
                    let rc = nv::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut std::ffi::c_char);
                    if rc == nv::nvrtcResult::NVRTC_SUCCESS {
                        Ok(bin)
                    } else {
                        Err(fail("cubin", format!("{rc:?}")))
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}

fn cache_key(src: &str, arch: &str, driver: i32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in src.bytes().chain(arch.bytes()).chain(driver.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `SMELT_CUDA_CACHE`, else `~/.cache/smelt/cuda`; None disables the cache.
fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SMELT_CUDA_CACHE") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/smelt/cuda"))
}
