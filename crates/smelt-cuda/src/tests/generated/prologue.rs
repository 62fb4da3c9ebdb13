//! What a decode kernel does first, read off its generated source: its parameters by value
//! (v9f), its input row into registers with 16-byte loads (v10a, v11e), where it waits for
//! the previous kernel and lets the next one launch (v11a), attention's staging before that
//! wait (v11c), the weights and the position read before it and the norm applied after the
//! matmul (v15). No GPU needed.

use super::*;

/// Decode programs' kernels take their parameters by value (prelude `PV`: the launch's
/// constant bank, no global array read before the first address is known); at most
/// `PV_MAX` a launch. Prefill programs (prelude kernels, cuBLAS steps) keep the array, and so
/// does `GenOptions::global_params`. No GPU needed.
#[test]
fn decode_kernels_take_parameters_by_value() {
    let d = LLAMA_1B_V1000;
    let decode = generated_with(&d, 1, GgmlType::Q4_K, true, 256);
    assert!(decode.param_values);
    let kernels = decode.src.matches("extern \"C\" __global__").count();
    let by_value = decode.src.matches("const PV P, u32* C) {").count();
    // Every generated kernel; the prelude's own (to_f16, the GEMM and dequantisation
    // templates) keep the pointer, and greedy_next (v20a) and top_cands (v22) take their
    // own arguments.
    let prelude = codegen::PRELUDE.matches("extern \"C\" __global__").count();
    assert!(prelude >= 5, "{prelude} kernels in the prelude");
    assert_eq!(by_value, kernels - prelude);
    for l in &decode.launches {
        let codegen::Work::Kernel { params, .. } = &l.work else {
            panic!("decode launches are kernels");
        };
        assert!(params.len() <= codegen::PV_MAX, "{}", l.label);
    }
    let prefill = generated_with(&d, 5, GgmlType::Q4_K, true, 256);
    assert!(!prefill.param_values);
    let opts = codegen::GenOptions {
        cublas: true,
        global_params: true,
        ..Default::default()
    };
    let global = generated_kv(&d, 1, GgmlType::Q4_K, 256, false, None, opts);
    assert!(!global.param_values);
    assert_eq!(global.src.matches("const PV P").count(), 0);
}

/// Programmatic dependent launch (v11a): every generated decode kernel waits for the previous
/// kernel (`PDL_WAIT`) and lets the next one launch at its end (`PDL_END`, the default) or
/// after its last weight loads (`PDL_MID`, matmuls and attention); with the next kernel let in
/// late, a register row stage waits before it loads the row (the `#else` branch), not after
/// its weights' prefetch. No GPU needed.
#[test]
fn decode_kernels_wait_then_let_the_next_launch() {
    let src = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    let kernels: Vec<&str> = decode_kernels(&src).collect();
    assert!(kernels.len() >= 5, "{} decode kernels", kernels.len());
    let mut mids = 0;
    for k in &kernels {
        assert!(k.contains("PDL_WAIT();"), "no wait:\n{k}");
        assert!(
            k.trim_end().ends_with("PDL_END();\n}"),
            "no end trigger:\n{k}"
        );
        mids += usize::from(k.contains("PDL_MID();"));
        if let Some(late) = k.split("#if SMELT_PDL && SMELT_PDL_AT == 0").nth(1) {
            let late = late.split("#else\n").nth(1).unwrap_or("");
            assert!(
                late.starts_with("PDL_WAIT();"),
                "row loaded before the wait:\n{k}"
            );
        }
    }
    assert!(mids >= 4, "{mids} kernels with a mid trigger");
    compile_with_pdl(&src, "SmolLM2 decode with PDL");
}

