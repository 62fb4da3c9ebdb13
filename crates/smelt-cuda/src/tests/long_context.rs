//! Decode attention deep into a cache (GPU): the long-context shapes against the reference,
//! several chunks a split, and the short-context variants and key regions bit for bit.

use super::*;
use crate::{CudaKvCache, CudaProgram};

/// KV capacity of the long-context attention test (10 chunks of 32 keys: over 8 splits off
/// Hopper, one chunk or none in each of Hopper's 16).
pub(super) const LONG_CAPACITY: usize = 320;

/// Shapes of the long-context attention test: head sizes 64, 128 and 256, GQA groups 1 to 4.
pub(super) fn long_context_dims() -> [Dims; 4] {
    let dims = |n_embd, n_head, n_head_kv, head_dim, n_rot| Dims {
        n_embd,
        n_head,
        n_head_kv,
        head_dim,
        n_rot,
        n_ff: 40,
        n_vocab: 37,
    };
    [
        dims(64, 8, 2, 128, 128),
        dims(48, 6, 2, 64, 32),
        dims(32, 4, 1, 256, 256),
        dims(40, 2, 2, 64, 64),
    ]
}

/// Long-context case `ci`: its weights (as drawn, in an F16 GGUF file), the prefill graph of
/// `n0` tokens and the decode graph.
pub(super) fn long_context_case(
    ci: usize,
    d: Dims,
    n0: usize,
) -> (Weights<Draw>, Arc<Gguf>, Graph, Graph) {
    let mut rng = Rng(0x51ed + ci as u64);
    let mut w: Weights<Draw> = Weights::new(Box::new(move || rng.next()));
    let gp = odd::graph(&d, n0, &mut w, true);
    let file = w.gguf(GgmlType::F16);
    let mut sink = Weights::new(|| 0.0);
    sink.draw = false;
    let g1 = odd::graph(&d, 1, &mut sink, true);
    (w, file, gp, g1)
}

/// Long-context case `ci` after an `n0`-token prefill of `tokens` on a `cap`-position cache, in
/// the reference and on the GPU: the reference, its cache, the backend, its cache, the decode
/// graph and its program (the backend's default settings).
fn prefilled_case(
    ci: usize,
    d: Dims,
    n0: usize,
    cap: usize,
    tokens: &[u32],
) -> (
    ReferenceBackend,
    KvCache,
    CudaBackend,
    CudaKvCache,
    Graph,
    CudaProgram,
) {
    let (w, file, gp, g1) = long_context_case(ci, d, n0);
    let reference = ReferenceBackend::new(w.dequantized(&file), 1);
    let widths = [d.n_head_kv * d.head_dim; 2];
    let positions: Vec<u32> = (0..n0 as u32).collect();
    let mut rkv = KvCache::new(cap, &widths);
    reference.execute(&gp, &tokens[..n0], &positions, &mut rkv);
    let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
    let mut kv = cb.new_kv(cap, &widths).unwrap();
    let pp = cb.lower(&gp, &kv).unwrap();
    let p1 = cb.lower(&g1, &kv).unwrap();
    cb.execute(&pp, &tokens[..n0], &positions, &mut kv).unwrap();
    (reference, rkv, cb, kv, g1, p1)
}

