//! Attention kernels read off their generated source: decode attention's partials pushed to
//! the merging blocks (v12c), its chunk on tensor cores (v16a) or with the products
//! transposed (v16d), prefill attention on tensor cores (v16c). No GPU needed.

use super::*;

/// Decode attention's splits push their partials into the shared memory of the blocks that
/// merge them (v12c): each block's mbarrier counts the bytes it expects, the stores come
/// before the wait, and no cluster barrier or remote read follows the scores; a batch's step
/// too. No GPU needed.
#[test]
fn attention_partials_are_pushed_to_the_merging_block() {
    let one = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    let batch = generated_paged(&LLAMA_1B_V1000, 4, GgmlType::Q4_K, false, true).src;
    for src in [one, batch] {
        let kernels: Vec<&str> = src
            .split("extern \"C\" __global__")
            .filter(|k| k.contains("__cluster_dims__"))
            .collect();
        assert!(!kernels.is_empty(), "no cluster attention");
        for k in kernels {
            assert!(k.contains("mbar_init_expect(&mbar, "), "{k}");
            let send = k.find("st_async_f32(").expect("partials sent");
            let wait = k.find("mbar_wait0(&mbar);").expect("a wait");
            assert!(send < wait, "{k}");
            assert!(!k.contains("cluster_sync"), "a cluster barrier:\n{k}");
            assert!(!k.contains("ld_dsmem("), "a remote read:\n{k}");
        }
    }
}

/// v16a: decode attention scores a chunk on tensor cores where a KV group's heads fit A's
/// eight rows and the head is 64 or 128 wide: the query as two f16 rows (rounded, and what
/// rounding lost) in shared memory, K and V by `ldmatrix` (V transposed, its rows past the
/// position masked), the partials pushed from the fragments; 256-wide heads keep a warp a
/// head. One token and a batch. No GPU needed.
#[test]
fn decode_attention_scores_chunks_on_tensor_cores() {
    let one = generated_with(&SMOLLM2, 1, GgmlType::Q8_0, false, 64).src;
    let batch = generated_paged(&LLAMA_1B_V1000, 4, GgmlType::Q4_K, false, true).src;
    for src in [one, batch] {
        let k = cluster_attention(&src);
        for want in [
            "qh[1][warp][lane + 32 * i] = f2h(v - h2f(hi))",
            "ldsm4(kf, KVS(b, 0, ",
            "ldsm4t(vf, vrow + 8 * i)",
            "vf[0] & k0, vf[1] & k1",
            "st_async_f32(&rc[s][oi - ow * ",
        ] {
            assert!(k.contains(want), "{want} missing:\n{k}");
        }
        assert!(!k.contains("warp_sum("), "a warp a head:\n{k}");
    }
    let wide = long_context_dims()[2];
    assert_eq!(wide.head_dim, 256);
    let src = generated_with(&wide, 1, GgmlType::F16, false, LONG_CAPACITY).src;
    let k = cluster_attention(&src);
    assert!(!k.contains("mma_top(") && k.contains("warp_sum("), "{k}");
}

/// v16d (`attn_mma` 2, the default for 128-wide heads): the transposed products: K's A
/// fragments, the query's as B, P^T transposed by `movmatrix` into O^T = V^T P^T's B operand,
/// a head's max and sum over the eight lanes of its column pair; and 0 keeps a warp a head.
/// One token and a batch. No GPU needed.
#[test]
fn decode_attention_takes_the_transposed_products_when_asked() {
    let attn = |mma: usize, n: usize, paged: Option<bool>| {
        let opts = codegen::GenOptions {
            attn_mma: Some(mma),
            cublas: true,
            ..Default::default()
        };
        let g = generated_kv(&LLAMA_1B_V1000, n, GgmlType::Q4_K, 128, false, paged, opts);
        cluster_attention(&g.src).to_string()
    };
    for (n, paged) in [(1, None), (4, Some(true))] {
        let k = attn(2, n, paged);
        for want in [
            "mma_full(sa[u], kf, bh[0], bh[1])",
            "pb[u][x] = movt(pack2(e0, e1))",
            "mma_full(o[i], vf, pb[kk][0], pb[kk][1])",
            "vf[2] &= k1",
            "for (int w = lane >> 2; w < ",
        ] {
            assert!(k.contains(want), "{want} missing:\n{k}");
        }
        assert!(!k.contains("mma_top("), "{k}");
        let k = attn(0, n, paged);
        assert!(!k.contains("mma_") && k.contains("warp_sum("), "{k}");
    }
    // By default (v17) 128-wide heads take the transposed products, 64-wide ones v16a's.
    for (d, transposed) in [(LLAMA_8B, true), (SMOLLM2, false)] {
        let src = generated_with(&d, 1, GgmlType::Q8_0, false, 64).src;
        let k = cluster_attention(&src);
        assert_eq!(k.contains("movt("), transposed, "{k}");
        assert_eq!(k.contains("mma_top("), !transposed, "{k}");
    }
}