/// Kernel lab (`GenOptions::attn_prewait`, not yet measured): with PDL letting decode
/// attention in early, the key and value chunks wholly before the position are staged before
/// `PDL_WAIT` and the one holding it after; without PDL (or with it at a kernel's start) the
/// kernel waits first, as before. One sequence and a paged batch of 3; they compile with and
/// without PDL. No GPU needed.
#[test]
fn attention_stages_old_chunks_before_the_wait_when_asked() {
    let opts = codegen::GenOptions {
        attn_prewait: true,
        ..Default::default()
    };
    for (n, paged) in [(1, None), (3, Some(true))] {
        let g = generated_kv(&SMOLLM2, n, GgmlType::Q8_0, 256, false, paged, opts);
        let attn = cluster_attention(&g.src);
        let (early, late) = attn.split_once("#else\n").expect("two prologues");
        let (before, after) = early.split_once("PDL_WAIT();").expect("a wait");
        assert!(before.contains("if (jn + 32 <= p1)"), "n={n}:\n{attn}");
        assert!(
            !before.contains("A["),
            "n={n}: activations read before the wait"
        );
        assert!(after.contains("if (jn <= p1 && p1 < jn + 32)"), "n={n}");
        assert!(
            late.starts_with("PDL_WAIT();"),
            "n={n}: the other prologue waits first"
        );
        assert!(
            attn.contains("if (j0 + 32 > p1) cp_async_wait<0>();"),
            "n={n}"
        );
        // Kernels that wait themselves take no wait before their first statement.
        assert!(!attn.contains("PDL_LAUNCH(); PDL_WAIT();"), "n={n}");
        if nvrtc_present() {
            compile(&g.src, &format!("prewait n={n}"));
        }
        compile_with_pdl(&g.src, &format!("prewait n={n} with PDL"));
    }
}

/// One-token decode matmuls read their input row into registers before the weights'
/// prefetch, two 16-byte loads a thread (v11e), and an RMS norm of that row takes one block
/// reduction with its weights loaded beside the row (v10a): every matmul kernel but the first
/// layer's (its row stage also embeds the token), for a llama-like and a Gemma-like layer. No
/// GPU needed.
#[test]
fn decode_rows_are_read_into_registers() {
    for (d, t) in [(SMOLLM2, GgmlType::Q8_0), (QUANT, GgmlType::Q4_K)] {
        let src = generated_with(&d, 1, t, false, 64).src;
        let kernels: Vec<&str> = decode_kernels(&src)
            .filter(|k| k.contains("const X8 x8 ="))
            .collect();
        assert!(
            kernels.len() >= 4,
            "{d:?}: {} matmul kernels",
            kernels.len()
        );
        let mut norms = 0;
        for k in &kernels {
            let name = k
                .split(") ")
                .nth(1)
                .and_then(|n| n.split('(').next())
                .unwrap_or(k);
            if k.contains("tok[r]") {
                assert!(!k.contains("#if SMELT_PDL"), "{name}: embedding row stage");
                continue;
            }
            // Loads before the prefetch (without PDL) are the register path's.
            assert!(
                k.contains("#if SMELT_PDL"),
                "{d:?} {name}: row in registers\n{k}"
            );
            assert!(!k.contains("red[32]"), "{name}: the row stage's reduction");
            // v11e: a thread's 8 values of an aligned row are two 16-byte loads.
            assert!(
                k.contains("*(const F4*)("),
                "{d:?} {name}: scalar row loads\n{k}"
            );
            norms += k.matches("rms_scale(ss, ").count();
        }
        assert!(norms >= 2, "{d:?}: {norms} norms in registers");
    }
}

