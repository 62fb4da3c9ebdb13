//! `smelt bench --serve MODEL`: N concurrent streaming clients through the real HTTP server.
//!
//! Procedure: resolve MODEL (a store name is pulled when missing), start `smelt serve` as a
//! child on a free loopback port with an empty store of its own (the model is passed by path,
//! so the user's store and running server are never touched; the child inherits the rest of the
//! environment: `SMELT_NUM_PARALLEL`, `SMELT_CONTEXT_LENGTH`, `SMELT_DEBUG`, ...), or use the
//! server at `--url`. Prompts are runs of single-token words from the model's vocabulary, so a
//! prompt is exactly `--prompt-tokens` tokens (plus BOS where the model adds one); the first `--shared-prefix` fraction
//! of them is the same in every request, the rest unique per request. Requests go to
//! `/v1/completions` (raw prompt, `stream`, `stream_options.include_usage`, temperature
//! `--temperature`, `max_tokens`). Warm-up: every client makes `--warmup` requests at the
//! measured concurrency (the model loads, plans and buffers for that batch size are built, the
//! shared prefix gets cached); they are not measured. Then every client makes `--requests`
//! requests back to back (or starts new ones until `--duration` seconds have passed; the last
//! ones run to their end). The server's RSS is sampled every `--rss-interval` seconds.
//!
//! `--json` prints one object with these keys:
//!
//! | key | meaning |
//! | --- | --- |
//! | `mode` | `"serve"` |
//! | `model` | MODEL as given; `server` the base URL used; `spawned` whether the bench started it |
//! | `endpoint` | `/v1/completions` |
//! | `clients`, `requests_per_client`, `duration_s` | `--clients`, `--requests` (null with `--duration`), `--duration` (null without) |
//! | `prompt_tokens`, `shared_prefix_tokens`, `max_tokens`, `temperature`, `warmup` | the request shape: words per prompt, how many of them shared, `--max-tokens`, `--temperature`, `--warmup` |
//! | `requests` | measured requests made; `requests_ok` of them succeeded; `failures` = `requests - requests_ok` |
//! | `errors` | up to 5 distinct error messages of failed requests (warm-up included) |
//! | `finished_early` | successful requests the model ended before `max_tokens` (finish_reason `stop`) |
//! | `wall_s` | measured phase: first request sent to last stream ended |
//! | `prompt_tokens_total`, `cached_tokens_total`, `completion_tokens_total` | summed over successful requests, from each stream's `usage` (prompt tokens include BOS where the model adds one) |
//! | `output_tps` | aggregate output speed: `completion_tokens_total / wall_s` |
//! | `requests_per_s` | `requests_ok / wall_s` |
//! | `ttft_ms_p50`, `ttft_ms_p99`, `ttft_ms_max` | request sent to first non-empty text chunk, over successful requests (queueing included) |
//! | `itl_ms_p50`, `itl_ms_p99`, `itl_ms_max` | inter-token latency: gaps between successive text chunks, over all successful requests |
//! | `stream_tps_p50` | a request's own decode speed, `(completion_tokens - 1) / (first to last text chunk)`, the median over successful requests of at least two tokens: unlike the gaps, not moved by chunks that arrive together (a server that decodes several tokens per submission, or a client that reads several chunks at once) |
//! | `e2e_ms_p50`, `e2e_ms_p99` | request sent to end of stream |
//! | `cache_hit_rate` | `cached_tokens_total / prompt_tokens_total` (`usage.prompt_tokens_details.cached_tokens`; 0 when the server does not report it) |
//! | `server_pid` | the server's process id (null with `--url` and no `--server-pid`) |
//! | `rss_start_bytes` | server RSS when it is up, before the model loads |
//! | `rss_after_warmup_bytes` | server RSS after the warm-up requests |
//! | `rss_end_bytes` | server RSS after the measured phase |
//! | `rss_max_bytes` | largest RSS sampled during the measured phase (the end included) |
//! | `rss_peak_bytes` | the server's peak RSS (VmHWM) at the end |
//! | `rss_growth_bytes` | `rss_max_bytes - rss_after_warmup_bytes`: growth after warm-up (may be negative) |
//! | `rss_late_growth_bytes` | largest sample of the second half of the measured phase minus that of the first half: keeps growing while a leak does |
//! | `rss_samples` | `[seconds since the measured phase began, bytes]` pairs |
//!
//! RSS keys are 0 and `rss_samples` empty where the server's `/proc/<pid>/status` is not readable.