/// Decode attention over a long cache, against the reference after a 290-token prefill: every
/// split takes one or two 32-key chunks (double buffering, the clusters' combine), the second
/// layer's 2-key sliding window leaves most splits empty; head sizes 64, 128 and 256, GQA
/// groups of 1 to 4.
#[test]
fn decode_attention_long_context_matches_reference() {
    if !gpu() {
        return;
    }
    let (n0, cap) = (290usize, LONG_CAPACITY);
    let dims: Vec<(usize, Dims)> = long_context_dims().into_iter().enumerate().collect();
    // The four programs of each case below (prefill, decode, persistent, attention tail),
    // compiled into the disk cache first, the cases at once.
    in_parallel("long-context cases", &dims, |&(ci, d)| {
        let (w, file, gp, g1) = long_context_case(ci, d, n0);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let Ok(mut cb) = CudaBackend::new(Arc::clone(&file), &w.specs) else {
            return;
        };
        let Ok(kv) = cb.new_kv(cap, &widths) else {
            return;
        };
        let _ = cb.precompile(&[gp, g1.clone()], &kv);
        cb.set_persistent(true);
        let _ = cb.precompile(std::slice::from_ref(&g1), &kv);
        cb.set_persistent(false);
        cb.set_attention_tail(1024);
        let _ = cb.precompile(std::slice::from_ref(&g1), &kv);
        cb.set_attention_tail(0);
        cb.set_attention_region(256);
        let _ = cb.precompile(&[g1], &kv);
    });
    for &(ci, d) in &dims {
        let tokens: Vec<u32> = (0..n0 + 3)
            .map(|i| ((i * 7 + 3) % d.n_vocab) as u32)
            .collect();
        let (reference, mut rkv, mut cb, mut kv, g1, p1) = prefilled_case(ci, d, n0, cap, &tokens);
        // The same step as one persistent kernel (attention v4, no clusters): it writes the
        // same key and value rows as p1 after it.
        cb.set_persistent(true);
        let pm = cb.lower(&g1, &kv).unwrap();
        // And with the first layer's attention in the QKV kernel's tail.
        cb.set_persistent(false);
        cb.set_attention_tail(1024);
        let pt = cb.lower(&g1, &kv).unwrap();
        // And with key regions of 256 positions (v19b: two on this cache where the work is
        // on tensor cores, the second holding 34-36 keys).
        cb.set_attention_tail(0);
        cb.set_attention_region(256);
        let pr = cb.lower(&g1, &kv).unwrap();
        for step in n0..n0 + 3 {
            let tk = &tokens[step..step + 1];
            let want = reference.execute(&g1, tk, &[step as u32], &mut rkv);
            let got = cb.execute(&pm, tk, &[step as u32], &mut kv).unwrap();
            compare(
                got,
                &want,
                2e-2,
                &format!("long context {d:?} persistent decode {step}"),
            );
            let got = cb.execute(&pt, tk, &[step as u32], &mut kv).unwrap();
            compare(
                got,
                &want,
                2e-2,
                &format!("long context {d:?} attention tail decode {step}"),
            );
            let got = cb.execute(&pr, tk, &[step as u32], &mut kv).unwrap();
            compare(
                got,
                &want,
                2e-2,
                &format!("long context {d:?} key regions decode {step}"),
            );
            let got = cb.execute(&p1, tk, &[step as u32], &mut kv).unwrap();
            compare(
                got,
                &want,
                2e-2,
                &format!("long context {d:?} decode {step}"),
            );
        }
    }
}

/// Decode attention where each split holds two or three 32-key chunks (steps 1030-1032 after
/// a 1030-token prefill on a 1100-position cache: split 0 three chunks, the others two; the
/// sliding window's layer leaves all but the last empty), against the reference, on every
/// long-context shape: the chunk pipeline past its first chunk, which the 320-position cases
/// above never reach with 16 splits.
#[test]
fn several_chunks_a_split_match_the_reference() {
    if !gpu() {
        return;
    }
    let (n0, cap) = (1030usize, 1100usize);
    for (ci, d) in long_context_dims().into_iter().enumerate() {
        let tokens: Vec<u32> = (0..n0 + 3)
            .map(|i| ((i * 11 + 5) % d.n_vocab) as u32)
            .collect();
        let (reference, mut rkv, mut cb, mut kv, g1, p1) = prefilled_case(ci, d, n0, cap, &tokens);
        for step in n0..n0 + 3 {
            let tk = &tokens[step..step + 1];
            let want = reference.execute(&g1, tk, &[step as u32], &mut rkv);
            let got = cb.execute(&p1, tk, &[step as u32], &mut kv).unwrap();
            compare(
                got,
                &want,
                2e-2,
                &format!("{d:?} decode {step} (several chunks a split)"),
            );
        }
    }
}

/// v13h: a decode program's short-context variant (8 splits a KV head while every position
/// is below 256) gives the 16-split program's logits bit for bit, steps 250-261 after a
/// 250-token prefill (across the bound), on every long-context shape; both against the
/// reference. On sm_90 the program has the variant.
#[test]
fn short_context_attention_is_the_long_one_bit_for_bit() {
    short_variants_match(250, 12, 1, &[256], 0);
}

/// v19b: with key regions of 256 positions (the tensor-core shapes take two on this cache)
/// the same (the variants then start with the program without regions, below 256), and the
/// program with regions alone gives below 256 positions (region 1 empty) the logits of the
/// one without bit for bit, past it (region 1 holding 1-5 keys) the reference's.
#[test]
fn key_regions_are_exact_where_empty_and_match_the_reference() {
    short_variants_match(250, 12, 1, &[256], 256);
}