/// By default (`SMELT_CUDA_ROW_REGS=2`, v13d) a batch step's matmuls compute each row's row
/// stage in registers, in the row loop; with `row_regs: Some(1)` they keep the shared-memory
/// row stage; both compile with NVRTC where it loads. No GPU needed.
#[test]
fn batch_rows_go_through_registers() {
    for (n, qwen) in [(3, false), (8, false), (3, true)] {
        let regs = generated_paged(&QUANT, n, GgmlType::Q4_K, qwen, true);
        let opts = codegen::GenOptions {
            cublas: true,
            row_regs: Some(1),
            ..Default::default()
        };
        let plain = generated_kv(&QUANT, n, GgmlType::Q4_K, 128, qwen, Some(true), opts);
        assert!(regs.decode && plain.decode);
        let loops = |src: &str| {
            decode_kernels(src)
                .filter(|k| k.contains("const X8 x8s ="))
                .map(|k| k.contains("][8];\n") as usize)
                .collect::<Vec<_>>()
        };
        let (r, p) = (loops(&regs.src), loops(&plain.src));
        assert!(!r.is_empty() && r.len() == p.len(), "{n} rows: {r:?} {p:?}");
        assert!(r.iter().sum::<usize>() >= r.len() - 1, "{n} rows: {r:?}");
        assert_eq!(p.iter().sum::<usize>(), 0, "{n} rows: {p:?}");
        if nvrtc_present() {
            compile(
                &regs.src,
                &format!("batch of {n} rows in registers, qwen={qwen}"),
            );
        }
    }
}

/// A one-token matmul's epilogue reads of other nodes (the residual) come before the row's
/// weights for rows of 32-value blocks (v12a), and after the warp sum for K-quants (measured
/// slower hoisted). No GPU needed.
#[test]
fn decode_epilogue_reads_come_early_for_32_value_blocks() {
    let hoisted = |src: &str| -> usize {
        let mut n = 0;
        for k in decode_kernels(src) {
            // A hoisted read: defined before the row's gemv, used in the epilogue after it
            // (the first row's taken from before the wait, v13c).
            let Some(h) = k
                .find("h = A[")
                .or_else(|| k.find("h = R == R0 + warp ? pw"))
            else {
                continue;
            };
            n += 1;
            let gemv = k[h..].find("gemv8_").map(|i| i + h).expect("a gemv after");
            let name_start = k[..h].rfind("const float ").unwrap() + "const float ".len();
            let name = &k[name_start..h + 1];
            assert!(
                k[gemv..].contains(&format!("{name} ")),
                "{name} unused:\n{k}"
            );
        }
        n
    };
    let src = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    // SmolLM2's layer: wo and down add the residual.
    assert!(
        hoisted(&src) >= 2,
        "SmolLM2 Q8_0: {} kernels",
        hoisted(&src)
    );
    let k = generated_with(&LLAMA_1B_V1000, 1, GgmlType::Q4_K, false, 64).src;
    assert_eq!(hoisted(&k), 0, "1B Q4_K");
    compile_with_pdl(&src, "SmolLM2 decode, epilogue reads early");
}

/// Kernel lab v13a (`GenOptions::stage_kb`, not yet measured): one-token matmuls whose
/// block's weight rows fit the budget copy them into shared memory by bulk copies before
/// `PDL_WAIT`, wait on the copies' mbarrier after the row stage and read every row from the
/// stage; no line prefetches. SmolLM2's layer kernels (at most ~31 KB a block, the QKV
/// kernel's RoPE pairs included) fit 64 KiB; none fit 1 KiB. Compiles with PDL. No GPU needed.
#[test]
fn matmuls_stage_their_rows_in_shared_memory_before_the_wait_when_asked() {
    let staged = |kb: usize| {
        let opts = codegen::GenOptions {
            stage_kb: kb,
            ..Default::default()
        };
        generated_kv(&SMOLLM2, 1, GgmlType::Q8_0, 256, false, None, opts).src
    };
    let src = staged(64);
    let mut n = 0;
    for k in decode_kernels(&src) {
        let Some(at) = k.find("bulk_g2s(") else {
            continue;
        };
        let wait = k.find("PDL_WAIT();").expect("a wait");
        assert!(at < wait, "copies after the wait:\n{k}");
        let landed = k
            .find("mbar_wait0(&stg_bar);")
            .expect("a wait on the copies");
        let first = k.find("(STG + so").expect("rows read from the stage");
        assert!(landed < first, "rows read before the copies landed:\n{k}");
        assert!(
            !k.contains("prefetch_row(") && !k.contains("gemv8_q8_0(W + "),
            "{k}"
        );
        n += 1;
    }
    // QKV, wo, gate+up, down (the head's rows may not fit).
    assert!(n >= 4, "{n} staged kernels");
    compile_with_pdl(&src, "SmolLM2 decode, rows staged in shared memory");
    assert!(!staged(1).contains("bulk_g2s(W"), "staged within 1 KiB");
    assert!(!staged(1).contains("(STG + so"), "staged within 1 KiB");
}