mod client;
mod prompts;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::json;

use client::RequestResult;
use prompts::{PromptShape, WordTable};

/// Flags of the serving benchmark (`smelt bench --serve`).
#[derive(Args, Debug, Default)]
pub struct ServeBenchArgs {
    /// Serving benchmark: concurrent streaming clients through the real HTTP server.
    #[arg(long)]
    pub serve: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Requests per client, one after another.
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// Run for this many seconds instead of --requests (clients start new requests until then).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Prompt length in tokens (BOS not counted).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Fraction of each prompt that is a prefix common to all requests (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub shared_prefix: f64,
    /// Sampling temperature (0: greedy). Also the plain benchmark's decode: above 0 it samples
    /// with Ollama's other defaults (top-k 40, top-p 0.9, repeat penalty 1.1 over 64 tokens).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Unmeasured warm-up requests per client, at full concurrency.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Benchmark the server at this base URL (http://host:port) instead of starting one; sends
    /// $SMELT_API_KEY as a bearer token when set.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the server's process id, for its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds between RSS samples of the server.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub rss_interval: f64,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub request_timeout: u64,
    /// Load check: exit with an error (after the report) if any request failed or the server's
    /// RSS grew by more than this many MiB after warm-up.
    #[arg(long, value_name = "MIB")]
    pub max_rss_growth: Option<f64>,
}

