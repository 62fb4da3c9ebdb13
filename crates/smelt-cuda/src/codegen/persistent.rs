//! The persistent decode kernel: a one-token decode program as one launch.
//!
//! Each kernel of the program becomes a `__device__` function of the same body, its block
//! index a parameter (`bI`). One kernel of `NT` threads, at most as many blocks as fit on the
//! GPU at once (a cooperative launch checks that), runs the program's launches in order as
//! stages: every block takes the stage's virtual blocks `blockIdx.x, blockIdx.x + gridDim.x,
//! ...`, then all blocks meet at a grid-wide barrier (a counter and a generation word after
//! the program's tile counters; the last block to arrive resets the counter, so a captured
//! graph replays). Before the barrier each block already runs the next stage's weight-only
//! head (a decode matmul's L2 prefetch of its first rows, everything before `PDL_WAIT`), so
//! the next weights stream in while the slowest blocks finish.
//!
//! Stages whose blocks are smaller than `NT` (attention: a warp per query head of a group)
//! run in the block's first threads; their `__syncthreads` become a named barrier over those
//! threads only. Bodies return only block-uniformly (all threads of the stage's block), so a
//! body returning early still meets the block-wide barrier after it.
//!
//! A kernel-lab option (`SMELT_CUDA_PERSISTENT=1`), off by default: on the H100 it was slower
//! than a graph of launches (1B 1529 -> 1041, SmolLM2 1342 -> 906 tok/s; cuda.md, v7). One
//! barrier measured ~1.4 us, more than the gap between two launches in a graph; attention
//! loses the cluster kernel (v4 instead of v5: ~6 us a layer); every stage runs under one
//! 64-register cap.

use std::fmt::Write;

use super::{Gen, Launch, Work, NT};

/// Whether the program can run as one persistent kernel: kernels only (no cuBLAS steps), no
/// thread block clusters, blocks of at most `NT` threads in whole warps.
pub(super) fn fits(g: &Gen) -> bool {
    !g.launches.is_empty()
        && g.launches.iter().all(|l| match &l.work {
            Work::Kernel { func, block, .. } => {
                *block as usize <= NT
                    && block % 32 == 0
                    && g.kernels
                        .iter()
                        .any(|k| k.name == *func && k.attrs.is_empty())
            }
            Work::Gemm(_) => false,
        })
}

/// Append the stage functions and the kernel `mega` to `src`; the program becomes its one
/// launch (parameters of every stage concatenated, in order).
pub(super) fn emit(g: &mut Gen, src: &mut String) {
    let block_of = |name: &str| {
        g.launches.iter().find_map(|l| match &l.work {
            Work::Kernel { func, block, .. } if func == name => Some(*block as usize),
            _ => None,
        })
    };
    src.push_str(
        "__device__ __forceinline__ void bar_sync1(int n) { asm volatile(\"bar.sync 1, %0;\" :: \"r\"(n) : \"memory\"); }\n\
        // Grid-wide barrier: every block adds one to a counter (zeroed before the launch) and\n\
        // waits until it reaches `target`, the blocks times the barriers so far.\n\
        __device__ __forceinline__ void grid_sync(u32* bar, u32 target) {\n\
          __syncthreads();\n\
          if (threadIdx.x == 0) {\n\
            asm volatile(\"red.release.gpu.global.add.u32 [%0], 1;\" :: \"l\"(bar) : \"memory\");\n\
            u32 v; do { asm volatile(\"ld.acquire.gpu.global.u32 %0, [%1];\" : \"=r\"(v) : \"l\"(bar) : \"memory\"); } while ((int)(v - target) < 0);\n\
          }\n\
          __syncthreads();\n\
        }\n",
    );
    for k in &g.kernels {
        let Some(bs) = block_of(&k.name) else {
            continue;
        };
        let mut body = k.body.replace("blockIdx", "bI");
        body = if body.contains("PDL_WAIT();") {
            body.replace("PDL_WAIT();", "if (pf) return;")
        } else {
            format!("if (pf) return;\n{body}")
        };
        if bs < NT {
            body = body.replace("__syncthreads()", &format!("bar_sync1({bs})"));
        }
        writeln!(
            src,
            "__device__ __noinline__ void s_{}(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C, const uint3 bI, const bool pf) {{\n{body}}}",
            k.name
        )
        .unwrap();
    }

    let mut stages = Vec::new();
    let mut params = Vec::new();
    let mut smem = 0u32;
    for l in &g.launches {
        let Work::Kernel {
            func,
            grid,
            block,
            smem: s,
            params: ps,
        } = &l.work
        else {
            unreachable!("fits() admits kernels only")
        };
        stages.push((func.clone(), *grid, *block, params.len()));
        params.extend_from_slice(ps);
        smem = smem.max(*s);
    }
    let bar = g.counters;
    g.counters += 1;
    g.barrier = Some(bar);
    let call = |(f, (gx, gy, _), bs, off): &(String, (u32, u32, u32), u32, usize),
                vb: &str,
                pf: bool| {
        format!(
            "if (threadIdx.x < {bs}) s_{f}(W, A, KV, tok, pos, P + {off}, C, make_uint3({vb} % {gx}u, {vb} / {gx}u % {gy}u, {vb} / {}u), {pf});",
            gx * gy
        )
    };
    let mut body = format!("u32* const BAR = C + {bar};\n");
    let extra = super::lab_knob("SMELT_CUDA_EXTRA_SYNCS").unwrap_or(0);
    let mut syncs = 0usize;
    for (i, st) in stages.iter().enumerate() {
        let (gx, gy, gz) = st.1;
        let nb = gx * gy * gz;
        writeln!(
            body,
            "for (u32 vb = blockIdx.x; vb < {nb}u; vb += gridDim.x) {{ {} __syncthreads(); }}",
            call(st, "vb", false)
        )
        .unwrap();
        if let Some(next) = stages.get(i + 1) {
            let (gx, gy, gz) = next.1;
            writeln!(
                body,
                "if (blockIdx.x < {}u) {{ const u32 vb = blockIdx.x; {} }}",
                gx * gy * gz,
                call(next, "vb", true),
            )
            .unwrap();
            // `SMELT_CUDA_EXTRA_SYNCS=k` adds k barriers a stage: the kernel lab's measure of
            // one barrier's cost.
            for _ in 0..=extra {
                syncs += 1;
                writeln!(body, "grid_sync(BAR, gridDim.x * {syncs}u);").unwrap();
            }
        }
    }
    let blocks = g.decode_blocks.unwrap_or(2);
    writeln!(
        src,
        "extern \"C\" __global__ void __launch_bounds__({NT}, {blocks}) mega(const u8* W, float* A, u16* KV, const u32* tok, const u32* pos, const u64* P, u32* C) {{\n{body}}}"
    )
    .unwrap();
    let label = format!("persistent decode ({} stages)", stages.len());
    g.funcs = vec![("mega".into(), smem as usize)];
    g.launches = vec![Launch {
        label,
        work: Work::Kernel {
            func: "mega".into(),
            grid: ((blocks * g.sm_count) as u32, 1, 1),
            block: NT as u32,
            smem,
            params,
        },
    }];
}
