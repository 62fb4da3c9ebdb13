//! What the code generator emits for the test graphs: launches, labels and sources, compiled
//! with NVRTC where it loads (no GPU needed).

use super::*;
use smelt_graph::NodeId;
use smelt_testutil::odd::AddWeight;

mod attention;
mod batch_mma;
mod greedy;
mod prologue;

/// The generated program of `d`'s test graph for `n` tokens, every matrix of type `dtype`,
/// prefill matmuls through cuBLAS steps or the mma.sync kernel.
fn generated(d: &Dims, n: usize, dtype: GgmlType, cublas: bool) -> codegen::Generated {
    generated_with(d, n, dtype, cublas, 8)
}

/// `generated` with a KV cache of `capacity` positions (decode attention splits by it).
fn generated_with(
    d: &Dims,
    n: usize,
    dtype: GgmlType,
    cublas: bool,
    capacity: usize,
) -> codegen::Generated {
    generated_graph(d, n, dtype, cublas, capacity, false)
}

/// `generated_with` of the plain test graph or (`qwen`) its Qwen-like variant.
fn generated_graph(
    d: &Dims,
    n: usize,
    dtype: GgmlType,
    cublas: bool,
    capacity: usize,
    qwen: bool,
) -> codegen::Generated {
    let opts = codegen::GenOptions {
        cublas,
        ..Default::default()
    };
    generated_kv(d, n, dtype, capacity, qwen, None, opts)
}

/// `generated_graph` on a paged KV pool of `capacity` positions: a batch step of `n`
/// sequences (`Some(true)`, `odd::graph_batch`) or one sequence's `n` rows (`Some(false)`).
fn generated_paged(
    d: &Dims,
    n: usize,
    dtype: GgmlType,
    qwen: bool,
    batch: bool,
) -> codegen::Generated {
    let opts = codegen::GenOptions {
        cublas: true,
        ..Default::default()
    };
    generated_kv(d, n, dtype, 128, qwen, Some(batch), opts)
}

fn generated_kv(
    d: &Dims,
    n: usize,
    dtype: GgmlType,
    capacity: usize,
    qwen: bool,
    paged: Option<bool>,
    opts: codegen::GenOptions,
) -> codegen::Generated {
    let mut w = Weights::new(|| 0.0);
    w.draw = false;
    let g = if paged == Some(true) {
        odd::graph_batch(d, n, &mut w, qwen)
    } else if qwen {
        odd::graph_qwen(d, n, &mut w, true)
    } else {
        odd::graph(d, n, &mut w, true)
    };
    generated_graph_of(&g, &w.specs, d, dtype, capacity, 2, paged, opts)
}

/// The generated program of graph `g` over weights `w` (every matrix of type `dtype`) with a
/// KV cache of `layers` layers of `capacity` positions.
#[allow(clippy::too_many_arguments)]
fn generated_graph_of(
    g: &Graph,
    specs: &[WeightSpec],
    d: &Dims,
    dtype: GgmlType,
    capacity: usize,
    layers: usize,
    paged: Option<bool>,
    opts: codegen::GenOptions,
) -> codegen::Generated {
    let ty = |s: &WeightSpec| {
        if s.shape[0] == 1 {
            GgmlType::F32
        } else {
            dtype
        }
    };
    let mut off = 0;
    let winfo: Vec<WeightInfo> = specs
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
        paged: paged.is_some(),
        layers: (0..layers as u64)
            .map(|l| {
                let at = (2 * l * (capacity * width) as u64, (capacity * width) as u64);
                (at.0, at.0 + at.1, width)
            })
            .collect(),
    };
    codegen::generate(&fuse(g), &winfo, &kv, 132, 9, opts).unwrap()
}