/// v13i (kernel lab, `SMELT_CUDA_ATTN_SHORT=2`): the variant's own variant (4 splits below
/// 128 positions) too, steps 120-135 after a 120-token prefill.
#[test]
fn shorter_context_attention_is_the_long_one_bit_for_bit() {
    short_variants_match(120, 16, 2, &[256, 128], 0);
}

/// Decode steps `n0..n0 + steps` after an `n0`-token prefill on the long-context shapes, with
/// `levels` short-context variants (bounds `want` on sm_90) and without: bit-equal logits,
/// both close to the reference's. With key regions of `region` positions (v19b; 0: the
/// backend's default) in both, also a third run without regions, bit-equal below `region`.
fn short_variants_match(n0: usize, steps: usize, levels: usize, want: &[u32], region: usize) {
    if !gpu() {
        return;
    }
    let cap = LONG_CAPACITY;
    let dims: Vec<(usize, Dims)> = long_context_dims().into_iter().enumerate().collect();
    in_parallel("short-context cases", &dims, |&(ci, d)| {
        let (w, file, gp, g1) = long_context_case(ci, d, n0);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let Ok(mut cb) = CudaBackend::new(Arc::clone(&file), &w.specs) else {
            return;
        };
        cb.set_short_attention_levels(levels);
        if region > 0 {
            cb.set_attention_region(region);
        }
        if let Ok(kv) = cb.new_kv(cap, &widths) {
            let _ = cb.precompile(&[gp, g1], &kv);
        }
    });
    for &(ci, d) in &dims {
        let (w, file, gp, g1) = long_context_case(ci, d, n0);
        let reference = ReferenceBackend::new(w.dequantized(&file), 1);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let tokens: Vec<u32> = (0..n0 + steps)
            .map(|i| ((i * 5 + 1) % d.n_vocab) as u32)
            .collect();
        let positions: Vec<u32> = (0..n0 as u32).collect();
        let mut rkv = KvCache::new(cap, &widths);
        reference.execute(&gp, &tokens[..n0], &positions, &mut rkv);
        let mut runs = Vec::new();
        let settings: &[(usize, usize)] = match region {
            0 => &[(levels, 0), (0, 0)],
            r => &[(levels, r), (0, r), (0, 0)],
        };
        for &(lv, rg) in settings {
            let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
            cb.set_short_attention_levels(lv);
            if rg > 0 {
                cb.set_attention_region(rg);
            }
            let mut kv = cb.new_kv(cap, &widths).unwrap();
            let pp = cb.lower(&gp, &kv).unwrap();
            let p1 = cb.lower(&g1, &kv).unwrap();
            if lv == 0 {
                assert!(p1.short_bounds().is_empty());
            } else if cb.device().cc.0 >= 9 {
                // With key regions, the program without them first where it takes them.
                let b = p1.short_bounds();
                assert!(b.ends_with(want), "{d:?}: the variants on sm_90: {b:?}");
                assert!(rg > 0 || b.len() == want.len(), "{d:?}: {b:?}");
            }
            cb.execute(&pp, &tokens[..n0], &positions, &mut kv).unwrap();
            let outs: Vec<Vec<f32>> = (n0..n0 + steps)
                .map(|step| {
                    let tk = &tokens[step..step + 1];
                    cb.execute(&p1, tk, &[step as u32], &mut kv)
                        .unwrap()
                        .to_vec()
                })
                .collect();
            runs.push(outs);
        }
        for (i, step) in (n0..n0 + steps).enumerate() {
            let want = reference.execute(&g1, &tokens[step..step + 1], &[step as u32], &mut rkv);
            compare(
                &runs[0][i],
                &want,
                2e-2,
                &format!("{d:?} short decode {step}"),
            );
            // Bit for bit (a zero of either sign as zero).
            let same = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(a, b)| a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0))
            };
            assert!(
                same(&runs[0][i], &runs[1][i]),
                "{d:?} step {step}: a variant differs from the 16-split program"
            );
            assert!(
                region == 0 || step >= region || same(&runs[1][i], &runs[2][i]),
                "{d:?} step {step}: key regions, one empty, differ from none"
            );
        }
    }
}
