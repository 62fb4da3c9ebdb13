//! Batched evaluation on the real models: several different prompts decoded together over the
//! paged KV pool give, token for token, what each gives alone at temperature 0; the prefix
//! cache skips what it holds and changes nothing.
//!
//! Exact equality needs every token to get the same matmul algorithm batched or alone: on
//! AVX-512 VNNI the panel gemm and the tiles sum in different orders (up to ~2 logits apart on
//! these models, both as far from the f32 reference). The fast backend therefore picks the
//! algorithm by a row's role: a sequence's rows go through the panel when it has several in the
//! step (a prompt chunk), through the tiles when it has one (a decode step, or the last prompt
//! token, which is always evaluated alone). These tests follow that rule, as the engine does,
//! and run at the machine's own instruction set.

use std::sync::Arc;

use smelt_engine::{
    BackendKind, BatchOptions, BatchRunner, Event, FinishReason, GenerateRequest, KvSeq, KvType,
    LoadOptions, Model, Runner, RunnerOptions, SamplingOptions, Usage, BLOCK_SIZE,
};
use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};
use smelt_tokenizer::{Tokenizer, Vocab};

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

/// Prompts of different lengths, two of them sharing a prefix of more than one block.
fn prompts(g: &Gguf) -> Vec<Vec<u32>> {
    let vocab = Vocab::from_gguf(g).unwrap();
    let tok = Tokenizer::new(&vocab).unwrap();
    let shared = "You are a helpful assistant for a team of gardeners. Answer briefly and \
                  precisely, and say so when you do not know. The garden has roses, tulips, \
                  apple trees and a small pond with fish.";
    [
        "The capital of France is".to_string(),
        format!("{shared} Question: what grows near the pond? Answer:"),
        "Here is a short poem about the sea:\n".to_string(),
        format!("{shared} Question: which trees are there? Answer:"),
    ]
    .iter()
    .map(|t| tok.encode(t, true, false))
    .collect()
}

/// Greedy continuation of `prompt`, one sequence in a contiguous cache.
fn alone(r: &mut Runner, prompt: &[u32], n: usize) -> Vec<u32> {
    r.clear();
    // As `Model::generate`: the prompt but its last token, then that token alone.
    let (last, head) = prompt.split_last().unwrap();
    if !head.is_empty() {
        r.eval(head, Output::LastLogits).unwrap();
    }
    let mut out = vec![argmax(r.eval_slice(&[*last], Output::LastLogits).unwrap())];
    while out.len() < n {
        let t = *out.last().unwrap();
        out.push(argmax(r.eval_slice(&[t], Output::LastLogits).unwrap()));
    }
    out
}

/// Rows a sequence contributes to a step, as the engine's batch loop takes them: a prompt's
/// last token alone, the tokens before it in chunks of at most `cap` (and at least two where
/// there are).
fn step_rows(s: &KvSeq, cap: usize) -> usize {
    match s.pending() {
        0 | 1 => 1,
        p => (p - 1).min(cap.max(2)),
    }
}

fn batch_equals_alone(model: &str) {
    let g = Arc::new(Gguf::open(model_path(model)).unwrap());
    let n = 12;
    let mut r = Runner::load_with(
        g.clone(),
        RunnerOptions {
            n_ctx: 128,
            threads: 2,
            backend: BackendKind::Fast,
            kv_type: KvType::F16,
        },
    )
    .unwrap();
    let ps = prompts(&g);
    assert!(ps[1].len() > BLOCK_SIZE && ps[3].len() > BLOCK_SIZE);
    let want: Vec<Vec<u32>> = ps.iter().map(|p| alone(&mut r, p, n)).collect();
    drop(r);
    let mut b = BatchRunner::load(
        g,
        BatchOptions {
            n_ctx: 128,
            kv_positions: 512,
            threads: 2,
            kv_type: KvType::F16,
            // Token-for-token equality is the CPU's rule (see the top of this file).
            backend: BackendKind::Fast,
        },
    )
    .unwrap();
    let nv = b.arch().n_vocab();
    // Sequences 0 and 1 start together; 2 and 3 join while they decode, with their prompts
    // evaluated in chunks of 16 next to the decode rows. Sequence 3 shares sequence 1's prefix.
    let mut seqs: Vec<KvSeq> = Vec::new();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); ps.len()];
    for step in 0.. {
        if step == 0 || step == 2 {
            for p in &ps[seqs.len()..seqs.len() + 2] {
                seqs.push(b.start(p.clone()));
            }
        }
        let mut batch: Vec<(&mut KvSeq, usize)> = Vec::new();
        let mut idx = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if got[i].len() < n {
                let rows = step_rows(s, if step < 2 { usize::MAX } else { 16 });
                batch.push((s, rows));
                idx.push(i);
            }
        }
        if batch.is_empty() {
            break;
        }
        let logits = b.step(&mut batch).unwrap().to_vec();
        drop(batch);
        for (k, &i) in idx.iter().enumerate() {
            if seqs[i].pending() == 0 {
                let t = argmax(&logits[k * nv..(k + 1) * nv]);
                got[i].push(t);
                seqs[i].push(t);
            }
        }
    }
    assert_eq!(
        seqs[3].cached_tokens(),
        BLOCK_SIZE,
        "sequence 3 reuses the block it shares with sequence 1"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{model}: sequence {i} batched vs alone");
    }
    // Released sequences leave their full blocks in the prefix cache: the same prompt again
    // starts from them and continues identically.
    for s in &mut seqs {
        b.release(s);
    }
    let mut again = b.start(ps[1].clone());
    assert_eq!(again.cached_tokens(), BLOCK_SIZE);
    let mut toks = Vec::new();
    while toks.len() < n {
        let rows = step_rows(&again, usize::MAX);
        let l = b.step(&mut [(&mut again, rows)]).unwrap();
        if again.pending() > 0 {
            continue;
        }
        let t = argmax(l);
        toks.push(t);
        again.push(t);
    }
    assert_eq!(toks, want[1], "{model}: from the prefix cache");
    b.release(&mut again);
    assert_eq!(b.pool().available(), b.pool().n_blocks());
}