/// A llama-like graph of `layers` identical layers (RMSNorm, QKV, RoPE, attention, output
/// projection, SiLU-gated MLP, residuals) and an untied head, over the last of `n` rows.
fn llama_graph(d: &Dims, layers: usize, n: usize, w: &mut impl AddWeight) -> Graph {
    fn mm(
        g: &mut Graph,
        w: &mut impl AddWeight,
        x: NodeId,
        rows: usize,
        cols: usize,
        name: &str,
    ) -> NodeId {
        let wt = w.add(g, rows, cols, 0.1, 0.0);
        g.matmul(x, wt, name)
    }
    let mut g = Graph::new(n);
    let (qo, kvo) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
    let tok = w.add(&mut g, d.n_vocab, d.n_embd, 1.0, 0.0);
    let mut x = g.embed(tok, "embd");
    for il in 0..layers {
        let norm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(norm), 1e-5, d.n_embd, &format!("attn_norm.{il}"));
        let q = mm(&mut g, w, h, qo, d.n_embd, &format!("q.{il}"));
        let k = mm(&mut g, w, h, kvo, d.n_embd, &format!("k.{il}"));
        let v = mm(&mut g, w, h, kvo, d.n_embd, &format!("v.{il}"));
        let rope = |g: &mut Graph, x, name: &str| {
            let name = format!("{name}.{il}");
            g.rope(x, d.head_dim, d.n_rot, 1e4, 1.0, false, None, &name)
        };
        let (q, k) = (rope(&mut g, q, "q_rope"), rope(&mut g, k, "k_rope"));
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
            None,
            &format!("attn.{il}"),
        );
        let o = mm(&mut g, w, a, d.n_embd, qo, &format!("attn_out.{il}"));
        x = g.add(x, o, &format!("attn_res.{il}"));
        let fnorm = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
        let h = g.rms_norm(x, Some(fnorm), 1e-5, d.n_embd, &format!("ffn_norm.{il}"));
        let gate = mm(&mut g, w, h, d.n_ff, d.n_embd, &format!("ffn_gate.{il}"));
        let up = mm(&mut g, w, h, d.n_ff, d.n_embd, &format!("ffn_up.{il}"));
        let act = g.silu(gate, &format!("ffn_silu.{il}"));
        let m = g.mul(act, up, &format!("ffn_mul.{il}"));
        let f = mm(&mut g, w, m, d.n_embd, d.n_ff, &format!("ffn_down.{il}"));
        x = g.add(x, f, &format!("ffn_res.{il}"));
    }
    let on = w.add(&mut g, 1, d.n_embd, 0.2, 1.0);
    let x = g.rms_norm(x, Some(on), 1e-5, d.n_embd, "output_norm");
    let x = g.last_rows(x, 1, "last");
    let head = w.add(&mut g, d.n_vocab, d.n_embd, 0.1, 0.0);
    let out = g.matmul(x, head, "logits");
    g.set_output(out);
    g
}

/// Identical layers share their kernels (the code generator renumbers each body's
/// temporaries, which carry node ids): a 30-layer decode program compiles one layer's kernels
/// plus the first layer's (the embedding row) and the head, whatever the depth. No GPU needed.
#[test]
fn identical_layers_share_kernels() {
    let (d, k) = (SMOLLM2, SMOLLM2_Q4K);
    for (d, t, n) in [
        (d, GgmlType::Q8_0, 1),
        (k, GgmlType::Q4_K, 1),
        (d, GgmlType::Q8_0, 4),
    ] {
        let mut counts = Vec::new();
        for layers in [3, 30] {
            let mut w = Weights::new(|| 0.0);
            w.draw = false;
            let g = llama_graph(&d, layers, n, &mut w);
            let paged = (n > 1).then_some(true);
            let opts = codegen::GenOptions::default();
            let gen = generated_graph_of(&g, &w.specs, &d, t, 64, layers, paged, opts);
            let kernels = gen.src.matches("extern \"C\" __global__").count();
            let launches = gen.launches.len();
            eprintln!(
                "{t:?} x{n}, {layers} layers: {launches} launches, {kernels} kernels, {} bytes",
                gen.src.len()
            );
            assert!(
                launches >= 5 * layers,
                "{t:?} {layers} layers: {launches} launches"
            );
            counts.push(kernels);
        }
        assert_eq!(
            counts[0], counts[1],
            "{t:?} x{n}: kernels grow with the depth"
        );
    }
}

