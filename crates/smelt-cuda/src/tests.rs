//! The CUDA backend against the reference on odd shapes and on every supported weight type.
//! GPU tests print a SKIP line and pass where no driver or GPU is present; the compile test
//! needs only NVRTC (`libnvrtc.so`), and skips likewise without it.

use std::sync::Arc;

use smelt_cpu::{KvCache, ReferenceBackend};
use smelt_gguf::{GgmlType, Gguf};
use smelt_graph::{fuse, FuseOptions, Graph, WeightId};
use smelt_testutil::odd::{self, AddWeight, Dims};

use crate::codegen::{self, KvInfo, WeightInfo};
use crate::{CudaBackend, CudaWeightSpec};

pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

pub(crate) struct Weights {
    pub specs: Vec<CudaWeightSpec>,
    pub data: Vec<Vec<f32>>,
    pub rng: Rng,
    /// Whether `add` draws values (off when only the generated source is wanted).
    pub draw: bool,
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
        self.specs.push(CudaWeightSpec {
            name: format!("w{}", id.0),
            shape: [rows, cols],
        });
        let n = if self.draw { rows * cols } else { 0 };
        self.data
            .push((0..n).map(|_| offset + scale * self.rng.next()).collect());
        id
    }
}

pub(crate) fn gguf(w: &Weights, dtype: GgmlType) -> Arc<Gguf> {
    let weights = w.specs.iter().zip(&w.data);
    odd::gguf(
        weights.map(|(s, d)| (s.name.as_str(), s.shape, d.as_slice())),
        dtype,
    )
}

const ODD: [Dims; 2] = [
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
const QUANT: Dims = Dims {
    n_embd: 256,
    n_head: 4,
    n_head_kv: 2,
    head_dim: 64,
    n_rot: 64,
    n_ff: 768,
    n_vocab: 300,
};
const QUANT_TYPES: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn cases() -> Vec<(Dims, GgmlType)> {
    let mut v = Vec::new();
    for d in ODD {
        v.push((d, GgmlType::F32));
        v.push((d, GgmlType::F16));
    }
    for t in QUANT_TYPES {
        v.push((QUANT, t));
    }
    v
}

fn gpu() -> bool {
    if crate::available() {
        return true;
    }
    eprintln!("SKIP: no CUDA driver or GPU on this machine; the CUDA kernels were not run");
    false
}

/// The generated source of `d`'s test graph for `n` tokens, every matrix of type `dtype`.
fn source(d: &Dims, n: usize, dtype: GgmlType, capacity: usize) -> String {
    let mut w = Weights {
        specs: Vec::new(),
        data: Vec::new(),
        rng: Rng(7),
        draw: false,
    };
    let g = odd::graph(d, n, &mut w, true);
    let ty = |s: &CudaWeightSpec| {
        if s.shape[0] == 1 {
            GgmlType::F32
        } else {
            dtype
        }
    };
    let mut off = 0;
    let winfo: Vec<WeightInfo> = w
        .specs
        .iter()
        .map(|s| {
            let row_bytes = crate::layout::dev_row_bytes(ty(s), s.shape[1]).unwrap();
            let wi = WeightInfo {
                off,
                dtype: ty(s),
                row_bytes,
            };
            off += (row_bytes * s.shape[0] as u64).div_ceil(256) * 256;
            wi
        })
        .collect();
    let width = d.n_head_kv * d.head_dim;
    let kv = KvInfo {
        capacity,
        layers: vec![
            (0, (capacity * width) as u64, width),
            (
                (2 * capacity * width) as u64,
                (3 * capacity * width) as u64,
                width,
            ),
        ],
    };
    codegen::generate(&fuse(&g), &winfo, &kv, 132).unwrap().src
}

/// Generated kernels compile with NVRTC for sm_90 (no GPU needed, only libnvrtc). With
/// `SMELT_CUDA_DUMP=DIR` the decode source of 8B-like shapes is written there too, for
/// reading the resource report and SASS off the device (tools/cuda/sass.py).
#[test]
fn generated_kernels_compile() {
    // SAFETY: only checks whether the NVRTC library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        eprintln!("SKIP: libnvrtc not found; generated CUDA source was not compiled");
        return;
    }
    let compile = |src: &str, what: &str| {
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec!["--gpu-architecture=sm_90".into(), "-std=c++17".into()],
            ..Default::default()
        };
        if let Err(e) = cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
            panic!("{what}: {e:?}");
        }
    };
    for (d, dtype) in cases() {
        for n in [1usize, 5] {
            // A long cache only changes decode attention (its split count).
            for cap in if n == 1 { vec![8, 4096] } else { vec![8] } {
                compile(
                    &source(&d, n, dtype, cap),
                    &format!("{dtype:?} n={n} capacity={cap}"),
                );
            }
        }
    }
    if let Ok(dir) = std::env::var("SMELT_CUDA_DUMP") {
        let big = Dims {
            n_embd: 4096,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_rot: 128,
            n_ff: 14336,
            n_vocab: 1000,
        };
        for t in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
            let src = source(&big, 1, t, 4096);
            std::fs::write(format!("{dir}/decode_{t:?}.cu"), &src).unwrap();
        }
    }
}

