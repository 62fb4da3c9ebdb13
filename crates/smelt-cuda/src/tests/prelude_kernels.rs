//! Kernels of the prelude run alone (dequantisation, f16 conversion) against the CPU (GPU).

use super::greedy::host_argmax;
use super::*;

/// Order-preserving integer of f16 bits, so that adjacent f16 values differ by 1.
fn f16_ord(h: u16) -> i32 {
    if h & 0x8000 != 0 {
        -i32::from(h & 0x7fff)
    } else {
        i32::from(h)
    }
}

/// Run one kernel of the prelude (`func`, defined by `defs` after it) over the backend's
/// weights and an arena of `arena.len()` bytes initialised from `arena`; return the arena.
fn run_prelude_kernel(
    cb: &CudaBackend,
    defs: &str,
    func: &str,
    threads: usize,
    params: &[u64],
    arena: &[u8],
) -> Vec<u8> {
    use cudarc::driver::sys;
    let dev = cb.device();
    let module = dev.compile(&format!("{}{defs}", codegen::PRELUDE)).unwrap();
    let f = dev.function(&module, func, 0).unwrap();
    let a = dev.alloc(arena.len()).unwrap();
    dev.upload(a.ptr, arena).unwrap();
    let p = dev.alloc(params.len() * 8).unwrap();
    let pb: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    dev.upload(p.ptr, &pb).unwrap();
    let mut args: [u64; 7] = [cb.weights.ptr, a.ptr, 0, 0, 0, p.ptr, 0];
    let mut ptrs: [*mut std::ffi::c_void; 7] =
        std::array::from_fn(|i| (&mut args[i]) as *mut u64 as *mut std::ffi::c_void);
    // SAFETY: the kernel reads the weights and parameters and writes inside the arena, whose
    // sizes the callers derive from the same shapes as the parameters.
    unsafe {
        let r = sys::cuLaunchKernel(
            f.cu_function(),
            threads.div_ceil(256) as u32,
            1,
            1,
            256,
            1,
            1,
            0,
            dev.cu_stream(),
            ptrs.as_mut_ptr(),
            std::ptr::null_mut(),
        );
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "launch {func}");
    }
    dev.sync().unwrap();
    let mut out = vec![0u8; arena.len()];
    dev.download(&mut out, a.ptr).unwrap();
    out
}

/// `deq16_<type>` against smelt-quant's CPU dequantisation rounded to f16 (within one f16
/// step: the GPU rounds each product like the CPU, so in practice bit-exact), padding zero;
/// and `to_f16` of activations with a row length that is not a multiple of 8.
#[test]
fn dequant_and_to_f16_kernels_match_cpu() {
    use smelt_quant::half::f32_to_f16;
    if !gpu() {
        return;
    }
    const ROWS: usize = 3;
    for t in ALL_TYPES {
        let widths: &[usize] = if t.block_size() == 1 {
            &[512, 50]
        } else {
            &[512]
        };
        for &k in widths {
            let mut rng = Rng(0xdead + k as u64);
            let data: Vec<f32> = (0..ROWS * k).map(|_| 0.3 * rng.next() - 0.05).collect();
            let file = odd::gguf([("w", [ROWS, k], data.as_slice())], t);
            let spec = WeightSpec {
                name: "w".into(),
                shape: [ROWS, k],
            };
            let cb = CudaBackend::new(Arc::clone(&file), &[spec]).unwrap();
            let tensor = file.tensor("w").unwrap();
            let want = smelt_quant::dequantize_to_vec(t, file.tensor_data(tensor)).unwrap();
            let wi = &cb.winfo[0];
            let ty = codegen::type_suffix(t).unwrap();
            let unit = if t.block_size() == 1 { 8 } else { 32 };
            let (kp, upr) = (k.div_ceil(8) * 8, k.div_ceil(unit));
            let params = [
                wi.off,
                wi.row_bytes,
                0,
                ROWS as u64,
                upr as u64,
                kp as u64,
                k as u64,
            ];
            let out = run_prelude_kernel(
                &cb,
                &format!("DEF_DEQ16({ty})\n"),
                &format!("deq16_{ty}"),
                ROWS * upr,
                &params,
                &vec![0xffu8; ROWS * kp * 2],
            );
            let got: Vec<u16> = out
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let mut exact = 0;
            for r in 0..ROWS {
                for c in 0..kp {
                    let g = got[r * kp + c];
                    let w = if c < k {
                        f32_to_f16(want[r * k + c])
                    } else {
                        0
                    };
                    assert!(
                        (f16_ord(g) - f16_ord(w)).abs() <= 1,
                        "{t:?} k={k} row {r} col {c}: gpu {g:#06x} cpu {w:#06x}"
                    );
                    exact += usize::from(g == w);
                }
            }
            eprintln!("deq16 {t:?} k={k}: {exact} of {} bit-exact", ROWS * kp);
            if t == GgmlType::F32 {
                // to_f16 of the same values as activations [ROWS, k] at arena offset 0.
                let src: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                let x16 = (ROWS * k).div_ceil(64) * 64;
                let mut arena = src.clone();
                arena.resize(x16 * 4 + ROWS * kp * 2, 0xff);
                let params = [0, x16 as u64, ROWS as u64, k as u64, kp as u64];
                let out = run_prelude_kernel(&cb, "", "to_f16", ROWS * kp / 8, &params, &arena);
                for r in 0..ROWS {
                    for c in 0..kp {
                        let at = x16 * 4 + (r * kp + c) * 2;
                        let g = u16::from_le_bytes([out[at], out[at + 1]]);
                        let w = if c < k {
                            f32_to_f16(data[r * k + c])
                        } else {
                            0
                        };
                        assert_eq!(g, w, "to_f16 k={k} row {r} col {c}");
                    }
                }
            }
        }
    }
}

