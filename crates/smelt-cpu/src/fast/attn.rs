//! Attention over the f16 KV cache: causal, GQA, optional sliding window.
//!
//! Work items are (token, query head) pairs dealt round-robin to the threads, which balances
//! both decode (one token, heads split) and causal prefill (later tokens see more keys).
//! Keys and values of one KV head are contiguous per position (see `kv.rs`).

use smelt_quant::half::f16_to_f32;

use super::exec::Ctx;
use super::kv::KvType;
use super::lower::AttnStep;
use super::FastError;

/// The f16 dot and axpy used on cache rows, chosen once for the CPU, at the level the
/// matmul kernels use (so `SMELT_ISA` caps both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum F16Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2F16c,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl F16Isa {
    pub fn detect() -> F16Isa {
        F16Isa::for_level(crate::kernels::Isa::detect())
    }

    /// The variant for kernel level `isa` (which the CPU supports: `Isa` levels are only
    /// handed out when it does, and each includes F16C).
    pub fn for_level(isa: crate::kernels::Isa) -> F16Isa {
        use crate::kernels::Isa;
        #[cfg(target_arch = "x86_64")]
        {
            if isa >= Isa::Avx512Vnni && is_x86_feature_detected!("avx512f") {
                return F16Isa::Avx512;
            }
            if isa >= Isa::Avx2 {
                return F16Isa::Avx2F16c;
            }
        }
        let _ = isa;
        F16Isa::Scalar
    }

    /// `sum(q[i] * k[i])` with `k` in f16.
    #[inline]
    pub fn dot(self, q: &[f32], k: &[u16]) -> f32 {
        assert_eq!(q.len(), k.len());
        match self {
            F16Isa::Scalar => dot_scalar(q, k),
            // SAFETY: chosen only where the CPU has AVX2, FMA and F16C (and AVX-512F for the
            // second); lengths match.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::dot(q, k) },
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx512 => unsafe { x86::dot512(q, k) },
        }
    }

    /// `out[i] += w * v[i]` with `v` in f16.
    #[inline]
    pub fn axpy(self, out: &mut [f32], w: f32, v: &[u16]) {
        assert_eq!(out.len(), v.len());
        match self {
            F16Isa::Scalar => out
                .iter_mut()
                .zip(v)
                .for_each(|(o, &v)| *o += w * f16_to_f32(v)),
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::axpy(out, w, v) },
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx512 => unsafe { x86::axpy512(out, w, v) },
        }
    }
}

/// `sum(q[i] * k[i])` with `k` in q8_0 blocks (f16 scale, 32 i8): per block, the i8 dot in
/// f32, times the scale.
fn dot_q8(q: &[f32], k: &[u8]) -> f32 {
    let mut sum = 0.0;
    for (qb, kb) in q.chunks_exact(32).zip(k.chunks_exact(34)) {
        let d = f16_to_f32(u16::from_le_bytes([kb[0], kb[1]]));
        let mut acc = [0f32; 8];
        for (qc, kc) in qb.chunks_exact(8).zip(kb[2..].chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += qc[i] * f32::from(kc[i] as i8);
            }
        }
        sum += d * acc.iter().sum::<f32>();
    }
    sum
}

/// `out[i] += w * v[i]` with `v` in q8_0 blocks.
fn axpy_q8(out: &mut [f32], w: f32, v: &[u8]) {
    for (ob, vb) in out.chunks_exact_mut(32).zip(v.chunks_exact(34)) {
        let wd = w * f16_to_f32(u16::from_le_bytes([vb[0], vb[1]]));
        for (o, &x) in ob.iter_mut().zip(&vb[2..]) {
            *o += wd * f32::from(x as i8);
        }
    }
}

