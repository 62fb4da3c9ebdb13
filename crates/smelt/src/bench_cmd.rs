//! `smelt bench`: prefill and decode speed of a model, with the dispatch counts and memory
//! traffic that explain it; `--membw` measures this machine's memory bandwidth; `--synthetic`
//! writes a random-weight model in a real model's shape.
//!
//! Procedure: open and load the model (`load_ms`), run one warm-up repetition (its prefill is
//! the cold `first_token_ms`: plan building and the first touch of every weight page), then
//! `-r` repetitions of: clear the KV cache, prefill `-p` prompt tokens (one graph per 512
//! tokens), then decode `-n` tokens greedily, one at a time. Medians over the repetitions.
//!
//! `--batch N` decodes N sequences together through the batch engine instead
//! (`bench_cmd/batch.rs`).
//!
//! `--serve` benchmarks the HTTP server with concurrent streaming clients instead; its procedure
//! and JSON keys are documented in `bench_cmd/serve.rs`.
//!
//! `--json` prints one object with these keys:
//!
//! | key | meaning |
//! | --- | --- |
//! | `model`, `backend`, `isa`, `threads`, `kv_type` | what ran: file, backend (`fast`/`reference`), SIMD level, threads, KV storage (`f16`/`q8_0`) |
//! | `n_prompt`, `n_gen`, `reps` | `-p`, `-n`, `-r` |
//! | `n_ctx` | KV cache positions: `--ctx`, at least `n_prompt + n_gen + 1` |
//! | `n_layer`, `n_vocab`, `file_bytes` | the model's layers, vocabulary size, file size |
//! | `prefill_tps` (`_min`, `_max`) | prompt tokens per second: median (min, max) over repetitions |
//! | `decode_tps` (`_min`, `_max`) | generated tokens per second, likewise |
//! | `ttft_ms` | time to first token with warm plans and pages: median prefill time of the prompt |
//! | `first_token_ms` | cold: the warm-up repetition's prefill (plans built, weights paged in) |
//! | `load_ms` | opening the file and loading the model (weights are mapped, not read) |
//! | `load_to_first_token_ms` | `load_ms + first_token_ms` |
//! | `device` | `cpu`, or `cuda: <GPU, capability, SMs, driver>` (`--device auto|cpu|cuda`) |
//! | `dispatches_per_token` | parallel regions (fused kernels; GPU: kernel launches) per decoded token |
//! | `barriers_per_token` | thread-pool barriers per decoded token (one per dispatch; GPU: host submissions) |
//! | `kernels_per_token`, `submissions_per_token` | GPU only: kernel launches, and host submissions (graph launches) per decoded token |
//! | `weight_bytes_per_token` | bytes of weights one decode step reads: every matmul weight once, one embedding row |
//! | `achieved_gbps` | `weight_bytes_per_token * decode_tps / 1e9` |
//! | `membw_gbps` | this machine's read bandwidth with the same threads (`--membw`); on the GPU its measured device-to-device copy bandwidth (bytes read + written) |
//! | `bandwidth_share` | `achieved_gbps / membw_gbps` |
//! | `peak_rss_bytes` | the process's peak resident set (VmHWM), mapped weight pages included |
//! | `allocated_bytes` | what the backend allocated (activations, scratch, KV cache, 1-D weights) |
//! | `token_ms` | one decode step: `1000 / decode_tps` |
//! | `floor_ms` | the bandwidth floor: `weight_bytes_per_token / membw_gbps` (no engine decodes faster) |
//! | `dispatch_ms` | dispatch overhead: one pool job with `dispatches_per_token` barriers and no work, timed on the same threads (median of 200) |
//! | `other_ms` | the rest, `token_ms - floor_ms - dispatch_ms`: compute not hidden under memory traffic, load latency, imbalance |

