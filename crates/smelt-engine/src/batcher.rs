//! Continuous batching: one thread per loaded model runs engine steps over every running
//! request.
//!
//! Each step evaluates, in one [`BatchRunner::step`], one row of every decoding sequence and
//! a chunk of prompt rows (at most [`BatchConfig::step_tokens`], shared evenly among the
//! sequences still prefilling, so a long prompt advances a chunk per step while every running
//! stream keeps producing a token per step, and a short prompt is read in the first step it
//! joins). Between steps the loop takes new requests, admits
//! waiting ones when their prompt's KV blocks fit in the pool (next to the blocks the running
//! sequences still need), and ends cancelled ones at once, freeing their blocks. When decoding
//! sequences outgrow the pool the newest one is preempted: its blocks are released (its full
//! ones stay in the prefix cache) and it waits at the front of the queue, to resume where it
//! was by evaluating its tokens again, mostly from the cache.
//!
//! On the GPU a request decoding alone, with nothing waiting, leaves the step loop: its steps
//! run on the device one after another, each launched before the host has the previous one's
//! token (`BatchRunner::decode_solo`, smelt-cuda v27), until it ends or another job arrives.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smelt_tokenizer::Tokenizer;

use crate::api::{Event, FinishReason, GenerateRequest, Usage};
use crate::batch::{BatchRunner, KvSeq};
use crate::decoding::{Decoding, Next};
use crate::pacer::Pacer;
use crate::EngineError;

/// Limits of the batch loop.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Sequences running at once.
    pub max_seqs: usize,
    /// Prompt tokens evaluated per step (besides one row per decoding sequence) at most.
    pub step_tokens: usize,
    /// While requests are generating, steps carrying prompt tokens take at most this many
    /// times a step of decode rows alone (see `pacer.rs`).
    pub latency_factor: f64,
}

/// Work for the loop.
pub(crate) enum Job {
    Generate {
        req: GenerateRequest,
        tx: Sender<Msg>,
    },
    Embed {
        tokens: Vec<u32>,
        tx: Sender<Result<Vec<f32>, EngineError>>,
    },
}

/// What a generation hears back.
pub(crate) enum Msg {
    Event(Event),
    End(Result<Usage, EngineError>),
}

/// Live numbers of a batch loop (for /api/ps and metrics).
#[derive(Debug, Default)]
pub struct BatchStats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// Blocks held by sequences.
    pub blocks_used: AtomicU64,
    /// Blocks holding cached prefixes (held or not).
    pub blocks_cached: AtomicU64,
    pub blocks_total: AtomicU64,
    pub block_bytes: AtomicU64,
    pub steps: AtomicU64,
    pub preemptions: AtomicU64,
}

/// A snapshot of [`BatchStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSnapshot {
    pub running: u64,
    pub waiting: u64,
    pub blocks_used: u64,
    pub blocks_cached: u64,
    pub blocks_total: u64,
    pub block_bytes: u64,
    pub steps: u64,
    pub preemptions: u64,
}

impl BatchStats {
    pub fn snapshot(&self) -> BatchSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BatchSnapshot {
            running: g(&self.running),
            waiting: g(&self.waiting),
            blocks_used: g(&self.blocks_used),
            blocks_cached: g(&self.blocks_cached),
            blocks_total: g(&self.blocks_total),
            block_bytes: g(&self.block_bytes),
            steps: g(&self.steps),
            preemptions: g(&self.preemptions),
        }
    }
}

/// One request in the loop, waiting or running.
struct Request {
    dec: Decoding,
    seq: KvSeq,
    tx: Sender<Msg>,
    /// Admitted once already (a preempted request resumes).
    started: bool,
    t_admit: Instant,
    t_first: Option<Instant>,
}

struct Loop {
    runner: BatchRunner,
    tok: Arc<Tokenizer>,
    cfg: BatchConfig,
    stats: Arc<BatchStats>,
    waiting: VecDeque<Request>,
    running: Vec<Request>,
    pacer: Pacer,
    logits: Vec<f32>,
    /// A step's sampling candidates where it ended with them (the GPU's, smelt-cuda v22).
    tops: Vec<(Vec<(u32, f32)>, bool)>,
}

