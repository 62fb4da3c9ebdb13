//! Paged KV blocks and batches of sequences: the same numbers as one sequence in one
//! contiguous cache, and malformed batch layouts refused.

use std::sync::Arc;

use smelt_gguf::GgmlType;
use smelt_models::Output;

use super::tests::{max_rel_diff, small, synth};
use super::{FastBackend, FastKvCache, KvType, SeqRows};

const PROMPTS: [&[u32]; 3] = [
    &[1, 5, 9, 13, 2, 7, 30, 31, 4, 11, 12],
    &[3, 3, 8],
    &[20, 21, 22, 23, 24, 25, 26],
];

/// Logits of every row of `toks` in one contiguous cache.
fn contiguous(fb: &mut FastBackend, a: &dyn smelt_models::Architecture, toks: &[u32]) -> Vec<f32> {
    contiguous_as(fb, a, toks, KvType::F16)
}

fn contiguous_as(
    fb: &mut FastBackend,
    a: &dyn smelt_models::Architecture,
    toks: &[u32],
    kv_type: KvType,
) -> Vec<f32> {
    let mut kv = FastKvCache::with_type(32, &a.kv_widths(), kv_type).unwrap();
    let prog = fb
        .lower(&a.build(toks.len(), Output::AllLogits), &kv)
        .unwrap();
    let pos: Vec<u32> = (0..toks.len() as u32).collect();
    fb.execute(&prog, toks, &pos, &mut kv).unwrap().to_vec()
}

#[test]
fn paged_blocks_in_any_order_equal_a_contiguous_cache() {
    for (arch, kv_type) in [
        ("llama", KvType::F16),
        ("gemma3", KvType::F16),
        ("llama", KvType::Q8_0),
    ] {
        let spec = small(arch, GgmlType::Q8_0, false);
        let g = synth(&spec, 7);
        let a = smelt_models::load(&g).unwrap();
        let mut fb = FastBackend::new(Arc::clone(&g), &a.weights().specs(), 2).unwrap();
        let toks = PROMPTS[0];
        let want = contiguous_as(&mut fb, a.as_ref(), toks, kv_type);
        // Blocks of 4 positions, the sequence's table scrambled over a pool of 6.
        let mut kv = FastKvCache::paged(6, 4, &a.kv_widths(), kv_type).unwrap();
        let table = [4u32, 1, 5];
        let prog = fb
            .lower(&a.build(toks.len(), Output::AllLogits), &kv)
            .unwrap();
        let pos: Vec<u32> = (0..toks.len() as u32).collect();
        let seqs = [SeqRows {
            rows: toks.len(),
            blocks: &table,
        }];
        let got = fb
            .execute_batch(&prog, toks, &pos, &seqs, &mut kv)
            .unwrap()
            .to_vec();
        assert_eq!(got, want, "{arch} {kv_type:?}: paged attention differs");
        // Decode one more token over the paged cache: equals the full evaluation's last row.
        let mut more = toks.to_vec();
        more.push(6);
        let want = contiguous_as(&mut fb, a.as_ref(), &more, kv_type);
        let prog1 = fb.lower(&a.build(1, Output::LastLogits), &kv).unwrap();
        let seqs = [SeqRows {
            rows: 1,
            blocks: &table,
        }];
        let got = fb
            .execute_batch(&prog1, &[6], &[toks.len() as u32], &seqs, &mut kv)
            .unwrap()
            .to_vec();
        let nv = a.n_vocab();
        assert!(
            max_rel_diff(&got, &want[toks.len() * nv..]) < 1e-5,
            "{arch} {kv_type:?}: paged decode"
        );
    }
}