fn dot_scalar(q: &[f32], k: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
    let (qr, kr) = (qc.remainder(), kc.remainder());
    for (a, b) in qc.zip(kc) {
        for i in 0..8 {
            acc[i] += a[i] * f16_to_f32(b[i]);
        }
    }
    acc.iter().sum::<f32>()
        + qr.iter()
            .zip(kr)
            .map(|(a, &b)| a * f16_to_f32(b))
            .sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use smelt_quant::half::f16_to_f32;

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `q.len() == k.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(q: &[f32], k: &[u16]) -> f32 {
        let n = q.len();
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 (16) elements at i < n - 7 (n - 15) of slices of length n.
        unsafe {
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8)), k1, acc1);
                i += 16;
            }
            while i + 8 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                i += 8;
            }
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += q[i] * f16_to_f32(k[i]);
            i += 1;
        }
        sum
    }

    /// [`dot`] sixteen at a time.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX2, FMA and F16C; `q.len() == k.len()`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot512(q: &[f32], k: &[u16]) -> f32 {
        let n = q.len();
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 16 elements at i < n - 15 of slices of length n; the rest
        // goes to the AVX2 code with the same contract.
        unsafe {
            while i + 16 <= n {
                let kv = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(i).cast()));
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(i)), kv, acc);
                i += 16;
            }
            _mm512_reduce_add_ps(acc) + dot(&q[i..], &k[i..])
        }
    }

    /// [`axpy`] sixteen at a time.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX2, FMA and F16C; `out.len() == v.len()`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn axpy512(out: &mut [f32], w: f32, v: &[u16]) {
        let n = out.len();
        let wv = _mm512_set1_ps(w);
        let mut i = 0;
        // SAFETY: as in `dot512`.
        unsafe {
            while i + 16 <= n {
                let x = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(i).cast()));
                let o = _mm512_loadu_ps(out.as_ptr().add(i));
                _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_fmadd_ps(wv, x, o));
                i += 16;
            }
            axpy(&mut out[i..], w, &v[i..]);
        }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `out.len() == v.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(out: &mut [f32], w: f32, v: &[u16]) {
        let n = out.len();
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access covers 8 elements at i < n - 7 of slices of length n.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let o = _mm256_loadu_ps(out.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(wv, x, o));
                i += 8;
            }
        }
        while i < n {
            out[i] += w * f16_to_f32(v[i]);
            i += 1;
        }
    }
}

/// This thread's share of one attention kernel: (token, query head) items, round-robin.
///
/// (Grouping the query heads of one KV head, to load each key row once for all of them, was
/// measured slower: the per-key dot products, not the loads, dominate.)
pub(crate) fn run(
    st: &AttnStep,
    tid: usize,
    ctx: &Ctx,
    scores: &mut [f32],
) -> Result<(), FastError> {
    let (hd, n_head) = (st.head_dim, st.n_head);
    let group = n_head / st.n_head_kv;
    let lay = ctx.kv_layers[st.layer];
    let cap = ctx.capacity;
    let qcols = n_head * hd;
    let items = st.rows * n_head;
    let hr = ctx.kv_type.head_row(hd);
    let mut i = tid;
    while i < items {
        let (t, h) = (i / n_head, i % n_head);
        i += ctx.n_threads;
        let pos = ctx.positions[t] as usize;
        let lo = st.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let n_keys = pos + 1 - lo;
        let base = ctx.kv_type.index(cap, hd, lo, (h / group) * hd);
        let (k_at, v_at, len) = (lay.k + base, lay.v + base, n_keys * hr);
        // SAFETY (all reads below): q was written by an earlier kernel; the cache rows up to
        // `pos` were written by earlier kernels (this step's) or earlier steps; nothing writes
        // them now.
        let q = unsafe { ctx.arena.get(st.q_off + t * qcols + h * hd, hd) };
        let sc = &mut scores[..n_keys];
        match ctx.kv_type {
            KvType::F16 => {
                let keys = unsafe { ctx.kv16.get(k_at, len) };
                sc.iter_mut()
                    .zip(keys.chunks_exact(hr))
                    .for_each(|(s, k)| *s = ctx.f16.dot(q, k) * st.scale);
            }
            KvType::Q8_0 => {
                let keys = unsafe { ctx.kv8.get(k_at, len) };
                sc.iter_mut()
                    .zip(keys.chunks_exact(hr))
                    .for_each(|(s, k)| *s = dot_q8(q, k) * st.scale);
            }
        }
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        sc.iter_mut().for_each(|v| *v = exp_neg(*v - max));
        let inv_sum = 1.0 / sc.iter().sum::<f32>();
        // SAFETY: item (t, h) is this thread's alone (round-robin), and its output columns are
        // head h of row t, which no other item writes.
        let out = unsafe { ctx.arena.get_mut(st.out_off + t * qcols + h * hd, hd) };
        out.fill(0.0);
        match ctx.kv_type {
            KvType::F16 => {
                let vals = unsafe { ctx.kv16.get(v_at, len) };
                sc.iter()
                    .zip(vals.chunks_exact(hr))
                    .for_each(|(s, v)| ctx.f16.axpy(out, s * inv_sum, v));
            }
            KvType::Q8_0 => {
                let vals = unsafe { ctx.kv8.get(v_at, len) };
                sc.iter()
                    .zip(vals.chunks_exact(hr))
                    .for_each(|(s, v)| axpy_q8(out, s * inv_sum, v));
            }
        }
    }
    Ok(())
}