/// The one-token decode program of `d` as one persistent kernel.
fn generated_persistent(
    d: &Dims,
    dtype: GgmlType,
    capacity: usize,
    qwen: bool,
) -> codegen::Generated {
    let opts = codegen::GenOptions {
        cublas: true,
        persistent: true,
        ..Default::default()
    };
    generated_kv(d, 1, dtype, capacity, qwen, None, opts)
}

fn source(d: &Dims, n: usize, dtype: GgmlType, cublas: bool) -> String {
    generated(d, n, dtype, cublas).src
}

const LLAMA_8B: Dims = Dims {
    n_embd: 4096,
    n_head: 32,
    n_head_kv: 8,
    head_dim: 128,
    n_rot: 128,
    n_ff: 14336,
    n_vocab: 128256,
};

/// A SmolLM2-135M-shaped layer with a small vocabulary (576-wide rows: 32-value blocks).
const SMOLLM2: Dims = Dims {
    n_embd: 576,
    n_head: 9,
    n_head_kv: 3,
    head_dim: 64,
    n_rot: 64,
    n_ff: 1536,
    n_vocab: 1000,
};

/// [`SMOLLM2`] narrowed so that every row is whole 256-value K-quant blocks.
const SMOLLM2_Q4K: Dims = Dims {
    n_embd: 512,
    n_head: 8,
    n_head_kv: 2,
    ..SMOLLM2
};

const LLAMA_1B: Dims = Dims {
    n_embd: 2048,
    n_head: 32,
    n_head_kv: 8,
    head_dim: 64,
    n_rot: 64,
    n_ff: 8192,
    n_vocab: 128256,
};

/// [`LLAMA_1B`] with a small vocabulary (the head's rows are not what these tests read).
const LLAMA_1B_V1000: Dims = Dims {
    n_vocab: 1000,
    ..LLAMA_1B
};

/// Whether NVRTC loads here (else a message: generated source is not compiled).
fn nvrtc_present() -> bool {
    // SAFETY: only checks whether the NVRTC library can be opened.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        eprintln!("SKIP: libnvrtc not found; generated CUDA source was not compiled");
    }
    present
}

/// Compile generated source with NVRTC for sm_90, as the backend does on an H100.
/// `src` compiled as the backend compiles it on sm_90 by default: with programmatic dependent
/// launch, the next kernel let in at each block's end. Nothing without NVRTC.
fn compile_with_pdl(src: &str, what: &str) {
    if nvrtc_present() {
        compile(
            &format!("#define SMELT_PDL 1\n#define SMELT_PDL_AT 2\n{src}"),
            what,
        );
    }
}

/// The decode kernels (`dk<i>`) of a generated source, each from its signature on.
fn decode_kernels(src: &str) -> impl Iterator<Item = &str> {
    src.split("extern \"C\" __global__")
        .filter(|k| k.contains(") dk"))
}

/// The (first) cluster decode attention kernel of a generated source, from its signature on.
fn cluster_attention(src: &str) -> &str {
    src.split("extern \"C\" __global__")
        .find(|k| k.contains("__cluster_dims__"))
        .expect("a cluster attention kernel")
}

fn compile(src: &str, what: &str) {
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec!["--gpu-architecture=sm_90".into(), "-std=c++17".into()],
        ..Default::default()
    };
    if let Err(e) = cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        panic!("{what}: {e:?}");
    }
}