mod batch;
mod membw;
mod serve;
mod synth;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use smelt_engine::{BackendKind, KvType, Runner, RunnerOptions};
use smelt_gguf::Gguf;
use smelt_graph::Op;
use smelt_models::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    Fast,
    Reference,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchKv {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// Arguments of `smelt bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The GGUF model to benchmark (with --serve, also a model name in the store).
    pub model: Option<PathBuf>,
    /// Prompt tokens to prefill.
    #[arg(short = 'p', long = "prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long = "gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Repetitions (medians are reported).
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// KV cache positions (default and at least: prompt + generated + 1). Programs are
    /// specialised to the cache size, as a server's are to its context (e.g. 4096).
    #[arg(long, value_name = "N")]
    pub ctx: Option<usize>,
    /// Print one JSON object (keys documented in `smelt bench --help` and BENCHMARKS.md).
    #[arg(long)]
    pub json: bool,
    /// Measure this machine's memory read bandwidth (alone, or with a model for bandwidth_share).
    #[arg(long)]
    pub membw: bool,
    /// Write a synthetic model SHAPE:TYPE (llama-1b or llama-8b; q4_0, q4_k_m or q8_0) to -o.
    #[arg(long, value_name = "SHAPE:TYPE")]
    pub synthetic: Option<String>,
    /// Output file of --synthetic.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// GGUF whose tokenizer (tokenizer.ggml.*) the synthetic model copies (default: the
    /// SmolLM2 test model).
    #[arg(long)]
    pub vocab_from: Option<PathBuf>,
    /// Backend to run.
    #[arg(long, value_enum, default_value_t = BenchBackend::Fast)]
    pub backend: BenchBackend,
    /// KV cache storage of the fast backend.
    #[arg(long, value_enum, default_value_t = BenchKv::F16)]
    pub kv: BenchKv,
    /// Print the fused plan of a decode step and the time per kernel kind (with --serve: the
    /// server's log).
    #[arg(long)]
    pub verbose: bool,
    /// Decode N sequences together through the batch engine (the server's), reporting tokens
    /// per second summed over them (keys in bench_cmd/batch.rs).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub serve: serve::ServeBenchArgs,
}

impl BenchArgs {
    /// KV cache positions of a run: `--ctx`, at least the prompt, the generated tokens and one.
    pub fn n_ctx(&self) -> usize {
        (self.n_prompt + self.n_gen + 1).max(self.ctx.unwrap_or(0))
    }
}

/// Run `smelt bench`.
pub fn run_bench(a: BenchArgs) -> Result<()> {
    if let Some(spec) = &a.synthetic {
        return write_synthetic(spec, &a);
    }
    if a.serve.serve {
        let model = a
            .model
            .as_ref()
            .context("smelt bench --serve needs a MODEL")?;
        return serve::run(
            &model.to_string_lossy(),
            &a.serve,
            a.threads,
            a.json,
            a.verbose,
        );
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let Some(model) = a.model.clone() else {
        if a.membw {
            let gbps = membw::measure(threads);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "threads": threads, "membw_gbps": gbps })
                );
            } else {
                println!("memory read bandwidth, {threads} threads: {gbps:.2} GB/s");
            }
            return Ok(());
        }
        bail!("smelt bench needs a MODEL (or --membw, or --synthetic SHAPE:TYPE -o FILE)");
    };
    if a.reps == 0 || a.n_prompt == 0 {
        bail!("-r and -p must be at least 1");
    }
    if let Some(n) = a.batch {
        return batch::run(&model, &a, n, threads);
    }
    let r = measure(&model, &a, threads)?;
    // Peak RSS before the bandwidth probe's buffer raises it.
    let peak_rss = peak_rss_bytes();
    // On the GPU the roofline is the device's own copy bandwidth, measured by the backend, and
    // the CPU pool's barrier cost does not apply (one graph launch per token).
    let (membw_gbps, dispatch_ms) = match r.device_copy_gbps {
        Some(gbps) => (gbps, 0.0),
        None => (
            membw::measure(threads),
            dispatch_overhead_ms(threads, r.dispatches_per_token.round() as usize),
        ),
    };
    let report = r.report(&model, &a, threads, membw_gbps, peak_rss, dispatch_ms);
    if a.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn write_synthetic(spec: &str, a: &BenchArgs) -> Result<()> {
    let (shape, mix) = synth::parse_spec(spec)?;
    let out = a.output.as_ref().context("--synthetic needs -o FILE")?;
    let vocab_from = match &a.vocab_from {
        Some(p) => p.clone(),
        None => default_vocab()
            .context("no --vocab-from given and the SmolLM2 test model is not cached")?,
    };
    let t = Instant::now();
    let size = synth::write(&shape, mix, &vocab_from, out)?;
    eprintln!(
        "wrote {} ({:.1} MB) in {:.1} s",
        out.display(),
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The SmolLM2 test model, where `scripts/fetch_models.py` caches it.
fn default_vocab() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let dir = std::env::var_os("SMELT_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(home)
                .join(".cache")
                .join("smelt")
                .join("test-models")
        });
    let p = dir.join("smollm2-135m-instruct-q4_1.gguf");
    p.exists().then_some(p)
}

