//! Quantised matrix-vector and matrix-matrix kernels for the fast CPU backend.
//!
//! A [`MatmulKernel`] is looked up once per (weight type, instruction set) when a plan is built,
//! from the table in `table.rs`. It says which [`ActType`] the activations must be quantised to,
//! quantises them ([`MatmulKernel::quantize_act`]), and runs the dot products:
//!
//! - [`MatmulKernel::gemv`] (decode): `out[r - r0] = dot(W[r], x)` for rows `r0..r1` of a weight
//!   matrix stored as GGUF stores it (rows back to back, used in place through the mmap). Rows
//!   are interleaved four at a time so several load streams are in flight.
//! - [`MatmulKernel::gemm`] (prefill): the same for `T` activation rows, in register tiles of
//!   several rows x several tokens, so every weight block loaded serves several tokens; on
//!   AVX-512 VNNI, from 8 tokens on, the panel gemm (`panel.rs`: rows decoded once to bytes,
//!   16 tokens per `vpdpbusd`).
//!
//! The executor gives each thread a disjoint row range; the calls take that range and its output.
//! Every call checks its lengths and returns a [`KernelError`] instead of reading out of bounds.
//!
//! Measurements and the history of each kernel: `docs/kernel-lab/cpu-gemv.md`.
//!
//! Layout: one file per weight-type family (`legacy.rs`: Q4_0 … Q8_0; `k45.rs`: Q4_K, Q5_K;
//! `k16.rs`: Q2_K, Q3_K, Q6_K; `float.rs`: F32, F16, BF16),
//! each with its scalar code and one SIMD body instantiated per level; `x86/` holds the building
//! blocks shared by all of them and the activation quantisers.

mod act;
mod error;
mod float;
mod isa;
mod k16;
mod k45;
mod legacy;
#[cfg(target_arch = "x86_64")]
mod panel;
mod table;
mod tile;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

use std::ops::Range;

use smelt_gguf::GgmlType;

pub use act::{quantize_row, quantize_row_to_vec, ActType};
pub use error::KernelError;
pub use isa::{Isa, ISA_ENV};
pub use table::SUPPORTED_TYPES;

/// Tokens from which [`MatmulKernel::gemm`] uses the AVX-512 panel gemm (it pads to 16).
pub const PANEL_MIN_TOKENS: usize = 8;

use act::check_isa;
use table::Entry;

/// Weight rows per gemv tile unless [`MatmulKernel::with_gemv_rows`] says otherwise.
const DEFAULT_GEMV_ROWS: usize = 4;

/// The kernel for one weight type at one instruction-set level, ready to call. Only obtainable
/// for a level the CPU supports, which is what makes its methods safe.
#[derive(Clone, Copy)]
pub struct MatmulKernel {
    wtype: GgmlType,
    isa: Isa,
    entry: Entry,
    gemv_rows: usize,
}

impl std::fmt::Debug for MatmulKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatmulKernel")
            .field("wtype", &self.wtype)
            .field("isa", &self.isa)
            .field("code_isa", &self.entry.code_isa)
            .field("act", &self.entry.act)
            .field("gemv_rows", &self.gemv_rows)
            .finish()
    }
}

impl MatmulKernel {
    /// The kernel for `wtype` at level `isa`, which the CPU must support.
    pub fn new(wtype: GgmlType, isa: Isa) -> Result<MatmulKernel, KernelError> {
        const OP: &str = "kernel";
        check_isa(OP, isa)?;
        let entry = table::lookup(wtype, isa).ok_or(KernelError::Unsupported {
            op: OP,
            dtype: wtype,
        })?;
        Ok(MatmulKernel {
            wtype,
            isa,
            entry,
            gemv_rows: DEFAULT_GEMV_ROWS,
        })
    }

    /// The same kernel with gemv interleaving `rows` weight rows per tile (1..=4). For the
    /// kernel lab: the default is what measured best.
    pub fn with_gemv_rows(self, rows: usize) -> Result<MatmulKernel, KernelError> {
        if !(1..=4).contains(&rows) {
            return Err(KernelError::Length {
                op: "with_gemv_rows",
                what: "gemv tile",
                unit: "rows",
                expected: 4,
                actual: rows,
            });
        }
        Ok(MatmulKernel {
            gemv_rows: rows,
            ..self
        })
    }

    /// Weight rows per gemv tile.
    pub fn gemv_rows(&self) -> usize {
        self.gemv_rows
    }