/// Run the serving benchmark on `model` (`threads`: the server's engine threads).
pub fn run(
    model: &str,
    a: &ServeBenchArgs,
    threads: Option<usize>,
    json_out: bool,
    verbose: bool,
) -> Result<()> {
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(
        a.duration.is_some() || a.requests >= 1,
        "--requests must be at least 1"
    );
    ensure!(
        a.duration.is_none_or(|d| d > 0.0 && d.is_finite()),
        "--duration must be a positive number of seconds"
    );
    ensure!(a.prompt_tokens >= 1, "--prompt-tokens must be at least 1");
    ensure!(a.max_tokens >= 1, "--max-tokens must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&a.shared_prefix),
        "--shared-prefix must be between 0.0 and 1.0"
    );
    ensure!(
        a.rss_interval > 0.0 && a.rss_interval.is_finite(),
        "--rss-interval must be positive"
    );
    let path = crate::store_cmd::ensure_model(model, false)?.gguf_path;
    let gguf =
        smelt_gguf::Gguf::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let tok = smelt_tokenizer::Tokenizer::from_gguf(&gguf)?;
    let words = WordTable::from_tokenizer(&tok)?;
    drop((tok, gguf));

    let (server, base, model_field, api_key, pid) = match &a.url {
        Some(u) => (
            None,
            u.trim_end_matches('/').to_string(),
            model.to_string(),
            std::env::var("SMELT_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            a.server_pid,
        ),
        None => {
            let (s, base) = ServerChild::spawn(threads, verbose)?;
            let pid = s.child.id();
            // The child's store is empty: name the model by its file.
            (Some(s), base, path.display().to_string(), None, Some(pid))
        }
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let plan = Plan {
        url: format!("{base}/v1/completions"),
        model: model_field,
        api_key,
        words,
        shape: PromptShape::new(a.prompt_tokens, a.shared_prefix, nonce),
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        timeout: Duration::from_secs(a.request_timeout.max(1)),
        server_gone: server
            .as_ref()
            .map_or_else(|| Arc::new(AtomicBool::new(false)), |s| s.exited.clone()),
    };
    let rss_start = pid.map_or(0, |p| proc_status_bytes(p, "VmRSS"));

    let mut errors = Vec::new();
    if a.warmup > 0 {
        if !json_out {
            eprintln!("warm-up: {} clients x {} requests", a.clients, a.warmup);
        }
        let warm = run_phase(&plan, 0, a.clients, Limit::Requests(a.warmup));
        let failed: Vec<_> = warm.iter().filter_map(|r| r.error.clone()).collect();
        if let Some(e) = failed.first() {
            let tail = server.as_ref().map(|s| s.log_tail()).unwrap_or_default();
            bail!(
                "{} of {} warm-up requests failed, the first: {e}{tail}",
                failed.len(),
                warm.len()
            );
        }
    }
    let rss_after_warmup = pid.map_or(0, |p| proc_status_bytes(p, "VmRSS"));

    if !json_out {
        match a.duration {
            Some(d) => eprintln!("measuring: {} clients for {d} s", a.clients),
            None => eprintln!("measuring: {} clients x {} requests", a.clients, a.requests),
        }
    }
    let limit = match a.duration {
        Some(d) => Limit::Until(Instant::now() + Duration::from_secs_f64(d)),
        None => Limit::Requests(a.requests),
    };
    let sampling_done = AtomicBool::new(false);
    let t0 = Instant::now();
    let (results, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            sample_rss(
                pid,
                Duration::from_secs_f64(a.rss_interval),
                t0,
                &sampling_done,
            )
        });
        let results = run_phase(&plan, 1, a.clients, limit);
        sampling_done.store(true, Ordering::Relaxed);
        (results, sampler.join().unwrap_or_default())
    });
    let wall_s = t0.elapsed().as_secs_f64();
    let rss_end = pid.map_or(0, |p| proc_status_bytes(p, "VmRSS"));
    let rss_peak = pid.map_or(0, |p| proc_status_bytes(p, "VmHWM"));
    for r in &results {
        if let Some(e) = &r.error {
            if errors.len() < 5 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    let mem = Memory {
        pid,
        start: rss_start,
        after_warmup: rss_after_warmup,
        end: rss_end,
        peak: rss_peak,
        samples,
    };
    let report = report(
        model,
        &base,
        server.is_some(),
        a,
        &plan,
        &results,
        wall_s,
        &mem,
        &errors,
    );
    if json_out {
        println!("{report}");
    } else {
        print_text(&report);
    }
    if server
        .as_ref()
        .is_some_and(|s| s.exited.load(Ordering::Relaxed))
    {
        bail!(
            "the server exited during the benchmark{}",
            server.as_ref().map(|s| s.log_tail()).unwrap_or_default()
        );
    }
    if let Some(limit_mib) = a.max_rss_growth {
        let failures = report["failures"].as_u64().unwrap_or(0);
        let growth = report["rss_growth_bytes"].as_i64().unwrap_or(0);
        ensure!(failures == 0, "load check: {failures} requests failed");
        ensure!(
            pid.is_some(),
            "load check: no server process to sample RSS from (give --server-pid with --url)"
        );
        ensure!(
            (growth as f64) <= limit_mib * 1024.0 * 1024.0,
            "load check: server RSS grew {:.1} MiB after warm-up (limit {limit_mib} MiB)",
            growth as f64 / (1024.0 * 1024.0)
        );
        if !json_out {
            eprintln!("load check passed: no failures, RSS growth within {limit_mib} MiB");
        }
    }
    Ok(())
}

/// What every client thread shares.
struct Plan {
    url: String,
    model: String,
    api_key: Option<String>,
    words: WordTable,
    shape: PromptShape,
    max_tokens: usize,
    temperature: f32,
    timeout: Duration,
    /// Set when the spawned server has exited: clients stop instead of failing in a loop.
    server_gone: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
enum Limit {
    Requests(usize),
    Until(Instant),
}

/// `clients` threads making requests until `limit`; every request's result.
fn run_phase(plan: &Plan, phase: u64, clients: usize, limit: Limit) -> Vec<RequestResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| s.spawn(move || run_client(plan, phase, c as u64, limit)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![RequestResult {
                        error: Some("client thread panicked".into()),
                        ..Default::default()
                    }]
                })
            })
            .collect()
    })
}