/// Raw measurements.
struct Measured {
    load_ms: f64,
    first_token_ms: f64,
    prefill_s: Vec<f64>,
    decode_s: Vec<f64>,
    dispatches_per_token: f64,
    barriers_per_token: f64,
    n_layer: usize,
    n_vocab: usize,
    file_bytes: u64,
    weight_bytes_per_token: u64,
    allocated_bytes: usize,
    backend: String,
    device: String,
    /// The GPU's measured device-to-device copy bandwidth (read + write), GB/s.
    device_copy_gbps: Option<f64>,
    /// Where decoding took each token's argmax: `device` (greedy on the GPU, the next step
    /// launched ahead) or `host`.
    decode_argmax: &'static str,
}

fn measure(model: &std::path::Path, a: &BenchArgs, threads: usize) -> Result<Measured> {
    let t = Instant::now();
    let gguf = Arc::new(Gguf::open(model).with_context(|| format!("opening {}", model.display()))?);
    // `--backend fast` runs where `--device` says (auto: the GPU when there is one).
    let backend = match a.backend {
        BenchBackend::Fast => match BackendKind::from_env()? {
            BackendKind::Reference => BackendKind::Fast,
            k => k,
        },
        BenchBackend::Reference => BackendKind::Reference,
    };
    let n_ctx = a.n_ctx();
    let kv_type = match a.kv {
        BenchKv::F16 => KvType::F16,
        BenchKv::Q8_0 => KvType::Q8_0,
    };
    let opts = RunnerOptions {
        n_ctx,
        threads,
        backend,
        kv_type,
    };
    let mut runner = Runner::load_with(Arc::clone(&gguf), opts)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let n_vocab = runner.arch().n_vocab();
    let prompt: Vec<u32> = (0..a.n_prompt)
        .map(|i| ((i * 7919 + 1) % n_vocab) as u32)
        .collect();
    let weight_bytes_per_token = decode_weight_bytes(&gguf, &runner);
    if a.verbose {
        eprintln!(
            "{}",
            smelt_graph::fuse(&runner.arch().build(1, Output::LastLogits))
        );
        runner.set_profiling(true);
    }
    let mut first_token_ms = 0.0;
    let (mut prefill_s, mut decode_s) = (Vec::new(), Vec::new());
    let (mut dispatches, mut barriers) = (0u64, 0u64);
    for rep in 0..=a.reps {
        runner.clear();
        let t = Instant::now();
        let tok = smelt_engine::sampler::argmax(runner.eval_slice(&prompt, Output::LastLogits)?);
        let pre = t.elapsed().as_secs_f64();
        let before = runner.stats().unwrap_or_default();
        let t = Instant::now();
        // The warm-up only needs the decode plan built and the first step's pages touched.
        let n_gen = if rep == 0 { a.n_gen.min(2) } else { a.n_gen };
        // Greedy, as a user's `temperature 0` generation runs (on the GPU the argmax is taken
        // on the device and the next step launched before the host reads the token); with
        // `--temperature`, sampled as `smelt run` samples.
        let done = match a.serve.temperature > 0.0 {
            true => decode_sampled(&mut runner, &prompt, tok, n_gen, a.serve.temperature)?,
            false => runner.decode_greedy(tok, n_gen, &mut |_, _| true)?,
        };
        if done != n_gen {
            anyhow::bail!("decoded {done} of {n_gen} tokens (context {n_ctx})");
        }
        let dec = t.elapsed().as_secs_f64();
        let after = runner.stats().unwrap_or_default();
        if rep == 0 {
            first_token_ms = pre * 1e3;
            continue;
        }
        prefill_s.push(pre);
        decode_s.push(dec);
        dispatches += after.dispatches - before.dispatches;
        barriers += after.barriers - before.barriers;
    }
    if a.verbose {
        eprintln!("time per kernel kind (thread 0, barrier wait included), all repetitions:");
        for (k, ms, n) in runner.profile() {
            eprintln!("  {ms:10.2} ms {n:8} x  {k}");
        }
    }
    let decoded = (a.n_gen * a.reps).max(1) as f64;
    Ok(Measured {
        load_ms,
        first_token_ms,
        prefill_s,
        decode_s,
        dispatches_per_token: dispatches as f64 / decoded,
        barriers_per_token: barriers as f64 / decoded,
        n_layer: runner.arch().n_layer(),
        n_vocab,
        file_bytes: gguf.file_size(),
        weight_bytes_per_token,
        allocated_bytes: runner.memory_bytes(),
        backend: format!("{:?}", runner.backend()).to_lowercase(),
        device: runner.device(),
        device_copy_gbps: runner.device_copy_gbps(),
        decode_argmax: match (a.serve.temperature > 0.0, runner.greedy_on_device()) {
            (true, _) => "sampled",
            (false, true) => "device",
            (false, false) => "host",
        },
    })
}