    /// The kernel for `wtype` at the level [`Isa::detect`] picks.
    pub fn detect(wtype: GgmlType) -> Result<MatmulKernel, KernelError> {
        MatmulKernel::new(wtype, Isa::detect())
    }

    /// The weight type.
    pub fn weight_type(&self) -> GgmlType {
        self.wtype
    }

    /// The level asked for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The level of the code that runs: [`MatmulKernel::isa`] or, where a type has no code of
    /// its own for that level, the level below whose code it uses.
    pub fn code_isa(&self) -> Isa {
        self.entry.code_isa
    }

    /// How activations must be quantised for this kernel.
    pub fn act_type(&self) -> ActType {
        self.entry.act
    }

    /// The prefill register tile, (rows, tokens).
    pub fn gemm_tile(&self) -> (usize, usize) {
        (self.entry.tiles.gemm_rows, self.entry.tiles.gemm_tokens)
    }

    /// Bytes of one weight row of `n` values.
    pub fn row_bytes(&self, n: usize) -> Result<usize, KernelError> {
        const OP: &str = "row_bytes";
        let block_size = self.wtype.block_size();
        if !n.is_multiple_of(block_size) {
            return Err(KernelError::PartialBlock {
                op: OP,
                dtype: self.wtype,
                n,
                block_size,
            });
        }
        (n / block_size)
            .checked_mul(self.wtype.type_size())
            .ok_or(KernelError::Overflow {
                op: OP,
                what: "weight row",
            })
    }

    /// Bytes of one quantised activation row of `n` values.
    pub fn act_row_bytes(&self, n: usize) -> Result<usize, KernelError> {
        self.entry.act.row_bytes(n)
    }

    /// Quantise the activation row `x` into `out` ([`MatmulKernel::act_row_bytes`] long).
    pub fn quantize_act(&self, x: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
        quantize_row(self.entry.act, self.isa, x, out)
    }

    /// The dot product of one weight row `w` (`n` values) with one quantised activation row.
    pub fn dot(&self, n: usize, w: &[u8], xq: &[u8]) -> Result<f32, KernelError> {
        let mut out = [0f32];
        self.gemv(n, w, 0..1, xq, &mut out)?;
        Ok(out[0])
    }