/// Generated kernels compile with NVRTC for sm_90 (no GPU needed, only libnvrtc). With
/// `SMELT_CUDA_DUMP=DIR` the decode source of 8B-like shapes is written there too, for
/// reading the resource report and SASS off the device (tools/cuda/sass.py).
#[test]
fn generated_kernels_compile() {
    if !nvrtc_present() {
        return;
    }
    for (d, dtype) in cases() {
        compile(&source(&d, 1, dtype, false), &format!("{dtype:?} n=1"));
        let long = generated_with(&d, 1, dtype, false, 4096).src;
        compile(&long, &format!("{dtype:?} n=1 capacity=4096"));
        // As the backend compiles for sm_90: with programmatic dependent launch, the next
        // kernel let in at each block's end (the default) or after its last weight loads.
        compile_with_pdl(
            &source(&d, 5, dtype, true),
            &format!("{dtype:?} n=5 with PDL"),
        );
        compile(
            &format!("#define SMELT_PDL 1\n#define SMELT_PDL_AT 1\n{long}"),
            &format!("{dtype:?} n=1 capacity=4096 with PDL (mid)"),
        );
        for cublas in [false, true] {
            let what = format!("{dtype:?} n=5 cublas={cublas}");
            compile(&source(&d, 5, dtype, cublas), &what);
        }
    }
    for d in long_context_dims() {
        let src = generated_with(&d, 1, GgmlType::F16, false, LONG_CAPACITY).src;
        compile(&src, &format!("long context decode {d:?}"));
    }
    for t in [GgmlType::Q8_0, GgmlType::Q4_K] {
        let src = generated_graph(&QUANT, 1, t, false, 64, true).src;
        compile(&src, &format!("{t:?} decode, NEOX RoPE pairs"));
    }
    // A paged KV pool: batch steps of 1, 3 and 8 sequences (decode gemv kernels over every
    // row) and one sequence's prefill, every quantised type; the Qwen-like layer too.
    for t in QUANT_TYPES {
        for (n, qwen) in [(1, false), (3, false), (8, false), (3, true)] {
            let g = generated_paged(&QUANT, n, t, qwen, true);
            assert!(g.decode, "{t:?} batch of {n}: decode kernels");
            compile(&g.src, &format!("{t:?} paged batch of {n} qwen={qwen}"));
        }
        let g = generated_paged(&QUANT, 5, t, false, false);
        assert!(!g.decode, "{t:?} prefill of 5 rows: the prefill path");
        compile(&g.src, &format!("{t:?} paged prefill of 5"));
    }
    // One-token decode as one persistent kernel: every quantised type, both layers, and the
    // long-context shapes (head sizes 64-256) on float weights.
    for t in QUANT_TYPES {
        for qwen in [false, true] {
            let g = generated_persistent(&QUANT, t, 320, qwen);
            assert!(g.persistent && g.launches.len() == 1, "{t:?}: one kernel");
            compile(&g.src, &format!("{t:?} persistent qwen={qwen}"));
        }
    }
    for d in long_context_dims() {
        let g = generated_persistent(&d, GgmlType::F16, LONG_CAPACITY, false);
        compile(&g.src, &format!("long context persistent {d:?}"));
    }
    // Float weights take the prefill path for a batch.
    assert!(!generated_paged(&QUANT, 3, GgmlType::F16, false, true).decode);
    // Every dequantisation kernel (Q5_1 and BF16 are in no case above).
    let defs: String = ALL_TYPES
        .iter()
        .map(|&t| format!("DEF_DEQ16({})\n", codegen::type_suffix(t).unwrap()))
        .collect();
    compile(
        &format!("{}{defs}", codegen::PRELUDE),
        "deq16 of every type",
    );
    // With SMELT_CUDA_DUMP=DIR: decode sources of 8B shapes, and prefill (512 tokens, cuBLAS)
    // sources of 1B and 8B shapes for every type, compiled here too.
    if let Ok(dir) = std::env::var("SMELT_CUDA_DUMP") {
        let big = Dims {
            n_vocab: 1000,
            ..LLAMA_8B
        };
        let src = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, true, 4096).src;
        std::fs::write(format!("{dir}/decode_smollm2_Q8_0.cu"), &src).unwrap();
        for t in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
            let src = generated_with(&big, 1, t, true, 4096).src;
            std::fs::write(format!("{dir}/decode_{t:?}.cu"), &src).unwrap();
            let small = LLAMA_1B_V1000;
            let src = generated_with(&small, 1, t, true, 4096).src;
            compile(&src, &format!("decode 1b {t:?}"));
            std::fs::write(format!("{dir}/decode_1b_{t:?}.cu"), &src).unwrap();
            let src = generated_persistent(&small, t, 4096, false).src;
            std::fs::write(format!("{dir}/persistent_1b_{t:?}.cu"), &src).unwrap();
        }
        // Batch steps of 2, 4 and 8 sequences on a paged pool (registers and spills:
        // tools/cuda/sass.py).
        for n in [2, 4, 8] {
            let small = LLAMA_1B_V1000;
            let src = generated_paged(&small, n, GgmlType::Q4_K, false, true).src;
            compile(&src, &format!("batch of {n}, 1b Q4_K"));
            std::fs::write(format!("{dir}/batch_1b_{n}.cu"), &src).unwrap();
        }
        for (name, d) in [("1b", LLAMA_1B), ("8b", LLAMA_8B)] {
            for t in ALL_TYPES {
                let src = source(&d, 512, t, true);
                compile(&src, &format!("prefill {name} {t:?}"));
                std::fs::write(format!("{dir}/prefill_{name}_{t:?}.cu"), &src).unwrap();
            }
        }
    }
}

