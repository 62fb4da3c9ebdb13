//! Batched decode over a paged KV pool against each sequence alone (GPU).

use super::*;

/// A batch over a paged KV pool gives each sequence what it gets alone: eight sequences (prompts
/// of 1 to 40 tokens, in scattered blocks) are prefilled one by one, then decode three steps
/// together (all 8 rows: two passes of 4 in the gemv; then 2 of them; then 4), against each
/// sequence run alone on a cache of its own. Types of both gemv families and of the tiled epilogue (the Gemma-like
/// layer's QK-norm), the Qwen-like layer's NEOX pairs, a sliding window. The batch rows'
/// gemv (no tensor cores) makes the same sums in the same order as one sequence's.
#[test]
fn batched_decode_matches_single_sequences() {
    if !gpu() {
        return;
    }
    batched_steps(0);
}

/// The same batches with their matmuls on tensor cores (v17c, every step of 2 rows or more):
/// the products are summed per 32 values in another order than one sequence's gemv, so each
/// row is held to the CPU reference, within twice the CPU fast path's own distance from it (as
/// one sequence's decode is, `matches_reference_on_odd_shapes_and_quant_types`).
#[test]
fn batched_tensor_core_rows_match_reference() {
    if !gpu() {
        return;
    }
    batched_steps(2);
}

