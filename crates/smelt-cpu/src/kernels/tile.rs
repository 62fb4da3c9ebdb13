//! Register tiles and the loops that drive them over a weight matrix.
//!
//! Every kernel is one generic function per (weight type, instruction set): a tile that computes
//! the dot products of `R` weight rows with `T` activation rows over the whole row length, holding
//! `R x T` accumulators in registers. Each weight block loaded is used `T` times and each
//! activation block `R` times. gemv (decode) runs `R x 1` tiles: several rows interleaved keep
//! several independent load streams and accumulator chains in flight. gemm (prefill) runs
//! `R x T` tiles over token chunks small enough for the activations to stay in L2.
//!
//! The tiles take raw pointers; the safe entry points in [`super::MatmulKernel`] check every
//! length first, and [`Tiles`] are only reachable for instruction sets the CPU supports.

/// One tile call: rows `w + r * ws` (r < R) against activation rows `x + t * xs` (t < T), each
/// `nb` blocks long; result `(r, t)` goes to `out[t * os + r]`.
pub(crate) struct TileArgs {
    pub nb: usize,
    pub w: *const u8,
    pub ws: usize,
    pub x: *const u8,
    pub xs: usize,
    pub out: *mut f32,
    pub os: usize,
}

/// A tile function. Safety contract for callers: every weight row, activation row and output
/// element the arguments describe is in bounds, and the CPU supports the code's instruction set.
pub(crate) type TileFn = unsafe fn(&TileArgs);

/// The tiles of one (weight type, instruction set) kernel.
pub(crate) struct Tiles {
    /// `R x 1` tiles for R = 1..=4.
    pub gemv: [TileFn; 4],
    /// The prefill tile, `gemm_rows x gemm_tokens`; `gemm_rows <= 4`.
    pub gemm: TileFn,
    pub gemm_rows: usize,
    pub gemm_tokens: usize,
}

/// `Tiles` for a generic tile function `f::<R, T, ..extra>`, with the given prefill tile shape.
macro_rules! tiles {
    ($($f:ident)::+ $(, $extra:ty)? ; $gr:literal x $gt:literal) => {
        $crate::kernels::tile::Tiles {
            gemv: [
                $($f)::+::<1, 1 $(, $extra)?>,
                $($f)::+::<2, 1 $(, $extra)?>,
                $($f)::+::<3, 1 $(, $extra)?>,
                $($f)::+::<4, 1 $(, $extra)?>,
            ],
            gemm: $($f)::+::<$gr, $gt $(, $extra)?>,
            gemm_rows: $gr,
            gemm_tokens: $gt,
        }
    };
}
pub(crate) use tiles;

/// `for $i in 0..$n { $body }` for a constant `$n <= 4`, written out as copies with `$i` a
/// literal in each. The tiles index their accumulator arrays by row and token; only when every
/// index is a constant does LLVM keep those arrays in registers (a loop it declines to unroll,
/// because its body is large, leaves them on the stack with a load and a store per update).
/// Nested uses multiply the copies the compiler must fold away, hence the small bound;
/// [`unroll16`] is for a single level of up to 16.
macro_rules! unroll {
    ($n:expr, $i:ident, $body:block) => {
        $crate::kernels::tile::unroll!(@copies $n, $i, $body, 4, 0 1 2 3)
    };
    (@copies $n:expr, $i:ident, $body:block, $max:literal, $($k:literal)*) => {{
        const { assert!($n <= $max, "unroll! count above its bound") };
        $(
            if $k < $n {
                let $i: usize = $k;
                $body
            }
        )*
    }};
}
pub(crate) use unroll;

/// [`unroll`] for counts up to 16 (the panel microkernel's rows).
macro_rules! unroll16 {
    ($n:expr, $i:ident, $body:block) => {
        $crate::kernels::tile::unroll!(
            @copies $n, $i, $body, 16, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
        )
    };
}
pub(crate) use unroll16;

/// Whether the quantised tiles prefetch the next row group while working on the current one
/// (on unless `SMELT_PREFETCH=0`, read once; the switch is for the kernel lab).
///
/// Rows of a 4096-wide Q4_0 or Q4_K matrix are 2304 bytes: a tile of 4 rows reads 4 short
/// streams, and the hardware prefetcher loses time locking onto every one of them. Prefetching
/// the next group's bytes as one linear stream, at the pace the current group is consumed,
/// raised 16-thread gemv from about 50 to 80-90 GB/s on the lab machine (docs/kernel-lab).
pub(crate) fn prefetch_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("SMELT_PREFETCH").map_or(true, |v| v.trim() != "0"))
}

/// Activation bytes a token chunk of a gemm may take, so the chunk stays in L2 while every row
/// group of the weights streams past it.
const GEMM_ACT_BUDGET: usize = 256 * 1024;