/// v26: with `rows_together` a one-token bundle of several weight rows (gate and up, a RoPE
/// pair's two rows) takes them through `gemv8m`, and the source compiles (with NVRTC where
/// present); without it, none does.
#[test]
fn rows_together_use_gemv8m() {
    for (d, t) in [
        (SMOLLM2, GgmlType::Q8_0),
        (LLAMA_1B_V1000, GgmlType::Q4_K),
        (LLAMA_1B_V1000, GgmlType::Q6_K),
    ] {
        let call = format!("gemv8m_{}<", codegen::type_suffix(t).unwrap());
        let plain = generated_with(&d, 1, t, true, 256);
        assert!(!plain.src.contains(&call), "{t:?}: off by default");
        for n in [2, 3] {
            let opts = codegen::GenOptions {
                cublas: true,
                rows_together: n,
                ..Default::default()
            };
            let g = generated_kv(&d, 1, t, 256, false, None, opts);
            assert!(
                g.src.contains(&format!("{call}2>(")),
                "{t:?}: {n} rows together"
            );
            compile_with_pdl(&g.src, &format!("{t:?}, {n} rows together"));
            // With SMELT_CUDA_DUMP=DIR the source, for its SASS (tools/cuda/sass.py).
            if let Ok(dir) = std::env::var("SMELT_CUDA_DUMP") {
                let name = format!("{dir}/decode_rows{n}_{}_{t:?}.cu", d.n_embd);
                std::fs::write(name, &g.src).unwrap();
            }
        }
    }
}

/// The Qwen-like layer's q and k (NEOX RoPE, biases, no QK-norm) finish in the computing warp
/// as rotated pairs (i, i + n_rot / 2); the llama-like layer's as (2i, 2i + 1). No GPU needed.
#[test]
fn rope_pairs_are_generated_for_both_rotations() {
    let src = generated_graph(&QUANT, 1, GgmlType::Q8_0, false, 64, true).src;
    let half = QUANT.n_rot / 2;
    assert!(
        src.contains(&format!("k < {half} ? k : ")),
        "NEOX pair columns missing"
    );
    assert!(src.contains("hd0 + 2 * k"), "adjacent pair columns missing");
}

/// cuBLAS prefill steps: every matmul kernel's weight stack is dequantised into the shared
/// scratch and multiplied in GEMMs whose column chunks tile the output exactly; the 8B output
/// head (128256 x 4096 values, past the scratch cap) is split. No GPU needed.
#[test]
fn cublas_steps_tile_each_weight_stack() {
    let g = generated(&LLAMA_8B, 7, GgmlType::Q4_K, true);
    let gemms: Vec<crate::cublas::GemmCall> = g
        .launches
        .iter()
        .filter_map(|l| match &l.work {
            codegen::Work::Gemm(c) => Some(*c),
            codegen::Work::Kernel { .. } => None,
        })
        .collect();
    let mut i = 0;
    let mut stacks = Vec::new();
    while i < gemms.len() {
        // Chunks of one stack: same output row stride, contiguous columns.
        let first = gemms[i];
        let mut cols = 0;
        while i < gemms.len() && gemms[i].ldc == first.ldc && gemms[i].c_off == first.c_off + cols {
            let c = gemms[i];
            assert_eq!((c.ldx, c.ldw), (c.k.div_ceil(8) * 8, c.k.div_ceil(8) * 8));
            assert!(
                c.n * c.ldw <= 1 << 27,
                "chunk of {}x{} past the cap",
                c.n,
                c.k
            );
            cols += c.n;
            i += 1;
            if cols == first.ldc {
                break;
            }
        }
        assert_eq!(cols, first.ldc, "stack of width {} not tiled", first.ldc);
        stacks.push((first.m, first.ldc, first.k));
    }
    // Per layer: q (4096) + k, v (1024 each) in one stack; wo; gate+up; down.
    let layer = [
        (7, 4096 + 2 * 1024, 4096),
        (7, 4096, 4096),
        (7, 2 * 14336, 4096),
        (7, 4096, 14336),
    ];
    let mut want: Vec<_> = layer.iter().chain(&layer).copied().collect();
    want.push((1, 128256, 4096));
    assert_eq!(stacks, want);
    let head = gemms.iter().filter(|c| c.ldc == 128256).count();
    assert_eq!(head, 128256usize.div_ceil((1 << 27) / 4096));
    // Each GEMM step is preceded by the dequantisation of its chunk, labelled for profiles.
    assert!(g
        .launches
        .iter()
        .any(|l| l.label == "dequant q4_k 14336x4096"));
    assert!(g.launches.iter().any(|l| l.label == "cublas 7x28672x4096"));
}