/// Prefill eight sequences into a paged pool, decode three batched steps with tensor-core rows
/// from `mma_rows` rows on (0: none), and check every row.
fn batched_steps(mma_rows: usize) {
    let cases = [
        (GgmlType::Q8_0, false),
        (GgmlType::Q4_K, false),
        (GgmlType::Q6_K, true),
        (GgmlType::Q4_0, true),
    ];
    let prompts = [5usize, 33, 40, 1, 2, 17, 30, 9];
    let tables: [&[u32]; 8] = [
        &[7, 2],
        &[0, 9, 4],
        &[12, 3, 5],
        &[1],
        &[15],
        &[6, 14],
        &[13, 10],
        &[8],
    ];
    // Rows of each step: sequence indices.
    let steps: [&[usize]; 3] = [&[0, 1, 2, 3, 4, 5, 6, 7], &[1, 3], &[0, 1, 2, 3]];
    // Every step's mismatches, reported together at the end.
    let mut failures: Vec<String> = Vec::new();
    // `SMELT_TEST_BATCH_CASES=1,3` runs those cases alone (a diagnosis on the device).
    let only: Option<Vec<usize>> = std::env::var("SMELT_TEST_BATCH_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect());
    for (ci, (dtype, qwen)) in cases.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&ci)) {
            continue;
        }
        let d = QUANT;
        let mut rng = Rng(0xba7c + ci as u64);
        let mut w = Weights::new(|| rng.next());
        fn graph_of(
            d: &Dims,
            n: usize,
            w: &mut impl odd::AddWeight,
            batch: bool,
            qwen: bool,
        ) -> Graph {
            if batch {
                odd::graph_batch(d, n, w, qwen)
            } else if qwen {
                odd::graph_qwen(d, n, w, true)
            } else {
                odd::graph(d, n, w, true)
            }
        }
        let _ = graph_of(&d, 1, &mut w, false, qwen);
        let file = w.gguf(dtype);
        // Another graph of the same weights (their ids count from 0 in a fresh table).
        let graph = |n: usize, batch: bool| {
            let mut sink = Weights::new(|| 0.0);
            sink.draw = false;
            graph_of(&d, n, &mut sink, batch, qwen)
        };
        let widths = [d.n_head_kv * d.head_dim; 2];
        let tokens: Vec<Vec<u32>> = (0..8)
            .map(|s| {
                (0..prompts[s] + 3)
                    .map(|i| ((i * 5 + s * 11 + 2) % d.n_vocab) as u32)
                    .collect()
            })
            .collect();
        let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
        cb.set_batch_mma(mma_rows);
        // Every program below compiled into the disk cache first, each cache's in parallel
        // (~20 compiles a case, one after another in the checks).
        {
            let mut alone: Vec<Graph> = prompts.iter().map(|&n| graph(n, false)).collect();
            alone.push(graph(1, false));
            let mut together: Vec<Graph> = prompts.iter().map(|&n| graph(n, false)).collect();
            together.extend(steps.iter().map(|rows| graph(rows.len(), true)));
            if let Ok(kv) = cb.new_kv(64, &widths) {
                let _ = cb.precompile(&alone, &kv);
            }
            if let Ok(pool) = cb.new_paged_kv(16, &widths) {
                let _ = cb.precompile(&together, &pool);
            }
        }
        // Alone: each sequence on a cache of its own, logits after its prompt and each step.
        let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
        for s in 0..8 {
            let mut kv = cb.new_kv(64, &widths).unwrap();
            let pp = cb.lower(&graph(prompts[s], false), &kv).unwrap();
            let p1 = cb.lower(&graph(1, false), &kv).unwrap();
            let positions: Vec<u32> = (0..prompts[s] as u32).collect();
            let mut outs = vec![cb
                .execute(&pp, &tokens[s][..prompts[s]], &positions, &mut kv)
                .unwrap()
                .to_vec()];
            for i in prompts[s]..prompts[s] + 3 {
                let p = [i as u32];
                outs.push(
                    cb.execute(&p1, &tokens[s][i..i + 1], &p, &mut kv)
                        .unwrap()
                        .to_vec(),
                );
            }
            alone.push(outs);
        }
        // With tensor-core rows: each sequence's logits from the CPU reference and the CPU
        // fast path (the yardstick), after its prompt and each step.
        let mut reference: Vec<Vec<Vec<f32>>> = Vec::new();
        let mut fast: Vec<Vec<Vec<f32>>> = Vec::new();
        if mma_rows > 0 {
            use smelt_cpu::{FastBackend, FastKvCache};
            let rb = ReferenceBackend::new(w.dequantized(&file), 1);
            let mut fb = FastBackend::new(Arc::clone(&file), &w.specs, 2).unwrap();
            for s in 0..8 {
                let (mut rkv, mut fkv) = (KvCache::new(64, &widths), FastKvCache::new(64, &widths));
                let (mut r, mut f) = (Vec::new(), Vec::new());
                for (i, n) in std::iter::once(prompts[s]).chain([1; 3]).enumerate() {
                    let at = if i == 0 { 0 } else { prompts[s] + i - 1 };
                    let g = graph(n, false);
                    let positions: Vec<u32> = (at as u32..(at + n) as u32).collect();
                    let toks = &tokens[s][at..at + n];
                    r.push(rb.execute(&g, toks, &positions, &mut rkv));
                    let fp = fb.lower(&g, &fkv).unwrap();
                    f.push(
                        fb.execute(&fp, toks, &positions, &mut fkv)
                            .unwrap()
                            .to_vec(),
                    );
                }
                reference.push(r);
                fast.push(f);
            }
        }
        // Together on a pool of 16 blocks.
        let mut pool = cb.new_paged_kv(16, &widths).unwrap();
        let mut n_kv = [0usize; 8];
        for s in 0..8 {
            let pp = cb.lower(&graph(prompts[s], false), &pool).unwrap();
            let positions: Vec<u32> = (0..prompts[s] as u32).collect();
            let seq = [crate::BatchSeq {
                rows: prompts[s],
                blocks: tables[s],
            }];
            let got = cb
                .execute_batch(&pp, &tokens[s][..prompts[s]], &positions, &seq, &mut pool)
                .unwrap();
            compare(
                got,
                &alone[s][0],
                2e-3,
                &format!("case {ci} {dtype:?} prefill {s}"),
            );
            n_kv[s] = prompts[s];
        }
        let mut steps_done = [0usize; 8];
        for (si, rows) in steps.iter().enumerate() {
            let prog = cb.lower(&graph(rows.len(), true), &pool).unwrap();
            assert!(prog.is_decode(), "a batch of {} rows decodes", rows.len());
            let toks: Vec<u32> = rows.iter().map(|&s| tokens[s][n_kv[s]]).collect();
            let positions: Vec<u32> = rows.iter().map(|&s| n_kv[s] as u32).collect();
            let seqs: Vec<crate::BatchSeq> = rows
                .iter()
                .map(|&s| crate::BatchSeq {
                    rows: 1,
                    blocks: tables[s],
                })
                .collect();
            let before = cb.stats().submissions;
            let got = cb
                .execute_batch(&prog, &toks, &positions, &seqs, &mut pool)
                .unwrap()
                .to_vec();
            assert_eq!(cb.stats().submissions - before, 1, "one submission a step");
            let nv = d.n_vocab;
            // v22: the same step again, ending with each row's sampling candidates: the
            // top-k set of the rows above (the step rewrites the same keys and values).
            assert!(
                cb.top_ok(&prog),
                "a batch of {} rows: candidates",
                rows.len()
            );
            let top = cb
                .execute_batch_top(&prog, &toks, &positions, &seqs, &mut pool)
                .unwrap();
            for r in 0..rows.len() {
                assert_eq!(
                    super::top::device_top(&top, r),
                    super::top::host_top(&got[r * nv..(r + 1) * nv]),
                    "case {ci} {dtype:?} step {si} row {r}: the candidates"
                );
            }
            assert_eq!(got.len(), rows.len() * nv);
            for (r, &s) in rows.iter().enumerate() {
                steps_done[s] += 1;
                let what = format!("case {ci} {dtype:?} step {si} sequence {s}");
                let row = &got[r * nv..(r + 1) * nv];
                let verdict = if mma_rows == 0 {
                    check(row, &alone[s][steps_done[s]], 2e-3)
                } else {
                    let want = &reference[s][steps_done[s]];
                    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
                    let fd = max_diff(&fast[s][steps_done[s]], want);
                    eprintln!(
                        "{what}: tensor cores {} one sequence {} cpu fast {fd} of {scale}",
                        max_diff(row, want),
                        max_diff(&alone[s][steps_done[s]], want)
                    );
                    check(row, want, (2.0 * fd / scale).max(2e-2))
                };
                if let Err(e) = verdict {
                    eprintln!("{what}: {e}");
                    failures.push(format!("{what}: {e}"));
                }
                n_kv[s] += 1;
            }
        }
        // Bad layouts are refused, nothing run.
        let prog = cb.lower(&graph(2, true), &pool).unwrap();
        let two = |a: &'static [u32], b: &'static [u32]| {
            [
                crate::BatchSeq { rows: 1, blocks: a },
                crate::BatchSeq { rows: 1, blocks: b },
            ]
        };
        let bad = [
            (two(&[3], &[3]), [0u32, 1], "one block written twice"),
            (two(&[3], &[16]), [0, 1], "a block outside the pool"),
            (two(&[3], &[4]), [0, 40], "a position past the table"),
        ];
        for (seqs, positions, what) in bad {
            let r = cb.execute_batch(&prog, &[1, 2], &positions, &seqs, &mut pool);
            assert!(r.is_err(), "{what}: refused");
        }
    }
    assert!(
        failures.is_empty(),
        "batched steps differ from the sequences alone: {failures:#?}"
    );
}
