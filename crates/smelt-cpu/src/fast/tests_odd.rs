//! The fused executor on odd shapes (3, 50, 783 …) against the reference, with F32 and F16
//! weights (any row length): every row op, partial RoPE, NEOX, per-head norms, biases,
//! residuals, GELU and SiLU gates, softcapping, sliding windows and GQA.

use std::sync::Arc;

use smelt_gguf::{GgmlType, Gguf};
use smelt_graph::{FuseOptions, Graph, WeightId};
use smelt_testutil::odd::{self, AddWeight, Dims};

use super::tests::Rng;
use super::{FastBackend, FastKvCache, WeightSpec};
use crate::{KvCache, ReferenceBackend};

/// Weights declared in order, with random data kept for the reference and the GGUF.
struct Weights {
    specs: Vec<WeightSpec>,
    data: Vec<Vec<f32>>,
    rng: Rng,
}

impl AddWeight for Weights {
    fn add(
        &mut self,
        g: &mut Graph,
        rows: usize,
        cols: usize,
        scale: f32,
        offset: f32,
    ) -> WeightId {
        let id = WeightId(self.specs.len() as u32);
        g.declare_weight(id, [rows, cols]);
        self.specs.push(WeightSpec {
            name: format!("w{}", id.0),
            shape: [rows, cols],
        });
        self.data.push(
            (0..rows * cols)
                .map(|_| offset + scale * self.rng.next())
                .collect(),
        );
        id
    }
}

fn gguf(w: &Weights, dtype: GgmlType) -> Arc<Gguf> {
    let weights = w.specs.iter().zip(&w.data);
    odd::gguf(
        weights.map(|(s, d)| (s.name.as_str(), s.shape, d.as_slice())),
        dtype,
    )
}

#[test]
fn odd_shapes_match_the_reference() {
    let shapes = [
        Dims {
            n_embd: 50,
            n_head: 5,
            n_head_kv: 1,
            head_dim: 10,
            n_rot: 6,
            n_ff: 783,
            n_vocab: 3,
        },
        Dims {
            n_embd: 3,
            n_head: 2,
            n_head_kv: 2,
            head_dim: 6,
            n_rot: 2,
            n_ff: 50,
            n_vocab: 7,
        },
    ];
    for (si, d) in shapes.iter().enumerate() {
        for dtype in [GgmlType::F32, GgmlType::F16] {
            let mut w = Weights {
                specs: Vec::new(),
                data: Vec::new(),
                rng: Rng(0x9e37_79b9 + si as u64),
            };
            let tokens: Vec<u32> = (0..5).map(|i| (i * 2 % d.n_vocab) as u32).collect();
            let positions: Vec<u32> = (0..5).collect();
            let g = odd::graph(d, tokens.len(), &mut w, false);
            let file = gguf(&w, dtype);
            // The reference gets the same (rounded) weights the file holds.
            let rw = w
                .specs
                .iter()
                .map(|s| {
                    let t = file.tensor(&s.name).unwrap();
                    smelt_quant::dequantize_to_vec(t.dtype, file.tensor_data(t)).unwrap()
                })
                .collect();
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
