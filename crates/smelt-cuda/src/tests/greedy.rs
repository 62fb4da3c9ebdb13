//! Greedy decoding on the device (v20a-v20d) against the host's argmax (GPU).

use super::*;

/// The host's greedy pick (`smelt_engine::sampler::argmax`'s rule): the lowest index of the
/// largest value, NaN never winning; 0 when every value is -inf or NaN.
pub(super) fn host_argmax(x: &[f32]) -> u32 {
    let m = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if m == f32::NEG_INFINITY {
        return 0;
    }
    x.iter().position(|&v| v == m).unwrap_or(0) as u32
}

/// v20a: greedy decoding on the device (the argmax in a copy of the head kernel, v20d, and in
/// a kernel of its own; two graphs in flight, of one step or several (v21), the short-context variant's bound at 256 crossed on the
/// way) picks the tokens of the host's argmax over each step's logits; a step launched ahead
/// and dropped (the caller stopped) leaves the cache as the host's run has it: the next
/// step's logits are the same bit for bit.
#[test]
fn greedy_decoding_on_the_device_matches_the_host() {
    if !gpu() {
        return;
    }
    let (n0, steps) = (250usize, 12usize);
    let cases = long_context_dims().into_iter().enumerate();
    // (argmax in the head kernel, steps a graph): v21's graphs of 4 and 3 steps fall back to
    // single steps where a graph would cross the variant's bound.
    let forms = [(true, 1), (false, 1), (true, 4), (false, 3)];
    for ((ci, d), (fold, graph)) in cases.flat_map(|c| forms.map(|f| (c, f))) {
        let (w, file, gp, g1) = long_context_case(ci, d, n0);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let prompt: Vec<u32> = (0..n0).map(|i| ((i * 5 + 1) % d.n_vocab) as u32).collect();
        let positions: Vec<u32> = (0..n0 as u32).collect();
        let mut runs: Vec<(Vec<u32>, Vec<f32>)> = Vec::new();
        for device in [false, true] {
            let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
            cb.set_greedy_fold(fold);
            cb.set_greedy_steps(graph);
            let mut kv = cb.new_kv(LONG_CAPACITY, &widths).unwrap();
            let pp = cb.lower(&gp, &kv).unwrap();
            let p1 = cb.lower(&g1, &kv).unwrap();
            let first = host_argmax(cb.execute(&pp, &prompt, &positions, &mut kv).unwrap());
            let mut toks = vec![first];
            if device {
                assert!(cb.greedy_ok(&p1, &kv), "case {ci}: no greedy decoding");
                cb.greedy_begin(&p1, first, n0 as u32, &kv, &[]).unwrap();
                // One step more than read: launched ahead, then dropped.
                let mut launched = 0;
                for i in 0..steps {
                    while launched <= steps && cb.greedy_room() {
                        let n = cb
                            .greedy_launch(&p1, &mut kv, steps + 1 - launched)
                            .unwrap();
                        assert!((1..=graph).contains(&n), "case {ci}: {n} steps a graph");
                        launched += n;
                    }
                    let (p, t) = cb.greedy_wait().unwrap();
                    assert_eq!(p as usize, n0 + i, "case {ci}: step {i}'s position");
                    toks.push(t);
                }
                cb.greedy_end().unwrap();
            } else {
                for i in 0..steps {
                    let last = toks[toks.len() - 1];
                    let l = cb
                        .execute(&p1, &[last], &[(n0 + i) as u32], &mut kv)
                        .unwrap();
                    toks.push(host_argmax(l));
                }
            }
            let last = toks[toks.len() - 1];
            let next = cb
                .execute(&p1, &[last], &[(n0 + steps) as u32], &mut kv)
                .unwrap()
                .to_vec();
            runs.push((toks, next));
        }
        assert_eq!(
            runs[0].0, runs[1].0,
            "case {ci} ({d:?}, fold {fold}, {graph} steps a graph): the tokens"
        );
        let same = runs[0]
            .1
            .iter()
            .zip(&runs[1].1)
            .all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0));
        assert!(
            same,
            "case {ci} ({d:?}): the logits after the greedy run differ"
        );
    }
}