#[test]
fn smollm2_batch_equals_alone() {
    batch_equals_alone(SMOLLM2);
}

#[test]
fn gemma3_batch_equals_alone() {
    batch_equals_alone(GEMMA3);
}

/// A sequence decoding alone on the GPU (`BatchRunner::decode_solo`, smelt-cuda v27: each
/// step launched before the host has the previous token, its block table grown on the
/// device) gives the tokens of the pool's own one-row steps: interrupted after a few tokens
/// (the next one pending), taken up again, across block boundaries, and a step of the loop's
/// after it continues identically. Its full blocks reach the prefix cache. Skipped without a
/// GPU; on the CPU the runner declines a solo run.
#[cfg(feature = "cuda")]
#[test]
fn smollm2_solo_decoding_equals_the_pools_steps() {
    let g = Arc::new(Gguf::open(model_path(SMOLLM2)).unwrap());
    let opts = |backend| BatchOptions {
        n_ctx: 256,
        kv_positions: 512,
        threads: 2,
        kv_type: KvType::F16,
        backend,
    };
    let mut cpu = BatchRunner::load(g.clone(), opts(BackendKind::Fast)).unwrap();
    let mut s = cpu.start(vec![1, 2, 3]);
    cpu.step(&mut [(&mut s, 2)]).unwrap();
    assert!(!cpu.solo_capable());
    assert_eq!(
        cpu.decode_solo(&mut s, 4, None, &mut |_, _| true).unwrap(),
        None
    );
    drop(cpu);
    if !smelt_engine::cuda_available() {
        eprintln!(
            "SKIP: no CUDA driver or GPU on this machine; the solo decoding test did not run"
        );
        return;
    }
    let mut b = BatchRunner::load(g.clone(), opts(BackendKind::Cuda)).unwrap();
    let prompt = prompts(&g)[1].clone();
    let n = 80;
    // The first token after the prompt by the loop's steps.
    let start = |b: &mut BatchRunner| {
        let mut seq = b.start(prompt.clone());
        loop {
            let rows = step_rows(&seq, usize::MAX);
            let l = b.step(&mut [(&mut seq, rows)]).unwrap();
            if seq.pending() == 0 {
                let t = argmax(l);
                seq.push(t);
                return (seq, t);
            }
        }
    };
    let (mut seq, first) = start(&mut b);
    let mut want = vec![first];
    while want.len() < n + 1 {
        let t = argmax(b.step(&mut [(&mut seq, 1)]).unwrap());
        want.push(t);
        seq.push(t);
    }
    b.release(&mut seq);
    let (mut seq, first) = start(&mut b);
    assert_eq!(first, want[0]);
    let mut got = vec![first];
    // Interrupted after 5 tokens, then to n.
    for stop in [5, n] {
        let done = b
            .decode_solo(&mut seq, usize::MAX, None, &mut |t, kv_len| {
                got.push(t);
                assert_eq!(kv_len, prompt.len() + got.len() - 1);
                got.len() < stop
            })
            .unwrap()
            .expect("a solo run on the GPU");
        assert!(done > 0);
        assert_eq!(seq.pending(), 1, "the last token given is pending");
        assert_eq!(seq.tokens()[seq.n_kv()], got[got.len() - 1]);
    }
    assert_eq!(got[..n], want[..n], "solo vs the pool's steps");
    // A step of the loop's after the runs.
    let t = argmax(b.step(&mut [(&mut seq, 1)]).unwrap());
    assert_eq!(t, want[n], "a step after the solo runs");
    assert!(seq.n_blocks() * BLOCK_SIZE >= seq.n_kv());
    b.release(&mut seq);
    let again = b.start(prompt.iter().chain(&want[..n]).copied().collect());
    assert_eq!(
        again.cached_tokens(),
        (prompt.len() + n - 1) / BLOCK_SIZE * BLOCK_SIZE,
        "the solo run's full blocks are in the prefix cache"
    );
}