/// `n` decode steps from `first` after `prompt`, each token drawn at `temperature` with
/// Ollama's other defaults (seed 1), as `Model::generate` draws them: from the step's
/// candidates where the backend gives them (the GPU, smelt-cuda v22), else from the row.
fn decode_sampled(
    runner: &mut Runner,
    prompt: &[u32],
    first: u32,
    n: usize,
    temperature: f32,
) -> Result<usize> {
    let mut sampler = smelt_engine::Sampler::new(smelt_engine::SamplingOptions {
        temperature,
        seed: Some(1),
        ..Default::default()
    });
    let n_vocab = runner.arch().n_vocab();
    let (mut history, mut cands, mut tok) = (prompt.to_vec(), Vec::new(), first);
    history.push(first);
    let mut left = n;
    // On the GPU the draws on the device, each step launched ahead (smelt-cuda v23).
    if let Some(settings) = sampler.device_sampling(n_vocab, smelt_engine::TOP_CANDIDATES) {
        let mut rng = sampler.rng().clone();
        let mut drawn = Vec::new();
        let run = runner.decode_sampled(first, n, &settings, &history, &mut rng, &mut |t, _| {
            drawn.push(t);
            true
        })?;
        match run {
            Some((steps, None)) => return Ok(steps),
            Some((steps, Some(last))) => {
                // The last step's draw is the host's: evaluated again below.
                history.extend(&drawn);
                sampler.set_rng(rng);
                tok = last;
                left = n - (steps - 1);
            }
            None => {}
        }
    }
    for _ in 0..left {
        let top = match sampler.top_fits(n_vocab, smelt_engine::TOP_CANDIDATES, &history) {
            true => runner.eval_top(tok, &mut cands)?,
            false => None,
        };
        let drawn = match top {
            Some(inf) if !(inf && temperature <= 0.0) => sampler.sample_top(&cands, &history),
            _ => None,
        };
        tok = match (drawn, top.is_some()) {
            (Some(t), _) => t,
            (None, evaluated) => {
                let mut row = match evaluated {
                    true => runner.last_logits()?,
                    false => runner.eval_slice(&[tok], Output::LastLogits)?.to_vec(),
                };
                sampler.apply_penalties(&mut row, &history);
                sampler.sample(&row)
            }
        };
        history.push(tok);
    }
    Ok(n)
}

