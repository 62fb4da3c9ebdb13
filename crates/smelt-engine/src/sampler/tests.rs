//! The sampler against references: top-k, whole-vocabulary and candidate draws, penalties,
//! the shared exponential.
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

/// The device's draw (smelt-cuda v23) takes a generation whose every draw fits the best 128
/// logits whatever the history: sampled at top-k plus a fixed window within 128, and (v27)
/// greedy with penalties as top-k 1 (the best penalised candidate); not an unbounded window,
/// a penalty that can raise a logit, top-k over the vocabulary or a NaN temperature.
#[test]
fn device_draws_fit_only_where_exact() {
    let dev = |o: SamplingOptions| Sampler::new(o).device_sampling(1000, 128);
    let base = SamplingOptions {
        seed: Some(1),
        ..SamplingOptions::default()
    };
    let d = dev(base.clone()).expect("Ollama's defaults");
    assert_eq!((d.top_k, d.window), (40, 64));
    let greedy = SamplingOptions {
        temperature: 0.0,
        ..base.clone()
    };
    let d = dev(greedy.clone()).expect("greedy with a repeat penalty");
    assert_eq!((d.temperature, d.top_k, d.window), (0.0, 1, 64));
    assert!(dev(SamplingOptions {
        repeat_last_n: 127,
        ..greedy.clone()
    })
    .is_some());
    assert!(dev(SamplingOptions {
        repeat_last_n: 128,
        ..greedy.clone()
    })
    .is_none());
    assert!(dev(SamplingOptions {
        repeat_last_n: -1,
        ..greedy.clone()
    })
    .is_none());
    assert!(dev(SamplingOptions {
        repeat_penalty: 0.9,
        ..greedy
    })
    .is_none());
    assert!(dev(SamplingOptions {
        top_k: 1000,
        ..base.clone()
    })
    .is_none());
    assert!(dev(SamplingOptions {
        top_k: 100,
        ..base.clone()
    })
    .is_none());
    assert!(dev(SamplingOptions {
        temperature: f32::NAN,
        ..base
    })
    .is_none());
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