/// v13c: a one-token matmul's hoisted read of a node computed two or more kernels back (the
/// residual of SmolLM2's output and down projections) is issued for the warp's first row
/// before `PDL_WAIT`, through L2, and the row takes it from there; reads of the previous
/// kernel's nodes stay after the wait. Off with `SMELT_CUDA_PREWAIT_READS=0` (not set here).
#[test]
fn residual_reads_of_finished_kernels_go_before_the_wait() {
    let src = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    let mut early = 0;
    for k in decode_kernels(&src) {
        let Some(at) = k.find("pw0 = __ldcg(&A[") else {
            continue;
        };
        let wait = k.find("PDL_WAIT();").expect("a wait");
        assert!(at < wait, "read after the wait:\n{k}");
        assert!(k.contains("R == R0 + warp ? pw0 : A["), "{k}");
        early += 1;
    }
    // The output projection and the down projection (each layer's kernels are shared).
    assert!(early >= 2, "{early} kernels read early");
    compile_with_pdl(&src, "SmolLM2 decode, residual read before the wait");
}

/// v13e/v13g (`GenOptions::row_pipe_k`): a batch step's rows in registers load the first
/// row before the row loop and each next row after this one's quantisation, before the row's
/// turn ends (v17d: with no barrier there where the stage has no block reduction); without it
/// each row loads at the top of its turn. By default rows of
/// at most 2048 values do (all of `QUANT`'s, none of a 4096-wide model's). Compiles with NVRTC
/// where it loads. No GPU needed.
#[test]
fn batch_rows_load_the_next_row_ahead_of_the_barrier() {
    // Kernels whose batch rows go through registers (the others keep the shared-memory row
    // stage), and those of them that load the next row early.
    let in_regs = |k: &&str| k.contains("const X8 x8s =") && k.contains("][8];\n");
    let count = |src: &str| {
        decode_kernels(src)
            .filter(in_regs)
            .filter(|k| {
                let next = k.find("if (r + 1 < ");
                let end = k.find("}\nconst X8 x8s =");
                next.zip(end).is_some_and(|(a, b)| a < b)
            })
            .count()
    };
    let with = |d: &Dims, n: usize, qwen: bool, k: Option<usize>| {
        let opts = codegen::GenOptions {
            cublas: true,
            row_pipe_k: k,
            ..Default::default()
        };
        generated_kv(d, n, GgmlType::Q4_K, 128, qwen, Some(true), opts).src
    };
    for (n, qwen) in [(3, false), (8, true)] {
        let piped = with(&QUANT, n, qwen, Some(2048));
        let plain = with(&QUANT, n, qwen, Some(0));
        let kernels = decode_kernels(&piped).filter(in_regs).count();
        assert!(kernels > 0);
        assert_eq!(count(&piped), kernels, "{n} rows");
        assert_eq!(count(&plain), 0, "{n} rows");
        // v17d: a stage with no block reduction of its own (an input row alone, or a norm
        // applied after the matmul) ends a row's turn without a barrier; one with a norm
        // reduced in the stage keeps it.
        let barriers = decode_kernels(&piped)
            .filter(in_regs)
            .filter(|k| k.contains("__syncthreads(); }\nconst X8 x8s ="))
            .count();
        assert!(
            barriers < kernels,
            "{n} rows: a barrier between rows in every kernel"
        );
        if nvrtc_present() {
            compile(&piped, &format!("batch of {n} rows, next row loaded early"));
        }
    }
    // The 8B's rows (4096 and 14336 values) load at the top of their turn; a limit of 1024
    // leaves none of QUANT's rows out (256 and 768).
    let wide = with(&LLAMA_8B, 4, false, Some(2048));
    assert!(decode_kernels(&wide).filter(in_regs).count() > 0);
    assert_eq!(count(&wide), 0);
    let q = with(&QUANT, 4, false, Some(1024));
    assert_eq!(count(&q), decode_kernels(&q).filter(in_regs).count());
}

