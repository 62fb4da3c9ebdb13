//! cuBLAS for prefill GEMMs, loaded at run time and optional: where libcublas cannot be
//! loaded (or `SMELT_CUBLAS=0`), prefill keeps the generated mma.sync GEMM kernel.
//!
//! cudarc's dynamic loader panics when the library or a symbol is missing (`culib()` and each
//! function's first call); `Cublas::load` checks the library and every symbol used here first,
//! so after it succeeds no call can reach those panics, and a missing library is an `Err`.

use std::ffi::{c_int, c_void};
use std::path::{Path, PathBuf};

use cudarc::cublas::sys as cb;
use cudarc::driver::sys::CUstream;

/// Symbols resolved before any call (cudarc would panic on a missing one).
const SYMBOLS: [&str; 5] = [
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasGetVersion_v2",
    "cublasGemmEx",
];

/// One GEMM of a prefill program, C = X · Wᵀ with row-major X `[m, k]` (f16, row stride
/// `ldx`), W `[n, k]` (f16, row stride `ldw`) and C `[m, n]` (f32, row stride `ldc`).
/// Offsets are in floats from the arena's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmCall {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x_off: usize,
    pub ldx: usize,
    pub w_off: usize,
    pub ldw: usize,
    pub c_off: usize,
    pub ldc: usize,
}

/// A cuBLAS handle bound to the backend's stream.
pub(crate) struct Cublas {
    handle: cb::cublasHandle_t,
    /// cublasGetVersion, e.g. 130000 for 13.0.0.
    pub version: i32,
}

// SAFETY: the handle is used only by the backend that owns it, one call at a time (the
// backend is Send, not Sync, and its executions take &mut self).
unsafe impl Send for Cublas {}

impl Cublas {
    /// Load libcublas, create a handle and bind it to `stream` (the context must be current).
    pub fn load(stream: CUstream) -> Result<Cublas, String> {
        if std::env::var("SMELT_CUBLAS").is_ok_and(|v| v == "0") {
            return Err("off (SMELT_CUBLAS=0)".into());
        }
        // SAFETY: only opens the shared library (and closes it again).
        if !unsafe { cb::is_culib_present() } {
            preload()?;
        }
        // SAFETY: is_culib_present() was true (checked, or made true by preload), so culib()
        // finds the library instead of panicking; `get` only looks symbols up.
        unsafe {
            if !cb::is_culib_present() {
                return Err("libcublas not found".into());
            }
            let lib = cb::culib();
            for s in SYMBOLS {
                if lib.get::<unsafe extern "C" fn()>(s.as_bytes()).is_err() {
                    return Err(format!("libcublas lacks {s}"));
                }
            }
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: every symbol is present (checked above); out-parameter creation, the handle
        // is destroyed by Drop (also when binding the stream fails).
        unsafe {
            status(cb::cublasCreate_v2(&mut handle), "cublasCreate")?;
            let mut me = Cublas { handle, version: 0 };
            status(
                cb::cublasSetStream_v2(handle, stream as cb::cudaStream_t),
                "cublasSetStream",
            )?;
            status(
                cb::cublasGetVersion_v2(handle, &mut me.version),
                "cublasGetVersion",
            )?;
            Ok(me)
        }
    }

    /// "13.0.0" from 130000 (cuBLAS 12+: major * 10000 + minor * 100 + patch).
    pub fn version_text(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }

    /// Enqueue `g` on the handle's stream; `arena` is the arena's device address.
    ///
    /// Row-major C `[m, n]` = X `[m, k]` · Wᵀ is, in cuBLAS' column-major terms,
    /// C' (n x m, ldc) = op_T(W as k x n, ldw) · (X as k x m, ldx).
    ///
    /// # Safety
    /// The arena must hold every element `g` addresses (the program was generated with its
    /// sizes, and `ensure` grew the arena to them).
    pub unsafe fn gemm(&self, g: &GemmCall, arena: u64) -> Result<(), String> {
        let dims = [g.m, g.n, g.k, g.ldx, g.ldw, g.ldc];
        if dims.iter().any(|&d| d > c_int::MAX as usize) {
            return Err(format!("GEMM dimensions {dims:?} exceed cuBLAS' int"));
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let at = |off: usize| (arena + off as u64 * 4) as *mut c_void;
        status(
            cb::cublasGemmEx(
                self.handle,
                cb::cublasOperation_t::CUBLAS_OP_T,
                cb::cublasOperation_t::CUBLAS_OP_N,
                g.n as c_int,
                g.m as c_int,
                g.k as c_int,
                (&alpha as *const f32).cast(),
                at(g.w_off),
                cb::cudaDataType::CUDA_R_16F,
                g.ldw as c_int,
                at(g.x_off),
                cb::cudaDataType::CUDA_R_16F,
                g.ldx as c_int,
                (&beta as *const f32).cast(),
                at(g.c_off),
                cb::cudaDataType::CUDA_R_32F,
                g.ldc as c_int,
                cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            ),
            "cublasGemmEx",
        )
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: a handle from cublasCreate (symbols checked in `load`), destroyed once.
            unsafe {
                let _ = cb::cublasDestroy_v2(self.handle);
            }
        }
    }
}

fn status(s: cb::cublasStatus_t, what: &str) -> Result<(), String> {
    if s == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {s:?}"))
    }
}

/// Directories where a CUDA toolkit keeps libcublas when the loader's path does not list it:
/// `SMELT_CUBLAS_DIR`, `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SMELT_CUBLAS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(Path::new(&d).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Open libcublasLt and libcublas by full path from the first directory holding them, and
/// keep them loaded: cudarc's later open by name (`libcublas.so.13`) then finds the loaded
/// library by its soname.
fn preload() -> Result<(), String> {
    for dir in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        // Versioned names (libcublas.so.13) sort after the bare link (libcublas.so).
        names.sort();
        let pick = |stem: &str| {
            names
                .iter()
                .rfind(|n| n.starts_with(&format!("{stem}.so")))
                .map(|n| dir.join(n))
        };
        let Some(main) = pick("libcublas") else {
            continue;
        };
        for path in pick("libcublasLt").into_iter().chain([main]) {
            // SAFETY: loading a CUDA library runs its initialisers, which have no
            // preconditions; the handle is leaked so the library stays loaded.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => std::mem::forget(lib),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        return Ok(());
    }
    Err("libcublas not found on the loader path or in a CUDA toolkit directory".into())
}
