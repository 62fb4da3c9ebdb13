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

/// The f16 dot and axpy used on cache rows, chosen once for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum F16Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2F16c,
}

impl F16Isa {
    pub fn detect() -> F16Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return F16Isa::Avx2F16c;
            }
        }
        F16Isa::Scalar
    }

    /// `sum(q[i] * k[i])` with `k` in f16.
    #[inline]
    pub fn dot(self, q: &[f32], k: &[u16]) -> f32 {
        assert_eq!(q.len(), k.len());
        match self {
            F16Isa::Scalar => dot_scalar(q, k),
            // SAFETY: `detect` chose this only where the CPU has AVX2, FMA and F16C; lengths match.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::dot(q, k) },
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

/// This thread's share of one attention kernel.
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
    let mut i = tid;
    while i < items {
        let (t, h) = (i / n_head, i % n_head);
        i += ctx.n_threads;
        let pos = ctx.positions[t] as usize;
        let lo = st.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let n_keys = pos + 1 - lo;
        let hk = h / group;
        let base = ctx.kv_type.index(cap, hd, lo, hk * hd);
        let hr = ctx.kv_type.head_row(hd);
        // SAFETY: q was written by an earlier kernel; the cache rows up to `pos` were written
        // by earlier kernels (this step's) or earlier steps; nothing writes them now.
        let q = unsafe { ctx.arena.get(st.q_off + t * qcols + h * hd, hd) };
        let sc = &mut scores[..n_keys];
        let mut max = f32::NEG_INFINITY;
        match ctx.kv_type {
            KvType::F16 => {
                // SAFETY: as above.
                let keys = unsafe { ctx.kv16.get(lay.k + base, n_keys * hr) };
                for (s, k) in sc.iter_mut().zip(keys.chunks_exact(hr)) {
                    *s = ctx.f16.dot(q, k) * st.scale;
                    max = max.max(*s);
                }
            }
            KvType::Q8_0 => {
                // SAFETY: as above.
                let keys = unsafe { ctx.kv8.get(lay.k + base, n_keys * hr) };
                for (s, k) in sc.iter_mut().zip(keys.chunks_exact(hr)) {
                    *s = dot_q8(q, k) * st.scale;
                    max = max.max(*s);
                }
            }
        }
        let mut sum = 0.0;
        for s in sc.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        // SAFETY: item (t, h) is this thread's alone (round-robin), and its output columns are
        // head h of row t, which no other item writes.
        let out = unsafe { ctx.arena.get_mut(st.out_off + t * qcols + h * hd, hd) };
        out.fill(0.0);
        match ctx.kv_type {
            KvType::F16 => {
                // SAFETY: as for the keys.
                let vals = unsafe { ctx.kv16.get(lay.v + base, n_keys * hr) };
                for (s, v) in sc.iter().zip(vals.chunks_exact(hr)) {
                    ctx.f16.axpy(out, s / sum, v);
                }
            }
            KvType::Q8_0 => {
                // SAFETY: as for the keys.
                let vals = unsafe { ctx.kv8.get(lay.v + base, n_keys * hr) };
                for (s, v) in sc.iter().zip(vals.chunks_exact(hr)) {
                    axpy_q8(out, s / sum, v);
                }
            }
        }
    }
    Ok(())
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
    fn simd_f16_matches_scalar_on_odd_lengths() {
        let isa = F16Isa::detect();
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