fn run_client(plan: &Plan, phase: u64, client: u64, limit: Limit) -> Vec<RequestResult> {
    let agent = client::agent(plan.timeout);
    let mut out = Vec::new();
    for i in 0.. {
        let more = match limit {
            Limit::Requests(n) => i < n,
            Limit::Until(t) => Instant::now() < t,
        };
        if !more || plan.server_gone.load(Ordering::Relaxed) {
            break;
        }
        let body = json!({
            "model": plan.model,
            "prompt": plan.shape.prompt(&plan.words, phase, client, i as u64),
            "max_tokens": plan.max_tokens,
            "temperature": plan.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        out.push(client::stream_completion(
            &agent,
            &plan.url,
            plan.api_key.as_deref(),
            &body.to_string(),
        ));
    }
    out
}

/// The server's RSS every `every` until `done`, as (seconds since `t0`, bytes).
fn sample_rss(
    pid: Option<u32>,
    every: Duration,
    t0: Instant,
    done: &AtomicBool,
) -> Vec<(f64, u64)> {
    let Some(pid) = pid else {
        return Vec::new();
    };
    let mut v = Vec::new();
    let mut next = t0;
    loop {
        let finished = done.load(Ordering::Relaxed);
        let rss = proc_status_bytes(pid, "VmRSS");
        if rss > 0 {
            v.push((t0.elapsed().as_secs_f64(), rss));
        }
        if finished {
            return v;
        }
        next += every;
        // Short sleeps, so the end of the phase is noticed at once.
        while Instant::now() < next && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
    }
}

/// A `kB` field of `/proc/<pid>/status` in bytes, 0 where unknown.
fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::to_string))
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `smelt serve` started by the bench, killed (and its store removed) on drop.
struct ServerChild {
    child: Child,
    store: PathBuf,
    exited: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of the server's stderr kept for error messages.
const LOG_TAIL: usize = 30;

impl ServerChild {
    /// Start `smelt serve` on a free loopback port; returns it and its base URL once it listens.
    fn spawn(threads: Option<usize>, verbose: bool) -> Result<(ServerChild, String)> {
        let exe = std::env::current_exe().context("locating the smelt binary")?;
        let store = std::env::temp_dir().join(format!(
            "smelt-bench-serve-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
        ));
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .env("SMELT_MODELS", &store)
            .env_remove("SMELT_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(t) = threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&store);
                return Err(e).context("starting smelt serve");
            }
        };
        let stderr = child.stderr.take().context("the server's stderr")?;
        let server = ServerChild {
            child,
            store,
            exited: Arc::new(AtomicBool::new(false)),
            tail: Arc::new(Mutex::new(VecDeque::new())),
        };
        let (tx, rx) = mpsc::channel();
        let (exited, tail) = (server.exited.clone(), server.tail.clone());
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if verbose {
                    eprintln!("[server] {line}");
                }
                if let Some(addr) = line
                    .strip_prefix("smelt listening on http://")
                    .and_then(|r| r.split_whitespace().next())
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == LOG_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
            // stderr closes when the server exits.
            exited.store(true, Ordering::Relaxed);
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok((server, format!("http://{addr}"))),
            Err(_) => bail!("smelt serve did not start listening{}", server.log_tail()),
        }
    }

    /// The server's last stderr lines, formatted for an error message.
    fn log_tail(&self) -> String {
        let t = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        if t.is_empty() {
            return String::new();
        }
        let lines: Vec<String> = t.into_iter().collect();
        format!("\nserver log:\n  {}", lines.join("\n  "))
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The server's memory over the run.
struct Memory {
    pid: Option<u32>,
    start: u64,
    after_warmup: u64,
    end: u64,
    peak: u64,
    samples: Vec<(f64, u64)>,
}

impl Memory {
    /// (largest sample, its growth over the warm-up, second-half growth over the first half).
    fn growth(&self) -> (u64, i64, i64) {
        let max = self
            .samples
            .iter()
            .map(|s| s.1)
            .chain([self.end])
            .max()
            .unwrap_or(0);
        let growth = if self.pid.is_some() && max > 0 {
            max as i64 - self.after_warmup as i64
        } else {
            0
        };
        let half = self.samples.len() / 2;
        let top = |s: &[(f64, u64)]| s.iter().map(|x| x.1).max().unwrap_or(0) as i64;
        let late = if half > 0 {
            top(&self.samples[half..]) - top(&self.samples[..half])
        } else {
            0
        };
        (max, growth, late)
    }
}

/// Nearest-rank percentile `p` (0 to 100) of `v`; 0 for no samples.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A request's decode speed: its tokens after the first over the time from its first text
/// chunk to its last (the sum of the gaps). None under two tokens or with no time between.
fn stream_tps(r: &RequestResult) -> Option<f64> {
    let span = r.itl_ms.iter().sum::<f64>() / 1e3;
    (r.completion_tokens >= 2 && span > 0.0).then(|| (r.completion_tokens - 1) as f64 / span)
}

#[allow(clippy::too_many_arguments)]
fn report(
    model: &str,
    base: &str,
    spawned: bool,
    a: &ServeBenchArgs,
    plan: &Plan,
    results: &[RequestResult],
    wall_s: f64,
    mem: &Memory,
    errors: &[String],
) -> serde_json::Value {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.error.is_none()).collect();
    let sum = |f: fn(&RequestResult) -> u64| ok.iter().map(|r| f(r)).sum::<u64>();
    let (prompt, cached, completion) = (
        sum(|r| r.prompt_tokens),
        sum(|r| r.cached_tokens),
        sum(|r| r.completion_tokens),
    );
    let mut ttft: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.ttft.map(|t| t.as_secs_f64() * 1e3))
        .collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
    let mut e2e: Vec<f64> = ok.iter().map(|r| r.e2e.as_secs_f64() * 1e3).collect();
    let mut stream: Vec<f64> = ok.iter().filter_map(|r| stream_tps(r)).collect();
    let finished_early = ok
        .iter()
        .filter(|r| r.finish_reason.as_deref() != Some("length"))
        .count();
    let (rss_max, growth, late) = mem.growth();
    let per_s = |n: f64| if wall_s > 0.0 { n / wall_s } else { 0.0 };
    let mut r = json!({
        "mode": "serve",
        "model": model,
        "server": base,
        "spawned": spawned,
        "endpoint": "/v1/completions",
        "clients": a.clients,
        "requests_per_client": if a.duration.is_some() { None } else { Some(a.requests) },
        "duration_s": a.duration,
        "prompt_tokens": plan.shape.tokens,
        "shared_prefix_tokens": plan.shape.shared,
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "warmup": a.warmup,
        "requests": results.len(),
        "requests_ok": ok.len(),
        "failures": results.len() - ok.len(),
        "errors": errors,
        "finished_early": finished_early,
        "wall_s": wall_s,
        "prompt_tokens_total": prompt,
        "cached_tokens_total": cached,
        "completion_tokens_total": completion,
        "output_tps": per_s(completion as f64),
        "requests_per_s": per_s(ok.len() as f64),
        "ttft_ms_p50": percentile(&mut ttft, 50.0),
        "ttft_ms_p99": percentile(&mut ttft, 99.0),
        "ttft_ms_max": percentile(&mut ttft, 100.0),
        "itl_ms_p50": percentile(&mut itl, 50.0),
        "itl_ms_p99": percentile(&mut itl, 99.0),
        "itl_ms_max": percentile(&mut itl, 100.0),
        "stream_tps_p50": percentile(&mut stream, 50.0),
        "e2e_ms_p50": percentile(&mut e2e, 50.0),
        "e2e_ms_p99": percentile(&mut e2e, 99.0),
        "cache_hit_rate": if prompt > 0 { cached as f64 / prompt as f64 } else { 0.0 },
    });
    // Two objects: one json! of every key exceeds the macro's recursion limit.
    let memory = json!({
        "server_pid": mem.pid,
        "rss_start_bytes": mem.start,
        "rss_after_warmup_bytes": mem.after_warmup,
        "rss_end_bytes": mem.end,
        "rss_max_bytes": rss_max,
        "rss_peak_bytes": mem.peak,
        "rss_growth_bytes": growth,
        "rss_late_growth_bytes": late,
        "rss_samples": mem.samples.iter().map(|&(t, b)| json!([(t * 1e3).round() / 1e3, b])).collect::<Vec<_>>(),
    });
    if let (Some(r), serde_json::Value::Object(m)) = (r.as_object_mut(), memory) {
        r.extend(m);
    }
    r
}

