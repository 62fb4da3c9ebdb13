//! The CUDA backend against the reference on odd shapes and on every supported weight type.
//! GPU tests print a SKIP line and pass where no driver or GPU is present; the compile test
//! needs only NVRTC (`libnvrtc.so`), and skips likewise without it.

use std::sync::Arc;

use smelt_cpu::{KvCache, ReferenceBackend};
use smelt_gguf::{GgmlType, Gguf, GgufWriter};
use smelt_graph::{fuse, FuseOptions, Graph, NodeId, WeightId};

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

#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
}

pub(crate) struct Weights {
    pub specs: Vec<CudaWeightSpec>,
    pub data: Vec<Vec<f32>>,
    pub rng: Rng,
    /// Whether `add` draws values (off when only the generated source is wanted).
    pub draw: bool,
}

impl Weights {
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

/// A llama-like layer (bias, partial RoPE, SiLU gate) and a Gemma-like one (NEOX, QK-norm,
/// post-norms, GELU gate, sliding window of 2), then a softcapped head tied to the embedding.
pub(crate) fn graph(d: &Dims, n: usize, w: &mut Weights) -> Graph {
    let mut g = Graph::new(n);
    let (qo, kvo) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let s = 1.0 / (d.n_embd as f32).sqrt();
    let tok = w.add(&mut g, d.n_vocab, d.n_embd, 1.0, 0.0);
    let e = g.embed(tok, "embd");
    let mut x = g.scale(e, 1.5, "embd_scaled");
    for il in 0..2 {
        let gemma = il == 1;
        let norm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(norm), 1e-5, d.n_embd, &format!("attn_norm.{il}"));
        let (wq, wk, wv) = (
            w.add(&mut g, qo, d.n_embd, s, 0.0),
            w.add(&mut g, kvo, d.n_embd, s, 0.0),
            w.add(&mut g, kvo, d.n_embd, s, 0.0),
        );
        let mut q = g.matmul(h, wq, &format!("q.{il}"));
        let mut k = g.matmul(h, wk, &format!("k.{il}"));
        let mut v = g.matmul(h, wv, &format!("v.{il}"));
        if gemma {
            let (qn, kn) = (
                w.add(&mut g, 1, d.head_dim, 0.2, 1.0),
                w.add(&mut g, 1, d.head_dim, 0.2, 1.0),
            );
            q = g.rms_norm(q, Some(qn), 1e-6, d.head_dim, &format!("q_norm.{il}"));
            k = g.rms_norm(k, Some(kn), 1e-6, d.head_dim, &format!("k_norm.{il}"));
        } else {
            let (bq, bk, bv) = (
                w.add(&mut g, 1, qo, 0.1, 0.0),
                w.add(&mut g, 1, kvo, 0.1, 0.0),
                w.add(&mut g, 1, kvo, 0.1, 0.0),
            );
            q = g.add_bias(q, bq, &format!("q_bias.{il}"));
            k = g.add_bias(k, bk, &format!("k_bias.{il}"));
            v = g.add_bias(v, bv, &format!("v_bias.{il}"));
        }
        let n_rot = if gemma { d.head_dim } else { d.n_rot };
        let q = g.rope(
            q,
            d.head_dim,
            n_rot,
            1e4,
            0.5,
            gemma,
            None,
            &format!("q_rope.{il}"),
        );
        let k = g.rope(
            k,
            d.head_dim,
            n_rot,
            1e4,
            0.5,
            gemma,
            None,
            &format!("k_rope.{il}"),
        );
        let window = gemma.then_some(2);
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let a = g.attention(
            q,
            k,
            v,
            il,
            d.n_head,
            d.n_head_kv,
            d.head_dim,
            scale,
            window,
            &format!("attn.{il}"),
        );
        let wo = w.add(&mut g, d.n_embd, qo, 1.0 / (qo as f32).sqrt(), 0.0);
        let mut o = g.matmul(a, wo, &format!("attn_out.{il}"));
        if gemma {
            let pn = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
            o = g.rms_norm(o, Some(pn), 1e-6, d.n_embd, &format!("attn_post_norm.{il}"));
        }
        x = g.add(x, o, &format!("attn_res.{il}"));
        let fnorm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(fnorm), 1e-5, d.n_embd, &format!("ffn_norm.{il}"));
        let (wg, wu) = (
            w.add(&mut g, d.n_ff, d.n_embd, s, 0.0),
            w.add(&mut g, d.n_ff, d.n_embd, s, 0.0),
        );
        let gate = g.matmul(h, wg, &format!("ffn_gate.{il}"));
        let up = g.matmul(h, wu, &format!("ffn_up.{il}"));
        let act: NodeId = if gemma {
            g.gelu_tanh(gate, &format!("ffn_gelu.{il}"))
        } else {
            g.silu(gate, &format!("ffn_silu.{il}"))
        };
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let wd = w.add(&mut g, d.n_embd, d.n_ff, 1.0 / (d.n_ff as f32).sqrt(), 0.0);
        let f = g.matmul(m, wd, &format!("ffn_down.{il}"));
        x = g.add(x, f, &format!("ffn_res.{il}"));
    }
    let on = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
    let x = g.rms_norm(x, Some(on), 1e-5, d.n_embd, "output_norm");
    let x = g.last_row(x, "last");
    let out = g.matmul(x, tok, "logits");
    let out = g.softcap(out, 3.0, "softcap");
    g.set_output(out);
    g
}

pub(crate) fn gguf(w: &Weights, dtype: GgmlType) -> Arc<Gguf> {
    let mut wr = GgufWriter::new();
    for (s, d) in w.specs.iter().zip(&w.data) {
        let [rows, cols] = s.shape;
        let t = if rows == 1 { GgmlType::F32 } else { dtype };
        let dims: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        wr.add_tensor(
            s.name.clone(),
            &dims,
            t,
            smelt_quant::quantize_to_vec(t, d).unwrap(),
        )
        .unwrap();
    }
    Arc::new(Gguf::from_bytes(wr.to_bytes().unwrap()).unwrap())
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
fn source(d: &Dims, n: usize, dtype: GgmlType) -> String {
    let mut w = Weights {
        specs: Vec::new(),
        data: Vec::new(),
        rng: Rng(7),
        draw: false,
    };
    let g = graph(d, n, &mut w);
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
        capacity: 8,
        layers: vec![
            (0, 8 * width as u64, width),
            (16 * width as u64, 24 * width as u64, width),
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
            compile(&source(&d, n, dtype), &format!("{dtype:?} n={n}"));
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
            let src = source(&big, 1, t);
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
        let g5 = graph(&d, 5, &mut w);
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
        let g1 = graph(&d, 1, &mut wsink);
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
