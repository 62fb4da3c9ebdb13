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

/// v27: a one-token program over a pool with `device_rows` (a solo program) takes its write
/// row from its block table (`pos[2]`'s table at `pos + 3`) where the batch program reads the
/// host's `pos[1]`, at every key and value store; it has the greedy head kernel, the batch
/// program's launches, and NVRTC compiles it. On a contiguous cache the option changes
/// nothing. No GPU needed.
#[test]
fn solo_programs_take_their_write_rows_from_the_block_table() {
    let opts = codegen::GenOptions {
        cublas: true,
        rows_at_once: true,
        greedy_fold: true,
        ..Default::default()
    };
    let solo = codegen::GenOptions {
        device_rows: true,
        ..opts
    };
    for (d, ty) in [(SMOLLM2, GgmlType::Q8_0), (LLAMA_1B_V1000, GgmlType::Q4_K)] {
        let batch = generated_kv(&d, 1, ty, 512, false, Some(true), opts);
        let one = generated_kv(&d, 1, ty, 512, false, Some(true), solo);
        // 512 positions: 16 blocks a table (the row's position may be read into a register).
        let table_row = "((u64)(pos + 3 + (u64)pos[2 + rp] * 16)[";
        assert!(batch.src.contains("(u64)pos[1 + rp] *"), "{d:?}");
        assert!(!batch.src.contains(table_row), "{d:?}");
        assert!(one.src.contains(table_row), "{d:?}");
        assert!(!one.src.contains("(u64)pos[1 + rp] *"), "{d:?}");
        assert_eq!(
            batch.src.matches("pos[1 + rp]").count(),
            one.src.matches(table_row).count(),
            "{d:?}: every key and value store"
        );
        assert!(batch.greedy_head.is_none(), "{d:?}");
        assert!(one.greedy_head.is_some(), "{d:?}: the greedy head kernel");
        assert_eq!(one.launches.len(), batch.launches.len());
        compile_with_pdl(&one.src, "a solo program");
        // Contiguous caches and several rows: the option changes nothing.
        let plain = generated_kv(&d, 1, ty, 512, false, None, opts);
        let plain_solo = generated_kv(&d, 1, ty, 512, false, None, solo);
        assert_eq!(plain.src, plain_solo.src, "{d:?}");
        let four = generated_kv(&d, 4, ty, 512, false, Some(true), solo);
        assert!(four.greedy_head.is_none(), "{d:?}");
    }
}
