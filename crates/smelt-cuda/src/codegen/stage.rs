//! v13a (kernel lab, `SMELT_CUDA_STAGE_KB=n`, sm_90, one token): a decode matmul whose
//! every block's weight rows fit n KiB stages them in shared memory. Thread 0 copies each
//! matmul's rows of the block by one bulk (TMA) copy, from the 16-byte boundary before the
//! block's first row, counted on an mbarrier, before `PDL_WAIT` (while the previous kernel
//! drains); the warps wait on the mbarrier after the row stage and read the rows from shared
//! memory, not from L2 or HBM. Measured on the H100 (cuda.md v13): noise at 64 KiB (SmolLM2
//! 2142 -> 2155 tok/s, medians of three), the 1B -5% at 120 KiB; the trace shows the row's
//! first dot earlier but the row stage's loads later (behind the copies). Off by default.

use std::fmt::Write;

use super::decode::Mat;
use super::epilogue::{Mode, Rot};
use super::Gen;

/// How a decode matmul kernel spreads its virtual rows: blocks of `rows_per_block` of
/// `total`, bundle `i` from virtual row `first[i]`, `widths[i]` of them, finished as `modes[i]`.
pub(super) struct BlockRows<'a> {
    pub grid: usize,
    pub rows_per_block: usize,
    pub total: usize,
    pub first: &'a [usize],
    pub widths: &'a [usize],
    pub modes: &'a [Mode],
}

/// v13a: the first and last weight row (column) the virtual rows `lo..hi` of a bundle of mode
/// `mode` read (RoPE pairs: `ca` of the first, `cb` of the last; both grow with the row).
pub(super) fn column_range(mode: Mode, lo: usize, hi: usize) -> (usize, usize) {
    match mode {
        Mode::Tiled | Mode::Column => (lo, hi - 1),
        Mode::Pair(None) => (2 * lo, 2 * (hi - 1) + 1),
        Mode::Pair(Some(Rot {
            head_dim,
            n_rot,
            neox,
        })) => {
            let (hh, half) = (head_dim / 2, n_rot / 2);
            let ca = |c: usize| {
                let (k, hd0) = (c % hh, c / hh * head_dim);
                match (neox, k < half) {
                    (true, true) => (hd0 + k, hd0 + k + half),
                    (true, false) => (
                        hd0 + n_rot + 2 * (k - half),
                        hd0 + n_rot + 2 * (k - half) + 1,
                    ),
                    (false, _) => (hd0 + 2 * k, hd0 + 2 * k + 1),
                }
            };
            (ca(lo).0, ca(hi - 1).1)
        }
    }
}

impl Gen<'_> {
    /// The staging code (before `PDL_WAIT`) and the floats of shared memory it takes from
    /// offset 0, marking each of `mats` staged (`Mat::row` then reads the stage); None where
    /// the GPU has no bulk copies, the option is off or a block's rows do not fit.
    pub(super) fn stage_rows(
        &self,
        mats: &mut [Vec<Mat>],
        b: &BlockRows,
    ) -> Option<(String, usize)> {
        if self.stage_kb == 0 || self.cc_major < 9 || self.attn_tail != 0 {
            return None;
        }
        // The most bytes a block stages (each matmul's rows from a 16-byte boundary, rounded).
        let most = (0..b.grid)
            .map(|blk| {
                let r0 = blk * b.rows_per_block;
                let r1 = (r0 + b.rows_per_block).min(b.total);
                let mut bytes = 0;
                for (bi, ms) in mats.iter().enumerate() {
                    let st = b.first[bi];
                    let (lo, hi) = (r0.max(st), r1.min(st + b.widths[bi]));
                    if lo < hi {
                        let (c0, c1) = column_range(b.modes[bi], lo - st, hi - st);
                        bytes += ms
                            .iter()
                            .map(|m| ((c1 - c0 + 1) * m.row_bytes + 31) / 16 * 16)
                            .sum::<usize>();
                    }
                }
                bytes
            })
            .max()
            .unwrap_or(0);
        if most > self.stage_kb * 1024 {
            return None;
        }
        let mut e = String::from(
            "const u8* const STG = (const u8*)sm; __shared__ __align__(8) u64 stg_bar; u64 sq = 0;\n",
        );
        let mut issue = String::new();
        for (bi, ms) in mats.iter_mut().enumerate() {
            let (st, end) = (b.first[bi], b.first[bi] + b.widths[bi]);
            let range = match b.modes[bi] {
                Mode::Tiled | Mode::Column => format!("cf{bi} = lo; cl{bi} = hi - 1;"),
                Mode::Pair(None) => format!("cf{bi} = 2 * lo; cl{bi} = 2 * hi - 1;"),
                m @ Mode::Pair(Some(_)) => format!(
                    "{{ const int c = lo;\n{pc}cf{bi} = ca; }} {{ const int c = hi - 1;\n{pc}cl{bi} = cb; }}",
                    pc = m.pair_columns()
                ),
            };
            write!(e, "int cf{bi} = 0, cl{bi} = -1; {{ const int lo = max(R0, {st}) - {st}, hi = min(R1, {end}) - {st}; if (lo < hi) {{ {range} }} }}\n").unwrap();
            for (mi, m) in ms.iter_mut().enumerate() {
                let x = format!("{bi}_{mi}");
                write!(e, "u64 so{x} = 0, sd{x} = 0, ga{x} = 0; u32 gn{x} = 0; const int cm{x} = cf{bi};\n\
                    if (cf{bi} <= cl{bi}) {{ const u64 src = (u64)(W + {w}) + (u64)cf{bi} * {rb}; ga{x} = src & ~15ull;\n\
                      gn{x} = (u32)(((src + (u64)(cl{bi} - cf{bi} + 1) * {rb} + 15) & ~15ull) - ga{x}); sd{x} = sq; so{x} = sq + (src - ga{x}); sq += gn{x}; }}\n",
                    w = m.w, rb = m.rb).unwrap();
                writeln!(
                    issue,
                    "if (gn{x}) bulk_g2s((u8*)sm + sd{x}, (const u8*)ga{x}, gn{x}, &stg_bar);"
                )
                .unwrap();
                m.stage = Some(x);
            }
        }
        write!(
            e,
            "if (tid == 0) {{ mbar_init_expect(&stg_bar, (u32)sq);\n{issue}}}\n"
        )
        .unwrap();
        Some((e, most.div_ceil(16) * 4))
    }
}