/// `e^x` for the softmax's `x <= 0`, within a few ulp; plain arithmetic, so loops over it
/// vectorise (the library `exp` is a call per element). `x = n ln2 + r` with `n` an integer
/// (set in the exponent bits) and `|r| <= ln2 / 2`, `ln2` split in two parts so `r` is exact
/// (Cody and Waite), and `e^r` by its Taylor series to degree 7.
#[inline]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    // Round to nearest with the 1.5 * 2^23 trick (vectorises, unlike `round`).
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smelt_quant::half::f32_to_f16;

    #[test]
    fn q8_0_dot_and_axpy_match_dequantised_values() {
        for n in [32, 64, 256] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
            let k = smelt_quant::quantize_to_vec(smelt_gguf::GgmlType::Q8_0, &x).unwrap();
            let kd = smelt_quant::dequantize_to_vec(smelt_gguf::GgmlType::Q8_0, &k).unwrap();
            let want: f32 = q.iter().zip(&kd).map(|(a, b)| a * b).sum();
            assert!(
                (dot_q8(&q, &k) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "n {n}"
            );
            let mut out = q.clone();
            axpy_q8(&mut out, 0.5, &k);
            for i in 0..n {
                assert!((out[i] - (q[i] + 0.5 * kd[i])).abs() < 1e-5, "n {n} i {i}");
            }
        }
    }

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (want, got) = (x.exp(), exp_neg(x));
            assert!((want - got).abs() <= 3e-7 * want, "{x}: {want} vs {got}");
            x -= 0.0137;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn simd_f16_matches_scalar_on_odd_lengths() {
        for level in crate::kernels::Isa::supported() {
            simd_f16_matches_scalar(F16Isa::for_level(level));
        }
    }

    fn simd_f16_matches_scalar(isa: F16Isa) {
        for n in [1, 3, 8, 15, 50, 64, 256, 783] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let k: Vec<u16> = (0..n)
                .map(|i| f32_to_f16(((i * 13 % 17) as f32 - 8.0) / 5.0))
                .collect();
            let want = dot_scalar(&q, &k);
            let got = isa.dot(&q, &k);
            assert!(
                (want - got).abs() <= 1e-4 * (1.0 + want.abs()),
                "n {n}: {want} vs {got}"
            );
            let mut a = q.clone();
            let mut b = q.clone();
            F16Isa::Scalar.axpy(&mut a, 0.37, &k);
            isa.axpy(&mut b, 0.37, &k);
            assert!(
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs())),
                "n {n}"
            );
        }
    }
}