/// v16c: prefill attention on tensor cores for 64- and 128-wide heads (a block per KV head
/// and tile of query rows, a warp per head and 16 rows; the query as f16 hi and lo A
/// fragments, K and V by `ldmatrix`, tiles past a warp's last position skipped by the whole
/// warp); 256-wide heads keep the tiled kernel. No GPU needed.
#[test]
fn prefill_attention_takes_tensor_cores() {
    for (d, t, wide) in [
        (SMOLLM2, GgmlType::Q8_0, false),
        (LLAMA_8B, GgmlType::Q4_K, false),
        (long_context_dims()[2], GgmlType::F16, true),
    ] {
        let g = generated(&d, 37, t, true);
        let labels: Vec<&str> = g
            .launches
            .iter()
            .map(|l| l.label.as_str())
            .filter(|l| l.starts_with("attention"))
            .collect();
        assert!(!labels.is_empty());
        for l in labels {
            assert_eq!(l.contains("tensor cores"), !wide, "{l}");
            assert_eq!(l.contains("tiled"), wide, "{l}");
        }
        if !wide {
            for want in [
                "qa[1][i][f] = (u32)f2h(v0 - h2f(h0))",
                "mma_full(sb[u], qa[1][i], kf[0], kf[1])",
                "ldsm4t(vf, vrow + 8 * i)",
                "if (j0 <= wmax)",
            ] {
                assert!(g.src.contains(want), "{want} missing");
            }
        }
    }
}

/// v19b: on a cache of several regions decode attention on tensor cores scores each region
/// in its own warp (SmolLM2, whose three KV heads leave most SMs free: eight regions of two
/// stages at 16384 positions, five warps added that load no query; the 8B: three of two
/// stages, two blocks an SM; the 1B: four of three, two blocks an SM), merges them into warp 0
/// before the pushes, and keeps one region at a short cache and in a batch's step. No GPU
/// needed.
#[test]
fn long_caches_split_a_split_into_key_regions() {
    let opts = |region| codegen::GenOptions {
        cublas: true,
        attn_region: region,
        ..Default::default()
    };
    let cases = [
        (SMOLLM2, GgmlType::Q8_0, 8, 2),
        (LLAMA_8B, GgmlType::Q4_K, 3, 2),
        (LLAMA_1B_V1000, GgmlType::Q4_K, 4, 3),
    ];
    for (d, ty, regions, nbuf) in cases {
        let (n, paged) = (1, None);
        let g = generated_kv(&d, n, ty, 16384, false, paged, opts(2048));
        assert!(g.attn_region >= 2048, "{d:?}");
        let k = cluster_attention(&g.src);
        assert!(
            k.contains(&format!(
                "__launch_bounds__({})",
                32 * regions.max(d.n_head / d.n_head_kv)
            )),
            "{k}"
        );
        let label = format!("{regions} key regions");
        assert!(g.launches.iter().any(|l| l.label.contains(&label)), "{d:?}");
        for want in [
            format!("#define NBUF {nbuf}\n"),
            format!("const bool rv = warp < {regions} && "),
            format!("const int b = (k % NBUF) * {regions} + warp;"),
            "if (rv && j0 + 32 > lo)".to_string(),
            format!("if (warp == 0) for (int w = 1; w < {regions}; w++)"),
        ] {
            assert!(k.contains(&want), "{want} missing:\n{k}");
        }
        let merge = k.find("if (warp == 0) for (int w = 1;").unwrap();
        assert!(merge < k.find("st_async_f32(").unwrap(), "{k}");
        // The default region length keeps a short cache (and regions off any cache, and a
        // batch's step) whole.
        for (cap, region, n, paged) in [
            (1024, 2048, 1, None),
            (16384, 0, 1, None),
            (16384, 2048, 4, Some(true)),
        ] {
            let g = generated_kv(&d, n, ty, cap, false, paged, opts(region));
            assert_eq!(g.attn_region, 0);
            assert!(!g.launches.iter().any(|l| l.label.contains("key regions")));
            assert!(!cluster_attention(&g.src).contains("const bool rv"));
        }
    }
    // After 4096 positions: three regions at two blocks an SM, the 1B's of four stages, the
    // 8B's of two.
    for (d, nbuf) in [(LLAMA_1B_V1000, 4), (LLAMA_8B, 2)] {
        let g = generated_kv(&d, 1, GgmlType::Q4_K, 4225, false, None, opts(2048));
        assert!(g.launches.iter().any(|l| l.label.contains("3 key regions")));
        assert!(cluster_attention(&g.src).contains(&format!("#define NBUF {nbuf}\n")));
    }
}
