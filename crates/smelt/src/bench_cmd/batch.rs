//! `smelt bench --batch N MODEL`: N sequences decoded together through the batch engine (the
//! one `smelt serve` runs), on the CPU or the GPU as `--device` says.
//!
//! Procedure: load a batch runner with a KV pool for N sequences of `-p + -n + 1` positions.
//! One warm-up repetition (every step shape built; on the GPU compiled or taken from the disk
//! cache), then `-r` repetitions of: N prompts of `-p` tokens (different in every repetition,
//! so the prefix cache never serves them) prefilled one sequence at a time, all but the last
//! token in one step and that token in the first decode step, as the server's loop does; then
//! `-n` decode steps of N rows, greedy, whatever token comes. Medians over the repetitions.
//!
//! `--json` keys: `mode` (`"batch"`), `model`, `device`, `batch`, `n_prompt`, `n_gen`, `reps`,
//! `prefill_tps` (prompt tokens per second, one sequence at a time), `decode_tps` (tokens per
//! second summed over the N sequences), `per_seq_tps` (`decode_tps / N`), `step_ms` (one
//! decode step of N rows), `load_ms`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_engine::{BackendKind, BatchOptions, BatchRunner, KvSeq, KvType};
use smelt_gguf::Gguf;

use super::{median, BenchArgs};

pub fn run(model: &Path, a: &BenchArgs, n: usize, threads: usize) -> Result<()> {
    if n == 0 || a.n_gen == 0 {
        bail!("--batch and -n must be at least 1");
    }
    let t = Instant::now();
    let gguf = Arc::new(Gguf::open(model).with_context(|| format!("opening {}", model.display()))?);
    let n_ctx = a.n_ctx();
    let mut runner = BatchRunner::load(
        gguf,
        BatchOptions {
            n_ctx,
            // Whole blocks per sequence.
            kv_positions: n_ctx.div_ceil(smelt_engine::BLOCK_SIZE) * smelt_engine::BLOCK_SIZE * n,
            threads,
            kv_type: KvType::F16,
            backend: BackendKind::from_env()?,
        },
    )?;
    runner.prepare(runner.step_tokens() + n, n)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let nv = runner.arch().n_vocab();
    let (mut prefill_s, mut decode_s) = (Vec::new(), Vec::new());
    for rep in 0..=a.reps {
        let mut seqs: Vec<KvSeq> = (0..n)
            .map(|s| {
                let prompt = (0..a.n_prompt)
                    .map(|i| ((i * 7919 + (rep * n + s) * 104_729 + 1) % nv) as u32)
                    .collect();
                runner.start(prompt)
            })
            .collect();
        let t = Instant::now();
        for s in seqs.iter_mut() {
            let rows = s.pending() - 1;
            if rows > 0 {
                runner.step(&mut [(s, rows)])?;
            }
        }
        let pre = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..a.n_gen {
            let mut batch: Vec<(&mut KvSeq, usize)> = seqs.iter_mut().map(|s| (s, 1)).collect();
            let logits = runner.step(&mut batch)?;
            let next: Vec<u32> = logits
                .chunks(nv)
                .map(smelt_engine::sampler::argmax)
                .collect();
            drop(batch);
            for (s, tok) in seqs.iter_mut().zip(next) {
                s.push(tok);
            }
        }
        let dec = t.elapsed().as_secs_f64();
        for s in seqs.iter_mut() {
            runner.release(s);
        }
        if rep > 0 {
            prefill_s.push(pre);
            decode_s.push(dec);
        }
    }
    let pre = median(&prefill_s);
    let dec = median(&decode_s);
    let decode_tps = (n * a.n_gen) as f64 / dec;
    let r = json!({
        "mode": "batch",
        "model": model.display().to_string(),
        "device": runner.device(),
        "batch": n,
        "n_prompt": a.n_prompt,
        "n_gen": a.n_gen,
        "reps": a.reps,
        "prefill_tps": (n * a.n_prompt.saturating_sub(1)) as f64 / pre.max(1e-9),
        "decode_tps": decode_tps,
        "per_seq_tps": decode_tps / n as f64,
        "step_ms": dec * 1e3 / a.n_gen as f64,
        "load_ms": load_ms,
    });
    if a.json {
        println!("{r}");
    } else {
        println!(
            "{}: batch {n} on {}: decode {:.1} tok/s in all ({:.1} per sequence, {:.3} ms a step), prefill {:.1} tok/s",
            model.display(),
            r["device"].as_str().unwrap_or(""),
            decode_tps,
            decode_tps / n as f64,
            dec * 1e3 / a.n_gen as f64,
            r["prefill_tps"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