/// Bytes of weights a decode step reads: every matmul weight once (a tied embedding used as
/// the output head counts once) and one row of each embedding table.
fn decode_weight_bytes(gguf: &Gguf, runner: &Runner) -> u64 {
    let arch = runner.arch();
    let g = arch.build(1, Output::LastLogits);
    let entries = arch.weights().entries();
    let bytes = |w: smelt_graph::WeightId| {
        gguf.tensor(&entries[w.0 as usize].name)
            .map_or(0, |t| t.n_bytes)
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    for n in g.nodes() {
        match n.op {
            Op::MatMul { w, .. } if seen.insert(w) => total += bytes(w),
            Op::Embed { table } => {
                total += bytes(table) / entries[table.0 as usize].shape[0].max(1) as u64
            }
            _ => {}
        }
    }
    total
}

/// (median, min, max) of `n / t` over the repetitions.
fn rates(n: usize, times: &[f64]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = times.iter().map(|&t| n as f64 / t.max(1e-12)).collect();
    r.sort_by(f64::total_cmp);
    let med = if r.len() % 2 == 1 {
        r[r.len() / 2]
    } else {
        (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
    };
    (med, r[0], r[r.len() - 1])
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

/// The fixed cost of `dispatches` fused kernels on `threads` threads: one pool job (as the
/// executor runs one per step) whose threads meet at `dispatches` barriers with no work between
/// them. Median over 200 jobs, in ms.
fn dispatch_overhead_ms(threads: usize, dispatches: usize) -> f64 {
    if dispatches == 0 {
        return 0.0;
    }
    let pool = smelt_cpu::fast::Pool::new(threads);
    let job = |_tid: usize, barrier: &smelt_cpu::fast::Barrier| {
        // The pool adds the barrier that ends the job.
        for _ in 1..dispatches {
            barrier.wait();
        }
    };
    for _ in 0..20 {
        pool.run(&job);
    }
    let times: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            pool.run(&job);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&times)
}

/// Peak resident set of this process (Linux VmHWM), 0 where unknown.
fn peak_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Measured {
    fn report(
        &self,
        model: &std::path::Path,
        a: &BenchArgs,
        threads: usize,
        membw_gbps: f64,
        peak_rss: u64,
        dispatch_ms: f64,
    ) -> serde_json::Value {
        let (pre, pre_min, pre_max) = rates(a.n_prompt, &self.prefill_s);
        let (dec, dec_min, dec_max) = if a.n_gen > 0 {
            rates(a.n_gen, &self.decode_s)
        } else {
            (0.0, 0.0, 0.0)
        };
        let achieved = self.weight_bytes_per_token as f64 * dec / 1e9;
        let token_ms = if dec > 0.0 { 1e3 / dec } else { 0.0 };
        let floor_ms = if membw_gbps > 0.0 {
            self.weight_bytes_per_token as f64 / membw_gbps / 1e6
        } else {
            0.0
        };
        serde_json::json!({
            "model": model.display().to_string(),
            "backend": self.backend,
            "device": self.device,
            "isa": smelt_cpu::kernels::Isa::detect().name(),
            "threads": threads,
            "kv_type": format!("{:?}", a.kv).to_lowercase(),
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "n_ctx": a.n_ctx(),
            "reps": a.reps,
            "n_layer": self.n_layer,
            "n_vocab": self.n_vocab,
            "file_bytes": self.file_bytes,
            "prefill_tps": pre,
            "prefill_tps_min": pre_min,
            "prefill_tps_max": pre_max,
            "decode_tps": dec,
            "decode_tps_min": dec_min,
            "decode_tps_max": dec_max,
            "decode_argmax": self.decode_argmax,
            "ttft_ms": median(&self.prefill_s) * 1e3,
            "first_token_ms": self.first_token_ms,
            "load_ms": self.load_ms,
            "load_to_first_token_ms": self.load_ms + self.first_token_ms,
            "dispatches_per_token": self.dispatches_per_token,
            "barriers_per_token": self.barriers_per_token,
            "kernels_per_token": if self.device_copy_gbps.is_some() { self.dispatches_per_token } else { 0.0 },
            "submissions_per_token": if self.device_copy_gbps.is_some() { self.barriers_per_token } else { 0.0 },
            "weight_bytes_per_token": self.weight_bytes_per_token,
            "achieved_gbps": achieved,
            "membw_gbps": membw_gbps,
            "bandwidth_share": if membw_gbps > 0.0 { achieved / membw_gbps } else { 0.0 },
            "peak_rss_bytes": peak_rss,
            "allocated_bytes": self.allocated_bytes,
            "token_ms": token_ms,
            "floor_ms": floor_ms,
            "dispatch_ms": dispatch_ms,
            "other_ms": token_ms - floor_ms - dispatch_ms,
        })
    }
}

fn print_text(r: &serde_json::Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    println!(
        "model      {} ({} layers, {:.1} MB)",
        r["model"].as_str().unwrap_or("?"),
        r["n_layer"],
        f("file_bytes") / 1e6
    );
    println!(
        "backend    {} on {} ({}), {} threads",
        r["backend"].as_str().unwrap_or("?"),
        r["device"].as_str().unwrap_or("?"),
        r["isa"].as_str().unwrap_or("?"),
        r["threads"]
    );
    println!(
        "prefill    {:8.1} tok/s  (min {:.1}, max {:.1}) over {} tokens",
        f("prefill_tps"),
        f("prefill_tps_min"),
        f("prefill_tps_max"),
        r["n_prompt"]
    );
    println!(
        "decode     {:8.1} tok/s  (min {:.1}, max {:.1}) over {} tokens, {}",
        f("decode_tps"),
        f("decode_tps_min"),
        f("decode_tps_max"),
        r["n_gen"],
        match r["decode_argmax"].as_str().unwrap_or("host") {
            "sampled" => "sampled (Ollama's defaults at --temperature)".to_string(),
            at => format!("greedy, argmax on the {at}"),
        }
    );
    println!(
        "ttft       {:8.1} ms warm, {:.1} ms cold; load {:.1} ms",
        f("ttft_ms"),
        f("first_token_ms"),
        f("load_ms")
    );
    println!(
        "dispatch   {:8.1} per token, {:.1} barriers per token",
        f("dispatches_per_token"),
        f("barriers_per_token")
    );
    println!(
        "memory     {:8.1} MB weights/token, {:.2} GB/s = {:.0}% of {:.2} GB/s; peak RSS {:.1} MB",
        f("weight_bytes_per_token") / 1e6,
        f("achieved_gbps"),
        f("bandwidth_share") * 100.0,
        f("membw_gbps"),
        f("peak_rss_bytes") / 1e6
    );
    println!(
        "per token  {:8.2} ms = floor {:.2} (bandwidth) + dispatch {:.2} + other {:.2}",
        f("token_ms"),
        f("floor_ms"),
        f("dispatch_ms"),
        f("other_ms")
    );
}