#[test]
fn a_batch_of_sequences_equals_each_alone() {
    for arch in ["llama", "gemma3"] {
        let spec = small(arch, GgmlType::Q4_0, false);
        let g = synth(&spec, 11);
        let a = smelt_models::load(&g).unwrap();
        let nv = a.n_vocab();
        let mut fb = FastBackend::new(Arc::clone(&g), &a.weights().specs(), 3).unwrap();
        let alone: Vec<Vec<f32>> = PROMPTS
            .iter()
            .map(|p| contiguous(&mut fb, a.as_ref(), p)[(p.len() - 1) * nv..].to_vec())
            .collect();
        let mut kv = FastKvCache::paged(12, 4, &a.kv_widths(), KvType::F16).unwrap();
        let tables: [&[u32]; 3] = [&[0, 5, 9], &[3], &[11, 1]];
        let (mut toks, mut pos) = (Vec::new(), Vec::new());
        for p in PROMPTS {
            toks.extend_from_slice(p);
            pos.extend(0..p.len() as u32);
        }
        let seqs: Vec<SeqRows> = PROMPTS
            .iter()
            .zip(tables)
            .map(|(p, t)| SeqRows {
                rows: p.len(),
                blocks: t,
            })
            .collect();
        let prog = fb
            .lower(&a.build(toks.len(), Output::SeqLogits(3)), &kv)
            .unwrap();
        let got = fb
            .execute_batch(&prog, &toks, &pos, &seqs, &mut kv)
            .unwrap()
            .to_vec();
        for (i, want) in alone.iter().enumerate() {
            let d = max_rel_diff(&got[i * nv..(i + 1) * nv], want);
            assert!(d < 1e-4, "{arch}: sequence {i} differs by {d}");
        }
        // Then one decode row each, together.
        let prog = fb.lower(&a.build(3, Output::SeqLogits(3)), &kv).unwrap();
        let next = [6u32, 7, 8];
        let pos: Vec<u32> = PROMPTS.iter().map(|p| p.len() as u32).collect();
        let one: Vec<SeqRows> = tables
            .iter()
            .map(|t| SeqRows { rows: 1, blocks: t })
            .collect();
        let got = fb
            .execute_batch(&prog, &next, &pos, &one, &mut kv)
            .unwrap()
            .to_vec();
        for (i, p) in PROMPTS.iter().enumerate() {
            let mut more = p.to_vec();
            more.push(next[i]);
            let want = contiguous(&mut fb, a.as_ref(), &more);
            let d = max_rel_diff(&got[i * nv..(i + 1) * nv], &want[p.len() * nv..]);
            assert!(d < 1e-4, "{arch}: decode of sequence {i} differs by {d}");
        }
    }
}

#[test]
fn malformed_batches_are_refused() {
    let spec = small("llama", GgmlType::Q8_0, false);
    let g = synth(&spec, 3);
    let a = smelt_models::load(&g).unwrap();
    let mut fb = FastBackend::new(Arc::clone(&g), &a.weights().specs(), 2).unwrap();
    let mut kv = FastKvCache::paged(4, 4, &a.kv_widths(), KvType::F16).unwrap();
    let prog = fb.lower(&a.build(4, Output::SeqLogits(2)), &kv).unwrap();
    let toks = [1u32, 2, 3, 4];
    let mut run = |pos: &[u32], seqs: &[SeqRows]| {
        fb.execute_batch(&prog, &toks, pos, seqs, &mut kv)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let s = |rows, blocks| SeqRows { rows, blocks };
    let e = run(&[0, 1, 0, 1], &[s(2, &[0]), s(2, &[0])]);
    assert!(e.contains("block 0 written by sequences 0 and 1"), "{e}");
    let e = run(&[0, 1, 0, 1], &[s(2, &[0]), s(2, &[7])]);
    assert!(e.contains("block 7 outside the pool"), "{e}");
    let e = run(&[0, 1, 4, 5], &[s(2, &[0]), s(2, &[1])]);
    assert!(e.contains("position 5 beyond its 1 blocks"), "{e}");
    let e = run(&[0, 1, 1, 0], &[s(2, &[0]), s(2, &[1])]);
    assert!(e.contains("positions do not increase"), "{e}");
    let e = run(&[0, 1, 2, 0], &[s(3, &[0]), s(1, &[1]), s(0, &[2])]);
    assert!(e.contains("0 rows"), "{e}");
    let e = run(&[0, 1, 2, 3], &[s(4, &[0])]);
    assert!(e.contains("selecting 2 rows for 1 sequences"), "{e}");
    let e = run(&[0, 1, 2, 3], &[s(3, &[0])]);
    assert!(e.contains("cover 3 of 4 rows"), "{e}");
    // Blocks may be shared for reading: both sequences attend to block 0 (positions 0..4)
    // and write their own next block.
    let ok = fb.execute_batch(
        &prog,
        &toks,
        &[4, 5, 4, 5],
        &[s(2, &[0, 1]), s(2, &[0, 2])],
        &mut kv,
    );
    assert!(ok.is_ok());
}