/// Kernel lab v13f (`SMELT_CUDA_PDL=flag`): SmolLM2's and the 1B's decode kernels leave the
/// two parameter slots the launch counters take free; every kernel ends in `PDL_END` on every
/// path (a body with an early return, attention's, is a function of its own), so each block
/// adds to its launch's counter; and the programs compile with the counters in place of the
/// grid dependency wait. No GPU needed.
#[test]
fn decode_programs_compile_with_launch_counters() {
    // One token, a batch step of 4 sequences, and 80-wide heads (no cluster attention: the
    // split-K kernel, which returns early).
    let hd80 = Dims {
        n_head: 8,
        n_head_kv: 2,
        head_dim: 80,
        n_rot: 80,
        ..SMOLLM2
    };
    for (d, ty, n) in [
        (&SMOLLM2, GgmlType::Q8_0, 1),
        (&LLAMA_1B_V1000, GgmlType::Q4_K, 1),
        (&SMOLLM2, GgmlType::Q8_0, 4),
        (&hd80, GgmlType::Q8_0, 1),
    ] {
        let opts = codegen::GenOptions {
            wrap_returns: true,
            ..Default::default()
        };
        let paged = (n > 1).then_some(true);
        let g = generated_kv(d, n, ty, 64, false, paged, opts);
        assert!(g.param_values);
        for l in &g.launches {
            if let codegen::Work::Kernel { params, .. } = &l.work {
                assert!(params.len() <= codegen::PV_MAX - 2, "{}", l.label);
            }
        }
        let mut wrapped = 0;
        for k in g.src.split("extern \"C\" __global__").skip(1) {
            if !k.lines().next().is_some_and(|l| l.contains("const PV P")) {
                continue; // the prelude's own kernels (prefill)
            }
            let end = k
                .find("PDL_END();\n}")
                .expect("every kernel ends in PDL_END");
            let body = &k[..end];
            if body.contains("_body(") {
                wrapped += 1;
            } else {
                assert!(
                    !body.contains("return"),
                    "an early return skips PDL_END:\n{body}"
                );
            }
        }
        if d.head_dim == 80 {
            assert!(
                wrapped >= 1,
                "the split-K attention returns early and is wrapped"
            );
        }
        if nvrtc_present() {
            compile(
                &format!("#define SMELT_PDL 1\n#define SMELT_PDL_AT 4\n{}", g.src),
                &format!("{ty:?} decode of {n} with launch counters"),
            );
        }
    }
}