/// One-token decode with the attention tail on (`attn_tail` 1024): the QKV kernel's tail computes the attention of llama- and Qwen-like
/// layers (not the Gemma-like layer's: QK-norm tiles); a cache of at most 1024 positions
/// launches no attention kernel for them, a longer one launches it guarded (it returns below
/// 1024 positions). No GPU needed.
#[test]
fn attention_tail_replaces_short_context_attention() {
    let labels = |g: &codegen::Generated| -> Vec<String> {
        g.launches.iter().map(|l| l.label.clone()).collect()
    };
    let attn = |g: &codegen::Generated| {
        labels(g)
            .iter()
            .filter(|l| l.starts_with("attention"))
            .count()
    };
    let gen = |n, t, cap, qwen, paged| {
        let opts = codegen::GenOptions {
            cublas: true,
            attn_tail: 1024,
            ..Default::default()
        };
        generated_kv(&QUANT, n, t, cap, qwen, paged, opts)
    };
    let tails = |g: &codegen::Generated| {
        labels(g)
            .iter()
            .filter(|l| l.ends_with("+ attention"))
            .count()
    };
    for t in [GgmlType::Q8_0, GgmlType::Q4_K] {
        // Qwen-like second layer: both layers' attention in a tail.
        let short = gen(1, t, 1024, true, None);
        assert_eq!(
            (tails(&short), attn(&short)),
            (2, 0),
            "{t:?} 1024 positions: {:?}",
            labels(&short)
        );
        let long = gen(1, t, 1025, true, None);
        assert_eq!((tails(&long), attn(&long)), (2, 2), "{t:?} 1025 positions");
        assert!(
            // (the one-token position is read once, before the wait, as `posr`: v15b)
            long.src.contains("if (posr < 1024u) return;"),
            "{t:?}: the attention kernels return below 1024 positions"
        );
        // Gemma-like second layer (QK-norm tiles): its attention stays a kernel.
        let gemma = gen(1, t, 64, false, None);
        assert_eq!(
            (tails(&gemma), attn(&gemma)),
            (1, 1),
            "{t:?} Gemma-like layer"
        );
        // Several tokens, and batch steps on a paged pool: no tail.
        assert_eq!(tails(&gen(5, t, 64, true, None)), 0);
        assert_eq!(tails(&gen(3, t, 128, true, Some(true))), 0);
        // Off by default.
        assert_eq!(tails(&generated_graph(&QUANT, 1, t, false, 64, true)), 0);
    }
}

/// The renumbering behind kernel dedup touches only `e<digits>` temporaries (with their
/// suffixes), never float exponents or other identifiers. No GPU needed.
#[test]
fn canonical_renumbers_only_temporaries() {
    let body = "const float e41 = 1e-5f * x; float e7_a = e41, e7_b = se12 + e41b; ke3 = 2.5e3f;";
    assert_eq!(
        codegen::canonical(body),
        "const float e0 = 1e-5f * x; float e1_a = e0, e1_b = se12 + e0b; ke3 = 2.5e3f;"
    );
}

