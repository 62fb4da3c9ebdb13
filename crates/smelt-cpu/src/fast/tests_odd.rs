//! The fused executor on odd shapes (3, 50, 783 …) against the reference, with F32 and F16
//! weights (any row length): every row op, partial RoPE, NEOX, per-head norms, biases,
//! residuals, GELU and SiLU gates, softcapping, sliding windows and GQA.

use std::sync::Arc;

use smelt_gguf::GgmlType;
use smelt_graph::FuseOptions;
use smelt_testutil::odd::{self, Weights};

use super::tests::Rng;
use super::{FastBackend, FastKvCache};
use crate::{KvCache, ReferenceBackend};

#[test]
fn odd_shapes_match_the_reference() {
    for (si, d) in odd::SHAPES.iter().enumerate() {
        for dtype in [GgmlType::F32, GgmlType::F16] {
            let mut rng = Rng(0x9e37_79b9 + si as u64);
            let mut w = Weights::new(|| rng.next());
            let tokens: Vec<u32> = (0..5).map(|i| (i * 2 % d.n_vocab) as u32).collect();
            let positions: Vec<u32> = (0..5).collect();
            let g = odd::graph(d, tokens.len(), &mut w, false);
            let file = w.gguf(dtype);
            // The reference gets the same (rounded) weights the file holds.
            let rw = w.dequantized(&file);
            let widths = [d.n_head_kv * d.head_dim; 2];
            let want = ReferenceBackend::new(rw, 1).execute(
                &g,
                &tokens,
                &positions,
                &mut KvCache::new(8, &widths),
            );
            for (threads, fusion) in [
                (1, FuseOptions::ALL),
                (3, FuseOptions::ALL),
                (2, FuseOptions::NONE),
            ] {
                let mut fb = FastBackend::new(Arc::clone(&file), &w.specs, threads).unwrap();
                fb.set_fusion(fusion);
                let mut kv = FastKvCache::new(8, &widths);
                let prog = fb.lower(&g, &kv).unwrap();
                let got = fb.execute(&prog, &tokens, &positions, &mut kv).unwrap();
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let diff = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // f16 keys and values round at ~5e-4 relative.
                assert!(
                    diff <= 2e-3 * scale,
                    "shape {si} {dtype:?} threads {threads} {fusion:?}: {diff} of {scale}"
                );
            }
        }
    }
}