/// v15a/v15b: a one-token step loads what no kernel writes before its kernels' `PDL_WAIT`:
/// the row stage's norm weights, and the position (read once a kernel as `posr`, so no
/// `pos[0]` or `pos[rp]` is left), but for the step's first kernel, which reads it after (v21).
/// A batch step reads each row's position where it is used.
/// No GPU needed.
#[test]
fn one_token_steps_load_weights_and_position_before_the_wait() {
    let g = generated_with(&LLAMA_1B_V1000, 1, GgmlType::Q4_K, false, 64);
    assert!(g.chain_steps, "greedy steps chain by PDL (v21)");
    let mut normed = 0;
    for k in decode_kernels(&g.src) {
        assert!(
            !k.contains("pos[0]") && !k.contains("pos[rp]"),
            "a one-token kernel reads the position after the wait:\n{k}"
        );
        let wait = k.find("PDL_WAIT()").expect("every decode kernel waits");
        if k.contains("posr") {
            let first = k
                .find("posr = __ldcg(pos)")
                .expect("the position is loaded");
            // v21: the step's first kernel (the embedding's) after it: in a graph of greedy
            // steps, the previous step's head kernel writes the position.
            match k.contains("tok[") {
                true => assert!(
                    first > wait,
                    "the first kernel reads the position early:\n{k}"
                ),
                false => assert!(first < wait, "the position is loaded after the wait:\n{k}"),
            }
        }
        // A register row stage whose RMS norm has weights: `l<i>` arrays loaded from `W`.
        if let Some(load) = k.find("((const float*)(W + P[") {
            if k[..load].contains("float l0[") && k.contains("rms_scale(ss, ") {
                assert!(
                    load < wait,
                    "the norm's weights are loaded after the wait:\n{k}"
                );
                normed += 1;
            }
        }
    }
    // The 1B's QKV and gate+up kernels (every layer shares them) and the head's norm.
    assert!(
        normed >= 2,
        "{normed} kernels with the norm's weights before the wait"
    );
    let b = generated_paged(&LLAMA_1B_V1000, 3, GgmlType::Q4_K, false, true);
    assert!(b.decode && b.src.contains("pos[rp]") && !b.src.contains("posr"));
}

/// v15c: a decode matmul whose input is an RMS norm quantises the row before the norm's sum
/// is over and multiplies each column's sum by the scale: one token by `sc<j>`, a batch's
/// lanes and tiles by their row's (`scl`, `scr[i]`), summed in the same order and rounded on
/// their own (`__fmul_rn`, never fused into a later add), so a batch's rows stay bit for bit
/// one sequence's. No GPU needed.
#[test]
fn normed_inputs_scale_the_sums_after_the_matmul() {
    let one = generated_with(&LLAMA_1B_V1000, 1, GgmlType::Q4_K, false, 64);
    let mut scaled = 0;
    for k in decode_kernels(&one.src) {
        let Some(at) = k.find("__fmul_rn(sc") else {
            continue;
        };
        assert!(k[at..].contains(", gemv8_"), "not a sum's scale:\n{k}");
        // The scale is summed after the quantisation's barrier (an earlier norm of the row
        // stage sums before it), then multiplies the sums.
        let sum = k[..at].rfind("ss += red[").expect("the scale's sum");
        let quant = k.find("__float2int_rn").expect("the row's quantisation");
        let barrier = k[quant..].find("__syncthreads()").expect("its barrier") + quant;
        assert!(
            barrier < sum,
            "the scale is summed before the barrier:\n{k}"
        );
        let name = k[at + 10..].split(',').next().unwrap_or_default();
        assert!(
            name.starts_with("sc") && !name.contains(' '),
            "{name}: not a norm's scale:\n{k}"
        );
        scaled += 1;
    }
    // The QKV and gate+up kernels (the head's too, which takes the final norm).
    assert!(scaled >= 2, "{scaled} kernels scale their sums");
    let batch = generated_paged(&LLAMA_1B_V1000, 4, GgmlType::Q4_K, false, true);
    assert!(
        batch.src.contains("__fmul_rn(scl, gemv8r_q4_k<4"),
        "a batch lane's scale"
    );
    assert!(batch.src.contains("float scr[4];"), "every row's scale");
    // v18c: lane q sums and divides row q's scale once; the others take it from lane q.
    assert!(
        batch
            .src
            .contains("float scl; { const int q = lane < 4 ? lane : 0;"),
        "a lane's own row's scale"
    );
    assert!(
        batch
            .src
            .contains("scr[q] = __shfl_sync(0xffffffffu, scl, q);"),
        "every row's scale from its lane"
    );
}

