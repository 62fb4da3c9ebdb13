//! Token sampling: penalties, top-k, top-p, min-p, temperature, seeded draws.
//!
//! The chain follows llama.cpp's default order: penalties, top-k, top-p, min-p, temperature,
//! then a draw. Temperature <= 0 takes the argmax after penalties.

use crate::api::SamplingOptions;

/// SplitMix64: small, fast, and the same sequence on every platform for a given seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A sampler's settings as the GPU's draw takes them (smelt-cuda v23; the prelude's
/// `sample_draw` reads them in this order, as 32-bit words).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Recent tokens the penalties look at (0: none).
    pub window: u32,
}

impl DeviceSampling {
    /// The eight words `sample_draw` reads.
    pub fn words(&self) -> [u32; 8] {
        [
            self.temperature.to_bits(),
            self.top_k,
            self.top_p.to_bits(),
            self.min_p.to_bits(),
            self.repeat_penalty.to_bits(),
            self.frequency_penalty.to_bits(),
            self.presence_penalty.to_bits(),
            self.window,
        ]
    }
}

/// Samples tokens for one sequence.
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: SamplingOptions,
    rng: Rng,
    /// Scratch: (token, logit) candidates.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Sampler {
        let seed = opts.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64
        });
        Sampler {
            opts,
            rng: Rng::new(seed),
            cand: Vec::new(),
        }
    }

    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }

    /// Whether every pick is the plain argmax of the logits: temperature <= 0 and no
    /// penalty that changes them.
    pub fn is_plain_greedy(&self) -> bool {
        let o = &self.opts;
        let no_penalty =
            o.repeat_penalty == 1.0 && o.presence_penalty == 0.0 && o.frequency_penalty == 0.0;
        o.temperature <= 0.0 && (no_penalty || o.repeat_last_n == 0)
    }

    /// The penalised tokens of the recent `history` and their counts, by token (none where no
    /// penalty applies).
    fn penalty_counts(&self, history: &[u32]) -> Vec<(u32, u32)> {
        let o = &self.opts;
        let no_penalty =
            o.repeat_penalty == 1.0 && o.presence_penalty == 0.0 && o.frequency_penalty == 0.0;
        if no_penalty || o.repeat_last_n == 0 || history.is_empty() {
            return Vec::new();
        }
        let n = if o.repeat_last_n < 0 {
            history.len()
        } else {
            (o.repeat_last_n as usize).min(history.len())
        };
        let mut recent = history[history.len() - n..].to_vec();
        recent.sort_unstable();
        let mut counts: Vec<(u32, u32)> = Vec::with_capacity(n);
        for t in recent {
            match counts.last_mut() {
                Some((tok, c)) if *tok == t => *c += 1,
                _ => counts.push((t, 1)),
            }
        }
        counts
    }

    /// Apply repeat, presence and frequency penalties over the recent `history` in place.
    pub fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        for (t, c) in self.penalty_counts(history) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = penalised(&self.opts, *l, c);
            }
        }
    }

    /// Whether [`Sampler::sample_top`] picks what [`Sampler::sample`] would over a row of
    /// `n_vocab` logits from its best `k` finite logits alone, after this `history`:
    /// temperature <= 0 or top-k below the vocabulary, penalties that only lower logits, and
    /// the top-k plus the penalised tokens within `k`. (A penalised token leaves the top-k
    /// set only to a token that ranked below it; with at most `k - top_k` of them, the top-k
    /// of the penalised row is among the best `k` of the raw one.)
    pub fn top_fits(&self, n_vocab: usize, k: usize, history: &[u32]) -> bool {
        let o = &self.opts;
        let lowers =
            o.repeat_penalty >= 1.0 && o.presence_penalty >= 0.0 && o.frequency_penalty >= 0.0;
        let top = match o.temperature <= 0.0 {
            true => 1,
            false if o.top_k == 0 || o.top_k >= n_vocab => return false,
            false => o.top_k,
        };
        // Cheap bound first: the window's length.
        let window = match o.repeat_last_n {
            0 => 0,
            n if n < 0 => history.len(),
            n => (n as usize).min(history.len()),
        };
        lowers && top <= k && (top + window <= k || top + self.penalty_counts(history).len() <= k)
    }

    /// The settings of a draw on the device (smelt-cuda v23), where every draw of this
    /// generation fits a row's best `k` logits whatever the history: temperature above 0 and
    /// a top-k below the vocabulary, or temperature at most 0 (the best penalised candidate,
    /// greedy decoding with penalties: v27, top-k 1), penalties that only lower logits over a
    /// window of fixed length, top-k plus the window at most `k`.
    pub fn device_sampling(&self, n_vocab: usize, k: usize) -> Option<DeviceSampling> {
        let o = &self.opts;
        let no_penalty =
            o.repeat_penalty == 1.0 && o.presence_penalty == 0.0 && o.frequency_penalty == 0.0;
        let window = match (no_penalty, o.repeat_last_n) {
            (true, _) | (_, 0) => 0,
            (false, n) if n < 0 => return None,
            (false, n) => n as usize,
        };
        let lowers =
            o.repeat_penalty >= 1.0 && o.presence_penalty >= 0.0 && o.frequency_penalty >= 0.0;
        let top_k = match o.temperature <= 0.0 {
            true => 1,
            false => o.top_k,
        };
        let fits = !o.temperature.is_nan()
            && top_k > 0
            && top_k < n_vocab
            && lowers
            && top_k + window <= k;
        fits.then_some(DeviceSampling {
            temperature: o.temperature,
            top_k: top_k as u32,
            top_p: o.top_p,
            min_p: o.min_p,
            repeat_penalty: o.repeat_penalty,
            frequency_penalty: o.frequency_penalty,
            presence_penalty: o.presence_penalty,
            window: window as u32,
        })
    }

    /// The seeded stream the draws take their uniforms from (one a draw).
    pub fn rng(&self) -> &Rng {
        &self.rng
    }

    pub fn set_rng(&mut self, rng: Rng) {
        self.rng = rng;
    }

    /// [`Sampler::sample`] of the penalised row from `cand`: the row's best `k` finite logits
    /// (as (token, logit), any order), or every finite one, where [`Sampler::top_fits`] holds
    /// and the row has no `+inf` (a greedy pick would take it). None where a penalty made a
    /// candidate non-finite or there is none: the caller samples the whole row.
    pub fn sample_top(&mut self, cand: &[(u32, f32)], history: &[u32]) -> Option<u32> {
        self.cand.clear();
        self.cand.extend_from_slice(cand);
        // Both by token, walked together (the order before the selection below changes
        // nothing: it takes a set, then sorts it).
        self.cand.sort_unstable_by_key(|x| x.0);
        let counts = self.penalty_counts(history);
        let mut at = 0;
        for x in self.cand.iter_mut() {
            while at < counts.len() && counts[at].0 < x.0 {
                at += 1;
            }
            if let Some(&(t, c)) = counts.get(at) {
                if t == x.0 {
                    x.1 = penalised(&self.opts, x.1, c);
                }
            }
        }
        if self.cand.is_empty() || self.cand.iter().any(|x| !x.1.is_finite()) {
            return None;
        }
        // `top_k_into`'s order (-0 equal to +0, then the lower token), then its first k.
        let rank = |a: &(u32, f32), b: &(u32, f32)| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        };
        if self.opts.temperature <= 0.0 {
            return self.cand.iter().min_by(|a, b| rank(a, b)).map(|x| x.0);
        }
        let k = self.opts.top_k.min(self.cand.len());
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, rank);
            self.cand.truncate(k);
        }
        Some(self.cut_and_draw())
    }

    /// Pick the next token from `logits` (already penalised and masked).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let o = self.opts.clone();
        if o.temperature <= 0.0 {
            return argmax(logits);
        }
        if o.top_k == 0 || o.top_k >= logits.len() {
            return self.sample_whole(logits);
        }
        self.cand.clear();
        // One pass that skips most of a large vocabulary: ~45 us over 128k logits where the
        // full candidate list and its selection took ~0.45 ms, most of a GPU decode step.
        top_k_into(logits, o.top_k, &mut self.cand);
        if self.cand.is_empty() {
            return argmax(logits);
        }
        // top-k (sorting descending is needed by top-p anyway).
        let k = o.top_k.min(self.cand.len());
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_rank);
            self.cand.truncate(k);
        }
        self.cut_and_draw()
    }

    /// The top-k candidates (any order) sorted, cut by top-p and min-p, and the draw.
    fn cut_and_draw(&mut self) -> u32 {
        let (top_p, min_p) = (self.opts.top_p, self.opts.min_p);
        self.cand.sort_unstable_by(by_rank);
        // Softmax at temperature 1 for top-p and min-p, as llama.cpp does before temperature.
        let probs = softmax(self.cand.iter().map(|c| c.1), 1.0);
        let mut keep = self.cand.len();
        if top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if min_p > 0.0 {
            let floor = probs[0] * min_p;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cand.truncate(keep.max(1));
        self.draw_sorted()
    }

    /// [`Sampler::sample`] without top-k, over the whole vocabulary. Sorting every logit took
    /// 1.4-4 ms a token (49k-128k logits): only the prefix that top-p and min-p keep is sorted,
    /// the best 64 first, then 8 times as many until the cut falls inside. Top-p's and
    /// min-p's probabilities are at temperature 1 over every finite logit (summed in index
    /// order); where neither cuts, the draw runs over every finite logit in index order.
    fn sample_whole(&mut self, logits: &[f32]) -> u32 {
        let o = self.opts.clone();
        let finite = || logits.iter().enumerate().filter(|(_, l)| l.is_finite());
        let (max, n_finite) =
            finite().fold((f32::NEG_INFINITY, 0), |(m, n), (_, &l)| (m.max(l), n + 1));
        if n_finite == 0 {
            return argmax(logits);
        }
        if o.top_p >= 1.0 && o.min_p <= 0.0 {
            // Each finite logit's weight once (an exponential each), then the draw over them.
            self.cand.clear();
            self.cand
                .extend(finite().map(|(i, &l)| (i as u32, ((l - max) / o.temperature).exp())));
            let w: f32 = self.cand.iter().map(|c| c.1).sum();
            let r = self.rng.next_f32();
            let mut acc = 0.0;
            for c in &self.cand {
                acc += c.1 / w;
                if r < acc {
                    return c.0;
                }
            }
            return self.cand[self.cand.len() - 1].0;
        }
        let total: f32 = finite().map(|(_, &l)| (l - max).exp()).sum();
        let mut n = n_finite.min(64);
        loop {
            self.cand.clear();
            if n < n_finite && n <= 64 {
                top_k_into(logits, n, &mut self.cand);
            } else {
                self.cand.extend(finite().map(|(i, &l)| (i as u32, l)));
                if n < n_finite {
                    self.cand.select_nth_unstable_by(n - 1, by_rank);
                    self.cand.truncate(n);
                }
            }
            self.cand.sort_unstable_by(by_rank);
            let p = |l: f32| (l - max).exp() / total;
            let floor = p(self.cand[0].1) * o.min_p;
            let mut acc = 0.0;
            let mut keep = None;
            for (i, c) in self.cand.iter().enumerate() {
                let pi = p(c.1);
                if o.min_p > 0.0 && pi < floor {
                    keep = Some(i.max(1));
                    break;
                }
                acc += pi;
                if o.top_p < 1.0 && acc >= o.top_p {
                    keep = Some(i + 1);
                    break;
                }
            }
            match keep {
                Some(k) => {
                    self.cand.truncate(k);
                    break;
                }
                None if n == n_finite => break,
                None => n = (n * 8).min(n_finite),
            }
        }
        self.draw_sorted()
    }

    /// The draw at the temperature over the candidates kept, in rank order.
    fn draw_sorted(&mut self) -> u32 {
        let probs = softmax(self.cand.iter().map(|c| c.1), self.opts.temperature);
        let r = self.rng.next_f32();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return self.cand[i].0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

/// Index of the largest logit (the lowest index among equals; NaN never wins); 0 when every
/// value is -inf or NaN. Two passes the compiler vectorises (lane maxima, then the block that
/// holds the maximum): ~15 us over a 128k vocabulary where a compare-and-branch loop took
/// ~100-160 us, a sixth of a 1B model's decode step on a GPU.
pub fn argmax(logits: &[f32]) -> u32 {
    let m = lane_max(logits);
    if m == f32::NEG_INFINITY {
        return 0;
    }
    const BLOCK: usize = 256;
    for (bi, c) in logits.chunks(BLOCK).enumerate() {
        if c.iter().fold(false, |a, &v| a | (v == m)) {
            let i = c.iter().position(|&v| v == m).unwrap_or(0);
            return (bi * BLOCK + i) as u32;
        }
    }
    0
}

/// The largest value (NaN never wins; -inf when there is none), over 16 independent lanes the
/// compiler vectorises (one running maximum is a chain of dependent compares).
fn lane_max(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Logit `l` of a token seen `c` times in the penalty window.
fn penalised(o: &SamplingOptions, l: f32, c: u32) -> f32 {
    let l = if l > 0.0 {
        l / o.repeat_penalty
    } else {
        l * o.repeat_penalty
    };
    l - (c as f32 * o.frequency_penalty + o.presence_penalty)
}

/// Candidates in rank order: the larger logit first, the lower token id among equals.
fn by_rank(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// `a` ranks before `b`: a larger logit, or the lower token id among equals.
fn ranks_before(a: (u32, f32), b: (u32, f32)) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

/// The `k` best finite logits into `out` (unsorted; the same set as selecting over every
/// finite candidate). Blocks whose maximum cannot beat the k-th best so far are skipped: a
/// later token never wins a tie, so a block needs a value above it.
fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    const BLOCK: usize = 64;
    let worst_of = |out: &[(u32, f32)]| {
        (1..out.len()).fold(0, |w, i| if ranks_before(out[w], out[i]) { i } else { w })
    };
    let mut worst = 0usize;
    for (bi, blk) in logits.chunks(BLOCK).enumerate() {
        if out.len() == k && lane_max(blk) <= out[worst].1 {
            continue;
        }
        for (j, &v) in blk.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let c = ((bi * BLOCK + j) as u32, v);
            if out.len() < k {
                out.push(c);
                if out.len() == k {
                    worst = worst_of(out);
                }
            } else if ranks_before(c, out[worst]) {
                out[worst] = c;
                worst = worst_of(out);
            }
        }
    }
}

/// e^x as the GPU's draw computes it (smelt-cuda's prelude `exp_det`), operation for
/// operation, so a draw on the device is the host's (v23): the power of two nearest x / ln 2
/// (Cody-Waite, ln 2 in two parts), a degree-6 polynomial on the rest. Within 3 ulp of e^x
/// over the range that matters (x <= 0); 0 below -87, infinity above 88.
pub fn exp_det(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.0 {
        return f32::INFINITY;
    }
    if x < -87.0 {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let mut p = 0.008_333_334 + r * 0.001_388_888_9;
    p = 0.041_666_668 + r * p;
    p = 0.166_666_67 + r * p;
    p = 0.5 + r * p;
    p = 1.0 + r * p;
    p = 1.0 + r * p;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.map(|l| exp_det((l - max) / temperature)).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `log_softmax(logits)[i]` for every i.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits.iter().map(|l| l - lse).collect()
}

#[cfg(test)]
mod tests;
