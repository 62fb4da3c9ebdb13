//! The greedy graph's head kernel (v20d), read off the generated program. No GPU needed.

use super::*;

/// v20d: a one-token program on a contiguous cache has a copy of its head kernel that takes
/// the argmax of the logits in its tail, for the greedy graph (the program's own launches
/// unchanged; the copy takes the greedy buffers as its two last parameters; NVRTC compiles
/// it); a prompt's program, a batch step and a paged program have none. No GPU needed.
#[test]
fn greedy_argmax_folds_into_a_copy_of_the_head_kernel() {
    let opts = codegen::GenOptions {
        cublas: true,
        rows_at_once: true,
        greedy_fold: true,
        ..Default::default()
    };
    let sentinel = |ps: &[u64]| {
        ps.contains(&codegen::PARAM_GREEDY_BUF) || ps.contains(&codegen::PARAM_GREEDY_RING)
    };
    for (d, ty) in [(SMOLLM2, GgmlType::Q8_0), (LLAMA_1B_V1000, GgmlType::Q4_K)] {
        let g = generated_kv(&d, 1, ty, 512, false, None, opts);
        let off = generated_kv(
            &d,
            1,
            ty,
            512,
            false,
            None,
            codegen::GenOptions {
                greedy_fold: false,
                ..opts
            },
        );
        assert!(off.greedy_head.is_none() && !off.src.contains("greedy_block_max<16>"));
        // The program's launches as without the copy.
        assert_eq!(g.launches.len(), off.launches.len());
        for (a, b) in g.launches.iter().zip(&off.launches) {
            match (&a.work, &b.work) {
                (
                    codegen::Work::Kernel {
                        func: fa,
                        params: pa,
                        ..
                    },
                    codegen::Work::Kernel {
                        func: fb,
                        params: pb,
                        ..
                    },
                ) => {
                    assert_eq!((fa, pa), (fb, pb), "{}", a.label);
                    assert!(!sentinel(pa));
                }
                _ => assert_eq!(a.label, b.label),
            }
        }
        let head = g.greedy_head.as_ref().expect("a greedy head kernel");
        let last = g.launches.last().unwrap();
        let (
            codegen::Work::Kernel {
                func: hf,
                params: hp,
                grid: hg,
                ..
            },
            codegen::Work::Kernel {
                func: lf,
                params: lp,
                grid: lg,
                ..
            },
        ) = (&head.work, &last.work)
        else {
            panic!("the head is a kernel");
        };
        assert_ne!(hf, lf);
        assert_eq!(hg, lg);
        assert_eq!(
            &hp[..lp.len()],
            &lp[..],
            "the head's parameters, then the buffers'"
        );
        assert_eq!(
            &hp[lp.len()..],
            &[codegen::PARAM_GREEDY_BUF, codegen::PARAM_GREEDY_RING]
        );
        assert_eq!(g.src.matches("greedy_block_max<16>").count(), 1, "{d:?}");
        compile_with_pdl(&g.src, "one token with the greedy head kernel");
        for (n, paged) in [(5, None), (4, Some(true)), (1, Some(false))] {
            let g = generated_kv(&d, n, ty, 512, false, paged, opts);
            assert!(g.greedy_head.is_none(), "{d:?} {n} {paged:?}");
            assert!(
                !g.src.contains("greedy_block_max<16>"),
                "{d:?} {n} {paged:?}"
            );
        }
    }
}