fn generate(m: &Model, prompt: Vec<u32>, n: usize) -> (String, Usage) {
    generate_with(m, prompt, n, SamplingOptions::greedy())
}

fn generate_with(m: &Model, prompt: Vec<u32>, n: usize, o: SamplingOptions) -> (String, Usage) {
    let mut req = GenerateRequest::new(prompt, o);
    req.max_tokens = Some(n);
    let mut text = String::new();
    let usage = m
        .generate(req, &mut |ev| {
            if let Event::Text { text: t, .. } = ev {
                text.push_str(&t);
            }
        })
        .unwrap();
    (text, usage)
}

/// Sampling at Ollama's defaults (temperature 0.8, top-k 40, top-p 0.9, repeat penalty 1.1
/// over 64 tokens) with a seed, and at temperature 0 with a repeat penalty: concurrent
/// requests through the batch loop draw what the single-sequence model draws, together and
/// one at a time. (On a GPU both sample from each step's candidates, smelt-cuda v22, and a
/// request alone draws on the device, v23 and v27; on the CPU from the whole row.)
#[test]
fn batch_loop_samples_as_the_single_model() {
    let path = model_path(SMOLLM2);
    let g = Gguf::open(&path).unwrap();
    let ps = prompts(&g);
    let opts = |i: usize| SamplingOptions {
        seed: Some(40 + i as u64),
        temperature: if i == 3 { 0.0 } else { 0.8 },
        top_k: if i == 2 { 90 } else { 40 },
        ..SamplingOptions::default()
    };
    let load = |parallel| {
        Model::load(
            &path,
            LoadOptions {
                num_ctx: 256,
                threads: 2,
                parallel,
                kv_positions: 1024,
            },
        )
        .unwrap()
    };
    // parallel 0: one sequence at a time, its cache contiguous.
    let single = load(0);
    let want: Vec<String> = (0..ps.len())
        .map(|i| generate_with(&single, ps[i].clone(), 24, opts(i)).0)
        .collect();
    drop(single);
    let m = Arc::new(load(4));
    let handles: Vec<_> = (0..ps.len())
        .map(|i| {
            let (m, p) = (m.clone(), ps[i].clone());
            std::thread::spawn(move || generate_with(&m, p, 24, opts(i)))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (text, usage) = h.join().unwrap();
        assert_eq!(text, want[i], "request {i}");
        assert!(usage.completion_tokens > 0, "request {i}");
    }
    // One at a time: on a GPU each decodes alone after its first token (smelt-cuda v27,
    // sampled and greedy draws on the device), with the same text.
    for (i, w) in want.iter().enumerate() {
        assert_eq!(
            &generate_with(&m, ps[i].clone(), 24, opts(i)).0,
            w,
            "request {i} alone"
        );
    }
}

/// The batch loop: requests from many threads (more than run at once) get what the
/// single-sequence model gives them; a repeated prompt comes from the prefix cache; a
/// cancelled request ends at once and frees its blocks.
#[test]
fn batch_loop_serves_concurrent_requests() {
    let path = model_path(SMOLLM2);
    let g = Gguf::open(&path).unwrap();
    let ps = prompts(&g);
    let single = Model::load(
        &path,
        LoadOptions {
            num_ctx: 256,
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let want: Vec<String> = ps
        .iter()
        .map(|p| generate(&single, p.clone(), 8).0)
        .collect();
    drop(single);
    let m = Arc::new(
        Model::load(
            &path,
            LoadOptions {
                num_ctx: 256,
                threads: 2,
                parallel: 3,
                kv_positions: 1024,
            },
        )
        .unwrap(),
    );
    let handles: Vec<_> = ps
        .iter()
        .chain(&ps[..2])
        .cloned()
        .map(|p| {
            let m = m.clone();
            std::thread::spawn(move || generate(&m, p, 8))
        })
        .collect();
    let got: Vec<(String, Usage)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (text, usage)) in got.iter().enumerate() {
        assert_eq!(text, &want[i % ps.len()], "request {i}");
        assert_eq!(usage.prompt_tokens, ps[i % ps.len()].len());
    }
    // Again, alone: the prompt's whole blocks come from the cache.
    let (text, usage) = generate(&m, ps[1].clone(), 8);
    assert_eq!(text, want[1]);
    assert_eq!(
        usage.cached_tokens,
        (ps[1].len() - 1) / BLOCK_SIZE * BLOCK_SIZE
    );
    // Cancelled after its first text: done at once, every block back in the pool.
    let req = GenerateRequest::new(ps[2].clone(), SamplingOptions::greedy());
    let cancel = req.cancel.clone();
    let mut reason = None;
    m.generate(req, &mut |ev| match ev {
        Event::Text { .. } => cancel.cancel(),
        Event::Done { reason: r, .. } => reason = Some(r),
    })
    .unwrap();
    assert_eq!(reason, Some(FinishReason::Cancelled));
    let st = m.batch_stats().unwrap();
    assert_eq!(st.blocks_used, 0, "{st:?}");
    assert!(st.blocks_cached > 0);
    // Embeddings go through the loop too.
    assert_eq!(m.embed(&ps[0]).unwrap().len(), m.info().n_embd);
}

fn counting(g: &Gguf, from: usize, n_tokens: usize) -> Vec<u32> {
    let vocab = Vocab::from_gguf(g).unwrap();
    let tok = Tokenizer::new(&vocab).unwrap();
    let text: Vec<String> = (from..from + n_tokens).map(|i| i.to_string()).collect();
    let mut ids = tok.encode(&text.join(", "), true, false);
    ids.truncate(n_tokens);
    ids
}

/// A pool too small for two growing sequences: the newer one is paused (its blocks freed) and
/// resumes once there is room, with exactly the text it would have produced alone.
#[test]
fn preempted_requests_resume_identically() {
    let path = model_path(SMOLLM2);
    let g = Gguf::open(&path).unwrap();
    let ps = [counting(&g, 1, 20), counting(&g, 500, 24)];
    let load = |parallel| {
        Model::load(
            &path,
            LoadOptions {
                num_ctx: 96,
                threads: 2,
                parallel,
                kv_positions: 96,
            },
        )
        .unwrap()
    };
    let single = load(0);
    // Each grows to two blocks: together four, in a pool of three.
    let want: Vec<String> = ps
        .iter()
        .map(|p| generate(&single, p.clone(), 40).0)
        .collect();
    drop(single);
    let m = Arc::new(load(2));
    let handles: Vec<_> = ps
        .iter()
        .cloned()
        .map(|p| {
            let m = m.clone();
            std::thread::spawn(move || generate(&m, p, 40))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (text, usage) = h.join().unwrap();
        assert_eq!(text, want[i], "request {i}");
        assert_eq!(usage.completion_tokens, 40);
    }
    let st = m.batch_stats().unwrap();
    assert!(st.preemptions >= 1, "{st:?}");
    assert_eq!(st.blocks_used, 0);
}

/// A long prompt arriving first does not hold back a short one: prompts advance a chunk per
/// step and the step's budget is shared, so the short request's first token comes first.
#[test]
fn a_long_prompt_does_not_starve_a_short_one() {
    let path = model_path(SMOLLM2);
    let g = Gguf::open(&path).unwrap();
    // Four steps of prompt at least; the short one joins by the third.
    let long = counting(&g, 1, 900);
    let short = counting(&g, 900, 12);
    let m = Arc::new(
        Model::load(
            &path,
            LoadOptions {
                num_ctx: 1024,
                threads: 2,
                parallel: 2,
                kv_positions: 2048,
            },
        )
        .unwrap(),
    );
    let first_token = |m: Arc<Model>, p: Vec<u32>| {
        std::thread::spawn(move || {
            let mut req = GenerateRequest::new(p, SamplingOptions::greedy());
            req.max_tokens = Some(1);
            let mut at = None;
            m.generate(req, &mut |ev| {
                if at.is_none() && matches!(ev, Event::Text { .. }) {
                    at = Some(std::time::Instant::now());
                }
            })
            .unwrap();
            at.unwrap()
        })
    };
    let l = first_token(m.clone(), long);
    // Let the long prompt start first.
    while m.batch_stats().unwrap().steps == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let s = first_token(m.clone(), short);
    let (l, s) = (l.join().unwrap(), s.join().unwrap());
    assert!(s < l, "the short request waited for the long prompt");
}