/// Run the loop until `jobs` closes and the last request is done.
pub(crate) fn run(
    runner: BatchRunner,
    tok: Arc<Tokenizer>,
    cfg: BatchConfig,
    stats: Arc<BatchStats>,
    jobs: Receiver<Job>,
) {
    let mut l = Loop {
        runner,
        tok,
        cfg,
        stats,
        waiting: VecDeque::new(),
        running: Vec::new(),
        pacer: Pacer::new(cfg.step_tokens, cfg.latency_factor),
        logits: Vec::new(),
        tops: Vec::new(),
    };
    l.publish();
    loop {
        if l.running.is_empty() && l.waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => l.take(job),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => l.take(job),
                Err(TryRecvError::Empty) => break,
                // Finish what runs; no new work comes.
                Err(TryRecvError::Disconnected) => break,
            }
        }
        l.drop_cancelled();
        l.admit();
        if !l.solo(&jobs) {
            l.step();
        }
        l.publish();
    }
}

impl Loop {
    fn take(&mut self, job: Job) {
        match job {
            Job::Generate { req, tx } => {
                self.waiting.push_back(Request {
                    dec: Decoding::new(req),
                    seq: KvSeq::default(),
                    tx,
                    started: false,
                    t_admit: Instant::now(),
                    t_first: None,
                });
            }
            Job::Embed { tokens, tx } => {
                let _ = tx.send(self.runner.hidden(&tokens));
            }
        }
    }

    fn publish(&self) {
        let s = &self.stats;
        let p = self.runner.pool();
        let set = |a: &AtomicU64, v: usize| a.store(v as u64, Ordering::Relaxed);
        set(&s.running, self.running.len());
        set(&s.waiting, self.waiting.len());
        set(&s.blocks_used, p.n_blocks() - p.available());
        set(&s.blocks_cached, p.cached());
        set(&s.blocks_total, p.n_blocks());
        set(&s.block_bytes, self.runner.block_bytes());
    }

    /// End cancelled requests now: their blocks go back to the pool before the next step.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].dec.req.cancel.is_cancelled() {
                let r = self.running.remove(i);
                self.end(r, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        while let Some(r) = self.waiting.pop_front() {
            if r.dec.req.cancel.is_cancelled() {
                self.end(r, FinishReason::Cancelled);
            } else {
                keep.push_back(r);
            }
        }
        self.waiting = keep;
    }

    /// Finish a request: its last events, its blocks back to the pool (before the caller
    /// hears the end, so the pool's numbers are current when it does).
    fn end(&mut self, mut r: Request, reason: FinishReason) {
        if r.started {
            r.dec.usage.eval_duration = r.t_first.map_or(Duration::ZERO, |t| t.elapsed());
            if r.t_first.is_none() {
                r.dec.usage.prompt_eval_duration = r.t_admit.elapsed();
            }
        }
        let tx = r.tx.clone();
        let usage = r.dec.finish(reason, &mut |ev| {
            let _ = tx.send(Msg::Event(ev));
        });
        self.runner.release(&mut r.seq);
        self.publish();
        let _ = r.tx.send(Msg::End(Ok(usage)));
    }

    fn fail(&mut self, mut r: Request, e: EngineError) {
        self.runner.release(&mut r.seq);
        self.publish();
        let _ = r.tx.send(Msg::End(Err(e)));
    }

    /// Blocks the running sequences still need for their pending tokens, plus one per
    /// sequence for the token it decodes next.
    fn promised(&self) -> usize {
        self.running
            .iter()
            .map(|r| self.runner.blocks_needed(&r.seq, r.seq.pending() + 1))
            .sum()
    }

