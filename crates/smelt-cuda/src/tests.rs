//! The CUDA backend against the reference on odd shapes and on every supported weight type.
//! GPU tests print a SKIP line and pass where no driver or GPU is present; the compile test
//! needs only NVRTC (`libnvrtc.so`), and skips likewise without it.

use std::sync::Arc;

use smelt_cpu::{KvCache, ReferenceBackend};
use smelt_gguf::{GgmlType, Gguf};
use smelt_graph::{fuse, FuseOptions, Graph};
use smelt_testutil::odd::{self, Dims, Weights};

use crate::codegen::{self, KvInfo, WeightInfo};
use crate::{CudaBackend, WeightSpec};

pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

const QUANT: Dims = Dims {
    n_embd: 256,
    n_head: 4,
    n_head_kv: 2,
    head_dim: 64,
    n_rot: 64,
    n_ff: 768,
    n_vocab: 300,
};
const QUANT_TYPES: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn cases() -> Vec<(Dims, GgmlType)> {
    let mut v = Vec::new();
    for d in odd::SHAPES {
        v.push((d, GgmlType::F32));
        v.push((d, GgmlType::F16));
    }
    for t in QUANT_TYPES {
        v.push((QUANT, t));
    }
    v
}

fn gpu() -> bool {
    if crate::available() {
        return true;
    }
    eprintln!("SKIP: no CUDA driver or GPU on this machine; the CUDA kernels were not run");
    false
}

const ALL_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn compare(got: &[f32], want: &[f32], tol: f32, what: &str) {
    if let Err(e) = check(got, want, tol) {
        panic!("{what}: {e}");
    }
}

/// [`compare`]'s verdict without the panic: the lengths, every value finite, and the largest
/// difference within `tol` of `want`'s largest magnitude.
fn check(got: &[f32], want: &[f32], tol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("lengths {} and {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if !got.iter().all(|x| x.is_finite()) {
        return Err("non-finite output".into());
    }
    match diff <= tol * scale {
        true => Ok(()),
        false => Err(format!("max diff {diff} of scale {scale}")),
    }
}