/// Single-row decode matmuls take one 512-thread block per SM (128 registers) over rows of at
/// least 4096 values and two below: the 1B-like shapes' 8192-wide down projection and the
/// 8B-like shapes' every matmul run one, the 1B's 2048-wide ones two. No GPU needed.
#[test]
fn long_decode_rows_take_one_block_per_sm() {
    for d in [LLAMA_1B, LLAMA_8B] {
        let d = Dims { n_vocab: 1000, ..d };
        let gen = generated_with(&d, 1, GgmlType::Q4_K, true, 64);
        let mut seen = [0usize; 2];
        for l in &gen.launches {
            let codegen::Work::Kernel { func, .. } = &l.work else {
                continue;
            };
            let Some(kdim) = l
                .label
                .strip_prefix("decode mm ")
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|s| s.split('x').nth(1))
                .and_then(|k| k.parse::<usize>().ok())
            else {
                continue;
            };
            let one = kdim >= 4096;
            let want = if one { "512, 1" } else { "512, 2" };
            let def = format!("__launch_bounds__({want}) {func}(");
            assert!(gen.src.contains(&def), "{}: {func} wants {want}", l.label);
            seen[usize::from(one)] += 1;
        }
        // The 1B: two blocks for its 2048-wide rows, one for the down projection; the 8B: one.
        let want = if d.n_embd < 4096 { [1, 1] } else { [0, 1] };
        for i in 0..2 {
            assert_eq!(
                seen[i] > 0,
                want[i] > 0,
                "{seen:?} launches of two / one blocks"
            );
        }
    }
}

/// With the output projection folded into decode attention (`GenOptions::wo_fold`,
/// codegen/attn_wo.rs), a one-token step launches four kernels a layer, each layer's attention
/// ending in its projection; several rows keep five. The sources compile with NVRTC where it
/// loads (no GPU needed).
#[test]
fn output_projection_folds_into_decode_attention() {
    let (d, k) = (SMOLLM2, SMOLLM2_Q4K);
    let opts = codegen::GenOptions {
        wo_fold: true,
        ..Default::default()
    };
    for (d, t, n) in [
        (d, GgmlType::Q8_0, 1),
        (k, GgmlType::Q4_K, 1),
        (d, GgmlType::Q8_0, 4),
    ] {
        let layers = 3;
        let mut w = Weights::new(|| 0.0);
        w.draw = false;
        let g = llama_graph(&d, layers, n, &mut w);
        let paged = (n > 1).then_some(true);
        let gen = generated_graph_of(&g, &w.specs, &d, t, 256, layers, paged, opts);
        let folded = gen
            .launches
            .iter()
            .filter(|l| l.label.ends_with("+ wo"))
            .count();
        if n == 1 {
            assert_eq!(gen.launches.len(), 4 * layers + 1, "{t:?}: launches");
            assert_eq!(folded, layers, "{t:?}: folded");
            if nvrtc_present() {
                compile(&gen.src, &format!("folded projection {t:?}"));
            }
        } else {
            assert_eq!(folded, 0, "{t:?} x{n}: folded");
        }
    }
}

/// The distinct kernels a program launches.
fn kernel_funcs(g: &codegen::Generated) -> std::collections::HashSet<&str> {
    g.launches
        .iter()
        .filter_map(|l| match &l.work {
            codegen::Work::Kernel { func, .. } => Some(func.as_str()),
            _ => None,
        })
        .collect()
}