fn print_text(r: &serde_json::Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let mb = |k: &str| f(k) / (1024.0 * 1024.0);
    println!(
        "server     {} ({}), model {}",
        r["server"].as_str().unwrap_or("?"),
        if r["spawned"] == true {
            "started by the bench"
        } else {
            "external"
        },
        r["model"].as_str().unwrap_or("?")
    );
    println!(
        "load       {} clients, prompt {} tokens ({} shared), max {} tokens, temperature {}",
        r["clients"],
        r["prompt_tokens"],
        r["shared_prefix_tokens"],
        r["max_tokens"],
        r["temperature"]
    );
    println!(
        "requests   {} ok of {}, {} failed, {} ended before max_tokens, in {:.1} s",
        r["requests_ok"],
        r["requests"],
        r["failures"],
        r["finished_early"],
        f("wall_s")
    );
    for e in r["errors"].as_array().into_iter().flatten() {
        println!("  error    {}", e.as_str().unwrap_or("?"));
    }
    println!(
        "output     {:8.1} tok/s aggregate ({} tokens), {:.2} requests/s",
        f("output_tps"),
        r["completion_tokens_total"],
        f("requests_per_s")
    );
    println!(
        "ttft       p50 {:8.1} ms   p99 {:8.1} ms   max {:8.1} ms",
        f("ttft_ms_p50"),
        f("ttft_ms_p99"),
        f("ttft_ms_max")
    );
    println!(
        "itl        p50 {:8.1} ms   p99 {:8.1} ms   max {:8.1} ms",
        f("itl_ms_p50"),
        f("itl_ms_p99"),
        f("itl_ms_max")
    );
    println!(
        "stream     p50 {:8.1} tok/s a request (first to last text chunk)",
        f("stream_tps_p50")
    );
    println!(
        "latency    p50 {:8.1} ms   p99 {:8.1} ms (request to end of stream)",
        f("e2e_ms_p50"),
        f("e2e_ms_p99")
    );
    println!(
        "cache      {:.1}% of prompt tokens cached ({} of {})",
        f("cache_hit_rate") * 100.0,
        r["cached_tokens_total"],
        r["prompt_tokens_total"]
    );
    println!(
        "server RSS {:.1} MiB at start, {:.1} after warm-up, {:.1} at end, max {:.1}; growth after warm-up {:+.1} MiB (second half {:+.1} MiB)",
        mb("rss_start_bytes"),
        mb("rss_after_warmup_bytes"),
        mb("rss_end_bytes"),
        mb("rss_max_bytes"),
        mb("rss_growth_bytes"),
        mb("rss_late_growth_bytes")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    /// Chunks that arrive together (gaps near zero, then one long one) give the same speed
    /// as evenly spaced ones over the same span.
    #[test]
    fn stream_speed_spans_the_first_to_the_last_chunk() {
        let r = |gaps: Vec<f64>, n: u64| RequestResult {
            itl_ms: gaps,
            completion_tokens: n,
            ..Default::default()
        };
        let even = stream_tps(&r(vec![1.0; 8], 9)).unwrap();
        let bursts = stream_tps(&r(vec![0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 4.0], 9)).unwrap();
        assert!((even - 1000.0).abs() < 1e-9 && (bursts - 1000.0).abs() < 1e-9);
        assert_eq!(stream_tps(&r(vec![], 1)), None);
        assert_eq!(stream_tps(&r(vec![0.0], 2)), None);
    }

    #[test]
    fn rss_growth_after_warmup_and_late_growth() {
        let mem = Memory {
            pid: Some(1),
            start: 100,
            after_warmup: 500,
            end: 520,
            peak: 600,
            samples: vec![(0.0, 500), (1.0, 510), (2.0, 540), (3.0, 520)],
        };
        assert_eq!(mem.growth(), (540, 40, 30));
        let none = Memory {
            pid: None,
            start: 0,
            after_warmup: 0,
            end: 0,
            peak: 0,
            samples: Vec::new(),
        };
        assert_eq!(none.growth(), (0, 0, 0));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn own_status_is_readable() {
        assert!(proc_status_bytes(std::process::id(), "VmRSS") > 0);
        assert_eq!(proc_status_bytes(std::process::id(), "NoSuchKey"), 0);
    }
}