/// The CPU fast path's decode logits for steps 5..8 after a 5-token prefill: like the GPU's
/// decode it rounds activations to 8 bits for quantised weights, so its distance from the
/// reference is the yardstick for the GPU's.
fn fast_decode(
    file: &Arc<Gguf>,
    specs: &[WeightSpec],
    g5: &Graph,
    g1: &Graph,
    tokens: &[u32],
    widths: &[usize],
) -> Vec<Vec<f32>> {
    use smelt_cpu::{FastBackend, FastKvCache};
    let mut fb = FastBackend::new(Arc::clone(file), specs, 2).unwrap();
    let mut kv = FastKvCache::new(16, widths);
    let p5 = fb.lower(g5, &kv).unwrap();
    let p1 = fb.lower(g1, &kv).unwrap();
    fb.execute(&p5, &tokens[..5], &[0, 1, 2, 3, 4], &mut kv)
        .unwrap();
    (5..8u32)
        .map(|step| {
            let t = &tokens[step as usize..step as usize + 1];
            fb.execute(&p1, t, &[step], &mut kv).unwrap().to_vec()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Prefill of 5 tokens then 3 decode steps (graph replays), against the reference.
#[test]
fn matches_reference_on_odd_shapes_and_quant_types() {
    if !gpu() {
        return;
    }
    // Every case, then two quantised ones with the Qwen-like layer (NEOX RoPE pairs finished
    // in the computing warp).
    let qwen_cases = [(QUANT, GgmlType::Q8_0, true), (QUANT, GgmlType::Q4_K, true)];
    let all = cases()
        .into_iter()
        .map(|(d, t)| (d, t, false))
        .chain(qwen_cases);
    // The fused plan, the unfused one, and the fused one as one persistent kernel.
    let variants = [
        (FuseOptions::ALL, false, false, 0),
        (FuseOptions::NONE, false, false, 0),
        (FuseOptions::ALL, true, false, 0),
    ];
    let all: Vec<(usize, Dims, GgmlType, bool)> = all
        .enumerate()
        .map(|(ci, (d, t, q))| (ci, d, t, q))
        .collect();
    precompile_cases(&all, &variants, 16);
    for &(ci, d, dtype, qwen) in &all {
        let t0 = std::time::Instant::now();
        check_case(ci, d, dtype, qwen, &variants, 16);
        eprintln!(
            "case {ci} {dtype:?} checked in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// v26 (`SMELT_CUDA_ROWS_TOGETHER`): a one-token bundle's weight rows two or three at once
/// (`gemv8m`) give the logits of one at a time bit for bit, for every quantised type and the
/// Qwen-like layer's RoPE pairs, over a 5-token prefill and 3 decode steps.
#[test]
fn rows_together_give_the_same_logits() {
    if !gpu() {
        return;
    }
    let all: Vec<(GgmlType, bool)> = QUANT_TYPES
        .iter()
        .map(|&t| (t, false))
        .chain([(GgmlType::Q8_0, true), (GgmlType::Q4_K, true)])
        .collect();
    for (ci, &(dtype, qwen)) in all.iter().enumerate() {
        let (w, file, g5, g1) = case_setup(100 + ci, QUANT, dtype, qwen);
        let widths = [QUANT.n_head_kv * QUANT.head_dim; 2];
        let tokens: Vec<u32> = (0..8).map(|i| (i * 3 + 1) % QUANT.n_vocab as u32).collect();
        let runs: Vec<Vec<Vec<f32>>> = [1usize, 2, 3]
            .iter()
            .map(|&n| {
                let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
                cb.set_rows_together(n);
                let mut kv = cb.new_kv(16, &widths).unwrap();
                let p5 = cb.lower(&g5, &kv).unwrap();
                let p1 = cb.lower(&g1, &kv).unwrap();
                cb.execute(&p5, &tokens[..5], &[0, 1, 2, 3, 4], &mut kv)
                    .unwrap();
                (5..8u32)
                    .map(|step| {
                        let t = &tokens[step as usize..step as usize + 1];
                        cb.execute(&p1, t, &[step], &mut kv).unwrap().to_vec()
                    })
                    .collect()
            })
            .collect();
        for (n, run) in runs.iter().enumerate().skip(1) {
            for (step, (a, b)) in run.iter().zip(&runs[0]).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{dtype:?} (qwen {qwen}), {} rows together, step {step}: other logits",
                    n + 1
                );
            }
        }
    }
}

/// A case's weight values, drawn in order.
type Draw = Box<dyn FnMut() -> f32>;

/// The weights (as drawn, in their GGUF file) and the prefill (5 tokens) and decode graphs of
/// odd-shape case `ci`: the same for the check and for the programs' precompile.
fn case_setup(
    ci: usize,
    d: Dims,
    dtype: GgmlType,
    qwen: bool,
) -> (Weights<Draw>, Arc<Gguf>, Graph, Graph) {
    let mut rng = Rng(0x9e37_79b9 + ci as u64);
    let mut w: Weights<Draw> = Weights::new(Box::new(move || rng.next()));
    let g5 = if qwen {
        odd::graph_qwen(&d, 5, &mut w, true)
    } else {
        odd::graph(&d, 5, &mut w, true)
    };
    let file = w.gguf(dtype);
    let mut rng1 = Rng(1);
    let mut wsink = Weights::new(|| rng1.next());
    let g1 = if qwen {
        odd::graph_qwen(&d, 1, &mut wsink, true)
    } else {
        odd::graph(&d, 1, &mut wsink, true)
    };
    (w, file, g5, g1)
}

/// Compile every program `check_case` lowers for `cases` into the disk cache first, several
/// cases at once (the device has many cores; one NVRTC compile takes 1-3 s, most of the
/// suite's ~250-440 s with a cold cache). Anything failing here is left to the check itself
/// to report: this only warms the cache (and does nothing without one).
fn precompile_cases(cases: &[(usize, Dims, GgmlType, bool)], variants: &[Variant], cap: usize) {
    in_parallel("cases", cases, |&(ci, d, dtype, qwen)| {
        let (w, file, g5, g1) = case_setup(ci, d, dtype, qwen);
        let widths = [d.n_head_kv * d.head_dim; 2];
        for &(fusion, persistent, fold, cluster) in variants {
            let Ok(mut cb) = CudaBackend::new(Arc::clone(&file), &w.specs) else {
                return;
            };
            cb.set_fusion(fusion);
            cb.set_persistent(persistent);
            cb.set_wo_fold(fold);
            cb.set_cluster(cluster);
            let Ok(kv) = cb.new_kv(cap, &widths) else {
                return;
            };
            let _ = cb.precompile(&[g5.clone(), g1.clone()], &kv);
        }
    });
}

/// `f` over `items` on up to 8 threads, to warm the disk cache of compiled programs before a
/// test checks them in order (a panic is left to the check to find again, with its message).
fn in_parallel<T: Sync>(what: &str, items: &[T], f: impl Fn(&T) + Sync) {
    let t0 = std::time::Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        while let Some(item) = items.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            f(item);
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        for h in handles {
            let _ = h.join();
        }
    });
    eprintln!(
        "precompiled {} {what} on {threads} threads in {:.1}s",
        items.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// Rows of more gemv units than a lane loads at once (two): a 9216-wide down projection (4.5
/// units a lane for K-quants, 9 for 32-value blocks) in a one-block-per-SM kernel (rows of at
/// least 4096 values), every quantised type, fused decode. Passed on the H100 (v8).
#[test]
fn decode_long_rows_match_reference() {
    if !gpu() {
        return;
    }
    let wide = Dims {
        n_embd: 512,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 128,
        n_rot: 128,
        n_ff: 9216,
        n_vocab: 300,
    };
    let cases: Vec<(usize, Dims, GgmlType, bool)> = QUANT_TYPES
        .into_iter()
        .enumerate()
        .map(|(i, t)| (100 + i, wide, t, false))
        .collect();
    let variants = [(FuseOptions::ALL, false, false, 0)];
    precompile_cases(&cases, &variants, 16);
    for &(ci, d, t, qwen) in &cases {
        check_case(ci, d, t, qwen, &variants, 16);
    }
}

/// The output projection folded into decode attention's cluster (`set_wo_fold`, off by
/// default; codegen/attn_wo.rs) against the reference, with the separate kernel beside it:
/// a 256-position cache (every split: 16 on Hopper, most without keys at these positions),
/// groups of 192 columns over 32-value blocks (a SmolLM2-like layer) and of 256 over K-quant
/// blocks.
#[test]
fn folded_output_projection_matches_reference() {
    if !gpu() {
        return;
    }
    let smol = Dims {
        n_embd: 576,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_rot: 64,
        n_ff: 320,
        n_vocab: 300,
    };
    let k = Dims {
        n_embd: 512,
        n_head: 8,
        n_head_kv: 2,
        n_ff: 768,
        ..smol
    };
    let variants = [
        (FuseOptions::ALL, false, true, 0),
        (FuseOptions::ALL, false, false, 0),
    ];
    let cases = [
        (smol, GgmlType::Q8_0),
        (smol, GgmlType::Q4_0),
        (k, GgmlType::Q4_K),
        (k, GgmlType::Q6_K),
    ];
    let cases: Vec<(usize, Dims, GgmlType, bool)> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (d, t))| (200 + i, d, t, false))
        .collect();
    precompile_cases(&cases, &variants, 256);
    for &(ci, d, t, qwen) in &cases {
        check_case(ci, d, t, qwen, &variants, 256);
    }
}

/// One case of the odd-shape test: prefill of 5 tokens then 3 decode steps (graph replays) of
/// every variant (fusion options, persistent kernel) against the reference.
/// `set_trace`: a replayed decode graph stamps each launch (first block's start, last block's
/// end); the report counts the steps and lists every launch's label, and the traced program
/// computes what the plain one does.
#[test]
fn traced_decode_reports_every_launch() {
    if !gpu() {
        return;
    }
    let d = Dims {
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_rot: 64,
        n_ff: 512,
        n_vocab: 300,
    };
    let mut rng = Rng(0x7ace);
    let mut w = Weights::new(|| rng.next());
    let g1 = odd::graph(&d, 1, &mut w, true);
    let file = w.gguf(GgmlType::Q8_0);
    let widths = [d.n_head_kv * d.head_dim; 2];
    let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
    let mut kv = cb.new_kv(64, &widths).unwrap();
    let plain = cb.lower(&g1, &kv).unwrap();
    let want: Vec<Vec<f32>> = (0..3u32)
        .map(|i| {
            cb.execute(&plain, &[i + 1], &[i], &mut kv)
                .unwrap()
                .to_vec()
        })
        .collect();
    cb.set_trace(true);
    let traced = cb.lower(&g1, &kv).unwrap();
    for (i, want) in want.iter().enumerate() {
        let i = i as u32;
        let got = cb.execute(&traced, &[i + 1], &[i], &mut kv).unwrap();
        compare(got, want, 1e-6, &format!("traced step {i}"));
    }
    let report = cb.trace_report().unwrap();
    eprintln!("{report}");
    assert!(
        report.starts_with("SMELT_CUDA_TRACE: 3 decode steps"),
        "{report}"
    );
    // The program that ran: positions 0-2 take the short-context variant where there is one
    // (v13h, its attention a cluster of 8).
    for label in traced.pick(&[0]).labels() {
        assert!(report.contains(label.as_str()), "{label} missing: {report}");
    }
}

/// `variants`: fusion options, one persistent kernel, the folded output projection; `cap`:
/// the KV cache's positions (decode attention splits it in chunks of 32).
/// A variant of the odd-shape check: fusion options, one persistent kernel, the folded output
/// projection, one cluster of this many blocks (0: none).
type Variant = (FuseOptions, bool, bool, usize);

fn check_case(ci: usize, d: Dims, dtype: GgmlType, qwen: bool, variants: &[Variant], cap: usize) {
    let (w, file, g5, g1) = case_setup(ci, d, dtype, qwen);
    let rw = w.dequantized(&file);
    let widths = [d.n_head_kv * d.head_dim; 2];
    let reference = ReferenceBackend::new(rw, 1);
    let mut rkv = KvCache::new(16, &widths);
    let tokens: Vec<u32> = (0..8).map(|i| ((i * 2 + 1) % d.n_vocab) as u32).collect();
    let want5 = reference.execute(&g5, &tokens[..5], &[0, 1, 2, 3, 4], &mut rkv);
    let quantised = !matches!(dtype, GgmlType::F32 | GgmlType::F16);
    let fast = if quantised {
        fast_decode(&file, &w.specs, &g5, &g1, &tokens, &widths)
    } else {
        Vec::new()
    };
    for &(fusion, persistent, fold, cluster) in variants {
        let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
        cb.set_fusion(fusion);
        cb.set_persistent(persistent);
        cb.set_wo_fold(fold);
        cb.set_cluster(cluster);
        let mut kv = cb.new_kv(cap, &widths).unwrap();
        let p5 = cb.lower(&g5, &kv).unwrap();
        let p1 = cb.lower(&g1, &kv).unwrap();
        if persistent {
            assert_eq!(p1.kernels(), 1, "case {ci}: one persistent decode kernel");
        }
        if cluster > 0 && cb.device().cc.0 >= 9 {
            assert_eq!(
                p1.kernels(),
                2,
                "case {ci}: one cluster kernel and the head"
            );
        }
        if fold && cb.device().cc.0 >= 9 {
            assert!(
                p1.labels().iter().any(|l| l.ends_with("+ wo")),
                "case {ci}: folded"
            );
        }
        let got = cb
            .execute(&p5, &tokens[..5], &[0, 1, 2, 3, 4], &mut kv)
            .unwrap()
            .to_vec();
        // Prefill multiplies f16-rounded activations and weights on tensor cores.
        compare(
            &got,
            &want5,
            2e-2,
            &format!("case {ci} {dtype:?} {fusion:?} prefill"),
        );
        let mut rkv2 = rkv.clone();
        for step in 5..8u32 {
            let want = reference.execute(
                &g1,
                &tokens[step as usize..step as usize + 1],
                &[step],
                &mut rkv2,
            );
            let got = cb
                .execute(
                    &p1,
                    &tokens[step as usize..step as usize + 1],
                    &[step],
                    &mut kv,
                )
                .unwrap();
            // Quantised weights: decode rounds activations to 8 bits, as the CPU fast path
            // does, and attends over keys and values from the f16 tensor-core prefill; allow
            // twice the fast path's own distance from the reference (an indexing bug gives
            // errors of the order of the logits themselves).
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let tol = if quantised {
                let fd = max_diff(&fast[step as usize - 5], &want);
                eprintln!(
                    "case {ci} {dtype:?} decode {step}: gpu {} cpu fast {fd} of {scale}",
                    max_diff(got, &want)
                );
                (2.0 * fd / scale).max(2e-2)
            } else {
                2e-2
            };
            compare(
                got,
                &want,
                tol,
                &format!("case {ci} {dtype:?} {fusion:?} persistent={persistent} cluster={cluster} decode {step}"),
            );
        }
        let st = cb.stats();
        assert_eq!(st.executions, 4);
        if fusion == FuseOptions::ALL {
            // The prompt's program: one graph (v28), or its launches and three copies.
            let prefill = match cb.prefill_graphs() {
                true => 1,
                false => p5.kernels() as u64 + 3,
            };
            assert_eq!(
                st.submissions - prefill,
                3,
                "one submission per decode step"
            );
        }
    }
}

/// Prefill of 37 tokens (rows not a multiple of any tile) against the reference, every case,
/// prefill matmuls through cuBLAS (`cublas`) or the mma.sync kernel. False when the cuBLAS
/// path was asked for and cuBLAS did not load.
fn prefill_matches_reference(cublas: bool) -> bool {
    const N: usize = 37;
    // The mma.sync fallback (no libcublas) is checked on the float cases and one type of each
    // quant family: every case took it past the device call's test budget.
    let cases: Vec<(usize, (Dims, GgmlType))> = cases()
        .into_iter()
        .enumerate()
        .filter(|(_, (_, t))| {
            cublas
                || matches!(
                    t,
                    GgmlType::F32 | GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q4_K
                )
        })
        .collect();
    let setup = |ci: usize, d: Dims, dtype: GgmlType| {
        let mut rng = Rng(0x51ed + ci as u64);
        let mut w: Weights<Draw> = Weights::new(Box::new(move || rng.next()));
        let g = odd::graph(&d, N, &mut w, true);
        let file = w.gguf(dtype);
        (w, g, file)
    };
    in_parallel("prefill cases", &cases, |&(ci, (d, dtype))| {
        let (w, g, file) = setup(ci, d, dtype);
        let Ok(mut cb) = CudaBackend::new(Arc::clone(&file), &w.specs) else {
            return;
        };
        if cb.set_cublas(cublas) != cublas {
            return;
        }
        let widths = [d.n_head_kv * d.head_dim; 2];
        if let Ok(kv) = cb.new_kv(64, &widths) {
            let _ = cb.precompile(&[g], &kv);
        }
    });
    for &(ci, (d, dtype)) in &cases {
        let (w, g, file) = setup(ci, d, dtype);
        let rw = w.dequantized(&file);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let tokens: Vec<u32> = (0..N).map(|i| ((i * 5 + 2) % d.n_vocab) as u32).collect();
        let positions: Vec<u32> = (0..N as u32).collect();
        let mut rkv = KvCache::new(64, &widths);
        let want = ReferenceBackend::new(rw, 1).execute(&g, &tokens, &positions, &mut rkv);
        let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
        if cb.set_cublas(cublas) != cublas {
            eprintln!("SKIP: {}; the cuBLAS path was not run", cb.prefill_path());
            return false;
        }
        let mut kv = cb.new_kv(64, &widths).unwrap();
        let p = cb.lower(&g, &kv).unwrap();
        assert_eq!(p.gemms() > 0, cublas, "{}", cb.describe());
        let got = cb.execute(&p, &tokens, &positions, &mut kv).unwrap();
        // f16-rounded activations and weights on tensor cores, f32 accumulation.
        let what = format!("case {ci} {dtype:?} cublas={cublas} prefill {N}");
        compare(got, &want, 2e-2, &what);
    }
    true
}

#[test]
fn prefill_mma_fallback_matches_reference() {
    if gpu() {
        prefill_matches_reference(false);
    }
}

#[test]
fn prefill_cublas_matches_reference() {
    if gpu() && prefill_matches_reference(true) {
        eprintln!("prefill through cuBLAS checked on every case");
    }
}

mod batched;
mod generated;
mod greedy;
mod long_context;
use long_context::{long_context_case, long_context_dims, LONG_CAPACITY};
mod prelude_kernels;
mod top;

/// v14b: one-token decode as one thread block cluster (of 16, then 8 blocks) and the head, on
/// every quantised type and the Qwen-like layer (NEOX pairs, biases), against the reference.
#[test]
fn cluster_decode_matches_reference() {
    if !gpu() {
        return;
    }
    let cases: Vec<(usize, Dims, GgmlType, bool)> = QUANT_TYPES
        .into_iter()
        .map(|t| (QUANT, t, false))
        .chain([(QUANT, GgmlType::Q8_0, true), (QUANT, GgmlType::Q4_K, true)])
        .enumerate()
        .map(|(i, (d, t, q))| (200 + i, d, t, q))
        .collect();
    let variants = [
        (FuseOptions::ALL, false, false, 16),
        (FuseOptions::ALL, false, false, 8),
    ];
    precompile_cases(&cases, &variants, 16);
    for &(ci, d, t, qwen) in &cases {
        check_case(ci, d, t, qwen, &variants, 16);
    }
}