    /// `out[r - rows.start] = dot(W[r], xq)` for `r` in `rows`, where `w` holds the weight
    /// matrix's rows of `n` values back to back (at least `rows.end` of them).
    pub fn gemv(
        &self,
        n: usize,
        w: &[u8],
        rows: Range<usize>,
        xq: &[u8],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "gemv";
        let shape = self.check(OP, n, w, &rows, xq, 1)?;
        check_len(OP, "output", "floats", rows.len(), out.len())?;
        // SAFETY: `check` proved rows.start..rows.end lie inside `w` and that `xq` is one
        // activation row of the same block count; `out` has one float per row; the kernel's
        // level is supported by this CPU (checked when it was made).
        unsafe {
            tile::gemv(
                self.entry.tiles,
                self.gemv_rows,
                shape.nb,
                w.as_ptr().add(rows.start * shape.row_bytes),
                shape.row_bytes,
                rows.len(),
                xq.as_ptr(),
                out.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// `out[t * out_stride + (r - rows.start)] = dot(W[r], token t)` for `r` in `rows` and the
    /// `n_tokens` quantised activation rows back to back in `xq`. `out_stride >= rows.len()`;
    /// `out` must reach the last token's last row.
    ///
    /// From [`PANEL_MIN_TOKENS`] tokens on, AVX-512 VNNI machines use the panel gemm; below, the
    /// tiles. See [`MatmulKernel::gemm_with`] to choose.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        n: usize,
        w: &[u8],
        rows: Range<usize>,
        xq: &[u8],
        n_tokens: usize,
        out: &mut [f32],
        out_stride: usize,
    ) -> Result<(), KernelError> {
        let panel = n_tokens >= PANEL_MIN_TOKENS;
        self.gemm_with(n, w, rows, xq, n_tokens, out, out_stride, panel)
    }

    /// [`MatmulKernel::gemm`] with the algorithm chosen by the caller: the panel gemm where
    /// `panel` is set and this kernel has one, else the tiles. Each token's result depends
    /// only on its own activations and on the algorithm, never on how many tokens share the
    /// call (the tiles give the same bits as [`MatmulKernel::gemv`]); the two algorithms sum in
    /// different orders, so an executor that wants a token's result independent of batching
    /// picks the algorithm by the token's role, not by the call's size.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_with(
        &self,
        n: usize,
        w: &[u8],
        rows: Range<usize>,
        xq: &[u8],
        n_tokens: usize,
        out: &mut [f32],
        out_stride: usize,
        panel: bool,
    ) -> Result<(), KernelError> {
        const OP: &str = "gemm";
        let needed = gemm_out_len(OP, rows.len(), n_tokens, out_stride)?;
        if out.len() < needed {
            return Err(KernelError::Length {
                op: OP,
                what: "output",
                unit: "floats",
                expected: needed,
                actual: out.len(),
            });
        }
        let shape = self.check(OP, n, w, &rows, xq, n_tokens)?;
        let out = out.as_mut_ptr();
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.entry.panel.filter(|_| panel) {
            // SAFETY: as below; panels exist only in AVX-512 VNNI entries, which the CPU runs.
            unsafe {
                panel::gemm(
                    p,
                    shape.nb,
                    w.as_ptr().add(rows.start * shape.row_bytes),
                    shape.row_bytes,
                    rows.len(),
                    xq.as_ptr(),
                    shape.act_row_bytes,
                    n_tokens,
                    out,
                    out_stride,
                )
            };
            return Ok(());
        }
        // SAFETY: `check` proved the rows lie inside `w` and `xq` holds n_tokens activation rows
        // of the same block count; `out` holds every element written (checked above) and is
        // borrowed mutably for the call; the kernel's level is supported by this CPU.
        unsafe {
            tile::gemm(
                self.entry.tiles,
                shape.nb,
                w.as_ptr().add(rows.start * shape.row_bytes),
                shape.row_bytes,
                rows.len(),
                xq.as_ptr(),
                shape.act_row_bytes,
                n_tokens,
                out,
                out_stride,
            )
        };
        Ok(())
    }

    /// Check a call's shapes: whole blocks, rows inside `w`, `n_tokens` activation rows in `xq`.
    fn check(
        &self,
        op: &'static str,
        n: usize,
        w: &[u8],
        rows: &Range<usize>,
        xq: &[u8],
        n_tokens: usize,
    ) -> Result<Shape, KernelError> {
        let row_bytes = self.row_bytes(n)?;
        let act_row_bytes = self.act_row_bytes(n)?;
        let available = w.len().checked_div(row_bytes).unwrap_or(0);
        if rows.start > rows.end || rows.end > available {
            return Err(KernelError::RowRange {
                op,
                start: rows.start,
                end: rows.end,
                available,
            });
        }
        let act_bytes = act_row_bytes
            .checked_mul(n_tokens)
            .ok_or(KernelError::Overflow {
                op,
                what: "activation rows",
            })?;
        check_len(op, "quantised activations", "bytes", act_bytes, xq.len())?;
        Ok(Shape {
            nb: n / self.wtype.block_size(),
            row_bytes,
            act_row_bytes,
        })
    }
}

/// Block count and strides of a checked call.
struct Shape {
    nb: usize,
    row_bytes: usize,
    act_row_bytes: usize,
}

fn check_len(
    op: &'static str,
    what: &'static str,
    unit: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            op,
            what,
            unit,
            expected,
            actual,
        })
    }
}

/// Floats a gemm output must span; refuses strides that would make outputs overlap.
fn gemm_out_len(
    op: &'static str,
    n_rows: usize,
    n_tokens: usize,
    out_stride: usize,
) -> Result<usize, KernelError> {
    if n_tokens > 1 && out_stride < n_rows {
        return Err(KernelError::Length {
            op,
            what: "output stride",
            unit: "floats",
            expected: n_rows,
            actual: out_stride,
        });
    }
    if n_tokens == 0 || n_rows == 0 {
        return Ok(0);
    }
    (n_tokens - 1)
        .checked_mul(out_stride)
        .and_then(|v| v.checked_add(n_rows))
        .ok_or(KernelError::Overflow { op, what: "output" })
}

/// Ask the cache hierarchy to fetch the line holding `p` for reading. A hint only: it never
/// faults, whatever `p` is (used by `smelt bench --membw`'s prefetching read pattern).
#[inline]
pub fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is SSE (baseline on x86-64) and does not dereference: an invalid
    // address is ignored.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