/// v18d: a batch's epilogue reads of other nodes (the residual) in rows of 32-value blocks
/// are issued before the row's weights, lane r reading row r's, and for the warp's first row
/// before `PDL_WAIT` where the node is two or more kernels back, as one token's (v12a,
/// v13c). Compiles with NVRTC. No GPU needed.
#[test]
fn batch_residual_reads_go_before_the_sums() {
    let src = generated_paged(&SMOLLM2, 8, GgmlType::Q8_0, false, true).src;
    let mut early = 0;
    for k in decode_kernels(&src) {
        let Some(at) = k.find("pw0 = __ldcg(&A[") else {
            continue;
        };
        let wait = k.find("PDL_WAIT();").expect("the wait");
        assert!(at < wait, "the first row's read before the wait:\n{k}");
        // Lane r reads row r's (two warps a row, v18f: lane r of half sh row r + 4 sh).
        assert!(
            k[..at].ends_with("if (lane < 8) { const int r = lane, rp = r; (void)rp; ")
                || k[..at]
                    .ends_with("if (lane < 4) { const int r = lane + sh * 4, rp = r; (void)rp; "),
            "lane r reads row r's:\n{k}"
        );
        // The value, before the sums (other rows of the warp read it there).
        let value = k.find("float e").expect("the hoisted value");
        let sums = k.find("gemv8r_q8_0<").expect("the sums");
        assert!(value < sums, "read after the sums:\n{k}");
        early += 1;
    }
    // The output and down projections' residuals.
    assert!(early >= 2, "{early} kernels read their residual early");
    if nvrtc_present() {
        compile(&src, "SmolLM2 batch of 8, residual reads first");
    }
}

/// Kernel lab v18a (`GenOptions::rows_at_once`): a batch's rows of at most 2048 values whose
/// row stage has no block reduction go several a block pass (`kp / 8` threads a row: all 8 of
/// `QUANT`'s 256-value rows at once, two of the 1B's 2048-value rows), each row's norm
/// partials from its own warps; without it one row a pass. Where that leaves several passes
/// their rows are loaded at once (v18b). Compiles with NVRTC. No GPU needed.
#[test]
fn batch_rows_go_several_a_pass_when_asked() {
    let with = |d: &Dims, n: usize, at_once: bool| {
        let opts = codegen::GenOptions {
            cublas: true,
            rows_at_once: at_once,
            ..Default::default()
        };
        generated_kv(d, n, GgmlType::Q4_K, 128, false, Some(true), opts).src
    };
    for (d, n, rpp) in [(QUANT, 8, 8), (QUANT, 3, 2), (LLAMA_1B_V1000, 8, 2)] {
        let src = with(&d, n, true);
        // v18b: where there are several passes, every pass's rows are loaded at once, into
        // arrays of their own, the stage's weights before the wait.
        let passes = n.div_ceil(rpp);
        let pass = match passes {
            1 => format!("r0 += {rpp}) {{ const int r = r0 + rrow"),
            _ => format!("k < {passes}; k++) {{ const int r = k * {rpp} + rrow, rp = r;"),
        };
        let several = decode_kernels(&src).filter(|k| k.contains(&pass)).count();
        assert!(several > 0, "{n} rows: several a pass");
        if passes > 1 {
            let ahead = decode_kernels(&src)
                .filter(|k| {
                    k.contains(&format!("l0[{passes}][1][8]"))
                        && k.contains("l0[k][it][0] = u.x;")
                        && !k.contains("const int rn = r +")
                })
                .count();
            assert_eq!(ahead, several, "{n} rows: every pass loaded at once");
            // The norm's weights, loaded once before the wait.
            let norm_first = decode_kernels(&src)
                .filter(|k| {
                    k.contains(&pass)
                        && k.split("PDL_WAIT")
                            .next()
                            .unwrap()
                            .contains("l1[it][0] = u.x;")
                })
                .count();
            assert!(
                norm_first > 0,
                "{n} rows: the norm's weights before the wait"
            );
        }
        // The norm applied after the matmul sums its row's warps' partials.
        assert!(src.contains("red[32 + r * 16 + warp % "), "{n} rows");
        assert!(
            !with(&d, n, false).contains("rrow"),
            "{n} rows: off by default"
        );
        if nvrtc_present() {
            compile(&src, &format!("batch of {n} rows, {rpp} a pass"));
        }
    }
    // One token and the 8B's 4096-value rows: one row a pass.
    assert!(!with(&QUANT, 1, true).contains("rrow"));
    assert!(!with(&LLAMA_8B, 4, true).contains("rrow"));
}