/// v20a: `greedy_next` (the device's argmax of a step's logits) against the host's rule on
/// ties, NaN, infinities, signed zeros, one logit and vocabularies of 49152-262144; each run
/// writes the token, the word for the position of the ring in mapped host memory, moves the
/// position one up and leaves its block counter at zero (the next run, on the same buffers,
/// depends on it).
#[test]
fn greedy_argmax_kernel_matches_the_host() {
    use cudarc::driver::sys;
    if !gpu() {
        return;
    }
    let dev = crate::Device::open().unwrap();
    let module = dev.compile(codegen::PRELUDE).unwrap();
    let f = dev.function(&module, "greedy_next", 0).unwrap();
    let mut rng = Rng(7);
    let mut cases: Vec<Vec<f32>> = Vec::new();
    for n in [1usize, 4095, 4097, 49152, 128256, 262144] {
        cases.push((0..n).map(|_| rng.next() * 8.0).collect());
    }
    let mut tie: Vec<f32> = (0..5000).map(|_| rng.next()).collect();
    tie[1234] = 9.0;
    tie[4500] = 9.0;
    tie[4100] = f32::NAN;
    cases.push(tie);
    cases.push(vec![f32::NEG_INFINITY; 300]);
    let mut nan = vec![f32::NAN; 9000];
    nan[8000] = f32::NEG_INFINITY;
    cases.push(nan);
    let mut mixed = vec![f32::NAN; 9000];
    mixed[7000] = -1e30;
    mixed[8999] = f32::INFINITY;
    cases.push(mixed);
    let mut zeros = vec![-1.0f32; 10000];
    zeros[6000] = -0.0;
    zeros[9000] = 0.0;
    cases.push(zeros);
    let mut last = vec![-3.0f32; 262144];
    last[262143] = -2.5;
    cases.push(last);
    let g = dev.alloc((128 + 2 * 4096) * 4).unwrap();
    let tok = dev.alloc(4).unwrap();
    let pos = dev.alloc(4).unwrap();
    dev.upload(pos.ptr, &100u32.to_le_bytes()).unwrap();
    let (ring, ring_dev) = dev.alloc_mapped(64 * 4).unwrap();
    for (ci, x) in cases.iter().enumerate() {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let l = dev.alloc(bytes.len()).unwrap();
        dev.upload(l.ptr, &bytes).unwrap();
        let (mut a_l, mut a_n, mut a_t, mut a_p, mut a_g, mut a_r) =
            (l.ptr, x.len() as u32, tok.ptr, pos.ptr, g.ptr, ring_dev);
        let mut ptrs: [*mut std::ffi::c_void; 6] = [
            (&mut a_l) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_n) as *mut u32 as *mut std::ffi::c_void,
            (&mut a_t) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_p) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_g) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_r) as *mut u64 as *mut std::ffi::c_void,
        ];
        // SAFETY: the kernel reads `n` floats of `l`, writes one word of `tok` and `pos`, in
        // `g` (128 + 2 * blocks words) its counter and bests, and one word of the mapped ring.
        unsafe {
            let r = sys::cuLaunchKernel(
                f.cu_function(),
                x.len().div_ceil(4096) as u32,
                1,
                1,
                256,
                1,
                1,
                0,
                dev.cu_stream(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            );
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "launch greedy_next");
        }
        dev.sync().unwrap();
        let mut w = [0u8; 4];
        dev.download(&mut w, tok.ptr).unwrap();
        let want = host_argmax(x);
        assert_eq!(
            u32::from_le_bytes(w),
            want,
            "case {ci} ({} logits)",
            x.len()
        );
        dev.download(&mut w, pos.ptr).unwrap();
        let p = 101 + ci as u32;
        assert_eq!(u32::from_le_bytes(w), p, "case {ci}: the position");
        dev.download(&mut w, g.ptr).unwrap();
        assert_eq!(u32::from_le_bytes(w), 0, "case {ci}: the counter is reset");
        // SAFETY: the ring holds 64 words; the kernel is over (synchronised above).
        let r =
            unsafe { std::ptr::read_volatile((ring.ptr as *const u32).add((p as usize - 1) % 64)) };
        assert_eq!(r, want, "case {ci}: the ring");
    }
}
