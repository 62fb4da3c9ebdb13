//! v19b: key regions of the cluster decode attention (codegen/attention.rs). On a long cache
//! each split's keys are cut into regions (`len` positions each, the last one open-ended), the
//! tensor-core work of region w in warp w with its own running softmax, the regions merged
//! into warp 0 before the pushes (`Chunk::merge_regions`). A split's chain of chunks (~0.65 us
//! each: 32 a split at 16K positions) then runs several at a time on the block's warps, which
//! otherwise only stage. Exact below `len`: region 0 takes a split's chunks in the order of
//! the kernel without regions, the empty ones merge as nothing (so the short-context variants
//! stay the long program bit for bit). One token only: a batch's rows already fill the GPU
//! with clusters, and the regions' shared memory costs them residency (the 1B, 4 rows after
//! 4096 positions on an H200: a step 1.05 -> 1.25 ms).

use super::attention::CHUNK;
use super::attn_chunk::Chunk;
use super::Gen;

/// Dynamic shared memory of a key-region attention block that leaves room for two blocks an
/// SM on sm_90 (228 KiB an SM, 1 KiB reserved a block, a few KiB static), and the most for one.
const REGION_SMEM_TWO: usize = 110 * 1024 + 512;
const REGION_SMEM_ONE: usize = 216 * 1024;

/// The attention a choice of regions is made for.
pub(super) struct RegionCase {
    pub work: Chunk,
    /// The kernel can take regions at all (one token, no prewait staging).
    pub allowed: bool,
    pub grp: usize,
    pub n_head_kv: usize,
    pub splits: usize,
    pub cap: usize,
    /// Bytes of one staged chunk (K and V).
    pub chunk_bytes: usize,
    /// Stages without regions.
    pub nbuf: usize,
}

/// `n` regions of `len` positions (1: none, `len` 0), `nbuf` stages of their chunks.
pub(super) struct Regions {
    pub n: usize,
    pub len: usize,
    pub nbuf: usize,
}

impl Gen<'_> {
    /// How many regions, how long, how many stages.
    pub(super) fn key_regions(&self, c: &RegionCase) -> Regions {
        // Stages of `r` regions' chunks that leave room for two blocks an SM.
        let fit2 = |r: usize| REGION_SMEM_TWO / (r * c.chunk_bytes);
        let few = c.n_head_kv * c.splits * 2 <= self.sm_count;
        let (n, len) = match c.work {
            Chunk::Mma | Chunk::MmaT if c.allowed && self.attn_region > 0 && c.grp > 1 => {
                // As many as the group has heads (its warps), at most four; up to eight (warps
                // added to the block) where the clusters fill at most half the GPU (SmolLM2's
                // three KV heads: 48 blocks of 132 SMs). Elsewhere as many as leave two stages
                // at two blocks an SM, so that every cluster finds SMs at once (at one block an
                // SM the 1B's eight 16-block clusters ran in two waves on an H200, block 0 done
                // at 12.9 us of a 26.2 us span; the 8B after 16384 positions, three regions of
                // two stages against four of three at one block an SM: 386.0 / 384.5 against
                // 363.2 / 362.0 tok/s on the H200, 329.3 / 328.9 against 310.8 / 309.8 on the
                // H100). `SMELT_CUDA_ATTN_REGIONS` (kernel lab): at most this many.
                let ws = (if few { 8 } else { c.grp.min(4) }).min(
                    super::lab_knob("SMELT_CUDA_ATTN_REGIONS")
                        .unwrap_or(8)
                        .max(1),
                );
                let ws = match few {
                    true => ws,
                    false => (1..=ws).rev().find(|&r| fit2(r) >= 2).unwrap_or(1),
                };
                let len = c.cap.div_ceil(ws).max(self.attn_region).div_ceil(256) * 256;
                (c.cap.div_ceil(len).min(ws), len)
            }
            _ => (1, 0),
        };
        // The regions' chunks in flight: as many stages as two blocks an SM leave room for,
        // else (few clusters) as many as one block an SM holds, two past four regions
        // (SmolLM2's eight: after 16384 positions 1393 tok/s against 1276 at three stages,
        // 216 KB; after 8192 1786 against 1777, H200).
        let nbuf = match n {
            1 => c.nbuf,
            r if fit2(r) >= 2 => c.nbuf.min(fit2(r)),
            r => c
                .nbuf
                .min((REGION_SMEM_ONE / (r * c.chunk_bytes)).max(2))
                .min(if r > 4 { 2 } else { 4 }),
        };
        Regions { n, len, nbuf }
    }
}

impl Regions {
    fn last(&self) -> usize {
        self.n - 1
    }

    /// Region w's chunk at `w * len + jr` into buffer `buf * n + w`, where the region holds
    /// it (region 0 of the first chunk before the position is known, as without regions):
    /// `stage(buffer, first key)` stages one chunk.
    pub(super) fn stage(
        &self,
        stage: impl Fn(&str, &str) -> String,
        buf: &str,
        jr: &str,
        first: bool,
    ) -> String {
        let (n, len, last) = (self.n, self.len, self.last());
        (0..n)
            .map(|w| {
                let code = stage(
                    &format!("({buf}) * {n} + {w}"),
                    &format!("({w} * {len} + {jr})"),
                );
                let held = match w == last {
                    true => format!("{w} * {len} + {jr} <= p1"),
                    false => format!("{jr} < {len} && {w} * {len} + {jr} <= p1"),
                };
                match first && w == 0 {
                    true => code,
                    false => format!("if ({held}) {{\n{code}}}\n"),
                }
            })
            .collect()
    }

    /// The key loop's head: over `j0` (every chunk of the split) or, with regions, over the
    /// offset `jr` in a region while some region holds keys there.
    pub(super) fn loop_head(&self) -> String {
        match self.n {
            1 => format!("for (int j0 = s * {CHUNK}; j0 <= p1; j0 += step, k++)"),
            n => format!(
                "for (int jr = s * {CHUNK}; jr < {len} ? jr <= p1 : {last} * {len} + jr <= p1; jr += step, k++)",
                len = self.len,
                last = n - 1
            ),
        }
    }

    /// The loop variable (see [`Self::loop_head`]).
    pub(super) fn jvar(&self) -> &'static str {
        if self.n > 1 {
            "jr"
        } else {
            "j0"
        }
    }

    /// A warp's chunk in the loop: its first key `j0`, buffer `b` and, with regions, whether
    /// its region holds it (`rv`).
    pub(super) fn chunk_at(&self) -> String {
        match self.n {
            1 => "const int b = k % NBUF;".to_string(),
            n => format!(
                "const int j0 = warp * {len} + jr; const bool rv = warp < {n} && (jr < {len} || warp == {last}) && j0 <= p1;\n\
                const int b = (k % NBUF) * {n} + warp;",
                len = self.len,
                last = n - 1
            ),
        }
    }
}