/// `out[r] = dot(row r, x)` for `n_rows` rows starting at `w`, `rows_per_tile` (1..=4) at a time.
///
/// # Safety
/// `w` points at `n_rows` rows of `ws` bytes, each `nb` blocks; `x` at one activation row of `nb`
/// blocks; `out` at `n_rows` writable floats; the CPU supports the tiles' instruction set.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemv(
    tiles: &Tiles,
    rows_per_tile: usize,
    nb: usize,
    w: *const u8,
    ws: usize,
    n_rows: usize,
    x: *const u8,
    out: *mut f32,
) {
    let mut r = 0;
    while r < n_rows {
        let rows = (n_rows - r).min(rows_per_tile);
        let args = TileArgs {
            nb,
            // SAFETY (both adds): r < n_rows, so row r and output r are inside the ranges the
            // caller vouched for.
            w: unsafe { w.add(r * ws) },
            ws,
            x,
            xs: 0,
            out: unsafe { out.add(r) },
            os: 0,
        };
        // SAFETY: the tile reads `rows` rows from row r and writes `rows` outputs from r, all
        // within `n_rows`; the caller vouched for the CPU.
        unsafe { (tiles.gemv[rows - 1])(&args) };
        r += rows;
    }
}

/// `out[t * os + r] = dot(row r, token t)` for `n_rows` rows and `n_tokens` activation rows.
///
/// # Safety
/// As [`gemv`], with `x` pointing at `n_tokens` activation rows `xs` bytes apart and `out` at a
/// region where every `t * os + r` (t < n_tokens, r < n_rows) is writable.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    tiles: &Tiles,
    nb: usize,
    w: *const u8,
    ws: usize,
    n_rows: usize,
    x: *const u8,
    xs: usize,
    n_tokens: usize,
    out: *mut f32,
    os: usize,
) {
    let (gr, gt) = (tiles.gemm_rows, tiles.gemm_tokens);
    let chunk = (GEMM_ACT_BUDGET / xs.max(1) / gt * gt).max(gt);
    let mut t0 = 0;
    while t0 < n_tokens {
        let tc = chunk.min(n_tokens - t0);
        let mut r = 0;
        while r < n_rows {
            let rows = gr.min(n_rows - r);
            let mut t = t0;
            // SAFETY (every add and call below): r < n_rows and t < t0 + tc <= n_tokens, so the
            // rows, activation rows and outputs each tile touches are inside the caller's ranges.
            let tile_at = |t: usize| TileArgs {
                nb,
                w: unsafe { w.add(r * ws) },
                ws,
                x: unsafe { x.add(t * xs) },
                xs,
                // SAFETY: as above, output (t, r) is the caller's.
                out: unsafe { out.add(t * os + r) },
                os,
            };
            if rows == gr {
                while t + gt <= t0 + tc {
                    // SAFETY: rows r..r+gr and tokens t..t+gt are inside the caller's ranges.
                    unsafe { (tiles.gemm)(&tile_at(t)) };
                    t += gt;
                }
            }
            while t < t0 + tc {
                // SAFETY: rows r..r+rows and token t are inside the caller's ranges.
                unsafe { (tiles.gemv[rows - 1])(&tile_at(t)) };
                t += 1;
            }
            r += rows;
        }
        t0 += tc;
    }
}

/// A portable dot product of one weight row with one activation row, `nb` blocks long.
pub(crate) trait RowDot {
    /// Bytes of one weight block.
    const W_BLOCK: usize;
    /// Bytes of one activation block.
    const X_BLOCK: usize;
    /// The dot product; `w` and `x` hold exactly `nb` blocks.
    fn dot(nb: usize, w: &[u8], x: &[u8]) -> f32;
}

/// The scalar tile: each of the `R x T` products on its own (the portable code is the reference
/// the SIMD tiles are held to, so it stays one obviously right loop per type).
///
/// # Safety
/// As [`TileFn`].
pub(crate) unsafe fn scalar_tile<const R: usize, const T: usize, D: RowDot>(a: &TileArgs) {
    for r in 0..R {
        // SAFETY: the caller vouches for R rows of nb blocks at w, ws apart.
        let w = unsafe { std::slice::from_raw_parts(a.w.add(r * a.ws), a.nb * D::W_BLOCK) };
        for t in 0..T {
            // SAFETY: the caller vouches for T activation rows of nb blocks at x, xs apart, and
            // for the output elements t * os + r.
            unsafe {
                let x = std::slice::from_raw_parts(a.x.add(t * a.xs), a.nb * D::X_BLOCK);
                *a.out.add(t * a.os + r) = D::dot(a.nb, w, x);
            }
        }
    }
}