/// v27: a sequence decoding alone over a paged pool (a solo program, `lower_solo`) picks the
/// host's argmax of the batch program's logits at every step: scattered blocks, the table
/// grown by two blocks on the way, the argmax in the head kernel or its own kernel, graphs
/// of one step or four; the step launched ahead and dropped leaves the pool as the host's
/// run does (the next step's logits the same bit for bit). Tables that do not cover the
/// position, and entries out of order, are refused.
#[test]
fn solo_decoding_over_a_pool_matches_batch_steps() {
    if !gpu() {
        return;
    }
    let (n0, steps) = (29usize, 70usize);
    // Positions up to n0 + steps (the dropped step's) in four blocks.
    let all = [11u32, 4, 7, 0];
    let forms = [(true, 1), (false, 4), (true, 4)];
    for (ci, dtype) in [GgmlType::Q8_0, GgmlType::Q4_K].into_iter().enumerate() {
        let d = QUANT;
        let mut rng = Rng(0x5010 + ci as u64);
        let mut w = Weights::new(|| rng.next());
        let _ = odd::graph(&d, 1, &mut w, true);
        let file = w.gguf(dtype);
        let graph = |n: usize, batch: bool| {
            let mut sink = Weights::new(|| 0.0);
            sink.draw = false;
            match batch {
                true => odd::graph_batch(&d, n, &mut sink, false),
                false => odd::graph(&d, n, &mut sink, true),
            }
        };
        let widths = [d.n_head_kv * d.head_dim; 2];
        let prompt: Vec<u32> = (0..n0).map(|i| ((i * 7 + 3) % d.n_vocab) as u32).collect();
        let positions: Vec<u32> = (0..n0 as u32).collect();
        for (fold, graph_steps) in forms {
            let what = format!("{dtype:?}, fold {fold}, {graph_steps} steps a graph");
            let mut runs: Vec<(Vec<u32>, Vec<f32>)> = Vec::new();
            for device in [false, true] {
                let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
                cb.set_greedy_fold(fold);
                cb.set_greedy_steps(graph_steps);
                let mut pool = cb.new_paged_kv(16, &widths).unwrap();
                let pp = cb.lower(&graph(n0, false), &pool).unwrap();
                let p1 = cb.lower(&graph(1, true), &pool).unwrap();
                let seq = [crate::BatchSeq {
                    rows: n0,
                    blocks: &all[..1],
                }];
                let l = cb
                    .execute_batch(&pp, &prompt, &positions, &seq, &mut pool)
                    .unwrap();
                let mut toks = vec![host_argmax(l)];
                if device {
                    assert!(!cb.greedy_ok(&p1, &pool), "{what}: a batch program");
                    let solo = cb.lower_solo(&graph(1, true), &pool).unwrap();
                    assert!(cb.greedy_ok(&solo, &pool), "{what}: a solo program");
                    let first = toks[0];
                    assert!(cb.greedy_begin(&solo, first, 40, &pool, &all[..1]).is_err());
                    let mut table = all[..2].to_vec();
                    cb.greedy_begin(&solo, first, n0 as u32, &pool, &table)
                        .unwrap();
                    assert_eq!(cb.greedy_cover(), Some(64));
                    assert!(cb.greedy_add_block(&pool, 3, all[3]).is_err());
                    let mut launched = 0;
                    for i in 0..steps {
                        while launched <= steps && cb.greedy_room() {
                            // The table covers the next graph's steps before its launch.
                            let need = n0 + launched + graph_steps;
                            while table.len() * 32 < need && table.len() < all.len() {
                                cb.greedy_add_block(&pool, table.len(), all[table.len()])
                                    .unwrap();
                                table.push(all[table.len()]);
                            }
                            launched += cb
                                .greedy_launch(&solo, &mut pool, steps + 1 - launched)
                                .unwrap();
                        }
                        let (p, t) = cb.greedy_wait().unwrap();
                        assert_eq!(p as usize, n0 + i, "{what}: step {i}'s position");
                        toks.push(t);
                    }
                    cb.greedy_end().unwrap();
                } else {
                    for i in 0..steps {
                        let p = n0 + i;
                        let seq = [crate::BatchSeq {
                            rows: 1,
                            blocks: &all[..p / 32 + 1],
                        }];
                        let last = toks[toks.len() - 1];
                        let l = cb
                            .execute_batch(&p1, &[last], &[p as u32], &seq, &mut pool)
                            .unwrap();
                        toks.push(host_argmax(l));
                    }
                }
                let p = n0 + steps;
                let seq = [crate::BatchSeq {
                    rows: 1,
                    blocks: &all[..p / 32 + 1],
                }];
                let last = toks[toks.len() - 1];
                let next = cb
                    .execute_batch(&p1, &[last], &[p as u32], &seq, &mut pool)
                    .unwrap()
                    .to_vec();
                runs.push((toks, next));
            }
            assert_eq!(runs[0].0, runs[1].0, "{what}: the tokens");
            let same = runs[0]
                .1
                .iter()
                .zip(&runs[1].1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: the logits after the run differ");
        }
    }
}
