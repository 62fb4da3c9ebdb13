//! Kernel throughput: gemv GB/s per weight type and level, gemm tokens/s. Run it on a quiet
//! machine (it loads every core it is given):
//!
//! ```text
//! cargo run --release -p smelt-cpu --example kernel_bench -- \
//!     [--types q4_0,q4_k,...] [--isa scalar,avx2,avx512] [--threads 1,8] [--n 4096] [--rows 4096]
//!     [--mb 1024] [--tokens 64,512] [--secs 1] [--no-gemm] [--gemv-rows 1,2,4]
//! ```
//!
//! gemv streams `--mb` MiB of weights (copies of one `rows x n` matrix, used in turn, so the
//! weights come from memory as in decode, not from cache), split over the threads by rows with
//! one barrier per matrix, as the executor runs it. GB/s counts weight bytes. gemm runs `T`
//! tokens against one matrix (prefill is compute-bound) and reports tokens/s and GFLOP/s.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use smelt_cpu::kernels::{Isa, MatmulKernel, SUPPORTED_TYPES};
use smelt_gguf::GgmlType;

struct Args {
    types: Vec<GgmlType>,
    isas: Vec<Isa>,
    threads: Vec<usize>,
    n: usize,
    rows: usize,
    mb: usize,
    tokens: Vec<usize>,
    secs: f64,
    gemm: bool,
    gemv_rows: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = Args {
        types: [
            "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16",
        ]
        .iter()
        .filter_map(|s| GgmlType::from_name(s))
        .collect(),
        isas: Isa::supported().collect(),
        threads: vec![1, cores],
        n: 4096,
        rows: 4096,
        mb: 1024,
        tokens: vec![64, 512],
        secs: 1.0,
        gemm: true,
        gemv_rows: vec![4],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-gemm" {
            args.gemm = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
        let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{flag} {s}: {e}"));
        match flag.as_str() {
            "--types" if value == "all" => args.types = SUPPORTED_TYPES.to_vec(),
            "--types" => {
                args.types = list()
                    .map(|s| {
                        GgmlType::from_name(&s.to_ascii_uppercase()).ok_or(format!("type {s}?"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--isa" => {
                args.isas = list()
                    .map(|s| Isa::from_name(s).ok_or(format!("isa {s}?")))
                    .collect::<Result<_, _>>()?
            }
            "--threads" => args.threads = list().map(num).collect::<Result<_, _>>()?,
            "--tokens" => args.tokens = list().map(num).collect::<Result<_, _>>()?,
            "--gemv-rows" => args.gemv_rows = list().map(num).collect::<Result<_, _>>()?,
            "--n" => args.n = num(&value)?,
            "--rows" => args.rows = num(&value)?,
            "--mb" => args.mb = num(&value)?,
            "--secs" => args.secs = value.parse().map_err(|e| format!("--secs: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// splitmix64 values in about [-2, 2].
fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}

/// One `rows x n` matrix: 64 rows quantised by the reference quantiser, repeated (the values do
/// not matter for speed; the reference K-quant search is too slow to run on 16M values).
fn matrix(wtype: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let seed_rows = rows.min(64);
    let seed = smelt_quant::quantize_to_vec(wtype, &random_f32(n * seed_rows, 7)).unwrap();
    let mut m = Vec::with_capacity(seed.len() / seed_rows * rows);
    while m.len() < seed.len() / seed_rows * rows {
        let take = (seed.len() / seed_rows * rows - m.len()).min(seed.len());
        m.extend_from_slice(&seed[..take]);
    }
    m
}

/// Split `rows` into `parts` ranges, multiples of 4 rows each (the gemv tile height).
fn split(rows: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let chunk = rows.div_ceil(parts).div_ceil(4) * 4;
    (0..parts)
        .map(|i| (i * chunk).min(rows)..((i + 1) * chunk).min(rows))
        .collect()
}

/// A spinning barrier, as an executor would use between kernels (a sleeping one costs tens of
/// microseconds per wake-up, as much as a whole small matmul).
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    threads: usize,
}

impl SpinBarrier {
    fn new(threads: usize) -> SpinBarrier {
        SpinBarrier {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            threads,
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            while self.generation.load(Ordering::Acquire) == generation {
                std::hint::spin_loop();
            }
        }
    }
}

/// Run `body(thread, iteration)` on `threads` threads for `iters` iterations, with a barrier
/// after each; returns seconds.
fn parallel(threads: usize, iters: usize, body: &(dyn Fn(usize, usize) + Sync)) -> f64 {
    let barrier = SpinBarrier::new(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                for i in 0..iters {
                    body(t, i);
                    barrier.wait();
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// Per-thread output buffers shared with the worker closures (each thread writes only its own).
struct Outs(Vec<std::sync::Mutex<Vec<f32>>>);

fn bench_gemv(args: &Args, kernel: &MatmulKernel, mats: &[Vec<u8>], xq: &[u8]) {
    let bytes = mats[0].len();
    for &threads in &args.threads {
        let ranges = split(args.rows, threads);
        let outs = Outs(
            ranges
                .iter()
                .map(|r| std::sync::Mutex::new(vec![0f32; r.len()]))
                .collect(),
        );
        let body = |t: usize, i: usize| {
            let w = &mats[i % mats.len()];
            let mut out = outs.0[t].lock().unwrap();
            kernel
                .gemv(args.n, w, ranges[t].clone(), xq, &mut out)
                .unwrap();
            black_box(&out);
        };
        // One pass over every copy to fault the pages in, then time enough passes.
        let warm = parallel(threads, mats.len(), &body);
        let per = warm / mats.len() as f64;
        let iters = ((args.secs / per) as usize).max(mats.len());
        let secs = parallel(threads, iters, &body);
        let gbs = (bytes * iters) as f64 / secs / 1e9;
        println!(
            "gemv {:>5} {:>7} (code {:>7}) rows/tile {} threads {threads:>3}: \
             {gbs:7.2} GB/s  {:8.1} us/matrix",
            kernel.weight_type().name(),
            kernel.isa().name(),
            kernel.code_isa().name(),
            kernel.gemv_rows(),
            secs / iters as f64 * 1e6
        );
    }
}

fn bench_gemm(args: &Args, kernel: &MatmulKernel, w: &[u8]) {
    let threads = *args.threads.iter().max().unwrap_or(&1);
    for &tokens in &args.tokens {
        let x = random_f32(args.n * tokens, 11);
        let row = kernel.act_row_bytes(args.n).unwrap();
        let mut xq = vec![0u8; row * tokens];
        for (xr, qr) in x.chunks_exact(args.n).zip(xq.chunks_exact_mut(row)) {
            kernel.quantize_act(xr, qr).unwrap();
        }
        let ranges = split(args.rows, threads);
        let outs = Outs(
            ranges
                .iter()
                .map(|r| std::sync::Mutex::new(vec![0f32; r.len() * tokens]))
                .collect(),
        );
        let body = |t: usize, _i: usize| {
            let mut out = outs.0[t].lock().unwrap();
            let stride = ranges[t].len();
            kernel
                .gemm(args.n, w, ranges[t].clone(), &xq, tokens, &mut out, stride)
                .unwrap();
            black_box(&out);
        };
        let warm = parallel(threads, 1, &body);
        let iters = ((args.secs / warm) as usize).max(2);
        let secs = parallel(threads, iters, &body) / iters as f64;
        let flops = 2.0 * (args.n * args.rows * tokens) as f64;
        println!(
            "gemm {:>5} {:>7} (code {:>7}) threads {threads:>3} tokens {tokens:>4}: \
             {:9.1} tok/s {:8.1} GFLOP/s",
            kernel.weight_type().name(),
            kernel.isa().name(),
            kernel.code_isa().name(),
            tokens as f64 / secs,
            flops / secs / 1e9
        );
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kernel_bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "cpu level {} (detected {}), n {} rows {}, {} MiB of weights per gemv run",
        Isa::cpu_max(),
        Isa::detect(),
        args.n,
        args.rows,
        args.mb
    );
    let x = random_f32(args.n, 3);
    for &wtype in &args.types {
        let m = matrix(wtype, args.n, args.rows);
        let copies = (args.mb << 20).div_ceil(m.len()).max(1);
        let mats: Vec<Vec<u8>> = (0..copies).map(|_| m.clone()).collect();
        for &isa in &args.isas {
            let kernel = match MatmulKernel::new(wtype, isa) {
                Ok(k) => k,
                Err(e) => {
                    println!("skip {wtype} {isa}: {e}");
                    continue;
                }
            };
            let mut xq = vec![0u8; kernel.act_row_bytes(args.n).unwrap()];
            let start = Instant::now();
            for _ in 0..100 {
                kernel.quantize_act(&x, &mut xq).unwrap();
            }
            let quant_us = start.elapsed().as_secs_f64() / 100.0 * 1e6;
            println!(
                "quantize {:?} {isa}: {quant_us:.2} us per row",
                kernel.act_type()
            );
            for &rows in &args.gemv_rows {
                let kernel = kernel.with_gemv_rows(rows).unwrap();
                bench_gemv(&args, &kernel, &mats, &xq);
            }
            if args.gemm {
                bench_gemm(&args, &kernel, &m);
            }
        }
    }
}
