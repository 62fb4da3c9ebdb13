//! Sampling candidates on the device (v22) against the host's top-k rule (GPU).

use super::*;
use crate::{TopRows, TOP_INF, TOP_K, TOP_NAN, TOP_OVERFLOW};

/// The host sampler's `top_k_into` set for `k` = [`TOP_K`]: the best finite logits, the larger
/// value first and the lower index among equals (-0 equal to +0), as (index, value bits) in
/// index order.
pub(super) fn host_top(x: &[f32]) -> Vec<(u32, u32)> {
    let mut c: Vec<(u32, f32)> = x
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i as u32, v))
        .collect();
    c.sort_by(|a, b| b.1.partial_cmp(&a.1).expect("finite").then(a.0.cmp(&b.0)));
    c.truncate(TOP_K);
    let mut out: Vec<(u32, u32)> = c.iter().map(|&(i, v)| (i, v.to_bits())).collect();
    out.sort_unstable();
    out
}

/// Row `r` of a step's candidates as [`host_top`] gives them.
pub(super) fn device_top(t: &TopRows, r: usize) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = t.candidates(r).map(|(i, v)| (i, v.to_bits())).collect();
    out.sort_unstable();
    out
}

/// Launch `f` `reps` times back to back over `grid` (x, y) blocks of `block` threads, wait,
/// and return the mean time a launch (the kernel lab's figure, printed by the tests).
///
/// # Safety
///
/// `ptrs` point to `f`'s arguments, and its reads and writes through them stay inside the
/// buffers they name.
unsafe fn launch(
    dev: &crate::Device,
    f: &cudarc::driver::CudaFunction,
    grid: (u32, u32),
    block: u32,
    ptrs: &mut [*mut std::ffi::c_void],
    reps: usize,
) -> f64 {
    use cudarc::driver::sys;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        // SAFETY: the arguments are the caller's (this function's contract).
        let r = unsafe {
            sys::cuLaunchKernel(
                f.cu_function(),
                grid.0,
                grid.1,
                1,
                block,
                1,
                1,
                0,
                dev.cu_stream(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "launch");
    }
    dev.sync().unwrap();
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

/// The flags [`host_top`]'s row should carry.
fn host_flags(x: &[f32]) -> u32 {
    let inf = x.contains(&f32::INFINITY);
    let nan = x.iter().any(|v| v.is_nan());
    (u32::from(inf) * TOP_INF) | (u32::from(nan) * TOP_NAN)
}

/// v22: `top_cands` alone on rows of 1 to 262144 logits, one to eight rows a launch: NaN,
/// infinities, signed zeros, fewer finite values than [`TOP_K`], a row whose best values sit
/// in one block, and many equal values (the one case allowed to flag too many at the
/// threshold instead).
/// Each launch reuses the buffers, so each leaves its counters at zero.
#[test]
fn top_candidates_kernel_matches_the_host() {
    if !gpu() {
        return;
    }
    let dev = crate::Device::open().unwrap();
    let module = dev.compile(codegen::PRELUDE).unwrap();
    let f = dev.function(&module, "top_cands", 0).unwrap();
    let mut rng = Rng(11);
    // (rows, logits a row) and how each row is drawn.
    let mut cases: Vec<(usize, Vec<f32>)> = Vec::new();
    for (rows, n) in [
        (1usize, 1usize),
        (1, 100),
        (1, 4095),
        (2, 4097),
        (1, 49152),
        (8, 49152),
        (3, 128256),
        (1, 262144),
    ] {
        cases.push((rows, (0..rows * n).map(|_| rng.next() * 8.0).collect()));
    }
    // Few distinct values: ties decided by the index, across blocks.
    cases.push((2, (0..2 * 20000).map(|i| ((i * 7) % 5) as f32).collect()));
    let mut odd: Vec<f32> = (0..9000).map(|_| rng.next()).collect();
    odd[100] = f32::NAN;
    odd[200] = f32::INFINITY;
    odd[300] = f32::NEG_INFINITY;
    odd[4100] = -0.0;
    odd[8000] = 0.0;
    odd[8001] = -0.0;
    cases.push((1, odd));
    let mut sparse = vec![f32::NEG_INFINITY; 20000];
    for i in (0..20000).step_by(400) {
        sparse[i] = i as f32 * -1e-3;
    }
    cases.push((1, sparse));
    cases.push((1, vec![f32::NAN; 5000]));
    let mut one_block: Vec<f32> = (0..65536).map(|i| -5.0 - i as f32 * 1e-4).collect();
    for (i, v) in one_block[40000..40300].iter_mut().enumerate() {
        *v = i as f32;
    }
    cases.push((1, one_block));
    let g = dev.alloc((1024 + 2 * 16 * 64 * 64) * 4).unwrap();
    let row_words = 2 + 2 * TOP_K;
    let (out, out_dev) = dev.alloc_mapped(16 * row_words * 4).unwrap();
    for (ci, (rows, x)) in cases.iter().enumerate() {
        let n = x.len() / rows;
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let l = dev.alloc(bytes.len()).unwrap();
        dev.upload(l.ptr, &bytes).unwrap();
        let (mut a_l, mut a_n, mut a_g, mut a_o) = (l.ptr, n as u32, g.ptr, out_dev);
        let mut ptrs: [*mut std::ffi::c_void; 4] = [
            (&mut a_l) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_n) as *mut u32 as *mut std::ffi::c_void,
            (&mut a_g) as *mut u64 as *mut std::ffi::c_void,
            (&mut a_o) as *mut u64 as *mut std::ffi::c_void,
        ];
        let grid = (n.div_ceil(4096) as u32, *rows as u32);
        // SAFETY: the kernel reads `rows` rows of `n` floats of `l`, writes in `g` its
        // counters and keys (rows <= 16, blocks <= 64), and `rows` rows of the mapped output.
        unsafe { launch(&dev, &f, grid, 512, &mut ptrs, 1) };
        // SAFETY: the kernel is over (synchronised above); the output holds 16 rows.
        let words = unsafe { std::slice::from_raw_parts(out.ptr as *const u32, 16 * row_words) };
        let t = TopRows::new(words, *rows);
        for r in 0..*rows {
            let row = &x[r * n..(r + 1) * n];
            // Where more keys are at the threshold than the kernel keeps (only with many
            // equal values) there are no candidates, and the row's flag says so.
            if t.flags(r) & TOP_OVERFLOW != 0 {
                assert_eq!(ci, 8, "case {ci} row {r}: no candidates");
                assert_eq!(t.candidates(r).count(), 0, "case {ci} row {r}");
                continue;
            }
            assert_eq!(
                device_top(&t, r),
                host_top(row),
                "case {ci} ({rows} x {n}) row {r}: the candidates"
            );
            assert_eq!(t.flags(r), host_flags(row), "case {ci} row {r}: the flags");
        }
        // The rows' counters (words 0-15) and flags (16-31); the blocks' counts after them
        // are each launch's own.
        let mut w = vec![0u8; 32 * 4];
        dev.download(&mut w, g.ptr).unwrap();
        assert!(
            w.iter().all(|&b| b == 0),
            "case {ci}: counters and flags reset"
        );
        // The kernel lab's figure (printed, not asserted): back-to-back launches of this
        // case, the mean time each.
        if [4, 5, 6].contains(&ci) {
            // SAFETY: as the launch above, on the same buffers.
            let us = unsafe { launch(&dev, &f, grid, 512, &mut ptrs, 200) };
            eprintln!("top_cands {rows} x {n}: {us:.2} us a launch");
        }
    }
}

/// v22 in a program: a one-token step's candidates (its graph ends with them) are the top-k set
/// of the logits the same step gives through the plain path, on the long-context shapes,
/// before and past the short-context variant's bound; the logits stay readable on the device.
#[test]
fn a_steps_candidates_are_the_top_of_its_logits() {
    if !gpu() {
        return;
    }
    let n0 = 250usize;
    for (ci, d) in long_context_dims().into_iter().enumerate() {
        let (w, file, gp, g1) = long_context_case(ci, d, n0);
        let widths = [d.n_head_kv * d.head_dim; 2];
        let prompt: Vec<u32> = (0..n0).map(|i| ((i * 5 + 1) % d.n_vocab) as u32).collect();
        let positions: Vec<u32> = (0..n0 as u32).collect();
        let mut cb = CudaBackend::new(Arc::clone(&file), &w.specs).unwrap();
        let mut kv = cb.new_kv(LONG_CAPACITY, &widths).unwrap();
        let pp = cb.lower(&gp, &kv).unwrap();
        let p1 = cb.lower(&g1, &kv).unwrap();
        assert!(cb.top_ok(&p1), "case {ci}: candidates");
        cb.execute(&pp, &prompt, &positions, &mut kv).unwrap();
        for (i, p) in [250u32, 255, 256, 300].into_iter().enumerate() {
            let tok = [(i * 3 + 2) as u32 % d.n_vocab as u32];
            let want = cb.execute(&p1, &tok, &[p], &mut kv).unwrap().to_vec();
            let before = cb.stats().submissions;
            let top = cb.execute_top(&p1, &tok, &[p], &mut kv).unwrap();
            assert_eq!(top.rows(), 1);
            assert_eq!(device_top(&top, 0), host_top(&want), "case {ci} at {p}");
            assert_eq!(top.flags(0), 0);
            assert_eq!(cb.stats().submissions - before, 1, "one submission a step");
            let row = cb.logits_row(&p1, 0).unwrap();
            assert!(
                row.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "case {ci} at {p}: the logits on the device"
            );
        }
    }
}

/// v23: `sample_draw` alone on 128 candidates with a repeat penalty over a 64-token window:
/// at top-k 1, and (v27) at temperature 0 or below whatever the top-k, it picks the best
/// penalised candidate (the host's rule: the larger value, the lower token among equals); at
/// Ollama's defaults a candidate of the top 40; each draw moves
/// the position, writes the ring's word and appends the token to the device's history. The
/// kernel lab's figure (back-to-back launches) is printed.
#[test]
fn sample_draw_picks_from_the_candidates() {
    if !gpu() {
        return;
    }
    let dev = crate::Device::open().unwrap();
    let module = dev.compile(codegen::PRELUDE).unwrap();
    let f = dev.function(&module, "sample_draw", 0).unwrap();
    let mut rng = Rng(5);
    let cands: Vec<(u32, f32)> = (0..TOP_K as u32)
        .map(|i| (i * 7 + 3, rng.next() * 8.0))
        .collect();
    let mut words = vec![TOP_K as u32, 0];
    for &(i, v) in &cands {
        words.extend([i, v.to_bits()]);
    }
    let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cand = dev.alloc(words.len() * 4).unwrap();
    dev.upload(cand.ptr, &bytes(&words)).unwrap();
    // History: 100 tokens seen, the last 64 the candidates' first 64 tokens.
    let mut h = vec![0u32; 1 + 128];
    h[0] = 100;
    for k in 0..100u32 {
        h[1 + (k as usize % 128)] = if k >= 36 { (k - 36) * 7 + 3 } else { 999_999 };
    }
    let hist = dev.alloc(h.len() * 4).unwrap();
    let (u, u_dev) = dev.alloc_mapped(64 * 4).unwrap();
    let (ring, ring_dev) = dev.alloc_mapped(64 * 4).unwrap();
    let (tok, pos) = (dev.alloc(4).unwrap(), dev.alloc(4).unwrap());
    let rp = 1.1f32;
    let penalised = |i: u32, v: f32| {
        let seen = (0..64).any(|k| k * 7 + 3 == i);
        match (seen, v > 0.0) {
            (false, _) => v,
            (true, true) => v / rp,
            (true, false) => v * rp,
        }
    };
    for (temp, top_k, reps) in [
        (0.8f32, 1u32, 1usize),
        (0.8, 40, 1),
        (0.0, 40, 1),
        (-1.0, 1, 1),
        (0.8, 40, 200),
    ] {
        let s = [
            temp.to_bits(),
            top_k,
            0.9f32.to_bits(),
            0,
            rp.to_bits(),
            0,
            0,
            64,
        ];
        let settings = dev.alloc(32).unwrap();
        dev.upload(settings.ptr, &bytes(&s)).unwrap();
        dev.upload(hist.ptr, &bytes(&h)).unwrap();
        dev.upload(pos.ptr, &10u32.to_le_bytes()).unwrap();
        // SAFETY: the mapped ring holds 64 floats.
        unsafe {
            for i in 0..64 {
                std::ptr::write_volatile((u.ptr as *mut f32).add(i), 0.37);
            }
        }
        let mut a = [
            cand.ptr,
            settings.ptr,
            hist.ptr,
            u_dev,
            tok.ptr,
            pos.ptr,
            ring_dev,
        ];
        let mut ptrs: [*mut std::ffi::c_void; 7] =
            std::array::from_fn(|i| (&mut a[i]) as *mut u64 as *mut std::ffi::c_void);
        // SAFETY: the kernel reads the candidates, settings, history (which it appends to)
        // and a uniform, and writes a word each of tok, pos and the mapped ring.
        let us = unsafe { launch(&dev, &f, (1, 1), TOP_K as u32, &mut ptrs, reps) };
        let mut w = [0u8; 4];
        dev.download(&mut w, tok.ptr).unwrap();
        let got = u32::from_le_bytes(w);
        dev.download(&mut w, pos.ptr).unwrap();
        assert_eq!(
            u32::from_le_bytes(w),
            10 + reps as u32,
            "top-k {top_k}: the position"
        );
        // SAFETY: the kernels are over; the ring holds 64 words.
        let last =
            unsafe { std::ptr::read_volatile((ring.ptr as *const u32).add((9 + reps) % 64)) };
        assert_eq!(last, got, "top-k {top_k}: the ring");
        let mut hb = vec![0u8; 8];
        dev.download(&mut hb, hist.ptr).unwrap();
        assert_eq!(
            u32::from_le_bytes(hb[..4].try_into().unwrap()),
            100 + reps as u32
        );
        let mut ranked: Vec<(u32, f32)> =
            cands.iter().map(|&(i, v)| (i, penalised(i, v))).collect();
        ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        if top_k == 1 || temp <= 0.0 {
            assert_eq!(
                got, ranked[0].0,
                "top-k {top_k}, temperature {temp}: the best penalised candidate"
            );
        } else if reps == 1 {
            assert!(
                ranked[..40].iter().any(|c| c.0 == got),
                "top-k 40: {got} is no top-40 candidate"
            );
        }
        if reps > 1 && temp > 0.0 {
            eprintln!(
                "sample_draw (128 candidates, top-k 40, a 64-token window): {us:.2} us a launch"
            );
            // The kernel lab's split: the uniforms and the ring in device memory instead.
            let (ud, rd) = (dev.alloc(64 * 4).unwrap(), dev.alloc(64 * 4).unwrap());
            for (what, uu, rr) in [
                ("device uniforms", ud.ptr, ring_dev),
                ("both on the device", ud.ptr, rd.ptr),
            ] {
                let mut a = [cand.ptr, settings.ptr, hist.ptr, uu, tok.ptr, pos.ptr, rr];
                let mut ptrs: [*mut std::ffi::c_void; 7] =
                    std::array::from_fn(|i| (&mut a[i]) as *mut u64 as *mut std::ffi::c_void);
                // SAFETY: as above, with device buffers of the same sizes.
                let us = unsafe { launch(&dev, &f, (1, 1), TOP_K as u32, &mut ptrs, reps) };
                eprintln!("sample_draw, {what}: {us:.2} us a launch");
            }
        }
    }
}