    /// Admit waiting requests in order while their prompt's blocks fit.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_seqs {
            let Some(mut r) = self.waiting.pop_front() else {
                break;
            };
            let n_ctx = self.runner.n_ctx();
            if !r.started {
                let prompt = &r.dec.req.prompt;
                if prompt.is_empty() || prompt.len() >= n_ctx {
                    let e = if prompt.is_empty() {
                        EngineError::Invalid("the prompt is empty".into())
                    } else {
                        EngineError::ContextFull {
                            needed: prompt.len() + 1,
                            n_ctx,
                        }
                    };
                    self.fail(r, e);
                    continue;
                }
            }
            // The prompt, and for a resumed request what it generated so far.
            let tokens = if r.started {
                r.seq.take_tokens()
            } else {
                r.dec.req.prompt.clone()
            };
            let seq = self.runner.start(tokens);
            let need = self.runner.blocks_needed(&seq, seq.pending() + 1);
            let free = self.runner.pool().available();
            if need + self.promised() > free && !self.running.is_empty() {
                // Not now: wait at the front (first come, first served).
                r.seq = seq;
                self.runner.release(&mut r.seq);
                if !r.started {
                    r.seq.take_tokens();
                }
                self.waiting.push_front(r);
                break;
            }
            if !r.started {
                r.dec.usage.cached_tokens = seq.cached_tokens();
                r.t_admit = Instant::now();
                r.started = true;
            }
            r.seq = seq;
            self.running.push(r);
        }
    }

    /// Rows per running sequence for the next step: one for each decoding sequence, and the
    /// step's prompt budget shared evenly among the sequences still prefilling (water-filling:
    /// the shortest take what they need, the rest split what remains), so a short prompt is
    /// read in the first step it joins however long the prompts beside it are.
    fn plan(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self
            .running
            .iter()
            .map(|r| usize::from(r.seq.pending() == 1))
            .collect();
        let mut prefilling: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].seq.pending() > 1)
            .collect();
        prefilling.sort_by_key(|&i| self.running[i].seq.pending());
        let decoding = self.running.iter().any(|r| r.seq.pending() == 1);
        let mut budget = self.pacer.budget(decoding);
        for (k, &i) in prefilling.iter().enumerate() {
            // A prompt's last token is left for a step of its own, as `Model::generate` does
            // in single mode, and prompt chunks take at least two rows where they can: the
            // kernels pick their algorithm by whether a sequence has one row or several in a
            // step (see smelt-cpu's `Ctx::panel_row`), so a token gets the same numbers batched
            // or alone.
            let share = (budget / (prefilling.len() - k)).max(2);
            rows[i] = (self.running[i].seq.pending() - 1).min(share);
            budget = budget.saturating_sub(rows[i]);
            if budget == 0 {
                break;
            }
        }
        rows
    }

    /// A request decoding alone, nothing waiting: its steps on the GPU without the host
    /// between them (`BatchRunner::decode_solo`), its tokens the ones the loop's own steps
    /// would give, until it ends, is cancelled or another job arrives (taken after the run,
    /// the request's next token pending). Whether it evaluated anything or ended (else the
    /// loop's step runs).
    fn solo(&mut self, jobs: &Receiver<Job>) -> bool {
        if !self.runner.solo_capable() || self.running.len() != 1 || !self.waiting.is_empty() {
            return false;
        }
        let n_vocab = self.runner.arch().n_vocab();
        let n_ctx = self.runner.n_ctx();
        let Request {
            dec,
            seq,
            tx,
            t_first,
            ..
        } = &mut self.running[0];
        // Once generating (its first token came from a step of the loop's).
        if t_first.is_none() || seq.pending() != 1 {
            return false;
        }
        let settings = match dec.is_plain_greedy() {
            true => None,
            false => match dec.device_sampling(n_vocab, crate::runner::TOP_CANDIDATES) {
                None => return false,
                s => s,
            },
        };
        let history = match settings {
            Some(_) => dec.history().to_vec(),
            None => Vec::new(),
        };
        let mut rng = dec.rng();
        let draw = settings.as_ref().map(|s| (s, history.as_slice(), &mut rng));
        let (tx, cancel) = (tx.clone(), dec.req.cancel.clone());
        let mut on_event = |ev| {
            if tx.send(Msg::Event(ev)).is_err() {
                cancel.cancel();
            }
        };
        let (mut finish, mut arrived) = (None, Vec::new());
        let tok = &self.tok;
        // No step launched past the request's last token.
        let max = dec.steps_left();
        let run = self
            .runner
            .decode_solo(seq, max, draw, &mut |t, kv_len| match dec.next_token(
                tok,
                t,
                kv_len,
                n_ctx,
                &mut on_event,
            ) {
                Next::Finish(reason) => {
                    finish = Some(reason);
                    false
                }
                Next::Eval(_) => match jobs.try_recv() {
                    Ok(job) => {
                        arrived.push(job);
                        false
                    }
                    Err(_) => true,
                },
            });
        let done = match run {
            Ok(None) => 0,
            Ok(Some(done)) => {
                if settings.is_some() {
                    // The stream where the run's draws left it.
                    dec.set_rng(rng);
                }
                done
            }
            Err(e) => {
                let r = self.running.remove(0);
                self.fail(r, EngineError::Invalid(format!("engine step failed: {e}")));
                arrived.into_iter().for_each(|j| self.take(j));
                return true;
            }
        };
        self.stats.steps.fetch_add(done as u64, Ordering::Relaxed);
        let ended = finish.is_some();
        if let Some(reason) = finish {
            let r = self.running.remove(0);
            self.end(r, reason);
        }
        arrived.into_iter().for_each(|j| self.take(j));
        done > 0 || ended
    }

    /// Preempt the newest running request: release its blocks, queue it first.
    fn preempt(&mut self) -> bool {
        if self.running.len() <= 1 {
            return false;
        }
        let Some(mut r) = self.running.pop() else {
            return false;
        };
        // Keeps its tokens: it resumes by evaluating them again.
        self.runner.release(&mut r.seq);
        self.waiting.push_front(r);
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let rows = loop {
            let rows = self.plan();
            let need: usize = self
                .running
                .iter()
                .zip(&rows)
                .map(|(r, &n)| self.runner.blocks_needed(&r.seq, n))
                .sum();
            if need <= self.runner.pool().available() || !self.preempt() {
                break rows;
            }
        };
        let n_vocab = self.runner.arch().n_vocab();
        // On the GPU a step of decode rows whose sampling fits their best logits ends with
        // them: no rows copied to the host, no pass over them.
        let fits = rows.iter().all(|&n| n <= 1)
            && self.running.iter().zip(&rows).all(|(r, &n)| {
                n == 0
                    || r.seq.pending() > 1
                    || r.dec.top_fits(n_vocab, crate::runner::TOP_CANDIDATES)
            });
        let mut batch: Vec<(&mut KvSeq, usize)> = Vec::new();
        let mut in_step = Vec::new();
        for (i, (r, &n)) in self.running.iter_mut().zip(&rows).enumerate() {
            if n > 0 {
                batch.push((&mut r.seq, n));
                in_step.push(i);
            }
        }
        if batch.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let mut top = false;
        let result = match fits {
            true => self.runner.step_top(&mut batch, &mut self.tops),
            false => Ok(false),
        };
        let result = match result {
            Ok(true) => {
                top = true;
                Ok(())
            }
            Ok(false) => self.runner.step(&mut batch).map(|logits| {
                self.logits.clear();
                self.logits.extend_from_slice(logits);
            }),
            Err(e) => Err(e),
        };
        drop(batch);
        let decode_rows = in_step
            .iter()
            .filter(|&&i| rows[i] == 1 && self.running[i].seq.pending() == 0)
            .count();
        let all_rows: usize = rows.iter().sum();
        self.pacer
            .record(all_rows - decode_rows, decode_rows, t0.elapsed());
        match result {
            Ok(()) => {}
            Err(e) => {
                // Fail the step's requests; the others go on.
                for &i in in_step.iter().rev() {
                    let r = self.running.remove(i);
                    self.fail(r, EngineError::Invalid(format!("engine step failed: {e}")));
                }
                return;
            }
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let n_ctx = self.runner.n_ctx();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (k, &i) in in_step.iter().enumerate() {
            let r = &mut self.running[i];
            if r.seq.pending() > 0 {
                continue;
            }
            if r.t_first.is_none() {
                r.t_first = Some(Instant::now());
                r.dec.usage.prompt_eval_duration = r.t_admit.elapsed();
            }
            let tx = r.tx.clone();
            let cancel = r.dec.req.cancel.clone();
            let mut on_event = |ev| {
                if tx.send(Msg::Event(ev)).is_err() {
                    cancel.cancel();
                }
            };
            let n_kv = r.seq.n_kv();
            let next = match top {
                true => {
                    let (cand, inf) = &self.tops[k];
                    match r
                        .dec
                        .next_top(&self.tok, cand, *inf, n_kv, n_ctx, &mut on_event)
                    {
                        Some(n) => n,
                        // The whole row after all (a penalty overflowed, no finite logit).
                        None => match self.runner.logits_row(k) {
                            Ok(mut row) => {
                                r.dec.next(&self.tok, &mut row, n_kv, n_ctx, &mut on_event)
                            }
                            Err(e) => {
                                failed.push((i, e));
                                continue;
                            }
                        },
                    }
                }
                false => {
                    let row = &mut self.logits[k * n_vocab..(k + 1) * n_vocab];
                    r.dec.next(&self.tok, row, n_kv, n_ctx, &mut on_event)
                }
            };
            match next {
                Next::Eval(t) => r.seq.push(t),
                Next::Finish(reason) => done.push((i, reason)),
            }
        }
        // In descending order, so each index still names its request.
        let mut ends: Vec<(usize, Result<FinishReason, EngineError>)> = done
            .into_iter()
            .map(|(i, reason)| (i, Ok(reason)))
            .collect();
        ends.extend(failed.into_iter().map(|(i, e)| (i, Err(e))));
        ends.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        for (i, end) in ends {
            let r = self.running.remove(i);
            match end {
                Ok(reason) => self.end(r, reason),
                Err(e) => self.fail(r, e),
            }
        }
    }
}
