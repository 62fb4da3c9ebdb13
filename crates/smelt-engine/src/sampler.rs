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
    /// generation fits a row's best `k` logits whatever the history: temperature above 0, a
    /// top-k below the vocabulary, penalties that only lower logits over a window of fixed
    /// length, top-k plus the window at most `k`.
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
        let fits = o.temperature > 0.0
            && o.top_k > 0
            && o.top_k < n_vocab
            && lowers
            && o.top_k + window <= k;
        fits.then_some(DeviceSampling {
            temperature: o.temperature,
            top_k: o.top_k as u32,
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
mod tests {
    use super::*;

    fn opts(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplingOptions {
        SamplingOptions {
            temperature,
            top_k,
            top_p,
            min_p,
            seed: Some(seed),
            ..SamplingOptions::greedy()
        }
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingOptions::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, f32::NEG_INFINITY]), 1);
    }

    #[test]
    fn argmax_matches_a_plain_loop() {
        let plain = |x: &[f32]| {
            let (mut best, mut bv) = (0usize, f32::NEG_INFINITY);
            for (i, &v) in x.iter().enumerate() {
                if v > bv {
                    (best, bv) = (i, v);
                }
            }
            best as u32
        };
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN; 40],
            vec![f32::NEG_INFINITY; 300],
            vec![f32::NAN, 1.0, f32::NAN, 1.0],
            vec![2.0; 1000],
        ];
        for n in [1usize, 15, 16, 17, 255, 256, 257, 1000, 128_256] {
            cases.push(
                (0..n)
                    .map(|i| ((i * 7919) % 1009) as f32 * 0.5 - 200.0)
                    .collect(),
            );
            let mut v: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
            v[n - 1] = f32::INFINITY;
            v[n / 2] = f32::NAN;
            cases.push(v);
        }
        for c in &cases {
            assert_eq!(argmax(c), plain(c), "{} values", c.len());
        }
    }

    #[test]
    fn top_k_matches_a_full_selection() {
        let mut rng = Rng::new(5);
        for (n, k) in [
            (1usize, 1usize),
            (10, 3),
            (64, 64),
            (65, 64),
            (1000, 40),
            (50_000, 40),
            (3000, 500),
        ] {
            // Few distinct values: many ties across blocks; some non-finite values.
            let mut logits: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 20.0).floor()).collect();
            for i in (0..n).step_by(97) {
                logits[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
            }
            let mut want: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l))
                .collect();
            let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            want.sort_unstable_by(order);
            want.truncate(k);
            let mut got = Vec::new();
            top_k_into(&logits, k, &mut got);
            got.sort_unstable_by(order);
            assert_eq!(got, want, "n {n} k {k}");
        }
    }

    /// Without top-k, the sampler sorts only the prefix top-p and min-p keep: the same
    /// draws as sorting every finite logit (the reference below, the same rules), over
    /// peaked and flat rows (cuts at the first 64, after several rounds, or none), ties and
    /// non-finite logits.
    #[test]
    fn whole_vocabulary_sampling_sorts_only_what_it_keeps() {
        let reference = |o: &SamplingOptions, logits: &[f32], rng: &mut Rng| -> u32 {
            let mut c: Vec<(u32, f32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l))
                .collect();
            if c.is_empty() {
                return argmax(logits);
            }
            let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.1));
            if o.top_p >= 1.0 && o.min_p <= 0.0 {
                let w: f32 = c.iter().map(|x| ((x.1 - max) / o.temperature).exp()).sum();
                let r = rng.next_f32();
                let mut acc = 0.0;
                for x in &c {
                    acc += ((x.1 - max) / o.temperature).exp() / w;
                    if r < acc {
                        return x.0;
                    }
                }
                return c[c.len() - 1].0;
            }
            let total: f32 = c.iter().map(|x| (x.1 - max).exp()).sum();
            c.sort_unstable_by(by_rank);
            let p: Vec<f32> = c.iter().map(|x| (x.1 - max).exp() / total).collect();
            let mut keep = c.len();
            if o.top_p < 1.0 {
                let mut acc = 0.0;
                if let Some(i) = p.iter().position(|&pi| {
                    acc += pi;
                    acc >= o.top_p
                }) {
                    keep = i + 1;
                }
            }
            if o.min_p > 0.0 {
                let floor = p[0] * o.min_p;
                keep = keep.min(p.iter().take_while(|&&pi| pi >= floor).count().max(1));
            }
            c.truncate(keep);
            let probs = softmax(c.iter().map(|x| x.1), o.temperature);
            let r = rng.next_f32();
            let mut acc = 0.0;
            for (i, pi) in probs.iter().enumerate() {
                acc += pi;
                if r < acc {
                    return c[i].0;
                }
            }
            c[c.len() - 1].0
        };
        let mut rng = Rng::new(3);
        let rows: Vec<Vec<f32>> = vec![
            // Peaked: the cut within the first 64.
            (0..5000).map(|i| -((i % 997) as f32) * 0.05).collect(),
            // Flat: the cut after several rounds.
            (0..20_000).map(|_| rng.next_f32()).collect(),
            // Ties and non-finite logits.
            (0..3000)
                .map(|i| match i % 41 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    _ => (i % 7) as f32,
                })
                .collect(),
            vec![f32::NEG_INFINITY; 10],
            vec![0.5],
        ];
        let configs = [
            (0.8, 0.9, 0.0),
            (1.0, 0.5, 0.05),
            (0.7, 1.0, 0.1),
            (1.3, 1.0, 0.0),
            (0.9, 0.999, 0.0),
        ];
        for (ri, row) in rows.iter().enumerate() {
            for &(temperature, top_p, min_p) in &configs {
                for top_k in [0usize, row.len(), row.len() + 5] {
                    for seed in 0..6u64 {
                        let o = opts(temperature, top_k, top_p, min_p, seed);
                        let mut s = Sampler::new(o.clone());
                        let mut r = Rng::new(seed);
                        for draw in 0..4 {
                            let want = reference(&o, row, &mut r);
                            assert_eq!(
                                s.sample(row),
                                want,
                                "row {ri} t {temperature} p {top_p} min {min_p} k {top_k} seed {seed} draw {draw}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `sample_top` from a row's best 128 finite logits (the set `top_k_into` gives, as the GPU's
    /// candidates kernel does) draws what `apply_penalties` + `sample` draw over the whole row,
    /// draw for draw from one seed, wherever `top_fits` holds: Ollama's defaults, greedy with
    /// penalties, top-k up to 100, top-p and min-p cuts, frequency and presence penalties,
    /// rows with ties, signed zeros and non-finite values, fewer finite values than 128.
    #[test]
    fn top_candidates_sample_as_the_whole_row() {
        let mut rng = Rng::new(5);
        let mut fitted = 0;
        for case in 0..400 {
            let n = [300usize, 5000, 49152][case % 3];
            let coarse = case % 4 == 1;
            let mut row: Vec<f32> = (0..n)
                .map(|_| {
                    let x = rng.next_f32() * 12.0 - 4.0;
                    if coarse {
                        x.round()
                    } else {
                        x
                    }
                })
                .collect();
            if case % 5 == 2 {
                row[7] = f32::NAN;
                row[9] = f32::NEG_INFINITY;
                row[11] = -0.0;
                row[12] = 0.0;
            }
            if case % 11 == 3 {
                // Fewer finite values than candidates.
                for (i, v) in row.iter_mut().enumerate() {
                    if i % 50 != 0 {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            let history: Vec<u32> = (0..(case % 90))
                .map(|_| {
                    // Recent tokens among the best logits, where penalties matter.
                    let best = argmax(&row) as u64;
                    ((best + rng.next_u64() % 40) % n as u64) as u32
                })
                .collect();
            let o = SamplingOptions {
                temperature: [0.8, 0.0, 1.3, 0.5][case % 4],
                top_k: [40, 1, 64, 100, 20][case % 5],
                top_p: [0.9, 1.0, 0.5][case % 3],
                min_p: [0.0, 0.05][case % 2],
                repeat_penalty: [1.1, 1.0, 1.5][case % 3],
                repeat_last_n: [64, 16, -1][case % 3],
                presence_penalty: [0.0, 0.3][case % 2],
                frequency_penalty: [0.0, 0.0, 0.2][case % 3],
                seed: Some(case as u64),
            };
            let (mut whole, mut top) = (Sampler::new(o.clone()), Sampler::new(o.clone()));
            if !top.top_fits(n, 128, &history) {
                continue;
            }
            fitted += 1;
            let mut cand = Vec::new();
            top_k_into(&row, 128, &mut cand);
            cand.reverse();
            for d in 0..20 {
                let mut l = row.clone();
                whole.apply_penalties(&mut l, &history);
                let want = whole.sample(&l);
                let got = top.sample_top(&cand, &history);
                assert_eq!(got, Some(want), "case {case} draw {d} ({o:?})");
            }
        }
        assert!(fitted > 150, "{fitted} cases fit");
    }

    /// Where the penalised tokens and top-k do not fit the candidates, or a penalty could
    /// raise a logit, or there is no top-k, the whole row is needed.
    #[test]
    fn top_candidates_fit_only_where_exact() {
        let history: Vec<u32> = (0..100).collect();
        let fits = |o: SamplingOptions| Sampler::new(o).top_fits(1000, 128, &history);
        let base = SamplingOptions {
            seed: Some(1),
            ..SamplingOptions::default()
        };
        assert!(fits(base.clone()), "Ollama's defaults");
        assert!(!fits(SamplingOptions {
            top_k: 0,
            ..base.clone()
        }));
        assert!(!fits(SamplingOptions {
            top_k: 1000,
            ..base.clone()
        }));
        assert!(!fits(SamplingOptions {
            repeat_last_n: 100,
            ..base.clone()
        }));
        assert!(fits(SamplingOptions {
            repeat_last_n: 100,
            repeat_penalty: 1.0,
            ..base.clone()
        }));
        assert!(!fits(SamplingOptions {
            repeat_penalty: 0.9,
            ..base.clone()
        }));
        assert!(!fits(SamplingOptions {
            presence_penalty: -0.5,
            ..base.clone()
        }));
        assert!(fits(SamplingOptions {
            temperature: 0.0,
            repeat_last_n: 127,
            ..base
        }));
    }

    /// `exp_det` (the host's and the GPU's shared exponential) stays within 3 ulp of `exp`
    /// where sampling uses it, and saturates outside.
    #[test]
    fn exp_det_is_close_to_exp() {
        let mut worst = 0u32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp_det(x), x.exp());
            if b < f32::MIN_POSITIVE {
                continue;
            }
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
        }
        assert!(worst <= 3, "{worst} ulp");
        assert_eq!(exp_det(0.0), 1.0);
        assert_eq!(exp_det(-100.0), 0.0);
        assert_eq!(exp_det(100.0), f32::INFINITY);
        assert!(exp_det(f32::NAN).is_nan());
        assert!((exp_det(10.0) / 10f32.exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(opts(1.0, 0, 1.0, 0.0, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [1.0, 5.0, 4.9, 0.0];
        let mut s = Sampler::new(opts(5.0, 1, 1.0, 0.0, 3));
        assert!((0..100).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // p ~ [0.88, 0.12, ~0, ~0]: top-p 0.5 keeps only the first.
        let logits = [4.0, 2.0, -10.0, -10.0];
        let mut s = Sampler::new(opts(1.0, 0, 0.5, 0.0, 1));
        assert!((0..100).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(opts(1.0, 0, 1.0, 0.2, 1));
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(opts(1.0, 0, 1.0, 0.1, 1));
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(draws.contains(&1) && !draws.contains(&2));
    }

    #[test]
    fn temperature_sharpens() {
        let logits = [1.0, 0.0];
        let count = |t| {
            let mut s = Sampler::new(opts(t, 0, 1.0, 0.0, 9));
            (0..2000).filter(|_| s.sample(&logits) == 0).count()
        };
        let (cold, hot) = (count(0.25), count(4.0));
        assert!(cold > 1900, "{cold}");
        assert!(hot < 1400, "{hot}");
    }

    #[test]
    fn penalties() {
        let s = Sampler::new(SamplingOptions {
            repeat_penalty: 2.0,
            repeat_last_n: 64,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingOptions::greedy()
        });
        let mut logits = vec![4.0, -4.0, 1.0];
        s.apply_penalties(&mut logits, &[0, 0, 1, 99]);
        assert_eq!(logits, vec![4.0 / 2.0 - 0.5 - 0.5, -8.0 - 0.25 - 0.5, 1.0]);
    }

    #[test]
    fn log_softmax_normalises() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let sum: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