fn compare(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{what}: non-finite output"
    );
    assert!(
        diff <= tol * scale,
        "{what}: max diff {diff} of scale {scale}"
    );
}

/// The CPU fast path's decode logits for steps 5..8 after a 5-token prefill: like the GPU's
/// decode it rounds activations to 8 bits for quantised weights, so its distance from the
/// reference is the yardstick for the GPU's.
fn fast_decode(
    file: &Arc<Gguf>,
    specs: &[CudaWeightSpec],
    g5: &Graph,
    g1: &Graph,
    tokens: &[u32],
    widths: &[usize],
) -> Vec<Vec<f32>> {
    use smelt_cpu::{FastBackend, FastKvCache, WeightSpec};
    let specs: Vec<WeightSpec> = specs
        .iter()
        .map(|s| WeightSpec {
            name: s.name.clone(),
            shape: s.shape,
        })
        .collect();
    let mut fb = FastBackend::new(Arc::clone(file), &specs, 2).unwrap();
    let mut kv = FastKvCache::new(16, widths);
    let p5 = fb.lower(g5, &kv).unwrap();
    let p1 = fb.lower(g1, &kv).unwrap();
    fb.execute(&p5, &tokens[..5], &[0, 1, 2, 3, 4], &mut kv)
        .unwrap();
    (5..8u32)
        .map(|step| {
            let t = &tokens[step as usize..step as usize + 1];
            fb.execute(&p1, t, &[step], &mut kv).unwrap().to_vec()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Prefill of 5 tokens then 3 decode steps (graph replays), against the reference.
#[test]
fn matches_reference_on_odd_shapes_and_quant_types() {
    if !gpu() {
        return;
    }
    for (ci, (d, dtype)) in cases().into_iter().enumerate() {
        let mut w = Weights {
            specs: Vec::new(),
            data: Vec::new(),
            rng: Rng(0x9e37_79b9 + ci as u64),
            draw: true,
        };
        let g5 = odd::graph(&d, 5, &mut w, true);
        let file = gguf(&w, dtype);
        let rw: Vec<Vec<f32>> = w
            .specs
            .iter()
            .map(|s| {
                let t = file.tensor(&s.name).unwrap();
                smelt_quant::dequantize_to_vec(t.dtype, file.tensor_data(t)).unwrap()
            })
            .collect();
        let widths = [d.n_head_kv * d.head_dim; 2];
        let reference = ReferenceBackend::new(rw, 1);
        let mut rkv = KvCache::new(16, &widths);
        let tokens: Vec<u32> = (0..8).map(|i| ((i * 2 + 1) % d.n_vocab) as u32).collect();
        let want5 = reference.execute(&g5, &tokens[..5], &[0, 1, 2, 3, 4], &mut rkv);
        let mut wsink = Weights {
            specs: Vec::new(),
            data: Vec::new(),
            rng: Rng(1),
            draw: true,
        };
        let g1 = odd::graph(&d, 1, &mut wsink, true);
        let quantised = !matches!(dtype, GgmlType::F32 | GgmlType::F16);
        let fast = if quantised {
            fast_decode(&file, &w.specs, &g5, &g1, &tokens, &widths)
        } else {
            Vec::new()
        };
        for fusion in [FuseOptions::ALL, FuseOptions::NONE] {
            let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
            cb.set_fusion(fusion);
            let mut kv = cb.new_kv(16, &widths).unwrap();
            let p5 = cb.lower(&g5, &kv).unwrap();
            let p1 = cb.lower(&g1, &kv).unwrap();
            let got = cb
                .execute(&p5, &tokens[..5], &[0, 1, 2, 3, 4], &mut kv)
                .unwrap()
                .to_vec();
            // Prefill multiplies f16-rounded activations and weights on tensor cores.
            compare(
                &got,
                &want5,
                2e-2,
                &format!("case {ci} {dtype:?} {fusion:?} prefill"),
            );
            let mut rkv2 = rkv.clone();
            for step in 5..8u32 {
                let want = reference.execute(
                    &g1,
                    &tokens[step as usize..step as usize + 1],
                    &[step],
                    &mut rkv2,
                );
                let got = cb
                    .execute(
                        &p1,
                        &tokens[step as usize..step as usize + 1],
                        &[step],
                        &mut kv,
                    )
                    .unwrap();
                // Quantised weights: decode rounds activations to 8 bits, as the CPU fast path
                // does, and attends over keys and values from the f16 tensor-core prefill; allow
                // twice the fast path's own distance from the reference (an indexing bug gives
                // errors of the order of the logits themselves).
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
                let tol = if quantised {
                    let fd = max_diff(&fast[step as usize - 5], &want);
                    eprintln!(
                        "case {ci} {dtype:?} decode {step}: gpu {} cpu fast {fd} of {scale}",
                        max_diff(got, &want)
                    );
                    (2.0 * fd / scale).max(2e-2)
                } else {
                    2e-2
                };
                compare(
                    got,
                    &want,
                    tol,
                    &format!("case {ci} {dtype:?} {fusion:?} decode {step}"),
                );
            }
            let st = cb.stats();
            assert_eq!(st.executions, 4);
            if fusion == FuseOptions::ALL {
                assert_eq!(
                    st.submissions - (p5.kernels() as u64 + 3),
                    3,
                    "one submission per decode step"
                );
            }
        }
    }
}