/// v18f: a batch kernel whose rows leave half the SMs idle gives each weight row to two warps,
/// each with half the sequences (SmolLM2's 576-row matmuls at 8 rows: 36 blocks become 72);
/// not for an odd number of rows, nor where the blocks fill the GPU (the 1B's). Compiles with
/// NVRTC. No GPU needed.
#[test]
fn small_batch_kernels_split_the_sequences_over_two_warps() {
    let split = |src: &str, h: usize| {
        decode_kernels(src)
            .filter(|k| k.contains(&format!("XROW(x8s, sh * {h}, ")))
            .count()
    };
    let smol8 = generated_paged(&SMOLLM2, 8, GgmlType::Q8_0, false, true).src;
    assert!(split(&smol8, 4) >= 2, "the output and down projections");
    assert!(smol8.contains("if (lane < 4) { const int r = lane + sh * 4, rp = r;"));
    let smol3 = generated_paged(&SMOLLM2, 3, GgmlType::Q8_0, false, true).src;
    assert!(!smol3.contains("const int sh = RV /"), "3 rows: one warp");
    let one = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    assert!(!one.contains("const int sh = RV /"), "one token: one warp");
    let big = generated_paged(&LLAMA_1B_V1000, 4, GgmlType::Q4_K, false, true).src;
    let wide = decode_kernels(&big)
        .filter(|k| k.contains("gemv8r_q4_k<4, ") && !k.contains("const int sh = RV /"))
        .count();
    assert!(wide > 0, "the 1B's 4 rows fill the GPU: one warp");
    if nvrtc_present() {
        compile(&smol8, "SmolLM2 batch of 8, sequences split");
        let smol2 = generated_paged(&SMOLLM2, 2, GgmlType::Q8_0, false, true).src;
        assert!(split(&smol2, 1) >= 2, "2 rows: one a warp");
        compile(&smol2, "SmolLM2 batch of 2, sequences split");
    }
}

/// v18h: every RMS norm's scale is one `rsqrtf` (`rms_scale`), as ggml's CUDA norms take it.
/// v18i: a RoPE pair finished in the warp has its angle's sine and cosine computed before the
/// sums (one token's, and each batch lane's row's). No GPU needed.
#[test]
fn norm_scales_and_rope_angles_are_off_the_sums_chain() {
    for n in [1, 4] {
        let src = generated_paged(&SMOLLM2, n, GgmlType::Q8_0, false, n > 1).src;
        let src = match n {
            1 => generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src,
            _ => src,
        };
        assert!(!src.contains("sqrtf(ss /"), "{n} rows: a precise scale");
        assert!(
            src.contains("rms_scale(ss, 576.0f, "),
            "{n} rows: the norm's scale"
        );
        let mut early = 0;
        for k in decode_kernels(&src) {
            let Some(angle) = k.find("sincosf(th, &e") else {
                continue;
            };
            let sums = k.find(if n == 1 {
                "gemv8_q8_0("
            } else {
                "gemv8r_q8_0<"
            });
            assert!(
                sums.is_some_and(|s| angle < s),
                "{n} rows: the angle after the sums:\n{k}"
            );
            early += 1;
        }
        assert!(early > 0, "{n} rows: no RoPE pair in a warp");
    }
}
