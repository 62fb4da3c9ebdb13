//! v17c: a batch step's matmuls on tensor cores (`GenOptions::batch_mma`), read off the
//! generated source and compiled. No GPU needed.

use super::*;

/// With `batch_mma`, a batch step's matmuls over Q4_K and Q6_K weights (and Q8_0 with
/// `batch_mma_q8_0`) take the tensor-core rows (a warp 16 weight rows, `mmar_*`), their epilogues in tiles; one token
/// keeps the gemv kernels, and without the option the batch source is as before. The
/// programs compile with NVRTC.
#[test]
fn batch_matmuls_take_tensor_cores_when_asked() {
    let opts = codegen::GenOptions {
        batch_mma: 2,
        batch_mma_q8_0: true,
        cublas: true,
        ..Default::default()
    };
    for (d, t) in [
        (LLAMA_1B_V1000, GgmlType::Q4_K),
        (LLAMA_1B_V1000, GgmlType::Q6_K),
        (SMOLLM2, GgmlType::Q8_0),
    ] {
        let mma = generated_kv(&d, 4, t, 128, false, Some(true), opts).src;
        let plain = generated_kv(&d, 4, t, 128, false, Some(true), Default::default()).src;
        let ty = format!("mmar_{}<", format!("{t:?}").to_lowercase());
        assert!(mma.contains(&ty), "{t:?}: no {ty}");
        assert!(!plain.contains("mmar_"), "{t:?}");
        // Every layer's matmul kernel (the head's 1000 rows are not a multiple of 16).
        let kernels = mma
            .split("extern \"C\" __global__")
            .filter(|k| k.contains(&ty));
        assert!(kernels.count() >= 4, "{t:?}");
        let one = generated_kv(&d, 1, t, 128, false, None, opts).src;
        assert!(!one.contains("mmar_"), "{t:?}: one token");
        // Q8_0 only where asked (no faster on SmolLM2, cuda.md v18), the K-quants by default.
        let default_q8 = codegen::GenOptions {
            batch_mma_q8_0: false,
            ..opts
        };
        let src = generated_kv(&d, 4, t, 128, false, Some(true), default_q8).src;
        assert_eq!(src.contains(&ty), t != GgmlType::Q8_0, "{t:?} by default");
        if nvrtc_present() {
            compile(&mma, &format!("batch mma {t:?}"));
        }
    }
}