/// A traced decode program (`GenOptions::trace`, `SMELT_CUDA_TRACE=1`): every launch gets its
/// stamps' arena offset and block counters as two more parameters, every kernel wraps its body
/// in the stamps, and the source compiles with NVRTC where it loads. No GPU needed.
#[test]
fn traced_decode_stamps_every_launch() {
    let d = LLAMA_1B_V1000;
    let plain = generated_with(&d, 1, GgmlType::Q4_K, true, 256);
    let opts = codegen::GenOptions {
        cublas: true,
        trace: true,
        ..Default::default()
    };
    let traced = generated_kv(&d, 1, GgmlType::Q4_K, 256, false, None, opts);
    let off = traced.trace_off.expect("traced");
    assert!(plain.trace_off.is_none());
    assert_eq!(traced.launches.len(), plain.launches.len());
    for (i, (t, p)) in traced.launches.iter().zip(&plain.launches).enumerate() {
        let (codegen::Work::Kernel { params: tp, .. }, codegen::Work::Kernel { params: pp, .. }) =
            (&t.work, &p.work)
        else {
            panic!("decode launches are kernels");
        };
        assert_eq!(tp.len(), pp.len() + 2, "{}", t.label);
        let per = 2 * codegen::TRACE_STAMPS;
        assert_eq!(tp[pp.len()], (off + per * i) as u64, "{}: stamps", t.label);
    }
    let funcs = kernel_funcs(&traced);
    assert_eq!(traced.src.matches("trace_begin(A, C").count(), funcs.len());
    assert_eq!(
        traced
            .src
            .matches("_body(W, A, KV, tok, pos, P, C, P[")
            .count(),
        funcs.len()
    );
    assert!(traced.src.starts_with("#define SMELT_TRACE 1\n"));
    if nvrtc_present() {
        compile(&traced.src, "traced decode");
    }
}

/// v14b: a small model's one-token decode program as one cluster kernel and the head (30
/// SmolLM2-shaped layers of Q8_0, fewer of Q4_K and Q4_1, those compiling with NVRTC); a 1B-shaped layer's stages do
/// not fit a block's ring, and its program keeps its launches. No GPU needed.
#[test]
fn small_decode_programs_take_one_cluster() {
    for (d, t, layers, fits) in [
        (SMOLLM2, GgmlType::Q8_0, 30, true),
        (SMOLLM2_Q4K, GgmlType::Q4_K, 4, true),
        (SMOLLM2, GgmlType::Q4_1, 2, true),
        (LLAMA_1B_V1000, GgmlType::Q4_K, 2, false),
    ] {
        let mut w = Weights::new(|| 0.0);
        w.draw = false;
        let g = llama_graph(&d, layers, 1, &mut w);
        let opts = codegen::GenOptions {
            cluster: 16,
            ..Default::default()
        };
        let gen = generated_graph_of(&g, &w.specs, &d, t, 64, layers, None, opts);
        let labels: Vec<&str> = gen.launches.iter().map(|l| l.label.as_str()).collect();
        eprintln!("{t:?} {layers} layers: {labels:?}, {} bytes", gen.src.len());
        if !fits {
            assert!(gen.launches.len() >= 5 * layers, "{labels:?}");
            continue;
        }
        assert_eq!(gen.launches.len(), 2, "{labels:?}");
        assert!(labels[0].starts_with("cluster decode"), "{labels:?}");
        assert!(labels[1].starts_with("decode mm"), "{labels:?}");
        assert_eq!(gen.cluster_splits, 0);
        // Its kernel reads the position before its wait: greedy steps do not chain (v21).
        assert!(!gen.chain_steps, "cluster {t:?}: steps chain");
        // 30 layers of straight-line stages: ~30 s of NVRTC; the short models compile.
        if layers <= 4 {
            compile_with_pdl(&gen.src, &format!("cluster {t:?}"));
        }
    }
}

/// The odd-shape suite's quantised cases (the Gemma-like second layer: QK-norm, a 2-key window;
/// the Qwen-like one: NEOX pairs, biases) take the cluster kernel that
/// `cluster_decode_matches_reference` runs on the GPU, and compile. No GPU needed.
#[test]
fn odd_shape_cases_take_one_cluster() {
    for (t, qwen) in QUANT_TYPES
        .into_iter()
        .map(|t| (t, false))
        .chain([(GgmlType::Q8_0, true), (GgmlType::Q4_K, true)])
    {
        for nb in [16, 8] {
            let opts = codegen::GenOptions {
                cluster: nb,
                ..Default::default()
            };
            let gen = generated_kv(&QUANT, 1, t, 16, qwen, None, opts);
            let labels: Vec<&str> = gen.launches.iter().map(|l| l.label.as_str()).collect();
            assert_eq!(gen.launches.len(), 2, "{t:?} qwen={qwen}: {labels:?}");
            compile_with_pdl(&gen.src, &format!("cluster {t:?} qwen={qwen} of {nb}"));
        }
    }
}
